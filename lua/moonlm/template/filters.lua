-- moonlm.template.filters: Jinja's filters (`x | trim`, `items | map(attribute='a')`,
-- `v | tojson`, ...), fn(ctx, value, args, kwargs). Loading this fills runtime.lua's
-- FILTERS; MARKUP_FILTERS tells the compiler which filters see a Markup input as such.
-- map, select, unique, ... return one-shot generators, as Jinja does.

local json = require "moonlm.json"
local text = require "moonlm.template.text"
local value = require "moonlm.template.value"
local R = require "moonlm.template.runtime"
local methods = require "moonlm.template.methods"

local _M = {}

local type, next, tonumber, getmetatable = type, next, tonumber, getmetatable
local find, sub, gsub, rep, match, gmatch =
  string.find, string.sub, string.gsub, string.rep, string.match, string.gmatch
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge

local null, mkfloat = json.null, json.float
local uchars, ulen, strip, upper, lower = text.uchars, text.ulen, text.strip, text.upper, text.lower
local markup_mt, kind, pytype, fail, fail_undef = value.markup_mt, value.kind, value.pytype, value.fail, value.fail_undef
local undef, list, gen, markup, tuple = value.undef, value.list, value.gen, value.markup, value.tuple
local escape_html, numval, toint, tostr = value.escape_html, value.numval, value.toint, value.tostr
local FILTERS, TESTS, spend, check_len, EMPTY = R.FILTERS, R.TESTS, R.spend, R.check_len, R.EMPTY
local truthy, count_keys, eq, lt, iter_items = R.truthy, R.count_keys, R.eq, R.lt, R.iter_items
local bound, getattr, getitem, binop, round_half_even = R.bound, R.getattr, R.getitem, R.binop, R.round_half_even
local STR_METHODS, DICT_METHODS = methods.STR_METHODS, methods.DICT_METHODS
local arg, want_str, opt_int, replace, dict_items =
  methods.arg, methods.want_str, methods.opt_int, methods.replace, methods.dict_items

-- filters that take a Markup input as such (the others see its plain string)
local MARKUP_FILTERS = { safe = true, escape = true, e = true, string = true, trim = true,
  upper = true, lower = true, capitalize = true, default = true, d = true, format = true }

