-- moonlm.resty.request: reading and checking the body of an OpenAI API request (used by
-- moonlm.resty). Every field of a request is either honoured or refused with a 400 that
-- names it: `fields` below lists, per endpoint, the fields a handler reads (true) and those
-- accepted only at a value that asks for nothing this server cannot do (a function that
-- returns why the value is refused). A field in neither is refused as unknown, as OpenAI does.
-- Structured output (response_format, grammar, json_schema), tools and logprobs are read
-- here into what the handlers and the scheduler need (constraint, tool_options, logprobs).
local ngx = ngx
local json = require "moonlm.json"
local sampler = require "moonlm.sampler"

local type, pairs, ipairs, next, tostring, tonumber, pcall, error = type, pairs, ipairs, next, tostring, tonumber, pcall, error
local floor, huge = math.floor, math.huge
local concat = table.concat

local _M = {}
local null = json.null

-- A request error, raised by the checks and caught by moonlm.resty.serve: the HTTP status,
-- the OpenAI error's message, param, code (and type when not the status's usual one), and
-- the seconds for a Retry-After header.
local function fail(status, message, param, code, retry, etype)
  error({ status = status, message = message, param = param, code = code, retry = retry, etype = etype }, 0)
end
_M.fail = fail

-- read_json() -> the body as a JSON object. Invalid UTF-8 and lone surrogate escapes are
-- refused: they cannot be text, and the tokenizer must never see them.
function _M.read_json()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local file = ngx.req.get_body_file()
    if file then
      local f = io.open(file, "rb")
      if f then
        body = f:read("*a")
        f:close()
      end
    end
  end
  if not body or body == "" then fail(400, "the request body is empty: a JSON object is expected") end
  local v, err = json.decode(body, { strict = true })
  if v == nil then
    local code = tostring(err):find("UTF-8", 1, true) and "invalid_utf8"
                 or tostring(err):find("surrogate", 1, true) and "invalid_utf8" or nil
    fail(400, "the request body is not valid JSON text (" .. tostring(err) .. ")", nil, code)
  end
  if type(v) ~= "table" or json.table_kind(v) ~= "object" then fail(400, "the request body must be a JSON object") end
  return v
end

---------------------------------------------------------------------------------------
-- Values

local function opt(b, k)
  local v = b[k]
  if v == null then return nil end
  return v
end
_M.opt = opt

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 end
_M.is_int = is_int

local function is_object(v) return type(v) == "table" and json.table_kind(v) == "object" end
local function is_array(v) return type(v) == "table" and json.table_kind(v) == "array" end

local function number_in(b, k, lo, hi)
  local v = opt(b, k)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v then fail(400, ("'%s' must be a number"):format(k), k) end
  if v < lo or v > hi then fail(400, ("'%s' must be between %s and %s, got %s"):format(k, lo, hi, v), k) end
  return v
end

local function integer_in(b, k, lo, hi)
  local v = opt(b, k)
  if v == nil then return nil end
  if not is_int(v) then fail(400, ("'%s' must be an integer"):format(k), k) end
  if v < lo or v > hi then fail(400, ("'%s' must be between %d and %s, got %d"):format(k, lo, hi, v), k) end
  return v
end
_M.integer_in = integer_in

local function boolean(b, k)
  local v = opt(b, k)
  if v ~= nil and type(v) ~= "boolean" then fail(400, ("'%s' must be a boolean"):format(k), k) end
  return v
end
_M.boolean = boolean

---------------------------------------------------------------------------------------
-- Fields per endpoint

local function refuse(why) return function() return why end end
-- accepted when absent, null or equal to one of the neutral values
local function only(why, ...)
  local ok = { ... }
  return function(v)
    for _, n in ipairs(ok) do
      if v == n then return nil end
    end
    return why
  end
end
local function empty_or(why, ...)
  local base = only(why, ...)
  return function(v)
    if type(v) == "table" and next(v) == nil then return nil end
    return base(v)
  end
end

