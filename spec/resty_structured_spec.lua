-- The OpenResty server's structured output, tools, logprobs and n > 1, as clients see them:
-- a real nginx on stories260K driven by the official `openai` npm client, its answers
-- checked against moonlm's own engine for the same prompt (greedy, or the same seed) and
-- against the ajv JSON Schema validator. Tagged #once (one run per interpreter).
local S = require "support"
local H = require "resty_helpers"
local lm = require "moonlm"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local NAME = "stories260K"
local unpack = table.unpack or unpack -- luacheck: ignore
local http = H.http

local model = assert(lm.load(H.stories))

-- The prompt ids the server makes of a conversation (as resty_spec's local_chat).
local function chat_ids(messages, opts)
  local text = assert(model:apply_template(messages, opts))
  local bos_text = model:token(model.vocab.bos)
  return model:tokenize(text, { bos = text:sub(1, #bos_text) ~= bos_text, special = true })
end

local MSGS = { { role = "user", content = "Tell me about a person." } }

local function template_src() return require("moonlm.template").builtin("chatml") end
local WEATHER = { { role = "user", content = "What is the weather in Paris?" } }

-- a schema whose strings are short, so that a random model ends well within max_tokens
local PERSON = [[{"type":"object","properties":{"name":{"type":"string","maxLength":12},]]
  .. [["age":{"type":"integer","minimum":0,"maximum":120},"pet":{"enum":["cat","dog","fish"]},]]
  .. [["tags":{"type":"array","items":{"type":"string","maxLength":6},"maxItems":3}},]]
  .. [["required":["name","age","pet"],"additionalProperties":false}]]

local TOOLS = [[
[{"type":"function","function":{"name":"get_weather","description":"The weather in a city",
  "parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":16},"unit":{"enum":["c","f"]}},
                "required":["city","unit"],"additionalProperties":false}}},
 {"type":"function","function":{"name":"get_time","description":"The time in a zone",
  "parameters":{"type":"object","properties":{"zone":{"type":"string","maxLength":8}},"required":["zone"],
                "additionalProperties":false}}}]
]]

describe("OpenResty server: structured output, tools, logprobs, n #once", function()
  local srv, url

  setup(function()
    assert.truthy(launch.module_dir(), "lua-nginx-module is not installed (make deps)")
    H.tmpdir()
    srv = H.start { MOONLM_SLOTS = "4", MOONLM_QUEUE = "8", MOONLM_N_CTX = "2048" }
    url = srv.url
  end)

  teardown(function()
    if srv then srv:stop() end
    H.cleanup()
  end)

  it("response_format json_schema and json_object, grammar and json_schema fields: the engine's output, valid", function()
    local j = H.node([==[
import OpenAI from "openai";
import Ajv from "ajv";
const [url, schemaText] = process.argv.slice(2);
const schema = JSON.parse(schemaText);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "unused", maxRetries: 0 });
const validate = new Ajv({ strict: false }).compile(schema);
const messages = [{ role: "user", content: "Tell me about a person." }];
const rf = { type: "json_schema", json_schema: { name: "person", schema, strict: true } };
const out = {};
out.greedy = await client.chat.completions.create({ model: "stories260K", messages, temperature: 0, max_tokens: 200,
                                                    response_format: rf });
out.sampled = [];
for (let seed = 1; seed <= 8; seed++) {
  const r = await client.chat.completions.create({ model: "stories260K", messages, temperature: 1, seed, max_tokens: 200,
                                                   response_format: rf });
  const text = r.choices[0].message.content;
  let ok = false;
  try { ok = validate(JSON.parse(text)); } catch (e) { ok = false; }
  out.sampled.push({ text, ok, finish: r.choices[0].finish_reason });
}
const stream = await client.chat.completions.create({ model: "stories260K", messages, temperature: 0, max_tokens: 200,
                                                      response_format: rf, stream: true });
out.streamed = "";
for await (const c of stream) out.streamed += c.choices[0]?.delta?.content ?? "";
out.objects = [];
for (let seed = 1; seed <= 4; seed++) {
  const r = await client.chat.completions.create({ model: "stories260K", messages, temperature: 1, seed, max_tokens: 300,
                                                   response_format: { type: "json_object" } });
  const text = r.choices[0].message.content;
  let kind = "not JSON";
  try { const v = JSON.parse(text); kind = Array.isArray(v) ? "array" : typeof v; } catch (e) {}
  out.objects.push({ kind, finish: r.choices[0].finish_reason, text });
}
// llama-server's extension fields pass through the client as they are
out.grammar = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", temperature: 0,
                                                max_tokens: 10, grammar: 'root ::= "yes" | "no" | "maybe"' });
out.json_schema = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", temperature: 0,
                                                    max_tokens: 200, json_schema: schema });
