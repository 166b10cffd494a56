-- moonlm.tools: tool calls and reasoning for chat models.
--
-- Each model family is trained to call tools in its own markup. This module
--   * picks the format a model uses from its chat template and vocabulary (detect),
--   * finds out what a chat template can render (caps: tool lists, tool calls, tool results,
--     the system role) by rendering probe conversations, and fills the gaps (prepare),
--   * parses model output back into OpenAI-shaped tool calls and reasoning (parse), also
--     while streaming, holding markup back from the text (parser).
--
--   local fmt = tools.detect(template_source, function(s) return model:find_token(s) end, model.meta)
--   local msg, err = tools.parse(text, fmt, { tools = list })
--   -- msg = { content = "...", reasoning_content = "..." | nil,
--   --         tool_calls = { { id = nil, type = "function", ["function"] = { name = "f",
--   --                          arguments = '{"a":1}' } } } | nil }
--
-- Formats (fmt.name):
--   hermes      Hermes 2/3, Qwen 2.5/3, Falcon 3, GLM 4.5/4.6:
--               <tool_call>{"name": ..., "arguments": {...}}</tool_call> (a JSON list inside
--               the tags too), or GLM's <tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>
--   llama3      Llama 3.1/3.2/3.3: a reply that is {"name": ..., "parameters": {...}}, several
--               separated by ';', or <|python_tag|> followed by JSON, name.call(k="v") or code
--   mistral     [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}] and the newer
--               [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}
--   functionary Functionary v3.2: >>>name\n{args} ... and >>>all\ntext for plain text
--   command_r   Command R7B <|START_ACTION|>[{"tool_call_id", "tool_name", "parameters"}]<|END_ACTION|>
--               and Command R / R+ Action: ```json [{"tool_name", "parameters"}] ```
--   granite     Granite 3.x <|tool_call|>[{"name": ..., "arguments": {...}}]
--   deepseek_r1 DeepSeek R1 <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name
--               ```json {...} ```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
--   generic     any other model: a reply that is {"tool_calls": [{"name", "arguments"}]}
-- Reasoning: <think>...</think> at the start of the reply (or everything up to </think> when
-- the prompt itself ends with <think>) becomes reasoning_content; Command R7B uses
-- <|START_THINKING|>...<|END_THINKING|>.
local json = require "moonlm.json"

local type, ipairs, pairs, next, tostring = type, ipairs, pairs, next, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local find, sub, byte, match, gsub, format = string.find, string.sub, string.byte, string.match,
  string.gsub, string.format
local concat = table.concat
local null = json.null

local _M = {}

local function ltrim(s) return (gsub(s, "^%s+", "")) end
local function rtrim(s) return (gsub(s, "%s+$", "")) end
local function trim(s) return ltrim(rtrim(s)) end

local function obj(t, keys) return json.object(t, keys) end

local function skip_ws(s, pos) return find(s, "[^ \t\r\n]", pos) or #s + 1 end

