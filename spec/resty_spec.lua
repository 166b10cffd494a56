-- The OpenResty server (moonlm.resty) as clients see it: a real nginx with lua-nginx-module
-- on a free loopback port and a temporary prefix, started from examples/openresty/*.conf,
-- driven with curl and with the official `openai` npm client, and stopped by its pid.
-- Tagged #once: it runs once per interpreter, not once per kernel level.
local S = require "support"
local lm = require "moonlm"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local BUILD = os.getenv("BUILD") or "build"
local stories = S.path("models/stories260K.gguf")
local NAME = "stories260K"

-- sh(cmd) -> output, exit status (from the shell: LuaJIT's pipe close does not report it)
local function sh(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local tmp -- a scratch folder for request and response files, removed in teardown
local nfile = 0
local function tmpfile(content)
  nfile = nfile + 1
  local path = ("%s/f%d"):format(tmp, nfile)
  if content then
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
  end
  return path
end

local function enc(v) return type(v) == "string" and v or assert(json.encode(v, { compact = true })) end

-- The curl command for one request; its output: "<status> <seconds>" (body and headers in files).
local function curl_cmd(method, url, body, files, extra)
  local cmd = ("curl -s -N -m 60 -X %s -D %s -o %s -w '%%{http_code} %%{time_total}\\n' %s"):format(
    method, files.head, files.body, extra or "")
  if body then cmd = cmd .. (" -H 'Content-Type: application/json' --data-binary @%s"):format(tmpfile(enc(body))) end
  return cmd .. " " .. q(url)
end

local function slurp(path) return S.exists(path) and S.read_file(path) or "" end

local function result(files, meta)
  local status, secs = meta:match("(%d+) ([%d.]+)")
  local r = { status = tonumber(status), seconds = tonumber(secs), text = slurp(files.body), head = slurp(files.head) }
  r.json = json.decode(r.text)
  r.node = r.head:match("[Xx]%-[Mm]oonlm%-[Nn]ode: ([^\r\n]+)")
  return r
end

local function http(method, url, body, extra)
  local files = { head = tmpfile(), body = tmpfile() }
  local meta = sh(curl_cmd(method, url, body, files, extra))
  return result(files, meta)
end

-- Requests at once: each { method, url, body, extra, delay (seconds before it starts) }.
local function parallel(list)
  local lines, files = { "#!/bin/sh" }, {}
  for i, r in ipairs(list) do
    files[i] = { head = tmpfile(), body = tmpfile(), meta = tmpfile() }
    lines[#lines + 1] = ("(%s%s > %s) &"):format(r.delay and ("sleep %s; "):format(r.delay) or "",
      curl_cmd(r[1], r[2], r[3], files[i], r.extra), files[i].meta)
  end
  lines[#lines + 1] = "wait"
  local script = tmpfile(table.concat(lines, "\n") .. "\n")
  sh("sh " .. script)
  local out = {}
  for i, f in ipairs(files) do out[i] = result(f, slurp(f.meta)) end
  return out
end

-- Server-sent events -> list of decoded chunks, and whether the stream ended with [DONE].
local function events(text)
  local chunks, done = {}, false
  for data in text:gmatch("data: ([^\n]*)\n\n") do
    assert.is_false(done, "data after [DONE]")
    if data == "[DONE]" then
      done = true
    else
      chunks[#chunks + 1] = assert(json.decode(data), data)
    end
  end
  return chunks, done
end

local function start(env, conf, ports)
  local e = { MOONLM_MODEL = stories, MOONLM_THREADS = "1" }
  for k, v in pairs(env or {}) do e[k] = v end
  local srv, err = launch.start { conf = conf or "examples/openresty/nginx.conf", env = e, ports = ports,
                                  lib_dir = BUILD .. "/5.1" }
  assert(srv, err)
  return srv
end

local model = assert(lm.load(stories))

-- What moonlm itself answers, for the same prompt (greedy).
local function local_chat(messages, max_tokens)
  local text = assert(model:apply_template(messages))
  local bos_text = model:token(model.vocab.bos)
  local ids = model:tokenize(text, { bos = text:sub(1, #bos_text) ~= bos_text, special = true })
  local reply, info = model:generate(ids, { temperature = 0, max_tokens = max_tokens })
  return reply, #ids, info
end

local function chat_body(content, o)
  local b = json.object({ model = NAME, messages = { { role = "user", content = content } } }, { "model", "messages" })
  for k, v in pairs(o or {}) do json.set(b, k, v) end
  return b
end

local function p50(xs)
  table.sort(xs)
  return xs[math.ceil(#xs / 2)], xs[#xs]
end

describe("OpenResty server #once", function()
  local srv, url

  setup(function()
    assert.truthy(launch.module_dir(), "lua-nginx-module is not installed (make deps)")
    tmp = sh("mktemp -d /tmp/moonlm-spec.XXXXXX"):gsub("%s+$", "")
    srv = start { MOONLM_SLOTS = "4", MOONLM_QUEUE = "8", MOONLM_N_CTX = "2048" }
    url = srv.url
  end)

  teardown(function()
    if srv then srv:stop() end
    if tmp and tmp:find("^/tmp/moonlm%-spec") then sh("rm -rf " .. q(tmp)) end
    tmp = nil
  end)

  it("GET /health and /v1/models", function()
    local h = http("GET", url .. "/health")
    assert.are.equal(200, h.status)
    assert.are.equal("ok", h.json.status)
    assert.are.equal(4, h.json.slots)
    local m = http("GET", url .. "/v1/models")
    assert.are.equal(200, m.status)
    assert.are.equal("list", m.json.object)
    assert.are.equal(NAME, m.json.data[1].id)
    assert.are.equal("model", m.json.data[1].object)
    local one = http("GET", url .. "/v1/models/" .. NAME)
    assert.are.equal(NAME, one.json.id)
  end)

  it("chat completion: the greedy reply is moonlm's own, with usage and finish_reason", function()
    local msgs = { { role = "system", content = "You tell stories." }, { role = "user", content = "Once upon a time" } }
    local want, n_prompt = local_chat(msgs, 40)
    local r = http("POST", url .. "/v1/chat/completions",
                   { model = NAME, messages = msgs, max_tokens = 40, temperature = 0 })
    assert.are.equal(200, r.status, r.text)
    local j = r.json
    assert.are.equal("chat.completion", j.object)
    assert.truthy(j.id:find("^chatcmpl%-"))
    assert.are.equal(NAME, j.model)
    assert.are.equal("number", type(j.created))
    assert.are.equal("assistant", j.choices[1].message.role)
    assert.are.equal(want, j.choices[1].message.content)
    assert.are.equal(n_prompt, j.usage.prompt_tokens)
    assert.are.equal(40, j.usage.completion_tokens)
    assert.are.equal(n_prompt + 40, j.usage.total_tokens)
    assert.are.equal("length", j.choices[1].finish_reason)
    assert.truthy(r.head:find("application/json", 1, true))
  end)

  it("stop strings end the reply (finish_reason stop); seeds repeat; the next turn reuses the cache", function()
    local full = http("POST", url .. "/v1/chat/completions", chat_body("Tell me a story", { max_tokens = 60, temperature = 0 })).json
    local text = full.choices[1].message.content
    local word = text:match("^.-%s(%a%a%a+)") -- a word after the first one
    assert.truthy(word, text)
    local cut = http("POST", url .. "/v1/chat/completions",
                     chat_body("Tell me a story", { max_tokens = 60, temperature = 0, stop = { "zzz", word } })).json
    assert.are.equal("stop", cut.choices[1].finish_reason)
    assert.are.equal(text:sub(1, text:find(word, 1, true) - 1), cut.choices[1].message.content)
    -- sampling with a seed repeats exactly; another seed gives another story
    local function sampled(seed)
      return http("POST", url .. "/v1/chat/completions",
                  chat_body("Once upon a time", { max_tokens = 48, temperature = 1.0, top_p = 0.95, seed = seed })).json
    end
    local a, b, c = sampled(7), sampled(7), sampled(8)
    assert.are.equal(a.choices[1].message.content, b.choices[1].message.content)
    assert.are_not.equal(a.choices[1].message.content, c.choices[1].message.content)
    -- a second turn of the same conversation prefills only what is new
    local turn2 = { { role = "user", content = "Once upon a time" },
                    { role = "assistant", content = a.choices[1].message.content },
                    { role = "user", content = "And then?" } }
    local r = http("POST", url .. "/v1/chat/completions", { model = NAME, messages = turn2, max_tokens = 8 }).json
    assert.is_true(r.usage.prompt_tokens_details.cached_tokens >= a.usage.prompt_tokens, enc(r.usage))
  end)

  it("streams server-sent events in the OpenAI chunk format, ending with data: [DONE]", function()
    local body = chat_body("Once upon a time", { max_tokens = 50, temperature = 0, stream = true,
                                                 stream_options = { include_usage = true } })
    local r = http("POST", url .. "/v1/chat/completions", body)
    assert.are.equal(200, r.status)
    assert.truthy(r.head:find("text/event-stream", 1, true))
    local chunks, done = events(r.text)
    assert.is_true(done)
    assert.is_true(r.text:sub(-14) == "data: [DONE]\n\n")
    assert.are.equal("assistant", chunks[1].choices[1].delta.role)
    local text, finish = {}, nil
    for i, c in ipairs(chunks) do
      assert.are.equal("chat.completion.chunk", c.object)
      assert.are.equal(chunks[1].id, c.id)
      local ch = c.choices[1]
      if ch then
        text[#text + 1] = ch.delta.content or ""
        if ch.finish_reason ~= json.null then
          finish = ch.finish_reason
          assert.are.equal(#chunks - 1, i) -- then only the usage chunk
        end
      end
    end
    assert.are.equal("length", finish)
    local usage = chunks[#chunks].usage
    assert.are.equal(50, usage.completion_tokens)
    local plain = http("POST", url .. "/v1/chat/completions", chat_body("Once upon a time", { max_tokens = 50, temperature = 0 })).json
    assert.are.equal(plain.choices[1].message.content, table.concat(text))
    assert.are.equal(plain.usage.prompt_tokens, usage.prompt_tokens)
  end)

  it("streams pieces as they are generated: the first arrives long before the end", function()
    -- timestamps of every line, taken as curl delivers them
    local body = tmpfile(enc(chat_body("Once upon a time", { max_tokens = 800, temperature = 0, ignore_eos = true, stream = true })))
    local out = sh(("curl -s -N -m 60 -H 'Content-Type: application/json' --data-binary @%s %s/v1/chat/completions"
                    .. " | while IFS= read -r line; do [ -n \"$line\" ] && echo \"$(date +%%s.%%N) ${#line}\"; done"):format(body, url))
    local times = {}
    for t in out:gmatch("([%d.]+) %d+\n") do times[#times + 1] = tonumber(t) end
    assert.is_true(#times >= 5, out)
    local first_content, last = times[2], times[#times]
    assert.is_true(last - first_content > 0.05, ("first piece %.3f s before the end"):format(last - first_content))
    assert.is_true(#times > 6, "few chunks: " .. #times)
  end)

  it("text completions, plain and streamed, from a string or from token ids", function()
    local want = model:generate("Once upon a time", { temperature = 0, max_tokens = 30 })
    local r = http("POST", url .. "/v1/completions", { model = NAME, prompt = "Once upon a time", max_tokens = 30, temperature = 0 })
    assert.are.equal(200, r.status, r.text)
    assert.are.equal("text_completion", r.json.object)
    assert.are.equal(want, r.json.choices[1].text)
    assert.are.equal(#model:tokenize("Once upon a time"), r.json.usage.prompt_tokens)
    local ids = model:tokenize("Once upon a time")
    local r2 = http("POST", url .. "/v1/completions", { prompt = ids, max_tokens = 30, temperature = 0 })
    assert.are.equal(want, r2.json.choices[1].text)
    local s = http("POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 30, temperature = 0, stream = true })
    local chunks, done = events(s.text)
    assert.is_true(done)
    local parts = {}
    for _, c in ipairs(chunks) do
      assert.are.equal("text_completion", c.object)
      parts[#parts + 1] = c.choices[1].text
    end
    assert.are.equal(want, table.concat(parts))
    assert.are.equal("length", chunks[#chunks].choices[1].finish_reason)
  end)

  it("embeddings equal model:embed, as floats and as base64", function()
    local r = http("POST", url .. "/v1/embeddings", { model = NAME, input = { "Once upon a time", "Lily" } })
    assert.are.equal(200, r.status, r.text)
    assert.are.equal("list", r.json.object)
    assert.are.equal(2, #r.json.data)
    local want = model:embed({ "Once upon a time", "Lily" }, { normalize = true }):totable()
    for i = 1, 2 do
      local e = r.json.data[i]
      assert.are.equal("embedding", e.object)
      assert.are.equal(i - 1, e.index)
      assert.are.equal(model.n_embd, #e.embedding)
      assert.is_true(S.maxdiff(want[i], e.embedding) < 1e-5)
    end
    assert.are.equal(#model:tokenize("Once upon a time") + #model:tokenize("Lily"), r.json.usage.prompt_tokens)
    -- base64: little-endian float32 (the openai client's default, decoded in its spec below)
    local b = http("POST", url .. "/v1/embeddings", { input = "Lily", encoding_format = "base64" })
    local b64 = b.json.data[1].embedding
    assert.are.equal("string", type(b64))
    assert.are.equal(model.n_embd * 4, tonumber((sh("printf %s " .. q(b64) .. " | base64 -d | wc -c"):match("%d+"))))
  end)

  it("bad requests get OpenAI-style errors, and the server keeps serving", function()
    local cases = {
      { "bad JSON", "POST", "/v1/chat/completions", "{\"messages\": [", 400 },
      { "not an object", "POST", "/v1/chat/completions", "[1, 2]", 400 },
      { "empty body", "POST", "/v1/completions", "", 400 },
      { "messages missing", "POST", "/v1/chat/completions", { model = NAME }, 400, "messages" },
      { "messages a string", "POST", "/v1/chat/completions", { messages = "hi" }, 400, "messages" },
      { "message without role", "POST", "/v1/chat/completions", { messages = { { content = "hi" } } }, 400, "messages" },
      { "temperature a string", "POST", "/v1/chat/completions", chat_body("hi", { temperature = "hot" }), 400, "temperature" },
      { "temperature out of range", "POST", "/v1/chat/completions", chat_body("hi", { temperature = 5 }), 400, "temperature" },
      { "max_tokens zero", "POST", "/v1/chat/completions", chat_body("hi", { max_tokens = 0 }), 400, "max_tokens" },
      { "max_tokens fractional", "POST", "/v1/completions", { prompt = "hi", max_tokens = 1.5 }, 400, "max_tokens" },
      { "stop a number", "POST", "/v1/completions", { prompt = "hi", stop = 3 }, 400, "stop" },
      { "stream not boolean", "POST", "/v1/completions", { prompt = "hi", stream = "yes" }, 400, "stream" },
      { "n = 2", "POST", "/v1/completions", { prompt = "hi", n = 2 }, 400, "n" },
      { "token id out of range", "POST", "/v1/completions", { prompt = { 1, 99999 } }, 400, "prompt" },
      { "prompt too long", "POST", "/v1/completions", { prompt = ("once upon a time "):rep(800) }, 400 },
      { "embedding input a number", "POST", "/v1/embeddings", { input = 5 }, 400, "input" },
      { "unknown model", "POST", "/v1/chat/completions", chat_body("hi", { model = "gpt-17" }), 404, "model", "model_not_found" },
      { "unknown model (embeddings)", "POST", "/v1/embeddings", { model = "nope", input = "x" }, 404, "model" },
      { "unknown model (GET)", "GET", "/v1/models/nope", nil, 404, "model" },
      { "unknown URL", "GET", "/v2/nothing", nil, 404 },
      { "wrong method", "GET", "/v1/chat/completions", nil, 405 },
      { "text beyond any context", "POST", "/v1/chat/completions", chat_body(("x"):rep(200000)), 400, "messages", "context_length_exceeded" },
      { "body over nginx's limit", "POST", "/v1/completions", { prompt = ("x"):rep(1100000) }, 413, nil, "request_too_large" },
    }
    for _, c in ipairs(cases) do
      local r = http(c[2], url .. c[3], c[4])
      assert.are.equal(c[5], r.status, c[1] .. ": " .. r.text)
      assert.are.equal("table", type(r.json), c[1])
      local e = r.json.error
      assert.are.equal("string", type(e.message), c[1])
      assert.are.equal("invalid_request_error", e.type, c[1])
      if c[6] then assert.are.equal(c[6], e.param, c[1]) end
      if c[7] then assert.are.equal(c[7], e.code, c[1]) end
    end
    local ok = http("POST", url .. "/v1/chat/completions", chat_body("Once upon a time", { max_tokens = 5 }))
    assert.are.equal(200, ok.status)
    assert.are.equal(200, http("GET", url .. "/health").status)
  end)

  it("decodes concurrent requests together, each as it would be alone (greedy or seeded)", function()
    local prompts = { "Once upon a time", "Lily and Tom went to the park.", "The cat sat", "Hello world" }
    -- greedy, and sampled with a seed
    local function body(i, stream)
      return { prompt = prompts[i], max_tokens = 128, temperature = i <= 2 and 0 or 0.9, seed = i, ignore_eos = true, stream = stream }
    end
    local alone = {}
    for i = 1, #prompts do alone[i] = http("POST", url .. "/v1/completions", body(i, false)).json end
    local list = {}
    for i = 1, #prompts do list[i] = { "POST", url .. "/v1/completions", body(i, i % 2 == 0) } end
    local before = http("GET", url .. "/health").json
    local rs = parallel(list)
    for i, r in ipairs(rs) do
      assert.are.equal(200, r.status, r.text)
      local text
      if i % 2 == 0 then
        local parts = {}
        for _, c in ipairs((events(r.text))) do parts[#parts + 1] = c.choices[1].text end
        text = table.concat(parts)
      else
        text = r.json.choices[1].text
      end
      assert.are.equal(alone[i].choices[1].text, text)
    end
    -- sequences per forward pass, on average (1 if each had been decoded on its own)
    local after = http("GET", url .. "/health").json
    local per_pass = (after.rows - before.rows) / (after.forwards - before.forwards)
    assert.is_true(per_pass > 1.5, ("%.2f sequences per forward pass: %s"):format(per_pass, enc(after)))
  end)

  it("GET /health stays fast while two generations run", function()
    -- long enough (the slots hold 2048 tokens here) that a fast machine is still generating
    -- when the probes run; the probes start once /health reports both generations running
    local long = chat_body("Once upon a time", { max_tokens = 2000, temperature = 0.8, ignore_eos = true, stream = true })
    local gen = curl_cmd("POST", url .. "/v1/chat/completions", long, { head = "/dev/null", body = "/dev/null" })
    -- 20 probes on one keep-alive connection, from a client that the machine's other work
    -- does not delay (nice -10 when allowed): what is measured is the server
    local probes, bodies = {}, {}
    for i = 1, 20 do
      bodies[i] = tmpfile()
      probes[i] = "-o " .. bodies[i] .. " " .. url .. "/health"
    end
    local wait_busy = ("for i in $(seq 200); do curl -s %s/health | grep -q '\"busy\":[2-9]' && break; sleep 0.01; done")
                      :format(url)
    local out = sh(("(%s > /dev/null) & (%s > /dev/null) & %s; nice -n -10 curl -s --rate 50/s -w '%%{http_code} %%{time_total}\\n' %s; wait")
                   :format(gen, gen, wait_busy, table.concat(probes, " ")))
    local times, busy = {}, 0
    for status, t in out:gmatch("(%d+) ([%d.]+)\n") do
      assert.are.equal("200", status)
      times[#times + 1] = tonumber(t) * 1000
    end
    assert.are.equal(20, #times, out)
    for i = 1, 20 do
      if json.decode(slurp(bodies[i])).busy >= 2 then busy = busy + 1 end
    end
    assert.is_true(busy >= 10, "the generations ended before the probes: " .. busy)
    local median, worst = p50(times)
    assert.is_true(median < 10, ("median /health latency %.1f ms (worst %.1f)"):format(median, worst))
  end)

  it("the official openai npm client: chat, streaming, completions, embeddings, models, errors", function()
    local dir = tmp .. "/npm"
    local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error openai"):format(dir, dir))
    assert.are.equal(0, rc, "npm install openai failed: " .. out)
    local script = dir .. "/drive.mjs"
    local f = assert(io.open(script, "wb"))
    f:write([==[
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "unused", maxRetries: 0 });
const msgs = [{ role: "user", content: "Once upon a time" }];
const out = {};
out.chat = await client.chat.completions.create({ model: "stories260K", messages: msgs, max_tokens: 24, temperature: 0 });
const stream = await client.chat.completions.create({ model: "stories260K", messages: msgs, max_tokens: 24, temperature: 0, stream: true });
out.stream = { text: "", chunks: 0, finish: null };
for await (const c of stream) {
  out.stream.chunks++;
  out.stream.text += c.choices[0]?.delta?.content ?? "";
  if (c.choices[0]?.finish_reason) out.stream.finish = c.choices[0].finish_reason;
}
out.completion = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", max_tokens: 16, temperature: 0 });
const emb = await client.embeddings.create({ model: "stories260K", input: ["Lily", "Tom"] });
out.embeddings = emb.data.map(d => Array.from(d.embedding));
out.models = (await client.models.list()).data.map(m => m.id);
for (const [name, req] of [["missing", { model: "no-such-model", messages: msgs }],
                           ["bad", { model: "stories260K", messages: msgs, temperature: "hot" }]]) {
  try { await client.chat.completions.create(req); out[name] = "no error"; }
  catch (e) { out[name] = { status: e.status, cls: e.constructor.name, code: e.code ?? null, param: e.param ?? null }; }
}
console.log(JSON.stringify(out));
]==])
    f:close()
    local res, nrc = sh(("node %s %s"):format(script, url))
    assert.are.equal(0, nrc, res)
    local j = assert(json.decode(res:match("[^\n]*$") ~= "" and res:match("[^\n]*$") or res:match("([^\n]*)\n$")), res)
    local want = local_chat({ { role = "user", content = "Once upon a time" } }, 24)
    assert.are.equal(want, j.chat.choices[1].message.content)
    assert.are.equal(24, j.chat.usage.completion_tokens)
    assert.are.equal(want, j.stream.text)
    assert.are.equal("length", j.stream.finish)
    assert.is_true(j.stream.chunks >= 3)
    assert.are.equal(model:generate("Once upon a time", { temperature = 0, max_tokens = 16 }), j.completion.choices[1].text)
    local e = model:embed({ "Lily", "Tom" }, { normalize = true }):totable()
    assert.is_true(S.maxdiff(e[1], j.embeddings[1]) < 1e-5) -- the client asks for base64 and decodes it
    assert.is_true(S.maxdiff(e[2], j.embeddings[2]) < 1e-5)
    assert.are.same({ NAME }, j.models)
    assert.are.same({ status = 404, cls = "NotFoundError", code = "model_not_found", param = "model" }, j.missing)
    assert.are.same({ status = 400, cls = "BadRequestError", code = json.null, param = "temperature" }, j.bad)
  end)
end)

describe("OpenResty server under pressure #once", function()
  setup(function() tmp = sh("mktemp -d /tmp/moonlm-spec.XXXXXX"):gsub("%s+$", "") end)
  teardown(function()
    if tmp and tmp:find("^/tmp/moonlm%-spec") then sh("rm -rf " .. q(tmp)) end
    tmp = nil
  end)

  it("answers 503 with an OpenAI-style error when the queue is full, and frees slots of clients that left", function()
    local srv = start { MOONLM_SLOTS = "1", MOONLM_QUEUE = "1" }
    local ok, err = pcall(function()
      local url = srv.url
      local long = enc(chat_body("Once upon a time", { max_tokens = 1900, ignore_eos = true, stream = true }))
      local body = tmpfile(long)
      -- two long streams: one decoding, one waiting; clients that would wait 5 s
      local pids = sh(("for i in 1 2; do curl -s -N -m 5 -o /dev/null -H 'Content-Type: application/json' --data-binary @%s %s/v1/chat/completions >/dev/null 2>&1 & echo $!; sleep 0.2; done"):format(body, url))
      local h
      for _ = 1, 40 do
        h = http("GET", url .. "/health").json
        if h.busy == 1 and h.queued == 1 then break end
        sh("sleep 0.05")
      end
      assert.are.same({ 1, 1 }, { h.busy, h.queued }, enc(h))
      local r = http("POST", url .. "/v1/chat/completions", chat_body("Hello", { max_tokens = 4 }))
      assert.are.equal(503, r.status, r.text)
      assert.are.equal("server_error", r.json.error.type)
      assert.are.equal("server_busy", r.json.error.code)
      assert.truthy(r.head:find("Retry%-After"))
      assert.are.equal(200, http("GET", url .. "/health").status)
      -- the clients go away: their slot and queue place are freed, and new requests run
      for pid in pids:gmatch("%d+") do sh("kill " .. pid) end
      for _ = 1, 60 do
        h = http("GET", url .. "/health").json
        if h.busy == 0 and h.queued == 0 then break end
        sh("sleep 0.05")
      end
      assert.are.same({ 0, 0 }, { h.busy, h.queued }, enc(h))
      assert.are.equal(1, h.rejected)
      local again = http("POST", url .. "/v1/chat/completions", chat_body("Hello", { max_tokens = 4 }))
      assert.are.equal(200, again.status)
    end)
    srv:stop()
    assert(ok, err)
  end)

  it("balancer.conf: two nodes behind least_conn, a conversation id keeps a conversation on its node", function()
    local nodes, bal = {}, nil
    local ok, err = pcall(function()
      for i = 1, 2 do nodes[i] = start { MOONLM_SLOTS = "2" } end
      bal = assert(launch.start { conf = "examples/openresty/balancer.conf", wait = "/health",
                                  ports = { [8080] = false, [8081] = nodes[1].port, [8082] = nodes[2].port } })
      local url = bal.url
      -- two long requests at once go to different nodes
      local long = chat_body("Once upon a time", { max_tokens = 400, ignore_eos = true })
      local rs = parallel { { "POST", url .. "/v1/chat/completions", long },
                            { "POST", url .. "/v1/chat/completions", long, delay = 0.1 } }
      assert.are.equal(200, rs[1].status, rs[1].text)
      assert.are.equal(200, rs[2].status, rs[2].text)
      assert.truthy(rs[1].node)
      assert.are_not.equal(rs[1].node, rs[2].node)
      -- streaming passes through unbuffered
      local s = http("POST", url .. "/v1/chat/completions", chat_body("Hello", { max_tokens = 20, stream = true }))
      local _, done = events(s.text)
      assert.is_true(done)
      -- a conversation, turn after turn, stays on one node and reuses its cache there
      for _, conv in ipairs { "conversation-a", "conversation-b", "conversation-c" } do
        local msgs = { { role = "user", content = "Once upon a time" } }
        local first
        for turn = 1, 3 do
          local r = http("POST", url .. "/v1/chat/completions", { messages = msgs, max_tokens = 16, temperature = 0 },
                         "-H " .. q("X-Conversation-Id: " .. conv))
          assert.are.equal(200, r.status, r.text)
          first = first or r.node
          assert.are.equal(first, r.node)
          if turn > 1 then
            assert.is_true(r.json.usage.prompt_tokens_details.cached_tokens > r.json.usage.prompt_tokens / 2, enc(r.json.usage))
          end
          msgs[#msgs + 1] = { role = "assistant", content = r.json.choices[1].message.content }
          msgs[#msgs + 1] = { role = "user", content = "And then? " .. turn }
        end
      end
    end)
    if bal then bal:stop() end
    for _, n in ipairs(nodes) do n:stop() end
    assert(ok, err)
  end)
end)

describe("make serve #once", function()
  setup(function() tmp = sh("mktemp -d /tmp/moonlm-spec.XXXXXX"):gsub("%s+$", "") end)
  teardown(function()
    if tmp and tmp:find("^/tmp/moonlm%-spec") then sh("rm -rf " .. q(tmp)) end
    tmp = nil
  end)

  it("serves in the foreground, prints its URL, and stops and cleans up on Ctrl-C", function()
    local port = launch.free_port()
    local interp = jit and "luajit" or "lua5.4"
    local log = os.tmpname()
    -- what `make serve PORT=...` runs after building, in its own process group
    local pgid = sh(("setsid %s -e 'require(\"moonlm.resty.launch\").serve{ port = %d, model = \"%s\", lib_dir = \"%s/5.1\" }'"
                     .. " > %s 2>&1 < /dev/null & echo $!"):format(interp, port, stories, BUILD, log)):match("%d+")
    local ok, err = pcall(function()
      local status
      for _ = 1, 100 do
        status = http("GET", ("http://127.0.0.1:%d/health"):format(port)).status
        if status == 200 then break end
        sh("sleep 0.05")
      end
      assert.are.equal(200, status, S.read_file(log))
      local out = S.read_file(log)
      assert.truthy(out:find(("http://127.0.0.1:%d/v1"):format(port), 1, true), out)
      local prefix = out:match("logs in (%S+)/logs")
      assert.truthy(prefix, out)
      local r = http("POST", ("http://127.0.0.1:%d/v1/completions"):format(port), { prompt = "Once", max_tokens = 4 })
      assert.are.equal(200, r.status)
      sh("kill -INT -" .. pgid) -- Ctrl-C reaches the whole foreground group
      local gone
      for _ = 1, 100 do
        gone = select(2, sh("kill -0 " .. pgid)) ~= 0
        if gone then break end
        sh("sleep 0.05")
      end
      assert.is_true(gone, "still running")
      assert.is_false(S.exists(prefix .. "/nginx.conf"), "prefix left behind")
      assert.are_not.equal(200, http("GET", ("http://127.0.0.1:%d/health"):format(port)).status)
    end)
    sh("kill -KILL -" .. pgid .. " 2>/dev/null")
    os.remove(log)
    assert(ok, err)
  end)
end)

describe("moonlm.resty.thread (the code pooled VMs run) #once", function()
  local unpack = table.unpack or unpack -- luacheck: ignore
  -- Every call may land on another pooled VM: a fresh copy of the module (another VM's)
  -- must continue a request exactly where the previous call left it.
  local function fresh()
    package.loaded["moonlm.resty.thread"] = nil
    return require "moonlm.resty.thread"
  end

  it("continues sampled requests identically in another VM, with several sequences per pass", function()
    local ctx = assert(model:context { n_ctx = 1024, seqs = 2 })
    local function run(switch)
      ctx:clear()
      local th = fresh()
      local slots, got = {}, { {}, {} }
      for s = 1, 2 do
        slots[s] = { id = "r" .. s, seq = s - 1, feed = model:tokenize(s == 1 and "Once upon a time" or "Lily"),
                     max_new = 60, draws = 0, ignore_eos = true,
                     sampling = { temperature = 0.9, top_k = 40, top_p = 0.95, seed = 10 + s,
                                  presence_penalty = 0.5, logit_bias = { [13] = -math.huge } } }
      end
      for _ = 1, 30 do
        if switch then th = fresh() end
        local res = assert(th.step(ctx.handle, slots, { max_steps = 4, budget = 1 }))
        assert.is_true(res.rows >= res.forwards)
        local live = false
        for s = 1, 2 do
          local r = res[s]
          for _, id in ipairs(r.ids) do got[s][#got[s] + 1] = id end
          -- the cache holds the prompt and every sampled token but the last
          assert.are.equal(#model:tokenize(s == 1 and "Once upon a time" or "Lily") + #got[s] - 1, r.pos)
          slots[s].draws, slots[s].mu = r.draws, r.mu
          slots[s].feed = r.done and {} or { r.ids[#r.ids] }
          slots[s].max_new = 60 - #got[s]
          slots[s].hist = { unpack(got[s]) } -- (the thread's copy, as between VMs)
          live = live or not r.done
        end
        if not live then break end
      end
      return got
    end
    local same, moved = run(false), run(true)
    assert.are.equal(60, #same[1])
    assert.are.same(same, moved)
    for s = 1, 2 do
      for _, id in ipairs(same[s]) do assert.are_not.equal(13, id) end -- the banned token
    end
    ctx:close()
  end)
end)