-- "a.b.0" -> function(item) -> item["a"]["b"][0] (item lookup first, then attribute)
local function getter(attr)
  if attr == nil or attr == null then return nil end
  local parts = {}
  for p in gmatch(tostr(attr), "[^.]+") do parts[#parts + 1] = tonumber(p) and floor(tonumber(p)) or p end
  return function(v)
    for i = 1, #parts do v = getitem(v, parts[i]) end
    return v
  end
end

local function str_filter(f) return function(_, v) return f(tostr(v)) end end

-- f applied to the string of v; a Markup input gives a Markup result
local function keep_markup(f)
  return function(ctx, v, args, kw)
    if type(v) == "table" and getmetatable(v) == markup_mt then return markup(f(ctx, v[1], args, kw)) end
    return f(ctx, v, args, kw)
  end
end

FILTERS.upper = keep_markup(str_filter(upper))
FILTERS.lower = keep_markup(str_filter(lower))
FILTERS.capitalize = keep_markup(function(ctx, v) return STR_METHODS.capitalize(ctx, tostr(v)) end)
FILTERS.title = function(_, v)
  local s = tostr(v)
  return (gsub(s, "([^-%s({%[<]+)", function(word)
    local cs, n = uchars(word)
    return upper(cs[1]) .. lower(concat(cs, "", 2, n))
  end))
end
FILTERS.trim = keep_markup(function(_, v, args, kw)
  local chars = arg(args, kw, 1, "chars")
  if chars ~= nil then chars = tostr(chars) end
  return strip(tostr(v), chars, true, true)
end)
FILTERS.string = function(_, v)
  if type(v) == "table" and getmetatable(v) == markup_mt then return v end
  return tostr(v)
end
FILTERS.safe = function(_, v)
  if type(v) == "table" and getmetatable(v) == markup_mt then return v end
  return markup(tostr(v))
end
FILTERS.escape = function(_, v)
  if type(v) == "table" and getmetatable(v) == markup_mt then return v end
  return markup(escape_html(tostr(v)))
end
FILTERS.e = FILTERS.escape
FILTERS.forceescape = function(_, v) return markup(escape_html(tostr(v))) end
FILTERS.replace = function(_, v, args, kw)
  local old, new = arg(args, kw, 1, "old"), arg(args, kw, 2, "new")
  return replace(tostr(v), tostr(old), tostr(new), opt_int(arg(args, kw, 3, "count"), "count"))
end
FILTERS.center = function(ctx, v, args, kw)
  return STR_METHODS.center(ctx, tostr(v), { arg(args, kw, 1, "width", 80) })
end
FILTERS.wordcount = function(_, v)
  local n = 0
  for _ in gmatch(tostr(v), "[%w_\128-\255]+") do n = n + 1 end
  return n
end
FILTERS.indent = function(_, v, args, kw)
  local width = arg(args, kw, 1, "width", 4)
  local w = type(width) == "string" and #width or opt_int(width, "width")
  check_len(w)
  local ind = type(width) == "string" and width or rep(" ", w)
  local first, blank = truthy(arg(args, kw, 2, "first", false)), truthy(arg(args, kw, 3, "blank", false))
  local lines = STR_METHODS.splitlines(nil, tostr(v) .. "\n", EMPTY)
  check_len(#tostr(v) + (#lines + 1) * (w + 1)) -- before building it
  local rv
  if blank then
    rv = concat(lines, "\n" .. ind)
  else
    local out = { lines[1] }
    for i = 2, #lines do out[i] = lines[i] ~= "" and ind .. lines[i] or "" end
    rv = concat(out, "\n")
  end
  if first then rv = ind .. rv end
  return rv
end
FILTERS.truncate = function(_, v, args, kw)
  local s = tostr(v)
  local length = opt_int(arg(args, kw, 1, "length", 255), "length")
  local killwords = truthy(arg(args, kw, 2, "killwords", false))
  local ending = tostr(arg(args, kw, 3, "end", "..."))
  local leeway = opt_int(arg(args, kw, 4, "leeway", 5), "leeway")
  local cs, n = uchars(s)
  if n <= length + leeway then return s end
  local keep = length - ulen(ending)
  if keep < 0 then keep = 0 end
  local head = concat(cs, "", 1, keep)
  if not killwords then
    local cut = match(head, "^(.*) ")
    if cut then head = cut end
  end
  return head .. ending
end
FILTERS.format = function(_, v, args, kw)
  local fmt = v
  if not (type(v) == "table" and getmetatable(v) == markup_mt) then fmt = tostr(v) end
  if kw and next(kw) then return binop("%", fmt, kw) end
  return binop("%", fmt, tuple(args))
end

FILTERS.length = function(_, v)
  local k = kind(v)
  if k == "str" then return ulen(v) end
  if k == "list" or k == "tuple" then return #v end
  if k == "dict" then return count_keys(v) end
  if k == "undef" then return 0 end
  fail("TypeError: object of type '%s' has no len()", pytype(v))
end
FILTERS.count = FILTERS.length

FILTERS.default = function(_, v, args, kw)
  local d = args[1]
  if d == nil and kw then d = kw.default_value end
  if d == nil then d = "" end
  if kind(v) == "undef" or (truthy(arg(args, kw, 2, "boolean", false)) and not truthy(v)) then return d end
  return v
end
FILTERS.d = FILTERS.default

FILTERS.join = function(_, v, args, kw)
  local items, n = iter_items(v)
  local get = getter(arg(args, kw, 2, "attribute"))
  local parts = {}
  for i = 1, n do
    local x = items[i]
    if get then x = get(x) end
    parts[i] = tostr(x)
  end
  local sep = tostr(arg(args, kw, 1, "d", ""))
  value.check_concat(parts, n, sep)
  return concat(parts, sep, 1, n)
end

FILTERS.list = function(_, v)
  local items, n = iter_items(v)
  local out = {}
  for i = 1, n do out[i] = items[i] end
  return list(out)
end

FILTERS.items = function(_, v)
  local k = kind(v)
  if k == "undef" then return gen({}) end
  if k ~= "dict" then fail("TypeError: Can only get item pairs from a mapping.") end
  return gen(dict_items(v))
end

FILTERS.first = function(_, v)
  if kind(v) == "iter" then -- takes one item only
    local x = v.items[v.pos]
    if x ~= nil then v.pos = v.pos + 1; return x end
  end
  local items, n = iter_items(v)
  if n == 0 then local u = undef("first"); u.hint = "No first item, sequence was empty."; return u end
  return items[1]
end
FILTERS.last = function(_, v)
  if kind(v) == "iter" then fail("TypeError: 'generator' object is not reversible") end
  local items, n = iter_items(v)
  if n == 0 then local u = undef("last"); u.hint = "No last item, sequence was empty."; return u end
  return items[n]
end

FILTERS.reverse = function(_, v)
  if type(v) == "string" then
    local cs, n = uchars(v)
    local out = {}
    for i = 1, n do out[i] = cs[n + 1 - i] end
    return concat(out)
  end
  local was_iter = kind(v) == "iter"
  local items, n = iter_items(v)
  local out = {}
  for i = 1, n do out[i] = items[n + 1 - i] end
  if was_iter then return list(out) end -- Jinja falls back to a reversed list
  return gen(out)
end

-- map and the select family yield nothing for a falsy input (none, undefined, empty)
FILTERS.map = function(ctx, v, args, kw)
  if not truthy(v) then return gen({}) end
  local items, n = iter_items(v)
  local out = {}
  if kw and kw.attribute ~= nil then
    local get, default = getter(kw.attribute), kw.default
    for i = 1, n do
      local x = get(items[i])
      if default ~= nil and kind(x) == "undef" then x = default end
      out[i] = x
    end
    return gen(out)
  end
  local name = args[1]
  local f = FILTERS[name]
  if not f then fail("unknown filter '%s'", tostr(name)) end
  local rest = {}
  for i = 2, #args do rest[i - 1] = args[i] end
  for i = 1, n do out[i] = f(ctx, items[i], rest, kw) end
  return gen(out)
end

local function selector(by_attr, want)
  return function(_, v, args)
    if not truthy(v) then return gen({}) end
    local items, n = iter_items(v)
    local get, ti = nil, 1
    if by_attr then get, ti = getter(args[1]), 2 end
    local test, targs = nil, {}
    if args[ti] ~= nil then
      test = TESTS[tostr(args[ti])]
      if not test then fail("unknown test '%s'", tostr(args[ti])) end
      for i = ti + 1, #args do targs[#targs + 1] = args[i] end
    end
    local out, m = {}, 0
    for i = 1, n do
      local x = items[i]
      if get then x = get(x) end
      local ok
      if test then ok = test(x, targs) and true or false else ok = truthy(x) end
      if ok == want then m = m + 1; out[m] = items[i] end
    end
    return gen(out)
  end
end
FILTERS.select = selector(false, true)
FILTERS.reject = selector(false, false)
FILTERS.selectattr = selector(true, true)
FILTERS.rejectattr = selector(true, false)

-- sort key of x: attribute lookup, then lowercase strings unless case_sensitive
local function sort_key(get, case_sensitive)
  return function(x)
    if get then x = get(x) end
    if not case_sensitive and type(x) == "string" then return lower(x) end
    return x
  end
end

local function stable_sort(items, n, key, reverse)
  spend(n * 20)
  local dec = {}
  for i = 1, n do dec[i] = { k = key(items[i]), v = items[i], i = i } end
  sort(dec, function(a, b)
    if lt(a.k, b.k) then return not reverse end
    if lt(b.k, a.k) then return reverse end
    return a.i < b.i
  end)
  local out = {}
  for i = 1, n do out[i] = dec[i].v end
  return out
end

FILTERS.sort = function(_, v, args, kw)
  local items, n = iter_items(v)
  local key = sort_key(getter(arg(args, kw, 3, "attribute")), truthy(arg(args, kw, 2, "case_sensitive", false)))
  return list(stable_sort(items, n, key, truthy(arg(args, kw, 1, "reverse", false))))
end

FILTERS.dictsort = function(_, v, args, kw)
  if kind(v) ~= "dict" then fail("TypeError: dictsort needs a mapping") end
  local pairs_ = dict_items(v)
  local by = tostr(arg(args, kw, 2, "by", "key"))
  local pos = by == "key" and 1 or by == "value" and 2 or fail("FilterArgumentError: You can only sort by either 'key' or 'value'")
  local key = sort_key(function(p) return p[pos] end, truthy(arg(args, kw, 1, "case_sensitive", false)))
  return list(stable_sort(pairs_, #pairs_, key, truthy(arg(args, kw, 3, "reverse", false))))
end

FILTERS.unique = function(_, v, args, kw)
  local items, n = iter_items(v)
  local key = sort_key(getter(arg(args, kw, 2, "attribute")), truthy(arg(args, kw, 1, "case_sensitive", false)))
  local seen, seen_list, out = {}, {}, {}
  for i = 1, n do
    local k = key(items[i])
    local fresh
    local tk = type(k)
    if tk == "string" or tk == "number" or tk == "boolean" then
      local h = tk == "boolean" and (k and 1 or 0) or k
      fresh = seen[h] == nil
      seen[h] = true
    else
      fresh = true
      spend(#seen_list)
      for j = 1, #seen_list do if eq(seen_list[j], k) then fresh = false break end end
      if fresh then seen_list[#seen_list + 1] = k end
    end
    if fresh then out[#out + 1] = items[i] end
  end
  return gen(out)
end

local function aggregate(want_max)
  return function(_, v, args, kw)
    local items, n = iter_items(v)
    if n == 0 then local u = undef(want_max and "max" or "min"); u.hint = "No aggregated item, sequence was empty."; return u end
    local key = sort_key(getter(arg(args, kw, 2, "attribute")), truthy(arg(args, kw, 1, "case_sensitive", false)))
    local best, bk = items[1], key(items[1])
    for i = 2, n do
      local k = key(items[i])
      if want_max and lt(bk, k) or not want_max and lt(k, bk) then best, bk = items[i], k end
    end
    return best
  end
end
FILTERS.max = aggregate(true)
FILTERS.min = aggregate(false)

FILTERS.sum = function(_, v, args, kw)
  local items, n = iter_items(v)
  local get = getter(arg(args, kw, 1, "attribute"))
  local total = arg(args, kw, 2, "start", 0)
  for i = 1, n do total = binop("+", total, get and get(items[i]) or items[i]) end
  return total
end

FILTERS.batch = function(_, v, args, kw)
  local items, n = iter_items(v)
  local size = opt_int(arg(args, kw, 1, "linecount"), "linecount")
  if not size or size < 1 then fail("ValueError: batch size must be positive") end
  local fill = arg(args, kw, 2, "fill_with")
  local out, cur = {}, {}
  for i = 1, n do
    if #cur == size then out[#out + 1] = list(cur); cur = {} end
    cur[#cur + 1] = items[i]
  end
  if #cur > 0 then
    if fill ~= nil then while #cur < size do cur[#cur + 1] = fill end end
    out[#out + 1] = list(cur)
  end
  return gen(out)
end

FILTERS.abs = function(_, v)
  local x, fl = numval(v)
  if x == nil then fail("TypeError: bad operand type for abs(): '%s'", pytype(v)) end
  if x < 0 then x = -x end
  if fl then return mkfloat(x) end
  return x
end

FILTERS.round = function(_, v, args, kw)
  local x, fl = numval(v)
  if x == nil then fail("TypeError: type %s doesn't define __round__ method", pytype(v)) end
  local p = opt_int(arg(args, kw, 1, "precision", 0), "precision")
  local method = tostr(arg(args, kw, 2, "method", "common"))
  if method == "common" then
    if not fl then return x end
    return mkfloat(round_half_even(x, p))
  end
  local m = 10 ^ p
  if method == "ceil" then return mkfloat(-floor(-x * m) / m) end
  if method == "floor" then return mkfloat(floor(x * m) / m) end
  fail("FilterArgumentError: method must be common, ceil or floor")
end

local function parse_number(s)
  s = strip(s, nil, true, true)
  s = gsub(s, "(%d)_(%d)", "%1%2")
  if find(s, "^[-+]?%d+$") then return tonumber(s), false end
  local low = lower(s)
  if low == "inf" or low == "+inf" or low == "infinity" then return huge, true end
  if low == "-inf" or low == "-infinity" then return -huge, true end
  if low == "nan" then return 0 / 0, true end
  if find(s, "^[-+]?%d*%.?%d*[eE]?[-+]?%d*$") and find(s, "%d") then
    local x = tonumber(s)
    if x then return x, true end
  end
  return nil
end

FILTERS.int = function(_, v, args, kw)
  local default = arg(args, kw, 1, "default", 0)
  local x, fl = numval(v)
  if x ~= nil then return fl and toint(x) or x end
  if kind(v) == "undef" then fail_undef(v) end
  if type(v) == "string" then
    local base = opt_int(arg(args, kw, 2, "base", 10), "base")
    if base ~= 10 then
      local t = strip(v, nil, true, true)
      local neg = sub(t, 1, 1) == "-"
      t = gsub(gsub(t, "^[-+]", ""), "^0[xXoObB]", "")
      local r = tonumber(t, base)
      if r then return neg and -r or r end
      return default
    end
    local y = parse_number(v)
    if y and y == y and y ~= huge and y ~= -huge then return toint(y) end
  end
  return default
end

FILTERS.float = function(_, v, args, kw)
  local default = arg(args, kw, 1, "default", mkfloat(0))
  local x = numval(v)
  if x ~= nil then return mkfloat(x) end
  if kind(v) == "undef" then fail_undef(v) end
  if type(v) == "string" then
    local y = parse_number(v)
    if y then return mkfloat(y) end
  end
  return default
end

FILTERS.attr = function(_, v, args)
  local name = tostr(args[1])
  if kind(v) == "dict" then
    if DICT_METHODS[name] then return bound(v, DICT_METHODS[name], name) end
    return undef(name, "dict")
  end
  return getattr(v, name)
end

FILTERS.tojson = function(_, v, args, kw)
  local opts = {
    ensure_ascii = truthy(arg(args, kw, 1, "ensure_ascii", false)),
    sort_keys = truthy(arg(args, kw, 4, "sort_keys", false)),
  }
  local indent = arg(args, kw, 2, "indent")
  if indent ~= nil then
    if type(indent) == "string" then opts.indent = indent
    else opts.indent = opt_int(indent, "indent") end
  end
  local seps = arg(args, kw, 3, "separators")
  if seps ~= nil then
    local k = kind(seps)
    if (k ~= "tuple" and k ~= "list") or #seps ~= 2 then fail("TypeError: separators must be a pair of strings") end
    opts.separators = { want_str(seps[1], "item separator"), want_str(seps[2], "key separator") }
  end
  -- the value may hold one list many times (json.encode would write it each time): the
  -- walk is charged node by node, with the bytes each node's indentation adds
  local ind = type(opts.indent) == "string" and #opts.indent or type(opts.indent) == "number" and opts.indent or 0
  local function walk(x, depth)
    if type(x) ~= "table" or depth > 1000 then return end
    local k = kind(x)
    if k == "list" or k == "tuple" or k == "dict" or k == "ns" then
      local keys = (k == "dict" or k == "ns") and json.keys(x) or nil
      local n = keys and #keys or #x
      spend(n + 1)
      if ind > 0 then check_len(n * ind * (depth + 1)) end
      for i = 1, n do walk(keys and x[keys[i]] or x[i], depth + 1) end
    end
  end
  walk(v, 0)
  local s, err = json.encode(v, opts)
  if not s then fail("TypeError: %s", (gsub(err, "^json: ", ""))) end
  return s
end

_M.FILTERS, _M.MARKUP_FILTERS = FILTERS, MARKUP_FILTERS

return _M
