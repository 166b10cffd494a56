-- The board: moonlm against llama.cpp and ik_llama.cpp on the same GGUF files, prompt
-- processing (pp512) and generation (tg128) on 2 threads, at depth 0 and at depth (-d).
--
--   LLAMA_BENCH=/path/llama-bench   llama.cpp's llama-bench (optional)
--   IK_BENCH=/path/llama-bench      ik_llama.cpp's llama-bench, run with -rtr 1 (optional)
--   LLAMA_QUANTIZE=/path/llama-quantize   make the files with llama.cpp's quantizer from a
--                                   bf16 source written by bench/modelgen.lua (our own writer
--                                   is not an independent check); without it, our writer
--                                   writes every file
--   FILES="tinyllama:q4_0,smollm:q8_0"   which files (default: the issue's seven)
--   PASSES=2 REPS=2 THREADS=2 PP=512 TG=128
--   DEPTHS="1536,4096"  DEPTH_FILES="smollm:q8_0,tinyllama:q4_0"   depth runs (n_ctx 8192
--                                   for us; llama-bench sizes its own); DEPTHS="" skips them
--   PEER_FA="0,1"                   the peers' -fa settings at depth (the better kept)
--   RAW=dir                         keep every engine's raw output there (default
--                                   build/bench-raw)
--
-- Engines are interleaved per file (ours, llama.cpp, ik, for one file, then the next file),
-- the whole board is run PASSES times, and each engine's best pass is shown next to the read
-- bandwidth measured just before that run: this VM's bandwidth switches between about 27 and
-- 70 GB/s, so a figure means little without it. Peers read by CSV column name (ik's CSV has
-- an extra `test` column). Depth needs a llama-bench with -d (--n-depth); one without it
-- but with -gp (ik_llama.cpp) gives tg at depth from `-gp D,TG` (pp at depth "-"); a peer
-- with neither shows "-" there.
local lm = require "moonlm"
local B = require "common"
local gen = require "modelgen"

local threads = tonumber(os.getenv("THREADS")) or 2
local passes = tonumber(os.getenv("PASSES")) or 2
local reps = tonumber(os.getenv("REPS")) or 2
local PP, TG = tonumber(os.getenv("PP")) or 512, tonumber(os.getenv("TG")) or 128
local files = os.getenv("FILES") or
  "tinyllama:q4_0,tinyllama:q8_0,tinyllama:q4_k_m,tinyllama:bf16,smollm:q8_0,smollm:q4_0,smollm:bf16"
local depths = os.getenv("DEPTHS") or "1536,4096"
local depth_files = os.getenv("DEPTH_FILES") or "smollm:q8_0,tinyllama:q4_0"
local peer_fa = os.getenv("PEER_FA") or "0,1"
assert(peer_fa:match("^[01,]+$"), "PEER_FA: 0, 1 or 0,1")
local quantize = os.getenv("LLAMA_QUANTIZE")
if quantize == "" then quantize = nil end
local dir = B.build .. "/bench-models"
local raw = os.getenv("RAW") or (B.build .. "/bench-raw")
os.execute(("mkdir -p %s %s"):format(dir, raw))
local lua = arg[-1] or "lua5.4"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- ---- the files ----
local qtype = { q4_0 = "Q4_0", q8_0 = "Q8_0", q4_k_m = "Q4_K_M", bf16 = "BF16", f16 = "F16", q6_k = "Q6_K" }
local function file_for(shape, wtype)
  if not quantize then
    local path = ("%s/%s-%s.gguf"):format(dir, shape, wtype)
    if not exists(path) then
      io.stderr:write(("writing %s ...\n"):format(path))
      assert(gen.write(path, gen.shapes[shape], wtype))
      collectgarbage()
    end
    return path
  end
  local src = ("%s/%s-src-bf16.gguf"):format(dir, shape)
  if not exists(src) then
    io.stderr:write(("writing %s ...\n"):format(src))
    assert(gen.write(src, gen.shapes[shape], "bf16"))
    collectgarbage()
  end
  local path = ("%s/%s-%s.lq.gguf"):format(dir, shape, wtype)
  if not exists(path) then
    local t = assert(qtype[wtype], "no llama-quantize type for " .. wtype)
    io.stderr:write(("llama-quantize %s -> %s ...\n"):format(src, path))
    local ok = os.execute(("%s %s %s %s %d > %s/quantize-%s-%s.log 2>&1"):format(quantize, src, path, t, threads,
      raw, shape, wtype))
    assert(ok and exists(path), "llama-quantize failed: see " .. raw)
  end
  return path
end

