-- moonlm.template.runtime: what compiled templates do to values, with Python's semantics:
-- truthiness, == and < across ints, floats, strings and sequences, `in`, attribute and item
-- lookup (methods come bound from the registries below), slicing, arithmetic (Markup's
-- escaping included), and string formatting ("%s" % x, "{}".format(x)). Also the work
-- budgets that keep one render from running away. Errors are raised with value.fail.

local json = require "moonlm.json"
local text = require "moonlm.template.text"
local value = require "moonlm.template.value"

local _M = {}

local type, next, tonumber = type, next, tonumber
local setmetatable, getmetatable, error, rawget = setmetatable, getmetatable, error, rawget
local byte, char, find, sub, format, gsub, rep, match =
  string.byte, string.char, string.find, string.sub, string.format, string.gsub, string.rep,
  string.match
local concat = table.concat
local floor, huge, min = math.floor, math.huge, math.min
local math_type = math.type

local null, array_mt, object_mt, float_mt = json.null, json.array_mt, json.object_mt, json.float_mt
local jkeys, float_repr, number_str = json.keys, json.float_repr, json.number_str
local utf8_char, mkfloat = json.utf8_char, json.float
local is_ascii, uchars, ulen = text.is_ascii, text.uchars, text.ulen
local tuple_mt, undef_mt, bound_mt, markup_mt = value.tuple_mt, value.undef_mt, value.bound_mt, value.markup_mt
local kind, pytype, fail, undef, fail_undef = value.kind, value.pytype, value.fail, value.undef, value.fail_undef
local list, markup, tuple, escape_html, unmark = value.list, value.markup, value.tuple, value.escape_html, value.unmark
local numval, toint, tostr, repr = value.numval, value.toint, value.tostr, value.repr

-- The render budget lives in value.lua (LIMITS, spend, check_len, grow, limits_swap).
local spend, check_len, grow, limits_swap = value.spend, value.check_len, value.grow, value.limits_swap

-- Registries, filled as their modules load: methods.lua (STR_, LIST_, DICT_, TUPLE_METHODS,
-- LOOP_ATTR), filters.lua (FILTERS), tests.lua (TESTS). getattr binds methods from here,
-- and filters and tests reach each other through here (select uses tests, `is filter`).
local STR_METHODS, LIST_METHODS, DICT_METHODS, TUPLE_METHODS, LOOP_ATTR = {}, {}, {}, {}, {}
local FILTERS, TESTS = {}, {}

local EMPTY = setmetatable({}, { __newindex = function() error("internal: EMPTY is read-only") end })

local function truthy(v)
  local t = type(v)
  if t == "boolean" then return v end
  if t == "string" then return v ~= "" end
  if t == "number" then return v ~= 0 end
  if t == "table" then
    local mt = getmetatable(v)
    if mt == nil or mt == array_mt or mt == object_mt or mt == tuple_mt then return next(v) ~= nil end
    if mt == undef_mt or v == null then return false end
    if mt == float_mt then return v[1] ~= 0 end
    if mt == markup_mt then return v[1] ~= "" end
    return true
  end
  return v ~= nil
end

