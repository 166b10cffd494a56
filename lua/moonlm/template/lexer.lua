-- moonlm.template.lexer: template source -> flat token list. Data, comments and raw blocks
-- are handled here, with Jinja's whitespace control: "-" strips all whitespace on that
-- side, trim_blocks drops the newline after a block or comment tag, lstrip_blocks drops the
-- blanks before one when they start a line, and "+" turns lstrip off for one tag.
--
-- Token: { t = kind, v = value, line = n }; kinds: data, var_begin, var_end, block_begin,
-- block_end, name, string, int, float, op, eof. Errors are raised as { tmsg, line }.

local json = require "moonlm.json"
local rstrip_ws = require("moonlm.template.text").rstrip_ws

local _M = {}

local tonumber, error = tonumber, error
local byte, find, sub, format, gsub, match, gmatch =
  string.byte, string.find, string.sub, string.format, string.gsub, string.match, string.gmatch
local concat = table.concat
local floor = math.floor
local utf8_char, mkfloat = json.utf8_char, json.float

local lex

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

-- newlines in s[i..j]: looks at those bytes only (a search for the next newline from i
-- would read to the end of a template with none, making the lexer quadratic)
local function count_nl(s, i, j)
  if j < i then return 0 end
  if j - i < 64 then
    local n = 0
    for k = i, j do if byte(s, k) == 10 then n = n + 1 end end
    return n
  end
  local _, n = gsub(sub(s, i, j), "\n", "")
  return n
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

_M.lex = lex

return _M
