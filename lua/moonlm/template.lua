-- moonlm.template: the Jinja subset that chat templates (GGUF tokenizer.chat_template) use.
--
-- Renders the way Hugging Face transformers does (Jinja2 with trim_blocks, lstrip_blocks,
-- loopcontrols, generation tags, lenient undefined, no autoescape, `tojson` as json.dumps),
-- so a prompt built here matches the one the model was trained on byte for byte.
-- Source is lexed, parsed to a tree and compiled once into Lua closures; render() runs them.
--
-- Values (shared with moonlm.json): strings are UTF-8 Lua strings indexed by code point;
-- numbers are ints unless float (math.type on 5.4, json.float boxes for integral floats on
-- LuaJIT); json.null is none; a table with json.array_mt, or a plain table whose t[1] is
-- non-nil, or an empty plain table, is a list; any other table is a dict (json.object keeps
-- key order; plain tables iterate in sorted key order). Missing values are Undefined.
--
-- API: compile(src) -> tmpl | nil, err; tmpl:render(vars) -> string | nil, err, info;
-- render(src, vars); builtin(name) / builtin_names(). Errors are "line N: ..." except
-- raise_exception(msg), whose err is msg itself (info.kind tells them apart).

local json = require "moonlm.json"

local _M = {}

local type, next, ipairs, tostring, tonumber, select = type, next, ipairs, tostring, tonumber, select
local setmetatable, getmetatable, pcall, error, rawget = setmetatable, getmetatable, pcall, error, rawget
local byte, char, find, sub, format, gsub, rep, match, gmatch =
  string.byte, string.char, string.find, string.sub, string.format, string.gsub, string.rep,
  string.match, string.gmatch
local s_upper, s_lower = string.upper, string.lower
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local math_type = math.type
local unpack = table.unpack or unpack
local os_date = os.date

local null, array_mt, object_mt, float_mt = json.null, json.array_mt, json.object_mt, json.float_mt
local jkeys, jset, float_repr, number_str = json.keys, json.set, json.float_repr, json.number_str
local utf8_char, utf8_code, mkfloat = json.utf8_char, json.utf8_code, json.float
local is_float_num = json.is_float

-- Limits that keep render() from hanging or exhausting memory on a hostile template.
local MAX_DEPTH = 100        -- nested macro calls / parser nesting
local MAX_ITER = 1000000     -- loop iterations per render
local MAX_STR = 64 * 1024 * 1024 -- longest string one operation may build

---------------------------------------------------------------------------------------------
-- Value model

local tuple_mt = { __jsontype = "array" }
local undef_mt = { __jsontype = "Undefined" }
local ns_mt = { __jsontype = "Namespace" }
local loop_mt = { __jsontype = "LoopContext" }
local macro_mt = { __jsontype = "Macro" }
local bound_mt = { __jsontype = "method" }

local KIND = {
  [array_mt] = "list", [object_mt] = "dict", [float_mt] = "num", [tuple_mt] = "tuple",
  [undef_mt] = "undef", [ns_mt] = "ns", [loop_mt] = "loop", [macro_mt] = "macro",
  [bound_mt] = "bound", [getmetatable(null)] = "none",
}
local PYTYPE = { str = "str", bool = "bool", none = "NoneType", list = "list", dict = "dict",
  tuple = "tuple", ns = "Namespace", loop = "LoopContext", macro = "Macro", bound = "method",
  func = "function", undef = "Undefined", other = "object" }

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
local function tuple(t) return setmetatable(t, tuple_mt) end
local function dict() return json.object({}, {}) end

-- Numbers: num(v) -> raw Lua number, is-float flag (nil when v is not a number; bool is int)
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
  return r
end

---------------------------------------------------------------------------------------------
-- UTF-8 strings, indexed by code point

local function is_ascii(s) return not find(s, "[\128-\255]") end

local function uchars(s)
  local t, n = {}, 0
  if is_ascii(s) then
    for i = 1, #s do t[i] = sub(s, i, i) end
    return t, #s
  end
  for ch in gmatch(s, "[^\128-\191][\128-\191]*") do n = n + 1; t[n] = ch end
  return t, n
end

local function ulen(s)
  if is_ascii(s) then return #s end
  local _, n = gsub(s, "[^\128-\191]", "")
  return n
end

-- Python whitespace (str.isspace): ASCII \t-\r, \x1c-\x1f, space, and these code points.
local UWS = { ["\194\133"] = true, ["\194\160"] = true, ["\225\154\128"] = true,
  ["\226\128\168"] = true, ["\226\128\169"] = true, ["\226\128\175"] = true,
  ["\226\129\159"] = true, ["\227\128\128"] = true }
