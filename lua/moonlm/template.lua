-- moonlm.template: the Jinja subset that chat templates (GGUF tokenizer.chat_template) use.
--
-- Renders the way Hugging Face transformers does (Jinja2 with trim_blocks, lstrip_blocks,
-- loopcontrols, generation tags, lenient undefined, no autoescape, `tojson` as json.dumps),
-- so a prompt built here matches the one the model was trained on byte for byte. That
-- includes Python's value semantics (int vs float, repr of lists and dicts, truthiness) and
-- Jinja's quirks that change output: filters bind tighter than operators, map/select/...
-- return one-shot generators (always true, no length), `|safe` makes a Markup whose `+`
-- HTML-escapes the other side, unknown filters inside an if body fail only when run.
-- Source is lexed, parsed to a tree and compiled once into Lua closures; render() runs them.
--

-- Layout: this file is the API. The parts live in moonlm/template/: text (UTF-8 strings),
-- value (limits, value model, errors, str/repr), lexer, parser, runtime (Python operations,
-- formatting, budgets), compiler, methods, globals, tests, filters, builtins.
--

-- API
--   T.compile(src)          -> tmpl | nil, err, info     (parse once ...)
--   tmpl:render(vars)       -> string | nil, err, info   (... render many)
--   T.render(src, vars)     compile (cached by source) and render
--   T.builtin(name)         -> Jinja source of chatml, llama2, llama3, mistral, phi3, gemma,
--                              zephyr | nil, err;  T.builtin_names() -> sorted list
-- Errors are "line N: what went wrong"; info = { kind = "syntax" | "runtime" |
-- "raise_exception" | "internal", line = N }. For raise_exception(msg) err is msg itself.
-- Nothing raises: bad templates, bad vars and runaway loops/recursion all give nil, err.
-- Templates come from untrusted files: the source is at most 128 KiB, and every operation
-- of a render is charged to a budget of work, memory and 1 s of CPU (T.LIMITS, from
-- moonlm/template/value.lua, may be changed), so a hostile one fails within about a second.
--
-- Render variables are plain Lua values (the same model as moonlm.json):
--   string         a Jinja string (UTF-8; length, indexing and slicing count code points)
--   number         an int, or a float if math.type says so (5.4); on LuaJIT, where every
--                  number is a double, integral values are ints: use json.float(1) for 1.0
--   boolean        true / false;  json.null is none (Lua nil cannot be stored in a table)
--   table          a list if it has json.array_mt, or t[1] ~= nil, or it is empty; a dict
--                  otherwise. Use json.object(t, keys) for an empty dict or to keep key
--                  order (plain tables iterate in sorted key order); json.decode output
--                  keeps both. A messages list decoded from JSON is ready to use.
--   function       callable from the template: f(positional..., kwargs_table_if_any)
-- transformers also passes tools = None and documents = None; pass json.null for those to
-- match its output. strftime_now(fmt) formats the current time with os.date unless vars
-- provides its own strftime_now. Beyond transformers' immutable sandbox, templates may call
-- mutating list/dict methods (append, pop, update, ...).

local compiler = require "moonlm.template.compiler"
local runtime = require "moonlm.template.runtime"
local parse = require("moonlm.template.parser").parse
local GLOBALS = require("moonlm.template.globals").GLOBALS
local builtins = require "moonlm.template.builtins"

local _M = {}

local type, tostring, setmetatable, pcall = type, tostring, setmetatable, pcall
local format = string.format
local concat = table.concat
local cbody, reset_compiler = compiler.cbody, compiler.reset_compiler
local limits_swap = runtime.limits_swap
local LIMITS = require("moonlm.template.value").LIMITS

local Template = {}
Template.__index = Template

local function error_result(err, line, phase)
  if type(err) == "table" and err.tmsg then
    if err.raised then return nil, err.tmsg, { kind = "raise_exception", line = line } end
    line = err.line or line
    return nil, format("line %d: %s", line or 0, err.tmsg), { kind = phase, line = line }
  end
  return nil, format("line %d: internal error: %s", line or 0, tostring(err)), { kind = "internal", line = line }
end

function _M.compile(source)
  if type(source) ~= "string" then return nil, "template source must be a string, got " .. type(source) end
  if #source > LIMITS.source then
    return nil, format("line 0: template source too long (%d bytes; the limit is %d)", #source, LIMITS.source),
      { kind = "syntax", line = 0 }
  end
  local ok, res = pcall(function() return cbody(parse(source)) end)
  reset_compiler()
  if not ok then return error_result(res, nil, "syntax") end
  return setmetatable({ fn = res, source = source }, Template)
end

-- tmpl:render(vars) -> string | nil, err, info ({ kind = "raise_exception" | "runtime" |
-- "internal", line = n })
function Template:render(vars)
  if vars == nil then vars = {} end
  if type(vars) ~= "table" then return nil, "render variables must be a table, got " .. type(vars) end
  local root = setmetatable({}, { __index = function(_, k)
    local v = vars[k]
    if v == nil then v = GLOBALS[k] end
    return v
  end })
  local ctx = { out = {}, n = 0, size = 0, line = 1, iters = 0, depth = 0 }
  local prev = limits_swap(nil) -- a fresh budget (a Lua function a template calls may render too)
  local ok, err = pcall(self.fn, ctx, root)
  limits_swap(prev)
  if ok then return concat(ctx.out, "", 1, ctx.n) end
  return error_result(err, ctx.line, "runtime")
end

local cache, cache_n = {}, 0

-- render(source, vars): compile (cached by source text) and render.
function _M.render(source, vars)
  local t = type(source) == "string" and cache[source]
  if not t then
    local err, info
    t, err, info = _M.compile(source)
    if not t then return nil, err, info end
    if cache_n >= 64 then cache, cache_n = {}, 0 end
    cache[source] = t
    cache_n = cache_n + 1
  end
  return t:render(vars)
end

-- builtin(name) -> Jinja source | nil, err;  builtin_names() -> sorted list
_M.builtin, _M.builtin_names = builtins.builtin, builtins.builtin_names
_M.LIMITS = LIMITS

return _M
