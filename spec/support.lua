-- Shared helpers for the specs: where the reference data is, reading raw float files,
-- comparing with tolerances. Reference data is read from ../shared, never copied here.
local _M = {}

_M.shared = os.getenv("MOONLM_SHARED") or "../shared"

function _M.path(rel) return _M.shared .. "/" .. rel end

function _M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function _M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- little-endian float32 file -> Lua array
function _M.read_f32(path)
  local s = _M.read_file(path)
  local out = {}
  if string.unpack then
    for i = 1, #s, 4 do out[#out + 1] = string.unpack("<f", s, i) end
  else -- LuaJIT: through the ffi
    local ffi = require "ffi"
    local nf = #s / 4
    local buf = ffi.new("float[?]", nf)
    ffi.copy(buf, s, #s)
    for i = 0, nf - 1 do out[i + 1] = buf[i] end
  end
  return out
end

-- is s well-formed UTF-8 (no overlongs, surrogates or truncated sequences)?
function _M.valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or c >= 0xC2 and c < 0xE0 and 2 or c >= 0xE0 and c < 0xF0 and 3
                or c >= 0xF0 and c < 0xF5 and 4 or nil
    if not len or i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = s:byte(k)
      if b < 0x80 or b >= 0xC0 then return false end
    end
    local c2 = s:byte(i + 1)
    if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 >= 0xA0) or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 >= 0x90) then
      return false
    end
    i = i + len
  end
  return true
end

function _M.tmpname(suffix)
  local n = os.tmpname()
  os.remove(n)
  return n .. (suffix or "")
end

-- max |a - b| over two arrays (or tensors through totable)
function _M.maxdiff(a, b)
  local m = 0
  assert(#a == #b, ("length %d vs %d"):format(#a, #b))
  for i = 1, #a do
    local d = math.abs(a[i] - b[i])
    if d ~= d then return math.huge end
    if d > m then m = d end
  end
  return m
end

function _M.flatten(t, out)
  out = out or {}
  if type(t) ~= "table" then out[#out + 1] = t return out end
  for i = 1, #t do _M.flatten(t[i], out) end
  return out
end

-- assert that |a - b| <= tol elementwise (nested tables, tensors or numbers)
function _M.near(a, b, tol, msg)
  local lm = require "moonlm"
  if lm.tensor.is_tensor(a) then a = a:totable() end
  if lm.tensor.is_tensor(b) then b = b:totable() end
  local fa, fb = _M.flatten(a), _M.flatten(b)
  local d = _M.maxdiff(fa, fb)
  assert(d <= tol, (msg or "") .. (" max difference %g > %g"):format(d, tol))
  return true
end

return _M