for c = 0x80, 0x8A do UWS["\226\128" .. char(c)] = true end

local function is_ascii_ws(b) return b == 32 or (b >= 9 and b <= 13) or (b >= 28 and b <= 31) end

-- strip whitespace (chars == nil) or the code points in chars from the ends of s
local function strip(s, chars, left, right)
  local i, j = 1, #s
  if chars == nil then
    if left then
      while i <= j do
        local b = byte(s, i)
        if is_ascii_ws(b) then i = i + 1
        elseif b >= 0xC2 and b <= 0xE3 then
          local w = b < 0xE0 and 2 or 3
          if UWS[sub(s, i, i + w - 1)] then i = i + w else break end
        else break end
      end
    end
    if right then
      while j >= i do
        local b = byte(s, j)
        if is_ascii_ws(b) then j = j - 1
        elseif b >= 0x80 then
          local k = j
          while k > i and byte(s, k) < 0xC0 do k = k - 1 end
          if UWS[sub(s, k, j)] then j = k - 1 else break end
        else break end
      end
    end
    return sub(s, i, j)
  end
  if chars == "" then return s end
  local set = {}
  for _, ch in ipairs((uchars(chars))) do set[ch] = true end
  local cs, n = uchars(s)
  local a, b = 1, n
  if left then while a <= b and set[cs[a]] do a = a + 1 end end
  if right then while b >= a and set[cs[b]] do b = b - 1 end end
  return concat(cs, "", a, b)
end

local function rstrip_ws(s) return strip(s, nil, false, true) end

-- Case mapping: ASCII, Latin-1, Greek and Cyrillic (the scripts with simple 1:1 pairs).
local UP, LO = {}, {}
local function pair(lc, uc) local l, u = utf8_char(lc), utf8_char(uc); UP[l] = u; LO[u] = l end
for c = 0xE0, 0xFE do if c ~= 0xF7 then pair(c, c - 32) end end
for c = 0x3B1, 0x3C9 do if c ~= 0x3C2 then pair(c, c - 32) end end
for c = 0x430, 0x44F do pair(c, c - 32) end
for c = 0x450, 0x45F do pair(c, c - 80) end
UP["\207\130"] = "\206\163" -- final sigma

local function upper(s)
  s = s_upper(s)
  if is_ascii(s) then return s end
  return (gsub(s, "[\192-\223][\128-\191]", UP))
end

local function lower(s)
  s = s_lower(s)
  if is_ascii(s) then return s end
  return (gsub(s, "[\192-\223][\128-\191]", LO))
end

local function is_cased(ch)
  return find(ch, "^%a$") ~= nil or UP[ch] ~= nil or LO[ch] ~= nil
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
  for i = 1, n do parts[i] = repr(v[i], depth + 1) end
  if open == "(" and n == 1 then return "(" .. parts[1] .. ",)" end
  return open .. concat(parts, ", ") .. close
end

local function dict_repr(v, depth)
  if depth > 50 then return "{...}" end
  local ks, parts = jkeys(v), {}
  for i = 1, #ks do parts[i] = repr(ks[i], depth + 1) .. ": " .. repr(v[ks[i]], depth + 1) end
  return "{" .. concat(parts, ", ") .. "}"
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
  if t == "table" then return str_other(v, depth or 0) end
  return tostr(v)
end

---------------------------------------------------------------------------------------------
-- Lexer: source -> flat token list. Data, comments and raw blocks are handled here, with
-- Jinja's whitespace control: "-" strips all whitespace on that side, trim_blocks drops the
-- newline after a block or comment tag, lstrip_blocks drops the blanks before one when
-- they start a line, and "+" turns lstrip off for one tag.
--
-- Token: { t = kind, v = value, line = n }; kinds: data, var_begin, var_end, block_begin,
-- block_end, name, string, int, float, op, eof.

local OPS2 = { ["//"] = true, ["**"] = true, ["=="] = true, ["!="] = true, ["<="] = true,
  [">="] = true }
local OPS1 = {}
for c in gmatch("+-*/%~<>=()[]{},.:|;", ".") do OPS1[c] = true end
local OPEN = { ["("] = true, ["["] = true, ["{"] = true }
local CLOSE = { [")"] = true, ["]"] = true, ["}"] = true }

local STR_ESC = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"',
  a = "\a", b = "\b", f = "\f", v = "\v", ["\n"] = "" }

local function lex_error(msg, line) error({ tmsg = msg, line = line }, 0) end