for (const [name, req] of [
  ["bad_schema", { model: "stories260K", messages, response_format: { type: "json_schema", json_schema: { name: "bad",
                   schema: { type: "object", patternProperties: { "^a": { type: "string" } } } } } }],
  ["bad_grammar", { model: "stories260K", messages, grammar: "root ::= missing-rule" }],
  ["left_recursive", { model: "stories260K", messages, grammar: 'root ::= root "a" | "b"' }],
  ["huge_count", { model: "stories260K", messages, grammar: 'root ::= "a"{5000000}' }],
  ["no_name", { model: "stories260K", messages, response_format: { type: "json_schema", json_schema: { schema } } }],
  ["two", { model: "stories260K", messages, grammar: 'root ::= "a"', json_schema: schema }],
  ["ignore_eos", { model: "stories260K", messages, ignore_eos: true, response_format: { type: "json_object" } }],
  ["bad_type", { model: "stories260K", messages, response_format: { type: "yaml" } }],
  ["deep", { model: "stories260K", messages, response_format: { type: "json_schema", json_schema: { name: "deep",
             schema: JSON.parse('{"type":"array","items":'.repeat(300) + "{}" + "}".repeat(300)) } } }],
]) {
  try { await client.chat.completions.create(req); out[name] = "no error"; }
  catch (e) { out[name] = { status: e.status, code: e.code ?? null, param: e.param ?? null, message: e.error?.message ?? e.message }; }
}
console.log(JSON.stringify(out));
]==], url, PERSON)
    -- greedy: exactly what moonlm's generate writes under the same schema, the tokens the
    -- grammar forces fast-forwarded (appended without sampling) in both
    local ids = chat_ids(MSGS)
    local want, info = model:generate(ids, { json_schema = PERSON, temperature = 0, max_tokens = 200 })
    assert.are.equal("grammar", info.stop_reason)
    assert.is_true(info.forced_tokens > 0)
    local g = j.greedy.choices[1]
    assert.are.equal(want, g.message.content)
    assert.are.equal("stop", g.finish_reason)
    assert.are.equal(info.tokens, j.greedy.usage.completion_tokens)
    assert.are.equal(want, j.streamed)
    -- sampled at temperature 1: every reply is JSON that ajv validates against the schema
    local distinct = {}
    for i, s in ipairs(j.sampled) do
      assert.is_true(s.ok, ("seed %d: %s"):format(i, s.text))
      assert.are.equal("stop", s.finish)
      distinct[s.text] = true
    end
    local n = 0
    for _ in pairs(distinct) do n = n + 1 end
    assert.is_true(n >= 4, "sampling gave " .. n .. " distinct replies of 8")
    for i, o in ipairs(j.objects) do
      assert.are.equal("object", o.kind, ("seed %d: %s"):format(i, o.text))
      assert.are.equal("stop", o.finish)
    end
    local gw = model:generate("Once upon a time", { grammar = lm.grammar.gbnf('root ::= "yes" | "no" | "maybe"'), temperature = 0,
                                                   max_tokens = 10 })
    assert.are.equal(gw, j.grammar.choices[1].text)
    assert.truthy(({ yes = true, no = true, maybe = true })[gw])
    local sw = model:generate("Once upon a time", { json_schema = PERSON, temperature = 0, max_tokens = 200 })
    assert.are.equal(sw, j.json_schema.choices[1].text)
    -- what cannot be honoured is a 400 that says why
    local _, cerr = lm.grammar.json_schema('{"type":"object","patternProperties":{"^a":{"type":"string"}}}')
    assert.are.same({ status = 400, code = "invalid_json_schema", param = "response_format",
                      message = "Invalid schema for response_format 'bad': " .. cerr }, j.bad_schema)
    assert.truthy(cerr:find("patternProperties", 1, true))
    assert.are.equal(400, j.bad_grammar.status)
    assert.are.equal("invalid_grammar", j.bad_grammar.code)
    assert.truthy(j.bad_grammar.message:find("missing-rule", 1, true), j.bad_grammar.message)
    for _, k in ipairs { "left_recursive", "huge_count" } do -- the engine's own words, after ours
      local src = k == "left_recursive" and 'root ::= root "a" | "b"' or 'root ::= "a"{5000000}'
      local _, why = lm.grammar.gbnf(src)
      assert.are.same({ status = 400, code = "invalid_grammar", param = "grammar",
                        message = "'grammar' is not a valid GBNF grammar: " .. why }, j[k])
    end
    assert.are.same({ 400, "response_format" }, { j.no_name.status, j.no_name.param })
    assert.are.same({ 400, "json_schema" }, { j.two.status, j.two.param })
    assert.are.same({ 400, "ignore_eos", "unsupported_parameter" }, { j.ignore_eos.status, j.ignore_eos.param, j.ignore_eos.code })
    assert.are.same({ 400, "response_format" }, { j.bad_type.status, j.bad_type.param })
    -- a hostile schema: the compiler's budget, a clean 400, and the server goes on
    assert.are.same({ 400, "invalid_json_schema" }, { j.deep.status, j.deep.code })
    assert.truthy(j.deep.message:find("schema nesting deeper than the compile budget", 1, true), j.deep.message)
    assert.are.equal(200, http("GET", url .. "/health").status)
  end)

  it("tools: tool_choice required / named / none / auto, parallel_tool_calls, streamed deltas, results", function()
    local j = H.node([==[
import OpenAI from "openai";
import Ajv from "ajv";
const [url, toolsText] = process.argv.slice(2);
const tools = JSON.parse(toolsText);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "unused", maxRetries: 0 });
const ajv = new Ajv({ strict: false });
const check = Object.fromEntries(tools.map(t => [t.function.name, ajv.compile(t.function.parameters)]));
const messages = [{ role: "user", content: "What is the weather in Paris?" }];
// one call per reply: this tiny model, free to go on, calls again until max_tokens
const base = { model: "stories260K", messages, tools, max_tokens: 200, parallel_tool_calls: false };
const out = {};
const valid = r => (r.choices[0].message.tool_calls ?? []).map(c => ({ name: c.function.name,
  ok: check[c.function.name] ? check[c.function.name](JSON.parse(c.function.arguments)) : false }));
out.required = await client.chat.completions.create({ ...base, tool_choice: "required", temperature: 0 });
out.required_valid = valid(out.required);
out.named = await client.chat.completions.create({ ...base, temperature: 0,
                                                   tool_choice: { type: "function", function: { name: "get_time" } } });
out.named_valid = valid(out.named);
out.single = [];
for (let seed = 1; seed <= 6; seed++) {
  const r = await client.chat.completions.create({ ...base, tool_choice: "required", temperature: 1, seed });
  out.single.push({ calls: valid(r), finish: r.choices[0].finish_reason });
}
out.none = await client.chat.completions.create({ ...base, tool_choice: "none", temperature: 0, max_tokens: 20 });
out.auto = await client.chat.completions.create({ ...base, temperature: 0, max_tokens: 20 });
// streamed: OpenAI's deltas (index, id, function.name, then pieces of arguments)
const stream = await client.chat.completions.create({ ...base, tool_choice: "required", temperature: 0, stream: true });
out.stream = { calls: [], chunks: 0, finish: null, content: "" };
for await (const c of stream) {
  const d = c.choices[0]?.delta ?? {};
  out.stream.content += d.content ?? "";
  for (const tc of d.tool_calls ?? []) {
    out.stream.chunks++;
    const e = out.stream.calls[tc.index] ??= { id: null, name: "", arguments: "" , type: null };
    if (tc.id) e.id = tc.id;
    if (tc.type) e.type = tc.type;
    if (tc.function?.name) e.name += tc.function.name;
    if (tc.function?.arguments) e.arguments += tc.function.arguments;
  }
  if (c.choices[0]?.finish_reason) out.stream.finish = c.choices[0].finish_reason;
}
// parallel calls: seeds whose replies hold several calls, streamed and not
out.parallel = [];
for (const seed of [4, 8, 12]) {
  const req = { ...base, parallel_tool_calls: true, tool_choice: "required", temperature: 1, seed, max_tokens: 300 };
  const whole = await client.chat.completions.create(req);
  const s = await client.chat.completions.create({ ...req, stream: true });
  const calls = [], order = [];
  let finish = null;
  for await (const c of s) {
    for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
      order.push(tc.index);
      const e = calls[tc.index] ??= { id: null, name: "", arguments: "", headers: 0 };
      if (tc.id) { e.id = tc.id; e.headers++; }
      if (tc.function?.name) e.name += tc.function.name;
      if (tc.function?.arguments) e.arguments += tc.function.arguments;
    }
    if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
  }
  out.parallel.push({ seed, finish, order, stream: calls, whole_finish: whole.choices[0].finish_reason,
    whole: (whole.choices[0].message.tool_calls ?? []).map(c => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })) });
}
// per token: with logprobs every sampled token has a chunk of its own (no text is
// fast-forwarded), and a token inside a call's arguments brings its piece of them
const lps = await client.chat.completions.create({ ...base, tool_choice: "required", temperature: 0, stream: true, logprobs: true });
out.lpchunks = [];
for await (const c of lps) {
  const ch = c.choices[0];
  if (!ch) continue;
  const tcs = ch.delta?.tool_calls ?? [];
  out.lpchunks.push({ tokens: ch.logprobs?.content?.length ?? 0, args: tcs.map(t => t.function?.arguments ?? "").join(""),
                      header: tcs.some(t => t.id), finish: ch.finish_reason ?? null });
}
// the client's own stream helper puts the deltas together the same way
const helper = await client.chat.completions.stream({ ...base, tool_choice: "required", temperature: 0 }).finalChatCompletion();
out.helper = (helper.choices[0].message.tool_calls ?? []).map(c => ({ name: c.function.name, arguments: c.function.arguments }));
// the conversation goes on with the call and its result
const call = out.required.choices[0].message.tool_calls[0];
out.followup = await client.chat.completions.create({ model: "stories260K", tools, temperature: 0, max_tokens: 12, messages: [
  ...messages, { role: "assistant", content: null, tool_calls: [call] },
  { role: "tool", tool_call_id: call.id, content: "{\"temp\": 21}" }] });
