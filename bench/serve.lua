-- The OpenResty server under load: a real nginx (examples/openresty/nginx.conf) on a free
-- loopback port, and, when LLAMA_SERVER names llama.cpp's llama-server binary, llama-server
-- on the same GGUF file with the same slots, context and threads, measured level by level in
-- turn (A/B within the same minute). The load comes from bench/serve_client.mjs (Node):
-- 1, 4, 16 and 64 concurrent clients, each making streamed /v1/completions of TOKENS tokens
-- (ignore_eos) in a row. Per level: requests/s and generated tokens/s over the wall time,
-- time to first token and inter-token latency (gaps between content events, as the client
-- receives them) p50 / p99, the share refused with 503, and streams lost (cut, or never
-- answered) or garbled (bad event, wrong token count, invalid UTF-8): both must be 0.
-- Then moonlm with its default queue (16) at 64 clients: the 503 share when it sheds load.
-- Then GET /health latency while 2 generations run: the event loop must stay free.
--   luajit bench/serve.lua   (LUA_PATH with lua/ and bench/; the server uses build/5.1)
--   MODEL [the bench model build/bench-models/smollm-q8_0.gguf, written by bench/modelgen.lua
--   when missing]; TOKENS [64]; STREAMS ["1,4,16,64"]; REQS [per client: 4 for one client,
--   2 for up to 4, else 1]; SLOTS [8]; N_CTX per slot [512]; THREADS [2]; LLAMA_SERVER [none]; LLAMA_ARGS
--   [none]: more llama-server arguments (e.g. "--poll 0" on a machine shared with other work)
local launch = require "moonlm.resty.launch"
local json = require "moonlm.json"

local BUILD = os.getenv("BUILD") or "build"
local TOKENS = tonumber(os.getenv("TOKENS")) or 64
local SLOTS = tonumber(os.getenv("SLOTS")) or 8
local N_CTX = tonumber(os.getenv("N_CTX")) or 512
local THREADS = tonumber(os.getenv("THREADS")) or 2
local LLAMA = os.getenv("LLAMA_SERVER")
if LLAMA == "" then LLAMA = nil end
local LLAMA_ARGS = os.getenv("LLAMA_ARGS") or ""

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

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

local function bench_model()
  local path = os.getenv("MODEL")
  if path and path ~= "" then return path end
  path = BUILD .. "/bench-models/smollm-q8_0.gguf"
  if not exists(path) then
    io.write("writing the bench model ", path, " ...\n")
    sh("mkdir -p " .. BUILD .. "/bench-models")
    local gen = require "modelgen"
    gen.write(path, gen.shapes.smollm, "q8_0")
  end
  return path
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function load(url, clients, requests)
  local cfg = json.encode({ url = url, clients = clients, requests = requests, tokens = TOKENS }, { compact = true })
  local out = sh(("node %sserve_client.mjs '%s'"):format(here, cfg))
  local r = json.decode(out:match("[^\n]*\n?$") or "")
  if type(r) ~= "table" then error("serve_client.mjs: " .. out) end
  return r
end

-- llama-server on the same file: slots -np, the same context per slot, the same threads.
local function start_llama(model)
  local port = launch.free_port()
  local log = os.tmpname()
  local pid = tonumber(sh(("%s -m %s -c %d -np %d -t %d -tb %d --host 127.0.0.1 --port %d %s > %s 2>&1 & echo $!"):format(
    LLAMA, model, N_CTX * SLOTS, SLOTS, THREADS, THREADS, port, LLAMA_ARGS, log)):match("%d+"))
  local url = "http://127.0.0.1:" .. port
  for _ = 1, 600 do
    if sh(("curl -s -o /dev/null -w '%%{http_code}' %s/health"):format(url)) == "200" then
      return { url = url, stop = function() sh("kill " .. pid .. "; sleep 0.5; kill -9 " .. pid .. " 2>/dev/null"); os.remove(log) end }
    end
    sh("sleep 0.1")
  end
  local err = sh("tail -5 " .. log)
  sh("kill -9 " .. pid)
  return nil, "llama-server did not start: " .. err
end

local function start_moonlm(model, queue)
  return launch.start { conf = "examples/openresty/nginx.conf", lib_dir = BUILD .. "/5.1",
    env = { MOONLM_MODEL = model, MOONLM_SLOTS = tostring(SLOTS), MOONLM_QUEUE = tostring(queue),
            MOONLM_N_CTX = tostring(N_CTX), MOONLM_THREADS = tostring(THREADS) } }
end