-- Python "unicode-escape" decoding of a string literal's body (unknown escapes are kept).
local function unescape(raw, line)
  if not find(raw, "\\", 1, true) then return raw end
  local out, n, i = {}, 0, 1
  while true do
    local j = find(raw, "\\", i, true)
    if not j then n = n + 1; out[n] = sub(raw, i); break end
    n = n + 1; out[n] = sub(raw, i, j - 1)
    local c = sub(raw, j + 1, j + 1)
    local e = STR_ESC[c]
    if e then
      n = n + 1; out[n] = e; i = j + 2
    elseif c == "x" or c == "u" or c == "U" then
      local w = c == "x" and 2 or c == "u" and 4 or 8
      local hex = sub(raw, j + 2, j + 1 + w)
      if #hex ~= w or find(hex, "%X") then lex_error("invalid \\" .. c .. " escape in string", line) end
      local cp = tonumber(hex, 16)
      i = j + 2 + w
      if cp >= 0xD800 and cp <= 0xDBFF and match(raw, "^\\u[dD][c-fC-F]%x%x", i) then
        cp = 0x10000 + (cp - 0xD800) * 1024 + (tonumber(sub(raw, i + 2, i + 5), 16) - 0xDC00)
        i = i + 6
      end
      if cp > 0x10FFFF then lex_error("invalid \\U escape in string", line) end
      n = n + 1; out[n] = utf8_char(cp)
    elseif find(c, "^[0-7]") then
      local oct = match(raw, "^[0-7][0-7]?[0-7]?", j + 1)
      n = n + 1; out[n] = utf8_char(tonumber(oct, 8)); i = j + 1 + #oct
    else
      n = n + 1; out[n] = "\\"; i = j + 1
    end
  end
  return concat(out, "", 1, n)
end

local function count_nl(s, i, j)
  local n = 0
  while true do
    i = find(s, "\n", i, true)
    if not i or i > j then return n end
    n = n + 1; i = i + 1
  end
end

local function skip_ws(src, p)
  return find(src, "[^ \t\n\r\f\v]", p) or #src + 1
end