local sampling_fields = {
  model = true, stream = true, stream_options = true, max_tokens = true, temperature = true, top_p = true,
  top_k = true, min_p = true, typical_p = true, stop = true, seed = true, frequency_penalty = true,
  presence_penalty = true, repeat_penalty = true, penalty_last_n = true, repeat_last_n = true,
  mirostat = true, mirostat_tau = true, mirostat_eta = true, logit_bias = true, ignore_eos = true,
  cache_prompt = true, user = true, n = true, grammar = true, json_schema = true, response_format = true,
  logprobs = true,
  n_probs = only("'n_probs' is llama-server's; ask for 'logprobs' (and 'top_logprobs' in chat)", 0),
  service_tier = only("'service_tier' must be \"auto\" or \"default\"", "auto", "default"),
}

local function with(base, extra)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(extra) do t[k] = v end
  return t
end

_M.fields = {
  chat = with(sampling_fields, {
    messages = true, max_completion_tokens = true, top_logprobs = true, tools = true, tool_choice = true,
    parallel_tool_calls = true,
    functions = empty_or("the deprecated 'functions' are not supported: use 'tools'"),
    function_call = only("the deprecated 'function_call' is not supported: use 'tool_choice'", "none"),
    store = only("this server does not store completions", false),
    metadata = empty_or("this server does not store completions, so 'metadata' has no use"),
    modalities = function(v)
      if is_array(v) and #v == 1 and v[1] == "text" then return nil end
      return "this server produces text only"
    end,
    audio = refuse("this server produces text only"),
    prediction = refuse("predicted outputs are not supported by this server"),
    reasoning_effort = refuse("'reasoning_effort' is not supported by this server"),
    web_search_options = refuse("web search is not supported by this server"),
  }),
  completions = with(sampling_fields, {
    prompt = true,
    echo = only("'echo' is not supported by this server", false),
    best_of = only("'best_of' greater than 1 is not supported", 1),
    suffix = only("'suffix' (insertion) is not supported by this server", ""),
  }),
  embeddings = { model = true, input = true, encoding_format = true, dimensions = true, user = true },
  tokenize = { model = true, content = true, add_special = true, parse_special = true, with_pieces = true },
  detokenize = { model = true, tokens = true },
}

-- check_fields(body, endpoint): every field known and honoured, or a 400 naming it.
function _M.check_fields(b, endpoint)
  local allowed = _M.fields[endpoint]
  local keys = json.keys(b)
  for _, k in ipairs(keys) do
    local rule = allowed[k]
    if rule == nil then
      fail(400, ("Unrecognized request argument supplied: %s"):format(tostring(k)), k, "unknown_parameter")
    elseif rule ~= true and b[k] ~= null then
      local why = rule(b[k])
      if why then fail(400, ("'%s' cannot be honoured: %s"):format(k, why), k, "unsupported_parameter") end
    end
  end
end

---------------------------------------------------------------------------------------
-- Generation options (chat and text completions)

