-- The OpenResty server under load: a real nginx (examples/openresty/nginx.conf) on a free
-- loopback port, driven by curl. For 1, 2 and 4 concurrent streams, each making REQS
-- streamed completions of TOKENS tokens in a row: requests/s and generated tokens/s over the
-- wall time, time to first token, and failures (a status other than 200, a stream without
-- [DONE], or a wrong token count). Then GET /health latency (p50/p99 over 200 probes on one
-- keep-alive connection, from a client at normal priority and at nice -10) while 2
-- generations run all along: the event loop must stay free.
--   luajit bench/serve.lua   (LUA_PATH with lua/ and bench/; the server uses build/5.1)
--   MODELS="path.gguf,..." (default: the bench model build/bench-models/smollm-q8_0.gguf,
--   written by bench/modelgen.lua when missing, and stories260K); TOKENS [64 for the bench
--   model, 256 for stories260K, so that every run lasts long enough to measure]; REQS=3;
--   STREAMS="1,2,4"; THREADS (kernel threads in the server); SLOTS=4
local launch = require "moonlm.resty.launch"
local json = require "moonlm.json"

local BUILD = os.getenv("BUILD") or "build"
local SHARED = os.getenv("MOONLM_SHARED") or os.getenv("SHARED") or "../shared"
local TOKENS -- per model, see below
local REQS = tonumber(os.getenv("REQS")) or 3
local SLOTS = os.getenv("SLOTS") or "4"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

