-- moonlm.template.value: the core the rest of the renderer requires. The render limits;
-- the value model (plain Lua values seen as Python ones: kind, pytype, int vs float, and
-- the metatables that mark tuples, Undefined, Markup, generators, macros, ...); template
-- errors (fail, Undefined and its message); str() and repr() as Python prints them.

local json = require "moonlm.json"
local text = require "moonlm.template.text"

local _M = {}

local type, next, tostring, select = type, next, tostring, select
local setmetatable, getmetatable, error = setmetatable, getmetatable, error
local byte, find, format, gsub = string.byte, string.find, string.format, string.gsub
local concat = table.concat
local floor, huge = math.floor, math.huge

local null, array_mt, object_mt, float_mt = json.null, json.array_mt, json.object_mt, json.float_mt
local jkeys, float_repr, number_str, utf8_code = json.keys, json.float_repr, json.number_str, json.utf8_code
local is_float_num = json.is_float
local is_ascii = text.is_ascii

local spend, check_len, grow, limits_swap -- the render budget, below

-- Limits that keep compile() and render() from hanging or exhausting memory on a hostile
-- template (chat templates come from untrusted files). Every operation is charged to the
-- render's budget: steps (work: one per loop iteration, call and statement weight, one per
-- element a list, dict, string or value tree operation touches) and bytes (memory built:
-- string bytes, 32 per list or dict slot), plus a CPU-time limit checked as steps are
-- spent. Beyond any of them the render fails with a clear error. LIMITS may be changed.
local LIMITS = {
  source = 128 * 1024,       -- bytes of template source (the largest known chat template: 13 KB;
                             -- compiling 128 KB of the densest syntax takes about half a second)
  depth = 100,               -- nested macro calls / parser nesting
  iter = 1000000,            -- loop iterations per render
  str = 4 * 1024 * 1024,     -- longest string (or output) one render may build (a chat
                             -- prompt of 128k tokens is about 512 KB)
  steps = 20000000,          -- work per render
  bytes = 256 * 1024 * 1024, -- memory built per render
  seconds = 1,               -- CPU seconds per render (os.clock)
}
_M.LIMITS = LIMITS
local MAX_DEPTH, MAX_ITER, MAX_STR = LIMITS.depth, LIMITS.iter, LIMITS.str
local MAX_STEPS, MAX_BYTES = LIMITS.steps, LIMITS.bytes

---------------------------------------------------------------------------------------------
-- Value model

local tuple_mt = { __jsontype = "array" }
local undef_mt = { __jsontype = "Undefined" }
local ns_mt = { __jsontype = "Namespace" }
local loop_mt = { __jsontype = "LoopContext" }
local macro_mt = { __jsontype = "Macro" }
local bound_mt = { __jsontype = "method" }
-- Jinja's Markup (from |safe and |escape): a string whose + escapes the other operand
local markup_mt = { __jsontype = "Markup" }
-- a one-shot generator (what map, select, unique, ... return in Jinja): always true, no
-- len(), not JSON serializable, empty once iterated
local iter_mt = { __jsontype = "generator" }

local KIND = {
  [array_mt] = "list", [object_mt] = "dict", [float_mt] = "num", [tuple_mt] = "tuple",
  [undef_mt] = "undef", [ns_mt] = "ns", [loop_mt] = "loop", [macro_mt] = "macro",
  [bound_mt] = "bound", [getmetatable(null)] = "none", [markup_mt] = "markup", [iter_mt] = "iter",
}
local PYTYPE = { str = "str", bool = "bool", none = "NoneType", list = "list", dict = "dict",
  tuple = "tuple", ns = "Namespace", loop = "LoopContext", macro = "Macro", bound = "method",
  func = "function", undef = "Undefined", other = "object", markup = "Markup", iter = "generator" }

-- Builtin callables take (ctx, args, kwargs); any other Lua function is a user function.
local BUILTIN = setmetatable({}, { __mode = "k" })

local function kind(v)
  local t = type(v)
  if t == "string" then return "str" end
  if t == "number" then return "num" end
  if t == "boolean" then return "bool" end
  if t == "table" then
    local mt = getmetatable(v)
    if mt == nil then
      if v[1] ~= nil or next(v) == nil then return "list" end
      return "dict"
    end
    local k = KIND[mt]
    if k then return k end
    if mt.__jsontype == "array" then return "list" end
    return "dict"
  end
  if t == "function" then return "func" end
  if t == "nil" then return "undef" end
  return "other"
end

local function pytype(v)
  local k = kind(v)
  if k == "num" then
    if type(v) == "table" or is_float_num(v) then return "float" end
    return "int"
  end
  return PYTYPE[k]
