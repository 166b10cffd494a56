-- fuzz/loader.lua: hostile model files through the whole loader, not just the GGUF reader
-- (fuzz/gguf.c): lm.load's checks of keys, tensor types and shapes, the tokenizer, then
-- tokenize, generate and close on whatever loads.
--
--   lua5.4 fuzz/loader.lua [seconds [seed [failures_dir]]]     (make fuzz-loader)
--   luajit fuzz/loader.lua ...
-- Run it on the sanitizer build (make fuzz-loader SAN=1) to catch memory errors too.
--
-- Cases are MOONLM_SHARED/models/stories260K.gguf with bytes flipped, fields overwritten
-- with boundary values (0, 1, -1, 2^31, 2^32, 2^63, ...), spans deleted or repeated, or the
-- file cut short; most edits land in the header (keys, vocabulary, tensor table), where a
-- byte decides what the loader believes. A case fails when:
--   - lm.load raises instead of returning nil, err (a file is data: nothing may raise)
--   - a model that loaded raises from tokenize, detokenize, generate or close (except the
--     clear "this model has no tokenizer" of a file left without tokenizer keys)
--   - the process dies (the run stops: the case is in failures_dir/current.gguf)
-- Failing files are written to failures_dir (default /tmp/moonlm-loader-fuzz) and the run
-- exits 1. The last line is "N cases, N failures".
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local lm = require "moonlm"

local seconds = tonumber(arg[1]) or 60
local seed = tonumber(arg[2]) or os.time()
local outdir = arg[3] or "/tmp/moonlm-loader-fuzz"
math.randomseed(seed)
local random = math.random

local shared = os.getenv("MOONLM_SHARED") or "../shared"
local f = assert(io.open(shared .. "/models/stories260K.gguf", "rb"))
local base = f:read("*a")
f:close()
-- the header ends where the tensor data begins: the tensor table's last name is followed by
-- its dims, type and offset, then padding; near enough for where edits should land
local header = select(2, base:find("output.weight", 1, true)) or 32768
header = math.min(#base, header + 64)

local VALUES = { 0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff }

local function le(v, n) -- v as n little-endian bytes (v >= 0 below 2^53, or -1: all ones)
  local t = {}
  for i = 1, n do
    if v == -1 then t[i] = 255 else t[i] = v % 256; v = math.floor(v / 256) end
  end
  return string.char((table.unpack or unpack)(t))
end

local function mutate(s)
  for _ = 1, random(1, 4) do
    local n = #s
    local limit = random() < 0.85 and math.min(header, n) or n
    local a = random(1, math.max(limit, 1))
    local r = random(6)
    if r == 1 then -- flip a bit of a byte
      local b, bit = s:byte(a) or 0, 2 ^ random(0, 7)
      b = math.floor(b / bit) % 2 == 1 and b - bit or b + bit
      s = s:sub(1, a - 1) .. string.char(b) .. s:sub(a + 1)
    elseif r == 2 then -- a boundary value as a 1, 2, 4 or 8-byte field
      local w = ({ 1, 2, 4, 8 })[random(4)]
      local v = random() < 0.1 and -1 or VALUES[random(#VALUES)]
      if w == 8 and random() < 0.3 then v = ({ 2 ^ 32, 2 ^ 40, 2 ^ 52 })[random(3)] end
      s = s:sub(1, a - 1) .. le(v, w) .. s:sub(a + w)
    elseif r == 3 then -- a random byte
      s = s:sub(1, a - 1) .. string.char(random(0, 255)) .. s:sub(a + 1)
    elseif r == 4 then -- delete a span
      s = s:sub(1, a - 1) .. s:sub(a + random(1, 64))
    elseif r == 5 then -- repeat a span
      local b = math.min(n, a + random(0, 64))
      s = s:sub(1, b) .. s:sub(a, b) .. s:sub(b + 1)
    else -- cut the file short
      s = s:sub(1, random(1, n))
    end
  end
  return s
end

os.execute("mkdir -p " .. outdir)
local path = outdir .. "/current.gguf"
local cases, failures, loaded, refused = 0, 0, 0, 0
local wall0 = os.time()
print(("loader fuzz: %d s, seed %d, %s, header %d of %d bytes"):format(seconds, seed, jit and jit.version or _VERSION,
  header, #base))

local function report(data, why)
  failures = failures + 1
  local p = ("%s/fail-%d-%d.gguf"):format(outdir, seed, failures)
  local h = io.open(p, "wb")
  if h then
    h:write(data)
    h:close()
  end
  print(("FAIL %s: %s"):format(p, why))
end

while os.time() - wall0 < seconds do
  cases = cases + 1
  local data = mutate(base)
  -- a new file each time: a model of the last case may still be alive (until collected), and
  -- bytes rewritten under its mapping would crash it (SIGBUS past a shorter end), as they
  -- would any program that maps files
  os.remove(path)
  local h = assert(io.open(path, "wb"))
  h:write(data)
  h:close()
  local ok, m, err = pcall(lm.load, path)
  if not ok then
    report(data, "load raised: " .. tostring(m))
  elseif not m then
    refused = refused + 1
    if type(err) ~= "string" or err == "" then report(data, "load gave nil and no message") end
  else
    loaded = loaded + 1
    local ok2, e2 = pcall(function()
      local ids = m:tokenize("Once upon a time, héllo", { bos = true })
      m:detokenize(ids)
      local text, info = m:generate("Once", { max_tokens = 3, temperature = 0 })
      if text == nil and type(info) ~= "string" then error("generate gave nil and no message") end
    end)
    -- a file whose tokenizer keys were edited away loads as weights only (m.vocab == false):
    -- text in or out is refused with that clear error, which is not a failure
    if not ok2 and not (m.vocab == false and tostring(e2):find("this model has no tokenizer", 1, true)) then
      report(data, "use raised: " .. tostring(e2))
    end
    local ok3, e3 = pcall(m.close, m)
    if not ok3 then report(data, "close raised: " .. tostring(e3)) end
  end
  if cases % 500 == 0 then
    collectgarbage()
    io.write(("%d cases (%d loaded, %d refused), %d failures, %.0f s CPU\n"):format(cases, loaded, refused, failures,
      os.clock()))
    io.flush()
  end
  if failures >= 20 then break end
end
os.remove(path)
print(("%d cases, %d failures (%d loaded, %d refused; seed %d)"):format(cases, failures, loaded, refused, seed))
os.exit(failures == 0 and 0 or 1)
