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
-- Sections: value model, lexer, parser, runtime operations (Python semantics), string
-- formatting, compiler, public API, methods and globals, tests and filters, builtins.
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

local json = require "moonlm.json"

local _M = {}

local type, next, ipairs, tostring, tonumber, select = type, next, ipairs, tostring, tonumber, select
local setmetatable, getmetatable, pcall, error, rawget = setmetatable, getmetatable, pcall, error, rawget
local byte, char, find, sub, format, gsub, rep, match, gmatch =
  string.byte, string.char, string.find, string.sub, string.format, string.gsub, string.rep,
  string.match, string.gmatch
local s_upper, s_lower = string.upper, string.lower
local concat, sort, tinsert, tremove = table.concat, table.sort, table.insert, table.remove
local floor, huge, min = math.floor, math.huge, math.min
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
local MAX_STEPS = 20000000   -- element operations per render (comparisons, copies, ...)
local MAX_BYTES = 2 ^ 30     -- bytes of strings built per render

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

---------------------------------------------------------------------------------------------
-- Lexer: source -> flat token list. Data, comments and raw blocks are handled here, with
-- Jinja's whitespace control: "-" strips all whitespace on that side, trim_blocks drops the
-- newline after a block or comment tag, lstrip_blocks drops the blanks before one when
-- they start a line, and "+" turns lstrip off for one tag.
--
-- Token: { t = kind, v = value, line = n }; kinds: data, var_begin, var_end, block_begin,
-- block_end, name, string, int, float, op, eof.

local lex
do
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

  function lex(src)
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
end

---------------------------------------------------------------------------------------------
-- Parser: tokens -> tree. Expression grammar and precedence follow Jinja's parser:
--   condexpr: or ('if' or ('else' condexpr)?)*     or: and ('or' and)*
--   and: not ('and' not)*    not: 'not' not | compare    compare: math1 (cmpop math1)*
--   math1: concat (('+'|'-') concat)*    concat: math2 ('~' math2)*
--   math2: pow (('*'|'/'|'//'|'%') pow)*    pow: unary ('**' unary)*
--   unary: ('-'|'+') unary | primary postfix*, then filters/tests ('|' f, 'is' t)
-- Nodes are tables { k = kind, line = n, ... }.