-- ---- one CSV line: fields, quoted ("..." with "" for a quote) or bare ----
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

-- pp and tg (tokens/s) from a llama-bench CSV; rows with several settings (-fa 0,1) keep
-- the best. gp: the run was ik_llama.cpp's `-gp D,TG` (generation after a D-token prompt,
-- timed alone: its row has n_prompt D and n_gen TG), read as tg at depth D.
local function parse(out, gp)
  local pp, tg, header
  for line in out:gmatch("[^\n]+") do
    local f = csv_fields(line)
    if not header then
      if line:find("avg_ts", 1, true) then
        header = {}
        for k, name in ipairs(f) do header[name] = k end
      end
    else
      local np, ng, avg = tonumber(f[header.n_prompt]), tonumber(f[header.n_gen]), tonumber(f[header.avg_ts])
      if np and ng and avg then
        if gp then
          if np == gp and ng == TG then tg = math.max(tg or 0, avg) end
        elseif np > 0 and ng == 0 then pp = math.max(pp or 0, avg)
        elseif ng > 0 and np == 0 then tg = math.max(tg or 0, avg) end
      end
    end
  end
  return pp, tg
end

-- ---- the engines ----
local has_depth = {}
local function supports_depth(exe)
  if has_depth[exe] == nil then
    local help = sh(exe .. " --help 2>&1")
    has_depth[exe] = help:find("n%-depth") and "d" or help:find("%-gp <pp,tg>") and "gp" or false
  end
  return has_depth[exe]
end

local engines = {
  { name = "moonlm", cmd = function(path, d)
      return ("%s bench/llbench.lua -m %s -t %d -p %d -n %d -r %d -d %d%s"):format(lua, path, threads, PP, TG, reps,
        d, d > 0 and " -c 8192" or "")
    end },
}
for _, peer in ipairs { { "llama.cpp", "LLAMA_BENCH", "" }, { "ik -rtr", "IK_BENCH", " -rtr 1" } } do
  local exe = os.getenv(peer[2])
  if exe and exe ~= "" then
    engines[#engines + 1] = { name = peer[1], cmd = function(path, d)
        local how = d > 0 and supports_depth(exe)
        if d > 0 and not how then return nil end
        -- at depth the peers run with and without flash attention (PEER_FA) and keep the better;
        -- a llama-bench without -d but with -gp (ik_llama.cpp) gives tg at depth only
        if how == "gp" then
          return ("%s -m %s -t %d -p 0 -n 0 -gp %d,%d -r %d -o csv%s -fa %s 2>/dev/null"):format(exe, path, threads, d,
            TG, reps, peer[3], peer_fa), d
        end
        return ("%s -m %s -t %d -p %d -n %d -r %d -o csv%s%s 2>/dev/null"):format(exe, path, threads, PP, TG, reps,
          peer[3], d > 0 and (" -d %d -fa %s"):format(d, peer_fa) or "")
      end }
  end
end

local function slug(s) return (s:gsub("[^%w]+", "_")) end

-- best[key][engine] = { pp = , pp_bw = , tg = , tg_bw = }
local best = {}
local function run(key, path, d, pass)
  best[key] = best[key] or {}
  for _, e in ipairs(engines) do
    local cmd, gp = e.cmd(path, d)
    if cmd then
      local bw = B.peak_now("bw", threads)
      local t0 = lm.clock()
      local out = sh(cmd)
      local rf = io.open(("%s/%s-d%d-%s-pass%d.csv"):format(raw, slug(key), d, slug(e.name), pass), "w")
      rf:write("# ", cmd, "\n# read bandwidth before: ", bw, " GB/s; ", os.date("!%H:%M:%S"), "; ",
        ("%.0f s"):format(lm.clock() - t0), "\n", out)
      rf:close()
      local pp, tg = parse(out, gp)
      local b = best[key][e.name] or {}
      if pp and pp > (b.pp or 0) then b.pp, b.pp_bw = pp, bw end
      if tg and tg > (b.tg or 0) then b.tg, b.tg_bw = tg, bw end
      best[key][e.name] = b
      io.stderr:write(("  pass %d %s d=%d %s: pp %s tg %s (bw %.1f)\n"):format(pass, key, d, e.name, tostring(pp),
        tostring(tg), bw))
    end
  end
end

local function fmt(v, bw)
  if not v then return "-" end
  return ("%.1f (%.0f)"):format(v, bw)
end
local function ratio(a, b)
  if not a or not b then return "-" end
  return ("%.2f"):format(a / b)
end