local function lex(src)
  src = gsub(src, "\r\n?", "\n")
  if sub(src, -1) == "\n" then src = sub(src, 1, -2) end -- keep_trailing_newline = False
  local toks, nt = {}, 0
  local len, pos, line = #src, 1, 1
  local line_starting = true
  local function push(t, v, ln) nt = nt + 1; toks[nt] = { t = t, v = v, line = ln } end

  -- text before a tag, after "-" / lstrip_blocks handling
  local function text_before(text, sign, lstrip)
    if sign == "-" then return rstrip_ws(text) end
    if sign ~= "+" and lstrip then
      local l = match(text, ".*()\n") or 0
      if l > 0 or line_starting then
        if l < #text and not find(text, "[^ \t\f\v\r]", l + 1) then return sub(text, 1, l) end
      end
    end
    return text
  end

  -- after an end delimiter ending at e: "-" strips whitespace, trim drops one newline
  local function after_end(e, sign, trim)
    local np = e + 1
    if sign == "-" then np = skip_ws(src, np)
    elseif trim and sign ~= "+" and byte(src, np) == 10 then np = np + 1 end
    line = line + count_nl(src, e + 1, np - 1)
    line_starting = byte(src, np - 1) == 10
    return np
  end

  -- expression tokens of a {{ }} or {% %} tag, from p to its end delimiter
  local function lex_tag(p, block, tag_line)
    local depth, prev = 0, nil
    while true do
      local q = skip_ws(src, p)
      line = line + count_nl(src, p, q - 1)
      p = q
      if p > len then lex_error("unexpected end of template: tag not closed", tag_line) end
      local c = sub(src, p, p)
      if depth == 0 then
        local c3 = sub(src, p, p + 2)
        if block then
          if c3 == "-%}" or c3 == "+%}" then push("block_end", nil, line); return after_end(p + 2, c, true) end
          if sub(c3, 1, 2) == "%}" then push("block_end", nil, line); return after_end(p + 1, "", true) end
        else
          if c3 == "-}}" then push("var_end", nil, line); return after_end(p + 2, "-", false) end
          if sub(c3, 1, 2) == "}}" then push("var_end", nil, line); return after_end(p + 1, "", false) end
        end
      end
      local s, e = find(src, "^[%a_][%w_]*", p)
      if s then
        push("name", sub(src, s, e), line); p = e + 1
      elseif find(c, "%d") then
        local num, isfloat
        if prev ~= "." then
          num = match(src, "^%d[%d_]*%.%d[%d_]*[eE][-+]?%d[%d_]*", p)
            or match(src, "^%d[%d_]*%.%d[%d_]*", p) or match(src, "^%d[%d_]*[eE][-+]?%d[%d_]*", p)
          isfloat = num ~= nil
        end
        num = num or match(src, "^%d[%d_]*", p)
        p = p + #num
        local v = tonumber((gsub(num, "_", "")))
        if isfloat then push("float", mkfloat(v), line) else push("int", floor(v), line) end
      elseif c == "'" or c == '"' then
        local i = p + 1
        while true do
          local j = find(src, c == "'" and "['\\]" or '["\\]', i)
          if not j then lex_error("unexpected end of template: string not closed", line) end
          if sub(src, j, j) == c then
            local raw = sub(src, p + 1, j - 1)
            push("string", unescape(raw, line), line)
            line = line + count_nl(raw, 1, #raw)
            p = j + 1
            break
          end
          i = j + 2
        end
      else
        local c2 = sub(src, p, p + 1)
        if OPS2[c2] then
          push("op", c2, line); p = p + 2
        elseif OPS1[c] then
          if OPEN[c] then depth = depth + 1 elseif CLOSE[c] and depth > 0 then depth = depth - 1 end
          push("op", c, line); p = p + 1
        else
          lex_error(format("unexpected character '%s'", c), line)
        end
      end
      prev = toks[nt].v
    end
  end

  while pos <= len do
    local s = find(src, "{[{%%#]", pos)
    if not s then push("data", sub(src, pos), line); break end
    local kc = sub(src, s + 1, s + 1)
    local sign = sub(src, s + 2, s + 2)
    if sign ~= "-" and sign ~= "+" then sign = "" end
    local text = text_before(sub(src, pos, s - 1), sign, kc ~= "{")
    if text ~= "" then push("data", text, line) end
    line = line + count_nl(src, pos, s - 1)
    local body = s + 2 + #sign
    if kc == "#" then
      local e = find(src, "#}", body, true)
      if not e then lex_error("unexpected end of template: comment not closed", line) end
      line = line + count_nl(src, s, e)
      local esign = e > body and sub(src, e - 1, e - 1) or ""
      pos = after_end(e + 1, esign, true)
    else
      local rsign, rend
      if kc == "%" then rsign, rend = match(src, "^%s*raw%s*(%-?)%%}()", body) end
      if rend then
        local np = rend
        if rsign == "-" then np = skip_ws(src, np) end
        local a, b, esign, esign2 = find(src, "{%%([-+]?)%s*endraw%s*([-+]?)%%}", np)
        if not a then lex_error("unexpected end of template: missing endraw", line) end
        line_starting = byte(src, np - 1) == 10
        local content = text_before(sub(src, np, a - 1), esign, true)
        if content ~= "" then push("data", content, line + count_nl(src, s, np - 1)) end
        line = line + count_nl(src, s, b)
        pos = after_end(b, esign2, true)
      else
        push(kc == "{" and "var_begin" or "block_begin", nil, line)
        pos = lex_tag(body, kc == "%", line)
      end
    end
  end
  push("eof", nil, line)
  return toks
end
_M._lex = lex -- for the specs

---------------------------------------------------------------------------------------------
-- Parser: tokens -> tree. Expression grammar and precedence follow Jinja's parser:
--   condexpr: or ('if' or ('else' condexpr)?)*     or: and ('or' and)*
--   and: not ('and' not)*    not: 'not' not | compare    compare: math1 (cmpop math1)*
--   math1: concat (('+'|'-') concat)*    concat: math2 ('~' math2)*
--   math2: pow (('*'|'/'|'//'|'%') pow)*    pow: unary ('**' unary)*
--   unary: ('-'|'+') unary | primary postfix*, then filters/tests ('|' f, 'is' t)
-- Nodes are tables { k = kind, line = n, ... }.

local P = {}
P.__index = P

local function perr(tok, msg, ...)
  if select("#", ...) > 0 then msg = format(msg, ...) end
  error({ tmsg = msg, line = tok.line }, 0)
end

local function describe(tok)
  if tok.t == "eof" then return "end of template" end
  if tok.t == "block_end" or tok.t == "var_end" then return "end of tag" end
  if tok.t == "block_begin" or tok.t == "var_begin" then return "start of tag" end
  if tok.t == "data" then return "template data" end
  return "'" .. tostring(tok.t == "float" and tostring(tok.v[1] or tok.v) or tok.v) .. "'"
end

function P:peek(k) return self.toks[self.i + (k or 0)] end
function P:next() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function P:is_op(v, k) local t = self.toks[self.i + (k or 0)]; return t.t == "op" and t.v == v end
function P:is_name(v, k) local t = self.toks[self.i + (k or 0)]; return t.t == "name" and t.v == v end
function P:skip_op(v) if self:is_op(v) then self.i = self.i + 1; return true end return false end
function P:skip_name(v) if self:is_name(v) then self.i = self.i + 1; return true end return false end

function P:expect_op(v)
  local t = self:next()
  if t.t ~= "op" or t.v ~= v then perr(t, "expected '%s', got %s", v, describe(t)) end
  return t
end

function P:expect_name(v)
  local t = self:next()
  if t.t ~= "name" or (v and t.v ~= v) then perr(t, "expected %s, got %s", v and ("'" .. v .. "'") or "a name", describe(t)) end
  return t
end

function P:expect_end()
  local t = self:next()
  if t.t ~= "block_end" then perr(t, "expected end of tag, got %s", describe(t)) end
end

function P:enter(tok)
  self.depth = self.depth + 1
  if self.depth > MAX_DEPTH then perr(tok, "expression nested too deeply") end
end

local CONSTS = { ["true"] = true, ["false"] = false, ["True"] = true, ["False"] = false,
  none = null, None = null }
local CMP = { ["=="] = "eq", ["!="] = "ne", ["<"] = "lt", [">"] = "gt", ["<="] = "le", [">="] = "ge" }
local MATH2 = { ["*"] = true, ["/"] = true, ["//"] = true, ["%"] = true }

function P:expr(with_cond)
  if with_cond == false then return self:p_or() end
  local e = self:p_or()
  while self:is_name("if") do
    local line = self:next().line
    local test = self:p_or()
    local other
    if self:skip_name("else") then other = self:expr() end
    e = { k = "cond", line = line, test = test, a = e, b = other }
  end
  return e
end

function P:p_or()
  local e = self:p_and()
  while self:is_name("or") do
    local line = self:next().line
    e = { k = "or", line = line, a = e, b = self:p_and() }
  end
  return e
end

function P:p_and()
  local e = self:p_not()
  while self:is_name("and") do
    local line = self:next().line
    e = { k = "and", line = line, a = e, b = self:p_not() }
  end
  return e
end

function P:p_not()
  if self:is_name("not") and not self:is_name("in", 1) then
    local t = self:next()
    self:enter(t)
    local e = { k = "not", line = t.line, a = self:p_not() }
    self.depth = self.depth - 1
    return e
  end
  return self:p_compare()
end

function P:p_compare()
  local e = self:p_math1()
  local ops
  while true do
    local t = self:peek()
    local op
    if t.t == "op" and CMP[t.v] then op = CMP[t.v]; self.i = self.i + 1
    elseif self:is_name("in") then op = "in"; self.i = self.i + 1
    elseif self:is_name("not") and self:is_name("in", 1) then op = "notin"; self.i = self.i + 2
    else break end
    ops = ops or {}
    ops[#ops + 1] = { op = op, e = self:p_math1() }
  end
  if not ops then return e end
  return { k = "compare", line = e.line, a = e, ops = ops }
end

function P:p_math1()
  local e = self:p_concat()
  while self:is_op("+") or self:is_op("-") do
    local t = self:next()
    e = { k = "bin", op = t.v, line = t.line, a = e, b = self:p_concat() }
  end
  return e
end

function P:p_concat()
  local e = self:p_math2()
  if not self:is_op("~") then return e end
  local parts = { e }
  while self:skip_op("~") do parts[#parts + 1] = self:p_math2() end
  return { k = "concat", line = e.line, parts = parts }
end

function P:p_math2()
  local e = self:p_pow()
  while self:peek().t == "op" and MATH2[self:peek().v] do
    local t = self:next()
    e = { k = "bin", op = t.v, line = t.line, a = e, b = self:p_pow() }
  end
  return e
end

function P:p_pow()
  local e = self:p_unary(true)
  while self:is_op("**") do
    local t = self:next()
    e = { k = "bin", op = "**", line = t.line, a = e, b = self:p_unary(true) }
  end
  return e
end

function P:p_unary(with_filter)
  local t = self:peek()
  local e
  if t.t == "op" and (t.v == "-" or t.v == "+") then
    self.i = self.i + 1
    self:enter(t)
    e = { k = t.v == "-" and "neg" or "pos", line = t.line, a = self:p_unary(false) }
    self.depth = self.depth - 1
  else
    e = self:p_primary()
  end
  e = self:p_postfix(e)
  if with_filter then e = self:p_filter_expr(e) end
  return e
end

function P:p_primary()
  local t = self:next()
  if t.t == "name" then
    local c = CONSTS[t.v]
    if c ~= nil then return { k = "const", line = t.line, v = c } end
    if self.refs then self.refs[t.v] = true end
    return { k = "name", line = t.line, name = t.v }
  elseif t.t == "string" then
    local v = t.v
    if self:peek().t == "string" then
      local parts = { v }
      while self:peek().t == "string" do parts[#parts + 1] = self:next().v end
      v = concat(parts)
    end
    return { k = "const", line = t.line, v = v }
  elseif t.t == "int" or t.t == "float" then
    return { k = "const", line = t.line, v = t.v }
  elseif t.t == "op" and t.v == "(" then
    self:enter(t)
    local e = self:tuple(false, true, nil, true)
    self:expect_op(")")
    self.depth = self.depth - 1
    return e
  elseif t.t == "op" and t.v == "[" then
    self:enter(t)
    local items = {}
    while not self:is_op("]") do
      if #items > 0 then self:expect_op(","); if self:is_op("]") then break end end
      items[#items + 1] = self:expr()
    end
    self:expect_op("]")
    self.depth = self.depth - 1
    return { k = "list", line = t.line, items = items }
  elseif t.t == "op" and t.v == "{" then
    self:enter(t)
    local keys, vals = {}, {}
    while not self:is_op("}") do
      if #keys > 0 then self:expect_op(","); if self:is_op("}") then break end end
      keys[#keys + 1] = self:expr()
      self:expect_op(":")
      vals[#vals + 1] = self:expr()
    end
    self:expect_op("}")
    self.depth = self.depth - 1
    return { k = "dict", line = t.line, keys = keys, vals = vals }
  end
  perr(t, "unexpected %s", describe(t))
end

-- tuple: a, b, ... (a lone item without comma is returned as is).
-- simplified: items are primaries (assignment targets); with_cond: allow 'x if c else y'.
function P:tuple(simplified, with_cond, extra_end, explicit)
  local line = self:peek().line
  local items, is_tuple = {}, false
  while true do
    if #items > 0 then self:expect_op(",") end
    local t = self:peek()
    if t.t == "block_end" or t.t == "var_end" or (t.t == "op" and t.v == ")")
        or (extra_end and t.t == "name" and extra_end[t.v]) then
      break
    end
    if simplified then items[#items + 1] = self:p_primary()
    else items[#items + 1] = self:expr(with_cond) end
    if self:is_op(",") then is_tuple = true else break end
  end
  if not is_tuple then
    if items[1] then return items[1] end
    if not explicit then perr(self:peek(), "expected an expression, got %s", describe(self:peek())) end
  end
  return { k = "tuple", line = line, items = items }
end

function P:call_args()
  local args, kwargs = {}, {}
  self:expect_op("(")
  while not self:is_op(")") do
    if #args + #kwargs > 0 then self:expect_op(","); if self:is_op(")") then break end end
    local t = self:peek()
    if t.t == "op" and (t.v == "*" or t.v == "**") then perr(t, "unsupported: *args / **kwargs in calls") end
    if t.t == "name" and self:is_op("=", 1) then
      self.i = self.i + 2
      kwargs[#kwargs + 1] = { name = t.v, e = self:expr() }
    else
      if #kwargs > 0 then perr(t, "positional argument follows keyword argument") end
      args[#args + 1] = self:expr()
    end
  end
  self:expect_op(")")
  return args, kwargs
end

function P:subscript()
  local t = self:peek()
  local a, b, c
  if not self:is_op(":") then
    a = self:expr()
    if not self:is_op(":") then return a, false end
  end
  self:expect_op(":")
  if not self:is_op("]") and not self:is_op(":") then b = self:expr() end
  if self:skip_op(":") then
    if not self:is_op("]") then c = self:expr() end
  end
  return { k = "slice", line = t.line, a = a, b = b, c = c }, true
end

function P:p_postfix(e)
  while true do
    local t = self:peek()
    if t.t ~= "op" then return e end
    if t.v == "." then
      self.i = self.i + 1
      local nt = self:next()
      if nt.t == "name" then e = { k = "getattr", line = nt.line, obj = e, name = nt.v }
      elseif nt.t == "int" then e = { k = "getitem", line = nt.line, obj = e, key = { k = "const", v = nt.v } }
      else perr(nt, "expected an attribute name after '.', got %s", describe(nt)) end
    elseif t.v == "[" then
      self.i = self.i + 1
      self:enter(t)
      local sub_e, is_slice = self:subscript()
      self:expect_op("]")
      self.depth = self.depth - 1
      if is_slice then sub_e.obj = e; e = sub_e
      else e = { k = "getitem", line = t.line, obj = e, key = sub_e } end
    elseif t.v == "(" then
      self:enter(t)
      local args, kwargs = self:call_args()
      self.depth = self.depth - 1
      e = { k = "call", line = t.line, fn = e, args = args, kwargs = kwargs }
    else
      return e
    end
  end
end

function P:filter(e)
  local t = self:expect_name()
  local args, kwargs = {}, {}
  if self:is_op("(") then args, kwargs = self:call_args() end
  return { k = "filter", line = t.line, name = t.v, a = e, args = args, kwargs = kwargs }
end

local TEST_ARG_START = { name = true, string = true, int = true, float = true }

function P:p_filter_expr(e)
  while true do
    if self:is_op("|") then
      self.i = self.i + 1
      e = self:filter(e)
    elseif self:is_name("is") then
      local line = self:next().line
      local negate = self:skip_name("not")
      local t = self:expect_name()
      local args, kwargs = {}, {}
      local nt = self:peek()
      if self:is_op("(") then
        args, kwargs = self:call_args()
      elseif (TEST_ARG_START[nt.t] or (nt.t == "op" and (nt.v == "[" or nt.v == "{")))
          and not (nt.t == "name" and (nt.v == "else" or nt.v == "or" or nt.v == "and"
            or nt.v == "if" or nt.v == "is" or nt.v == "in" or nt.v == "not")) then
        args = { self:p_postfix(self:p_primary()) }
      end
      e = { k = "test", line = line, name = t.v, a = e, args = args, kwargs = kwargs, negate = negate }
    elseif self:is_op("(") then
      e = self:p_postfix(e)
    else
      return e
    end
  end
end

-- Statements. body(ends) parses until a block tag named in ends and returns the statement
-- list, the end tag's name and token (the tag's remaining tokens are left to the caller).

local STMT = {}
local UNSUPPORTED = { include = true, import = true, from = true, extends = true, block = true,
  autoescape = true, trans = true }

function P:body(ends)
  local out = {}
  while true do
    local t = self:next()
    if t.t == "data" then
      out[#out + 1] = { k = "data", line = t.line, v = t.v }
    elseif t.t == "var_begin" then
      local e = self:tuple(false, true)
      local et = self:next()
      if et.t ~= "var_end" then perr(et, "expected end of print statement, got %s", describe(et)) end
      out[#out + 1] = { k = "output", line = t.line, e = e }
    elseif t.t == "block_begin" then
      local nt = self:next()
      if nt.t ~= "name" then perr(nt, "expected a tag name, got %s", describe(nt)) end
      if ends and ends[nt.v] then return out, nt.v, nt end
      local f = STMT[nt.v]
      if not f then
        if UNSUPPORTED[nt.v] then perr(nt, "unsupported tag '%s'", nt.v) end
        if match(nt.v, "^end") or nt.v == "else" or nt.v == "elif" then
          perr(nt, "unexpected '%s'%s", nt.v, self.open and (" (innermost open block is '" .. self.open .. "')") or "")
        end
        perr(nt, "unknown tag '%s'", nt.v)
      end
      self.depth = self.depth + 1
      if self.depth > MAX_DEPTH then perr(nt, "blocks nested too deeply") end
      local saved = self.open
      self.open = nt.v
      out[#out + 1] = f(self, nt)
      self.open = saved
      self.depth = self.depth - 1
    elseif t.t == "eof" then
      if ends then
        local names = {}
        for k in next, ends do names[#names + 1] = "'" .. k .. "'" end
        sort(names)
        perr(t, "unexpected end of template, expected %s (to close '%s')", concat(names, " or "), self.open or "?")
      end
      return out
    else
      perr(t, "unexpected %s", describe(t))
    end
  end
end

-- assignment target: name, or names separated by commas (optionally in parentheses)
function P:target(extra_end)
  local e = self:tuple(true, false, extra_end)
  local function check(n)
    if n.k == "name" then return end
    if n.k == "tuple" then for _, x in ipairs(n.items) do check(x) end return end
    perr(self:peek(), "cannot assign to %s", n.k == "const" and "a constant" or "an expression")
  end
  check(e)
  return e
end

STMT["for"] = function(self, tok)
  local target = self:target({ ["in"] = true })
  self:expect_name("in")
  local iter = self:tuple(false, false, { recursive = true })
  local filter
  if self:skip_name("if") then filter = self:expr() end
  if self:is_name("recursive") then perr(self:peek(), "unsupported: recursive loops") end
  self:expect_end()
  self.loops = self.loops + 1
  local body, ended = self:body({ endfor = true, ["else"] = true })
  self.loops = self.loops - 1
  self:expect_end()
  local else_body
  if ended == "else" then
    else_body = self:body({ endfor = true })
    self:expect_end()
  end
  return { k = "for", line = tok.line, target = target, iter = iter, filter = filter, body = body,
    else_body = else_body }
end

STMT["if"] = function(self, tok)
  local node = { k = "if", line = tok.line, tests = {}, bodies = {} }
  local test = self:tuple(false, false)
  while true do
    self:expect_end()
    local body, ended = self:body({ elif = true, ["else"] = true, endif = true })
    node.tests[#node.tests + 1] = test
    node.bodies[#node.bodies + 1] = body
    if ended == "elif" then
      test = self:tuple(false, false)
    elseif ended == "else" then
      self:expect_end()
      node.else_body = self:body({ endif = true })
      self:expect_end()
      return node
    else
      self:expect_end()
      return node
    end
  end
end

STMT.set = function(self, tok)
  local target
  local t = self:peek()
  if t.t == "name" and self:is_op(".", 1) then
    self.i = self.i + 2
    local attr = self:expect_name()
    target = { k = "nsref", line = t.line, name = t.v, attr = attr.v }
  else
    target = self:target()
  end
  if self:skip_op("=") then
    local e = self:tuple(false, true)
    self:expect_end()
    return { k = "set", line = tok.line, target = target, e = e }
  end
  local filters = {}
  while self:skip_op("|") do filters[#filters + 1] = self:filter(nil) end
  self:expect_end()
  local body = self:body({ endset = true })
  self:expect_end()
  return { k = "setblock", line = tok.line, target = target, body = body, filters = filters }
end

function P:params()
  local names, defaults = {}, {}
  self:expect_op("(")
  while not self:is_op(")") do
    if #names > 0 then self:expect_op(","); if self:is_op(")") then break end end
    local n = self:expect_name()
    names[#names + 1] = n.v
    if self:skip_op("=") then defaults[#names] = self:expr()
    elseif next(defaults) then perr(n, "non-default argument follows default argument") end
  end
  self:expect_op(")")
  return names, defaults
end

-- a macro body: its own loop depth, and which of varargs/kwargs/caller it reads
function P:macro_body(ends)
  local saved_refs, saved_loops = self.refs, self.loops
  local refs = {}
  self.refs, self.loops = refs, 0
  local body = self:body(ends)
  self.refs, self.loops = saved_refs, saved_loops
  if saved_refs then for k in next, refs do saved_refs[k] = true end end
  return body, refs
end

STMT.macro = function(self, tok)
  local name = self:expect_name().v
  local params, defaults = self:params()
  self:expect_end()
  local body, refs = self:macro_body({ endmacro = true })
  if self:peek().t == "name" then self.i = self.i + 1 end
  self:expect_end()
  return { k = "macro", line = tok.line, name = name, params = params, defaults = defaults,
    body = body, refs = refs }
end

STMT.call = function(self, tok)
  local params, defaults = {}, {}
  if self:is_op("(") then params, defaults = self:params() end
  local call = self:expr()
  if call.k ~= "call" then perr(tok, "expected a call after 'call'") end
  self:expect_end()
  local body, refs = self:macro_body({ endcall = true })
  self:expect_end()
  return { k = "callblock", line = tok.line, call = call, params = params, defaults = defaults,
    body = body, refs = refs }
end

STMT.filter = function(self, tok)
  local filters = { self:filter(nil) }
  while self:skip_op("|") do filters[#filters + 1] = self:filter(nil) end
  self:expect_end()
  local body = self:body({ endfilter = true })
  self:expect_end()
  return { k = "filterblock", line = tok.line, filters = filters, body = body }
end

STMT.with = function(self, tok)
  local targets, values = {}, {}
  while not (self:peek().t == "block_end") do
    if #targets > 0 then self:expect_op(",") end
    targets[#targets + 1] = self:target({ ["="] = true })
    self:expect_op("=")
    values[#values + 1] = self:expr()
  end
  self:expect_end()
  local body = self:body({ endwith = true })
  self:expect_end()
  return { k = "with", line = tok.line, targets = targets, values = values, body = body }
end

local function loopcontrol(self, tok)
  if self.loops == 0 then perr(tok, "'%s' outside of a loop", tok.v) end
  self:expect_end()
  return { k = tok.v, line = tok.line }
end
STMT["break"], STMT["continue"] = loopcontrol, loopcontrol

STMT.generation = function(self, tok)
  self:expect_end()
  local body = self:body({ endgeneration = true })
  self:expect_end()
  return { k = "with", line = tok.line, targets = {}, values = {}, body = body, noscope = true }
end

STMT["do"] = function(self, tok)
  local e = self:tuple(false, true)
  self:expect_end()
  return { k = "do", line = tok.line, e = e }
end

local function parse(src)
  local p = setmetatable({ toks = lex(src), i = 1, depth = 0, loops = 0 }, P)
  return p:body(nil)
end
_M._parse = parse

return _M