end

-- Template errors are tables { tmsg = message [, raised = true] [, line = n] }.
local function fail(msg, ...)
  if select("#", ...) > 0 then msg = format(msg, ...) end
  error({ tmsg = msg }, 0)
end

---------------------------------------------------------------------------------------------
-- The render budget (see LIMITS). A render starts with limits_swap(fresh()) and restores
-- the previous state after (a Lua function a template calls may render another template).

local clock = os.clock
local CHECK_EVERY = 16384 -- steps between two looks at the clock
local steps, bytes, next_check, deadline = 0, 0, 0, huge

local function over_time()
  if clock() > deadline then
    fail("template exceeded its time limit (%g s of CPU)", LIMITS.seconds)
  end
end

spend = function(n)
  steps = steps + n
  if steps >= next_check then
    if steps > LIMITS.steps then fail("template exceeded its work limit (%d steps)", LIMITS.steps) end
    next_check = steps + CHECK_EVERY
    over_time()
  end
end

-- account for building a string of n bytes
check_len = function(n)
  if n > LIMITS.str then fail("MemoryError: result longer than %d bytes", LIMITS.str) end
  bytes = bytes + n
  if bytes > LIMITS.bytes then fail("template exceeded its memory limit (%d bytes built)", LIMITS.bytes) end
  spend(floor(n / 256) + 1)
end

-- account for concat(parts, sep, 1, n) before it builds the string
local function check_concat(parts, n, sep)
  local len = n > 1 and (n - 1) * #sep or 0
  for i = 1, n do len = len + #parts[i] end
  check_len(len)
end
_M.check_concat = check_concat

-- account for building n slots of lists or dicts (with what a Lua table costs around them)
grow = function(n)
  bytes = bytes + 32 * n
  if bytes > LIMITS.bytes then fail("template exceeded its memory limit (%d bytes built)", LIMITS.bytes) end
  spend(n + 1)
end

-- limits_swap(state | nil) -> the previous state; nil starts a fresh budget now
limits_swap = function(st)
  local prev = { steps, bytes, deadline }
  if st then
    steps, bytes, deadline = st[1], st[2], st[3]
  else
    steps, bytes, deadline = 0, 0, clock() + LIMITS.seconds
  end
  next_check = steps
  return prev
end

local function undef(name, obj)
  return setmetatable({ name = name, obj = obj }, undef_mt)
end

local repr -- forward

local function undef_msg(u)
  if u.hint then return u.hint end
  if u.obj then
    if type(u.name) == "string" then
      return format("'%s object' has no attribute '%s'", u.obj, u.name)
    end
    return format("'%s object' has no element %s", u.obj, repr(u.name))
  end
  return format("'%s' is undefined", tostring(u.name))
end

local function fail_undef(u) fail(undef_msg(u)) end

local function list(t) return setmetatable(t or {}, array_mt) end
local function gen(t) return setmetatable({ items = t, pos = 1 }, iter_mt) end
local function markup(s) return setmetatable({ s }, markup_mt) end
local HTML_ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;", ["'"] = "&#39;" }
local function escape_html(s) return (gsub(s, "[&<>\"']", HTML_ESC)) end

-- plain string of a Markup value; anything else unchanged
local function unmark(v)
  if type(v) == "table" and getmetatable(v) == markup_mt then return v[1] end
  return v
end
local function tuple(t) return setmetatable(t, tuple_mt) end
local function dict() return json.object({}, {}) end

-- numval(v) -> raw Lua number, is-float flag (nil when v is not a number; a bool is an int)
local function numval(v)
  local t = type(v)
  if t == "number" then return v, is_float_num(v) end
  if t == "boolean" then return v and 1 or 0, false end
  if t == "table" and getmetatable(v) == float_mt then return v[1], true end
  return nil
end

local function is_int(v)
  return type(v) == "number" and not is_float_num(v)
end

-- Integer from a float that is integral (an integer subtype on 5.4).
local function toint(x)
  if x ~= x or x == huge or x == -huge then fail("ValueError: cannot convert float %s to integer", float_repr(x)) end
  local r = x >= 0 and floor(x) or -floor(-x)
  if r == 0 then return 0 end
  return r
end

---------------------------------------------------------------------------------------------
-- str() and repr() as Python prints them