local function starts(s, pos, lit) return sub(s, pos, pos + #lit - 1) == lit end

---------------------------------------------------------------------------------------
-- Tool lists (OpenAI's function list) and calls
---------------------------------------------------------------------------------------

-- check(tools) -> list | nil, err. tools: a Lua array or JSON text of
-- { type = "function", ["function"] = { name = ..., description = ..., parameters = schema } }.
-- An empty list is no tools (nil).
function _M.check(list)
  if list == nil or list == null then return nil end
  if type(list) == "string" then
    local v, err = json.decode(list)
    if v == nil then return nil, "tools: " .. err end
    list = v
  end
  if type(list) ~= "table" or json.table_kind(list) ~= "array" then
    return nil, "tools must be an array of {type = \"function\", function = {...}}"
  end
  if #list == 0 then return nil end
  local seen = {}
  for i, t in ipairs(list) do
    local at = format("tools[%d]", i)
    if type(t) ~= "table" then return nil, at .. " must be a table" end
    if t.type ~= "function" then
      return nil, format("%s.type must be \"function\" (got %s)", at, tostring(t.type))
    end
    local f = t["function"]
    if type(f) ~= "table" then return nil, at .. ".function must be a table" end
    if type(f.name) ~= "string" or not match(f.name, "^[%w_%-%.]+$") or #f.name > 64 then
      return nil, at .. ".function.name must be 1 to 64 letters, digits, '_', '-' or '.'"
    end
    if seen[f.name] then return nil, format("%s: function name '%s' is used twice", at, f.name) end
    seen[f.name] = true
    if f.description ~= nil and type(f.description) ~= "string" then
      return nil, at .. ".function.description must be a string"
    end
    if f.parameters ~= nil and (type(f.parameters) ~= "table" or json.table_kind(f.parameters) == "array") then
      return nil, at .. ".function.parameters must be a JSON Schema object"
    end
  end
  return list
end

-- by_name(list) -> { [name] = function table }
local function by_name(list)
  local out = {}
  for _, t in ipairs(list or {}) do out[t["function"].name] = t["function"] end
  return out
end

-- An OpenAI-shaped call. args: a table (the arguments object) or JSON text of one.
-- Returns the call, or nil, err when the arguments are not a JSON object.
local function make_call(name, args, id)
  if type(name) ~= "string" or name == "" then return nil, "a tool call without a function name" end
  if args == nil or args == null then args = obj({}) end
  if type(args) == "string" then
    local v, err = json.decode(args)
    if v == nil then return nil, format("the arguments of '%s' are not JSON (%s)", name, err) end
    args = v
  end
  if type(args) ~= "table" or getmetatable(args) == json.array_mt
    or (next(args) ~= nil and json.table_kind(args) ~= "object") then
    return nil, format("the arguments of '%s' are not a JSON object", name)
  end
  if next(args) == nil then args = obj({}) end
  local text = assert(json.encode(args, { compact = true }))
  if id ~= nil and type(id) ~= "string" then id = json.encode(id) end
  return obj({ id = id, type = "function", ["function"] = obj({ name = name, arguments = text }, { "name", "arguments" }) },
             { "id", "type", "function" })
end
_M.make_call = make_call

local ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

-- assign_ids(calls, fmt, rng): give every call without an id a fresh one: 9 letters and
-- digits for Mistral (its templates require that), "call_" and 24 of them otherwise.
-- rng: something with :uniform() -> [0, 1) (a moonlm rng).
function _M.assign_ids(calls, fmt, rng)
  for _, c in ipairs(calls or {}) do
    if c.id == nil or c.id == "" then
      local n = fmt.name == "mistral" and 9 or 24
      local t = {}
      for i = 1, n do
        local k = math.floor(rng:uniform() * #ALNUM) + 1
        t[i] = sub(ALNUM, k, k)
      end
      c.id = (fmt.name == "mistral" and "" or "call_") .. concat(t)
    end
  end
  return calls
end

---------------------------------------------------------------------------------------
-- Parsers of the tool-call region of a reply, one per format. Each takes the region (it
-- starts at the format's marker) and the tools by name, and returns
--   calls, tail        the calls and any text after them (more content)
--   nil, nil, err      the markup is broken: the reply stays text
--   nil                it is not a tool call after all (llama3/generic bare JSON): text
---------------------------------------------------------------------------------------

local function decode_at(s, pos)
  return json.decode_at(s, pos, { exact_floats = true })
end

-- A JSON object or list of objects { name = ..., [argkey] = ... } into calls.
local function json_calls(v, namekey, argkeys, idkey, into)
  local items = v
  if json.table_kind(v) ~= "array" then items = { v } end
  for _, it in ipairs(items) do
    if type(it) ~= "table" or json.table_kind(it) ~= "object" then return nil, "a tool call is not a JSON object" end
    local args
    for _, k in ipairs(argkeys) do
      if it[k] ~= nil then args = it[k] break end
    end
    local c, err = make_call(it[namekey], args, idkey and it[idkey] ~= null and it[idkey] or nil)
    if not c then return nil, err end
    into[#into + 1] = c
  end
  return into
end

-- GLM's <arg_key>k</arg_key><arg_value>v</arg_value> pairs: a value is kept as text when the
-- schema says the parameter is a string, else read as JSON when it is JSON.
local function glm_args(body, fn)
  local props = fn and type(fn.parameters) == "table" and type(fn.parameters.properties) == "table"
    and fn.parameters.properties or {}
  local args, keys = {}, {}
  local pos = 1
  while true do
    local k0, k1, key = find(body, "^%s*<arg_key>(.-)</arg_key>", pos)
    if not k0 then break end
    local v0, v1, val = find(body, "^%s*<arg_value>(.-)</arg_value>", k1 + 1)
    if not v0 then return nil, "<arg_key> without <arg_value>" end
    local p = props[key]
    if not (type(p) == "table" and p.type == "string") then
      local v = json.decode(val, { exact_floats = true })
      if v ~= nil then val = v end
    end
    if args[key] == nil then keys[#keys + 1] = key end
    args[key] = val
    pos = v1 + 1
  end
  if find(body, "%S", pos) then return nil, "unexpected text in a tool call" end
  return obj(args, keys)
end

local function parse_hermes(region, fns)
  local calls, pos = {}, 1
  while starts(region, pos, "<tool_call>") do
    pos = skip_ws(region, pos + #"<tool_call>")
    local c = byte(region, pos)
    if c == 123 or c == 91 then -- { or [
      local v, p = decode_at(region, pos)
      if v == nil then return nil, nil, p end
      local ok, err = json_calls(v, "name", { "arguments", "parameters" }, "id", calls)
      if not ok then return nil, nil, err end
      pos = skip_ws(region, p)
    else -- GLM: name, then key/value pairs
      local e = find(region, "</tool_call>", pos, true) or #region + 1
      local body = sub(region, pos, e - 1)
      local name, rest = match(body, "^([^\n<]*)(.*)$")
      name = trim(name)
      local args, err = glm_args(rest, fns[name])
      if not args then return nil, nil, err end
      local call, cerr = make_call(name, args)
      if not call then return nil, nil, cerr end
      calls[#calls + 1] = call
      pos = e
    end
    if starts(region, pos, "</tool_call>") then
      pos = skip_ws(region, pos + #"</tool_call>")
    elseif pos <= #region then
      return nil, nil, "expected </tool_call>"
    end
  end
  return calls, sub(region, pos)
end

-- name.call(key="value", n=3) of Llama 3.1's built-in tools
local function python_call(body)
  local name, args = match(body, "^([%a_][%w_]*)%.call%((.*)%)%s*$")
  if not name then return nil end
  local t, keys, pos = {}, {}, 1
  while true do
    pos = skip_ws(args, pos)
    if pos > #args then break end
    local k0, k1, key = find(args, "^([%a_][%w_]*)%s*=%s*", pos)
    if not k0 then return nil end
    local v, p
    if byte(args, k1 + 1) == 39 then -- 'single quoted'
      local e = find(args, "'", k1 + 2, true)
      if not e then return nil end
      v, p = sub(args, k1 + 2, e - 1), e + 1
    else
      v, p = decode_at(args, k1 + 1)
      if v == nil then return nil end
    end
    keys[#keys + 1] = key
    t[key] = v
    pos = skip_ws(args, p)
    if byte(args, pos) == 44 then pos = pos + 1 elseif pos <= #args then return nil end
  end
  return make_call(name, obj(t, keys))
end

local function parse_llama3(region)
  local calls = {}
  local pos = 1
  if starts(region, 1, "<|python_tag|>") then
    local body = trim(sub(region, #"<|python_tag|>" + 1))
    if byte(body, 1) ~= 123 then
      local c = python_call(body)
      if not c then c = make_call("python", obj({ code = body })) end
      return { c }, ""
    end
    region, pos = body, 1
  end
  while byte(region, pos) == 123 do
    local v, p = decode_at(region, pos)
    if v == nil then
      if #calls == 0 then return nil end
      return nil, nil, p
    end
    if type(v) ~= "table" or type(v.name) ~= "string" or (v.parameters == nil and v.arguments == nil) then
      if #calls == 0 then return nil end -- a JSON reply, not a call
      return nil, nil, "a tool call without name and parameters"
    end
    local ok, err = json_calls(v, "name", { "parameters", "arguments" }, nil, calls)
    if not ok then return nil, nil, err end
    pos = skip_ws(region, p)
    if byte(region, pos) == 59 then pos = skip_ws(region, pos + 1) end -- ;
  end
  return calls, sub(region, pos)
end

local function parse_mistral(region)
  local calls, pos = {}, 1
  while starts(region, pos, "[TOOL_CALLS]") do
    pos = skip_ws(region, pos + #"[TOOL_CALLS]")
    if byte(region, pos) == 91 then -- [ {...}, ... ]
      local v, p = decode_at(region, pos)
      if v == nil then return nil, nil, p end
      local ok, err = json_calls(v, "name", { "arguments", "parameters" }, "id", calls)
      if not ok then return nil, nil, err end
      pos = skip_ws(region, p)
    else -- name[CALL_ID]id[ARGS]{...}
      local a = find(region, "[ARGS]", pos, true)
      if not a then return nil, nil, "[TOOL_CALLS] without a JSON list or [ARGS]" end
      local head, id = sub(region, pos, a - 1), nil
      local ci = find(head, "[CALL_ID]", 1, true)
      if ci then head, id = sub(head, 1, ci - 1), trim(sub(head, ci + #"[CALL_ID]")) end
      local v, p = decode_at(region, a + #"[ARGS]")
      if v == nil then return nil, nil, p end
      local c, err = make_call(trim(head), v, id)
      if not c then return nil, nil, err end
      calls[#calls + 1] = c
      pos = skip_ws(region, p)
    end
  end
  return calls, sub(region, pos)
end

-- Functionary v3.2: the region is a run of ">>>recipient\nbody"; "all" is text.
local function parse_functionary(region)
  local calls, tail, pos = {}, {}, 1
  while starts(region, pos, ">>>") do
    local nl = find(region, "\n", pos, true)
    if not nl then return nil, nil, "a >>> recipient line without a body" end
    local name = trim(sub(region, pos + 3, nl - 1))
    local body_start = nl + 1
    if name == "all" then
      local e = find(region, ">>>", body_start, true) or #region + 1
      tail[#tail + 1] = sub(region, body_start, e - 1)
      pos = e
    else
      local b = skip_ws(region, body_start)
      if byte(region, b) == 123 then
        local v, p = decode_at(region, b)
        if v == nil then return nil, nil, p end
        local c, err = make_call(name, v)
        if not c then return nil, nil, err end
        calls[#calls + 1] = c
        pos = skip_ws(region, p)
      else -- python code, up to the next recipient
        local e = find(region, ">>>", body_start, true) or #region + 1
        calls[#calls + 1] = make_call(name, obj({ code = rtrim(sub(region, body_start, e - 1)) }))
        pos = e
      end
    end
  end
  return calls, concat(tail) .. sub(region, pos)
end

local function parse_command_r(region)
  local calls = {}
  if starts(region, 1, "<|START_ACTION|>") then
    local v, p = decode_at(region, #"<|START_ACTION|>" + 1)
    if v == nil then return nil, nil, p end
    local ok, err = json_calls(v, "tool_name", { "parameters" }, "tool_call_id", calls)
    if not ok then return nil, nil, err end
    p = skip_ws(region, p)
    if starts(region, p, "<|END_ACTION|>") then p = p + #"<|END_ACTION|>" end
    return calls, sub(region, p)
  end
  -- Action: ```json [...] ```
  local pos = skip_ws(region, #"Action:" + 1)
  local fenced = starts(region, pos, "```")
  if fenced then pos = (find(region, "\n", pos, true) or pos + 2) + 1 end
  local v, p = decode_at(region, pos)
  if v == nil then return nil, nil, p end
  local all = {}
  local ok, err = json_calls(v, "tool_name", { "parameters" }, nil, all)
  if not ok then return nil, nil, err end
  for _, c in ipairs(all) do -- "directly_answer" is Command R's way of calling no tool
    local n = c["function"].name
    if n ~= "directly_answer" and n ~= "directly-answer" then calls[#calls + 1] = c end
  end
  p = skip_ws(region, p)
  if fenced and starts(region, p, "```") then p = p + 3 end
  return calls, sub(region, p)
end

local function parse_granite(region)
  local v, p = decode_at(region, #"<|tool_call|>" + 1)
  if v == nil then return nil, nil, p end
  local calls = {}
  local ok, err = json_calls(v, "name", { "arguments", "parameters" }, "id", calls)
  if not ok then return nil, nil, err end
  return calls, sub(region, p)
end

local DS = {
  calls_begin = { "<｜tool▁calls▁begin｜>", "<｜tool_calls_begin｜>", "<｜tool calls begin｜>", "<｜tool\\_calls\\_begin｜>" },
  call_begin = "<｜tool▁call▁begin｜>", sep = "<｜tool▁sep｜>", call_end = "<｜tool▁call▁end｜>",
  calls_end = "<｜tool▁calls▁end｜>",
}

local function parse_deepseek(region)
  local pos = 1
  for _, m in ipairs(DS.calls_begin) do
    if starts(region, 1, m) then pos = #m + 1 break end
  end
  local calls = {}
  while true do
    pos = skip_ws(region, pos)
    if not starts(region, pos, DS.call_begin) then break end
    local s = find(region, DS.sep, pos, true)
    local nl = s and find(region, "\n", s, true)
    if not nl then return nil, nil, "a DeepSeek tool call without a name line" end
    local name = trim(sub(region, s + #DS.sep, nl - 1))
    local b = skip_ws(region, nl + 1)
    if starts(region, b, "```") then b = (find(region, "\n", b, true) or b + 2) + 1 end
    local v, p = decode_at(region, b)
    if v == nil then return nil, nil, p end
    local c, err = make_call(name, v)
    if not c then return nil, nil, err end
    calls[#calls + 1] = c
    p = skip_ws(region, p)
    if starts(region, p, "```") then p = skip_ws(region, p + 3) end
    if not starts(region, p, DS.call_end) then return nil, nil, "expected " .. DS.call_end end
    pos = p + #DS.call_end
  end
  pos = skip_ws(region, pos)
  if starts(region, pos, DS.calls_end) then pos = pos + #DS.calls_end end
  return calls, sub(region, pos)
end

local function parse_generic(region)
  local body = region
  local fence = match(body, "^```[%w]*\n(.-)\n?```%s*$")
  if fence then body = fence end
  local v, p = decode_at(body, 1)
  if v == nil or type(v) ~= "table" then return nil end
  local calls = {}
  if type(v.tool_calls) == "table" then
    local ok, err = json_calls(v.tool_calls, "name", { "arguments", "parameters" }, "id", calls)
    if not ok then return nil, nil, err end
  elseif type(v.tool_call) == "table" then
    local ok, err = json_calls(v.tool_call, "name", { "arguments", "parameters" }, "id", calls)
    if not ok then return nil, nil, err end
  elseif type(v.name) == "string" and (v.arguments ~= nil or v.parameters ~= nil) then
    local ok, err = json_calls(v, "name", { "arguments", "parameters" }, "id", calls)
    if not ok then return nil, nil, err end
  elseif type(v.response) == "string" and not find(body, "%S", p) then
    return {}, v.response
  else
    return nil
  end
  return calls, sub(body, p)
end

---------------------------------------------------------------------------------------
-- What a reply in each format looks like, for a template that cannot say it itself, and
-- how past calls and results are written into the conversation then.
---------------------------------------------------------------------------------------

local function tool_lines(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = assert(json.encode(t)) end
  return concat(out, "\n")
end

local function args_value(c)
  local v = json.decode(c["function"].arguments)
  if v == nil then v = obj({}) end
  return v
end

local function call_json(c, namekey, argkey, idkey)
  local t, keys = {}, {}
  if idkey and c.id then t[idkey] = c.id keys[#keys + 1] = idkey end
  t[namekey] = c["function"].name
  t[argkey] = args_value(c)
  keys[#keys + 1] = namekey
  keys[#keys + 1] = argkey
  return obj(t, keys)
end

local function calls_list(calls, namekey, argkey, idkey)
  local out = {}
  for i, c in ipairs(calls) do out[i] = call_json(c, namekey, argkey, idkey) end
  return assert(json.encode(json.array(out)))
end

local function result_json(m)
  local content = m.content
  local v = type(content) == "string" and json.decode(content)
  return assert(json.encode(obj({ tool_response = obj({ id = m.tool_call_id, name = m.name, content = v or content },
                                                      { "id", "name", "content" }) })))
end

local FORMATS = {}

FORMATS.hermes = {
  markers = { "<tool_call>" },
  parse = parse_hermes,
  tokens = { "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>", "</arg_key>",
             "<arg_value>", "</arg_value>" },
  instructions = function(list)
    return "# Tools\n\nYou can call the functions below. Their signatures, one JSON object per line, are "
      .. "inside <tools></tools>:\n<tools>\n" .. tool_lines(list) .. "\n</tools>\n\n"
      .. "To call a function, write its name and arguments as a JSON object between <tool_call></tool_call> tags, "
      .. "one call per pair of tags:\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments object>}\n</tool_call>"
  end,
  render_calls = function(calls)
    local out = {}
    for i, c in ipairs(calls) do
      out[i] = "<tool_call>\n" .. assert(json.encode(call_json(c, "name", "arguments"))) .. "\n</tool_call>"
    end
    return concat(out, "\n")
  end,
  render_result = function(m) return "<tool_response>\n" .. m.content .. "\n</tool_response>" end,
}

FORMATS.llama3 = {
  markers = { "<|python_tag|>" },
  at_start = { "{" },
  parse = parse_llama3,
  tokens = { "<|python_tag|>" },
  instructions = function(list)
    return "You can call the functions below. To call one, reply with nothing but a JSON object "
      .. "{\"name\": <function name>, \"parameters\": <arguments object>}.\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls)
    local out = {}
    for i, c in ipairs(calls) do out[i] = assert(json.encode(call_json(c, "name", "parameters"))) end
    return concat(out, "; ")
  end,
}

FORMATS.mistral = {
  markers = { "[TOOL_CALLS]" },
  parse = parse_mistral,
  tokens = { "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]" },
  instructions = function(list)
    return "You can call the functions below (one JSON object per line). To call functions, reply with "
      .. "[TOOL_CALLS] followed by a JSON list of calls: "
      .. "[TOOL_CALLS][{\"name\": <function name>, \"arguments\": <arguments object>}]\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls) return "[TOOL_CALLS]" .. calls_list(calls, "name", "arguments", "id") end,
}

FORMATS.functionary = {
  markers = { ">>>" },
  parse = parse_functionary,
  tokens = {},
  instructions = function(list)
    return "You can call the functions below. Start every part of a reply with >>> and its recipient on one line: "
      .. ">>>all for text to the user, >>><function name> followed by a JSON object of arguments for a call.\n\n"
      .. tool_lines(list)
  end,
  render_calls = function(calls)
    local out = {}
    for i, c in ipairs(calls) do out[i] = ">>>" .. c["function"].name .. "\n" .. c["function"].arguments end
    return concat(out)
  end,
}

FORMATS.command_r = {
  markers = { "<|START_ACTION|>", "Action: ```", "Action:```" },
  drop = { "<|START_RESPONSE|>", "<|END_RESPONSE|>" },
  think = { "<|START_THINKING|>", "<|END_THINKING|>" },
  parse = parse_command_r,
  tokens = { "<|START_ACTION|>", "<|END_ACTION|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>",
             "<|END_THINKING|>" },
  instructions = function(list)
    return "You can call the functions below (one JSON object per line). To call functions, reply with "
      .. "Action: and a JSON list of calls in a json code block:\nAction: ```json\n"
      .. "[{\"tool_name\": <function name>, \"parameters\": <arguments object>}]\n```\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls) return "Action: ```json\n" .. calls_list(calls, "tool_name", "parameters") .. "\n```" end,
}

FORMATS.granite = {
  markers = { "<|tool_call|>" },
  drop = { "<response>", "</response>" },
  parse = parse_granite,
  tokens = { "<|tool_call|>" },
  instructions = function(list)
    return "You can call the functions below (one JSON object per line). To call functions, reply with "
      .. "<|tool_call|> followed by a JSON list of calls: "
      .. "<|tool_call|>[{\"name\": <function name>, \"arguments\": <arguments object>}]\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls) return "<|tool_call|>" .. calls_list(calls, "name", "arguments") end,
}

FORMATS.deepseek_r1 = {
  think = { "<think>", "</think>" },
  markers = { DS.calls_begin[1], DS.calls_begin[2], DS.calls_begin[3], DS.calls_begin[4], DS.call_begin },
  parse = parse_deepseek,
  tokens = { DS.calls_begin[1], DS.call_begin, DS.sep, DS.call_end, DS.calls_end },
  instructions = function(list)
    return "You can call the functions below (one JSON object per line). To call a function, reply with "
      .. DS.calls_begin[1] .. DS.call_begin .. "function" .. DS.sep .. "<function name>\n```json\n<arguments object>\n```"
      .. DS.call_end .. DS.calls_end .. "\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls)
    local out = { DS.calls_begin[1] }
    for _, c in ipairs(calls) do
      out[#out + 1] = DS.call_begin .. "function" .. DS.sep .. c["function"].name .. "\n```json\n"
        .. c["function"].arguments .. "\n```" .. DS.call_end
    end
    out[#out + 1] = DS.calls_end
    return concat(out)
  end,
}

FORMATS.generic = {
  markers = {},
  at_start = { "{", "```" },
  parse = parse_generic,
  tokens = {},
  instructions = function(list)
    return "You can call the functions below (one JSON object per line). To call functions, reply with "
      .. "nothing but a JSON object {\"tool_calls\": [{\"name\": <function name>, \"arguments\": <arguments object>}]}; "
      .. "otherwise reply normally.\n\n" .. tool_lines(list)
  end,
  render_calls = function(calls)
    return assert(json.encode(obj({ tool_calls = json.decode(calls_list(calls, "name", "arguments")) })))
  end,
}

local THINK = { "<think>", "</think>" }

for name, f in pairs(FORMATS) do
  f.name = name
  f.render_result = f.render_result or result_json
end

-- format(name [, opts]) -> a format; opts.reasoning = false turns reasoning parsing off
function _M.format(name, opts)
  local base = FORMATS[name]
  if not base then return nil, ("unknown tool-call format '%s'"):format(tostring(name)) end
  local f = setmetatable({}, { __index = base })
  if opts and opts.reasoning == false then f.think = false end
  return f
end

function _M.format_names()
  local out = {}
  for k in pairs(FORMATS) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- detect(source, has_token, meta) -> format. From the markup the chat template writes for
-- tool calls; for a template that has none, from the special tokens of the vocabulary and
-- the family (has_token(text) -> truthy when the vocabulary has a token with that text).
function _M.detect(source, has_token, meta)
  source = type(source) == "string" and source or ""
  has_token = has_token or function() return false end
  meta = meta or {}
  local function has(s) return find(source, s, 1, true) ~= nil end
  local name
  if has(DS.calls_begin[1]) then name = "deepseek_r1"
  elseif has("<|START_ACTION|>") then name = "command_r"
  elseif has(">>>all") then name = "functionary"
  elseif has("<|tool_call|>") then name = "granite"
  elseif has("<tool_call>") then name = "hermes"
  elseif has("<|python_tag|>") or has("<|start_header_id|>ipython") then name = "llama3"
  elseif has("[TOOL_CALLS]") or has("[AVAILABLE_TOOLS]") then name = "mistral"
  -- no tool markup in the template: what the model was trained with
  elseif has_token("[TOOL_CALLS]") then name = "mistral"
  elseif has_token("<tool_call>") then name = "hermes"
  elseif has_token("<|tool_call|>") then name = "granite"
  elseif has_token("<|START_ACTION|>") or has("<|START_OF_TURN_TOKEN|>") or meta["general.architecture"] == "command-r"
    or meta["general.architecture"] == "cohere2" then name = "command_r"
  elseif has_token("<|python_tag|>") then name = "llama3"
  elseif has("[SYSTEM_PROMPT]") then name = "mistral"
  elseif has("<|im_start|>") then name = "hermes"
  elseif has("<|start_header_id|>") then name = "llama3"
  else name = "generic" end
  local f = _M.format(name)
  f.r7b = name == "command_r" and (has("<|START_ACTION|>") or has_token("<|START_ACTION|>")) or nil
  if f.think == nil then
    f.think = (has("<think>") or has("</think>") or has_token("<think>")) and THINK or false
  elseif not has(f.think[1]) and not has_token(f.think[1]) then
    f.think = false
  end
  return f
end

-- preserved(fmt) -> the marker texts of a format, which may be control tokens that a
-- decoder would otherwise hide (the reply must show them to be parsed)
function _M.preserved(fmt)
  local out = {}
  for _, t in ipairs(fmt.tokens or {}) do out[#out + 1] = t end
  if fmt.think then
    out[#out + 1] = fmt.think[1]
    out[#out + 1] = fmt.think[2]
  end
  for _, t in ipairs(fmt.drop or {}) do out[#out + 1] = t end
  return out
end

---------------------------------------------------------------------------------------
-- Splitting a reply into reasoning, text and the tool-call region. With partial = true
-- (streaming) every part returned is a prefix of what the whole reply will give: what
-- may still turn out to be markup, and trailing whitespace, is held back.
---------------------------------------------------------------------------------------

-- Length of the longest suffix of s that is a proper prefix of one of the markers.
local function partial_tail(s, markers)
  local best = 0
  for _, m in ipairs(markers) do
    for k = math.min(#m - 1, #s), best + 1, -1 do
      if sub(s, -k) == sub(m, 1, k) then best = k break end
    end
  end
  return best
end

-- reasoning, rest, closed
local function split_think(text, fmt, opts, partial)
  local th = fmt.think
  if not th then return nil, text end
  local open, close = th[1], th[2]
  local body
  if opts.open_think then
    body = text
  else
    local lt = ltrim(text)
    if starts(lt, 1, open) then
      body = sub(lt, #open + 1)
    elseif partial and #lt < #open and sub(open, 1, #lt) == lt then
      return "", "" -- may still become <think>
    else
      return nil, text
    end
  end
  local e = find(body, close, 1, true)
  if e then return trim(sub(body, 1, e - 1)), ltrim(sub(body, e + #close)), true end
  if partial then
    local hold = partial_tail(body, { close })
    return trim(sub(body, 1, #body - hold)), ""
  end
  return trim(body), ""
end

local function drop_markers(rest, fmt)
  for _, d in ipairs(fmt.drop or {}) do rest = gsub(rest, (gsub(d, "%p", "%%%0")), "") end
  return rest
end

-- content, region | nil, text: text is all of `rest` as content (the reply when the region
-- turns out not to hold tool calls)
local function split_tools(rest, fmt, partial)
  rest = drop_markers(rest, fmt)
  local lt = ltrim(rest)
  for _, pat in ipairs(fmt.at_start or {}) do
    if starts(lt, 1, pat) then return "", lt, rest end
  end
  if partial and fmt.at_start then
    if lt == "" then return "" end
    for _, pat in ipairs(fmt.at_start) do
      if #lt < #pat and sub(pat, 1, #lt) == lt then return "" end
    end
  end
  local first
  for _, m in ipairs(fmt.markers) do
    local p = find(rest, m, 1, true)
    if p and (not first or p < first) then first = p end
  end
  if first then return rtrim(sub(rest, 1, first - 1)), sub(rest, first), rest end
  if partial then
    local hold = math.max(partial_tail(rest, fmt.markers), partial_tail(rest, fmt.drop or {}))
    return rtrim(sub(rest, 1, #rest - hold))
  end
  return rest
end

-- Functionary replies start with a recipient line (the prompt ends with ">>>"): "all" for
-- text, a function name for a call.
local function split_functionary(rest, partial)
  local nl = find(rest, "\n", 1, true)
  if not nl then
    if partial then return "" end
    return trim(rest) == "all" and "" or rest
  end
  if trim(sub(rest, 1, nl - 1)) ~= "all" then return "", ">>>" .. rest, rest end
  local body = sub(rest, nl + 1)
  local p = find(body, ">>>", 1, true)
  if p then return rtrim(sub(body, 1, p - 1)), sub(body, p), body end
  if partial then return rtrim(sub(body, 1, #body - partial_tail(body, { ">>>" }))) end
  return body
end

-- reasoning, content, region, text (see split_tools)
local function scan(text, fmt, opts, partial)
  local reasoning, rest = split_think(text, fmt, opts, partial)
  if opts.tools_off then
    local content = drop_markers(rest, fmt)
    if partial then
      content = rtrim(sub(content, 1, #content - partial_tail(content, fmt.drop or {})))
    end
    return reasoning, content
  end
  if fmt.name == "functionary" then return reasoning, split_functionary(rest, partial) end
  return reasoning, split_tools(rest, fmt, partial)
end

-- parse(text, fmt, opts) -> msg, err. opts: tools (the list, for argument types),
-- open_think (the prompt ends inside a <think> block), tools_off (text and reasoning only).
-- msg = { content, reasoning_content (nil if none), tool_calls (nil if none) }; err says why
-- markup that looked like a tool call was kept as text.
function _M.parse(text, fmt, opts)
  opts = opts or {}
  local reasoning, content, region, whole = scan(text, fmt, opts, false)
  local msg = { content = content }
  if reasoning and reasoning ~= "" then msg.reasoning_content = reasoning end
  if not region then return msg end
  local calls, tail, err = fmt.parse(region, by_name(opts.tools))
  if not calls then -- not a call after all (a JSON answer), or broken markup: the reply is text
    msg.content = whole
    return msg, err
  end
  tail = trim(tail or "")
  if tail ~= "" then msg.content = content ~= "" and content .. "\n" .. tail or tail end
  if #calls > 0 then msg.tool_calls = calls end
  return msg
end

---------------------------------------------------------------------------------------
-- Streaming: push the text pieces of a reply, get the text and reasoning that are safe
-- to show; finish() gives the rest and the parsed message.
---------------------------------------------------------------------------------------

local Parser = {}
Parser.__index = Parser

function _M.parser(fmt, opts)
  return setmetatable({ fmt = fmt, opts = opts or {}, parts = {}, text = "", sent_c = 0, sent_r = 0 }, Parser)
end

local function delta(full, sent)
  if #full <= sent then return "", sent end
  return sub(full, sent + 1), #full
end

-- push(piece) -> content, reasoning: new text of each that is safe to show (maybe "")
function Parser:push(piece)
  self.parts[#self.parts + 1] = piece
  if self.region then return "", "" end -- inside tool calls: nothing more is shown until the end
  self.text = concat(self.parts)
  local reasoning, content, region = scan(self.text, self.fmt, self.opts, true)
  if region then self.region = region end -- the tool-call region's text so far (later pieces follow it)
  local dc, dr
  dc, self.sent_c = delta(content or "", self.sent_c)
  dr, self.sent_r = delta(reasoning or "", self.sent_r)
  return dc, dr
end

-- finish() -> content, reasoning (what was held back), msg, err (as parse)
function Parser:finish()
  self.text = concat(self.parts)
  local msg, err = _M.parse(self.text, self.fmt, self.opts)
  local c, r = msg.content or "", msg.reasoning_content or ""
  -- what was shown is a prefix of the final parts (scan() holds back what may change)
  return sub(c, self.sent_c + 1), sub(r, self.sent_r + 1), msg, err
end

---------------------------------------------------------------------------------------
-- Template capabilities, found by rendering probe conversations (a template that ignores
-- tools renders the same text with or without them), and the conversation rewritten to
-- fill the gaps.
---------------------------------------------------------------------------------------

local PROBE_FN, PROBE_FN2 = "moonlm_probe_fn", "moonlm_probe_other"
local PROBE_ARGS = '{"moonlm_probe_arg": "probe-value"}'

local function probe_tools()
  local function tool(name)
    local params = obj({ type = "object",
                         properties = obj({ moonlm_probe_arg = obj({ type = "string" }, { "type" }) }, { "moonlm_probe_arg" }),
                         required = json.array { "moonlm_probe_arg" } }, { "type", "properties", "required" })
    return obj({ type = "function", ["function"] = obj({ name = name, description = "probe", parameters = params },
                                                        { "name", "description", "parameters" }) }, { "type", "function" })
  end
  return json.array { tool(PROBE_FN), tool(PROBE_FN2) }
end

local function probe_call(name, object_args, id)
  local args = object_args and obj({ moonlm_probe_arg = "probe-value" }, { "moonlm_probe_arg" }) or PROBE_ARGS
  return obj({ id = id or "call_probe1", type = "function", ["function"] = obj({ name = name, arguments = args },
                                                                               { "name", "arguments" }) },
             { "id", "type", "function" })
end

-- caps(tmpl, vars) -> { system, tools, tool_calls, object_args, null_content, parallel,
-- tool_results }. vars: the other render variables (bos_token, ...). Cached per template.
function _M.caps(tmpl, vars)
  if tmpl._tool_caps then return tmpl._tool_caps end
  local function render(messages, tools_var)
    local v = {}
    for k, x in pairs(vars or {}) do v[k] = x end
    v.messages, v.tools, v.add_generation_prompt = messages, tools_var or null, false
    return tmpl:render(v)
  end
  local function has(out, s) return out ~= nil and find(out, s, 1, true) ~= nil end
  local caps = {}
  local user = { role = "user", content = "moonlm-probe-user" }
  caps.system = has(render({ { role = "system", content = "moonlm-probe-system" }, user }), "moonlm-probe-system")
  caps.tools = has(render({ user }, probe_tools()), PROBE_FN)
  local tv = caps.tools and probe_tools() or nil
  local function call_msg(calls)
    return { role = "assistant", content = caps.null_content and null or "", tool_calls = json.array(calls) }
  end
  for _, form in ipairs { { false, "" }, { false, null }, { true, "" }, { true, null } } do
    local out = render({ user, { role = "assistant", content = form[2], tool_calls = json.array { probe_call(PROBE_FN, form[1]) } },
                        { role = "user", content = "moonlm-probe-next" } }, tv)
    local args_ok
    if form[1] then
      args_ok = has(out, "moonlm_probe_arg") and has(out, "probe-value") and not has(out, '\\"moonlm_probe_arg')
    else
      args_ok = has(out, PROBE_ARGS)
    end
    if has(out, PROBE_FN) and args_ok then
      caps.tool_calls, caps.object_args, caps.null_content = true, form[1], form[2] == null
      break
    end
  end
  caps.tool_calls = caps.tool_calls or false
  if caps.tool_calls then
    local out = render({ user, call_msg { probe_call(PROBE_FN, caps.object_args), probe_call(PROBE_FN2, caps.object_args, "call_probe2") } }, tv)
    caps.parallel = has(out, PROBE_FN) and has(out, PROBE_FN2)
    out = render({ user, call_msg { probe_call(PROBE_FN, caps.object_args) },
                   { role = "tool", tool_call_id = "call_probe1", name = PROBE_FN, content = "moonlm-probe-result" } }, tv)
    caps.tool_results = has(out, "moonlm-probe-result")
  else
    caps.parallel = false
    local out = render({ user, { role = "assistant", content = "moonlm-probe-call" },
                         { role = "tool", tool_call_id = "call_probe1", name = PROBE_FN, content = "moonlm-probe-result" } }, tv)
    caps.tool_results = has(out, "moonlm-probe-result")
  end
  tmpl._tool_caps = caps
  return caps
end

local function copy(m)
  local t = {}
  for k, v in pairs(m) do t[k] = v end
  return t
end

-- prepare(messages, list, caps, fmt) -> messages, tools_var: the conversation as this
-- template can render it. Tools the template does not describe go into the system message
-- (the first user message if it has no system role) with the format's instructions; calls
-- it does not render become the format's markup in the assistant text; results it does not
-- render become user turns. Arguments are passed as the template reads them (object or
-- JSON text).
function _M.prepare(messages, list, caps, fmt)
  local out = {}
  local pending_results -- a user message collecting consecutive polyfilled results
  for _, m in ipairs(messages) do
    local t = copy(m)
    if m.role == "assistant" and type(m.tool_calls) == "table" and #m.tool_calls > 0 then
      pending_results = nil
      if caps.tool_calls then
        local calls = {}
        for i, c in ipairs(m.tool_calls) do
          local f = c["function"]
          local args = f.arguments
          if caps.object_args and type(args) == "string" then args = json.decode(args) or obj({}) end
          if not caps.object_args and type(args) ~= "string" then args = assert(json.encode(args)) end
          calls[i] = obj({ id = c.id, type = "function", ["function"] = obj({ name = f.name, arguments = args }, { "name", "arguments" }) },
                         { "id", "type", "function" })
        end
        if t.content == nil or t.content == "" or t.content == null then t.content = caps.null_content and null or "" end
        if caps.parallel or #calls == 1 then
          t.tool_calls = json.array(calls)
          out[#out + 1] = t
        else -- one call per message
          for i, c in ipairs(calls) do
            local one = copy(t)
            if i > 1 then one.content = caps.null_content and null or "" end
            one.tool_calls = json.array { c }
            out[#out + 1] = one
          end
        end
      else
        local text = fmt.render_calls(m.tool_calls)
        local content = type(m.content) == "string" and m.content or ""
        t.content = content ~= "" and content .. "\n" .. text or text
        t.tool_calls = nil
        out[#out + 1] = t
      end
    elseif m.role == "tool" and caps.tool_results and not caps.tools and not caps.tool_calls then
      -- a template that knows a tool role but nothing else of tools: the format's wrapping
      t.content = fmt.render_result(m)
      out[#out + 1] = t
    elseif m.role == "tool" and not caps.tool_results then
      local text = fmt.render_result(m)
      if pending_results then
        pending_results.content = pending_results.content .. "\n" .. text
      else
        pending_results = { role = "user", content = text }
        out[#out + 1] = pending_results
      end
    else
      if m.role ~= "tool" then pending_results = nil end
      out[#out + 1] = t
    end
  end
  local tools_var = null
  if list then
    if caps.tools then
      tools_var = list
    else
      local text = fmt.instructions(list)
      if out[1] and out[1].role == "system" then
        out[1].content = (out[1].content ~= "" and out[1].content .. "\n\n" or "") .. text
      else
        table.insert(out, 1, { role = "system", content = text })
      end
    end
  end
  if out[1] and out[1].role == "system" and not caps.system then
    local sys = table.remove(out, 1)
    if out[1] and out[1].role == "user" then
      out[1].content = sys.content .. "\n\n" .. out[1].content
    else
      table.insert(out, 1, { role = "user", content = sys.content })
    end
  end
  return out, tools_var
end

---------------------------------------------------------------------------------------
-- Grammars for tool calls: what a call must look like in each format, with the tools' own
-- JSON Schemas for the arguments. "auto" is lazy (free text until the format's marker,
-- then calls only); "required" and a named function constrain the reply from its start
-- (after the reasoning, for models that reason).
---------------------------------------------------------------------------------------

local gbnf = require "moonlm.gbnf"
local lit = gbnf.literal

local function params_of(fn)
  if type(fn.parameters) == "table" then return fn.parameters end
  return obj({ type = "object" }, { "type" })
end

-- One call object: { namekey: const name, argkey: schema } (an anyOf over the tools).
local function call_schema(list, namekey, argkey, extra)
  local alts = {}
  for i, t in ipairs(list) do
    local fn = t["function"]
    local props, keys = {}, {}
    if extra then
      for _, e in ipairs(extra) do props[e[1]] = e[2] keys[#keys + 1] = e[1] end
    end
    props[namekey] = obj({ const = fn.name }, { "const" })
    props[argkey] = params_of(fn)
    keys[#keys + 1] = namekey
    keys[#keys + 1] = argkey
    alts[i] = obj({ type = "object", properties = obj(props, keys), required = json.array(keys), additionalProperties = false },
                  { "type", "properties", "required", "additionalProperties" })
  end
  if #alts == 1 then return alts[1] end
  return obj({ anyOf = json.array(alts) }, { "anyOf" })
end

local function array_schema(item, parallel)
  local t, keys = { type = "array", items = item, minItems = 1 }, { "type", "items", "minItems" }
  if not parallel then t.maxItems = 1 keys[#keys + 1] = "maxItems" end
  return obj(t, keys)
end

-- the rules of a schema, prefixed; returns the name of its root rule
local function add_schema(rules, schema, p)
  local text, err = gbnf.schema(schema, p)
  if not text then error({ tool_grammar = err }, 0) end
  rules[#rules + 1] = text
  return p .. "root"
end

-- calls rule per format: rules (list), then the rule text of "one or more calls" and the
-- word that starts them (the lazy trigger), or no word when calls start the reply
local CALLS = {}

function CALLS.hermes(rules, list, parallel)
  local call = add_schema(rules, call_schema(list, "name", "arguments"), "c-")
  rules[#rules + 1] = "tc ::= " .. lit("<tool_call>") .. " sep " .. call .. " sep " .. lit("</tool_call>")
  return parallel and "tc ( sep tc )*" or "tc", "<tool_call>"
end

function CALLS.llama3(rules, list, parallel)
  local call = add_schema(rules, call_schema(list, "name", "parameters"), "c-")
  return parallel and call .. " ( sep " .. lit(";") .. " sep " .. call .. " )*" or call, '{"name"'
end

function CALLS.mistral(rules, list, parallel)
  local arr = add_schema(rules, array_schema(call_schema(list, "name", "arguments"), parallel), "c-")
  return lit("[TOOL_CALLS]") .. " " .. arr, "[TOOL_CALLS]"
end

function CALLS.granite(rules, list, parallel)
  local arr = add_schema(rules, array_schema(call_schema(list, "name", "arguments"), parallel), "c-")
  return lit("<|tool_call|>") .. " " .. arr, "<|tool_call|>"
end

function CALLS.command_r(rules, list, parallel, fmt)
  if fmt.r7b then
    local id = { "tool_call_id", obj({ type = "string", pattern = "^[0-9]{1,4}$" }, { "type", "pattern" }) }
    local arr = add_schema(rules, array_schema(call_schema(list, "tool_name", "parameters", { id }), parallel), "c-")
    return lit("<|START_ACTION|>") .. " sep " .. arr .. " sep " .. lit("<|END_ACTION|>"), "<|START_ACTION|>"
  end
  local arr = add_schema(rules, array_schema(call_schema(list, "tool_name", "parameters"), parallel), "c-")
  return lit("Action: ```json\n") .. " " .. arr .. " " .. lit("\n```"), "Action:"
end

function CALLS.generic(rules, list, parallel)
  local calls = obj({ type = "object", properties = obj({ tool_calls = array_schema(call_schema(list, "name", "arguments"), parallel) },
                                                        { "tool_calls" }),
                      required = json.array { "tool_calls" }, additionalProperties = false },
                    { "type", "properties", "required", "additionalProperties" })
  return add_schema(rules, calls, "c-"), '{"tool_calls"'
end

-- name, then the arguments' own grammar, for the formats that write the name outside JSON
local function named_calls(rules, list, head, tail)
  local alts = {}
  for i, t in ipairs(list) do
    local fn = t["function"]
    local args = add_schema(rules, params_of(fn), "a" .. i .. "-")
    alts[i] = lit(head(fn.name)) .. " " .. args .. (tail ~= "" and " " .. lit(tail) or "")
  end
  rules[#rules + 1] = "call ::= " .. concat(alts, " | ")
end

function CALLS.deepseek_r1(rules, list, parallel)
  named_calls(rules, list, function(n) return DS.call_begin .. "function" .. DS.sep .. n .. "\n```json\n" end,
              "\n```" .. DS.call_end)
  return lit(DS.calls_begin[1]) .. (parallel and " call+ " or " call ") .. lit(DS.calls_end), DS.calls_begin[1]
end

function CALLS.functionary(rules, list, parallel)
  named_calls(rules, list, function(n) return n .. "\n" end, "")
  return parallel and "call ( " .. lit(">>>") .. " call )*" or "call", nil
end

-- grammar(fmt, list, opts) -> GBNF text, lazy (the matcher options: lazy, triggers) | nil,
-- err. opts: choice ("auto" | "required"; a function name constrains to it), parallel
-- [true], open_think (the prompt opened the reasoning block).
function _M.grammar(fmt, list, opts)
  opts = opts or {}
  local choice = opts.choice or "auto"
  if choice ~= "auto" and choice ~= "required" then
    local only
    for _, t in ipairs(list) do
      if t["function"].name == choice then only = t end
    end
    if not only then return nil, ("tool_choice names '%s', which is not one of the tools"):format(choice) end
    list, choice = { only }, "required"
  end
  local build = CALLS[fmt.name]
  if not build then return nil, ("no tool-call grammar for the format '%s'"):format(tostring(fmt.name)) end
  local rules = { "sep ::= [ \\t\\n]{0,4}" }
  local ok, calls, trigger = pcall(build, rules, list, opts.parallel ~= false, fmt)
  if not ok then
    if type(calls) == "table" and calls.tool_grammar then return nil, "tool parameters: " .. calls.tool_grammar end
    error(calls, 0)
  end
  local root
  if choice == "auto" and trigger then
    return "root ::= " .. calls .. " sep\n" .. concat(rules, "\n"), { lazy = true, triggers = { trigger } }
  end
  if choice == "auto" then -- functionary: text ("all"), maybe calls after it, or calls
    root = "root ::= " .. lit("all\n") .. " .* ( " .. lit(">>>") .. " " .. calls .. " )? | " .. calls
  else
    -- a model that reasons writes its thought first: any text without the closing tag,
    -- then the tag (a regular prefix: the engine's automaton follows it at no cost)
    local think = ""
    if fmt.think then
      think = (gbnf.without(fmt.think[2]) or ".*") .. " " .. lit(fmt.think[2]) .. " sep "
      if not opts.open_think then think = "( " .. lit(fmt.think[1]) .. " " .. think .. ")? " end
    end
    root = "root ::= " .. think .. calls .. " sep"
  end
  return root .. "\n" .. concat(rules, "\n"), nil
end

-- open_think(prompt, fmt) -> does the prompt end inside a reasoning block (the template
-- opens <think> for the model)?
function _M.open_think(prompt, fmt)
  if not fmt.think then return false end
  local tail = rtrim(prompt)
  return sub(tail, -#fmt.think[1]) == fmt.think[1]
end

return _M