local function now() return tonumber((sh("date +%s.%N"))) end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function pct(xs, p)
  if #xs == 0 then return 0 end
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  return s[math.max(1, math.ceil(#s * p))]
end

local function models()
  local list = {}
  local env = os.getenv("MODELS")
  if env and env ~= "" then
    for m in env:gmatch("[^,]+") do list[#list + 1] = m end
    return list
  end
  local bench_model = BUILD .. "/bench-models/smollm-q8_0.gguf"
  if not exists(bench_model) then
    io.write("writing the bench model ", bench_model, " ...\n")
    sh("mkdir -p " .. BUILD .. "/bench-models")
    local gen = require "modelgen"
    gen.write(bench_model, gen.shapes.smollm, "q8_0")
  end
  list[1] = bench_model
  list[2] = SHARED .. "/models/stories260K.gguf"
  return list
end

local function tokens_for(path)
  return tonumber(os.getenv("TOKENS")) or (path:find("stories260K", 1, true) and 256 or 64)
end

local tmp = sh("mktemp -d /tmp/moonlm-bench.XXXXXX"):gsub("%s+$", "")

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- `streams` clients at once, each making REQS requests in a row.
local function load(url, streams)
  local lines = { "#!/bin/sh" }
  for s = 1, streams do
    local loop = {}
    for k = 1, REQS do
      local body = ("%s/req-%d-%d.json"):format(tmp, s, k)
      write(body, json.encode({ prompt = ("Story %d of client %d. Once upon a time"):format(k, s), max_tokens = TOKENS,
                                ignore_eos = true, temperature = 0.8, seed = s * 100 + k, stream = true,
                                stream_options = { include_usage = true } }, { compact = true }))
      loop[#loop + 1] = ("curl -s -N -m 600 -o %s/out-%d-%d -w '%%{http_code} %%{time_starttransfer} %%{time_total}\\n' "
                         .. "-H 'Content-Type: application/json' --data-binary @%s %s/v1/completions >> %s/meta-%d")
                        :format(tmp, s, k, body, url, tmp, s)
    end
    lines[#lines + 1] = "(" .. table.concat(loop, "; ") .. ") &"
  end
  lines[#lines + 1] = "wait"
  write(tmp .. "/load.sh", table.concat(lines, "\n") .. "\n")
  sh("rm -f " .. tmp .. "/meta-* " .. tmp .. "/out-*")
  local t0 = now()
  sh("sh " .. tmp .. "/load.sh")
  local wall = now() - t0
  local ok, failed, tokens, ttft = 0, 0, 0, {}
  for s = 1, streams do
    local k = 0
    for status, first in read(("%s/meta-%d"):format(tmp, s)):gmatch("(%d+) ([%d.]+) [%d.]+\n") do
      k = k + 1
      local body = read(("%s/out-%d-%d"):format(tmp, s, k))
      local n = tonumber(body:match('"completion_tokens":(%d+)'))
      if status == "200" and body:find("data: %[DONE%]\n\n$") and n == TOKENS then
        ok = ok + 1
        tokens = tokens + n
        ttft[#ttft + 1] = tonumber(first) * 1000
      else
        failed = failed + 1
      end
    end
    failed = failed + (REQS - k) -- requests that left no trace at all
  end
  return { ok = ok, failed = failed, wall = wall, tokens = tokens, ttft = ttft }
end

-- /health latency while two long generations run.
local function health(url)
  local body = tmp .. "/long.json"
  write(body, json.encode({ prompt = "Once upon a time", max_tokens = 1000, ignore_eos = true, stream = true },
                          { compact = true }))
  -- two clients, each starting a new generation as soon as one ends
  local pids = sh(("for i in 1 2; do setsid sh -c 'while :; do curl -s -N -m 600 -o /dev/null -H \"Content-Type: application/json\" --data-binary @%s %s/v1/completions; done' >/dev/null 2>&1 & echo $!; done")
                  :format(body, url))
  -- wait until both decode
  for _ = 1, 100 do
    local h = json.decode(sh(("curl -s %s/health"):format(url)))
    if h and h.busy == 2 and h.tokens > 0 then break end
    sh("sleep 0.05")
  end
  local urls = {}
  for i = 1, 200 do urls[i] = "-o /dev/null " .. url .. "/health" end
  -- the probing client at normal priority, then ahead of everything else on the machine
  -- (nice -10; needs root): on a busy machine the first also measures the client's own waits
  local rows = {}
  for _, nice in ipairs { 0, -10 } do
    local out = sh(("nice -n %d curl -s --rate 40/s -w '%%{http_code} %%{time_total}\n' %s"):format(nice, table.concat(urls, " ")))
    local ms, bad = {}, 0
    for status, t in out:gmatch("(%d+) ([%d.]+)\n") do
      if status == "200" then ms[#ms + 1] = tonumber(t) * 1000 else bad = bad + 1 end
    end
    local h = json.decode(sh(("curl -s %s/health"):format(url)))
    rows[#rows + 1] = { nice = nice, ms = ms, bad = bad + (200 - #ms - bad), busy = h and h.busy or 0 }
  end
  for pid in pids:gmatch("%d+") do sh("kill -TERM -" .. pid) end -- each loop is its own process group
  return rows
end

local streams = {}
for s in (os.getenv("STREAMS") or "1,2,4"):gmatch("%d+") do streams[#streams + 1] = tonumber(s) end

io.write(("## OpenResty server (nginx + lua-nginx-module, 1 worker, %s slots): streamed /v1/completions, %d per client in a row\n\n")
  :format(SLOTS, REQS))
io.write("| model | tokens per reply | streams | requests | failed | wall s | requests/s | tokens/s | TTFT p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|\n")
local health_rows = {}
for _, path in ipairs(models()) do
  local env = { MOONLM_MODEL = path, MOONLM_SLOTS = SLOTS, MOONLM_QUEUE = "64" }
  if os.getenv("THREADS") then env.MOONLM_THREADS = os.getenv("THREADS") end
  local srv, err = launch.start { conf = "examples/openresty/nginx.conf", env = env, lib_dir = BUILD .. "/5.1" }
  if not srv then
    io.write(("| %s | server did not start: %s |\n"):format(path, err))
  else
    local ok, perr = pcall(function()
      local name = path:match("([^/]+)%.gguf$") or path
      TOKENS = tokens_for(path)
      load(srv.url, 1) -- warm-up
      for _, n in ipairs(streams) do
        local r = load(srv.url, n)
        io.write(("| %s | %d | %d | %d | %d | %.2f | %.2f | %.1f | %.0f / %.0f |\n"):format(name, TOKENS, n, r.ok + r.failed, r.failed, r.wall,
          r.ok / r.wall, r.tokens / r.wall, pct(r.ttft, 0.5), pct(r.ttft, 0.99)))
        io.flush()
      end
      for _, r in ipairs(health(srv.url)) do
        health_rows[#health_rows + 1] = ("| %s | %d | %d | %d | %.2f | %.2f | %.2f | %d |"):format(name, r.nice, #r.ms + r.bad,
          r.bad, pct(r.ms, 0.5), pct(r.ms, 0.99), pct(r.ms, 1), r.busy)
      end
    end)
    srv:stop()
    if not ok then io.write("error: ", tostring(perr), "\n") end
  end
end
io.write("\nGET /health while 2 generations run (one keep-alive connection, 40 probes/s):\n\n")
io.write("| model | client nice | probes | failed | p50 ms | p99 ms | max ms | busy slots at the end |\n|---|---|---|---|---|---|---|---|\n")
io.write(table.concat(health_rows, "\n"), "\n")
sh("rm -rf " .. tmp)
