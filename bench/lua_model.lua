-- A model written in Lua (examples/llama_in_lua.lua) next to the C forward pass on the same
-- file: prefill (pp) and decode (tg) tokens/s, the Lua figure as a fraction of the C one.
-- The two run alternately, round after round, in the same process, and each ratio is taken
-- within one round, so a loaded machine slows both sides of a ratio alike; the table gives
-- the median ratio and the load average before and after. Two ratios: of wall-clock speed,
-- and of CPU time (process CPU seconds per token, os.clock), which a loaded machine
-- disturbs less (a thread waiting at a barrier for a descheduled one still spins, so with
-- 2 threads it counts some waiting; with 1 thread it is the work alone).
--   MODELS="smollm:q8_0" (shapes of bench/modelgen.lua); REPS=7; PP=128; TG=32; THREADS="2,1"
local lm = require "moonlm"
local nn = require "moonlm.nn"
local B = require "common"
local gen = require "modelgen"
local Llama = dofile("examples/llama_in_lua.lua")

local thread_list = os.getenv("THREADS") or "2,1"
local reps = tonumber(os.getenv("REPS")) or 7
local PP, TG = tonumber(os.getenv("PP")) or 128, tonumber(os.getenv("TG")) or 32
local list = os.getenv("MODELS") or "smollm:q8_0"
local dir = B.build .. "/bench-models"
os.execute("mkdir -p " .. dir)

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("*l")
  f:close()
  return s:match("^(%S+)")
end

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

-- tokens per wall-clock second and per CPU second of a prefill of ids, and of TG decode
-- steps after one token
local function pp_tps(ctx, ids)
  ctx:clear()
  local s, c = lm.clock(), os.clock()
  assert(ctx:decode(ids))
  return #ids / (lm.clock() - s), #ids / (os.clock() - c)
end

local function tg_tps(ctx, n_vocab)
  ctx:clear()
  local id = 1
  local s, c = lm.clock(), os.clock()
  for _ = 1, TG do
    local l = assert(ctx:decode({ id }))
    id = 3 + (id * 31 + 7) % (n_vocab - 3)
    l:close()
  end
  return TG / (lm.clock() - s), TG / (os.clock() - c)
end

local interp = jit and jit.version or _VERSION
B.row("## A model written in Lua next to the C forward pass (%s; pp%d / tg%d, %d alternating rounds, medians)", interp, PP,
  TG, reps)
B.row("| model | threads | C pp t/s | Lua pp t/s | Lua/C pp (wall) | Lua/C pp (CPU) | C tg t/s | Lua tg t/s | Lua/C tg (wall) | Lua/C tg (CPU) | load average before / after |")
B.row("|---|---|---|---|---|---|---|---|---|---|---|")
for item in list:gmatch("[^,]+") do
  local shape, wtype = item:match("([^:]+):([^:]+)")
  local path = ("%s/%s-%s.gguf"):format(dir, shape, wtype)
  local f = io.open(path)
  if f then f:close() else
    io.stderr:write(("writing %s ...\n"):format(path))
    assert(gen.write(path, gen.shapes[shape], wtype))
    collectgarbage()
  end
  local model = assert(lm.load(path, { prepare = true }))
  local net = Llama.from(model)
  local n_ctx = PP + TG + 16
  local cctx = assert(model:context { n_ctx = n_ctx })
  local lctx = assert(nn.context(net, { n_ctx = n_ctx }))
  local ids = {}
  for i = 1, PP do ids[i] = 3 + (i * 7919) % (model.n_vocab - 3) end
  for th in thread_list:gmatch("%d+") do
    lm.threads(tonumber(th))
    local load0 = loadavg()
    -- warm-up: both sides once
    pp_tps(cctx, ids); pp_tps(lctx, ids); tg_tps(cctx, model.n_vocab); tg_tps(lctx, model.n_vocab)
    local r = { cpp = {}, lpp = {}, ctg = {}, ltg = {}, wpp = {}, cpu_pp = {}, wtg = {}, cpu_tg = {} }
    for k = 1, reps do
      -- alternate which side goes first
      local C, Lw = {}, {}
      local order = k % 2 == 1 and { cctx, lctx } or { lctx, cctx }
      for _, ctx in ipairs(order) do
        local t = ctx == cctx and C or Lw
        t.pp, t.ppc = pp_tps(ctx, ids)
      end
      for _, ctx in ipairs(order) do
        local t = ctx == cctx and C or Lw
        t.tg, t.tgc = tg_tps(ctx, model.n_vocab)
      end
      r.cpp[k], r.lpp[k], r.ctg[k], r.ltg[k] = C.pp, Lw.pp, C.tg, Lw.tg
      r.wpp[k], r.cpu_pp[k] = Lw.pp / C.pp, Lw.ppc / C.ppc
      r.wtg[k], r.cpu_tg[k] = Lw.tg / C.tg, Lw.tgc / C.tgc
      collectgarbage()
    end
    B.row("| %s %s | %s | %.1f | %.1f | %.0f%% | %.0f%% | %.1f | %.1f | %.0f%% | %.0f%% | %s / %s |", shape, wtype, th,
      median(r.cpp), median(r.lpp), 100 * median(r.wpp), 100 * median(r.cpu_pp), median(r.ctg), median(r.ltg),
      100 * median(r.wtg), 100 * median(r.cpu_tg), load0, loadavg())
  end
  lctx:close()
  cctx:close()
  model:close()
end
