-- The OpenResty server with what an operator turns on before exposing it: API keys (a keys
-- file, re-read on reload), CORS, per-key limits, two models in one server, and the "call"
-- flush policy. A real nginx from examples/openresty/nginx.conf, driven with curl and the
-- official `openai` npm client. Tagged #once.
local H = require "resty_helpers"
local lm = require "moonlm"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local sh, http, events, slurp = H.sh, H.http, H.events, H.slurp

local model = assert(lm.load(H.stories))

local KEYS = { alice = "sk-alice-0123456789abcdef", bob = "sk-bob-0123456789abcdef", carol = "sk-carol-0123456789abcdef",
               dave = "sk-dave-0123456789abcdef" }
local function auth(who) return "-H " .. H.q("Authorization: Bearer " .. KEYS[who]) end
local function sha1_id(key) return "key-" .. sh("printf %s " .. H.q(key) .. " | sha1sum"):sub(1, 8) end

local function local_chat(content, max_tokens)
  local text = assert(model:apply_template({ { role = "user", content = content } }))
  local bos_text = model:token(model.vocab.bos)
  local ids = model:tokenize(text, { bos = text:sub(1, #bos_text) ~= bos_text, special = true })
  return (model:generate(ids, { temperature = 0, max_tokens = max_tokens }))
end

local function chat(content, o)
  local b = { messages = { { role = "user", content = content } }, temperature = 0 }
  for k, v in pairs(o or {}) do b[k] = v end
  return b
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

describe("OpenResty server with API keys, CORS, per-key limits and two models #once", function()
  local srv, url, keys

  setup(function()
    H.tmpdir()
    keys = H.tmpfile(table.concat({
      "# the spec's keys: id key [limits]",
      "alice " .. KEYS.alice .. " concurrent=1 admin",
      "bob " .. KEYS.bob .. " tokens_per_minute=300",
      KEYS.carol,
      "" }, "\n"))
    sh("chmod 644 " .. keys) -- the workers read it as nginx's unprivileged user
    sh("chmod 755 " .. keys:match("^(.*)/"))
    srv = H.start { MOONLM_MODELS = "stories=" .. H.stories .. ",tiny=" .. H.stories, MOONLM_API_KEYS = keys,
                    MOONLM_OPEN = "/health", MOONLM_CORS_ORIGINS = "https://app.example", MOONLM_FLUSH = "call",
                    MOONLM_SLOTS = "2", MOONLM_N_CTX = "2048" }
    url = srv.url
  end)

  teardown(function()
    if srv then srv:stop() end
    H.cleanup()
  end)

  it("refuses requests without a valid key (401, OpenAI-style) and leaves the open paths open", function()
    for _, c in ipairs {
      { nil, "You didn't provide an API key" },
      { "-H 'Authorization: Bearer sk-wrong-0123456789abcdef'", "Incorrect API key provided." },
      { "-H 'Authorization: Basic " .. KEYS.alice .. "'", "must be of the form" },
      { "-H 'Authorization: Bearer " .. KEYS.alice .. "x'", "Incorrect API key provided." },
    } do
      local r = http("GET", url .. "/v1/models", nil, c[1])
      assert.are.equal(401, r.status, r.text)
      assert.truthy(r.json.error.message:find(c[2], 1, true), r.json.error.message)
      assert.are.equal("invalid_api_key", r.json.error.code)
      assert.are.equal("invalid_request_error", r.json.error.type)
      assert.truthy(r.header("www-authenticate"):find("^Bearer"))
      assert.falsy(r.text:find("sk%-alice"), "the key is echoed")
    end
    assert.are.equal(200, http("GET", url .. "/health").status) -- open
    assert.are.equal(401, http("GET", url .. "/metrics").status) -- not in MOONLM_OPEN here
    assert.are.equal(200, http("GET", url .. "/metrics", nil, auth("carol")).status)
    assert.are.equal(401, http("POST", url .. "/v1/completions", { prompt = "hi" }).status)
    local m = http("GET", url .. "/v1/models", nil, auth("carol"))
    assert.are.equal(200, m.status)
    assert.are.same({ "stories", "tiny" }, { m.json.data[1].id, m.json.data[2].id })
    -- the openai client: its apiKey is the Bearer token
    local j = H.node([==[
import OpenAI from "openai";
const out = {};
for (const [name, key] of [["good", process.argv[3]], ["wrong", "sk-wrong-0123456789abcdef"]]) {
  const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: key, maxRetries: 0 });
  try {
    const r = await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Once upon a time" }],
                                                     max_tokens: 12, temperature: 0 });
    out[name] = { text: r.choices[0].message.content, model: r.model };
  } catch (e) { out[name] = { status: e.status, cls: e.constructor.name, code: e.code ?? null }; }
}
console.log(JSON.stringify(out));
]==], url, KEYS.carol)
    assert.are.same({ text = local_chat("Once upon a time", 12), model = "tiny" }, j.good)
    assert.are.same({ status = 401, cls = "AuthenticationError", code = "invalid_api_key" }, j.wrong)
  end)

  it("serves two models, chosen by `model`, in turns on one thread pool", function()
    local want = local_chat("Once upon a time", 60)
    local rs = H.parallel {
      { "POST", url .. "/v1/chat/completions", chat("Once upon a time", { model = "stories", max_tokens = 60 }), extra = auth("carol") },
      { "POST", url .. "/v1/chat/completions", chat("Once upon a time", { model = "tiny", max_tokens = 60 }), extra = auth("carol") },
      { "POST", url .. "/v1/chat/completions", chat("Once upon a time", { max_tokens = 60 }), extra = auth("carol") },
    }
    for i, name in ipairs { "stories", "tiny", "stories" } do
      assert.are.equal(200, rs[i].status, rs[i].text)
      assert.are.equal(name, rs[i].json.model) -- without `model`: the first one
      assert.are.equal(want, rs[i].json.choices[1].message.content)
    end
    local none = http("POST", url .. "/v1/chat/completions", chat("hi", { model = "nope" }), auth("carol"))
    assert.are.equal(404, none.status)
    assert.are.equal("model_not_found", none.json.error.code)
    assert.truthy(none.json.error.message:find("stories, tiny", 1, true))
    local h = http("GET", url .. "/health").json
    assert.are.same({ "stories", "tiny" }, { h.models[1].model, h.models[2].model })
    assert.are.same({ 2, 2, 4 }, { h.models[1].slots, h.models[2].slots, h.slots })
    local props = http("GET", url .. "/props?model=tiny", nil, auth("carol")).json
    assert.are.equal("tiny", props.model)
    assert.are.same({ "stories", "tiny" }, props.models)
    assert.are.equal(2, props.total_slots)
    local fams = H.scrape(url, auth("carol"))
    assert.are.equal(60, H.sample(fams, "moonlm_generated_tokens_total", { model = "tiny" }) - 12) -- and 12 above
    assert.are.equal(120, H.sample(fams, "moonlm_generated_tokens_total", { model = "stories" }))
    assert.are.equal(2, H.sample(fams, "moonlm_slots", { model = "tiny" }))
    -- flush = "call": one event per decoding call, each holding every token it made
    local s = http("POST", url .. "/v1/completions", { model = "tiny", prompt = "Once upon a time", max_tokens = 300,
                                                      ignore_eos = true, temperature = 0, stream = true,
                                                      stream_options = { include_usage = true } }, auth("carol"))
    local chunks, done = events(s.text)
    assert.is_true(done)
    local text, n = H.content(chunks)
    assert.are.equal(300, chunks[#chunks].usage.completion_tokens)
    assert.is_true(n < 300, n .. " events")
    assert.are.equal(model:generate("Once upon a time", { temperature = 0, max_tokens = 300, ignore_eos = true }), text)
  end)

  it("CORS: preflight answered for allowed origins, headers on every answer (errors too), 403 for others", function()
    local pre = "-H 'Origin: https://app.example' -H 'Access-Control-Request-Method: POST'"
                .. " -H 'Access-Control-Request-Headers: authorization, content-type, x-stainless-os'"
    local r = http("OPTIONS", url .. "/v1/chat/completions", nil, pre) -- no key: browsers send none here
    assert.are.equal(204, r.status, r.text)
    assert.are.equal("https://app.example", r.header("access-control-allow-origin"))
    assert.are.equal("POST", r.header("access-control-allow-methods"))
    assert.are.equal("authorization, content-type, x-stainless-os", r.header("access-control-allow-headers"))
    assert.are.equal("600", r.header("access-control-max-age"))
    local evil = http("OPTIONS", url .. "/v1/chat/completions", nil,
                      "-H 'Origin: https://evil.example' -H 'Access-Control-Request-Method: POST'")
    assert.are.equal(403, evil.status)
    assert.are.equal("cors_origin_not_allowed", evil.json.error.code)
    assert.is_nil(evil.header("access-control-allow-origin"))
    local wrong = http("OPTIONS", url .. "/v1/chat/completions", nil,
                       "-H 'Origin: https://app.example' -H 'Access-Control-Request-Method: DELETE'")
    assert.are.equal(405, wrong.status)
    -- actual requests: the origin is allowed on answers and on errors, so that a page can read them
    local ok = http("GET", url .. "/v1/models", nil, "-H 'Origin: https://app.example' " .. auth("carol"))
    assert.are.equal(200, ok.status)
    assert.are.equal("https://app.example", ok.header("access-control-allow-origin"))
    assert.are.equal("Origin", ok.header("vary"))
    assert.truthy(ok.header("access-control-expose-headers"):find("Retry-After", 1, true))
    local denied = http("GET", url .. "/v1/models", nil, "-H 'Origin: https://app.example'")
    assert.are.equal(401, denied.status)
    assert.are.equal("https://app.example", denied.header("access-control-allow-origin"))
    local other = http("GET", url .. "/v1/models", nil, "-H 'Origin: https://evil.example' " .. auth("carol"))
    assert.are.equal(200, other.status) -- not a browser's business here: no CORS header
    assert.is_nil(other.header("access-control-allow-origin"))
  end)

  it("per-key limits: 429 with Retry-After for requests at once and for tokens per minute", function()
    local fams0 = H.scrape(url, auth("carol"))
    -- alice: one request at a time
    local long = H.background("POST", url .. "/v1/completions",
                              { model = "tiny", prompt = "Once", max_tokens = 1900, ignore_eos = true, stream = true }, auth("alice"))
    assert.truthy(H.until_true(20, function()
      local h = http("GET", url .. "/health").json
      return h.busy >= 1 and h.tokens > 0
    end))
    local second = http("POST", url .. "/v1/completions", { prompt = "Once", max_tokens = 4 }, auth("alice"))
    assert.are.equal(429, second.status, second.text)
    assert.are.equal("1", second.header("retry-after"))
    assert.are.equal("rate_limit_exceeded", second.json.error.code)
    assert.are.equal("requests", second.json.error.type)
    assert.are.equal(200, http("POST", url .. "/v1/completions", { prompt = "Once", max_tokens = 4 }, auth("carol")).status)
    long.kill()
    assert.truthy(H.until_true(10, function()
      return http("POST", url .. "/v1/completions", { prompt = "Once", max_tokens = 2 }, auth("alice")).status == 200
    end), "alice's slot was not given back")
    -- bob: 300 tokens per minute; the first request is admitted on its prompt, its 600
    -- generated tokens are charged when it ends, and the next has to wait for them
    local first = http("POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 600, ignore_eos = true },
                       auth("bob"))
    assert.are.equal(200, first.status, first.text)
    assert.are.equal("300", first.header("x-ratelimit-limit-tokens"))
    local next_ = http("POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 4 }, auth("bob"))
    assert.are.equal(429, next_.status, next_.text)
    assert.are.equal("tokens", next_.json.error.type)
    assert.are.equal("rate_limit_exceeded", next_.json.error.code)
    local wait = tonumber(next_.header("retry-after"))
    assert.is_true(wait >= 50 and wait <= 62, next_.header("retry-after")) -- ~305 tokens of debt at 5 per second
    local huge = http("POST", url .. "/v1/completions", { prompt = ("Once upon a time "):rep(100), max_tokens = 4 }, auth("bob"))
    assert.are.equal(429, huge.status)
    assert.truthy(huge.json.error.message:find("Request too large", 1, true))
    assert.is_nil(huge.header("retry-after")) -- waiting would not help
    local j = H.node([==[
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: process.argv[3], maxRetries: 0 });
try { await client.completions.create({ model: "stories", prompt: "Once", max_tokens: 2 }); console.log('"no error"'); }
catch (e) { console.log(JSON.stringify({ status: e.status, cls: e.constructor.name, code: e.code ?? null })); }
]==], url, KEYS.bob)
    assert.are.same({ status = 429, cls = "RateLimitError", code = "rate_limit_exceeded" }, j)
    local fams = H.scrape(url, auth("carol"))
    local function delta(labels)
      return H.sample(fams, "moonlm_requests_rejected_total", labels) - H.sample(fams0, "moonlm_requests_rejected_total", labels)
    end
    assert.are.equal(1, delta { status = 429, reason = "concurrency" })
    assert.are.equal(3, delta { status = 429, reason = "tokens_per_minute" })
  end)

  it("logs keys by their id only; admin endpoints need an admin key", function()
    local d = http("POST", url .. "/admin/drain", nil, auth("carol"))
    assert.are.equal(403, d.status)
    assert.are.equal("forbidden", d.json.error.code)
    local ids = {}
    assert.truthy(H.until_true(5, function()
      ids = {}
      for l in slurp(srv.prefix .. "/logs/moonlm.log"):gmatch("[^\n]+") do
        local e = assert(json.decode(l), l)
        if e.key ~= json.null then ids[e.key] = true end
      end
      return ids.bob
    end))
    assert.is_true(ids.alice and ids.bob and ids[sha1_id(KEYS.carol)] or false, json.encode(ids))
    local all = sh("cat " .. H.q(srv.prefix) .. "/logs/*")
    for who, key in pairs(KEYS) do assert.falsy(all:find(key, 1, true), who .. "'s key is in a log") end
  end)

  it("re-reads the keys file on nginx -s reload", function()
    write(keys, table.concat({ "alice " .. KEYS.alice .. " admin", "dave " .. KEYS.dave, "" }, "\n"))
    local old = {}
    for pid in sh("pgrep -P " .. srv.pid):gmatch("%d+") do old[#old + 1] = pid end
    assert.is_true(#old > 0, "no worker processes under the master")
    sh("kill -HUP " .. srv.pid)
    -- until the old workers have exited they still accept connections beside the new ones
    -- (with the old keys): wait for them to go, then the new keys must hold on every answer
    assert.truthy(H.until_true(30, function()
      return sh("for p in " .. table.concat(old, " ") .. "; do kill -0 $p 2>/dev/null && echo $p; done") == ""
    end), "the old workers did not exit after the reload")
    local function reloaded()
      return http("GET", url .. "/v1/models", nil, auth("dave")).status == 200
         and http("GET", url .. "/v1/models", nil, auth("carol")).status == 401
    end
    assert.truthy(H.until_true(20, reloaded), "the new keys file was not taken")
    for _ = 1, 5 do assert.is_true(reloaded()) end
    -- the new limits too: alice no longer has one
    assert.are.equal(200, http("GET", url .. "/v1/models", nil, auth("alice")).status)
  end)

  it("does not start open when the keys cannot be read: every request gets 503", function()
    local bad = H.tmpfile("alice " .. KEYS.alice .. " concurrent=x\n")
    sh("chmod 644 " .. bad)
    local s, err = launch.start { conf = "examples/openresty/nginx.conf", lib_dir = H.BUILD .. "/5.1",
                                  env = { MOONLM_MODEL = H.stories, MOONLM_THREADS = "1", MOONLM_API_KEYS = bad } }
    if s then s:stop() end
    assert.is_nil(s)
    assert.truthy(err:find("unknown field 'concurrent=x'", 1, true), err)
  end)
end)
