-- moonlm.resty.toolstream: tool calls streamed while they are generated. Every reply is fed
-- in pieces of 1, 2, 3, 7 characters and whole; the deltas put together as the openai
-- client does (by index: id and name from the first, arguments concatenated) must equal
-- what tools.parse makes of the whole reply, and the content too; and the arguments must
-- come before the reply ends.
local tools = require "moonlm.tools"
local toolstream = require "moonlm.resty.toolstream"
local json = require "moonlm.json"
local core = require "moonlm.core"

-- feed text in pieces of `step` characters (whole UTF-8 characters, as the server's
-- decoder gives them); returns what a client sees
local function run(fmtname, text, step, opts)
  local fmt = tools.format(fmtname, { reasoning = false })
  local s = toolstream.new(fmt, opts or {}, core.rng(3))
  local seen = { content = "", calls = {}, during = 0, deltas = 0 }
  local function take(ds, during)
    for _, d in ipairs(ds or {}) do
      seen.deltas = seen.deltas + 1
      local e = seen.calls[d.index + 1]
      if not e then
        assert.is_string(d.id, "the first delta of a call has its id")
        assert.are.equal("function", d.type)
        e = { id = d.id, name = d["function"].name, args = "" }
        seen.calls[d.index + 1] = e
      else
        assert.is_nil(d.id, "only the first delta of a call has an id")
        assert.is_nil(d["function"].name)
      end
      e.args = e.args .. d["function"].arguments
      if during and d["function"].arguments ~= "" then seen.during = seen.during + 1 end
    end
  end
  local i = 1
  while i <= #text do
    local j = math.min(#text, i + step - 1)
    while j < #text and text:byte(j + 1) >= 0x80 and text:byte(j + 1) < 0xC0 do j = j + 1 end
    local c, r, ds = s:push(text:sub(i, j))
    assert.are.equal("", r)
    seen.content = seen.content .. c
    take(ds, true)
    i = j + 1
  end
  local c, _, ds, _, calls = s:finish()
  seen.content = seen.content .. c
  take(ds, false)
  seen.final = calls
  return seen
end

-- the deltas of every split agree with tools.parse; returns the run with 1-character pieces
local function agree(fmtname, text, opts)
  local fmt = tools.format(fmtname, { reasoning = false })
  local want = assert(tools.parse(text, fmt, opts or {}))
  local first
  for _, step in ipairs { 1, 2, 3, 7, #text } do
    local what = ("%s, pieces of %d"):format(fmtname, step)
    local seen = run(fmtname, text, step, opts)
    assert.are.equal(want.content or "", seen.content, what)
    local got, exp = {}, {}
    for k, c in ipairs(want.tool_calls or {}) do exp[k] = { c["function"].name, c["function"].arguments } end
    for k, c in ipairs(seen.calls) do got[k] = { c.name, c.args } end
    assert.are.same(exp, got, what)
    -- the reply's calls carry the streamed ids
    for k, c in ipairs(seen.final or {}) do assert.are.equal(seen.calls[k].id, c.id, what) end
    first = first or seen
  end
  return first, want
end

describe("moonlm.resty.toolstream", function()
  it("hermes: escapes, numbers, nested values, several calls, arguments before the name", function()
    local text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\\u00e9s \\"x\\"\\n\\ud83d\\ude00 \\/ é",'
      .. ' "n": 1.50, "e": 1e2, "z": 7, "l": [1, true, null, {"a": [], "b": {}}]}}\n</tool_call>\n'
      .. '<tool_call>\n{"arguments": {"zone": "UTC"}, "name": "get_time"}\n</tool_call>'
    local seen, want = agree("hermes", text)
    assert.are.equal(2, #want.tool_calls)
    assert.are.equal('{"city":"Parés \\"x\\"\\n😀 / é","n":1.5,"e":100.0,"z":7,"l":[1,true,null,{"a":[],"b":{}}]}',
                     want.tool_calls[1]["function"].arguments)
    -- one character at a time: the arguments came in many pieces before the end
    assert.is_true(seen.during >= 40, tostring(seen.during))
    assert.are.equal("Sure.", seen.content)
  end)

  it("the arguments of a call come before the reply ends, up to what may still change", function()
    local fmt = tools.format("hermes", { reasoning = false })
    local s = toolstream.new(fmt, {}, core.rng(1))
    local _, _, d = s:push('<tool_call>\n{"name": "f", "arguments": {"city": "Par')
    assert.are.equal(1, #d)
    assert.are.same({ 0, "f", '{"city":"Par' }, { d[1].index, d[1]["function"].name, d[1]["function"].arguments })
    assert.truthy(d[1].id:find("^call_%w+$"))
    -- an escape and a number are held until whole
    _, _, d = s:push('is\\u00')
    assert.are.same({ "is" }, { d[1]["function"].arguments })
    _, _, d = s:push('e9", "n": 12')
    assert.are.same({ 'é","n":' }, { d[1]["function"].arguments })
    _, _, d = s:push('}}\n</tool_call>')
    assert.are.same({ "12}" }, { d[1]["function"].arguments })
    local c, _, rest, msg, calls = s:finish()
    assert.are.equal("", c)
    assert.is_nil(rest)
    assert.are.equal('{"city":"Parisé","n":12}', msg.tool_calls[1]["function"].arguments)
    assert.are.equal(d and calls[1].id, calls[1].id)
  end)

  it("the other JSON formats: llama3, mistral, granite, command_r, generic", function()
    agree("llama3", '{"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {"y": "a b"}}')
    agree("llama3", '<|python_tag|>{"name": "f", "parameters": {"x": [1, 2]}}')
    agree("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"x": -0.0}}, {"name": "g", "arguments": {}}]')
    agree("granite", '<|tool_call|>[{"name": "f", "arguments": {"q": "a\\tb"}}]')
    -- Command R's directly_answer is no call
    local seen = agree("command_r", 'Action: ```json\n[{"tool_name": "directly_answer", "parameters": {}}, '
      .. '{"tool_name": "f", "parameters": {"a": "b"}}]\n```')
    assert.are.equal(1, #seen.calls)
    agree("command_r", '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "f", "parameters": {"a": 1}}]<|END_ACTION|>')
    seen = agree("generic", '{"tool_calls": [{"name": "f", "arguments": {"q": "hello world"}}, {"name": "g", "arguments": {"z": 2}}]}')
    assert.are.equal(2, #seen.calls)
    assert.is_true(seen.during >= 10)
  end)

  it("a call without arguments, text after the calls, a model's own id", function()
    local seen, want = agree("hermes", '<tool_call>\n{"name": "now"}\n</tool_call>\nDone, as asked.')
    assert.are.equal("{}", want.tool_calls[1]["function"].arguments)
    assert.are.equal("Done, as asked.", seen.content)
    -- an id before the arguments is the call's id (R7B writes it first)
    seen = run("command_r", '<|START_ACTION|>[{"tool_call_id": "7", "tool_name": "f", "parameters": {"a": 1}}]<|END_ACTION|>', 1)
    assert.are.equal("7", seen.calls[1].id)
    assert.are.equal("7", seen.final[1].id)
  end)

  it("a name in the format's markup, then the arguments: DeepSeek R1, Functionary, Mistral's name[ARGS]", function()
    local ds = tools.format("deepseek_r1")
    local text = ds.render_calls { tools.make_call("f", json.decode('{"x": 1, "s": "a long enough value"}')),
                                   tools.make_call("g", { y = "z" }) }
    local seen = agree("deepseek_r1", text)
    assert.are.equal(2, #seen.calls)
    assert.is_true(seen.during >= 10, tostring(seen.during))
    seen = agree("functionary", '>>>f\n{"x": 1, "s": "a long enough value"}>>>g\n{"y": 2}')
    assert.are.equal(2, #seen.calls)
    assert.is_true(seen.during >= 10, tostring(seen.during))
    seen = agree("mistral", '[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{"zone": "UTC", "fmt": "long enough"}'
      .. '[TOOL_CALLS]now[ARGS]{}')
    assert.are.same({ "a1b2c3d4e", "get_time" }, { seen.calls[1].id, seen.calls[1].name })
    assert.are.equal(2, #seen.calls)
    assert.is_true(seen.during >= 10, tostring(seen.during))
  end)

  it("markup it does not follow is sent whole at the end (same calls)", function()
    -- GLM's key/value pairs, Functionary's and Llama's python code, text it cannot place
    local seen = agree("hermes", '<tool_call>get_time\n<arg_key>zone</arg_key>\n<arg_value>UTC</arg_value>\n</tool_call>')
    assert.are.same({ 1, 0 }, { #seen.calls, seen.during })
    seen = agree("functionary", '>>>python\nprint("hello, world")\n')
    assert.are.same({ 1, 0 }, { #seen.calls, seen.during })
    seen = agree("llama3", '<|python_tag|>brave_search.call(query="today in Paris")')
    assert.are.same({ 1, 0 }, { #seen.calls, seen.during })
    -- a call after text that Functionary addresses to the user: sent at the end
    seen = agree("functionary", '>>>f\n{"x": 1}>>>all\nLet me check.>>>g\n{"y": 2}')
    assert.are.equal(2, #seen.calls)
  end)

  it("reasoning first, then calls: each part streamed where it belongs", function()
    local fmt = tools.format("hermes")
    fmt.think = { "<think>", "</think>" }
    local text = '<think>The user wants the weather; I call get_weather.</think>\n<tool_call>\n'
      .. '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    local want = tools.parse(text, fmt, {})
    for _, step in ipairs { 1, 3, #text } do
      local s = toolstream.new(fmt, {}, core.rng(2))
      local reasoning, content, args, during = "", "", "", 0
      for i = 1, #text, step do
        local c, r, ds = s:push(text:sub(i, i + step - 1))
        reasoning, content = reasoning .. r, content .. c
        for _, d in ipairs(ds or {}) do
          args = args .. d["function"].arguments
          during = during + 1
        end
      end
      local c, r, ds, _, calls = s:finish()
      reasoning, content = reasoning .. r, content .. c
      for _, d in ipairs(ds or {}) do args = args .. d["function"].arguments end
      assert.are.same({ want.reasoning_content, "", want.tool_calls[1]["function"].arguments, 1 },
                      { reasoning, content, args, #calls })
      if step == 1 then assert.is_true(during >= 10) end
    end
  end)

  it("JSON that is no call is text; markup cut short keeps its deltas and ends as text", function()
    -- llama3: a JSON answer, not a call
    local seen = agree("llama3", '{"answer": {"name": 1}}')
    assert.are.equal(0, #seen.calls)
    -- cut by max_tokens in the arguments: the deltas sent stay, the reply is its text
    local text = '<tool_call>\n{"name": "f", "arguments": {"city": "Paris", "unit'
    seen = run("hermes", text, 1)
    assert.are.equal(1, #seen.calls)
    assert.are.equal('{"city":"Paris",', seen.calls[1].args)
    assert.is_nil(seen.final)
    assert.are.equal(text, seen.content)
  end)

  it("streams the arguments of calls rendered by every JSON format's own writer", function()
    local calls = { tools.make_call("get_weather", json.decode('{"city": "São Paulo", "days": [1, 2.5], "ok": false}')),
                    tools.make_call("get_time", json.decode('{"zone": "America/Sao_Paulo"}')) }
    for name in pairs(toolstream.formats) do
      local fmt = tools.format(name, { reasoning = false })
      local seen, want = agree(name, fmt.render_calls(calls))
      assert.are.equal(2, #want.tool_calls, name)
      assert.is_true(seen.during >= 20, name .. ": " .. seen.during)
    end
  end)
end)
