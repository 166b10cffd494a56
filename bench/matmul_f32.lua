-- f32 matmul through OpenBLAS sgemm, next to the machine's FMA peak measured in the same run.
local lm = require "moonlm"
local B = require "common"
local T = lm.tensor

local threads = tonumber(os.getenv("THREADS")) or 2
lm.threads(threads)
local peak = B.peak("fma", threads)
B.row("## f32 matmul (OpenBLAS sgemm), %d threads; FMA peak measured now: %.1f GFLOP/s", threads, peak)
B.row("| M x K x N | GFLOP/s | of FMA peak |")
B.row("|---|---|---|")
for _, s in ipairs{{512, 512, 512}, {2048, 512, 2048}} do
  local M, K, N = s[1], s[2], s[3]
  local a, b = T.randn({M, K}, {seed = 1}), T.randn({K, N}, {seed = 2})
  local t = B.best(function() a:matmul(b) end, 7)
  local gf = 2 * M * K * N / t / 1e9
  B.row("| %d x %d x %d | %.1f | %.0f%% |", M, K, N, gf, 100 * gf / peak)
end