local function count_keys(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n
end

local function eq(a, b, depth)
  if a == b then return true end
  local ta, tb = type(a), type(b)
  if ta == "table" and getmetatable(a) == markup_mt then a, ta = a[1], "string" end
  if tb == "table" and getmetatable(b) == markup_mt then b, tb = b[1], "string" end
  if a == b then return true end
  if ta == "string" or tb == "string" then return false end
  local x = numval(a)
  if x ~= nil then
    local y = numval(b)
    return y ~= nil and x == y
  end
  if ta ~= "table" or tb ~= "table" then return false end
  local ka, kb = kind(a), kind(b)
  if ka ~= kb then return false end
  depth = (depth or 0) + 1
  if depth > 100 then fail("RecursionError: maximum recursion depth exceeded in comparison") end
  if ka == "list" or ka == "tuple" then
    local n = #a
    if #b ~= n then return false end
    spend(n)
    for i = 1, n do if not eq(a[i], b[i], depth) then return false end end
    return true
  elseif ka == "dict" then
    if count_keys(a) ~= count_keys(b) then return false end
    for k, v in next, a do
      local w = b[k]
      if w == nil or not eq(v, w, depth) then return false end
    end
    return true
  end
  return ka == "undef"
end

local function lt(a, b, op)
  a, b = unmark(a), unmark(b)
  local x, y = numval(a), numval(b)
  if x ~= nil and y ~= nil then return x < y end
  if type(a) == "string" and type(b) == "string" then return a < b end
  local ka, kb = kind(a), kind(b)
  if ka == "undef" then fail_undef(a) end
  if kb == "undef" then fail_undef(b) end
  if ka == kb and (ka == "list" or ka == "tuple") then
    for i = 1, #a < #b and #a or #b do
      if not eq(a[i], b[i]) then return lt(a[i], b[i], op) end
    end
    return #a < #b
  end
  fail("TypeError: '%s' not supported between instances of '%s' and '%s'", op or "<", pytype(a), pytype(b))
end

local COMPARE = {
  eq = eq,
  ne = function(a, b) return not eq(a, b) end,
  lt = function(a, b) return lt(a, b, "<") end,
  gt = function(a, b) return lt(b, a, ">") end,
  le = function(a, b) return lt(a, b, "<=") or eq(a, b) end,
  ge = function(a, b) return lt(b, a, ">=") or eq(a, b) end,
}

-- Lua table key for a value used as a dict key
local function keyof(k)
  if type(k) == "table" then
    local mt = getmetatable(k)
    if mt == float_mt or mt == markup_mt then return k[1] end
    if mt ~= undef_mt and k ~= null then fail("TypeError: unhashable type: '%s'", pytype(k)) end
  end
  return k
end

local function contains(c, item)
  c, item = unmark(c), unmark(item)
  local k = kind(c)
  if k == "str" then
    if type(item) ~= "string" then
      fail("TypeError: 'in <string>' requires string as left operand, not %s", pytype(item))
    end
    return find(c, item, 1, true) ~= nil
  elseif k == "list" or k == "tuple" then
    spend(#c)
    for i = 1, #c do if eq(c[i], item) then return true end end
    return false
  elseif k == "dict" then
    local key = keyof(item)
    return key ~= nil and c[key] ~= nil
  elseif k == "undef" then
    return false
  elseif k == "iter" then -- consumes up to the match, as Python does
    local items = c.items
    for i = c.pos, #items do
      if eq(items[i], item) then c.pos = i + 1; return true end
    end
    c.pos = #items + 1
    return false
  end
  fail("TypeError: argument of type '%s' is not iterable", pytype(c))
end

-- items of an iterable as an array (dicts give their keys, strings their characters)
local function iter_items(v)
  local k = kind(v)
  if type(v) == "table" then spend(#v) end
  if k == "iter" then
    local out, m, items = {}, 0, v.items
    for i = v.pos, #items do m = m + 1; out[m] = items[i] end
    v.pos = #items + 1
    return out, m
  end
  if k == "markup" then return uchars(v[1]) end
  if k == "list" or k == "tuple" then return v, #v end
  if k == "dict" then
    local ks, copy = jkeys(v), {}
    for i = 1, #ks do copy[i] = ks[i] end
    return copy, #ks
  end
  if k == "str" then return uchars(v) end
  if k == "undef" then return EMPTY, 0 end
  fail("TypeError: '%s' object is not iterable", pytype(v))
end

local function bound(self, fn, name) return setmetatable({ self = self, fn = fn, name = name }, bound_mt) end

local function getattr(o, name)
  o = unmark(o)
  local k = kind(o)
  if k == "dict" then
    local m = DICT_METHODS[name]
    if m then return bound(o, m, name) end
    local v = o[name]
    if v ~= nil then return v end
  elseif k == "undef" then
    fail_undef(o)
  elseif k == "str" then
    local m = STR_METHODS[name]
    if m then return bound(o, m, name) end
  elseif k == "list" then
    local m = LIST_METHODS[name]
    if m then return bound(o, m, name) end
  elseif k == "tuple" then
    local m = TUPLE_METHODS[name]
    if m then return bound(o, m, name) end
  elseif k == "ns" then
    local v = rawget(o, name)
    if v ~= nil then return v end
  elseif k == "loop" then
    local f = LOOP_ATTR[name]
    if f then return f(o) end
  elseif k == "macro" and name == "name" then
    return o.name
  end
  return undef(name, pytype(o))
end

local function getitem(o, key)
  o, key = unmark(o), unmark(key)
  local k = kind(o)
  if k == "list" or k == "tuple" or k == "str" then
    local i, fl = numval(key)
    if i ~= nil and not fl then
      local n, chars
      if k == "str" then
        if is_ascii(o) then n = #o else chars, n = uchars(o) end
      else
        n = #o
      end
      if i < 0 then i = i + n end
      if i < 0 or i >= n then return undef(key, pytype(o)) end
      if k ~= "str" then return o[i + 1] end
      if chars then return chars[i + 1] end
      return sub(o, i + 1, i + 1)
    end
    if type(key) == "string" then return getattr(o, key) end
  elseif k == "dict" then
    local v = type(key) ~= "table" and o[key] or getmetatable(key) == float_mt and o[key[1]] or nil
    if v ~= nil then return v end
    if type(key) == "string" and DICT_METHODS[key] then return bound(o, DICT_METHODS[key], key) end
    return undef(key, "dict")
  elseif k == "undef" then
    fail_undef(o)
  elseif type(key) == "string" then
    return getattr(o, key)
  end
  return undef(key, pytype(o))
end

-- Python slice bounds for a sequence of length n -> start, stop, step (0-based)
local function slice_bounds(n, a, b, c)
  local step = c or 1
  if step == 0 then fail("ValueError: slice step cannot be zero") end
  local lo, hi = 0, n
  if step < 0 then lo, hi = -1, n - 1 end
  local function adj(x, default)
    if x == nil then return default end
    if x < 0 then
      x = x + n
      if x < lo then x = lo end
    elseif x > hi then
      x = hi
    end
    return x
  end
  return adj(a, step < 0 and hi or lo), adj(b, step < 0 and lo or hi), step
end

local function slice_index(v)
  if v == nil or v == null then return nil end
  local x, fl = numval(v)
  if x == nil or fl then fail("TypeError: slice indices must be integers or None") end
  return x
end

local function slice(o, a, b, c)
  o = unmark(o)
  local k = kind(o)
  if k == "undef" then fail_undef(o) end
  a, b, c = slice_index(a), slice_index(b), slice_index(c)
  local items, n
  if k == "str" then
    if is_ascii(o) and (c == nil or c == 1) then
      local i, j = slice_bounds(#o, a, b, 1)
      return sub(o, i + 1, j)
    end
    items, n = uchars(o)
  elseif k == "list" or k == "tuple" then
    items, n = o, #o
  else
    if k == "dict" then fail("TypeError: unhashable type: 'slice'") end
    fail("TypeError: '%s' object is not subscriptable", pytype(o))
  end
  local start, stop, step = slice_bounds(n, a, b, c)
  spend(n)
  local out, m, i = {}, 0, start
  if step > 0 then
    while i < stop do m = m + 1; out[m] = items[i + 1]; i = i + step end
  else
    while i > stop do m = m + 1; out[m] = items[i + 1]; i = i + step end
  end
  if k == "str" then return concat(out, "", 1, m) end
  if k == "tuple" then return tuple(out) end
  return list(out)
end

-- 5.4 integer floor division; LuaJIT has only doubles (and no // syntax)
local idiv = math_type and load("return function(a, b) return a // b end")()

local percent_format -- forward


local function repeat_seq(s, n, k)
  local cnt = floor(n)
  if cnt <= 0 then return k == "str" and "" or (k == "tuple" and tuple({}) or list({})) end
  if k == "str" then check_len(#s * cnt); return rep(s, cnt) end
  grow(#s * cnt)
  local out, m = {}, 0
  for _ = 1, cnt do for i = 1, #s do m = m + 1; out[m] = s[i] end end
  return k == "tuple" and tuple(out) or list(out)
end

local markup_binop -- forward

local function binop(op, a, b)
  if type(a) == "table" and getmetatable(a) == markup_mt
      or type(b) == "table" and getmetatable(b) == markup_mt then
    return markup_binop(op, a, b)
  end
  local x, fx = numval(a)
  local y, fy = numval(b)
  if x ~= nil and y ~= nil then
    local fl = fx or fy
    local r
    if op == "+" then r = x + y
    elseif op == "-" then r = x - y
    elseif op == "*" then r = x * y
    elseif op == "/" then
      if y == 0 then fail("ZeroDivisionError: division by zero") end
      return mkfloat(x / y)
    elseif op == "//" then
      if y == 0 then fail("ZeroDivisionError: integer division or modulo by zero") end
      if idiv and not fl then return idiv(x, y) end
      r = floor(x / y)
    elseif op == "%" then
      if y == 0 then fail("ZeroDivisionError: integer modulo by zero") end
      r = x % y
    else -- "**"
      if x == 0 and y < 0 then fail("ZeroDivisionError: 0.0 cannot be raised to a negative power") end
      r = x ^ y
      if not fl and y >= 0 and r > -2 ^ 53 and r < 2 ^ 53 then return toint(r) end
      return mkfloat(r)
    end
    if fl then return mkfloat(r) end
    if r == 0 then return 0 end -- no -0 from int arithmetic (LuaJIT doubles)
    return r
  end
  local ka, kb = kind(a), kind(b)
  if ka == "undef" then fail_undef(a) end
  if kb == "undef" then fail_undef(b) end
  if op == "+" then
    if ka == "str" and kb == "str" then check_len(#a + #b); return a .. b end
    if ka == kb and (ka == "list" or ka == "tuple") then
      grow(#a + #b)
      local out, n = {}, #a
      for i = 1, n do out[i] = a[i] end
      for i = 1, #b do out[n + i] = b[i] end
      return ka == "tuple" and tuple(out) or list(out)
    end
  elseif op == "*" then
    if (ka == "str" or ka == "list" or ka == "tuple") and y ~= nil and not fy then return repeat_seq(a, y, ka) end
    if (kb == "str" or kb == "list" or kb == "tuple") and x ~= nil and not fx then return repeat_seq(b, x, kb) end
  elseif op == "%" and ka == "str" then
    return percent_format(a, b)
  end
  fail("TypeError: unsupported operand type(s) for %s: '%s' and '%s'", op, pytype(a), pytype(b))
end

-- Markup + str escapes the str; Markup % args escapes string args; Markup * n repeats
markup_binop = function(op, a, b)
  local ma = type(a) == "table" and getmetatable(a) == markup_mt
  local mb = type(b) == "table" and getmetatable(b) == markup_mt
  if op == "+" then
    local x, y = unmark(a), unmark(b)
    if type(x) == "string" and type(y) == "string" then
      check_len(#x + #y)
      return markup((ma and x or escape_html(x)) .. (mb and y or escape_html(y)))
    end
  elseif op == "%" and ma then
    local args = b
    local k = kind(b)
    if k == "str" then args = escape_html(b)
    elseif k == "tuple" or k == "list" then
      local t = {}
      for i = 1, #b do t[i] = type(b[i]) == "string" and escape_html(b[i]) or unmark(b[i]) end
      args = k == "tuple" and tuple(t) or list(t)
    end
    return markup(binop("%", a[1], args))
  elseif op == "*" then
    local r = binop("*", unmark(a), unmark(b))
    if type(r) == "string" then return markup(r) end
    return r
  end
  return binop(op, unmark(a), unmark(b))
end

local function negate(v)
  local x, fl = numval(v)
  if x == nil then
    if kind(v) == "undef" then fail_undef(v) end
    fail("TypeError: bad operand type for unary -: '%s'", pytype(v))
  end
  if fl then return mkfloat(-x) end
  if x == 0 then return 0 end
  return -x
end

---------------------------------------------------------------------------------------------
-- String formatting: printf-style ("%s" % x) and str.format ("{}".format(x))

-- Python's round(x, p): half to even on the exact decimal value of the double, which
-- string.format("%.Nf") prints exactly on both 5.4 (libc) and LuaJIT.
local function round_half_even(x, p)
  if x ~= x or x == huge or x == -huge then return x end
  if p < 0 then
    local m = 10 ^ -p
    return round_half_even(x / m, 0) * m
  end
  local neg = x < 0
  local ip, fp = match(format("%." .. (p + 25) .. "f", neg and -x or x), "^(%d+)%.(%d+)$")
  local digits, rest = ip .. sub(fp, 1, p), sub(fp, p + 1)
  local first = byte(rest, 1) - 48
  local up = first > 5 or first == 5 and (find(rest, "[1-9]", 2) ~= nil or byte(digits, -1) % 2 == 1)
  if up then
    local i = #digits
    while i > 0 and byte(digits, i) == 57 do i = i - 1 end
    if i == 0 then digits = "1" .. rep("0", #digits)
    else digits = sub(digits, 1, i - 1) .. char(byte(digits, i) + 1) .. rep("0", #digits - i) end
  end
  local r = tonumber(sub(digits, 1, #digits - p) .. "." .. sub(digits, #digits - p + 1) .. "0")
  return neg and -r or r
end

local brace_format, pad
do
  local function int_of(v, what)
    local x, fl = numval(v)
    if x == nil then fail("TypeError: %s format: a real number is required, not %s", what, pytype(v)) end
    if fl then x = toint(x) end
    return x
  end

  -- pad s (counted in code points) to width with fill, align '<', '>' or '^'
  function pad(s, width, align, fill)
    local n = ulen(s)
    if not width or n >= width then return s end
    local m = width - n
    check_len(m * #fill)
    if align == "<" then return s .. rep(fill, m) end
    if align == "^" then
      local l = floor(m / 2)
      return rep(fill, l) .. s .. rep(fill, m - l)
    end
    return rep(fill, m) .. s
  end

  local function fmt_number(v, conv, prec, sign, alt)
    local x, fl = numval(v)
    if x == nil then fail("ValueError: Unknown format code '%s' for object of type '%s'", conv, pytype(v)) end
    local s
    if conv == "d" then
      if fl then fail("ValueError: Unknown format code 'd' for object of type 'float'") end
      s = format("%d", x)
    elseif conv == "x" or conv == "X" or conv == "o" then
      s = format((alt and "%#" or "%") .. conv, int_of(v, conv))
    elseif conv == "%" then
      s = format("%." .. (prec or 6) .. "f%%", x * 100)
    elseif conv and conv ~= "" then
      if not math_type and (conv == "f" or conv == "F") then x = round_half_even(x, prec or 6) end
      s = format("%" .. (alt and "#" or "") .. "." .. (prec or 6) .. conv, x)
    elseif prec then
      s = format("%." .. prec .. "g", x)
      if fl and not find(s, "[.eni]") then s = s .. ".0" end
    else
      s = fl and float_repr(x) or number_str(x)
    end
    if (sign == "+" or sign == " ") and sub(s, 1, 1) ~= "-" then s = sign .. s end
    return s
  end

  -- Python format-spec mini-language: [[fill]align][sign][#][0][width][,][.precision][type]
  local function format_spec(v, spec)
    if spec == "" then return tostr(v) end
    local fill, align = " ", nil
    local c1, c2 = sub(spec, 1, 1), sub(spec, 2, 2)
    if c2 ~= "" and find("<>^=", c2, 1, true) then fill, align, spec = c1, c2, sub(spec, 3)
    elseif find("<>^=", c1, 1, true) and c1 ~= "" then align, spec = c1, sub(spec, 2) end
    local sign, alt, zero, width, prec, conv =
      match(spec, "^([-+ ]?)(#?)(0?)(%d*),?%.?(%d*)([%a%%]?)$")
    if not sign then fail("ValueError: Invalid format specifier") end
    width, prec = tonumber(width), tonumber(prec)
    if type(v) == "string" or kind(v) ~= "num" and kind(v) ~= "bool" then
      local s = tostr(v)
      if prec then s = concat((uchars(s)), "", 1, prec < ulen(s) and prec or ulen(s)) end
      return pad(s, width, align or "<", fill)
    end
    local s = fmt_number(v, conv, prec, sign, alt ~= "")
    if zero ~= "" and not align then
      local sg, rest = match(s, "^([-+ ]?)(.*)$")
      return sg .. pad(rest, width and width - #sg, ">", "0")
    end
    return pad(s, width, align or ">", fill)
  end

  function brace_format(fmt, args, kw)
    local auto = 0
    local out = gsub(fmt, "(%b{})", function(field)
      local body = sub(field, 2, -2)
      local name, spec = match(body, "^([^:!]*)!?%a?:?(.*)$")
      local v
      if name == "" then auto = auto + 1; v = args[auto]
      elseif find(name, "^%d+$") then v = args[tonumber(name) + 1]
      else v = kw and kw[name] end
      if v == nil then fail("KeyError/IndexError: replacement field {%s} has no value", name) end
      if find(body, "!r", 1, true) then v = repr(v) end
      return format_spec(v, spec)
    end)
    return out
  end

  percent_format = function(fmt, args)
    local vals = kind(args) == "tuple" and args or { args }
    local out, n, i, ai, used_name = {}, 0, 1, 0, false
    while true do
      local j = find(fmt, "%", i, true)
      if not j then n = n + 1; out[n] = sub(fmt, i); break end
      n = n + 1; out[n] = sub(fmt, i, j - 1)
      local p, name = j + 1, nil
      if sub(fmt, p, p) == "(" then
        local q = find(fmt, ")", p, true)
        if not q then fail("ValueError: incomplete format key") end
        name, p = sub(fmt, p + 1, q - 1), q + 1
      end
      local flags, width, prec, conv = match(fmt, "^([-+ #0]*)(%d*)%.?(%d*)(.?)", p)
      p = p + #flags + #width + (find(fmt, "^[-+ #0]*%d*%.", p) and 1 or 0) + #prec + 1
      if conv == "%" then
        n = n + 1; out[n] = "%"
      else
        local v
        if name then v = getitem(args, name); used_name = true
        else ai = ai + 1; v = vals[ai] end
        if v == nil then fail("TypeError: not enough arguments for format string") end
        local s
        if conv == "s" or conv == "r" or conv == "a" then
          s = conv == "s" and tostr(v) or repr(v)
          if prec ~= "" then s = concat((uchars(s)), "", 1, min(tonumber(prec), ulen(s))) end
        elseif conv == "d" or conv == "i" or conv == "u" then
          s = format("%" .. flags .. width .. "d", int_of(v, "%d"))
        elseif conv == "c" then s = type(v) == "string" and v or utf8_char(int_of(v, "%c"))
        elseif find("xXo", conv, 1, true) and conv ~= "" then
          s = format("%" .. flags .. width .. conv, int_of(v, "%" .. conv))
        elseif find("eEfFgG", conv, 1, true) and conv ~= "" then
          local x = numval(v)
          if x == nil then fail("TypeError: must be real number, not %s", pytype(v)) end
          if not math_type and (conv == "f" or conv == "F") then x = round_half_even(x, tonumber(prec) or 6) end
          s = format("%" .. flags .. width .. (prec ~= "" and ("." .. prec) or "") .. conv, x)
        else
          fail("ValueError: unsupported format character '%s'", conv)
        end
        local w = tonumber(width)
        if w then s = pad(s, w, find(flags, "-", 1, true) and "<" or ">", " ") end
        n = n + 1; out[n] = s
      end
      i = p
    end
    local ka = kind(args)
    if ka == "tuple" and ai < #vals or ai == 0 and not used_name
        and (ka == "str" or ka == "num" or ka == "bool" or ka == "none") then
      fail("TypeError: not all arguments converted during string formatting")
    end
    return concat(out, "", 1, n)
  end
end

_M.spend, _M.check_len, _M.grow, _M.limits_swap = spend, check_len, grow, limits_swap
_M.STR_METHODS, _M.LIST_METHODS, _M.DICT_METHODS = STR_METHODS, LIST_METHODS, DICT_METHODS
_M.TUPLE_METHODS, _M.LOOP_ATTR = TUPLE_METHODS, LOOP_ATTR
_M.FILTERS, _M.TESTS = FILTERS, TESTS
_M.EMPTY, _M.truthy, _M.count_keys = EMPTY, truthy, count_keys
_M.eq, _M.lt, _M.COMPARE, _M.keyof, _M.contains = eq, lt, COMPARE, keyof, contains
_M.iter_items, _M.bound, _M.getattr, _M.getitem = iter_items, bound, getattr, getitem
_M.slice_bounds, _M.slice, _M.binop, _M.negate = slice_bounds, slice, binop, negate
_M.round_half_even, _M.pad, _M.brace_format = round_half_even, pad, brace_format

return _M