-- generation(body, chat, M, counter) -> p: max_tokens, stream, include_usage, stops,
-- ignore_eos, no_cache, sampling (moonlm.sampler options with a seed), penalties.
-- M: the model's entry (o.max_tokens default, o.max_tokens_limit ceiling, model).
function _M.generation(b, chat, M, counter)
  local p = {}
  local limit = M.o.max_tokens_limit
  local function tokens(k)
    local v = integer_in(b, k, 1, huge)
    if v and limit and v > limit then
      fail(400, ("'%s' is %d; this server allows at most %d"):format(k, v, limit), k, "max_tokens_exceeded")
    end
    return v
  end
  p.max_tokens = tokens("max_tokens")
  if chat then p.max_tokens = tokens("max_completion_tokens") or p.max_tokens end
  p.max_tokens = p.max_tokens or (limit and math.min(limit, M.o.max_tokens) or M.o.max_tokens)
  p.n = integer_in(b, "n", 1, 128) or 1
  p.stream = boolean(b, "stream") or false
  local so = opt(b, "stream_options")
  if so ~= nil then
    if not is_object(so) then fail(400, "'stream_options' must be an object", "stream_options") end
    for _, k in ipairs(json.keys(so)) do
      if k ~= "include_usage" then
        fail(400, ("Unrecognized argument in 'stream_options': %s"):format(tostring(k)), "stream_options", "unknown_parameter")
      end
    end
    if so.include_usage ~= nil and so.include_usage ~= null and type(so.include_usage) ~= "boolean" then
      fail(400, "'stream_options.include_usage' must be a boolean", "stream_options")
    end
    if not p.stream then fail(400, "'stream_options' is only allowed when 'stream' is true", "stream_options") end
  end
  p.include_usage = so ~= nil and so.include_usage == true
  local stop = opt(b, "stop")
  p.stops = {}
  if type(stop) == "string" then
    if stop ~= "" then p.stops[1] = stop end
  elseif is_array(stop) then
    if #stop > 16 then fail(400, "'stop' may have at most 16 strings", "stop") end
    for _, s in ipairs(stop) do
      if type(s) ~= "string" then fail(400, "'stop' must be a string or an array of strings", "stop") end
      if s ~= "" then p.stops[#p.stops + 1] = s end
    end
  elseif stop ~= nil then
    fail(400, "'stop' must be a string or an array of strings", "stop")
  end
  p.ignore_eos = boolean(b, "ignore_eos") or false
  p.no_cache = boolean(b, "cache_prompt") == false
  local user = opt(b, "user")
  if user ~= nil and type(user) ~= "string" then fail(400, "'user' must be a string", "user") end
  p.user = user
  local seed = integer_in(b, "seed", -2 ^ 53 + 1, 2 ^ 53 - 1)
  if not seed then seed = (floor(ngx.now() * 1000) * 7919 + counter) % 2147483647 end
  local last_n = integer_in(b, "penalty_last_n", -1, huge) or integer_in(b, "repeat_last_n", -1, huge)
  if last_n == -1 then last_n = M.o.n_ctx end
  local s = {
    temperature = number_in(b, "temperature", 0, 2) or 1.0,
    top_p = number_in(b, "top_p", 0, 1) or 1.0,
    top_k = integer_in(b, "top_k", 0, huge) or 40,
    min_p = number_in(b, "min_p", 0, 1),
    typical_p = number_in(b, "typical_p", 0, 1),
    frequency_penalty = number_in(b, "frequency_penalty", -2, 2),
    presence_penalty = number_in(b, "presence_penalty", -2, 2),
    repeat_penalty = number_in(b, "repeat_penalty", 0, huge),
    penalty_last_n = last_n,
    mirostat = integer_in(b, "mirostat", 0, 2),
    mirostat_tau = number_in(b, "mirostat_tau", 0, huge),
    mirostat_eta = number_in(b, "mirostat_eta", 0, huge),
    seed = seed,
  }
  if s.top_p == 0 then s.top_p = 1e-9 end -- "only the best token": the smallest nucleus
  if s.typical_p == 0 then s.typical_p = 1e-9 end
  local bias = opt(b, "logit_bias")
  if bias ~= nil then
    if not is_object(bias) then fail(400, "'logit_bias' must be an object", "logit_bias") end
    s.logit_bias = {}
    for k, v in pairs(bias) do
      local id = tonumber(k)
      if not is_int(id) or id < 0 or id >= M.model.n_vocab then
        fail(400, ("'logit_bias' has a key that is not a token id: %s"):format(tostring(k)), "logit_bias")
      end
      if type(v) ~= "number" or v < -100 or v > 100 then fail(400, "'logit_bias' values must be numbers from -100 to 100", "logit_bias") end
      s.logit_bias[id] = v <= -100 and -huge or v
    end
  end
  local ok, err = pcall(sampler.new, s)
  if not ok then fail(400, (tostring(err):gsub("^.-bad argument #1 to 'sampler' %((.*)%)$", "%1"))) end
  p.penalties = (s.frequency_penalty or 0) ~= 0 or (s.presence_penalty or 0) ~= 0 or (s.repeat_penalty or 1) ~= 1
  p.sampling = s
  return p
end

---------------------------------------------------------------------------------------
-- Structured output: response_format, and llama-server's grammar and json_schema

local NAME_PATTERN = "^[%w_%-]+$"

-- constraint(body) -> nil, or { kind = "gbnf" | "schema", text = GBNF or JSON text, param,
-- what (the words for an error: "response_format 'name'") }
function _M.constraint(b)
  local found = {}
  local out
  local rf = opt(b, "response_format")
  if rf ~= nil then
    if not is_object(rf) then fail(400, "'response_format' must be an object", "response_format") end
    local t = rf.type
    local allowed = { type = true }
    if t == "json_schema" then
      allowed.json_schema = true
    elseif t == "json_object" or t == "text" then
      allowed.schema = true -- llama-server's {type: "json_object", schema: {...}}
    else
      fail(400, ("'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got %s")
           :format(type(t) == "string" and ("\"" .. t .. "\"") or type(t)), "response_format")
    end
    for _, k in ipairs(json.keys(rf)) do
      if not allowed[k] then
        fail(400, ("Unrecognized argument in 'response_format': %s"):format(tostring(k)), "response_format", "unknown_parameter")
      end
    end
    if t == "json_object" then
      local schema = opt(rf, "schema")
      if schema ~= nil and not is_object(schema) then fail(400, "'response_format.schema' must be an object", "response_format") end
      out = { kind = "schema", text = schema and json.encode(schema, { compact = true }) or '{"type":"object"}',
              param = "response_format", what = "response_format" }
      found[#found + 1] = "response_format"
    elseif t == "json_schema" then
      local js = opt(rf, "json_schema")
      if not is_object(js) then fail(400, "'response_format.json_schema' must be an object", "response_format") end
      for _, k in ipairs(json.keys(js)) do
        if k ~= "name" and k ~= "schema" and k ~= "strict" and k ~= "description" then
          fail(400, ("Unrecognized argument in 'response_format.json_schema': %s"):format(tostring(k)), "response_format",
               "unknown_parameter")
        end
      end
      local name = opt(js, "name")
      if type(name) ~= "string" or #name > 64 or not name:find(NAME_PATTERN) then
        fail(400, "'response_format.json_schema.name' must be 1 to 64 letters, digits, '_' or '-'", "response_format")
      end
      local strict = opt(js, "strict")
      if strict ~= nil and type(strict) ~= "boolean" then
        fail(400, "'response_format.json_schema.strict' must be a boolean", "response_format")
      end
      local d = opt(js, "description")
      if d ~= nil and type(d) ~= "string" then
        fail(400, "'response_format.json_schema.description' must be a string", "response_format")
      end
      local schema = opt(js, "schema")
      if schema ~= nil and type(schema) ~= "boolean" and not is_object(schema) then
        fail(400, "'response_format.json_schema.schema' must be a JSON Schema (an object)", "response_format")
      end
      -- no schema: any JSON value, as the schema {} says
      out = { kind = "schema", text = schema ~= nil and json.encode(schema, { compact = true }) or "{}",
              param = "response_format", what = ("response_format '%s'"):format(name) }
      found[#found + 1] = "response_format"
    end
  end
  local g = opt(b, "grammar")
  if g ~= nil then
    if type(g) ~= "string" then fail(400, "'grammar' must be a string (GBNF)", "grammar") end
    out = { kind = "gbnf", text = g, param = "grammar", what = "grammar" }
    found[#found + 1] = "grammar"
  end
  local js = opt(b, "json_schema")
  if js ~= nil then
    if type(js) ~= "boolean" and not is_object(js) then fail(400, "'json_schema' must be a JSON Schema (an object)", "json_schema") end
    out = { kind = "schema", text = json.encode(js, { compact = true }), param = "json_schema", what = "json_schema" }
    found[#found + 1] = "json_schema"
  end
  if #found > 1 then
    fail(400, ("give one of 'response_format' (json), 'grammar' and 'json_schema', not %s"):format(concat(found, " and ")),
         found[2])
  end
  return out
end

---------------------------------------------------------------------------------------
-- Tools

-- tool_options(body) -> nil (no tools), or { list, choice ("auto" | "none" | "required" | a
-- function name), parallel }
function _M.tool_options(b)
  local tools = require "moonlm.tools"
  local raw = opt(b, "tools")
  if type(raw) == "table" and next(raw) == nil then raw = nil end -- [] or {}: no tools
  local list, err = tools.check(raw)
  if err then fail(400, (err:gsub("^tools", "'tools'")), "tools") end
  local choice = opt(b, "tool_choice")
  local parallel = boolean(b, "parallel_tool_calls")
  if choice == nil or choice == "auto" or choice == "none" then
    choice = choice or "auto"
  elseif choice == "required" or is_object(choice) then
    if not list then
      fail(400, "'tool_choice' is only allowed when 'tools' are given", "tool_choice")
    end
    if choice ~= "required" then
      local f = choice["function"]
      if choice.type ~= "function" or not is_object(f) or type(f.name) ~= "string" then
        fail(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
             "tool_choice")
      end
      local named
      for _, t in ipairs(list) do
        if t["function"].name == f.name then named = true end
      end
      if not named then fail(400, ("'tool_choice' names '%s', which is not one of the tools"):format(f.name), "tool_choice") end
      choice = f.name
    end
  else
    fail(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
         "tool_choice")
  end
  if not list then return nil end
  return { list = list, choice = choice, parallel = parallel ~= false }
end

---------------------------------------------------------------------------------------
-- Logprobs

-- logprobs(body, chat) -> nil, or the number of most likely alternatives to list per token
-- (chat: logprobs = true and top_logprobs 0 to 20; completions: logprobs 0 to 20)
function _M.logprobs(b, chat)
  if chat then
    local on = boolean(b, "logprobs")
    local top = integer_in(b, "top_logprobs", 0, 20)
    if top and not on then fail(400, "'top_logprobs' needs 'logprobs' set to true", "top_logprobs") end
    if not on then return nil end
    return top or 0
  end
  local v = opt(b, "logprobs")
  if v == nil then return nil end
  if type(v) == "boolean" then fail(400, "'logprobs' must be an integer (0 to 20) in /v1/completions", "logprobs") end
  return integer_in(b, "logprobs", 0, 20)
end

---------------------------------------------------------------------------------------
-- Prompts

-- Text longer than this cannot fit in a slot's context whatever the tokenizer does (no token
-- is that long on average); refusing it early keeps template rendering and tokenization of
-- huge inputs off the event loop.
function _M.check_bytes(M, n, param)
  local limit = M.o.n_ctx * 64
  if n > limit then
    fail(400, ("the input has %d bytes, more than a context of %d tokens can hold"):format(n, M.o.n_ctx), param,
         "context_length_exceeded")
  end
end

local function message_text(m, i)
  local c = m.content
  if c == nil or c == null then return "" end
  if type(c) == "string" then return c end
  if is_array(c) then
    local parts = {}
    for _, part in ipairs(c) do
      if type(part) ~= "table" or part.type ~= "text" or type(part.text) ~= "string" then
        fail(400, ("messages[%d].content: only text parts ({\"type\": \"text\", \"text\": ...}) are supported"):format(i - 1), "messages")
      end
      parts[#parts + 1] = part.text
    end
    return concat(parts)
  end
  fail(400, ("messages[%d].content must be a string or an array of text parts"):format(i - 1), "messages")
end

-- An assistant message's tool calls, checked: { { id, type = "function", function =
-- { name, arguments (JSON text) } } }
local function message_calls(m, i)
  local calls = m.tool_calls
  if not is_array(calls) then fail(400, ("messages[%d].tool_calls must be an array"):format(i - 1), "messages") end
  local out = json.array {}
  for k, c in ipairs(calls) do
    local at = ("messages[%d].tool_calls[%d]"):format(i - 1, k - 1)
    if not is_object(c) or (c.type ~= nil and c.type ~= "function") or not is_object(c["function"]) then
      fail(400, at .. " must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}", "messages")
    end
    local f = c["function"]
    if type(f.name) ~= "string" or f.name == "" then fail(400, at .. ".function.name must be a string", "messages") end
    local args = f.arguments
    if args == nil or args == null then args = "{}" end
    if type(args) ~= "string" then fail(400, at .. ".function.arguments must be a string (JSON text)", "messages") end
    if c.id ~= nil and c.id ~= null and type(c.id) ~= "string" then fail(400, at .. ".id must be a string", "messages") end
    out[k] = json.object({ id = type(c.id) == "string" and c.id or ("call_" .. (i - 1) .. "_" .. (k - 1)), type = "function",
                           ["function"] = json.object({ name = f.name, arguments = args }, { "name", "arguments" }) },
                         { "id", "type", "function" })
  end
  return out
end

-- chat_prompt(body, M, tool options) -> token ids of the rendered conversation, its text
function _M.chat_prompt(b, M, topts)
  local msgs = b.messages
  if not is_array(msgs) then fail(400, "'messages' must be an array", "messages") end
  if #msgs == 0 then fail(400, "'messages' must not be empty", "messages") end
  local list, bytes, tool_turns = {}, 0, false
  for i, m in ipairs(msgs) do
    if not is_object(m) then fail(400, ("messages[%d] must be an object"):format(i - 1), "messages") end
    if type(m.role) ~= "string" then fail(400, ("messages[%d].role must be a string"):format(i - 1), "messages") end
    local e = { role = m.role, content = message_text(m, i) }
    if type(m.name) == "string" then e.name = m.name end
    if m.tool_calls ~= nil and m.tool_calls ~= null then
      if m.role ~= "assistant" then fail(400, ("messages[%d].tool_calls: only assistant messages make tool calls"):format(i - 1), "messages") end
      e.tool_calls = message_calls(m, i)
      if #e.tool_calls == 0 then e.tool_calls = nil end
      tool_turns = tool_turns or e.tool_calls ~= nil
      for _, c in ipairs(e.tool_calls or {}) do bytes = bytes + #c["function"].arguments + #c["function"].name end
    end
    if m.role == "tool" then
      if type(m.tool_call_id) ~= "string" then
        fail(400, ("messages[%d].tool_call_id must be a string (the id of the call it answers)"):format(i - 1), "messages")
      end
      e.tool_call_id = m.tool_call_id
      tool_turns = true
    end
    list[i] = e
    bytes = bytes + #e.content + #m.role
  end
  _M.check_bytes(M, bytes, "messages")
  local vars = { add_generation_prompt = true, bos_token = M.bos_text, eos_token = M.eos_text, tools = null, documents = null }
  if topts or tool_turns then
    local tools = require "moonlm.tools"
    local caps = tools.caps(M.tmpl, { bos_token = M.bos_text, eos_token = M.eos_text, documents = null })
    list, vars.tools = tools.prepare(list, topts and topts.list, caps, M.fmt)
  end
  vars.messages = list
  local text, err = M.tmpl:render(vars)
  if not text then fail(400, "the chat template failed: " .. tostring(err), "messages") end
  -- a template that writes the BOS text itself gets it as a special token; others get the
  -- model's default BOS in front (as moonlm.chat does)
  local bos = M.model.vocab.add_bos and M.bos_text ~= "" and text:sub(1, #M.bos_text) ~= M.bos_text
  return M.model:tokenize(text, { bos = bos and true or false, special = true }), text
end

-- token_ids(list, M, param) -> the list checked as token ids of the model
function _M.token_ids(p, M, param)
  local ids = {}
  for i, id in ipairs(p) do
    if not is_int(id) or id < 0 or id >= M.model.n_vocab then
      fail(400, ("%s[%d] is not a token id of this model (0 to %d)"):format(param, i - 1, M.model.n_vocab - 1), param)
    end
    ids[i] = id
  end
  return ids
end

-- text_prompt(body, M) -> token ids, whether the output starts the text
function _M.text_prompt(b, M)
  local p = opt(b, "prompt")
  if p == nil then p = "" end
  if is_array(p) then
    if #p == 1 and type(p[1]) == "string" then
      p = p[1]
    elseif #p > 0 and type(p[1]) == "table" then
      if #p > 1 then fail(400, "only one prompt per request is supported", "prompt") end
      p = p[1]
    end
  end
  local ids
  if type(p) == "string" then
    _M.check_bytes(M, #p, "prompt")
    ids = M.model:tokenize(p)
  elseif is_array(p) then
    ids = _M.token_ids(p, M, "prompt")
  else
    fail(400, "'prompt' must be a string, an array of one string, or an array of token ids", "prompt")
  end
  if #ids == 0 then
    local bos = M.model.vocab.bos
    if not bos then fail(400, "the prompt is empty and the model has no BOS token", "prompt") end
    ids = { bos }
  end
  return ids, M.model:detokenize(ids) == ""
end

return _M
