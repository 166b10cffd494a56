-- The OpenResty server (moonlm.resty) as clients see it: a real nginx with lua-nginx-module
-- on a free loopback port and a temporary prefix, started from examples/openresty/*.conf,
-- driven with curl and with the official `openai` npm client, and stopped by its pid.
-- Tagged #once: it runs once per interpreter, not once per kernel level. Keys, CORS, limits
-- and several models: resty_access_spec.lua; nodes behind the balancer: resty_scaleout_spec.lua.
local S = require "support"
local H = require "resty_helpers"
local lm = require "moonlm"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local BUILD = H.BUILD
local stories = H.stories
local NAME = "stories260K"
local sh, q, tmpfile, enc, http, parallel, events, slurp = H.sh, H.q, H.tmpfile, H.enc, H.http, H.parallel, H.events, H.slurp
local curl_cmd, start = H.curl_cmd, H.start

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
    H.tmpdir()
    srv = start { MOONLM_SLOTS = "4", MOONLM_QUEUE = "8", MOONLM_N_CTX = "2048", MOONLM_MAX_TOKENS_LIMIT = "4096" }
    url = srv.url
  end)

  teardown(function()
    if srv then srv:stop() end
    H.cleanup()
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
    assert.are.equal(j.id, r.header("x-request-id"))
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
      { "n = 0", "POST", "/v1/completions", { prompt = "hi", n = 0 }, 400, "n" },
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
      -- what the server cannot honour is refused, never ignored
      { "unknown field", "POST", "/v1/completions", { prompt = "hi", temprature = 0.5 }, 400, "temprature", "unknown_parameter" },
      { "response_format yaml", "POST", "/v1/chat/completions", chat_body("hi", { response_format = { type = "yaml" } }),
        400, "response_format" },
      { "response_format schema without json_schema", "POST", "/v1/completions", { prompt = "hi", response_format = { type = "json_schema" } },
        400, "response_format" },
      { "tool_choice without tools", "POST", "/v1/chat/completions", chat_body("hi", { tool_choice = "required" }), 400, "tool_choice" },
      { "top_logprobs without logprobs", "POST", "/v1/chat/completions", chat_body("hi", { top_logprobs = 2 }), 400, "top_logprobs" },
      { "logprobs a boolean (completions)", "POST", "/v1/completions", { prompt = "hi", logprobs = true }, 400, "logprobs" },
      { "n_probs", "POST", "/v1/completions", { prompt = "hi", n_probs = 3 }, 400, "n_probs", "unsupported_parameter" },
      { "functions", "POST", "/v1/chat/completions", chat_body("hi", { functions = { { name = "f" } } }), 400, "functions", "unsupported_parameter" },
      { "grammar not a string", "POST", "/v1/completions", { prompt = "hi", grammar = 3 }, 400, "grammar" },
      { "echo", "POST", "/v1/completions", { prompt = "hi", echo = true }, 400, "echo", "unsupported_parameter" },
      { "stream_options without stream", "POST", "/v1/completions", { prompt = "hi", stream_options = { include_usage = true } },
        400, "stream_options" },
      { "stream_options unknown", "POST", "/v1/completions", { prompt = "hi", stream = true, stream_options = { foo = true } },
        400, "stream_options", "unknown_parameter" },
      { "max_tokens over the ceiling", "POST", "/v1/completions", { prompt = "hi", max_tokens = 5000 }, 400, "max_tokens", "max_tokens_exceeded" },
      { "max_completion_tokens over the ceiling", "POST", "/v1/chat/completions", chat_body("hi", { max_completion_tokens = 4097 }),
        400, "max_completion_tokens", "max_tokens_exceeded" },
      { "lone surrogate", "POST", "/v1/completions", '{"prompt": "a\\ud800b"}', 400, nil, "invalid_utf8" },
      { "lone low surrogate", "POST", "/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\udc00"}]}', 400, nil, "invalid_utf8" },
      { "invalid UTF-8", "POST", "/v1/completions", '{"prompt": "caf\xE9"}', 400, nil, "invalid_utf8" },
      { "overlong UTF-8", "POST", "/v1/completions", '{"prompt": "\xC0\xAF"}', 400, nil, "invalid_utf8" },
      { "encoded surrogate", "POST", "/v1/embeddings", '{"input": "\xED\xA0\x80"}', 400, nil, "invalid_utf8" },
      { "OPTIONS unknown URL", "OPTIONS", "/v2/nothing", nil, 404 },
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
    -- what is accepted at its neutral value
    local neutral = http("POST", url .. "/v1/chat/completions", chat_body("Once upon a time", {
      max_tokens = 5, n = 1, logprobs = false, response_format = { type = "text" }, tools = {}, tool_choice = "none",
      store = false, user = "someone", stream_options = json.null, seed = 3 }))
    assert.are.equal(200, neutral.status, neutral.text)
    local pair = http("POST", url .. "/v1/completions", '{"prompt": "\\ud83d\\ude00 caf\u{e9}", "max_tokens": 2}')
    assert.are.equal(200, pair.status, pair.text) -- a surrogate pair and UTF-8 text are fine
    local ok = http("POST", url .. "/v1/chat/completions", chat_body("Once upon a time", { max_tokens = 5 }))
    assert.are.equal(200, ok.status)
    assert.are.equal(200, http("GET", url .. "/health").status)
    -- OPTIONS without CORS: the methods of the URL
    local o = http("OPTIONS", url .. "/v1/chat/completions")
    assert.are.equal(204, o.status)
    assert.are.equal("POST, OPTIONS", o.header("allow"))
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
    -- the same probes on an idle server first: a machine busy with other work slows both,
    -- while a blocked event loop would make the busy probes wait for whole decode steps
    local function probe_ms(out)
      local t = {}
      for status, s in out:gmatch("(%d+) ([%d.]+)\n") do
        assert.are.equal("200", status)
        t[#t + 1] = tonumber(s) * 1000
      end
      return t
    end
    local idle = probe_ms(sh(("nice -n -10 curl -s --rate 50/s -w '%%{http_code} %%{time_total}\\n' %s")
                               :format(table.concat(probes, " "))))
    assert.are.equal(20, #idle)
    local idle_median = p50(idle)
    local wait_busy = ("for i in $(seq 200); do curl -s %s/health | grep -q '\"busy\":[2-9]' && break; sleep 0.01; done")
                      :format(url)
    local out = sh(("(%s > /dev/null) & (%s > /dev/null) & %s; nice -n -10 curl -s --rate 50/s -w '%%{http_code} %%{time_total}\\n' %s; wait")
                   :format(gen, gen, wait_busy, table.concat(probes, " ")))
    local times, busy = probe_ms(out), 0
    assert.are.equal(20, #times, out)
    for i = 1, 20 do
      if json.decode(slurp(bodies[i])).busy >= 2 then busy = busy + 1 end
    end
    assert.is_true(busy >= 10, "the generations ended before the probes: " .. busy)
    local median, worst = p50(times)
    local limit = math.max(10, 4 * idle_median)
    assert.is_true(median < limit, ("median /health latency %.1f ms (worst %.1f; idle median %.1f ms)")
                                   :format(median, worst, idle_median))
  end)

  it("the official openai npm client: chat, streaming, completions, embeddings, models, errors", function()
    local j = H.node([==[
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "unused", maxRetries: 0 });
const msgs = [{ role: "user", content: "Once upon a time" }];
const out = {};
out.chat = await client.chat.completions.create({ model: "stories260K", messages: msgs, max_tokens: 24, temperature: 0 });
const stream = await client.chat.completions.create({ model: "stories260K", messages: msgs, max_tokens: 24, temperature: 0,
                                                      stream: true, stream_options: { include_usage: true } });
out.stream = { text: "", chunks: 0, content_chunks: 0, finish: null, usage: null };
for await (const c of stream) {
  out.stream.chunks++;
  const t = c.choices[0]?.delta?.content ?? "";
  if (t !== "") out.stream.content_chunks++;
  out.stream.text += t;
  if (c.choices[0]?.finish_reason) out.stream.finish = c.choices[0].finish_reason;
  if (c.usage) out.stream.usage = c.usage;
}
out.completion = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", max_tokens: 16, temperature: 0 });
const emb = await client.embeddings.create({ model: "stories260K", input: ["Lily", "Tom"] });
out.embeddings = emb.data.map(d => Array.from(d.embedding));
out.models = (await client.models.list()).data.map(m => m.id);
for (const [name, req] of [["missing", { model: "no-such-model", messages: msgs }],
                           ["bad", { model: "stories260K", messages: msgs, temperature: "hot" }],
                           ["format", { model: "stories260K", messages: msgs, response_format: { type: "yaml" } }],
                           ["functions", { model: "stories260K", messages: msgs,
                                           functions: [{ name: "f", parameters: {} }] }]]) {
  try { await client.chat.completions.create(req); out[name] = "no error"; }
  catch (e) { out[name] = { status: e.status, cls: e.constructor.name, code: e.code ?? null, param: e.param ?? null }; }
}
console.log(JSON.stringify(out));
]==], url)
    local want = local_chat({ { role = "user", content = "Once upon a time" } }, 24)
    assert.are.equal(want, j.chat.choices[1].message.content)
    assert.are.equal(24, j.chat.usage.completion_tokens)
    assert.are.equal(want, j.stream.text)
    assert.are.equal("length", j.stream.finish)
    -- one chunk per generated token (the reply is ASCII: no token is held back)
    assert.are.equal(24, j.stream.usage.completion_tokens)
    assert.are.equal(24, j.stream.content_chunks)
    assert.are.equal(model:generate("Once upon a time", { temperature = 0, max_tokens = 16 }), j.completion.choices[1].text)
    local e = model:embed({ "Lily", "Tom" }, { normalize = true }):totable()
    assert.is_true(S.maxdiff(e[1], j.embeddings[1]) < 1e-5) -- the client asks for base64 and decodes it
    assert.is_true(S.maxdiff(e[2], j.embeddings[2]) < 1e-5)
    assert.are.same({ NAME }, j.models)
    assert.are.same({ status = 404, cls = "NotFoundError", code = "model_not_found", param = "model" }, j.missing)
    assert.are.same({ status = 400, cls = "BadRequestError", code = json.null, param = "temperature" }, j.bad)
    assert.are.same({ status = 400, cls = "BadRequestError", code = json.null, param = "response_format" }, j.format)
    assert.are.same({ status = 400, cls = "BadRequestError", code = "unsupported_parameter", param = "functions" }, j.functions)
  end)

  it("streams one server-sent event per generated token, the usage last (stream_options.include_usage)", function()
    for _, path in ipairs { "/v1/chat/completions", "/v1/completions" } do
      local body = path == "/v1/completions"
        and { prompt = "Once upon a time", max_tokens = 40, temperature = 0, ignore_eos = true, stream = true,
              stream_options = { include_usage = true } }
        or chat_body("Once upon a time", { max_tokens = 40, temperature = 0, ignore_eos = true, stream = true,
                                           stream_options = { include_usage = true } })
      local r = http("POST", url .. path, body)
      assert.are.equal(200, r.status, r.text)
      local chunks, done = events(r.text)
      assert.is_true(done)
      local text, n = H.content(chunks)
      local usage = chunks[#chunks].usage
      assert.are.equal(40, usage.completion_tokens)
      assert.are.equal(40, n, path) -- ASCII text: every token completes its own piece
      assert.are.equal(0, #chunks[#chunks].choices)
      for i = 1, #chunks - 1 do assert.are.equal(json.null, chunks[i].usage, path) end -- null until the last
      json.set(body, "stream", nil)
      json.set(body, "stream_options", nil)
      local plain = http("POST", url .. path, body).json
      local c = plain.choices[1]
      assert.are.equal(c.text or c.message.content, text)
    end
  end)

  it("POST /tokenize and /detokenize (llama-server's), GET /props", function()
    local text = "Once upon a time, Lily saw a naïve cat."
    local r = http("POST", url .. "/tokenize", { content = text })
    assert.are.equal(200, r.status, r.text)
    local ids = model:tokenize(text, { bos = false, special = true })
    assert.are.same(ids, r.json.tokens)
    local rb = http("POST", url .. "/tokenize", { content = text, add_special = true }).json
    assert.are.same({ model.vocab.bos }, { rb.tokens[1] })
    assert.are.equal(#ids + 1, #rb.tokens)
    -- pieces: strings, or byte arrays for tokens that hold part of a UTF-8 character
    local p = http("POST", url .. "/tokenize", { content = text, with_pieces = true }).json.tokens
    local bytes = {}
    for i, t in ipairs(p) do
      assert.are.equal(ids[i], t.id)
      if type(t.piece) == "string" then
        bytes[#bytes + 1] = t.piece
      else
        for _, b in ipairs(t.piece) do bytes[#bytes + 1] = string.char(b) end
      end
    end
    assert.are.equal(" " .. text, table.concat(bytes))
    local split = 0
    for _, t in ipairs(p) do
      if type(t.piece) == "table" then split = split + 1 end
    end
    assert.is_true(split >= 2, "ï as byte tokens") -- stories260K has no token for ï
    local d = http("POST", url .. "/detokenize", { tokens = ids })
    assert.are.equal(200, d.status, d.text)
    assert.are.equal(model:detokenize(ids, { strip_space = false }), d.json.content)
    assert.are.equal(" " .. text, d.json.content)
    for _, c in ipairs {
      { "/tokenize", { content = 5 }, "content" }, { "/tokenize", { content = "x", with_pieces = "yes" }, "with_pieces" },
      { "/tokenize", { content = "x", add_bos = true }, "add_bos" }, { "/detokenize", { tokens = { 1, 99999 } }, "tokens" },
      { "/detokenize", { tokens = "1 2" }, "tokens" },
    } do
      local e = http("POST", url .. c[1], c[2])
      assert.are.equal(400, e.status, e.text)
      assert.are.equal(c[3], e.json.error.param)
    end
    local pr = http("GET", url .. "/props")
    assert.are.equal(200, pr.status, pr.text)
    local j = pr.json
    assert.are.equal(NAME, j.model)
    assert.are.same({ NAME }, j.models)
    assert.are.equal(4, j.total_slots)
    assert.are.equal(2048, j.n_ctx)
    assert.are.equal(2048, j.default_generation_settings.n_ctx)
    assert.are.equal(4096, j.default_generation_settings.max_tokens_limit)
    assert.are.equal(512, j.meta.n_vocab)
    assert.are.equal("llama", j.meta.arch)
    assert.are.equal("stories260K.gguf", j.model_path)
    assert.are.equal(model:token(model.vocab.bos), j.bos_token)
    assert.truthy(j.chat_template:find("im_start", 1, true)) -- stories260K has none: chatml
    assert.truthy(j.build_info:find("^moonlm "))
    assert.are.equal(404, http("GET", url .. "/props?model=nope").status)
  end)

  it("reuses the longest cached prompt prefix of any slot, a busy one too (cached_tokens)", function()
    local base = "In a quiet village by the sea there lived an old fisherman who had a small boat and a cat."
    local n_base = #model:tokenize(base)
    local long = H.background("POST", url .. "/v1/completions",
                              { prompt = base, max_tokens = 1900, ignore_eos = true, temperature = 0, stream = true })
    -- once it decodes, a request that extends its prompt gets a copy of its cache
    assert.truthy(H.until_true(20, function()
      local h = http("GET", url .. "/health").json
      return h.busy >= 1 and h.tokens > 0
    end))
    local prompt = base .. " Every morning the cat"
    local r = http("POST", url .. "/v1/completions", { prompt = prompt, max_tokens = 12, temperature = 0 })
    long.kill()
    assert.are.equal(200, r.status, r.text)
    local cached = r.json.usage.prompt_tokens_details.cached_tokens
    assert.is_true(cached >= n_base - 1 and cached < r.json.usage.prompt_tokens, enc(r.json.usage))
    -- and the copied cache gives the reply the model gives alone
    assert.are.equal(model:generate(prompt, { temperature = 0, max_tokens = 12 }), r.json.choices[1].text)
    -- cache_prompt = false (llama-server's field) prefills everything
    local cold = http("POST", url .. "/v1/completions", { prompt = prompt, max_tokens = 12, temperature = 0, cache_prompt = false }).json
    assert.are.equal(0, cold.usage.prompt_tokens_details.cached_tokens)
    assert.are.equal(r.json.choices[1].text, cold.choices[1].text)
  end)

  it("GET /metrics: the Prometheus text format (parsed by parse-prometheus-text-format), counters that move", function()
    local before = H.scrape(url)
    local body = chat_body("Once upon a time", { max_tokens = 30, temperature = 0, stream = true, ignore_eos = true })
    json.set(body, "stream_options", { include_usage = true })
    local ok = http("POST", url .. "/v1/chat/completions", body)
    assert.are.equal(200, ok.status)
    local ev = events(ok.text)
    ok.json_usage_cached = ev[#ev].usage.prompt_tokens_details.cached_tokens
    local bad = http("POST", url .. "/v1/chat/completions", chat_body("hi", { temperature = "hot" }))
    assert.are.equal(400, bad.status)
    local again = http("POST", url .. "/v1/chat/completions", chat_body("Once upon a time", { max_tokens = 2 })).json
    local after, text = H.scrape(url)
    local function delta(name, labels) return H.sample(after, name, labels) - H.sample(before, name, labels) end
    assert.is_true(again.usage.prompt_tokens_details.cached_tokens > 0)
    assert.are.equal(again.usage.prompt_tokens_details.cached_tokens + ok.json_usage_cached,
                     delta("moonlm_prompt_tokens_cached_total", { model = NAME }))
    local ep = "/v1/chat/completions"
    assert.are.equal(2, delta("moonlm_requests_total", { endpoint = ep, status = 200 }))
    assert.are.equal(1, delta("moonlm_requests_total", { endpoint = ep, status = 400 }))
    assert.are.equal(32, delta("moonlm_generated_tokens_total", { model = NAME }))
    local _, n_prompt = local_chat({ { role = "user", content = "Once upon a time" } }, 1)
    assert.are.equal(2 * n_prompt, delta("moonlm_prompt_tokens_total", { model = NAME }))
    local types = { moonlm_requests_total = "COUNTER", moonlm_requests_rejected_total = "COUNTER",
                    moonlm_time_to_first_token_seconds = "HISTOGRAM", moonlm_time_per_output_token_seconds = "HISTOGRAM",
                    moonlm_slots_busy = "GAUGE", moonlm_queue_length = "GAUGE", moonlm_kv_cache_usage_ratio = "GAUGE",
                    moonlm_batch_occupancy_ratio = "GAUGE", moonlm_forward_passes_total = "COUNTER" }
    for name, t in pairs(types) do assert.are.equal(t, after[name] and after[name].type, name) end
    assert.are.equal(4, H.sample(after, "moonlm_slots", { model = NAME }))
    assert.are.equal(8, H.sample(after, "moonlm_queue_limit", { model = NAME }))
    assert.are.equal(4 * 2048, H.sample(after, "moonlm_kv_cache_capacity_tokens", { model = NAME }))
    assert.is_true(H.sample(after, "moonlm_kv_cache_tokens", { model = NAME }) > 0)
    assert.is_true(delta("moonlm_batch_rows_total", { model = NAME }) >= delta("moonlm_forward_passes_total", { model = NAME }))
    assert.is_true(delta("moonlm_forward_passes_total", { model = NAME }) >= 30) -- a pass per token at least
    -- histograms: the parser keeps the buckets; the +Inf bucket and _count moved by one
    local function inf(fams, name)
      local m = fams[name] and fams[name].metrics[1]
      return m and tonumber(m.buckets["+Inf"]) or 0
    end
    assert.are.equal(2, inf(after, "moonlm_time_to_first_token_seconds") - inf(before, "moonlm_time_to_first_token_seconds"))
    assert.are.equal(2, inf(after, "moonlm_time_per_output_token_seconds") - inf(before, "moonlm_time_per_output_token_seconds"))
    local count = tonumber(text:match('moonlm_time_to_first_token_seconds_count{model="stories260K"} (%d+)'))
    assert.are.equal(inf(after, "moonlm_time_to_first_token_seconds"), count)
    local last = -1
    for _, v in pairs(after.moonlm_time_to_first_token_seconds.metrics[1].buckets) do last = math.max(last, tonumber(v)) end
    assert.are.equal(count, last) -- cumulative buckets: none above +Inf
  end)

  it("writes one JSON access-log line per request (log_by_lua), keys by id only", function()
    local r = http("POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 7, temperature = 0, user = "u-42" })
    local bad = http("POST", url .. "/v1/completions", { prompt = "hi", foo = 1 })
    assert.are.equal(400, bad.status)
    local lines = {}
    assert.truthy(H.until_true(5, function()
      lines = {}
      for l in slurp(srv.prefix .. "/logs/moonlm.log"):gmatch("[^\n]+") do lines[#lines + 1] = assert(json.decode(l), l) end
      return #lines >= 2 and lines[#lines].status == 400
    end))
    local mine
    for _, l in ipairs(lines) do
      if l.id == r.json.id then mine = l end
    end
    assert.truthy(mine, "no line for " .. r.json.id)
    assert.are.equal("/v1/completions", mine.endpoint)
    assert.are.equal("POST", mine.method)
    assert.are.equal(200, mine.status)
    assert.are.equal(NAME, mine.model)
    assert.are.equal("u-42", mine.user)
    assert.are.equal(r.json.usage.prompt_tokens, mine.prompt_tokens)
    assert.are.equal(7, mine.completion_tokens)
    assert.are.equal("length", mine.finish_reason)
    assert.are.equal("number", type(mine.ttft_ms))
    assert.is_true(mine.total_ms >= mine.ttft_ms)
    assert.are.equal(json.null, mine.key) -- no keys on this server
    assert.truthy(mine.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
    local last = lines[#lines]
    assert.are.equal(400, last.status)
    assert.are.equal("/v1/completions", last.endpoint)
  end)
end)

describe("OpenResty server under pressure #once", function()
  setup(H.tmpdir)
  teardown(H.cleanup)

  it("answers 503 with an OpenAI-style error when the queue is full, and frees slots of clients that left", function()
    -- the two long streams must still be running when the third request comes: stories260K
    -- writes ~2,000 tokens/s on a fast core, so they get a context of 32768 and 30,000 tokens
    -- (1,900 in a 2048 context ended before the check on the 2026-12-07 Xeon)
    local srv = start { MOONLM_SLOTS = "1", MOONLM_QUEUE = "1", MOONLM_N_CTX = "32768" }
    local ok, err = pcall(function()
      local url = srv.url
      local long = enc(chat_body("Once upon a time", { max_tokens = 30000, ignore_eos = true, stream = true }))
      local body = tmpfile(long)
      -- two long streams: one decoding, one waiting (the clients leave when killed below; -m
      -- only bounds them if this test fails first)
      local pids = sh(("for i in 1 2; do curl -s -N -m 30 -o /dev/null -H 'Content-Type: application/json' --data-binary @%s %s/v1/chat/completions >/dev/null 2>&1 & echo $!; sleep 0.2; done"):format(body, url))
      local h
      for _ = 1, 40 do
        h = http("GET", url .. "/health").json
        if h.busy == 1 and h.queued == 1 then break end
        sh("sleep 0.05")
      end
      assert.are.same({ 1, 1 }, { h.busy, h.queued }, enc(h))
      -- /metrics says so too
      local m = H.scrape(url)
      assert.are.same({ 1, 1 }, { H.sample(m, "moonlm_slots_busy", { model = NAME }), H.sample(m, "moonlm_queue_length", { model = NAME }) })
      -- one sequence per pass in the one slot; its cache cells in use
      assert.are.equal(1, H.sample(m, "moonlm_batch_occupancy_ratio", { model = NAME }))
      local kv = H.sample(m, "moonlm_kv_cache_usage_ratio", { model = NAME })
      assert.is_true(kv > 0 and kv <= 1, tostring(kv))
      assert.are.equal(kv, H.sample(m, "moonlm_kv_cache_tokens", { model = NAME })
                           / H.sample(m, "moonlm_kv_cache_capacity_tokens", { model = NAME }))
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
      -- a burst: requests that a free slot will take are not "waiting"; one slot and one
      -- place in the queue take two of four requests that come together
      local burst = {}
      for i = 1, 4 do
        burst[i] = { "POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 1000, ignore_eos = true } }
      end
      local counts = {}
      for _, r in ipairs(parallel(burst)) do counts[r.status] = (counts[r.status] or 0) + 1 end
      assert.are.same({ [200] = 2, [503] = 2 }, counts)
      -- every 503 counted for its reason (the first one and two of the burst)
      assert.are.equal(3, H.sample(H.scrape(url), "moonlm_requests_rejected_total", { status = 503, reason = "busy" }))
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
  setup(H.tmpdir)
  teardown(H.cleanup)

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
      -- until both are done: a call steps at least once (up to 4, within its 1 s budget; a
      -- machine busy with other work gets fewer per call), so 61 calls are enough
      for _ = 1, 200 do
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