for (const [name, req] of [
  ["required_without_tools", { model: "stories260K", messages, tool_choice: "required" }],
  ["unknown_name", { ...base, tool_choice: { type: "function", function: { name: "nope" } } }],
  ["bad_tool", { ...base, tools: [{ type: "function", function: { name: "bad name!" } }] }],
  ["with_format", { ...base, response_format: { type: "json_object" } }],
  ["functions", { model: "stories260K", messages, functions: [{ name: "f", parameters: {} }] }],
  ["tool_without_id", { model: "stories260K", messages: [...messages, { role: "tool", content: "x" }] }],
]) {
  try { await client.chat.completions.create(req); out[name] = "no error"; }
  catch (e) { out[name] = { status: e.status, code: e.code ?? null, param: e.param ?? null, message: e.error?.message ?? e.message }; }
}
console.log(JSON.stringify(out));
]==], url, TOOLS)
    local tools = assert(json.decode(TOOLS))
    -- required: moonlm's chat with the same tools, greedy, makes the same calls
    local chat = model:chat { n_ctx = 2048 }
    local _, info = chat:say(WEATHER[1].content, { tools = tools, tool_choice = "required", temperature = 0, max_tokens = 200,
                                                 parallel_tool_calls = false })
    assert.are.equal(1, info.tool_calls and #info.tool_calls)
    local r = j.required.choices[1]
    assert.are.equal("tool_calls", r.finish_reason)
    assert.are.equal(json.null, r.message.content)
    assert.are.equal(#info.tool_calls, #r.message.tool_calls)
    for i, c in ipairs(r.message.tool_calls) do
      assert.are.equal(info.tool_calls[i]["function"].name, c["function"].name)
      assert.are.equal(info.tool_calls[i]["function"].arguments, c["function"].arguments)
      assert.are.equal("function", c.type)
      assert.truthy(c.id:find("^call_%w+$"), c.id)
      assert.is_true(j.required_valid[i].ok, c["function"].arguments)
    end
    local nc = j.named.choices[1].message.tool_calls
    assert.are.equal(1, #nc)
    for i, c in ipairs(nc) do
      assert.are.equal("get_time", c["function"].name)
      assert.is_true(j.named_valid[i].ok, c["function"].arguments)
    end
    for i, s in ipairs(j.single) do
      assert.are.equal(1, #s.calls, "seed " .. i)
      assert.is_true(s.calls[1].ok, "seed " .. i)
      assert.are.equal("tool_calls", s.finish)
    end
    -- none: text, as without tools but with the tools shown to the model
    local ids = chat_ids(WEATHER, { tools = tools })
    local text = model:generate(ids, { temperature = 0, max_tokens = 20 })
    assert.are.equal(text, j.none.choices[1].message.content)
    assert.are.equal(#ids, j.none.usage.prompt_tokens)
    assert.is_nil(j.none.choices[1].message.tool_calls)
    -- auto: this tiny model answers in text (a lazy grammar waits for <tool_call>)
    assert.are.equal("string", type(j.auto.choices[1].message.content))
    assert.are.equal(model:generate(ids, { temperature = 0, max_tokens = 20 }), j.auto.choices[1].message.content)
    -- streamed calls are the same calls, in several argument pieces
    assert.are.equal("tool_calls", j.stream.finish)
    assert.are.equal("", j.stream.content)
    assert.are.equal(#r.message.tool_calls, #j.stream.calls)
    for i, c in ipairs(j.stream.calls) do
      assert.are.equal(r.message.tool_calls[i]["function"].name, c.name)
      assert.are.equal(r.message.tool_calls[i]["function"].arguments, c.arguments)
      assert.are.equal("function", c.type)
      assert.truthy(c.id:find("^call_"))
      assert.are.equal(r.message.tool_calls[i]["function"].arguments, j.helper[i].arguments)
    end
    assert.is_true(j.stream.chunks > #j.stream.calls, "arguments came in one piece")
    -- the arguments come as they are generated: each piece in the chunk of its token
    local args, pieces, last = "", 0, j.lpchunks[#j.lpchunks]
    for i, ch in ipairs(j.lpchunks) do
      if ch.args ~= "" or ch.header then
        assert.is_true(ch.tokens >= 1, ("chunk %d carries a piece of the call without its token"):format(i))
        pieces = pieces + (ch.args ~= "" and 1 or 0)
        args = args .. ch.args
      end
    end
    assert.are.equal("tool_calls", last.finish)
    assert.are.same({ 0, "" }, { last.tokens, last.args })
    assert.are.equal(r.message.tool_calls[1]["function"].arguments, args)
    assert.is_true(pieces >= 5, ("the arguments came in %d chunks"):format(pieces))
    -- parallel calls: streamed as they come (each call's deltas after the one before it),
    -- the same calls as without streaming and as moonlm's chat with the same seed
    local several = 0
    for _, e in ipairs(j.parallel) do
      local what = "seed " .. e.seed
      local _, pinfo = model:chat({ n_ctx = 2048 }):say(WEATHER[1].content, { tools = tools, tool_choice = "required",
        temperature = 1, seed = e.seed, max_tokens = 300 })
      local want = {}
      for i, c in ipairs(pinfo.tool_calls or {}) do want[i] = { c["function"].name, c["function"].arguments } end
      local whole, streamed = {}, {}
      for i, c in ipairs(e.whole) do whole[i] = { c.name, c.arguments } end
      for i, c in ipairs(e.stream) do
        streamed[i] = { c.name, c.arguments }
        assert.are.equal(1, c.headers, what)
        assert.truthy(c.id:find("^call_%w+$"), what)
      end
      assert.are.same(want, whole, what)
      assert.are.same(whole, streamed, what)
      assert.are.equal(e.whole_finish, e.finish, what)
      for i = 2, #e.order do assert.is_true(e.order[i] >= e.order[i - 1], what .. ": deltas out of order") end
      if #whole >= 2 and e.finish == "tool_calls" then several = several + 1 end
    end
    assert.is_true(several >= 1, "no reply made several calls")
    -- the follow-up renders the call and the result as moonlm's own template code does
    local call = r.message.tool_calls[1]
    local follow = { WEATHER[1], { role = "assistant", content = json.null, tool_calls = { call } },
                     { role = "tool", tool_call_id = call.id, content = '{"temp": 21}' } }
    assert.are.equal(#chat_ids(follow, { tools = tools }), j.followup.usage.prompt_tokens)
    assert.are.same({ 400, "tool_choice" }, { j.required_without_tools.status, j.required_without_tools.param })
    assert.are.same({ 400, "tool_choice" }, { j.unknown_name.status, j.unknown_name.param })
    assert.are.same({ 400, "tools" }, { j.bad_tool.status, j.bad_tool.param })
    assert.are.same({ 400, "response_format", "unsupported_parameter" }, { j.with_format.status, j.with_format.param, j.with_format.code })
    assert.are.same({ 400, "functions", "unsupported_parameter" }, { j.functions.status, j.functions.param, j.functions.code })
    assert.are.same({ 400, "messages" }, { j.tool_without_id.status, j.tool_without_id.param })
  end)

  -- The server decodes in its own context (prompt in its own batch sizes, other sequences beside
  -- it), so its kernels may round differently from this process's generate: logprobs agree to
  -- float rounding of logits of size ~10, not bit for bit (a wrong one is off by far more).
  local LP_TOL = 1e-4
  it("logprobs: chat (content[] with top_logprobs) and completions (the legacy shape), streamed and not", function()
    local j = H.node([==[
import OpenAI from "openai";
const [url] = process.argv.slice(2);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Tell me about a person." }];
const out = {};
out.chat = await client.chat.completions.create({ model: "stories260K", messages, temperature: 0, max_tokens: 12,
                                                  logprobs: true, top_logprobs: 3 });
out.sampled = await client.chat.completions.create({ model: "stories260K", messages, temperature: 1, seed: 4, max_tokens: 12,
                                                     logprobs: true });
const stream = await client.chat.completions.create({ model: "stories260K", messages, temperature: 0, max_tokens: 12,
                                                      logprobs: true, top_logprobs: 3, stream: true });
out.streamed = [];
for await (const c of stream) out.streamed.push(...(c.choices[0]?.logprobs?.content ?? []));
out.text = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", temperature: 0, max_tokens: 8,
                                             logprobs: 2 });
const ts = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", temperature: 0, max_tokens: 8,
                                             logprobs: 2, stream: true });
out.text_streamed = { tokens: [], token_logprobs: [] };
for await (const c of ts) {
  const lp = c.choices[0]?.logprobs;
  if (lp) { out.text_streamed.tokens.push(...lp.tokens); out.text_streamed.token_logprobs.push(...lp.token_logprobs); }
}
for (const [name, req] of [
  ["top_without", { model: "stories260K", messages, top_logprobs: 2 }],
  ["too_many", { model: "stories260K", messages, logprobs: true, top_logprobs: 21 }],
]) {
  try { await client.chat.completions.create(req); out[name] = "no error"; }
  catch (e) { out[name] = { status: e.status, param: e.param ?? null }; }
}
console.log(JSON.stringify(out));
]==], url)
    local ids = chat_ids(MSGS)
    local text, info = model:generate(ids, { temperature = 0, max_tokens = 12, logprobs = 3 })
    local c = j.chat.choices[1]
    assert.are.equal(text, c.message.content)
    local content = c.logprobs.content
    assert.are.equal(#info.logprobs, #content)
    assert.are.equal(json.null, c.logprobs.refusal)
    for k, e in ipairs(info.logprobs) do
      local got = content[k]
      assert.are.equal(e.token, got.token)
      assert.is_true(math.abs(e.logprob - got.logprob) < LP_TOL, k)
      assert.are.same(e.bytes, got.bytes)
      assert.are.equal(3, #got.top_logprobs)
      for t = 1, 3 do
        assert.are.equal(e.top_logprobs[t].token, got.top_logprobs[t].token)
        assert.is_true(math.abs(e.top_logprobs[t].logprob - got.top_logprobs[t].logprob) < LP_TOL)
      end
      -- greedy: the chosen token is the most likely
      assert.are.equal(got.top_logprobs[1].token, got.token)
      assert.are.same(got, j.streamed[k])
    end
    assert.are.equal(#content, #j.streamed)
    -- sampled: the logprobs are the model's, not the sampler's (temperature does not change them)
    local sc = j.sampled.choices[1].logprobs.content
    assert.are.equal(j.sampled.usage.completion_tokens, #sc)
    assert.are.equal(0, #sc[1].top_logprobs)
    local ctx = model:context { n_ctx = 2048 }
    local logits = ctx:decode(ids)
    local _, all = lm.sampler {}:logprobs(logits, ids, 0, model.n_vocab)
    local found = false
    for _, a in ipairs(all) do
      if model:piece(a.id, true) == sc[1].token and math.abs(a.logprob - sc[1].logprob) < LP_TOL then found = true end
    end
    assert.is_true(found, "the first sampled token's logprob is not the model's")
    ctx:close()
    -- completions
    local t, tinfo = model:generate("Once upon a time", { temperature = 0, max_tokens = 8, logprobs = 2 })
    local lp = j.text.choices[1].logprobs
    assert.are.equal(t, j.text.choices[1].text)
    assert.are.equal(#tinfo.logprobs, #lp.tokens)
    local offset = 0
    for k, e in ipairs(tinfo.logprobs) do
      assert.are.equal(e.token, lp.tokens[k])
      assert.is_true(math.abs(e.logprob - lp.token_logprobs[k]) < LP_TOL)
      -- the two alternatives and the chosen token (one of them, greedy)
      local n = 0
      for tok, v in pairs(lp.top_logprobs[k]) do
        n = n + 1
        local found = false
        for _, a in ipairs(e.top_logprobs) do
          if a.token == tok then
            found = true
            assert.is_true(math.abs(a.logprob - v) < LP_TOL)
          end
        end
        assert.is_true(found, tok)
      end
      assert.are.equal(2, n)
      assert.are.equal(offset, lp.text_offset[k])
      offset = offset + select(2, e.token:gsub("[^\128-\191]", ""))
    end
    assert.are.same(lp.tokens, j.text_streamed.tokens)
    assert.are.same(lp.token_logprobs, j.text_streamed.token_logprobs)
    assert.are.same({ status = 400, param = "top_logprobs" }, j.top_without)
    assert.are.same({ status = 400, param = "top_logprobs" }, j.too_many)
  end)

  it("n > 1: choices sharing the prompt, each as a request of its own seed, streamed and not", function()
    local j = H.node([==[
import OpenAI from "openai";
const [url] = process.argv.slice(2);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Tell me a story." }];
const base = { model: "stories260K", messages, temperature: 1, max_tokens: 24, ignore_eos: true };
const out = {};
out.many = await client.chat.completions.create({ ...base, n: 3, seed: 11 });
out.alone = [];
for (let i = 0; i < 3; i++) out.alone.push((await client.chat.completions.create({ ...base, seed: 11 + i })).choices[0].message.content);
const stream = await client.chat.completions.create({ ...base, n: 3, seed: 11, stream: true, stream_options: { include_usage: true } });
out.streamed = ["", "", ""]; out.finish = [null, null, null]; out.usage = null;
for await (const c of stream) {
  for (const ch of c.choices) {
    out.streamed[ch.index] += ch.delta?.content ?? "";
    if (ch.finish_reason) out.finish[ch.index] = ch.finish_reason;
  }
  if (c.usage) out.usage = c.usage;
}
out.text = await client.completions.create({ model: "stories260K", prompt: "Once upon a time", n: 2, seed: 5, temperature: 1,
                                             max_tokens: 16, ignore_eos: true });
out.text_alone = (await client.completions.create({ model: "stories260K", prompt: "Once upon a time", seed: 6, temperature: 1,
                                                    max_tokens: 16, ignore_eos: true })).choices[0].text;
out.schema = await client.chat.completions.create({ model: "stories260K", messages, temperature: 1, seed: 2, n: 4, max_tokens: 200,
  response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object",
    properties: { a: { enum: ["x", "y", "z"] }, b: { type: "integer", minimum: 0, maximum: 99 } }, required: ["a", "b"],
    additionalProperties: false } } } });
try { await client.chat.completions.create({ ...base, n: 40 }); out.too_many = "no error"; }
catch (e) { out.too_many = { status: e.status, param: e.param ?? null }; }
console.log(JSON.stringify(out));
]==], url)
    local many = j.many
    assert.are.equal(3, #many.choices)
    local n_tokens = 0
    for i, ch in ipairs(many.choices) do
      assert.are.equal(i - 1, ch.index)
      assert.are.equal(j.alone[i], ch.message.content)
      assert.are.equal(j.alone[i], j.streamed[i])
      assert.are.equal("length", ch.finish_reason)
      assert.are.equal("length", j.finish[i])
      n_tokens = n_tokens + 24
    end
    assert.are_not.equal(j.alone[1], j.alone[2])
    assert.are.equal(n_tokens, many.usage.completion_tokens)
    assert.are.equal(n_tokens, j.usage.completion_tokens)
    assert.are.equal(#chat_ids({ { role = "user", content = "Tell me a story." } }), many.usage.prompt_tokens)
    assert.are.equal(2, #j.text.choices)
    assert.are.equal(j.text_alone, j.text.choices[2].text)
    assert.are.equal(32, j.text.usage.completion_tokens)
    for _, ch in ipairs(j.schema.choices) do
      local v = assert(json.decode(ch.message.content), ch.message.content)
      assert.truthy(({ x = true, y = true, z = true })[v.a])
      assert.are.equal("number", type(v.b))
      assert.is_true(v.b == math.floor(v.b) and v.b >= 0 and v.b <= 99, ch.message.content)
    end
    assert.are.same({ status = 400, param = "n" }, j.too_many)
    -- a prompt no slot holds: the later choices start from a copy of the first one's cache
    -- (cells shared), and prefill only the last prompt token again for their logits
    local copies = http("GET", url .. "/health").json.copies
    local r = http("POST", url .. "/v1/chat/completions", { messages = { { role = "user", content = "A dragon flew over the hills." } },
                                                           n = 3, max_tokens = 8, temperature = 1, seed = 1 })
    assert.are.equal(200, r.status, r.text)
    assert.are.equal(3, #r.json.choices)
    assert.are.equal(2, http("GET", url .. "/health").json.copies - copies)
  end)

  it("a client that goes away frees every slot of its choices, grammar and all", function()
    -- a long, never-ending grammar: the choices run until the client leaves
    local body = { prompt = "Once upon a time", n = 3, max_tokens = 1500, temperature = 1, seed = 3, stream = true,
                   grammar = 'root ::= [a-z ]+' }
    local bg = H.background("POST", url .. "/v1/completions", body)
    assert.truthy(H.until_true(20, function()
      local h = http("GET", url .. "/health").json
      return h.busy >= 3 and h.tokens > 0
    end), "the three choices never ran together")
    bg.kill()
    assert.truthy(H.until_true(20, function()
      local h = http("GET", url .. "/health").json
      return h.busy == 0 and h.queued == 0
    end), "slots still busy after the client left")
    local r = http("POST", url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 8, temperature = 0 })
    assert.are.equal(model:generate("Once upon a time", { temperature = 0, max_tokens = 8 }), r.json.choices[1].text)
  end)

  it("reasoning: a template that opens <think> for the model gets reasoning_content, streamed and not", function()
    local src = template_src():gsub("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    assert.truthy(src:find("<think>", 1, true))
    local srv2 = H.start({ MOONLM_SLOTS = "2", MOONLM_N_CTX = "1024", MOONLM_TEMPLATE = src })
    local body = { messages = MSGS, max_tokens = 30, temperature = 0 }
    local r = http("POST", srv2.url .. "/v1/chat/completions", body)
    body.stream = true
    local s = http("POST", srv2.url .. "/v1/chat/completions", body)
    srv2:stop()
    assert.are.equal(200, r.status, r.text)
    local chat = model:chat { template = src, n_ctx = 1024 }
    local reply, info = chat:say(MSGS[1].content, { temperature = 0, max_tokens = 30 })
    assert.truthy(info.reasoning_content and #info.reasoning_content > 20)
    local m = r.json.choices[1].message
    assert.are.equal(info.reasoning_content, m.reasoning_content)
    assert.are.equal(reply, m.content)
    local parts, content = {}, {}
    for _, c in ipairs((H.events(s.text))) do
      local d = c.choices[1] and c.choices[1].delta or {}
      if type(d.reasoning_content) == "string" then parts[#parts + 1] = d.reasoning_content end
      if type(d.content) == "string" then content[#content + 1] = d.content end
    end
    assert.are.equal(info.reasoning_content, table.concat(parts))
    assert.are.equal(reply, table.concat(content))
  end)

  -- Every call may land on another pooled VM: a fresh copy of the module (another VM's)
  local function fresh()
    package.loaded["moonlm.resty.thread"] = nil
    return require "moonlm.resty.thread"
  end

  it("a grammar and logprobs continue identically in another pooled VM (the matcher fed the accepted ids)", function()
    local th = fresh()
    local handle = assert(th.compile("schema", PERSON))
    local keep = assert(lm.grammar.attach(handle)) -- as the event loop holds it for a request
    -- a schema the compiler refuses: its reason, for the 400
    local refused = '{"properties":{"a":{"not":{"minLength":2}}}}'
    local _, why = lm.grammar.schema_to_gbnf(refused)
    assert.truthy(why:find("not", 1, true), why)
    assert.are.same({ nil, why }, { th.compile("schema", refused) })
    local ctx = assert(model:context { n_ctx = 1024, seqs = 1 })
    local prompt = model:tokenize("Once upon a time")
    local function run(switch, logprobs)
      ctx:clear()
      local t = fresh()
      local sl = { id = "g1", seq = 0, feed = prompt, max_new = 200, draws = 0, grammar = handle, accepted = {},
                   logprobs = logprobs, sampling = { temperature = 1, top_k = 0, seed = 7 } }
      local got, lps = {}, {}
      for _ = 1, 100 do
        if switch then t = fresh() end
        local res = assert(t.step(ctx.handle, { sl }, { max_steps = 3, budget = 1 }))
        local r = res[1]
        assert.is_nil(r.err)
        for k, id in ipairs(r.ids) do
          got[#got + 1] = id
          lps[#lps + 1] = r.lps and r.lps[k]
        end
        sl.draws, sl.accepted = r.draws, { unpack(got) }
        sl.feed = r.done and {} or r.tail
        sl.max_new = 200 - #got
        if r.done then
          assert.are.equal("grammar", r.done)
          break
        end
      end
      -- one random draw per sampled token: the rest were forced
      return got, lps, #got - sl.draws
    end
    -- with logprobs: every token sampled
    local same, same_lp, f1 = run(false, 2)
    local moved, moved_lp = run(true, 2)
    assert.are.same(same, moved)
    assert.are.same(same_lp, moved_lp)
    assert.are.equal(#same, #same_lp)
    assert.are.equal(0, f1)
    -- without: the forced tokens fast-forwarded, in whatever VM
    local ff, _, f2 = run(false)
    local ff_moved = run(true)
    assert.are.same(ff, ff_moved)
    assert.is_true(f2 > 0, "nothing was fast-forwarded")
    for _, ids in ipairs { same, ff } do
      local v = assert(json.decode(model:detokenize(ids)))
      assert.are.equal("string", type(v.name))
      assert.truthy(({ cat = true, dog = true, fish = true })[v.pet])
    end
    ctx:close()
    assert.truthy(keep)
  end)
end)
