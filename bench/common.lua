-- Helpers shared by the benchmarks: wall-clock timing with repetitions, the machine's
-- limits measured in the same run (bench/peak.c), and table printing.
local lm = require "moonlm"

local _M = {}

_M.build = os.getenv("BUILD") or "build"

-- Runs fn() `reps` times after one warm-up; returns mean and standard deviation (seconds).
function _M.time(fn, reps)
  reps = reps or 5
  fn()
  local ts = {}
  for i = 1, reps do
    local t0 = lm.clock()
    fn()
    ts[i] = lm.clock() - t0
  end
  local mean = 0
  for _, t in ipairs(ts) do mean = mean + t end
  mean = mean / #ts
  local var = 0
  for _, t in ipairs(ts) do var = var + (t - mean) ^ 2 end
  return mean, math.sqrt(var / math.max(1, #ts - 1)), ts
end

-- Best of reps (for throughput figures on a noisy machine).
function _M.best(fn, reps)
  local _, _, ts = _M.time(fn, reps)
  local b = math.huge
  for _, t in ipairs(ts) do b = math.min(b, t) end
  return b
end

local peak_cache = {}
-- what: "fma" | "vnni" | "bf16" | "bw"; returns GFLOP/s, GOP/s or GB/s on `threads` threads.
function _M.peak(what, threads)
  threads = threads or 2
  local key = what .. threads
  if peak_cache[key] then return peak_cache[key] end
  local v = _M.peak_now(what, threads)
  peak_cache[key] = v
  return v
end

-- The same, measured again now (the bandwidth changes state within minutes).
function _M.peak_now(what, threads)
  local p = io.popen(("%s/bench/peak %s %d"):format(_M.build, what, threads or 2))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("%S+%s+([%d%.]+)"))
end

function _M.row(fmt, ...) io.write(fmt:format(...), "\n") io.flush() end

return _M
