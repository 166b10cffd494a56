-- The options every public function takes, checked in one place: a misspelt name is an
-- error with a suggestion ("unknown option 'max_token' (did you mean 'max_tokens'?)"), a
-- value of the wrong kind a `bad argument` naming the option, an option that cannot work
-- here (n_gpu_layers: moonlm runs on the CPU) a refusal. Nothing is accepted and ignored.
--
--   local options = require "moonlm.options"
--   options.check("generate", opts, 2)          -- raises at the caller's caller
--
-- Adding an option: one line in the schema of the function that honours it, e.g.
--   generate = { ..., my_option = "count", ... }
-- A schema may include others (`_include`: every option of those, minus `_exclude`), so an
-- option added to `sampler` is also one of generate, stream, chat and say. Kinds are the
-- names in KINDS below, or a function(v) -> true | "what was expected".
local type, pairs, ipairs, error, tostring = type, pairs, ipairs, error, tostring
local floor, huge = math.floor, math.huge

local _M = {}

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -huge and v < huge end

-- kind -> function(v) -> true, or what was expected (for the message)
local KINDS = {
  any = function() return true end,
  number = function(v) return (type(v) == "number" and v == v) or "a number" end,
  integer = function(v) return is_int(v) or "a whole number" end,
  count = function(v) return (is_int(v) and v >= 0) or "a whole number >= 0" end,
  positive = function(v) return (is_int(v) and v >= 1) or "a whole number >= 1" end,
  boolean = function(v) return type(v) == "boolean" or "a boolean" end,
  string = function(v) return type(v) == "string" or "a string" end,
  ["function"] = function(v) return type(v) == "function" or "a function" end,
  table = function(v) return type(v) == "table" or "a table" end,
  ["string|table"] = function(v) return type(v) == "string" or type(v) == "table" or "a string or a table" end,
  ["boolean|count"] = function(v)
    return type(v) == "boolean" or (is_int(v) and v >= 0) or "true, false or a whole number >= 0"
  end,
  -- probabilities and factors of the sampler (sampler.build checks them again, for callers
  -- that bypass this table)
  ["(0, 1]"] = function(v) return (type(v) == "number" and v > 0 and v <= 1) or "a number in (0, 1]" end,
  ["[0, 1]"] = function(v) return (type(v) == "number" and v >= 0 and v <= 1) or "a number in [0, 1]" end,
  ["> 0"] = function(v) return (type(v) == "number" and v > 0 and v < huge) or "a number > 0" end,
  -- a generator seed: any number whose floor is a 64-bit integer
  seed = function(v)
    return (type(v) == "number" and v >= -2 ^ 63 and v < 2 ^ 63) or "a number from -2^63 to 2^63"
  end,
  -- { [token id] = bias }: ids whole numbers >= 0 (the vocabulary's size is checked where it
  -- is known), biases numbers (-math.huge bans a token), not NaN
  bias = function(v)
    if type(v) ~= "table" then return "a table { [token id] = bias }" end
    for id, b in pairs(v) do
      if not (is_int(id) and id >= 0) then return "a table { [token id] = bias } with ids whole numbers >= 0" end
      if type(b) ~= "number" or b ~= b then return "a table { [token id] = bias } with biases numbers (not NaN)" end
    end
    return true
  end,
  -- a list of token ids
  ids = function(v)
    if type(v) ~= "table" then return "a table of token ids" end
    for _, id in ipairs(v) do
      if not (is_int(id) and id >= 0) then return "a table of token ids (whole numbers >= 0)" end
    end
    return true
  end,
  -- a grammar, a matcher (userdata of moonlm.core) or a JSON schema's grammar
  grammar = function(v) return type(v) == "userdata" or "a grammar or a matcher" end,
  -- what moonlm objects are: a model, a context, a sampler (Lua tables around userdata)
  object = function(v) return type(v) == "table" or "a moonlm object" end,
}
_M.KINDS = KINDS