local list = {}
for item in files:gmatch("[^,]+") do
  local shape, wtype = item:match("([^:]+):([^:]+)")
  list[#list + 1] = { key = item, shape = shape, wtype = wtype, path = file_for(shape, wtype) }
end
local dlist = {}
for item in depth_files:gmatch("[^,]+") do
  local shape, wtype = item:match("([^:]+):([^:]+)")
  dlist[#dlist + 1] = { key = item, shape = shape, wtype = wtype, path = file_for(shape, wtype) }
end
local dvals = {}
for d in depths:gmatch("%d+") do dvals[#dvals + 1] = tonumber(d) end

-- bytes of weights read per generated token (for the bandwidth bound)
local wbytes = {}
for _, f in ipairs(list) do
  local m = assert(lm.load(f.path))
  wbytes[f.key] = m.weight_bytes
  m:close()
end

local t_start = os.date("!%Y-%m-%d %H:%M UTC")
for pass = 1, passes do
  for _, f in ipairs(list) do run(f.key, f.path, 0, pass) end
  for _, d in ipairs(dvals) do
    for _, f in ipairs(dlist) do run(f.key .. "@" .. d, f.path, d, pass) end
  end
end

local names = {}
for _, e in ipairs(engines) do names[#names + 1] = e.name end
B.row("## The board: moonlm / llama.cpp / ik_llama.cpp -rtr 1, %d threads, pp%d and tg%d, best of %d passes of %d reps",
  threads, PP, TG, passes, reps)
B.row("")
B.row("Started %s; files made by %s. Each figure is tokens/s with, in brackets, the read bandwidth (GB/s) measured just before that engine's run. Bound: tg at the bandwidth measured before our run ÷ bytes of weights per token.",
  t_start, quantize and "llama-quantize (from a bf16 source by bench/modelgen.lua)" or "bench/modelgen.lua")
B.row("")
local function header(first)
  local h = { first }
  for _, n in ipairs(names) do h[#h + 1] = n .. " pp" .. PP end
  for k = 2, #names do h[#h + 1] = "ours/" .. names[k] end
  for _, n in ipairs(names) do h[#h + 1] = n .. " tg" .. TG end
  for k = 2, #names do h[#h + 1] = "ours/" .. names[k] end
  B.row("| %s |", table.concat(h, " | "))
  B.row("|%s", ("---|"):rep(#h))
end
local function line(label, key, extra)
  local r = best[key] or {}
  local us = r.moonlm or {}
  local c = { label }
  for _, n in ipairs(names) do c[#c + 1] = fmt((r[n] or {}).pp, (r[n] or {}).pp_bw) end
  for k = 2, #names do c[#c + 1] = ratio(us.pp, (r[names[k]] or {}).pp) end
  for _, n in ipairs(names) do c[#c + 1] = fmt((r[n] or {}).tg, (r[n] or {}).tg_bw) end
  for k = 2, #names do c[#c + 1] = ratio(us.tg, (r[names[k]] or {}).tg) end
  if extra then c[#c + 1] = extra end
  B.row("| %s |", table.concat(c, " | "))
end
header("file")
for _, f in ipairs(list) do line(f.key, f.key) end
B.row("")
B.row("Generation against the bandwidth bound (bw before the run ÷ bytes of weights per token):")
B.row("")
B.row("| file | weights MiB | %s |", table.concat(names, " | "))
B.row("|---|---|%s", ("---|"):rep(#names))
for _, f in ipairs(list) do
  local c = { f.key, ("%.0f"):format(wbytes[f.key] / 2 ^ 20) }
  for _, n in ipairs(names) do
    local r = (best[f.key] or {})[n] or {}
    c[#c + 1] = r.tg and ("%.0f%%"):format(100 * r.tg / (r.tg_bw * 1e9 / wbytes[f.key])) or "-"
  end
  B.row("| %s |", table.concat(c, " | "))
end
if #dvals > 0 then
  B.row("")
  B.row("### At depth (-d: tokens already in the cache; peers with -fa %s, the better kept)", peer_fa)
  B.row("")
  header("file @ depth")
  for _, f in ipairs(dlist) do
    local r0 = (best[f.key] or {}).moonlm
    for _, d in ipairs(dvals) do line(f.key .. " @" .. d, f.key .. "@" .. d) end
    if r0 and r0.tg then
      for _, d in ipairs(dvals) do
        local rd = (best[f.key .. "@" .. d] or {}).moonlm
        if rd and rd.tg then B.row("") B.row("moonlm %s tg at depth %d: %.0f%% of depth 0", f.key, d, 100 * rd.tg / r0.tg) end
      end
    end
  end
end
B.row("")
B.row("Raw outputs: %s", raw)
