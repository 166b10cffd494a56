-- Attention over a long cache, alone: tensor.attention (the forward pass's kernel, flash.c)
-- at decode (1 query row) and prefill (PP query rows after DEPTH cached keys) in the
-- TinyLlama (32 heads over 4, head 64) and SmolLM (9 over 3, head 64) shapes, per layer.
--   lua5.4 bench/attention.lua            the table (best of REPS, 2 threads)
--   ONLY=decode|prefill SHAPES=smollm DEPTHS=4096 KV=f16,q8_0 REPS=1 THREADS=1
--                                         one cell (for callgrind / perf stat)
-- GFLOP/s counts 4·d multiply-adds... as flops: 2 (q·k) + 2 (p·v) per head, key and dim.
local lm = require "moonlm"
local B = require "common"
local T = lm.tensor

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 5
local PP = tonumber(os.getenv("PP")) or 512
local only = os.getenv("ONLY")
local shapes = {
  tinyllama = { H = 32, Hk = 4, d = 64 },
  smollm = { H = 9, Hk = 3, d = 64 },
}
local shape_list = os.getenv("SHAPES") or "smollm,tinyllama"
local depths = os.getenv("DEPTHS") or "0,1536,4096"
local kvs = os.getenv("KV") or "f16,q8_0"
lm.threads(threads)

B.row("## Attention alone (tensor.attention, causal), %d threads, best of %d; %s", threads, reps,
  os.date("!%H:%M UTC"))
B.row("")
B.row("| shape | kv | depth | decode µs/layer | decode GB/s of K+V | prefill %d ms/layer | prefill GFLOP/s |", PP)
B.row("|---|---|---|---|---|---|---|")
for sname in shape_list:gmatch("[^,]+") do
  local s = assert(shapes[sname], "unknown shape " .. sname)
  for kv in kvs:gmatch("[^,]+") do
    for dstr in depths:gmatch("%d+") do
      local depth = tonumber(dstr)
      local row = { sname, kv, depth, "-", "-", "-", "-" }
      if only ~= "prefill" and depth > 0 then
        local q = T.randn({ s.H, 1, s.d }, { seed = 1 })
        local k = T.randn({ s.Hk, depth + 1, s.d }, { seed = 2 }):to(kv)
        local v = T.randn({ s.Hk, depth + 1, s.d }, { seed = 3 }):to(kv)
        local t = B.best(function() T.attention(q, k, v, { causal = true }) end, reps)
        local bytes = 2 * s.Hk * (depth + 1) * (kv == "f16" and 2 * s.d or 34 * s.d / 32)
        row[4], row[5] = ("%.1f"):format(t * 1e6), ("%.1f"):format(bytes / t / 1e9)
      end
      if only ~= "decode" then
        local n_kv = depth + PP
        local q = T.randn({ s.H, PP, s.d }, { seed = 1 })
        local k = T.randn({ s.Hk, n_kv, s.d }, { seed = 2 }):to(kv)
        local v = T.randn({ s.Hk, n_kv, s.d }, { seed = 3 }):to(kv)
        local t = B.best(function() T.attention(q, k, v, { causal = true }) end, math.max(1, reps // 2))
        -- causal: row i sees depth + i + 1 keys
        local pairs_ = PP * depth + PP * (PP + 1) / 2
        row[6], row[7] = ("%.2f"):format(t * 1e3), ("%.1f"):format(4 * s.H * s.d * pairs_ / t / 1e9)
      end
      B.row("| %s |", table.concat(row, " | "))
    end
  end
end
