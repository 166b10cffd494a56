-- moonlm.template.globals: the functions every template can call (GLOBALS, read after the
-- render vars): range, namespace, dict, raise_exception, strftime_now, joiner, cycler.
-- They take (ctx, args, kwargs) and are marked in value.BUILTIN so the compiler calls them
-- that way, not as user functions.

local json = require "moonlm.json"
local value = require "moonlm.template.value"
local R = require "moonlm.template.runtime"
local methods = require "moonlm.template.methods"

local _M = {}

local ipairs, setmetatable, pcall, error = ipairs, setmetatable, pcall, error
local floor = math.floor
local os_date = os.date

local jkeys, jset = json.keys, json.set
local LIMITS, ns_mt, BUILTIN = value.LIMITS, value.ns_mt, value.BUILTIN
local kind, fail, list, dict, tostr, repr = value.kind, value.fail, value.list, value.dict, value.tostr, value.repr
local spend = R.spend
local want_str, opt_int = methods.want_str, methods.opt_int

local GLOBALS = {}

local function native(f) BUILTIN[f] = true; return f end
local function builtin(name, f) GLOBALS[name] = native(f) end

builtin("range", function(_, args)
  local a, b, c = opt_int(args[1], "range arg"), opt_int(args[2], "range arg"), opt_int(args[3], "range arg")
  if a == nil then fail("TypeError: range expected at least 1 argument, got 0") end
  if b == nil then a, b = 0, a end
  c = c or 1
  if c == 0 then fail("ValueError: range() arg 3 must not be zero") end
  local cnt = c > 0 and floor((b - a + c - 1) / c) or floor((a - b - c - 1) / -c)
  if cnt > LIMITS.iter then fail("range of %d items is too large", cnt) end
  if cnt > 0 then value.grow(cnt) end
  local out = {}
  for i = 1, cnt do out[i] = a + (i - 1) * c end
  return list(out)
end)

local function kwargs_into(t, args, kw)
  if args[1] ~= nil then
    if kind(args[1]) ~= "dict" then fail("TypeError: expected a mapping") end
    for _, k in ipairs(jkeys(args[1])) do jset(t, k, args[1][k]) end
  end
  if kw then for _, k in ipairs(jkeys(kw)) do jset(t, k, kw[k]) end end
  return t
end

builtin("namespace", function(_, args, kw)
  return kwargs_into(setmetatable({}, ns_mt), args, kw)
end)
builtin("dict", function(_, args, kw) return kwargs_into(dict(), args, kw) end)

builtin("raise_exception", function(_, args)
  error({ tmsg = tostr(args[1] or ""), raised = true }, 0)
end)

builtin("strftime_now", function(_, args)
  local fmt = want_str(args[1], "strftime_now format")
  local ok, s = pcall(os_date, fmt)
  if not ok then fail("ValueError: bad strftime format %s", repr(fmt)) end
  return s
end)

builtin("joiner", function(_, args)
  local sep, used = args[1] or ", ", false
  return native(function()
    if used then return sep end
    used = true
    return ""
  end)
end)

builtin("cycler", function(_, args)
  local items, i = args, 1
  if #items == 0 then fail("TypeError: at least one item has to be provided") end
  local c = setmetatable({}, ns_mt)
  c.next = native(function()
    local v = items[i]
    i = i % #items + 1
    c.current = items[i]
    return v
  end)
  c.current = items[1]
  return c
end)

_M.GLOBALS = GLOBALS

return _M
