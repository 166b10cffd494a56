-- Cold start: what the first use of a model costs. lm.load with prepare = true packs the
-- weights during the load (with a progress callback); the first 128-token prefill after it
-- must cost no more than the second (nothing left to pack on first use). Without prepare,
-- the first decode packs: shown for comparison.
--   lua5.4 bench/coldstart.lua [file.gguf]   (default: the TinyLlama-shape Q4_K_M file of
--                                             the board, written if missing)
-- CPU seconds of the process beside the wall clock tell whether packing ran on every thread
-- (CPU ≈ threads × wall) on this shared machine.
local lm = require "moonlm"
local B = require "common"
local gen = require "modelgen"

local threads = tonumber(os.getenv("THREADS")) or 2
local N = tonumber(os.getenv("N")) or 128
lm.threads(threads)

local path = arg[1]
if not path then
  path = B.build .. "/bench-models/tinyllama-q4_k_m.gguf"
  local f = io.open(path)
  if f then f:close() else
    os.execute("mkdir -p " .. B.build .. "/bench-models")
    io.stderr:write("writing " .. path .. " ...\n")
    assert(gen.write(path, gen.shapes.tinyllama, "q4_k_m"))
    collectgarbage()
  end
end

local function ids(n, seed)
  local t = {}
  for i = 1, n do
    seed = (seed * 1103515245 + 12345) % 2147483648
    t[i] = 3 + seed % 31000
  end
  return t
end

local function prefill(model, seed)
  local ctx = assert(model:context { n_ctx = N + 8, n_batch = N })
  local w0, c0 = lm.clock(), os.clock()
  assert(ctx:decode(ids(N, seed), { logits = "last" }))
  local w, c = lm.clock() - w0, os.clock() - c0
  ctx:close()
  return w, c
end

B.row("## Cold start, %s, %d threads, %s (load average %s)", path:match("[^/]+$"), threads, os.date("!%H:%M UTC"),
  (io.open("/proc/loadavg"):read("*l"):match("^(%S+ %S+ %S+)")))
B.row("")
B.row("| load | pack (wall s) | pack CPU s | progress calls | 1st prefill %d (s) | 2nd prefill %d (s) |", N, N)
B.row("|---|---|---|---|---|---|")
for _, prepare in ipairs { true, false } do
  local calls = 0
  local w0, c0 = lm.clock(), os.clock()
  local model = assert(lm.load(path, prepare and { prepare = true, progress = function() calls = calls + 1 end } or nil))
  local lw, lc = lm.clock() - w0, os.clock() - c0
  local f1 = prefill(model, 7)
  local f2 = prefill(model, 8)
  B.row("| %s | %.2f | %.2f | %s | %.3f | %.3f |", prepare and "prepare = true" or "plain", lw, lc,
    prepare and tostring(calls) or "-", f1, f2)
  model:close()
  collectgarbage()
end
