-- JSON Schema -> grammar (lm.grammar.json_schema / schema_to_gbnf): refusals with the
-- keyword and its JSON pointer, hostile schemas within the compile budget, options, and
-- per keyword the instances the grammar accepts and refuses (through the engine's matcher,
-- over a byte vocabulary), plus a fixed sample of the shared JSONSchemaBench set.
local S = require "support"
local lm = require "moonlm"
local json = require "moonlm.json"
local G = lm.grammar
local CASES = require "grammar_schema_cases"

local function compile(schema, opts) return G.schema_to_gbnf(schema, opts) end

describe("JSON Schema compiler", function()
  describe("refuses what it cannot enforce, naming keyword and pointer", function()
    local REFUSED = {
      { [[{"type":"object","properties":{"foo":{"type":"object","patternProperties":{"^x":{"type":"string"}}}}}]],
        "unsupported keyword 'patternProperties' (keys it does not match are allowed) at /properties/foo" },
      { [[{"type":"object","properties":{"x1":{}},"patternProperties":{"^x":{"type":"string"}},"additionalProperties":false}]],
        "unsupported keyword 'patternProperties' (it matches the listed property 'x1') at /" },
      { [[{"type":"object","patternProperties":{"^x":{"type":"string"},"^y":{"type":"integer"}},"additionalProperties":false}]],
        "unsupported keyword 'patternProperties' (two patterns that constrain) at /" },
      { [[{"not":{"minimum":3}}]], "unsupported keyword 'not' at /" },
      { [[{"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]}]],
        "unsupported keyword 'oneOf' (branches 0 and 1 may both match) at /" },
      { [[{"type":"array","uniqueItems":true}]], "unsupported keyword 'uniqueItems' at /" },
      { [[{"if":{"type":"string"},"then":{"minLength":2}}]], "unsupported keyword 'if' at /" },
      { [[{"type":"integer","multipleOf":3}]], "unsupported keyword 'multipleOf' at /" },
      { [[{"type":"object","dependencies":{"a":["b"]}}]], "unsupported keyword 'dependencies' at /" },
      { [[{"type":"array","contains":{"type":"string"}}]], "unsupported keyword 'contains' at /" },
      { [[{"unevaluatedProperties":false}]], "unsupported keyword 'unevaluatedProperties' at /" },
      { [[{"type":"object","minProperties":2}]], "unsupported keyword 'minProperties' at /" },
      { [[{"type":"object","maxProperties":1}]], "unsupported keyword 'maxProperties' at /" },
      { [[{"items":{"type":"string","format":"ipv6"}}]], "unsupported format 'ipv6' at /items" },
      { [[{"type":"string","pattern":"(a)\\1"}]], "pattern uses a backreference, which is not supported (position 5) at /" },
      { [[{"type":"string","pattern":"a(?=b)"}]], "pattern uses a lookaround or group flag, which is not supported (position 2) at /" },
      { [[{"type":"string","pattern":"a\\bc"}]], "pattern uses '\\b' (word boundary), which is not supported (position 3) at /" },
      { [[{"type":"string","pattern":"a^b"}]], "pattern has an anchor inside, which is not supported (position 3) at /" },
      { [[{"type":"string","pattern":"^[a-z]+","maxLength":5}]], "unsupported combination of 'pattern' and 'minLength'/'maxLength' at /" },
      { [[{"$ref":"#"}]], "$ref cycle with no base case at /" },
      { [[{"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/a"},{"type":"null"}]}},"$ref":"#/$defs/a"}]],
        "$ref cycle with no base case (left recursion) at /$defs/a" },
      { [[{"$ref":"#/definitions/nope"}]], "unresolved $ref '#/definitions/nope' at /" },
      { [[{"$ref":"http://x/y.json"}]], "unsupported $ref 'http://x/y.json' (not in this document) at /" },
      { "false", "the schema accepts no value" },
      { [[{"type":"strong"}]], "unknown type in 'type' at /" },
      { [[{"properties":{"a":{"minLength":-1}}}]], "'minLength' must be a non-negative integer at /properties/a" },
      { [[{"type":"object","properties":{"a":{"type":"string"}}]], "invalid JSON: expected ',' or '}' at line 1 column 54" },
    }
    for _, c in ipairs(REFUSED) do
      it(c[2], function()
        local g, err = compile(c[1])
        assert.is_nil(g)
        assert.are.equal(c[2], err)
      end)
    end
  end)

  describe("hostile schemas get a clean error", function()
    it("huge counts", function()
      assert.are.same({ nil, "minLength/maxLength 100000 is over the compile budget (4096) at /properties/s" },
        { compile([[{"properties":{"s":{"type":"string","maxLength":100000}}}]]) })
      assert.are.same({ nil, "minItems/maxItems 5000 is over the compile budget (4096) at /" },
        { compile([[{"type":"array","minItems":5000}]]) })
      assert.are.same({ nil, "minLength/maxLength 18446744073709551614 is over the compile budget (4096) at /" },
        { compile([[{"type":"string","minLength":1e300}]]) })
      assert.are.same({ nil, "pattern repeats more times than the compile budget allows (4096) at /" },
        { compile([[{"type":"string","pattern":"^a{99999}$"}]]) })
    end)
    it("deep nesting", function()
      local deep = string.rep('{"items":', 200) .. "{}" .. string.rep("}", 200)
      local g, err = compile(deep)
      assert.is_nil(g)
      assert.truthy(err:find("^schema nesting deeper than the compile budget %(128%) at /items/items/"), err)
      g, err = compile(string.rep("[", 600) .. string.rep("]", 600))
      assert.are.equal("invalid JSON: nesting too deep at line 1 column 513", err)
    end)
    it("a 1 MB schema compiles or stops at the size budget", function()
      local props = {}
      for i = 1, 20000 do props[i] = ('"p%05d":{"type":"string","maxLength":%d}'):format(i, i % 50) end
      local big = '{"type":"object","properties":{' .. table.concat(props, ",") .. "}}"
      assert.is_true(#big > 800000)
      -- the size budget is under test here, not the time one: 0.3 s of CPU takes 7x that on
      -- the sanitizer build (make test SAN=1), past the default 2000 ms
      local g, err = compile(big, { max_ms = 30000 })
      assert.truthy(g, err)
      assert.truthy(g:find('"\\"p20000\\""', 1, true))
      g, err = compile(big, { max_bytes = 100000, max_ms = 30000 })
      assert.is_nil(g)
      assert.truthy(err:find("^grammar larger than the compile budget %(100000 bytes%)"), err)
    end)
    it("many $ref cycles and a time budget", function()
      local defs = {}
      for i = 1, 300 do defs[i] = ('"d%d":{"anyOf":[{"$ref":"#/$defs/d%d"},{"type":"array","items":{"$ref":"#/$defs/d%d"}}]}'):format(i, i % 300 + 1, (i * 7) % 300 + 1) end
      local g, err = compile('{"$defs":{' .. table.concat(defs, ",") .. '},"$ref":"#/$defs/d1"}')
      assert.is_nil(g)
      assert.truthy(err:find("^%$ref cycle with no base case"), err)
    end)
  end)

  describe("options", function()
    it("refuses unknown options and bad values", function()
      assert.has_error(function() G.schema_to_gbnf("{}", { whitespace = "none" }) end,
        "bad argument #2 to 'schema_to_gbnf' (whitespace must be \"json\" or \"compact\")")
      assert.has_error(function() G.json_schema("{}", { indent = 2 }) end,
        "bad argument #2 to 'json_schema' (unknown option 'indent')")
      assert.has_error(function() G.json_schema(42) end,
        "bad argument #1 to 'json_schema' (table or JSON text expected, got number)")
      assert.has_error(function() G.schema_to_gbnf("{}", { property_order = { "a" } }) end,
        "bad argument #2 to 'schema_to_gbnf' (property_order applies to table schemas; JSON text keeps its own order)")
      assert.has_error(function() G.schema_to_gbnf({}, { max_ms = -1 }) end,
        "bad argument #2 to 'schema_to_gbnf' (max_ms must be a positive number)")
    end)
    it("compact whitespace has no whitespace rule", function()
      local g = assert(compile([[{"type":"array","items":{"type":"integer"}}]], { whitespace = "compact" }))
      assert.is_nil(g:find("ws", 1, true))
      assert.are.equal("root ::= value\n", g:match("^[^\n]*\n"))
      g = assert(compile([[{"type":"array","items":{"type":"integer"}}]]))
      assert.truthy(g:find("\nws ::= [ \\t\\n\\r]*\n", 1, true))
    end)
    it("a table schema: property_order first, recorded order, then sorted", function()
      local t = { type = "object", properties = { b = { type = "integer" }, a = { type = "string" }, c = {} } }
      local function order(g)
        local line, names = g:match("\nvalue ::= ([^\n]*)"), {}
        for name in line:gmatch('"\\"(%a)\\""') do names[#names + 1] = name end
        return names
      end
      assert.are.same({ "a", "b", "c" }, order(assert(compile(t, { whitespace = "compact" }))))
      assert.are.same({ "c", "b", "a" }, order(assert(compile(t, { whitespace = "compact", property_order = { "c", "b" } }))))
      local o = json.object({ z = { type = "null" }, y = { type = "null" } }, { "z", "y" })
      g = assert(compile({ type = "object", properties = o, required = { "z", "y" } }, { whitespace = "compact" }))
      assert.are.same({ "z" }, order(g)) -- z first and required: y follows in the tail rule
      assert.truthy(g:find('\nvalue%-tail%-2 ::=  "," "\\"y\\""'), g)
    end)
  end)

  describe("instances through the engine's matcher", function()
    if not (G.gbnf and G.vocab) then
      pending("needs the grammar engine (lm.grammar.gbnf), which lands separately")
      return
    end
    local bytes = {}
    for i = 0, 255 do bytes[i + 1] = string.char(i) end
    local vocab = G.vocab(bytes)
    local function accepts(g, text)
      local m = g:matcher(vocab)
      return m:accept_text(text) and m:can_end()
    end
    for _, c in ipairs(CASES) do
      it(c[1], function()
        local g, err = G.json_schema(c[2])
        assert.truthy(g, err)
        for _, t in ipairs(c.ok) do assert.is_true(accepts(g, t), "refused " .. t) end
        for _, t in ipairs(c.bad) do assert.is_false(accepts(g, t), "accepted " .. t) end
      end)
    end
  end)

  describe("the GBNF text is the same in every process", function()
    -- schemas whose rule sharing (and so the text) used to change from one process to the
    -- next: the memo key of a set copied the members' struct padding
    local NAMES = { "JsonSchemaStore---meta.schema.json", "MCPspec---CreateMessageResult.json",
      "Github_medium---o42216.json", "Github_medium---o13135.json" }
    local function texts_in_fresh_process(order)
      local tmp = S.tmpname(".gbnf")
      local script = ([[
local lm, json = require "moonlm", require "moonlm.json"
local want, texts = {}, {}
for name in (%q):gmatch("[^ ]+") do want[name] = true end
for line in io.lines(%q) do
  local d = json.decode(line)
  if want[d.schema] then texts[d.schema] = assert(lm.grammar.schema_to_gbnf(d.text)) end
end
local out = assert(io.open(%q, "wb"))
for name in (%q):gmatch("[^ ]+") do out:write(name, " ", #texts[name], "\n", texts[name]) end
out:close()
]]):format(table.concat(order, " "), S.path("jsonschema/schemas.jsonl"), tmp, table.concat(NAMES, " "))
      local file = S.tmpname(".lua")
      local f = assert(io.open(file, "wb"))
      f:write(script)
      f:close()
      local interp = jit and "luajit" or "lua5.4" -- the same ABI as this run (LUA_PATH, LUA_CPATH inherited)
      local p = io.popen(("%s %s 2>&1"):format(interp, file))
      local log = p:read("*a")
      p:close()
      os.remove(file)
      f = io.open(tmp, "rb")
      assert.truthy(f, log)
      local text = f:read("*a")
      f:close()
      os.remove(tmp)
      return text
    end
    it("two fresh processes, schemas in either order: byte for byte", function()
      local reversed = {}
      for i = #NAMES, 1, -1 do reversed[#reversed + 1] = NAMES[i] end
      local a, b = texts_in_fresh_process(NAMES), texts_in_fresh_process(reversed)
      assert.truthy(#a > 400000 and a:find("\nroot ::= ", 1, true))
      assert.is_true(a == b, "the GBNF texts differ")
    end)
  end)

  describe("JSONSchemaBench sample (every 23rd schema)", function()
    local sample, names = {}, {}
    local i = 0
    for line in io.lines(S.path("jsonschema/schemas.jsonl")) do
      if i % 23 == 0 then
        local d = json.decode(line)
        sample[#sample + 1] = d
        names[d.schema] = #sample
      end
      i = i + 1
    end
    it("62 schemas, 51 compile, the refusals are named", function()
      local ok, refused = 0, 0
      for _, d in ipairs(sample) do
        local g, err = compile(d.text)
        if g then ok = ok + 1 else
          refused = refused + 1
          assert.truthy(err:find("unsupported") or err:find("budget") or err:find("not supported"), err)
        end
      end
      assert.are.same({ 62, 51, 11 }, { #sample, ok, refused })
    end)
    if not (G.gbnf and G.vocab) then
      pending("instances need the grammar engine (lm.grammar.gbnf)")
      return
    end
    -- the benchmark's protocol (bench/jsonschema.lua) on the sample: Llama 3 tokens, one
    -- full mask and one commit per token, the grammar able to end after the last one
    -- (#once: the masks do not depend on the kernel level)
    it("the mask protocol with the Llama 3 vocabulary: no invalidation error, the passing schemas #once", function()
      local vocab = assert(lm.load(S.path("tokenizer/ggml-vocab-llama-bpe.gguf"), { vocab_only = true }))
      local grammars, inv, verr, bad, ntests = {}, {}, {}, {}, 0
      for k, d in ipairs(sample) do grammars[k] = G.json_schema(d.text) or false end
      for line in io.lines(S.path("jsonschema/instances.jsonl")) do
        local d = json.decode(line)
        local k = names[d.schema]
        if k then
          local g = grammars[k]
          if g then
            ntests = ntests + 1
            local m = g:matcher(vocab)
            local buf, acc = m:mask(), true
            for _, id in ipairs(vocab:tokenize(d.text, { bos = false })) do
              m:mask(buf)
              if buf[id + 1] == 0 then acc = false break end -- the mask's verdict
              assert.is_true(m:accept(id)) -- and the commit agrees with it
            end
            acc = acc and m:can_end()
            if acc and not d.valid then inv[#inv + 1] = d.schema end
            if not acc and d.valid then verr[#verr + 1] = d.schema end
            if acc ~= d.valid then bad[d.schema] = true end
          end
        end
      end
      local passing = 0
      for k, d in ipairs(sample) do
        if grammars[k] and not bad[d.schema] then passing = passing + 1 end
      end
      assert.are.same({}, inv)
      assert.are.same({}, verr)
      assert.are.same({ 51, 165 }, { passing, ntests })
    end)
  end)
end)
