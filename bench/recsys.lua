-- make bench: the DLRM-style recommender of examples/recsys.lua, p50 / p99 latency and
-- requests/s for batches of 1, 64 and 512, on one thread (a request per core, as
-- recommendation servers usually run) and on all of them.
local lm = require "moonlm"
local recsys = dofile("examples/recsys.lua")

io.write("## Recommender (DLRM-style click model, examples/recsys.lua)\n\n")
io.write("26 embedding tables (1k / 10k / 100k rows, dim 64), bottom MLP 13-512-256-64, dot interaction,\n")
io.write("top MLP 415-512-256-1. Production CPU recommenders aim at p99 under 15 ms.\n\n")
local saved = lm.threads()
for _, n in ipairs { 1, lm.info().max_threads } do
  lm.threads(n)
  recsys.report { seconds = 2 }
  io.write("\n")
  if lm.info().max_threads == 1 then break end
end
lm.threads(saved)