-- Code points Python's repr escapes (not str.isprintable): controls, format characters,
-- separators other than space, private use. Approximate outside these ranges.
local function nonprintable(cp)
  return cp < 0x20 or (cp >= 0x7F and cp <= 0xA0) or cp == 0xAD or cp == 0x61C
    or cp == 0x1680 or cp == 0x180E or (cp >= 0x2000 and cp <= 0x200F)
    or (cp >= 0x2028 and cp <= 0x202F) or (cp >= 0x205F and cp <= 0x206F) or cp == 0x3000
    or cp == 0xFEFF or (cp >= 0xFFF9 and cp <= 0xFFFB) or (cp >= 0xE000 and cp <= 0xF8FF)
    or (cp >= 0xE0000 and cp <= 0xE007F) or cp >= 0xF0000
end

local REPR_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function repr_str(s)
  local q = "'"
  if find(s, "'", 1, true) and not find(s, '"', 1, true) then q = '"' end
  s = gsub(s, "[%c\\'\"]", function(c)
    if c == q then return "\\" .. c end
    local e = REPR_ESC[c]
    if e then return e end
    if c == "'" or c == '"' then return c end
    return format("\\x%02x", byte(c))
  end)
  if not is_ascii(s) then
    s = gsub(s, "[\192-\255][\128-\191]*", function(ch)
      local cp = utf8_code(ch)
      if not nonprintable(cp) then return ch end
      if cp < 0x100 then return format("\\x%02x", cp) end
      if cp < 0x10000 then return format("\\u%04x", cp) end
      return format("\\U%08x", cp)
    end)
  end
  return q .. s .. q
end

local tostr

local function seq_repr(v, open, close, depth)
  if depth > 50 then return open .. "..." .. close end
  local parts, n = {}, #v
  spend(n + 1) -- a list may hold one list many times: every visit counts
  for i = 1, n do parts[i] = repr(v[i], depth + 1) end
  if open == "(" and n == 1 then return "(" .. parts[1] .. ",)" end
  local r = open .. concat(parts, ", ") .. close
  check_len(#r)
  return r
end

local function dict_repr(v, depth)
  if depth > 50 then return "{...}" end
  local ks, parts = jkeys(v), {}
  spend(#ks + 1)
  for i = 1, #ks do parts[i] = repr(ks[i], depth + 1) .. ": " .. repr(v[ks[i]], depth + 1) end
  local r = "{" .. concat(parts, ", ") .. "}"
  check_len(#r)
  return r
end

local function str_other(v, depth)
  local k = kind(v)
  if k == "none" then return "None" end
  if k == "undef" then return "" end
  if k == "num" then return float_repr(v[1]) end
  if k == "list" then return seq_repr(v, "[", "]", depth) end
  if k == "tuple" then return seq_repr(v, "(", ")", depth) end
  if k == "dict" then return dict_repr(v, depth) end
  if k == "ns" then return "<Namespace " .. dict_repr(v, depth) .. ">" end
  if k == "loop" then return format("<LoopContext %d/%d>", v.i + 1, v.n) end
  if k == "macro" then return format("<Macro '%s'>", v.name) end
  if k == "bound" then return format("<built-in method %s>", v.name) end
  if k == "markup" then return v[1] end
  if k == "iter" then return "<generator object>" end
  if k == "func" then return "<function>" end
  return tostring(v)
end

tostr = function(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return number_str(v) end
  if t == "boolean" then return v and "True" or "False" end
  return str_other(v, 0)
end

repr = function(v, depth)
  local t = type(v)
  if t == "string" then return repr_str(v) end
  if t == "table" and getmetatable(v) == undef_mt then return "Undefined" end
  if t == "table" and getmetatable(v) == markup_mt then return "Markup(" .. repr_str(v[1]) .. ")" end
  if t == "table" then return str_other(v, depth or 0) end
  return tostr(v)
end

_M.MAX_DEPTH, _M.MAX_ITER, _M.MAX_STR, _M.MAX_STEPS, _M.MAX_BYTES =
  MAX_DEPTH, MAX_ITER, MAX_STR, MAX_STEPS, MAX_BYTES
_M.spend, _M.check_len, _M.grow, _M.limits_swap = spend, check_len, grow, limits_swap
_M.tuple_mt, _M.undef_mt, _M.ns_mt, _M.loop_mt = tuple_mt, undef_mt, ns_mt, loop_mt
_M.macro_mt, _M.bound_mt, _M.markup_mt, _M.iter_mt = macro_mt, bound_mt, markup_mt, iter_mt
_M.BUILTIN = BUILTIN
_M.kind, _M.pytype = kind, pytype
_M.fail, _M.undef, _M.fail_undef = fail, undef, fail_undef
_M.list, _M.gen, _M.markup, _M.tuple, _M.dict = list, gen, markup, tuple, dict
_M.escape_html, _M.unmark = escape_html, unmark
_M.numval, _M.is_int, _M.toint = numval, is_int, toint
_M.tostr, _M.repr, _M.repr_str = tostr, repr, repr_str

return _M