-- /health latency while two long generations run.
local function health(url)
  local tmp = sh("mktemp -d /tmp/moonlm-bench.XXXXXX"):gsub("%s+$", "")
  local body = tmp .. "/long.json"
  local f = assert(io.open(body, "wb"))
  f:write(json.encode({ prompt = "Once upon a time", max_tokens = N_CTX - 16, ignore_eos = true, stream = true }, { compact = true }))
  f:close()
  -- two clients, each starting a new generation as soon as one ends
  local pids = sh(("for i in 1 2; do setsid sh -c 'while :; do curl -s -N -m 600 -o /dev/null -H \"Content-Type: application/json\" --data-binary @%s %s/v1/completions; done' >/dev/null 2>&1 & echo $!; done")
                  :format(body, url))
  for _ = 1, 100 do
    local h = json.decode(sh(("curl -s %s/health"):format(url)))
    if h and h.busy == 2 and h.tokens > 0 then break end
    sh("sleep 0.05")
  end
  local urls = {}
  for i = 1, 200 do urls[i] = "-o /dev/null " .. url .. "/health" end
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
  sh("rm -rf " .. tmp)
  return rows
end

local function row(name, clients, r)
  local n = r.ok + r.rejected + r.lost + r.garbled
  io.write(("| %s | %d | %d | %d | %.0f%% | %d | %d | %.1f | %.2f | %.1f | %.0f / %.0f | %.1f / %.1f | %.2f |\n"):format(
    name, clients, n, r.ok, 100 * r.rejected / math.max(1, n), r.lost, r.garbled, r.wall, r.ok / r.wall, r.tokens / r.wall,
    r.ttft_p50 or 0, r.ttft_p99 or 0, r.itl_p50 or 0, r.itl_p99 or 0, r.events / math.max(1, r.tokens)))
  if #r.why > 0 then io.write("|   | ", table.concat(r.why, "; "):gsub("|", "/"), " |\n") end
  io.flush()
end

local model = bench_model()
local cpu = sh("lscpu | sed -n 's/^Model name: *//p'"):gsub("%s+$", "")
local load1 = sh("cut -d' ' -f1 /proc/loadavg"):gsub("%s+$", "")
io.write(("## OpenResty server vs llama-server: streamed /v1/completions, %d tokens per reply\n\n"):format(TOKENS))
io.write(("%s, %s (load average %s at the start), %s; %d slots of %d tokens, %d thread(s); sampling"
           .. " temperature 0.8, top_k 40, top_p 0.95, min_p 0.05 (sent by the client); moonlm: nginx +"
           .. " lua-nginx-module, 1 worker, queue 64%s\n\n")
  :format(os.date("!%Y-%m-%d %H:%M UTC"), cpu, load1, model:match("[^/]+$"), SLOTS, N_CTX, THREADS,
          LLAMA and "; llama-server: " .. LLAMA:match("[^/]+$") .. " -np " .. SLOTS .. " " .. LLAMA_ARGS or ""))
io.write("| server | clients | requests | ok | 503 | lost | garbled | wall s | requests/s | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | events per token |\n")
io.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")

local servers = {}
local ok, err = pcall(function()
  local m = assert(start_moonlm(model, 64))
  servers[#servers + 1] = m
  local l
  if LLAMA then
    local lerr
    l, lerr = start_llama(model)
    if not l then io.write("(", lerr, ")\n") end
    servers[#servers + 1] = l
  end
  load(m.url, 1, 1) -- warm-up
  if l then load(l.url, 1, 1) end
  for s in (os.getenv("STREAMS") or "1,4,16,64"):gmatch("%d+") do
    local clients = tonumber(s)
    local reqs = tonumber(os.getenv("REQS")) or (clients == 1 and 4 or clients <= 4 and 2 or 1)
    row("moonlm", clients, load(m.url, clients, reqs))
    if l then row("llama-server", clients, load(l.url, clients, reqs)) end
  end
  m:stop()
  if l then l.stop() end
  servers = {}
  -- shedding: the default queue, 64 clients
  local shed = assert(start_moonlm(model, 16))
  servers[1] = shed
  load(shed.url, 1, 1)
  row("moonlm, queue 16", 64, load(shed.url, 64, 1))
  io.write("\nGET /health while 2 generations run (moonlm, one keep-alive connection, 40 probes/s):\n\n")
  io.write("| client nice | probes | failed | p50 ms | p99 ms | max ms | busy slots at the end |\n|---|---|---|---|---|---|---|\n")
  for _, r in ipairs(health(shed.url)) do
    io.write(("| %d | %d | %d | %.2f | %.2f | %.2f | %d |\n"):format(r.nice, #r.ms + r.bad, r.bad, pct(r.ms, 0.5),
      pct(r.ms, 0.99), pct(r.ms, 1), r.busy))
  end
end)
for _, s in ipairs(servers) do
  if s.stop then s:stop() end
end
if not ok then
  io.write("error: ", tostring(err), "\n")
  os.exit(1)
end
