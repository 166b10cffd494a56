-- Constrained generation: grammars and JSON Schemas in model:generate/stream, lm.sampler and
-- chat sessions (tool_choice), with stories260K sampling at temperature 1 (a small model
-- that knows nothing of JSON, so every well-formed output is the grammar's doing). Each
-- output is checked by replaying it through a fresh matcher of the same grammar; masks,
-- candidates and logprobs are checked against that matcher's mask at every step.
local lm = require "moonlm"
local json = require "moonlm.json"
local gbnf = require "moonlm.gbnf"
local tools = require "moonlm.tools"
local S = require "support"

local G = lm.grammar

-- the grammar accepts every token of ids and may end after them
local function replay(model, g, ids)
  local m = g:matcher(model)
  for i, id in ipairs(ids) do
    if not m:accept(id) then return false, ("token %d (%d, %q) refused"):format(i, id, model:piece(id)) end
  end
  if not m:can_end() then return false, "cannot end there" end
  return true
end

-- the allowed ids of a matcher, as a set
local function allowed(m)
  local set = {}
  for i, v in ipairs(m:mask():totable()) do
    if v ~= 0 then set[i - 1] = true end
  end
  return set
end

describe("constrained generation (stories260K)", function()
  local model = assert(lm.load(S.path("models/stories260K.gguf")))
  local eos = model.vocab.eos
  local prompt = "Once upon a time"

  local LIST = G.gbnf [[
root ::= "[" item ( ", " item ){0,3} "]"
item ::= "\"" [a-z]{1,8} "\"" | [0-9]{1,3}
]]
  local SCHEMA = [[{"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    "owner": {"type": ["boolean", "null"]}},
  "required": ["name", "age", "pets"], "additionalProperties": false}]]

  it("a GBNF grammar: every output is in its language, and ends when the grammar is done", function()
    for seed = 1, 6 do
      local text, info = model:generate(prompt, { grammar = LIST, temperature = 1, seed = seed, max_tokens = 200 })
      assert(replay(model, LIST, info.ids))
      assert.truthy(text:match('^%[.*%]$'), text)
      assert.is_true(info.stop_reason == "grammar" or info.stop_reason == "eos", info.stop_reason)
    end
    -- a matcher goes on from its state; stream gives the same text in pieces
    local parts = {}
    for piece in model:stream(prompt, { grammar = LIST, temperature = 1, seed = 3, max_tokens = 200 }) do parts[#parts + 1] = piece end
    assert.are.equal((model:generate(prompt, { grammar = LIST, temperature = 1, seed = 3, max_tokens = 200 })), table.concat(parts))
  end)

  it("a JSON Schema: valid JSON of that shape, whitespace kept to what a model writes", function()
    local g = assert(gbnf.json_schema(SCHEMA))
    for seed = 1, 4 do
      local text, info = model:generate(prompt, { json_schema = SCHEMA, temperature = 1, seed = seed, max_tokens = 300 })
      assert(replay(model, g, info.ids))
      local v = assert(json.decode(text))
      assert.is_string(v.name)
      assert.is_true(#v.name:gsub("[\128-\191]", "") <= 12) -- characters, not bytes
      assert.is_true(math.type and math.type(v.age) == "integer" or v.age == math.floor(v.age))
      assert.is_true(v.age >= 0 and v.age <= 120)
      assert.is_true(#v.pets <= 3)
      for _, p in ipairs(v.pets) do assert.truthy(({ cat = 1, dog = 1, fish = 1 })[p]) end
      assert.is_nil(text:find("   ", 1, true) and not text:find("\n", 1, true) or nil) -- no runs of spaces
    end
  end)

  it("EOS only where the grammar may end, and at once when it is favoured there", function()
    local g = assert(G.gbnf([==[root ::= "Hello " [a-z]{3,6}]==]))
    local text, info = model:generate(prompt, { grammar = g, temperature = 1, seed = 1, logit_bias = { [eos] = 100 } })
    assert.are.equal("eos", info.stop_reason)
    assert.truthy(text:match("^Hello [a-z][a-z][a-z]$"), text) -- the first place it may end
    -- with EOS banned, the grammar's own end stops generation
    text, info = model:generate(prompt, { grammar = g, temperature = 1, seed = 1, logit_bias = { [eos] = -math.huge } })
    assert.are.equal("grammar", info.stop_reason)
    assert.truthy(text:match("^Hello [a-z][a-z][a-z][a-z][a-z][a-z]$"), text)
    -- a budget too small leaves it unfinished, and says so
    text, info = model:generate(prompt, { grammar = LIST, temperature = 1, seed = 1, max_tokens = 2 })
    assert.are.equal("length", info.stop_reason)
  end)

  it("sampler steps only ever see candidates the grammar allows; logprobs are after the mask", function()
    local seen = {}
    local function step(c) seen[#seen + 1] = { ids = { table.unpack(c.ids) }, logits = { table.unpack(c.logits) } } end
    local _, info = model:generate(prompt, { grammar = LIST, temperature = 1, seed = 5, top_k = 50, steps = { step },
                                             max_tokens = 60, logprobs = 5 })
    assert.are.equal(0, info.forced_tokens) -- logprobs: every token has its own step
    assert.are.equal(info.tokens, #info.logprobs)
    local m = LIST:matcher(model)
    local ctx = assert(model:context { n_ctx = 256 })
    local ids = model:tokenize(prompt)
    local logits = assert(ctx:decode(ids))
    for t = 1, info.tokens do
      local ok = allowed(m)
      for _, id in ipairs(seen[t].ids) do assert.is_true(ok[id], ("step %d: candidate %d not allowed"):format(t, id)) end
      for _, v in ipairs(seen[t].logits) do assert.is_true(v > -math.huge) end
      -- logprobs: log-softmax over the allowed tokens only
      local row, mx = logits:totable(), -math.huge
      for id in pairs(ok) do mx = math.max(mx, row[id + 1]) end
      local z = 0
      for id in pairs(ok) do z = z + math.exp(row[id + 1] - mx) end
      local e = info.logprobs[t]
      assert.near(row[e.id + 1] - mx - math.log(z), e.logprob, 2e-4)
      for _, alt in ipairs(e.top_logprobs) do assert.is_true(ok[alt.id]) end
      local n_ok = 0
      for _ in pairs(ok) do n_ok = n_ok + 1 end
      assert.are.equal(math.min(5, n_ok), #e.top_logprobs)
      assert(m:accept(info.ids[t]))
      logits = assert(ctx:decode({ info.ids[t] }))
    end
    ctx:close()
  end)

  it("fast-forward: forced tokens come without sampling, in one batch with the token before", function()
    local g = assert(G.gbnf([==[root ::= [a-z] " is the answer to everything: " [0-9] [0-9]]==]))
    local forced = model:tokenize(" is the answer to everything: ", { bos = false, prefix = false })
    local calls = 0
    local text, info = model:generate(prompt, { grammar = g, temperature = 1, seed = 2, steps = { function() calls = calls + 1 end } })
    assert.truthy(text:match("^[a-z] is the answer to everything: %d%d$"), text)
    -- all but the last forced token (the model could continue it with a longer one)
    assert.are.equal(#forced - 1, info.forced_tokens)
    assert.are.equal(info.tokens - info.forced_tokens, calls)
    assert(replay(model, g, info.ids))
    local text2, info2 = model:generate(prompt, { grammar = g, temperature = 1, seed = 2, fast_forward = false })
    assert.are.equal(0, info2.forced_tokens)
    assert.truthy(text2:match("^[a-z] is the answer to everything: %d%d$"), text2)
  end)

  it("lm.sampler takes a grammar or a JSON Schema; a loop of your own accepts each token", function()
    local s = lm.sampler { grammar = LIST, model = model, temperature = 1, seed = 9 }
    local ctx = assert(model:context { n_ctx = 256 })
    local history = model:tokenize(prompt)
    local logits = assert(ctx:decode(history))
    local out = {}
    for _ = 1, 100 do
      local id = s:sample(logits, history)
      if id == eos then break end
      assert.is_true(s:accept(id))
      out[#out + 1] = id
      history[#history + 1] = id
      if s.grammar:is_done() then break end
      logits = assert(ctx:decode({ id }))
    end
    assert(replay(model, LIST, out))
    local j = lm.sampler { json_schema = SCHEMA, model = model }
    assert.is_false(j:accept(model:tokenize("x", { bos = false, prefix = false })[1]))
    ctx:close()
    assert.has_error(function() lm.sampler { grammar = LIST } end,
      "bad argument #1 to 'sampler' (a grammar or json_schema needs model = <the model> (or pass g:matcher(model)))")
    assert.has_error(function() lm.sampler { grammar = LIST, json_schema = SCHEMA, model = model } end,
      "bad argument #1 to 'sampler' (give grammar or json_schema, not both)")
    assert.has_error(function() model:generate(prompt, { json_schema = [[{"type": "object", "dependentRequired": {"a": ["b"]}}]] }) end)
    assert.has_error(function() model:generate(prompt, { grammar = LIST, ignore_eos = true }) end,
      "bad option 'ignore_eos' (with a grammar, the grammar decides where the output ends)")
    assert.has_error(function() model:generate(prompt, { grammar = LIST, sampler = lm.sampler {} }) end,
      "bad option 'sampler' (give the grammar to your sampler: lm.sampler{ grammar = ..., model = ... })")
  end)
end)

describe("tool_choice with grammars (stories260K) #once", function()
  local model = assert(lm.load(S.path("models/stories260K.gguf")))
  local TOOLS = json.decode [[ [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                     "required": ["city"], "additionalProperties": false}}},
    {"type": "function", "function": {"name": "get_time",
      "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}},
                     "required": ["tz"], "additionalProperties": false}}}] ]]
  local function template(name) return S.read_file(S.path("chat_templates/" .. name .. ".jinja")) end

  local function valid_call(call, only)
    local f = call["function"]
    local args = assert(json.decode(f.arguments))
    if f.name == "get_weather" then
      assert.is_string(args.city)
    else
      assert.are.equal("get_time", f.name)
      assert.truthy(args.tz == "UTC" or args.tz == "CET")
    end
    if only then assert.are.equal(only, f.name) end
  end

  -- every format: "required" and a named function give exactly one well-formed call
  for _, t in ipairs { "qwen2.5-instruct", "llama-3.1-instruct", "mistral-v7", "functionary-v3.2", "granite-3.3",
                       "command-r", "deepseek-r1-distill-qwen", "gemma-2-it" } do
    it(t .. ": required and named calls always parse", function()
      for seed = 1, 2 do
        local choice = seed == 1 and "required" or { type = "function", ["function"] = { name = "get_weather" } }
        local chat = model:chat { template = template(t), tools = TOOLS, temperature = 1, seed = seed, max_tokens = 300,
                                  parallel_tool_calls = false, reasoning = false }
        local _, info = chat:say("Weather?", { tool_choice = choice })
        assert.are.equal("grammar", info.stop_reason)
        assert.is_nil(info.tool_parse_error)
        assert.are.equal(1, #info.tool_calls)
        valid_call(info.tool_calls[1], seed == 2 and "get_weather" or nil)
      end
    end)
  end

  it("a reasoning model thinks first, then calls", function()
    local fmt = tools.detect(template("deepseek-r1-distill-qwen"))
    local text = assert(tools.grammar(fmt, TOOLS, { choice = "required", open_think = true }))
    local g = assert(G.gbnf(text))
    local m = g:matcher(model)
    assert.is_true(m:accept_text("Let me see.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n"))
    assert.is_false(m:allows(model:tokenize("}", { bos = false, prefix = false })[1]))
    assert.is_true(m:accept_text('{"tz": "UTC"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'))
    assert.is_true(m:can_end())
    local m2 = g:matcher(model) -- "</think>" ends the thought: no call before it
    assert.is_true(m2:accept_text("<｜tool▁calls▁begin｜>")) -- (that is thought text)
    assert.is_false(m2:can_end())
  end)

  it("auto: free text until the marker, then the grammar keeps the call well-formed", function()
    local src = template("qwen2.5-instruct")
    local script = "Sure. <tool_call>\n"
    for seed = 1, 4 do
      local k = 0
      local function steer() -- writes the script, then lets the model go on (under the grammar)
        k = k + 1
        if k <= #script then
          return { ids = { assert(model:find_token(("<0x%02X>"):format(script:byte(k)))) }, logits = { 0 } }
        end
      end
      local chat = model:chat { template = src, tools = TOOLS, temperature = 1, seed = seed, max_tokens = 300,
                                parallel_tool_calls = false }
      local reply, info = chat:say("Weather?", { steps = { steer } })
      assert.are.equal("Sure.", reply)
      assert.are.equal(1, #info.tool_calls)
      valid_call(info.tool_calls[1])
    end
    -- without the marker it is plain text, never constrained
    local chat = model:chat { template = src, tools = TOOLS, temperature = 1, seed = 1, max_tokens = 30 }
    local reply, info = chat:say("Tell me a story")
    assert.is_nil(info.tool_calls)
    assert.are.equal(30, info.tokens)
    assert.truthy(#reply > 20)
  end)

  it("refuses what it cannot honour", function()
    local chat = model:chat { template = template("qwen3"), tools = TOOLS }
    assert.has_error(function() chat:say("x", { json_schema = { type = "object" } }) end,
      [[bad option 'grammar' (a reply with tools follows the tool-call grammar; use tool_choice = "none" for your own)]])
    assert.has_error(function() chat:say("x", { tool_choice = { type = "function", ["function"] = { name = "nope" } } }) end,
      "bad option 'tool_choice' (no tool named 'nope')")
    local bad = json.decode [[ [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "dependentRequired": {"a": ["b"]}}}}] ]]
    assert.has_error(function() chat:say("x", { tools = bad, tool_choice = "required" }) end)
    -- "auto" goes on without the grammar, and says why
    local _, info = chat:say("x", { tools = bad, max_tokens = 4 })
    assert.is_string(info.tool_grammar_error)
  end)
end)

describe("moonlm.gbnf", function()
  it("prefixes rule names only", function()
    local src = 'root ::= value "x\\"y" [a-z\\]] ws{2,3} # c1 c2\nvalue ::= "a" | ws\nws ::= [ ]'
    assert.are.equal('p-root ::= p-value "x\\"y" [a-z\\]] p-ws{2,3} # c1 c2\np-value ::= "a" | p-ws\np-ws ::= [ ]',
                     gbnf.prefix(src, "p-"))
    assert.are.equal('"a\\"b\\\\c\\n"', gbnf.literal('a"b\\c\n'))
  end)

  it("writes 'any text without P' as one automaton", function()
    local model = assert(lm.load(S.path("models/stories260K.gguf")))
    local g = assert(G.gbnf("root ::= " .. gbnf.without("</think>") .. ' "</think>" "!"'))
    for _, c in ipairs { { "a < b </thin </think>!", true }, { "</think>!", true }, { "x </think> y </think>!", false },
                         { "<</think>!", true }, { "</thin</think>!", true }, { "no end", false }, { "</think>", false } } do
      local m = g:matcher(model)
      local ok = m:accept_text(c[1]) and m:can_end()
      assert.are.equal(c[2], ok, c[1])
    end
    assert.is_nil(gbnf.without(">>>"))
  end)
end)
