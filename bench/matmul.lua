-- Quantized matmul kernels next to the machine's limits, measured in the same run:
--   GEMV (decode, one activation row) on 4096x4096 and 11008x4096 weights, enough copies
--   cycled (>= 320 MB) that they stream from memory: weight bytes per second / read
--   bandwidth (bench/peak.c's streaming sum), on THREADS threads and on one;
--   GEMM (prefill) 512x4096x4096: operations per second / the peak of the dot instruction
--   the kernel uses (vpdpbusd for the int8 formats, vdpbf16ps for bf16, FMA for f16, f32).
-- Weights are prepared as the model prepares them (x16 packed copy where the level has one).
-- On a shared machine other processes come and go within seconds, and the VM's memory
-- bandwidth switches between a slow and a fast state every few minutes; so each figure is
-- a ratio to the limit measured right before it (bandwidth before each type's GEMVs, the
-- dot peaks before the GEMMs), taken in ROUNDS rounds spread over the run, and the table
-- shows the round with the best ratio.
-- Environment: THREADS (2), ROUNDS (3), LEVELS ("avx2 avx512 amx", those this CPU has),
-- TYPES (all), QUICK=1 (one GEMV shape, M = 256, one round).
local lm = require "moonlm"
local core = require "moonlm.core"
local B = require "common"
local T = lm.tensor

local threads = tonumber(os.getenv("THREADS")) or 2
local quick = os.getenv("QUICK") == "1"
local rounds = tonumber(os.getenv("ROUNDS")) or (quick and 1 or 3)

local available = {}
for _, l in ipairs(lm.info().levels) do available[l] = true end
local levels = {}
for l in (os.getenv("LEVELS") or "avx2 avx512 amx"):gmatch("%S+") do
  if available[l] then levels[#levels + 1] = l end
end
local types = {}
for t in (os.getenv("TYPES") or "q4_0 q4_k q8_0 bf16 f16 q4_1 q5_0 q5_1 q2_k q3_k q5_k q6_k f32"):gmatch("%S+") do
  types[#types + 1] = t
end
local shapes = quick and {{4096, 4096}} or {{4096, 4096}, {11008, 4096}}
local GM, GN, GK = quick and 256 or 512, 4096, 4096

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("*l")
  f:close()
  return s:match("^(%S+)")
end

-- per figure: the measurement with the best ratio to its limit, over the rounds
local best = {}
local function keep(key, v, limit)
  if not best[key] or v / limit > best[key].r then best[key] = {v = v, r = v / limit, limit = limit} end
end

local now, seen = {}, {}
local function peak(what, nth)
  local p = io.popen(("%s/bench/peak %s %d"):format(B.build, what, nth))
  local v = tonumber(p:read("*a"):match("%S+%s+([%d%.]+)"))
  p:close()
  local key = what .. nth
  now[key] = v
  if v then
    seen[key] = seen[key] or {min = v, max = v}
    seen[key].min, seen[key].max = math.min(seen[key].min, v), math.max(seen[key].max, v)
  end
  return v
end

-- one random matrix per shape, quantized once per type; copies give distinct memory
local src, quantized = {}, {}
local function weight(ty, N, K)
  local key = ty .. N .. "x" .. K
  if not quantized[key] then
    local sk = N .. "x" .. K
    if not src[sk] then src[sk] = T.randn({N, K}, {seed = N + K}) end
    quantized[key] = src[sk]:quantize(ty)
  end
  return quantized[key]
end

local info_of = {}

-- GEMV: weight bytes per second over copies cycled, best of several passes
local function gemv(level, ty, N, K)
  local w0 = weight(ty, N, K)
  local nbytes = w0:nbytes()
  local copies = math.max(2, math.ceil(320e6 / nbytes))
  local ws, prep = {}, 0
  for i = 1, copies do
    ws[i] = core._weight(i == 1 and w0 or w0:clone(), level)
    prep = prep + ws[i]:info().prepare_seconds
  end
  local x = T.randn({1, K}, {seed = 3})
  local y = T.zeros({1, N})
  local function run(nth)
    lm.threads(nth)
    return nbytes * copies / B.best(function() for i = 1, copies do ws[i]:mm(x, "auto", y) end end, quick and 3 or 6) / 1e9
  end
  local key = ("%s %s %dx%d"):format(level, ty, N, K)
  keep("gemv " .. key, run(threads), now["bw" .. threads])
  if N == shapes[1][1] then keep("gemv1 " .. key, run(1), now.bw1) end
  lm.threads(threads)
  local info = ws[1]:info()
  info.pack_ms_per_mb = prep / copies * 1e3 / (nbytes / 1e6)
  info_of["gemv " .. level .. ty] = info
  for i = 1, copies do ws[i]:release() end
  collectgarbage()
end

local function gemm(level, ty)
  local w = core._weight(weight(ty, GN, GK), level)
  local x = T.randn({GM, GK}, {seed = 4})
  local y = T.zeros({GM, GN})
  lm.threads(threads)
  local t = B.best(function() w:mm(x, "auto", y) end, quick and 2 or 3)
  local pk = ty == "bf16" and now["bf16" .. threads] or (ty == "bf16" or ty == "f16" or ty == "f32") and now["fma" .. threads]
             or now["vnni" .. threads] or now["fma" .. threads]
  keep(("gemm %s %s"):format(level, ty), 2 * GM * GN * GK / t / 1e9, pk)
  info_of["gemm " .. level .. ty] = w:info()
  w:release()
end

local load0 = loadavg()
for r = 1, rounds do
  for _, ty in ipairs(types) do
    peak("bw", threads)
    peak("bw", 1)
    for _, l in ipairs(levels) do
      for _, s in ipairs(shapes) do gemv(l, ty, s[1], s[2]) end
    end
  end
  for _, what in ipairs{"fma", "vnni", "bf16"} do peak(what, threads) end
  for _, ty in ipairs(types) do
    for _, l in ipairs(levels) do gemm(l, ty) end
  end
end

local function range(key, unit)
  local r = seen[key]
  if not r then return "n/a" end
  if r.max - r.min < 0.02 * r.max then return ("%.0f %s"):format(r.max, unit) end
  return ("%.0f-%.0f %s"):format(r.min, r.max, unit)
end
local peak_name = {vnni = "int8 dot", bf16 = "bf16 dot", fma = "f32 FMA"}
local function peak_for(ty)
  if ty == "bf16" and seen["bf16" .. threads] then return "bf16" end
  if ty == "bf16" or ty == "f16" or ty == "f32" or not seen["vnni" .. threads] then return "fma" end
  return "vnni"
end

B.row("## Quantized matmul kernels")
B.row("")
B.row("Limits measured during the run (%d threads unless said): read bandwidth %s, 1 thread %s; f32 FMA %s; int8 dot (vpdpbusd) %s; bf16 dot (vdpbf16ps) %s. Each figure below is the best of %d rounds by its ratio to the limit measured just before it. Load average %s before, %s after.",
  threads, range("bw" .. threads, "GB/s"), range("bw1", "GB/s"), range("fma" .. threads, "GFLOP/s"),
  range("vnni" .. threads, "GOP/s"), range("bf16" .. threads, "GFLOP/s"), rounds, load0, loadavg())
B.row("")
B.row("### GEMV, 1 activation row: weight bytes streamed per second, %% of the read bandwidth")
B.row("")
local hdr, sep = "| type |", "|---|"
for _, l in ipairs(levels) do
  for _, s in ipairs(shapes) do
    hdr = hdr .. (" %s %dx%d |"):format(l, s[1], s[2])
    sep = sep .. "---|"
  end
  hdr = hdr .. (" %s 1 thread |"):format(l)
  sep = sep .. "---|"
end
B.row("%s kernel | packing |", hdr)
B.row("%s---|---|", sep)
for _, ty in ipairs(types) do
  local line, info = "| " .. ty .. " |", nil
  for _, l in ipairs(levels) do
    for _, s in ipairs(shapes) do
      local b = best[("gemv %s %s %dx%d"):format(l, ty, s[1], s[2])]
      line = line .. (" %.1f GB/s %.0f%% |"):format(b.v, 100 * b.r)
    end
    local b1 = best[("gemv1 %s %s %dx%d"):format(l, ty, shapes[1][1], shapes[1][2])]
    line = line .. (" %.1f GB/s %.0f%% |"):format(b1.v, 100 * b1.r)
    info = info_of["gemv " .. l .. ty]
  end
  B.row("%s %s | %s |", line, info.packed and info.gemv or (info.dot .. " dot"),
        info.packed and ("%.2f ms/MB"):format(info.pack_ms_per_mb) or "-")
end
B.row("")
B.row("The columns are %d threads (%% of the %d-thread bandwidth) except \"1 thread\" (%% of the 1-thread bandwidth, %dx%d). Packing: the one-time cost of the x16 copy at load, per MB of weights.",
  threads, threads, shapes[1][1], shapes[1][2])
B.row("")
B.row("### GEMM %dx%dx%d (M x N x K), %d threads: GOP/s, %% of the peak of the dot instruction used", GM, GN, GK, threads)
B.row("")
hdr, sep = "| type | peak |", "|---|---|"
for _, l in ipairs(levels) do
  hdr = hdr .. (" %s |"):format(l)
  sep = sep .. "---|"
end
B.row("%s kernel |", hdr)
B.row("%s---|", sep)
for _, ty in ipairs(types) do
  local line, info = ("| %s | %s |"):format(ty, peak_name[peak_for(ty)]), nil
  for _, l in ipairs(levels) do
    local b = best[("gemm %s %s"):format(l, ty)]
    line = line .. (" %.0f %.0f%% |"):format(b.v, 100 * b.r)
    info = info_of["gemm " .. l .. ty]
  end
  B.row("%s %s |", line, info.packed and info.gemm or (ty == "f32" and "OpenBLAS sgemm" or info.dot .. " dot"))
end