local function one_of(...)
  local set, list = {}, {}
  for i, s in ipairs { ... } do
    set[s] = true
    list[i] = ("%q"):format(s)
  end
  local want = table.concat(list, ", ", 1, #list - 1) .. " or " .. list[#list]
  return function(v) return set[v] == true or want end
end
_M.one_of = one_of


-- Options no function honours, with the reason.
_M.REFUSED = {
  n_gpu_layers = "moonlm runs on the CPU",
  main_gpu = "moonlm runs on the CPU",
  tensor_split = "moonlm runs on the CPU",
  split_mode = "moonlm runs on the CPU",
  offload_kqv = "moonlm runs on the CPU",
}

local SAMPLER = {
  temperature = "number", top_k = "count", top_p = "(0, 1]", min_p = "[0, 1]", typical_p = "(0, 1]",
  repeat_penalty = "> 0", frequency_penalty = "number", presence_penalty = "number",
  penalty_last_n = "integer", mirostat_tau = "number", mirostat_eta = "number",
  mirostat = function(v) return v == 0 or v == 2 or "0 or 2 (v1 is not supported)" end,
  seed = "seed", greedy = "boolean", logit_bias = "bias", steps = "table",
  grammar = "grammar", json_schema = "string|table", model = "object",
}

local GENERATE = {
  _include = { "sampler" },
  _exclude = { model = "generate runs the model it is called on" },
  max_tokens = "count", stop = "string|table", stop_tokens = "ids", ignore_eos = "boolean",
  on_token = "function", sampler = "object", context = "object", seq = "count", keep = "boolean",
  special = "boolean", parse_special = "boolean", preserved_tokens = "ids", n_ctx = "positive",
  draft = "object", n_draft = "positive", lookup = "boolean", fast_forward = "boolean",
  context_shift = "boolean", n_keep = "count", logprobs = "boolean|count",
}

-- options that conflict: a sampler given whole takes no sampler options beside it
function GENERATE._check(opts)
  if opts.context ~= nil and opts.n_ctx ~= nil then
    return "option 'n_ctx' sizes the model's own context: with option 'context' it would do nothing"
  end
  if opts.sampler == nil then return nil end
  local list = {}
  for k in pairs(opts) do
    if SAMPLER[k] and k ~= "grammar" and k ~= "json_schema" then list[#list + 1] = k end
  end
  if #list == 0 then return nil end
  table.sort(list)
  return ("option '%s' is a sampler option: with option 'sampler', set it on that sampler"):format(list[1])
end

-- the options of one chat turn (chat:say, chat:stream), also defaults given to model:chat
local SAY = {
  _include = { "generate" },
  _exclude = { keep = "a chat continues its own sequence", parse_special = "a chat renders its own special tokens" },
  tools = "string|table", tool_choice = "string|table", parallel_tool_calls = "boolean", vars = "table",
  stream_reasoning = "boolean",
}

_M.schemas = {
  load = {
    threads = "positive", vocab_only = "boolean", prepare = "boolean", progress = "function", mmap = "boolean",
  },
  context = {
    n_ctx = "positive", n_batch = "positive", seqs = "positive", embeddings = "boolean",
    kv_type = "string", -- the binding names the types it has
  },
  sampler = SAMPLER,
  generate = GENERATE,
  stream = { _include = { "generate" } },
  say = SAY,
  chat = {
    _include = { "say" },
    _exclude = {},
    system = "string", template = "string", kv_type = "string", tool_format = "string|table",
    reasoning = "boolean",
  },
  apply_template = {
    add_generation_prompt = "boolean", template = "string", tools = "string|table", vars = "table",
    tool_format = "string|table", reasoning = "boolean",
  },
  embed = {
    pooling = one_of("mean", "cls", "last", "none", "rank"), normalize = "boolean", truncate = "boolean",
  },
  tokenize = { bos = "boolean", eos = "boolean", special = "boolean", prefix = "boolean" },
  limits = { max_tensor_bytes = "count" },
  -- models written in Lua (moonlm/nn.lua): a net's context, and the model around a net
  nn_context = { n_ctx = "positive", n_batch = "positive", seqs = "positive", kv_type = "string" },
  nn_model = { tokenizer = "object", arch = "string", n_ctx_train = "positive" },
}
-- a chat turn may not change what was fixed when the chat began
_M.schemas.say._exclude.system = "the system prompt is the chat's (chat:reset(system) changes it)"
_M.schemas.say._exclude.n_ctx = "the chat's context is made once, by model:chat"
_M.schemas.say._exclude.context = "the chat's context is given once, to model:chat"
_M.schemas.say._exclude.seq = "the chat's sequence is given once, to model:chat"
_M.schemas.say._exclude.template = "the template is the chat's"
_M.schemas.say._exclude.tool_format = "the chat's tool-call format is fixed by model:chat"
_M.schemas.say._exclude.reasoning = "set it once, in model:chat"
_M.schemas.say._exclude.kv_type = "the chat's context is made once, by model:chat"
-- what model:chat takes besides the turn options: the context to run in
_M.schemas.chat.context = "object"
_M.schemas.chat.seq = "count"
_M.schemas.chat.n_ctx = "positive"

-- lookup(schema, name) -> kind, or nil (and the reason, when excluded)
local function lookup(name, key, seen)
  local s = _M.schemas[name]
  if not s or (seen and seen[name]) then return nil end
  local k = s[key]
  if k ~= nil and key:sub(1, 1) ~= "_" then return k end
  seen = seen or {}
  seen[name] = true
  if s._exclude and s._exclude[key] then return nil, s._exclude[key] end
  for _, inc in ipairs(s._include or {}) do
    local kind, why = lookup(inc, key, seen)
    if kind or why then return kind, why end
  end
  return nil
end

-- every option name of a schema
local function names(name, out, seen)
  out, seen = out or {}, seen or {}
  if seen[name] then return out end
  seen[name] = true
  local s = _M.schemas[name]
  for k in pairs(s) do
    if k:sub(1, 1) ~= "_" then out[k] = true end
  end
  for _, inc in ipairs(s._include or {}) do
    local sub = names(inc, {}, seen)
    for k in pairs(sub) do
      if not (s._exclude and s._exclude[k]) then out[k] = true end
    end
  end
  return out
end
_M.names = names

-- Levenshtein distance, stopping early past `limit`
local function distance(a, b, limit)
  if math.abs(#a - #b) > limit then return limit + 1 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur, best = { [0] = i }, i
    local ca = a:byte(i)
    for j = 1, #b do
      local cost = ca == b:byte(j) and 0 or 1
      local v = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      cur[j] = v
      if v < best then best = v end
    end
    if best > limit then return limit + 1 end
    prev = cur
  end
  return prev[#b]
end

-- suggest(name, key) -> the known option nearest to key, or nil
function _M.suggest(name, key)
  local limit = #key <= 4 and 1 or #key <= 8 and 2 or 3
  local best, bestd
  local all = {}
  for k in pairs(names(name)) do all[#all + 1] = k end
  table.sort(all)
  for _, k in ipairs(all) do
    local d = distance(key:lower(), k, limit)
    -- a prefix or an extension (max_token, temp) counts as near too
    if d > limit and #key >= 4 and (k:sub(1, #key) == key or key:sub(1, #k) == k) then d = limit end
    if d <= limit and (not bestd or d < bestd) then best, bestd = k, d end
  end
  return best
end

-- what was given: the value when it is of the right Lua type but out of range (a count of
-- -1, a kv_type of "f8"), else its type ("got string")
local NUMERIC = { number = true, integer = true, count = true, positive = true, ["boolean|count"] = true,
  ["(0, 1]"] = true, ["[0, 1]"] = true, ["> 0"] = true, seed = true }
local function describe(v, kind)
  if type(v) == "number" and NUMERIC[kind] then
    if v ~= v then return "nan" end
    return tostring(v)
  end
  if type(v) == "string" and type(kind) == "function" and #v <= 40 then return ("%q"):format(v) end
  if type(v) == "number" and type(kind) == "function" then return v ~= v and "nan" or tostring(v) end
  return type(v)
end

-- the _check functions of a schema and of those it includes
local function checks(name, out, seen)
  out, seen = out or {}, seen or {}
  if seen[name] then return out end
  seen[name] = true
  local s = _M.schemas[name]
  if s._check then out[#out + 1] = s._check end
  for _, inc in ipairs(s._include or {}) do checks(inc, out, seen) end
  return out
end

-- check(name, opts, argn [, level]) -> opts: raises `bad argument #argn to 'name' (...)` for
-- an option the function does not take or a value of the wrong kind. level: as error()'s,
-- counted from the caller of check (default 2: the caller's caller). A nil opts is fine.
-- fname: the name in the message when it is not the schema's (stream -> 'stream').
function _M.check(name, opts, argn, level, fname)
  level = (level or 2) + 1
  fname = fname or name
  if opts == nil then return opts end
  local function fail(msg) error(("bad argument #%d to '%s' (%s)"):format(argn, fname, msg), level + 1) end
  if type(opts) ~= "table" then fail("options table expected, got " .. type(opts)) end
  if not _M.schemas[name] then error("moonlm.options: no schema '" .. tostring(name) .. "'", 2) end
  for k, v in pairs(opts) do
    if type(k) ~= "string" then
      fail(("options are named: key %s is not a name"):format(tostring(k)))
    end
    local kind, why = lookup(name, k)
    if not kind then
      if _M.REFUSED[k] then fail(("option '%s' is not supported: %s"):format(k, _M.REFUSED[k])) end
      if why then fail(("option '%s' does not apply here: %s"):format(k, why)) end
      local near = _M.suggest(name, k)
      if near then fail(("unknown option '%s' (did you mean '%s'?)"):format(k, near)) end
      fail(("unknown option '%s'"):format(k))
    end
    local test = type(kind) == "function" and kind or KINDS[kind]
    if not test then error("moonlm.options: unknown kind '" .. tostring(kind) .. "' for option '" .. k .. "'", 2) end
    local ok = test(v)
    if ok ~= true then fail(("option '%s' must be %s, got %s"):format(k, ok, describe(v, kind))) end
  end
  for _, c in ipairs(checks(name)) do
    local msg = c(opts)
    if msg then fail(msg) end
  end
  return opts
end

-- subset(name, opts) -> a copy of opts with only the options of schema `name`
function _M.subset(name, opts)
  local out = {}
  for k, v in pairs(opts or {}) do
    if lookup(name, k) then out[k] = v end
  end
  return out
end

return _M
