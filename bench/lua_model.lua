-- A model written in Lua (examples/llama_in_lua.lua) next to the C forward pass on the same
-- file: prefill (pp) and decode (tg) tokens/s, the Lua figure as a fraction of the C one.
-- The two run alternately, round after round, in the same process, and each ratio is taken
-- within one round, so a loaded machine slows both sides of a ratio alike; the table gives
-- the median ratio and the load average before and after.
--   MODELS="smollm:q8_0" (shapes of bench/modelgen.lua); REPS=5; PP=256; TG=64; THREADS=2
local lm = require "moonlm"
local nn = require "moonlm.nn"
local B = require "common"
local gen = require "modelgen"
local Llama = dofile("examples/llama_in_lua.lua")

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 5
local PP, TG = tonumber(os.getenv("PP")) or 256, tonumber(os.getenv("TG")) or 64
lm.threads(threads)
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

-- tokens/s of a prefill of ids, and of TG decode steps after one token
local function pp_tps(ctx, ids)
  ctx:clear()
  local s = lm.clock()
  assert(ctx:decode(ids))
  return #ids / (lm.clock() - s)
end

local function tg_tps(ctx, n_vocab)
  ctx:clear()
  local id = 1
  local s = lm.clock()
  for _ = 1, TG do
    local l = assert(ctx:decode({ id }))
    id = 3 + (id * 31 + 7) % (n_vocab - 3)
    l:close()
  end
  return TG / (lm.clock() - s)
end

B.row("## A model written in Lua next to the C forward pass (%d threads, pp%d / tg%d, %d alternating rounds)",
  threads, PP, TG, reps)
B.row("| model | C pp t/s | Lua pp t/s | Lua/C pp | C tg t/s | Lua tg t/s | Lua/C tg | load average before / after |")
B.row("|---|---|---|---|---|---|---|---|")
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
  local load0 = loadavg()
  -- warm-up: both sides once
  pp_tps(cctx, ids); pp_tps(lctx, ids); tg_tps(cctx, model.n_vocab); tg_tps(lctx, model.n_vocab)
  local cpp, lpp, ctg, ltg, rpp, rtg = {}, {}, {}, {}, {}, {}
  for r = 1, reps do
    -- alternate which side goes first
    local a, b = cctx, lctx
    if r % 2 == 0 then a, b = lctx, cctx end
    local pa, pb = pp_tps(a, ids), pp_tps(b, ids)
    local ta, tb = tg_tps(a, model.n_vocab), tg_tps(b, model.n_vocab)
    if a == lctx then pa, pb, ta, tb = pb, pa, tb, ta end
    cpp[r], lpp[r], ctg[r], ltg[r] = pa, pb, ta, tb
    rpp[r], rtg[r] = pb / pa, tb / ta
    collectgarbage()
  end
  B.row("| %s %s | %.1f | %.1f | %.0f%% | %.1f | %.1f | %.0f%% | %s / %s |", shape, wtype, median(cpp), median(lpp),
    100 * median(rpp), median(ctg), median(ltg), 100 * median(rtg), load0, loadavg())
  lctx:close()
  cctx:close()
  model:close()
end