local parse, perr
do
  local P = {}
  P.__index = P

  function perr(tok, msg, ...)
    if select("#", ...) > 0 then msg = format(msg, ...) end
    error({ tmsg = msg, line = tok.line }, 0)
  end

  local function describe(tok)
    if tok.t == "eof" then return "end of template" end
    if tok.t == "block_end" or tok.t == "var_end" then return "end of tag" end
    if tok.t == "block_begin" or tok.t == "var_begin" then return "start of tag" end
    if tok.t == "data" then return "template data" end
    if tok.t == "float" or tok.t == "int" then return "'" .. tostr(tok.v) .. "'" end
    if tok.t == "string" then return repr_str(tok.v) end
    return "'" .. tostring(tok.v) .. "'"
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
        local subs = {}
        while not self:is_op("]") do
          if #subs > 0 then self:expect_op(",") end
          local sub_e, is_slice = self:subscript()
          subs[#subs + 1] = sub_e
          if is_slice then subs.slice = true end
        end
        self:expect_op("]")
        self.depth = self.depth - 1
        if #subs == 1 and subs.slice then subs[1].obj = e; e = subs[1]
        elseif subs.slice then perr(t, "unsupported: slices in a subscript tuple")
        else
          local key = subs[1]
          if #subs ~= 1 then key = { k = "tuple", line = t.line, items = subs } end
          e = { k = "getitem", line = t.line, obj = e, key = key }
        end
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
            and not (nt.t == "name" and (nt.v == "else" or nt.v == "or" or nt.v == "and")) then
          if nt.t == "name" and nt.v == "is" then perr(nt, "you cannot chain multiple tests with is") end
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

  function parse(src)
    local p = setmetatable({ toks = lex(src), i = 1, depth = 0, loops = 0 }, P)
    return p:body(nil)
  end
end

---------------------------------------------------------------------------------------------
-- Runtime operations with Python semantics

-- Work done by the current render, so that no template runs for long (reset by render).
local steps, bytes = 0, 0

local function spend(n)
  steps = steps + n
  if steps > MAX_STEPS then fail("template exceeded its work limit (%d steps)", MAX_STEPS) end
end

-- account for building a string of n bytes
local function check_len(n)
  if n > MAX_STR then fail("MemoryError: result longer than %d bytes", MAX_STR) end
  bytes = bytes + n
  if bytes > MAX_BYTES then fail("template exceeded its work limit (%d bytes built)", MAX_BYTES) end
end

local function limits_swap(s, b)
  local s0, b0 = steps, bytes
  steps, bytes = s, b
  return s0, b0
end


local STR_METHODS, LIST_METHODS, DICT_METHODS, TUPLE_METHODS, LOOP_ATTR = {}, {}, {}, {}, {}
local FILTERS, TESTS, GLOBALS = {}, {}, {}
-- filters that take a Markup input as such (the others see its plain string)
local MARKUP_FILTERS = { safe = true, escape = true, e = true, string = true, trim = true,
  upper = true, lower = true, capitalize = true, default = true, d = true, format = true }
-- tests that take an argument (the rest take none)
local TEST_ARITY = { divisibleby = 1, eq = 1, equalto = 1, ["=="] = 1, ne = 1, ["!="] = 1, lt = 1,
  lessthan = 1, ["<"] = 1, gt = 1, greaterthan = 1, [">"] = 1, le = 1, ["<="] = 1, ge = 1,
  [">="] = 1, ["in"] = 1, sameas = 1 }
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
  check_len(#s * cnt)
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

---------------------------------------------------------------------------------------------
-- Compiler: tree -> closures. An expression becomes f(ctx, scope) -> value; a statement
-- becomes f(ctx, scope) -> nil | BREAK | CONTINUE, writing to ctx.out[1..ctx.n].
-- Scopes are tables chained by __index: the root reads the render vars, then GLOBALS; a
-- for-loop iteration, a macro call and a with-block each get a child scope (if does not).

local cbody, reset_compiler
do
  local BREAK, CONTINUE = 1, 2
  local soft = 0 -- > 0 while compiling an if body (see cfilter)
  function reset_compiler() soft = 0 end
  local CX, SX = {}, {}

  local function cexpr(n) return CX[n.k](n) end

  local function cexprs(list_)
    local out = {}
    for i = 1, #list_ do out[i] = cexpr(list_[i]) end
    return out
  end

  local function write(ctx, s)
    local n = ctx.n + 1
    ctx.n = n
    ctx.out[n] = s
    local size = ctx.size + #s
    ctx.size = size
    if size > MAX_STR then fail("MemoryError: output longer than %d bytes", MAX_STR) end
  end

  -- compiled call arguments -> function(ctx, sc) -> args, kwargs (kwargs nil when none)
  local function cargs(args, kwargs)
    local ac = cexprs(args)
    local na, nk = #ac, #kwargs
    local knames, kc = {}, {}
    for i = 1, nk do knames[i] = kwargs[i].name; kc[i] = cexpr(kwargs[i].e) end
    if na == 0 and nk == 0 then return function() return {}, nil end end
    return function(ctx, sc)
      local a = {}
      for i = 1, na do a[i] = ac[i](ctx, sc) end
      if nk == 0 then return a, nil end
      local kw, ks = {}, {}
      for i = 1, nk do ks[i] = knames[i]; kw[knames[i]] = kc[i](ctx, sc) end
      return a, json.object(kw, ks)
    end
  end

  local call_macro -- forward

  local function call_value(ctx, f, args, kw)
    if type(f) == "function" then
      if BUILTIN[f] then return f(ctx, args, kw) end
      local n = #args
      if kw then n = n + 1; args[n] = kw end
      local ok, r = pcall(f, unpack(args, 1, n))
      if not ok then
        if type(r) == "table" and r.tmsg then error(r, 0) end
        fail("error in function call: %s", tostring(r))
      end
      if r == nil then return null end
      return r
    end
    local k = kind(f)
    if k == "macro" then return call_macro(ctx, f, args, kw) end
    if k == "bound" then return f.fn(ctx, f.self, args, kw) end
    if k == "undef" then fail_undef(f) end
    fail("TypeError: '%s' object is not callable", pytype(f))
  end

  CX.const = function(n)
    local v = n.v
    return function() return v end
  end

  CX.name = function(n)
    local name = n.name
    return function(_, sc)
      local v = sc[name]
      if v == nil then return undef(name) end
      return v
    end
  end

  CX.getattr = function(n)
    local o, name = cexpr(n.obj), n.name
    return function(ctx, sc) return getattr(o(ctx, sc), name) end
  end

  CX.getitem = function(n)
    local o, key = cexpr(n.obj), cexpr(n.key)
    return function(ctx, sc) return getitem(o(ctx, sc), key(ctx, sc)) end
  end

  CX.slice = function(n)
    local o = cexpr(n.obj)
    local a, b, c = n.a and cexpr(n.a), n.b and cexpr(n.b), n.c and cexpr(n.c)
    return function(ctx, sc)
      return slice(o(ctx, sc), a and a(ctx, sc), b and b(ctx, sc), c and c(ctx, sc))
    end
  end

  CX.list = function(n)
    local items = cexprs(n.items)
    return function(ctx, sc)
      local t = {}
      for i = 1, #items do t[i] = items[i](ctx, sc) end
      return list(t)
    end
  end

  CX.tuple = function(n)
    local items = cexprs(n.items)
    return function(ctx, sc)
      local t = {}
      for i = 1, #items do t[i] = items[i](ctx, sc) end
      return tuple(t)
    end
  end

  CX.dict = function(n)
    local keys, vals = cexprs(n.keys), cexprs(n.vals)
    return function(ctx, sc)
      local d = dict()
      for i = 1, #keys do jset(d, keyof(keys[i](ctx, sc)), vals[i](ctx, sc)) end
      return d
    end
  end

  CX.bin = function(n)
    local a, b, op = cexpr(n.a), cexpr(n.b), n.op
    if op == "+" then
      return function(ctx, sc)
        local x, y = a(ctx, sc), b(ctx, sc)
        if type(x) == "string" and type(y) == "string" then
          check_len(#x + #y)
          return x .. y
        end
        return binop("+", x, y)
      end
    end
    return function(ctx, sc) return binop(op, a(ctx, sc), b(ctx, sc)) end
  end

  CX.concat = function(n)
    local parts = cexprs(n.parts)
    return function(ctx, sc)
      local t, len = {}, 0
      for i = 1, #parts do
        local s = tostr(parts[i](ctx, sc))
        len = len + #s
        t[i] = s
      end
      check_len(len)
      return concat(t)
    end
  end

  CX.neg = function(n)
    local a = cexpr(n.a)
    return function(ctx, sc) return negate(a(ctx, sc)) end
  end

  CX.pos = function(n)
    local a = cexpr(n.a)
    return function(ctx, sc)
      local v = a(ctx, sc)
      if numval(v) == nil then negate(v) end -- same errors as unary minus
      return v
    end
  end

  CX["not"] = function(n)
    local a = cexpr(n.a)
    return function(ctx, sc) return not truthy(a(ctx, sc)) end
  end

  CX["and"] = function(n)
    local a, b = cexpr(n.a), cexpr(n.b)
    return function(ctx, sc)
      local x = a(ctx, sc)
      if not truthy(x) then return x end
      return b(ctx, sc)
    end
  end

  CX["or"] = function(n)
    local a, b = cexpr(n.a), cexpr(n.b)
    return function(ctx, sc)
      local x = a(ctx, sc)
      if truthy(x) then return x end
      return b(ctx, sc)
    end
  end

  CX.cond = function(n)
    local test, a, b = cexpr(n.test), cexpr(n.a), n.b and cexpr(n.b)
    local hint = format("the inline if-expression on line %d evaluated to false and no else section was defined.", n.line)
    return function(ctx, sc)
      if truthy(test(ctx, sc)) then return a(ctx, sc) end
      if b then return b(ctx, sc) end
      local u = undef("<inline if>")
      u.hint = hint
      return u
    end
  end

  local function cmp_fn(op)
    if op == "in" then return contains end
    if op == "notin" then return function(a, b) return not contains(b, a) end end
    return COMPARE[op]
  end

  CX.compare = function(n)
    local a = cexpr(n.a)
    local ops, es = {}, {}
    for i, o in ipairs(n.ops) do ops[i] = cmp_fn(o.op); es[i] = cexpr(o.e) end
    if #ops == 1 then
      local f, b = ops[1], es[1]
      if n.ops[1].op == "in" then return function(ctx, sc) local x = a(ctx, sc); return contains(b(ctx, sc), x) end end
      return function(ctx, sc) local x = a(ctx, sc); return f(x, b(ctx, sc)) end
    end
    return function(ctx, sc)
      local x = a(ctx, sc)
      for i = 1, #ops do
        local y = es[i](ctx, sc)
        local ok
        if n.ops[i].op == "in" then ok = contains(y, x) else ok = ops[i](x, y) end
        if not ok then return false end
        x = y
      end
      return true
    end
  end

  CX.test = function(n)
    local f = TESTS[n.name]
    if not f then
      if soft == 0 then perr(n, "unknown test '%s'", n.name) end
      local name = n.name
      return function() fail("unknown test '%s'", name) end
    end
    local a, args, negate_ = cexpr(n.a), cexprs(n.args), n.negate
    if #n.kwargs > 0 then perr(n, "test '%s' takes no keyword arguments", n.name) end
    local arity = TEST_ARITY[n.name] or 0
    if #args ~= arity then -- a TypeError when it runs, as in Jinja
      local msg = format("TypeError: test '%s' takes %d argument%s, got %d", n.name, arity, arity == 1 and "" or "s", #args)
      return function() fail(msg) end
    end
    return function(ctx, sc)
      local v = a(ctx, sc)
      local av = EMPTY
      if #args > 0 then av = {}; for i = 1, #args do av[i] = args[i](ctx, sc) end end
      local r = f(v, av, ctx)
      if negate_ then return not r end
      return r and true or false
    end
  end

  -- filter node -> function(ctx, sc, input) -> value. Unknown filters and tests are
  -- errors when compiled, except inside an if body, where Jinja reports them only when
  -- that branch runs.
  local function cfilter(n)
    local f = FILTERS[n.name]
    if not f then
      if soft == 0 then perr(n, "unknown filter '%s'", n.name) end
      local name = n.name
      return function() fail("unknown filter '%s'", name) end
    end
    local ev = cargs(n.args, n.kwargs)
    local keeps_markup = MARKUP_FILTERS[n.name]
    return function(ctx, sc, v)
      local args, kw = ev(ctx, sc)
      for i = 1, #args do args[i] = unmark(args[i]) end
      if type(v) == "table" and getmetatable(v) == markup_mt and not keeps_markup then v = v[1] end
      return f(ctx, v, args, kw)
    end
  end

  CX.filter = function(n)
    local a, f = cexpr(n.a), cfilter(n)
    return function(ctx, sc) return f(ctx, sc, a(ctx, sc)) end
  end

  CX.call = function(n)
    local ev = cargs(n.args, n.kwargs)
    if n.fn.k == "getattr" then
      local oc, name = cexpr(n.fn.obj), n.fn.name
      return function(ctx, sc)
        local o = unmark(oc(ctx, sc))
        local k = kind(o)
        local m = (k == "str" and STR_METHODS[name]) or (k == "dict" and DICT_METHODS[name])
          or (k == "list" and LIST_METHODS[name]) or (k == "tuple" and TUPLE_METHODS[name])
        local args, kw = ev(ctx, sc)
        if m then
          for i = 1, #args do args[i] = unmark(args[i]) end
          return m(ctx, o, args, kw)
        end
        return call_value(ctx, getattr(o, name), args, kw)
      end
    end
    local fc = cexpr(n.fn)
    return function(ctx, sc)
      local f = fc(ctx, sc)
      local args, kw = ev(ctx, sc)
      return call_value(ctx, f, args, kw)
    end
  end

  function cbody(stmts)
    local fs = {}
    for i = 1, #stmts do fs[i] = SX[stmts[i].k](stmts[i]) end
    local n = #fs
    if n == 0 then return function() end end
    if n == 1 then return fs[1] end
    return function(ctx, sc)
      for i = 1, n do
        local sig = fs[i](ctx, sc)
        if sig then return sig end
      end
    end
  end

  -- run body into a fresh buffer and return what it wrote
  local function capture(ctx, body, sc)
    local out, n = ctx.out, ctx.n
    ctx.out, ctx.n = {}, 0
    body(ctx, sc)
    local s = concat(ctx.out, "", 1, ctx.n)
    ctx.out, ctx.n = out, n
    return s
  end

  local function unpack_into(v, want)
    local items, n = iter_items(v)
    if n ~= want then
      if n > want then fail("ValueError: too many values to unpack (expected %d)", want) end
      fail("ValueError: not enough values to unpack (expected %d, got %d)", want, n)
    end
    return items
  end

  -- assignment target -> function(scope, value)
  local function binder(t)
    if t.k == "name" then
      local name = t.name
      return function(sc, v) sc[name] = v end
    end
    local subs = {}
    for i, x in ipairs(t.items) do subs[i] = binder(x) end
    local want = #subs
    return function(sc, v)
      local items = unpack_into(v, want)
      for i = 1, want do subs[i](sc, items[i]) end
    end
  end

  SX.data = function(n)
    local s = n.v
    return function(ctx) write(ctx, s) end
  end

  SX.output = function(n)
    local e, line = cexpr(n.e), n.line
    return function(ctx, sc)
      ctx.line = line
      local v = e(ctx, sc)
      write(ctx, type(v) == "string" and v or tostr(v))
    end
  end

  SX["if"] = function(n)
    local tests, bodies, lines = cexprs(n.tests), {}, {}
    soft = soft + 1
    for i, b in ipairs(n.bodies) do bodies[i] = cbody(b); lines[i] = n.tests[i].line or n.line end
    local else_body = n.else_body and cbody(n.else_body)
    soft = soft - 1
    local nt = #tests
    return function(ctx, sc)
      for i = 1, nt do
        ctx.line = lines[i]
        if truthy(tests[i](ctx, sc)) then return bodies[i](ctx, sc) end
      end
      if else_body then return else_body(ctx, sc) end
    end
  end

  local function count_iter(ctx)
    local it = ctx.iters + 1
    ctx.iters = it
    if it > MAX_ITER then fail("loop iteration limit (%d) exceeded", MAX_ITER) end
    spend(1)
  end

  SX["for"] = function(n)
    local iter, bind, body = cexpr(n.iter), binder(n.target), cbody(n.body)
    local filter = n.filter and cexpr(n.filter)
    local else_body = n.else_body and cbody(n.else_body)
    local line = n.line
    return function(ctx, sc)
      ctx.line = line
      local items, cnt = iter_items(iter(ctx, sc))
      local mt = { __index = sc }
      if filter then
        local kept, m = {}, 0
        for i = 1, cnt do
          count_iter(ctx)
          local isc = setmetatable({}, mt)
          bind(isc, items[i])
          if truthy(filter(ctx, isc)) then m = m + 1; kept[m] = items[i] end
        end
        items, cnt = kept, m
      end
      if cnt == 0 then
        if else_body then return else_body(ctx, sc) end
        return
      end
      -- as in Jinja, else runs unless some iteration ran to its end (no break/continue)
      local L = setmetatable({ i = 0, n = cnt, items = items }, loop_mt)
      local completed = false
      for i = 1, cnt do
        count_iter(ctx)
        L.i = i - 1
        local isc = setmetatable({ loop = L }, mt)
        bind(isc, items[i])
        local sig = body(ctx, isc)
        if sig == BREAK then break end
        if not sig then completed = true end
      end
      if else_body and not completed then return else_body(ctx, sc) end
    end
  end

  SX["break"] = function() return function() return BREAK end end
  SX["continue"] = function() return function() return CONTINUE end end

  local function assigner(t)
    if t.k == "nsref" then
      local name, attr = t.name, t.attr
      return function(sc, v)
        local ns = sc[name]
        if kind(ns) ~= "ns" then
          if ns == nil or kind(ns) == "undef" then fail("'%s' is undefined", name) end
          fail("cannot assign attribute on non-namespace object")
        end
        jset(ns, attr, v)
      end
    end
    return binder(t)
  end

  SX.set = function(n)
    local e, assign, line = cexpr(n.e), assigner(n.target), n.line
    return function(ctx, sc)
      ctx.line = line
      assign(sc, e(ctx, sc))
    end
  end

  local function cfilters(list_)
    local fs = {}
    for i = 1, #list_ do fs[i] = cfilter(list_[i]) end
    return function(ctx, sc, v)
      for i = 1, #fs do v = fs[i](ctx, sc, v) end
      return v
    end
  end

  SX.setblock = function(n)
    local body, assign, filters, line = cbody(n.body), assigner(n.target), cfilters(n.filters), n.line
    return function(ctx, sc)
      local v = capture(ctx, body, sc)
      ctx.line = line
      assign(sc, filters(ctx, sc, v))
    end
  end

  SX.filterblock = function(n)
    local body, filters, line = cbody(n.body), cfilters(n.filters), n.line
    return function(ctx, sc)
      local v = capture(ctx, body, sc)
      ctx.line = line
      write(ctx, tostr(filters(ctx, sc, v)))
    end
  end

  SX.with = function(n)
    local body, values, binds, noscope = cbody(n.body), cexprs(n.values), {}, n.noscope
    for i, t in ipairs(n.targets) do binds[i] = binder(t) end
    return function(ctx, sc)
      if noscope then return body(ctx, sc) end
      local vals = {}
      for i = 1, #values do vals[i] = values[i](ctx, sc) end
      local wsc = setmetatable({}, { __index = sc })
      for i = 1, #binds do binds[i](wsc, vals[i]) end
      return body(ctx, wsc)
    end
  end

  SX["do"] = function(n)
    local e, line = cexpr(n.e), n.line
    return function(ctx, sc) ctx.line = line; e(ctx, sc) end
  end

  local function make_macro(n, body, defaults, sc, name)
    return setmetatable({ name = name or n.name, params = n.params, defaults = defaults, body = body,
      scope = sc, varargs = n.refs.varargs, kwargs = n.refs.kwargs }, macro_mt)
  end

  local function cdefaults(n)
    local d = {}
    for i = 1, #n.params do if n.defaults[i] then d[i] = cexpr(n.defaults[i]) end end
    return d
  end

  SX.macro = function(n)
    local body, defaults, name = cbody(n.body), cdefaults(n), n.name
    return function(_, sc) sc[name] = make_macro(n, body, defaults, sc) end
  end

  call_macro = function(ctx, m, args, kw, caller)
    local depth = ctx.depth + 1
    if depth > MAX_DEPTH then fail("maximum recursion depth exceeded calling macro '%s'", m.name) end
    ctx.depth = depth
    local msc = setmetatable({}, { __index = m.scope })
    local params = m.params
    local np, na = #params, #args
    if na > np and not m.varargs then
      fail("TypeError: macro '%s' takes not more than %d argument(s)", m.name, np)
    end
    for i = 1, np do
      local p = params[i]
      local v = args[i]
      if kw and kw[p] ~= nil then
        if v ~= nil then fail("TypeError: macro '%s' got multiple values for argument '%s'", m.name, p) end
        v = kw[p]
      end
      if v == nil then
        local d = m.defaults[i]
        if d then v = d(ctx, msc)
        else
          v = undef(p)
          v.hint = format("parameter '%s' was not provided", p)
        end
      end
      msc[p] = v
    end
    if m.varargs then
      local extra = {}
      for i = np + 1, na do extra[i - np] = args[i] end
      msc.varargs = tuple(extra)
    end
    if kw then
      local extra = dict()
      local seen = {}
      for i = 1, np do seen[params[i]] = true end
      for _, k in ipairs(jkeys(kw)) do
        if not seen[k] then
          if not m.kwargs then fail("TypeError: macro '%s' takes no keyword argument '%s'", m.name, k) end
          jset(extra, k, kw[k])
        end
      end
      if m.kwargs then msc.kwargs = extra end
    elseif m.kwargs then
      msc.kwargs = dict()
    end
    if caller then msc.caller = caller end
    local s = capture(ctx, m.body, msc)
    ctx.depth = depth - 1
    return s
  end

  SX.callblock = function(n)
    local call = n.call
    local body, defaults, line = cbody(n.body), cdefaults(n), n.line
    local fc, ev = cexpr(call.fn), cargs(call.args, call.kwargs)
    return function(ctx, sc)
      ctx.line = line
      local caller = make_macro(n, body, defaults, sc, "caller")
      local f = fc(ctx, sc)
      local args, kw = ev(ctx, sc)
      if kind(f) ~= "macro" then fail("TypeError: {%% call %%} needs a macro, got '%s'", pytype(f)) end
      write(ctx, call_macro(ctx, f, args, kw, caller))
    end
  end
end

---------------------------------------------------------------------------------------------
-- Public API

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
  local s0, b0 = limits_swap(0, 0) -- a Lua function called from a template may render too
  local ok, err = pcall(self.fn, ctx, root)
  limits_swap(s0, b0)
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

---------------------------------------------------------------------------------------------
-- Methods of str, list, dict and tuple values: fn(ctx, self, args, kwargs)

local arg, want_str, opt_int, replace, dict_items
do
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
    local r = concat(out, "", 1, n)
    check_len(#r)
    return r
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
    local r = concat(parts, s, 1, n)
    check_len(#r)
    return r
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
  -- loop.* and globals

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

  local function native(f) BUILTIN[f] = true; return f end
  local function builtin(name, f) GLOBALS[name] = native(f) end

  builtin("range", function(_, args)
    local a, b, c = opt_int(args[1], "range arg"), opt_int(args[2], "range arg"), opt_int(args[3], "range arg")
    if a == nil then fail("TypeError: range expected at least 1 argument, got 0") end
    if b == nil then a, b = 0, a end
    c = c or 1
    if c == 0 then fail("ValueError: range() arg 3 must not be zero") end
    local cnt = c > 0 and floor((b - a + c - 1) / c) or floor((a - b - c - 1) / -c)
    if cnt > MAX_ITER then fail("range of %d items is too large", cnt) end
    if cnt > 0 then spend(cnt) end
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
end

---------------------------------------------------------------------------------------------
-- Tests: fn(value, args) -> boolean

do
  local function is_kind(...)
    local set = {}
    for i = 1, select("#", ...) do set[select(i, ...)] = true end
    return function(v) return set[kind(v)] == true end
  end

  TESTS.defined = function(v) return kind(v) ~= "undef" end
  TESTS.undefined = function(v) return kind(v) == "undef" end
  TESTS.none = function(v) return v == null end
  TESTS.string = function(v) return type(v) == "string" or getmetatable(v) == markup_mt end
  TESTS.number = function(v) return numval(v) ~= nil end
  TESTS.integer = function(v) return is_int(v) end
  TESTS.float = function(v) local x, fl = numval(v); return x ~= nil and fl end
  TESTS.boolean = function(v) return type(v) == "boolean" end
  TESTS.mapping = is_kind("dict")
  TESTS.sequence = is_kind("str", "markup", "list", "tuple", "dict", "undef")
  TESTS.iterable = is_kind("str", "markup", "list", "tuple", "dict", "undef", "iter")
  TESTS.callable = is_kind("func", "macro", "bound")
  TESTS["true"] = function(v) return v == true end
  TESTS["false"] = function(v) return v == false end
  TESTS.escaped = function() return false end

  local function num_arg(v, what)
    local x = numval(v)
    if x == nil then
      if kind(v) == "undef" then fail_undef(v) end
      fail("TypeError: %s needs a number, got %s", what, pytype(v))
    end
    return x
  end
  TESTS.odd = function(v) return num_arg(v, "odd") % 2 == 1 end
  TESTS.even = function(v) return num_arg(v, "even") % 2 == 0 end
  TESTS.divisibleby = function(v, args)
    local d = num_arg(args[1], "divisibleby")
    if d == 0 then fail("ZeroDivisionError: integer modulo by zero") end
    return num_arg(v, "divisibleby") % d == 0
  end

  for names, f in next, {
    ["eq equalto =="] = COMPARE.eq, ["ne !="] = COMPARE.ne, ["lt lessthan <"] = COMPARE.lt,
    ["gt greaterthan >"] = COMPARE.gt, ["le <="] = COMPARE.le, ["ge >="] = COMPARE.ge,
  } do
    for name in gmatch(names, "%S+") do TESTS[name] = function(v, args) return f(v, args[1]) end end
  end
  TESTS["in"] = function(v, args) return contains(args[1], v) end
  TESTS.sameas = function(v, args) return v == args[1] end
  TESTS.lower = function(v) return STR_METHODS.islower(nil, tostr(v)) end
  TESTS.upper = function(v) return STR_METHODS.isupper(nil, tostr(v)) end
  TESTS.filter = function(v) return FILTERS[v] ~= nil end
  TESTS.test = function(v) return TESTS[v] ~= nil end

  ---------------------------------------------------------------------------------------------
  -- Filters: fn(ctx, value, args, kwargs)

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
    local r = concat(parts, tostr(arg(args, kw, 1, "d", "")), 1, n)
    check_len(#r)
    return r
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
    local s, err = json.encode(v, opts)
    if not s then fail("TypeError: %s", (gsub(err, "^json: ", ""))) end
    return s
  end
end

---------------------------------------------------------------------------------------------
-- Builtin templates for the common prompt formats, for models whose GGUF has no template.
-- Render variables: messages, add_generation_prompt, bos_token, eos_token.

local BUILTIN_SRC = {
  chatml = [==[
{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\n' }}
{%- endif -%}
]==],

  llama2 = [==[
{%- if messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- set content = message['content'] -%}
    {%- if loop.first and system is defined -%}
      {%- set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content -%}
    {%- endif -%}
    {{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}
  {%- else -%}
    {{ ' ' + message['content'] | trim + ' ' + eos_token }}
  {%- endif -%}
{%- endfor -%}
]==],

  llama3 = [==[
{{- bos_token -}}
{%- for message in messages -%}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif -%}
]==],

  mistral = [==[
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}
  {%- else -%}
    {{ message['content'] + eos_token }}
  {%- endif -%}
{%- endfor -%}
]==],

  phi3 = [==[
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\n' }}
{%- else -%}
{{ eos_token }}
{%- endif -%}
]==],

  gemma = [==[
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
  {%- set prefix = messages[0]['content'] | trim + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set prefix = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}
]==],

  zephyr = [==[
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\n' }}
{%- endif -%}
]==],
}

-- builtin(name) -> Jinja source | nil, err
function _M.builtin(name)
  local src = BUILTIN_SRC[name]
  if src then return src end
  return nil, format("unknown builtin template '%s' (have: %s)", tostring(name), concat(_M.builtin_names(), ", "))
end

function _M.builtin_names()
  local names = {}
  for k in next, BUILTIN_SRC do names[#names + 1] = k end
  sort(names)
  return names
end

return _M
