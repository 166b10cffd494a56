-- Specs for moonlm.json: decoding keeps what Lua tables lose (key order, [] vs {}, null),
-- encoding matches Python's json.dumps byte for byte (the chat templates' tojson), and bad
-- input gives nil plus an error with Python's line/column/char position.
local json = require "moonlm.json"

local LUAJIT = math.type == nil

describe("json.decode", function()
  it("decodes scalars", function()
    assert.are.equal(true, json.decode("true"))
    assert.are.equal(false, json.decode(" false "))
    assert.are.equal(json.null, json.decode("null"))
    assert.are.equal("null", tostring(json.null))
    assert.are.equal(42, json.decode("42"))
    assert.are.equal(-7, json.decode("-7"))
    assert.are.equal(2.5, json.decode("2.5"))
    assert.are.equal(100, json.decode("1E2"))
    assert.are.equal(-0.25, json.decode("-25e-2"))
    assert.are.equal("s", json.decode('"s"'))
  end)

  it("keeps ints and floats apart (exact_floats boxes integral floats on LuaJIT)", function()
    local v = json.decode("[1, 1.0, 1e2]", { exact_floats = true })
    assert.are.equal("[1, 1.0, 100.0]", json.encode(v))
    assert.is_false(json.is_float(json.decode("3")))
  end)

  -- { JSON text, expected Lua string }
  local STRINGS = {
    { [["a\"b\\c\/d"]], 'a"b\\c/d' },
    { [["\b\f\n\r\t"]], "\b\f\n\r\t" },
    { [["\u00e9\u4f60"]], "é你" },
    { [["\ud83d\ude00"]], "😀" },
    { [["\u0000x"]], "\0x" },
    { '"raw é 👩‍💻"', "raw é 👩‍💻" },
  }
  for _, c in ipairs(STRINGS) do
    it("decodes string " .. c[1], function()
      assert.are.equal(c[2], json.decode(c[1]))
    end)
  end

  it("keeps [] and {} apart, also when empty", function()
    local v = json.decode('{"a": [], "o": {}, "n": [{}]}')
    assert.are.equal("array", json.table_kind(v.a))
    assert.are.equal("object", json.table_kind(v.o))
    assert.are.equal("object", json.table_kind(v.n[1]))
    assert.are.equal('{"a": [], "o": {}, "n": [{}]}', json.encode(v))
  end)

  it("keeps object key order", function()
    local v = json.decode('{"z": 1, "a": 2, "m": {"y": 1, "b": 2}}')
    assert.are.same({ "z", "a", "m" }, json.keys(v))
    assert.are.same({ "y", "b" }, json.keys(v.m))
  end)

  it("keeps the first position and last value of a duplicate key, as Python does", function()
    local v = json.decode('{"a": 1, "b": 2, "a": 3}')
    assert.are.same({ "a", "b" }, json.keys(v))
    assert.are.equal(3, v.a)
  end)

  -- { bad JSON, expected error (positions as Python's json module reports them) }
  local ERRORS = {
    { "[1,2", "json: expected ',' or ']' at line 1 column 5 (char 4)" },
    { '{\n  "a": tru\n}', "json: unexpected character 't' at line 2 column 8 (char 9)" },
    { "[1,]", "json: unexpected character ']' at line 1 column 4 (char 3)" },
    { [["a\x"]], "json: invalid escape at line 1 column 3 (char 2)" },
    { "", "json: unexpected end of input at line 1 column 1 (char 0)" },
    { '{"a" 1}', "json: expected ':' at line 1 column 6 (char 5)" },
    { "[1] x", "json: trailing characters at line 1 column 5 (char 4)" },
    { '"abc', "json: unterminated string at line 1 column 1 (char 0)" },
    { '"a\1"', "json: invalid control character in string at line 1 column 3 (char 2)" },
    { [["\u12G4"]], "json: invalid \\uXXXX escape at line 1 column 3 (char 2)" },
    { "-", "json: invalid number at line 1 column 1 (char 0)" },
    { "[01]", "json: expected ',' or ']' at line 1 column 3 (char 2)" },
    { '{"a":1,}', "json: expected string key at line 1 column 8 (char 7)" },
    { "{'a': 1}", "json: expected string key at line 1 column 2 (char 1)" },
  }
  for _, c in ipairs(ERRORS) do
    it("rejects " .. ("%q"):format(c[1]), function()
      local v, err = json.decode(c[1])
      assert.is_nil(v)
      assert.are.equal(c[2], err)
    end)
  end

  it("limits nesting instead of overflowing the stack", function()
    assert.is_table(json.decode(("["):rep(1000) .. ("]"):rep(1000)))
    local v, err = json.decode(("["):rep(100000))
    assert.is_nil(v)
    assert.matches("nesting too deep", err)
  end)

  it("rejects a non-string argument", function()
    local v, err = json.decode(nil)
    assert.is_nil(v)
    assert.matches("expected a string", err)
  end)
end)

describe("json.encode", function()
  -- { Lua value, json.dumps output (Python's default separators, ensure_ascii off) }
  local NUMBERS = {
    { 0, "0" }, { -5, "-5" }, { 9007199254740991, "9007199254740991" },
    { 0.1, "0.1" }, { 1 / 3, "0.3333333333333333" }, { 123456789.125, "123456789.125" },
    { 1e16, "1e+16" }, { 1e-5, "1e-05" }, { 1.5e-7, "1.5e-07" }, { 1e300, "1e+300" },
    { 5e-324, "5e-324" }, { 123456789012345678.0, "1.2345678901234568e+17" },
    { -0.0, "-0.0" }, { json.float(1), "1.0" }, { json.float(1e15), "1000000000000000.0" },
    { math.huge, "Infinity" }, { -math.huge, "-Infinity" }, { 0 / 0, "NaN" },
    { 792213792271227.25, "792213792271227.2" }, -- an exact tie: rounds to even
    { 3 * 5e-324, "1.5e-323" }, { 1e23, "1e+23" }, { 2.5e-5, "2.5e-05" }, { json.float(100), "100.0" },
  }
  for _, c in ipairs(NUMBERS) do
    it("prints " .. c[2] .. " as Python does", function()
      if LUAJIT and c[2] == "1e+16" then
        -- an integral double below 2^53 is an int on LuaJIT; box it to say float
        assert.are.equal(c[2], json.encode(json.float(c[1])))
      else
        assert.are.equal(c[2], json.encode(c[1]))
      end
    end)
  end

  it("refuses NaN and infinities when allow_nan is false", function()
    local s, err = json.encode({ 0 / 0 }, { allow_nan = false })
    assert.is_nil(s)
    assert.matches("out of range float", err)
  end)

  it("escapes strings as Python does", function()
    assert.are.equal([["a\"b\\c/d\n\t\u001f"]], json.encode('a"b\\c/d\n\t\31'))
    assert.are.equal('"é😀\127"', json.encode("é😀\127"))
    assert.are.equal([["\u00e9\ud83d\ude00\u007f"]], json.encode("é😀\127", { ensure_ascii = true }))
  end)

  it("uses Python's separators, indent and sort_keys", function()
    local v = json.decode('{"b": [1, {}], "a": []}')
    assert.are.equal('{"b": [1, {}], "a": []}', json.encode(v))
    assert.are.equal('{\n  "b": [\n    1,\n    {}\n  ],\n  "a": []\n}', json.encode(v, { indent = 2 }))
    assert.are.equal('[\n\t1,\n\t2\n]', json.encode({ 1, 2 }, { indent = "\t" }))
    assert.are.equal('{"a": [], "b": [1, {}]}', json.encode(v, { sort_keys = true }))
    assert.are.equal('{"b":[1,{}],"a":[]}', json.encode(v, { separators = { ",", ":" } }))
  end)

  it("has a compact mode for the wire", function()
    local v = json.decode('{"k": [1, 2.5, "x", null, true, {"n": {}}]}')
    assert.are.equal('{"k":[1,2.5,"x",null,true,{"n":{}}]}', json.encode(v, { compact = true }))
  end)

  it("encodes plain Lua tables: sequences as arrays, others as objects with sorted keys", function()
    assert.are.equal("[1, 2, 3]", json.encode({ 1, 2, 3 }))
    assert.are.equal("[]", json.encode({}))
    assert.are.equal('{"a": 1, "b": true}', json.encode({ b = true, a = 1 }))
    assert.are.equal('{"1": "x", "k": "y"}', json.encode({ [1] = "x", k = "y" }))
    assert.are.equal("{}", json.encode(json.object()))
    assert.are.equal("[]", json.encode(json.array()))
  end)

  it("keeps the order given to json.object and json.set", function()
    local o = json.object({ z = 1, a = 2 }, { "z", "a" })
    json.set(o, "m", 3)
    json.set(o, "z", nil)
    assert.are.equal('{"a": 2, "m": 3}', json.encode(o))
    assert.are.same({ "a", "m" }, json.keys(o))
  end)

  it("returns nil and an error for what JSON cannot hold", function()
    local s, err = json.encode({ f = print })
    assert.is_nil(s)
    assert.matches("not JSON serializable", err)
    local cyc = {}
    cyc[1] = cyc
    s, err = json.encode(cyc)
    assert.is_nil(s)
    assert.matches("nesting too deep", err)
  end)
end)

describe("round trips", function()
  local DOCS = {
    '{"messages": [{"role": "user", "content": "Hi \\u00e9 \\ud83d\\ude00\\n"}], "n": null}',
    '[1, 2.5, -3, 1e-05, 1.0, true, false, null, "", [], {}, [[]], {"a": {"b": []}}]',
    '{"z": 1, "a": {"y": [1, {"x": "q\\"uote"}], "b": "\\\\"}}',
  }
  for _, doc in ipairs(DOCS) do
    it("decode then encode gives back " .. doc, function()
      local v = assert(json.decode(doc, { exact_floats = true }))
      local out = json.encode(v, { ensure_ascii = true })
      assert.are.equal(doc, out)
      assert.are.equal(out, json.encode(assert(json.decode(out, { exact_floats = true })), { ensure_ascii = true }))
    end)
  end

  it("survives compact encoding", function()
    local v = assert(json.decode(DOCS[2], { exact_floats = true }))
    assert.are.equal(DOCS[2], json.encode(json.decode(json.encode(v, { compact = true }), { exact_floats = true })))
  end)
end)
