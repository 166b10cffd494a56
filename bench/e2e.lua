-- End-to-end speed like llama-bench (-p 512 -n 128, 2 threads): prompt processing and
-- generation in tokens/s (mean ± sd over repetitions), time to first token for a 128-token
-- prompt, load time and memory, and generation as a fraction of the memory-bandwidth bound
-- (bandwidth measured now ÷ bytes of weights read per token). Models are written once into
-- build/bench-models/ by bench/modelgen.lua. LLAMA_BENCH=/path/to/llama-bench also runs
-- llama.cpp on the same files in the same run and prints our/their ratios.
--   MODELS="smollm:q8_0,tinyllama:q4_0" to choose; REPS=3; PP=512; TG=128
local lm = require "moonlm"
local B = require "common"
local gen = require "modelgen"

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 3
local PP, TG = tonumber(os.getenv("PP")) or 512, tonumber(os.getenv("TG")) or 128
lm.threads(threads)

local list = os.getenv("MODELS") or
  "smollm:q8_0,smollm:q4_0,smollm:bf16,tinyllama:q4_0,tinyllama:q4_k_m,tinyllama:q8_0,tinyllama:bf16,tinyllama:f16"
local dir = B.build .. "/bench-models"
os.execute("mkdir -p " .. dir)

local function rss_kb()
  local f = io.open("/proc/self/status")
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)")), tonumber(s:match("VmHWM:%s+(%d+)"))
end

local function stats(xs)
  local m = 0
  for _, x in ipairs(xs) do m = m + x end
  m = m / #xs
  local v = 0
  for _, x in ipairs(xs) do v = v + (x - m) ^ 2 end
  return m, math.sqrt(v / math.max(1, #xs - 1))
end

-- one CSV line: fields, quoted ("..." with "" for a quote) or bare
local function csv_fields(line)
  local f, i = {}, 1
  while i <= #line + 1 do
    if line:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while true do
        local q = line:find('"', j, true)
        if not q then buf[#buf + 1] = line:sub(j); i = #line + 2; break end
        buf[#buf + 1] = line:sub(j, q - 1)
        if line:sub(q + 1, q + 1) == '"' then buf[#buf + 1] = '"'; j = q + 2
        else i = q + 2; break end
      end
      f[#f + 1] = table.concat(buf)
    else
      local c = line:find(",", i, true) or #line + 1
      f[#f + 1] = line:sub(i, c - 1)
      i = c + 1
    end
  end
  return f
end

local function llama_bench(path)
  local exe = os.getenv("LLAMA_BENCH")
  if not exe or exe == "" then return nil end
  local p = io.popen(("%s -m %s -t %d -p %d -n %d -r %d -o csv 2>/dev/null"):format(exe, path, threads, PP, TG, reps))
  local out = p:read("*a")
  p:close()
  local pp, tg, header
  for line in out:gmatch("[^\n]+") do
    local f = csv_fields(line)
    if not header then
      header = {}
      for i, name in ipairs(f) do header[name] = i end
      if not (header.n_prompt and header.n_gen and header.avg_ts) then return nil end
    else
      local n_prompt, n_gen, avg = tonumber(f[header.n_prompt]), tonumber(f[header.n_gen]), tonumber(f[header.avg_ts])
      if n_prompt and n_gen and avg then
        if n_prompt > 0 and n_gen == 0 then pp = avg elseif n_gen > 0 and n_prompt == 0 then tg = avg end
      end
    end
  end
  return pp, tg
end

local bw = B.peak("bw", threads)
B.row("## End-to-end (llama-bench style, %d threads, pp%d / tg%d, %d reps); read bandwidth now: %.1f GB/s", threads, PP, TG, reps, bw)
B.row("| model | size | load | RSS after load | pp%d t/s | tg%d t/s | TTFT (128) | tg of bound | peak RSS | llama.cpp pp / tg | ours/theirs pp / tg |", PP, TG)
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
  collectgarbage()
  -- peak RSS per model: reset the high-water mark (Linux: "5" to clear_refs), which the
  -- benchmarks run before in the same process would otherwise own
  local cr = io.open("/proc/self/clear_refs", "w")
  if cr then cr:write("5"); cr:close() end
  local rss0 = rss_kb()
  local t0 = lm.clock()
  local model = assert(lm.load(path))
  local load_s = lm.clock() - t0
  local rss1 = rss_kb()
  local ctx = assert(model:context { n_ctx = PP + TG + 16 })
  local ids = {}
  for i = 1, PP do ids[i] = 3 + (i * 7919) % (model.n_vocab - 3) end
  -- prompt processing
  local pp = {}
  for r = 0, reps do
    ctx:clear()
    local s = lm.clock()
    assert(ctx:decode(ids))
    if r > 0 then pp[#pp + 1] = PP / (lm.clock() - s) end
  end
  -- generation from an empty context, one token at a time
  local tg = {}
  for r = 0, reps do
    ctx:clear()
    local s = lm.clock()
    local id = 1
    for _ = 1, TG do
      local l = assert(ctx:decode({ id }))
      id = 3 + (id * 31 + 7) % (model.n_vocab - 3)
      l:close()
    end
    if r > 0 then tg[#tg + 1] = TG / (lm.clock() - s) end
  end
  -- time to first token: a 128-token prompt, then the first sampled id
  local ttft = {}
  for r = 1, reps do
    ctx:clear()
    local s = lm.clock()
    local l = assert(ctx:decode({ table.unpack(ids, 1, 128) }))
    local _ = l:argmax()
    ttft[#ttft + 1] = lm.clock() - s
  end
  local _, hwm = rss_kb()
  local ppm, pps = stats(pp)
  local tgm, tgs = stats(tg)
  local ttm = stats(ttft)
  local bound = bw * 1e9 / model.weight_bytes
  local lpp, ltg = llama_bench(path)
  local size = io.open(path):seek("end") / 2 ^ 20
  B.row("| %s %s | %.0f MiB | %.0f ms | +%.0f MB | %.1f ± %.1f | %.1f ± %.1f | %.0f ms | %.0f%% | %.0f MB | %s | %s |",
    shape, wtype, size, load_s * 1000, (rss1 - rss0) / 1024, ppm, pps, tgm, tgs, ttm * 1000, 100 * tgm / bound,
    hwm / 1024, lpp and ("%.1f / %.1f"):format(lpp, ltg or 0) or "-",
    lpp and ("%.2f / %.2f"):format(ppm / lpp, tgm / (ltg or math.huge)) or "-")
  ctx:close()
  model:close()
  ctx, model = nil, nil
  collectgarbage()
end
