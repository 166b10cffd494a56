-- moonlm.template.text: UTF-8 strings as Python's str sees them. Length, indexing and
-- slicing count code points; strip and split use str.isspace's whitespace (ASCII and the
-- Unicode spaces); upper/lower map ASCII, Latin-1, Greek and Cyrillic. Pure ASCII input
-- takes the byte-level fast paths.

local json = require "moonlm.json"

local _M = {}

local ipairs = ipairs
local byte, char, find, sub, gsub, gmatch =
  string.byte, string.char, string.find, string.sub, string.gsub, string.gmatch
local s_upper, s_lower = string.upper, string.lower
local concat = table.concat
local utf8_char = json.utf8_char

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

_M.is_ascii, _M.uchars, _M.ulen = is_ascii, uchars, ulen
_M.UWS, _M.is_ascii_ws, _M.strip, _M.rstrip_ws = UWS, is_ascii_ws, strip, rstrip_ws
_M.upper, _M.lower, _M.is_cased = upper, lower, is_cased

return _M
