-- moonlm.template.methods: the methods templates call on values, fn(ctx, self, args,
-- kwargs): str (strip, split, replace, format, find, ...), list (append, pop, ...), dict
-- (items, get, update, ...) and tuple (index, count), and the attributes of a for-loop's
-- `loop`. Loading this fills runtime.lua's registries. Also exports the argument helpers
-- (arg, want_str, opt_int) and the methods that filters reuse (replace, dict_items).

local json = require "moonlm.json"
local text = require "moonlm.template.text"
local value = require "moonlm.template.value"
local R = require "moonlm.template.runtime"

local _M = {}

local type, ipairs = type, ipairs
local byte, find, sub, rep, match = string.byte, string.find, string.sub, string.rep, string.match
local concat, tinsert, tremove = table.concat, table.insert, table.remove
local floor = math.floor

local null, jkeys, jset = json.null, json.keys, json.set
local uchars, ulen, UWS, is_ascii_ws = text.uchars, text.ulen, text.UWS, text.is_ascii_ws
local strip, upper, lower, is_cased = text.strip, text.upper, text.lower, text.is_cased
local kind, pytype, fail, undef = value.kind, value.pytype, value.fail, value.undef
local list, tuple, dict, numval, repr = value.list, value.tuple, value.dict, value.numval, value.repr
local STR_METHODS, LIST_METHODS, DICT_METHODS = R.STR_METHODS, R.LIST_METHODS, R.DICT_METHODS
local TUPLE_METHODS, LOOP_ATTR = R.TUPLE_METHODS, R.LOOP_ATTR
local check_len, truthy, eq, keyof, iter_items = R.check_len, R.truthy, R.eq, R.keyof, R.iter_items
local bound, slice_bounds, pad, brace_format = R.bound, R.slice_bounds, R.pad, R.brace_format

local arg, want_str, opt_int, replace, dict_items

function arg(args, kw, i, name, default)
  local v = args[i]
  if v == nil and kw then v = kw[name] end
  if v == nil or v == null then return default end -- none counts as not given
  return v
end

function want_str(v, what)
  if type(v) ~= "string" then fail("TypeError: %s must be str, not %s", what, pytype(v)) end
  return v
end

function opt_int(v, what)
  if v == nil or v == null then return nil end
  local x, fl = numval(v)
  if x == nil or fl then fail("TypeError: %s must be an integer, not %s", what, pytype(v)) end
  return x
end

local function strip_method(left, right)
  return function(_, s, args, kw)
    local chars = arg(args, kw, 1, "chars")
    if chars ~= nil then chars = want_str(chars, "strip arg") end
    return strip(s, chars, left, right)
  end
end
STR_METHODS.strip = strip_method(true, true)
STR_METHODS.lstrip = strip_method(true, false)
STR_METHODS.rstrip = strip_method(false, true)

