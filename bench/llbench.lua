-- moonlm measured the way llama-bench measures, so the board (bench/board.lua) can run every
-- engine as a process of its own and read one CSV format:
--   lua5.4 bench/llbench.lua -m file.gguf [-t 2] [-p 512] [-n 128] [-d 0] [-r 2] [-c n_ctx]
--                            [-ctk f16|q8_0]
-- Like llama-bench: one warm-up (a 1-token prompt and a 1-token generation), then the
-- prompt test and the generation test, each repeated r times; every repetition starts from
-- an empty cache, prefills d tokens untimed (-d), then times -p tokens in one decode call
-- (n_batch 512) or -n single-token decodes. Token ids are pseudo-random. Prints CSV with the
-- columns n_prompt, n_gen, n_depth, avg_ts, stddev_ts, samples_ts.
local lm = require "moonlm"

local a = { t = 2, p = 512, n = 128, d = 0, r = 2, c = 0, ctk = "f16" }
local i = 1
while i <= #arg do
  local k, v = arg[i]:match("^%-(%a+)$"), arg[i + 1]
  if not k or a[k] == nil and k ~= "m" then error("usage: llbench.lua -m file [-t -p -n -d -r -c -ctk]") end
  a[k] = (k == "m" or k == "ctk") and v or tonumber(v)
  i = i + 2
end
lm.threads(a.t)
local model = assert(lm.load(a.m))
local n_ctx = a.c > 0 and a.c or a.p + a.n + a.d + 1
local ctx = assert(model:context { n_ctx = n_ctx, n_batch = 512, kv_type = a.ctk })

local seed = 12345
local function rand_ids(n)
  local ids = {}
  for k = 1, n do
    seed = (seed * 1103515245 + 12345) % 2147483648
    ids[k] = 3 + seed % (model.n_vocab - 3)
  end
  return ids
end

local function prefill(n)
  local done = 0
  while done < n do
    local k = math.min(512, n - done)
    assert(ctx:decode(rand_ids(k), { logits = done + k == n and "last" or "none" }))
    done = done + k
  end
end

-- warm-up: packs the weights (as llama-bench's warm-up lets ik repack)
ctx:clear()
assert(ctx:decode(rand_ids(1)))
assert(ctx:decode(rand_ids(1)))

local function test(np, ng)
  local ts = {}
  for r = 1, a.r do
    ctx:clear()
    if a.d > 0 then prefill(a.d) end
    local prompt, gen = rand_ids(np), rand_ids(ng)
    collectgarbage()
    local t0 = lm.clock()
    if np > 0 then prefill(np) end
    for k = 1, ng do
      local l = assert(ctx:decode({ gen[k] }))
      l:close()
    end
    ts[r] = (np + ng) / (lm.clock() - t0)
  end
  local m = 0
  for _, x in ipairs(ts) do m = m + x end
  m = m / #ts
  local v = 0
  for _, x in ipairs(ts) do v = v + (x - m) ^ 2 end
  local s = {}
  for k, x in ipairs(ts) do s[k] = ("%.3f"):format(x) end
  io.write(("%d,%d,%d,%.6f,%.6f,\"%s\"\n"):format(np, ng, a.d, m, math.sqrt(v / math.max(1, #ts - 1)),
    table.concat(s, ";")))
  io.flush()
end

io.write("n_prompt,n_gen,n_depth,avg_ts,stddev_ts,samples_ts\n")
if a.p > 0 then test(a.p, 0) end
if a.n > 0 then test(0, a.n) end
ctx:close()
model:close()
