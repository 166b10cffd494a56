-- moonlm.json: JSON decoding and encoding for chat templates and the HTTP server.
--
-- Decoded data keeps what Lua tables lose: objects remember their key order, arrays and
-- objects stay distinct even when empty, and JSON null is the sentinel `json.null`.
-- Encoding follows Python's json.dumps (separators ", " and ": ", floats in repr form,
-- ensure_ascii off by default) because the chat templates' `tojson` filter must match it
-- byte for byte; `compact = true` gives "," and ":" for the wire.
--
-- Value model (shared with moonlm.template):
--   array   table with metatable json.array_mt (json.array(t)), or a plain table whose
--           t[1] is non-nil, or an empty plain table (the encoder also checks that such
--           a plain table has no keys besides 1..#t, else encodes it as an object)
--   object  table with metatable json.object_mt (json.object(t, keys)), or a plain table
--           with non-sequence keys; key order is the recorded insertion order, else sorted
--   float   a Lua number that is a float (math.type "float" on 5.3+; on LuaJIT, where all
--           numbers are doubles: non-integral, -0.0, or beyond 2^53), or json.float(x),
--           which on LuaJIT boxes an integral float so it prints "1.0", not "1"
--   null    json.null

local _M = {}

local type, next, pairs, tostring, tonumber = type, next, pairs, tostring, tonumber
local setmetatable, getmetatable, pcall, error = setmetatable, getmetatable, pcall, error
local byte, char, find, sub, format, gsub, rep, match =
  string.byte, string.char, string.find, string.sub, string.format, string.gsub, string.rep,
  string.match
local concat, sort, tremove = table.concat, table.sort, table.remove
local floor, huge = math.floor, math.huge
local math_type = math.type

local MAX_DEPTH = 1000

local null = setmetatable({}, { __tostring = function() return "null" end, __jsontype = "null" })
local array_mt = { __jsontype = "array" }
local object_mt = { __jsontype = "object" }
local float_mt = { __jsontype = "float" }

_M.null, _M.array_mt, _M.object_mt, _M.float_mt = null, array_mt, object_mt, float_mt

-- object -> list of its keys in insertion order; weak so objects die normally
local order = setmetatable({}, { __mode = "k" })

---------------------------------------------------------------------------------------------
-- Constructors and key order

function _M.array(t)
  return setmetatable(t or {}, array_mt)
end

-- json.object(t, keys): mark t as an object; keys (optional) is its key order.
function _M.object(t, keys)
  t = setmetatable(t or {}, object_mt)
  if keys then order[t] = keys end
  return t
end

-- json.float(x): a float that stays a float when printed, even if integral.
function _M.float(x)
  if math_type then return x * 1.0 end -- (x + 0.0 would turn -0.0 into 0.0)
  if x == floor(x) and x - x == 0 then return setmetatable({ x }, float_mt) end
  return x
end

-- Assign t[k] = v keeping insertion order (v == nil removes the key).
function _M.set(t, k, v)
  local ks = order[t]
  if not ks then
    ks = _M.keys(t)
    order[t] = ks
  end
  if v == nil then
    if t[k] ~= nil then
      for i = 1, #ks do
        if ks[i] == k then tremove(ks, i) break end
      end
    end
  elseif t[k] == nil then
    ks[#ks + 1] = k
  end
  t[k] = v
end

local TYPE_RANK = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (TYPE_RANK[ta] or 9) < (TYPE_RANK[tb] or 9) end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end
_M.key_less = key_less

-- json.keys(t): the keys of an object in order (recorded order, then any keys added behind
-- its back, sorted). The returned list belongs to the object: do not modify it.
function _M.keys(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  local ks = order[t]
  if ks then
    local m = #ks
    if m == n then
      local ok = true
      for i = 1, m do
        if t[ks[i]] == nil then ok = false break end
      end
      if ok then return ks end
    end
    local fresh, seen, j = {}, {}, 0
    for i = 1, m do
      local k = ks[i]
      if t[k] ~= nil and not seen[k] then
        j = j + 1; fresh[j] = k; seen[k] = true
      end
    end
    local extra, e = {}, 0
    for k in next, t do
      if not seen[k] then e = e + 1; extra[e] = k end
    end
    sort(extra, key_less)
    for i = 1, e do fresh[j + i] = extra[i] end
    order[t] = fresh
    return fresh
  end
  ks = {}
  local i = 0
  for k in next, t do i = i + 1; ks[i] = k end
  sort(ks, key_less)
  return ks
end

-- "array", "object", or nil for a table that is neither; plain tables are classified by
-- content (t[1] non-nil or empty: array).
local function table_kind(t)
  local mt = getmetatable(t)
  if mt then
    local jt = mt.__jsontype
    if jt then return jt end
  end
  if t[1] ~= nil or next(t) == nil then return "array" end
  return "object"
end
_M.table_kind = table_kind

---------------------------------------------------------------------------------------------
-- Numbers, printed as Python prints them

local is_float
if math_type then
  is_float = function(x) return math_type(x) == "float" end
else
  -- LuaJIT numbers are all doubles: integral values count as ints, except -0.0 and values
  -- beyond 2^53, which a double cannot hold exactly as ints anyway
  is_float = function(x)
    return x ~= floor(x) or x - x ~= 0 or (x == 0 and 1 / x < 0) or x >= 2 ^ 53 or x <= -2 ^ 53
  end
end
_M.is_float = is_float

local EFMT = {}
for p = 0, 16 do EFMT[p + 1] = "%." .. p .. "e" end

-- "%.{p}e" of x with exact decimal ties rounded to even, as Python and glibc do. LuaJIT's
-- own formatter rounds ties away from zero, so there the tie is redone from the exact
-- expansion (which it does print exactly).
local fmt_e
if math_type then
  fmt_e = function(x, p) return format(EFMT[p + 1], x) end
else
  fmt_e = function(x, p)
    local s = format(EFMT[p + 1], x)
    -- a tie wrongly rounded up from an even digit always ends in an odd one
    if byte(s, find(s, "e", 1, true) - 1) % 2 == 0 then return s end
    local sign, d1, frac, ex = match(format("%.80e", x), "^(%-?)(%d)%.(%d+)e([-+]%d+)$")
    local digits = d1 .. frac
    if not find(digits, "^50*$", p + 2) or byte(digits, p + 1) % 2 == 1 then return s end
    -- an exact tie after an even digit: truncate (no carry, so the exponent stands)
    return sign .. d1 .. (p > 0 and "." .. sub(digits, 2, p + 1) or "") .. "e" .. ex
  end
end

-- Python repr(float): shortest digits that round-trip, scientific outside 1e-4 .. 1e16.
local function float_repr(x)
  if x ~= x then return "nan" end
  if x == huge then return "inf" end
  if x == -huge then return "-inf" end
  if x == 0 then
    if 1 / x < 0 then return "-0.0" end
    return "0.0"
  end
  -- A normal double is closer to its shortest round-tripping decimal of <= 15 digits than
  -- 15-digit decimals are spaced, so that decimal is %.14e with trailing zeros dropped;
  -- else %.15e or %.16e. Subnormals have fewer digits: search from one digit up.
  local s
  if x > -2.2250738585072014e-308 and x < 2.2250738585072014e-308 then
    for p = 0, 16 do
      s = fmt_e(x, p)
      if tonumber(s) == x then break end
    end
  else
    s = fmt_e(x, 14)
    if tonumber(s) ~= x then
      s = fmt_e(x, 15)
      if tonumber(s) ~= x then s = fmt_e(x, 16) end
    end
  end
  local sign, d1, frac, ex = s:match("^(%-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (d1 .. frac):gsub("0+$", "")
  if digits == "" then digits = "0" end
  local e = tonumber(ex)
  if e < -4 or e >= 16 then
    local m = sub(digits, 1, 1)
    if #digits > 1 then m = m .. "." .. sub(digits, 2) end
    return format("%s%se%s%02d", sign, m, e < 0 and "-" or "+", e < 0 and -e or e)
  elseif e >= 0 then
    if #digits <= e + 1 then
      return sign .. digits .. rep("0", e + 1 - #digits) .. ".0"
    end
    return sign .. sub(digits, 1, e + 1) .. "." .. sub(digits, e + 2)
  end
  return sign .. "0." .. rep("0", -e - 1) .. digits
end
_M.float_repr = float_repr

local function int_str(x)
  if x > -9.2e18 and x < 9.2e18 then return format("%d", x) end
  return format("%.0f", x)
end

-- Python str() of a number (int or float).
function _M.number_str(x)
  if is_float(x) then return float_repr(x) end
  return int_str(x)
end

---------------------------------------------------------------------------------------------
-- UTF-8

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
              0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end
_M.utf8_char = utf8_char

-- Code point of the UTF-8 sequence ch (tolerant: missing bytes count as zero bits).
local function utf8_code(ch)
  local c = byte(ch, 1)
  if c < 0x80 then return c end
  local c2, c3, c4 = (byte(ch, 2) or 128) % 64, (byte(ch, 3) or 128) % 64, (byte(ch, 4) or 128) % 64
  if c < 0xE0 then return (c % 32) * 64 + c2 end
  if c < 0xF0 then return ((c % 16) * 64 + c2) * 64 + c3 end
  return (((c % 8) * 64 + c2) * 64 + c3) * 64 + c4
end
_M.utf8_code = utf8_code

-- utf8_error(s) -> nil when s is valid UTF-8 (RFC 3629: shortest forms, no surrogates,
-- nothing beyond U+10FFFF), else the byte position where it stops being valid.
local function utf8_error(s)
  local i = 1
  while true do
    i = find(s, "[\128-\255]", i)
    if not i then return nil end
    local c = byte(s, i)
    local len, lo, hi -- the length, and the range of the second byte
    if c >= 0xC2 and c <= 0xDF then len, lo, hi = 2, 0x80, 0xBF
    elseif c == 0xE0 then len, lo, hi = 3, 0xA0, 0xBF
    elseif c == 0xED then len, lo, hi = 3, 0x80, 0x9F
    elseif c >= 0xE1 and c <= 0xEF then len, lo, hi = 3, 0x80, 0xBF
    elseif c == 0xF0 then len, lo, hi = 4, 0x90, 0xBF
    elseif c >= 0xF1 and c <= 0xF3 then len, lo, hi = 4, 0x80, 0xBF
    elseif c == 0xF4 then len, lo, hi = 4, 0x80, 0x8F
    else return i end
    local c2 = byte(s, i + 1)
    if not c2 or c2 < lo or c2 > hi then return i end
    for k = 2, len - 1 do
      local ck = byte(s, i + k)
      if not ck or ck < 0x80 or ck > 0xBF then return i end
    end
    i = i + len
  end
end
_M.utf8_error = utf8_error

---------------------------------------------------------------------------------------------
-- Decoding

local strict = false -- decode(s, { strict = true }) in progress (decoding never yields)

local ESCAPE_CHAR = {
  [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
  [114] = "\r", [116] = "\t",
}

local function decode_error(s, pos, msg)
  local line, col = 1, 1
  local last = 1
  for nl in s:sub(1, pos - 1):gmatch("()\n") do line = line + 1; last = nl + 1 end
  col = pos - last + 1
  error({ json_error = format("json: %s at line %d column %d (char %d)", msg, line, col, pos - 1) }, 0)
end

local function skip(s, pos)
  return find(s, "[^ \t\r\n]", pos) or #s + 1
end

local function parse_string(s, pos)
  local i = pos + 1
  local parts, np = nil, 0
  while true do
    local j = find(s, '[%z\1-\31"\\]', i)
    if not j then decode_error(s, pos, "unterminated string") end
    local c = byte(s, j)
    if c == 34 then
      if not parts then return sub(s, i, j - 1), j + 1 end
      np = np + 1; parts[np] = sub(s, i, j - 1)
      return concat(parts, "", 1, np), j + 1
    end
    if c ~= 92 then decode_error(s, j, "invalid control character in string") end
    parts = parts or {}
    np = np + 1; parts[np] = sub(s, i, j - 1)
    local e = byte(s, j + 1)
    if e == 117 then -- \uXXXX
      local hex = s:match("^%x%x%x%x", j + 2)
      if not hex then decode_error(s, j + 1, "invalid \\uXXXX escape") end
      local cp = tonumber(hex, 16)
      i = j + 6
      local paired = false
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = s:match("^\\u(%x%x%x%x)", i)
        local lcp = lo and tonumber(lo, 16)
        if lcp and lcp >= 0xDC00 and lcp <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lcp - 0xDC00)
          i = i + 6
          paired = true
        end
      end
      if strict and not paired and cp >= 0xD800 and cp <= 0xDFFF then
        decode_error(s, j, "lone surrogate escape \\u" .. hex .. " (not a character)")
      end
      np = np + 1; parts[np] = utf8_char(cp)
    else
      local r = ESCAPE_CHAR[e]
      if not r then decode_error(s, j, "invalid escape") end
      np = np + 1; parts[np] = r
      i = j + 2
    end
  end
end

local function parse_number(s, pos, exact_floats)
  local i = pos
  if byte(s, i) == 45 then i = i + 1 end
  local c = byte(s, i)
  if c == 48 then
    i = i + 1
  elseif c and c >= 49 and c <= 57 then
    i = find(s, "[^0-9]", i + 1) or #s + 1
  else
    decode_error(s, pos, "invalid number")
  end
  local fl = false
  if byte(s, i) == 46 then
    local j = find(s, "[^0-9]", i + 1) or #s + 1
    if j == i + 1 then decode_error(s, pos, "invalid number") end
    i, fl = j, true
  end
  c = byte(s, i)
  if c == 101 or c == 69 then
    i = i + 1
    c = byte(s, i)
    if c == 43 or c == 45 then i = i + 1 end
    local j = find(s, "[^0-9]", i) or #s + 1
    if j == i then decode_error(s, pos, "invalid number") end
    i, fl = j, true
  end
  local v = tonumber(sub(s, pos, i - 1))
  if fl and exact_floats then v = _M.float(v) end
  return v, i
end

local parse_value

local function parse_array(s, pos, depth, ef)
  if depth >= MAX_DEPTH then decode_error(s, pos, "nesting too deep") end
  local arr, n = setmetatable({}, array_mt), 0
  pos = skip(s, pos + 1)
  if byte(s, pos) == 93 then return arr, pos + 1 end
  while true do
    local v
    v, pos = parse_value(s, pos, depth + 1, ef)
    n = n + 1; arr[n] = v
    pos = skip(s, pos)
    local c = byte(s, pos)
    if c == 93 then return arr, pos + 1 end
    if c ~= 44 then decode_error(s, pos, "expected ',' or ']'") end
    pos = skip(s, pos + 1)
  end
end

local function parse_object(s, pos, depth, ef)
  if depth >= MAX_DEPTH then decode_error(s, pos, "nesting too deep") end
  local obj, keys, n = setmetatable({}, object_mt), {}, 0
  order[obj] = keys
  pos = skip(s, pos + 1)
  if byte(s, pos) == 125 then return obj, pos + 1 end
  while true do
    if byte(s, pos) ~= 34 then decode_error(s, pos, "expected string key") end
    local k, v
    k, pos = parse_string(s, pos)
    pos = skip(s, pos)
    if byte(s, pos) ~= 58 then decode_error(s, pos, "expected ':'") end
    pos = skip(s, pos + 1)
    v, pos = parse_value(s, pos, depth + 1, ef)
    if obj[k] == nil then n = n + 1; keys[n] = k end
    obj[k] = v
    pos = skip(s, pos)
    local c = byte(s, pos)
    if c == 125 then return obj, pos + 1 end
    if c ~= 44 then decode_error(s, pos, "expected ',' or '}'") end
    pos = skip(s, pos + 1)
  end
end

parse_value = function(s, pos, depth, ef)
  local c = byte(s, pos)
  if c == 34 then return parse_string(s, pos) end
  if c == 123 then return parse_object(s, pos, depth, ef) end
  if c == 91 then return parse_array(s, pos, depth, ef) end
  if c == 45 or (c and c >= 48 and c <= 57) then return parse_number(s, pos, ef) end
  if c == 116 and sub(s, pos, pos + 3) == "true" then return true, pos + 4 end
  if c == 102 and sub(s, pos, pos + 4) == "false" then return false, pos + 5 end
  if c == 110 and sub(s, pos, pos + 3) == "null" then return null, pos + 4 end
  if not c then decode_error(s, pos, "unexpected end of input") end
  decode_error(s, pos, "unexpected character '" .. char(c) .. "'")
end

-- json.decode(str [, opts]) -> value | nil, err
-- opts.exact_floats: under LuaJIT, return integral floats ("1.0") as json.float boxes so
-- they re-encode as "1.0" (Lua 5.3+ keeps the float subtype without this).
-- opts.strict: the text must be valid UTF-8 and every \u escape a character (a surrogate
-- only as half of a pair), as RFC 8259 requires of text exchanged between systems.
function _M.decode(s, opts)
  if type(s) ~= "string" then return nil, "json: expected a string, got " .. type(s) end
  local ef = opts and opts.exact_floats and not math_type
  strict = opts and opts.strict or false
  if strict then
    local bad = utf8_error(s)
    if bad then
      strict = false
      return nil, format("json: invalid UTF-8 at byte %d", bad)
    end
  end
  local ok, v, pos = pcall(function()
    local val, p = parse_value(s, skip(s, 1), 0, ef)
    p = skip(s, p)
    if p <= #s then decode_error(s, p, "trailing characters") end
    return val, p
  end)
  strict = false
  if ok then return v end
  if type(v) == "table" and v.json_error then return nil, v.json_error end
  return nil, "json: " .. tostring(v)
end

-- json.decode_at(str, pos [, opts]) -> value, next_pos | nil, err: one JSON value starting at
-- `pos` (after optional whitespace), for JSON embedded in other text (tool calls in model
-- output); next_pos is the byte after it.
function _M.decode_at(s, pos, opts)
  if type(s) ~= "string" then return nil, "json: expected a string, got " .. type(s) end
  local ef = opts and opts.exact_floats and not math_type
  local ok, v, p = pcall(parse_value, s, skip(s, pos or 1), 0, ef)
  if ok then return v, p end
  if type(v) == "table" and v.json_error then return nil, v.json_error end
  return nil, "json: " .. tostring(v)
end

---------------------------------------------------------------------------------------------
-- Encoding

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
              ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for i = 0, 31 do
  local ch = char(i)
  if not ESC[ch] then ESC[ch] = format("\\u%04x", i) end
end
ESC["\127"] = "\\u007f" -- only used with ensure_ascii

local function ascii_escape(ch)
  local cp = utf8_code(ch)
  if cp >= 0x10000 then
    cp = cp - 0x10000
    return format("\\u%04x\\u%04x", 0xD800 + floor(cp / 1024), 0xDC00 + cp % 1024)
  end
  return format("\\u%04x", cp)
end

local function quote(s, ensure_ascii)
  if find(s, '[%z\1-\31"\\]') then s = gsub(s, '[%z\1-\31"\\]', ESC) end
  if ensure_ascii and find(s, "[\127-\255]") then
    s = gsub(s, "\127", ESC)
    s = gsub(s, "[\192-\255][\128-\191]*", ascii_escape)
  end
  return '"' .. s .. '"'
end
_M.quote = quote

local function enc_error(msg) error({ json_error = "json: " .. msg }, 0) end

local function number_json(x, allow_nan)
  if is_float(x) then
    if x ~= x or x == huge or x == -huge then
      if not allow_nan then enc_error("out of range float value " .. tostring(x)) end
      if x ~= x then return "NaN" end
      return x > 0 and "Infinity" or "-Infinity"
    end
    return float_repr(x)
  end
  return int_str(x)
end

local function key_string(k, allow_nan)
  local tk = type(k)
  if tk == "string" then return k end
  if tk == "number" then return number_json(k, allow_nan) end
  if tk == "boolean" then return k and "true" or "false" end
  if k == null then return "null" end
  if tk == "table" and getmetatable(k) == float_mt then return float_repr(k[1]) end
  enc_error("keys must be str, int, float, bool or None, not " .. tk)
end

-- json.encode(value [, opts]) -> string | nil, err
-- opts: indent (number of spaces or a string; nil = one line), sort_keys (false),
-- ensure_ascii (false), compact (false: separators ", " and ": "; true: "," and ":"),
-- separators ({item, key}, overrides), allow_nan (true: NaN/Infinity as Python writes them).
function _M.encode(value, opts)
  opts = opts or {}
  local indent = opts.indent
  if indent ~= nil and indent ~= null and type(indent) == "number" then
    indent = rep(" ", indent)
  elseif indent == null or indent == false then
    indent = nil
  end
  local item_sep, key_sep = ", ", ": "
  if indent then item_sep = "," end
  if opts.compact then item_sep, key_sep = ",", ":" end
  if opts.separators and opts.separators ~= null then
    item_sep, key_sep = opts.separators[1], opts.separators[2]
  end
  local sort_keys = opts.sort_keys and opts.sort_keys ~= null
  local ensure_ascii = opts.ensure_ascii and opts.ensure_ascii ~= null
  local allow_nan = opts.allow_nan ~= false
  local buf, n = {}, 0

  local function enc(v, depth)
    local tv = type(v)
    if tv == "string" then
      n = n + 1; buf[n] = quote(v, ensure_ascii)
    elseif tv == "number" then
      n = n + 1; buf[n] = number_json(v, allow_nan)
    elseif tv == "boolean" then
      n = n + 1; buf[n] = v and "true" or "false"
    elseif v == nil or v == null then
      n = n + 1; buf[n] = "null"
    elseif tv == "table" then
      if depth >= MAX_DEPTH then enc_error("nesting too deep (circular reference?)") end
      local kind = table_kind(v)
      if kind == "array" and getmetatable(v) == nil then
        -- a plain table with t[1] set is an array only if 1..#t are all its keys
        local cnt = 0
        for _ in next, v do cnt = cnt + 1 end
        if cnt ~= #v then kind = "object" end
      end
      local nl
      if indent then nl = "\n" .. rep(indent, depth + 1) end
      if kind == "array" then
        local len = #v
        if len == 0 then n = n + 1; buf[n] = "[]"; return end
        n = n + 1; buf[n] = nl and "[" .. nl or "["
        for i = 1, len do
          if i > 1 then n = n + 1; buf[n] = nl and item_sep .. nl or item_sep end
          enc(v[i], depth + 1)
        end
        n = n + 1; buf[n] = nl and "\n" .. rep(indent, depth) .. "]" or "]"
      elseif kind == "object" then
        local ks = _M.keys(v)
        if #ks == 0 then n = n + 1; buf[n] = "{}"; return end
        if sort_keys then
          local copy = {}
          for i = 1, #ks do copy[i] = ks[i] end
          sort(copy, key_less)
          ks = copy
        end
        n = n + 1; buf[n] = nl and "{" .. nl or "{"
        for i = 1, #ks do
          local k = ks[i]
          if i > 1 then n = n + 1; buf[n] = nl and item_sep .. nl or item_sep end
          n = n + 1; buf[n] = quote(key_string(k, allow_nan), ensure_ascii) .. key_sep
          enc(v[k], depth + 1)
        end
        n = n + 1; buf[n] = nl and "\n" .. rep(indent, depth) .. "}" or "}"
      elseif kind == "float" then
        n = n + 1; buf[n] = float_repr(v[1])
      elseif kind == "null" then
        n = n + 1; buf[n] = "null"
      else
        enc_error("Object of type " .. tostring(kind) .. " is not JSON serializable")
      end
    else
      enc_error("Object of type " .. tv .. " is not JSON serializable")
    end
  end

  local ok, err = pcall(enc, value, 0)
  if ok then return concat(buf, "", 1, n) end
  if type(err) == "table" and err.json_error then return nil, err.json_error end
  return nil, "json: " .. tostring(err)
end

return _M