-- split on whitespace runs (sep == nil) or on sep; maxsplit < 0: no limit
local function split(s, sep, maxsplit, from_right)
  local parts = {}
  if sep == nil then
    local words, n = {}, 0
    local i = 1
    local len = #s
    while true do
      local rest = strip(sub(s, i), nil, true, false)
      if rest == "" then break end
      i = len - #rest + 1
      if maxsplit >= 0 and n >= maxsplit and not from_right then n = n + 1; words[n] = rest; break end
      local j = i
      while j <= len do
        local c = byte(s, j)
        if is_ascii_ws(c) then break end
        if c >= 0xC2 and (UWS[sub(s, j, j + 1)] or UWS[sub(s, j, j + 2)]) then break end
        j = j + 1
      end
      n = n + 1; words[n] = sub(s, i, j - 1)
      i = j
    end
    if from_right and maxsplit >= 0 and n > maxsplit then
      -- rsplit(None, k): rejoin the leading words with the original separators
      local keep = n - maxsplit
      local k, pos = 0, 1
      for w = 1, keep do local a, b = find(s, words[w], pos, true); k = b; pos = b + 1 end
      local head = sub(s, 1, k)
      local out = { head }
      for w = keep + 1, n do out[#out + 1] = words[w] end
      return list(out)
    end
    return list(words)
  end
  if sep == "" then fail("ValueError: empty separator") end
  if from_right and maxsplit >= 0 then
    local pieces = split(s, sep, -1, false)
    local n = #pieces
    if n <= maxsplit + 1 then return pieces end
    local head = concat(pieces, sep, 1, n - maxsplit)
    local out = { head }
    for i = n - maxsplit + 1, n do out[#out + 1] = pieces[i] end
    return list(out)
  end
  local n, i = 0, 1
  while true do
    if maxsplit >= 0 and n >= maxsplit then break end
    local a, b = find(s, sep, i, true)
    if not a then break end
    n = n + 1; parts[n] = sub(s, i, a - 1)
    i = b + 1
  end
  parts[n + 1] = sub(s, i)
  return list(parts)
end

STR_METHODS.split = function(_, s, args, kw)
  local sep = arg(args, kw, 1, "sep")
  if sep ~= nil then want_str(sep, "sep") end
  return split(s, sep, opt_int(arg(args, kw, 2, "maxsplit"), "maxsplit") or -1, false)
end
STR_METHODS.rsplit = function(_, s, args, kw)
  local sep = arg(args, kw, 1, "sep")
  if sep ~= nil then want_str(sep, "sep") end
  return split(s, sep, opt_int(arg(args, kw, 2, "maxsplit"), "maxsplit") or -1, true)
end

STR_METHODS.splitlines = function(_, s, args, kw)
  local keep = truthy(arg(args, kw, 1, "keepends", false))
  local out, n, i = {}, 0, 1
  while i <= #s do
    local a, b = find(s, "\r?[\n\r\v\f\28-\30]", i)
    if not a then n = n + 1; out[n] = sub(s, i); break end
    if sub(s, a, a) == "\r" and sub(s, a + 1, a + 1) == "\n" then b = a + 1 end
    n = n + 1; out[n] = keep and sub(s, i, b) or sub(s, i, a - 1)
    i = b + 1
  end
  return list(out)
end

local function affix_method(at_end)
  return function(_, s, args, kw)
    local x = arg(args, kw, 1, at_end and "suffix" or "prefix")
    local cands = kind(x) == "tuple" and x or { x }
    for i = 1, #cands do
      local p = want_str(cands[i], at_end and "endswith arg" or "startswith arg")
      if at_end then
        if p == "" or sub(s, -#p) == p then return true end
      elseif sub(s, 1, #p) == p then
        return true
      end
    end
    return false
  end
end
STR_METHODS.startswith = affix_method(false)
STR_METHODS.endswith = affix_method(true)

function replace(s, old, new, count)
  count = count or -1
  if old == "" then
    local cs, n = uchars(s)
    check_len(#s + (n + 1) * #new)
    local out, m = { new }, 1
    for i = 1, n do
      if count >= 0 and m > count then out[#out + 1] = concat(cs, "", i); break end
      out[#out + 1] = cs[i]
      if count < 0 or m < count then out[#out + 1] = new end
      m = m + 1
    end
    return concat(out)
  end
  local out, n, i, done = {}, 0, 1, 0
  while count < 0 or done < count do
    local a, b = find(s, old, i, true)
    if not a then break end
    n = n + 1; out[n] = sub(s, i, a - 1)
    n = n + 1; out[n] = new
    i = b + 1
    done = done + 1
  end
  n = n + 1; out[n] = sub(s, i)
  check_len(#s + done * (#new - #old)) -- before building it
  return concat(out, "", 1, n)
end

STR_METHODS.replace = function(_, s, args, kw)
  local old = want_str(arg(args, kw, 1, "old"), "replace arg 1")
  local new = want_str(arg(args, kw, 2, "new"), "replace arg 2")
  return replace(s, old, new, opt_int(arg(args, kw, 3, "count"), "count"))
end

STR_METHODS.upper = function(_, s) return upper(s) end
STR_METHODS.lower = function(_, s) return lower(s) end
STR_METHODS.capitalize = function(_, s)
  local cs, n = uchars(s)
  if n == 0 then return s end
  return upper(cs[1]) .. lower(concat(cs, "", 2))
end
STR_METHODS.title = function(_, s)
  local cs, n = uchars(s)
  local prev_cased = false
  for i = 1, n do
    local c = cs[i]
    local cased = is_cased(c)
    if cased then cs[i] = prev_cased and lower(c) or upper(c) end
    prev_cased = cased
  end
  return concat(cs)
end
STR_METHODS.swapcase = function(_, s)
  local cs, n = uchars(s)
  for i = 1, n do
    local u = upper(cs[i])
    cs[i] = u ~= cs[i] and u or lower(cs[i])
  end
  return concat(cs)
end

-- code-point index of byte position b in s
local function cp_index(s, b) return ulen(sub(s, 1, b - 1)) end

-- the part of s between code points [start, end) as Python's find/count see it
local function window(s, args, kw, first)
  local a, b = opt_int(arg(args, kw, first, "start"), "start"), opt_int(arg(args, kw, first + 1, "end"), "end")
  if a == nil and b == nil then return s, 0 end
  local cs, n = uchars(s)
  local i, j = slice_bounds(n, a, b, 1)
  if j < i then j = i end
  return concat(cs, "", i + 1, j), i
end

local function find_method(from_right, must)
  return function(_, s, args, kw)
    local x = want_str(arg(args, kw, 1, "sub"), "find arg")
    local w, off = window(s, args, kw, 2)
    local pos
    if from_right then
      local i = 1
      while true do
        local a = find(w, x, i, true)
        if not a or a > #w then break end
        pos = a
        i = a + 1
      end
    else
      pos = find(w, x, 1, true)
    end
    if not pos then
      if must then fail("ValueError: substring not found") end
      return -1
    end
    return off + cp_index(w, pos)
  end
end
STR_METHODS.find = find_method(false, false)
STR_METHODS.rfind = find_method(true, false)
STR_METHODS.index = find_method(false, true)
STR_METHODS.rindex = find_method(true, true)

STR_METHODS.count = function(_, s, args, kw)
  local x = want_str(arg(args, kw, 1, "sub"), "count arg")
  local w = window(s, args, kw, 2)
  if x == "" then return ulen(w) + 1 end
  local n, i = 0, 1
  while true do
    local a, b = find(w, x, i, true)
    if not a then return n end
    n = n + 1
    i = b + 1
  end
end

STR_METHODS.join = function(_, s, args, kw)
  local items, n = iter_items(arg(args, kw, 1, "iterable"))
  local parts = {}
  for i = 1, n do
    if type(items[i]) ~= "string" then
      fail("TypeError: sequence item %d: expected str instance, %s found", i - 1, pytype(items[i]))
    end
    parts[i] = items[i]
  end
  value.check_concat(parts, n, s)
  return concat(parts, s, 1, n)
end

STR_METHODS.format = function(_, s, args, kw) return brace_format(s, args, kw) end

local function char_test(pat)
  return function(_, s)
    if s == "" then return false end
    return not find(s, pat)
  end
end
STR_METHODS.isdigit = char_test("%D")
STR_METHODS.isdecimal = char_test("%D")
STR_METHODS.isnumeric = char_test("%D")
STR_METHODS.isalpha = function(_, s)
  if s == "" then return false end
  for _, c in ipairs((uchars(s))) do if not is_cased(c) and #c == 1 then return false end end
  return not find(s, "[%z\1-\64\91-\96\123-\127]")
end
STR_METHODS.isalnum = function(_, s) return s ~= "" and not find(s, "[%z\1-\47\58-\64\91-\96\123-\127]") end
STR_METHODS.isspace = function(_, s) return s ~= "" and strip(s, nil, true, false) == "" end
STR_METHODS.islower = function(_, s) return lower(s) == s and upper(s) ~= s end
STR_METHODS.isupper = function(_, s) return upper(s) == s and lower(s) ~= s end

local function just(align)
  return function(_, s, args, kw)
    local w = opt_int(arg(args, kw, 1, "width"), "width") or 0
    local fill = arg(args, kw, 2, "fillchar", " ")
    return pad(s, w, align, want_str(fill, "fillchar"))
  end
end
STR_METHODS.ljust = just("<")
STR_METHODS.rjust = just(">")
STR_METHODS.center = function(_, s, args, kw)
  local w = opt_int(arg(args, kw, 1, "width"), "width") or 0
  local fill = want_str(arg(args, kw, 2, "fillchar", " "), "fillchar")
  local n = ulen(s)
  if w <= n then return s end
  local m = w - n
  local left = floor(m / 2) + ((m % 2 == 1 and w % 2 == 1) and 1 or 0)
  check_len(#s + m * #fill)
  return rep(fill, left) .. s .. rep(fill, m - left)
end
STR_METHODS.zfill = function(_, s, args, kw)
  local w = opt_int(arg(args, kw, 1, "width"), "width") or 0
  local sg, rest = match(s, "^([-+]?)(.*)$")
  return sg .. pad(rest, w - #sg, ">", "0")
end

local function partition(from_right)
  return function(_, s, args, kw)
    local sep = want_str(arg(args, kw, 1, "sep"), "sep")
    if sep == "" then fail("ValueError: empty separator") end
    local a, b
    if from_right then
      local i = 1
      while true do
        local x, y = find(s, sep, i, true)
        if not x then break end
        a, b, i = x, y, x + 1
      end
      if not a then return tuple({ "", "", s }) end
    else
      a, b = find(s, sep, 1, true)
      if not a then return tuple({ s, "", "" }) end
    end
    return tuple({ sub(s, 1, a - 1), sep, sub(s, b + 1) })
  end
end
STR_METHODS.partition = partition(false)
STR_METHODS.rpartition = partition(true)
STR_METHODS.removeprefix = function(_, s, args)
  local p = want_str(args[1], "prefix")
  if p ~= "" and sub(s, 1, #p) == p then return sub(s, #p + 1) end
  return s
end
STR_METHODS.removesuffix = function(_, s, args)
  local p = want_str(args[1], "suffix")
  if p ~= "" and sub(s, -#p) == p then return sub(s, 1, -#p - 1) end
  return s
end

-- lists (mutating methods are allowed, unlike transformers' immutable sandbox)
LIST_METHODS.append = function(_, l, args) l[#l + 1] = args[1]; return null end
LIST_METHODS.extend = function(_, l, args)
  local items, n = iter_items(args[1])
  local m = #l
  for i = 1, n do l[m + i] = items[i] end
  return null
end
LIST_METHODS.insert = function(_, l, args)
  local n = #l
  local i = opt_int(args[1], "index") or 0
  if i < 0 then i = i + n; if i < 0 then i = 0 end elseif i > n then i = n end
  tinsert(l, i + 1, args[2])
  return null
end
LIST_METHODS.pop = function(_, l, args)
  local n = #l
  if n == 0 then fail("IndexError: pop from empty list") end
  local i = opt_int(args[1], "index") or -1
  if i < 0 then i = i + n end
  if i < 0 or i >= n then fail("IndexError: pop index out of range") end
  return tremove(l, i + 1)
end
local function seq_index(_, l, args)
  for i = 1, #l do if eq(l[i], args[1]) then return i - 1 end end
  fail("ValueError: %s is not in list", repr(args[1]))
end
local function seq_count(_, l, args)
  local n = 0
  for i = 1, #l do if eq(l[i], args[1]) then n = n + 1 end end
  return n
end
LIST_METHODS.index, LIST_METHODS.count = seq_index, seq_count
TUPLE_METHODS.index, TUPLE_METHODS.count = seq_index, seq_count
LIST_METHODS.remove = function(_, l, args)
  local i = seq_index(_, l, args)
  tremove(l, i + 1)
  return null
end
LIST_METHODS.copy = function(_, l)
  local out = {}
  for i = 1, #l do out[i] = l[i] end
  return list(out)
end
LIST_METHODS.reverse = function(_, l)
  local n = #l
  for i = 1, floor(n / 2) do l[i], l[n + 1 - i] = l[n + 1 - i], l[i] end
  return null
end

-- dicts
function dict_items(d)
  local ks, out = jkeys(d), {}
  for i = 1, #ks do out[i] = tuple({ ks[i], d[ks[i]] }) end
  return list(out)
end
DICT_METHODS.items = function(_, d) return dict_items(d) end
DICT_METHODS.keys = function(_, d)
  local ks, out = jkeys(d), {}
  for i = 1, #ks do out[i] = ks[i] end
  return list(out)
end
DICT_METHODS.values = function(_, d)
  local ks, out = jkeys(d), {}
  for i = 1, #ks do out[i] = d[ks[i]] end
  return list(out)
end
DICT_METHODS.get = function(_, d, args, kw)
  local v = d[keyof(args[1])]
  if v ~= nil then return v end
  local default = args[2]
  if default == nil and kw then default = kw.default end
  if default == nil then return null end
  return default
end
DICT_METHODS.copy = function(_, d)
  local out = dict()
  for _, k in ipairs(jkeys(d)) do jset(out, k, d[k]) end
  return out
end
DICT_METHODS.update = function(_, d, args, kw)
  local src = args[1]
  if src ~= nil then
    if kind(src) ~= "dict" then fail("TypeError: dict.update needs a mapping") end
    for _, k in ipairs(jkeys(src)) do jset(d, k, src[k]) end
  end
  if kw then for _, k in ipairs(jkeys(kw)) do jset(d, k, kw[k]) end end
  return null
end
DICT_METHODS.pop = function(_, d, args)
  local k = keyof(args[1])
  local v = d[k]
  if v == nil then
    if args[2] ~= nil then return args[2] end
    fail("KeyError: %s", repr(args[1]))
  end
  jset(d, k, nil)
  return v
end
DICT_METHODS.setdefault = function(_, d, args)
  local k = keyof(args[1])
  local v = d[k]
  if v == nil then v = args[2] or null; jset(d, k, v) end
  return v
end

---------------------------------------------------------------------------------------------
-- loop.*

LOOP_ATTR.index = function(L) return L.i + 1 end
LOOP_ATTR.index0 = function(L) return L.i end
LOOP_ATTR.revindex = function(L) return L.n - L.i end
LOOP_ATTR.revindex0 = function(L) return L.n - L.i - 1 end
LOOP_ATTR.first = function(L) return L.i == 0 end
LOOP_ATTR.last = function(L) return L.i == L.n - 1 end
LOOP_ATTR.length = function(L) return L.n end
LOOP_ATTR.depth = function() return 1 end
LOOP_ATTR.depth0 = function() return 0 end
LOOP_ATTR.previtem = function(L)
  if L.i == 0 then return undef("previtem", "LoopContext") end
  return L.items[L.i]
end
LOOP_ATTR.nextitem = function(L)
  if L.i >= L.n - 1 then return undef("nextitem", "LoopContext") end
  return L.items[L.i + 2]
end
local function loop_cycle(_, L, args)
  if #args == 0 then fail("TypeError: no items for cycling given") end
  return args[L.i % #args + 1]
end
LOOP_ATTR.cycle = function(L) return bound(L, loop_cycle, "cycle") end
local function loop_changed(_, L, args)
  local key, last = list(args), L.changed_last
  L.changed_last = key
  return last == nil or not eq(last, key)
end
LOOP_ATTR.changed = function(L) return bound(L, loop_changed, "changed") end

_M.STR_METHODS, _M.LIST_METHODS, _M.DICT_METHODS = STR_METHODS, LIST_METHODS, DICT_METHODS
_M.TUPLE_METHODS, _M.LOOP_ATTR = TUPLE_METHODS, LOOP_ATTR
_M.arg, _M.want_str, _M.opt_int = arg, want_str, opt_int
_M.replace, _M.dict_items = replace, dict_items

return _M
