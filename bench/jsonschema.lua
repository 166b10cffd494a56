-- bench/jsonschema.lua: JSONSchemaBench's mask benchmark, the protocol of
-- ../shared/jsonschema/README.md. Per schema: compile + first mask (TTFM); per instance,
-- tokenized with the Llama 3 vocabulary (no BOS): per token one full mask and one commit
-- (TBM). Single-threaded. A valid instance must have every token allowed and the grammar
-- able to end; an invalid one must be refused somewhere. BENCH_SAMPLE=k runs every k-th
-- schema. Prints our figures next to the published table, wall clock with the process's
-- CPU time beside it (the machine may be shared: the load average is printed too).
-- Each schema's grammar and matcher are closed when its tests end (timed apart).
-- BENCH_SLOWEST=n also lists the n schemas with the longest TTFM, with their times.
-- MOONLM_LLAMA_GRAMMAR=/path/to/harness adds llama.cpp's grammar engine measured here, on
-- every LLAMA_SAMPLE-th schema (default 7), next to ours on the same schemas. The harness
-- (built outside the repository over libllama's grammar sampler and common's
-- json-schema-to-grammar) is run as `harness VOCAB.gguf DIR SAMPLE` and prints "key value"
-- lines: schemas passing refused verr valid inverr crash timeout tokens tbm_avg tbm_p50
-- tbm_p99 tbm_p999 tbm_max ttfm_avg ttfm_p50 ttfm_p99 cpu_s. MOONLM_LLAMA_GRAMMAR_OUT=file keeps
-- its figures in `file` and reads them back while it exists (the harness takes ~30 min).
local lm = require "moonlm"
local json = require "moonlm.json"
local G = lm.grammar

local SHARED = os.getenv("MOONLM_SHARED") or "../shared"
local DIR = SHARED .. "/jsonschema/"
local VOCAB = SHARED .. "/tokenizer/ggml-vocab-llama-bpe.gguf"
local SAMPLE = tonumber(os.getenv("BENCH_SAMPLE") or "1")
local HARNESS = os.getenv("MOONLM_LLAMA_GRAMMAR")
local LLAMA_SAMPLE = tonumber(os.getenv("LLAMA_SAMPLE") or "7")
local SLOWEST = tonumber(os.getenv("BENCH_SLOWEST") or "0")
local SCHEMA_LIMIT_S = 60 -- per schema, instances included: past it the schema counts as a timeout

if not (G and G.gbnf and G.json_schema) then
  print("## JSON Schema (JSONSchemaBench)\n\n(skipped: the grammar engine lm.grammar.gbnf is not built in)")
  return
end

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l")
  f:close()
  return s:match("^(%S+ %S+ %S+)")
end

local vocab = assert(lm.load(VOCAB, { vocab_only = true }))
lm.threads(1)
local load0 = loadavg()

-- the vocabulary's own preparation for grammars (its token trie and byte slices) is made once
-- per model, kept with it and shared by every grammar's matchers: timed here, apart, rather
-- than in whichever schema comes first (LLGuidance's figures likewise build the tokenizer's
-- trie before timing)
local prep_wall0, prep_cpu0 = lm.clock(), os.clock()
assert(G.gbnf('root ::= "x"')):matcher(vocab):mask()
local prep_wall, prep_cpu = (lm.clock() - prep_wall0) * 1e3, (os.clock() - prep_cpu0) * 1e3

-- line index of every schema, so a sample means the same schemas here and in the harness
local schemas, order = {}, {}
local i = 0
for line in io.lines(DIR .. "schemas.jsonl") do
  if i % SAMPLE == 0 then
    local d = json.decode(line)
    schemas[d.schema] = { text = d.text, tests = {}, line = i }
    order[#order + 1] = d.schema
  end
  i = i + 1
end
for line in io.lines(DIR .. "instances.jsonl") do
  local d = json.decode(line)
  local s = schemas[d.schema]
  if s then s.tests[#s.tests + 1] = d end
end

local clock, cpu = lm.clock, os.clock
local refusals = {}
local wall0, cpu0 = clock(), cpu()

-- one record per schema: status "refused" | "crash" | "ok"; ttfm; tbm / tbm_cpu lists
local results = {}
for _, name in ipairs(order) do
  local s = schemas[name]
  local r = { status = "ok", tbm = {}, tbm_cpu = {}, valid = 0, verr = 0, inverr = 0, tokens = 0 }
  results[name] = r
  local t0, c0 = clock(), cpu()
  local ok, g, err = pcall(G.json_schema, s.text)
  if not ok then
    r.status = "crash"
    io.stderr:write(name, ": ", tostring(g), "\n")
  elseif not g then
    r.status = "refused"
    local key = tostring(err):gsub(" at /.*", ""):gsub("%(branches.*%)", "(...)"):gsub("position %d+", "position N")
      :gsub("line %d+, column %d+", "line N, column N"):gsub("%d%d%d%d+", "N")
    refusals[key] = (refusals[key] or 0) + 1
  else
    local m = g:matcher(vocab)
    local buf = m:mask()
    r.ttfm, r.ttfm_cpu = (clock() - t0) * 1e6, (cpu() - c0) * 1e6
    for _, test in ipairs(s.tests) do
      if test.valid then r.valid = r.valid + 1 end
      m:reset()
      local ids = vocab:tokenize(test.text, { bos = false })
      local accepted = true
      local okrun, e = pcall(function()
        for k = 1, #ids do
          local a, ac = clock(), cpu()
          m:mask(buf)
          local allowed = m:accept(ids[k])
          r.tbm[#r.tbm + 1] = (clock() - a) * 1e6
          r.tbm_cpu[#r.tbm_cpu + 1] = (cpu() - ac) * 1e6
          if not allowed then accepted = false break end
        end
        if accepted and not m:can_end() then accepted = false end
      end)
      r.tokens = r.tokens + #ids
      if not okrun then
        r.status = "crash"
        io.stderr:write(name, ": ", tostring(e), "\n")
        break
      end
      if accepted and not test.valid then
        r.inverr = r.inverr + 1
        io.stderr:write(name, ": invalid instance accepted: ", test.text:sub(1, 200), "\n")
      end
      if not accepted and test.valid then r.verr = r.verr + 1 end
      if clock() - t0 > SCHEMA_LIMIT_S then r.timeout = true; break end
    end
    -- released when its tests end, as a server drops a finished request's grammar: left
    -- to the collector, a few grammars' memory (NFA, DFA, mask caches) was freed at once
    -- inside whichever later compile or mask the collection step fell in
    local f0 = clock()
    m:close()
    g:close()
    r.free = (clock() - f0) * 1e6
  end
end
local wall, cputime = clock() - wall0, cpu() - cpu0

local function pct(t, p)
  if #t == 0 then return 0 end
  table.sort(t)
  local k = math.max(1, math.min(#t, math.ceil(p / 100 * #t)))
  return t[k]
end
local function avg(t)
  local s = 0
  for _, x in ipairs(t) do s = s + x end
  return #t > 0 and s / #t or 0
end
local function n(x) return (("%d"):format(math.floor(x + 0.5)):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")) end

-- the figures over the schemas `keep` selects
local function summarize(keep)
  local st = { schemas = 0, passing = 0, refused = 0, verr = 0, inverr = 0, crash = 0, timeout = 0, valid = 0, tokens = 0 }
  local tbm, tbm_cpu, ttfm, ttfm_cpu = {}, {}, {}, {}
  for _, name in ipairs(order) do
    if keep(name) then
      local r = results[name]
      st.schemas = st.schemas + 1
      if r.status == "refused" then st.refused = st.refused + 1
      elseif r.status == "crash" then st.crash = st.crash + 1
      else
        if r.timeout then st.timeout = st.timeout + 1 end
        st.verr, st.inverr, st.valid, st.tokens = st.verr + r.verr, st.inverr + r.inverr, st.valid + r.valid, st.tokens + r.tokens
        if r.verr == 0 and r.inverr == 0 and not r.timeout then st.passing = st.passing + 1 end
        ttfm[#ttfm + 1], ttfm_cpu[#ttfm_cpu + 1] = r.ttfm, r.ttfm_cpu
        table.move(r.tbm, 1, #r.tbm, #tbm + 1, tbm)
        table.move(r.tbm_cpu, 1, #r.tbm_cpu, #tbm_cpu + 1, tbm_cpu)
      end
    end
  end
  st.tbm_avg, st.tbm_cpu_avg = avg(tbm), avg(tbm_cpu)
  st.tbm_p50, st.tbm_p99, st.tbm_p999, st.tbm_max = pct(tbm, 50), pct(tbm, 99), pct(tbm, 99.9), pct(tbm, 100)
  st.tbm_cpu_p50, st.tbm_cpu_p99, st.tbm_cpu_p999, st.tbm_cpu_max = pct(tbm_cpu, 50), pct(tbm_cpu, 99), pct(tbm_cpu, 99.9), pct(tbm_cpu, 100)
  st.ttfm_avg, st.ttfm_p50, st.ttfm_p99 = avg(ttfm), pct(ttfm, 50), pct(ttfm, 99)
  st.ttfm_cpu_avg, st.ttfm_cpu_p50, st.ttfm_cpu_p99 = avg(ttfm_cpu), pct(ttfm_cpu, 50), pct(ttfm_cpu, 99)
  return st
end

local function w_c(st, k) return ("%s (%s)"):format(n(st[k]), n(st[k:gsub("^(%a+)_", "%1_cpu_")])) end

local st = summarize(function() return true end)
print(("## JSON Schema (JSONSchemaBench mask benchmark, %d of the shared schemas%s, Llama 3 vocabulary, one thread)\n")
  :format(#order, SAMPLE > 1 and (", every %dth"):format(SAMPLE) or ""))
print("Times in µs: wall clock (CPU time of the process).\n")
print("| metric | moonlm (this machine) | LLGuidance 0.7.10 | XGrammar 0.1.17 | llama.cpp grammars |")
print("|---|---:|---:|---:|---:|")
print(("| schemas passing | %s (%.1f%%) | 78.8%% | 71.8%% | 57.5%% |"):format(n(st.passing), 100 * st.passing / math.max(1, st.schemas)))
print(("| compile errors (refused) | %s | 2,377 | 90 | 1,301 |"):format(n(st.refused)))
print(("| validation errors | %s (%.2f%% of %s valid) | 20 | 1,408 | 2,850 |"):format(n(st.verr), 100 * st.verr / math.max(1, st.valid), n(st.valid)))
print(("| invalidation errors | %s | 0 | 1,368 | 649 |"):format(n(st.inverr)))
print(("| crashes / timeouts | %s / %s | 0 / 0 | 37 / 241 | 0 / 1 |"):format(n(st.crash), n(st.timeout)))
print(("| TBM avg | %s | 64 | 728 | 16,565 |"):format(w_c(st, "tbm_avg")))
print(("| TBM p50 / p99 | %s / %s | 46 / 533 | 9 / 5,687 | 17,021 / 60,371 |"):format(w_c(st, "tbm_p50"), w_c(st, "tbm_p99")))
print(("| TBM p99.9 / max | %s / %s | | | |"):format(w_c(st, "tbm_p999"), w_c(st, "tbm_max")))
print(("| TTFM avg | %s | 1,850 | 27,062,414 | 92,371 |"):format(w_c(st, "ttfm_avg")))
print(("| TTFM p50 / p99 | %s / %s | 1,037 / 17,988 | 919,459 / 900,000,000 | 312 / 28,558 |"):format(w_c(st, "ttfm_p50"), w_c(st, "ttfm_p99")))
print(("\n%s tokens; run %.0f s wall, %.0f s CPU; load average %s at the start, %s at the end. The peers' columns"
  .. " are the benchmark's published table on 11,306 schemas and a faster server core."):format(n(st.tokens), wall, cputime, load0, loadavg()))
print(("The vocabulary's preparation for grammars, once per model before the first schema, is not in TTFM: %.0f ms (%.0f ms CPU).")
  :format(prep_wall, prep_cpu))
do
  local frees = {}
  for _, name in ipairs(order) do frees[#frees + 1] = results[name].free end
  print(("Closing a schema's grammar and matcher after its tests, not in TTFM or TBM: avg %s µs, p99 %s, max %s.")
    :format(n(avg(frees)), n(pct(frees, 99)), n(pct(frees, 100))))
end
local keys = {}
for k in pairs(refusals) do keys[#keys + 1] = k end
table.sort(keys, function(a, b) return refusals[a] > refusals[b] end)
if #keys > 0 then
  print("\nrefusals:")
  for k = 1, math.min(#keys, 15) do print(("  %4d  %s"):format(refusals[keys[k]], keys[k])) end
end
if SLOWEST > 0 then
  local slow = {}
  for _, name in ipairs(order) do
    if results[name].ttfm then slow[#slow + 1] = name end
  end
  table.sort(slow, function(a, b) return results[a].ttfm > results[b].ttfm end)
  print(("\nslowest TTFM (µs, wall clock (CPU time)):"))
  for k = 1, math.min(SLOWEST, #slow) do
    local r = results[slow[k]]
    print(("  %9s (%s)  %s"):format(n(r.ttfm), n(r.ttfm_cpu), slow[k]))
  end
end

-- llama.cpp's engine on this machine, on a sample, beside ours on the same schemas
if not HARNESS then
  print("\n(llama.cpp's grammar engine on this machine was not run: set MOONLM_LLAMA_GRAMMAR to a harness built"
    .. " outside the repository over a llama.cpp build, which runs json_schema_to_grammar and"
    .. " llama_sampler_init_grammar under the protocol above and speaks the interface in this file's header;"
    .. " ours is /work/peers/llama-grammar/harness.cpp, built with c++ -O2 -std=c++17 harness.cpp"
    .. " -I$LLAMA/include -I$LLAMA/common -I$LLAMA/ggml/include $LLAMA/build/common/libcommon.a"
    .. " -L$LLAMA/build/bin -lllama -lggml -lggml-base -Wl,-rpath,$LLAMA/build/bin -o harness)")
end
if HARNESS then
  -- MOONLM_LLAMA_GRAMMAR_OUT=file: the harness's figures are kept there (its run takes about
  -- half an hour on a loaded 2-core machine) and read back while the file exists
  local saved = os.getenv("MOONLM_LLAMA_GRAMMAR_OUT")
  local f = saved and io.open(saved)
  local l0, l1 = loadavg(), nil
  local lines = {}
  if f then
    for line in f:lines() do lines[#lines + 1] = line end
    f:close()
    l0 = ("(figures read from %s: %s)"):format(saved, (lines[1] or ""):match("^# (.*)") or "")
  else
    local p = io.popen(("%s %q %q %d 2>/dev/null"):format(HARNESS, VOCAB, DIR, LLAMA_SAMPLE))
    for line in p:lines() do lines[#lines + 1] = line end
    p:close()
    l1 = loadavg()
    if saved then
      local out = io.open(saved, "w")
      if out then
        out:write(("# llama.cpp grammar harness %s, every %dth schema, %s, load %s -> %s\n"):format(HARNESS, LLAMA_SAMPLE,
          os.date("!%Y-%m-%d %H:%M UTC"), l0, l1))
        out:write(table.concat(lines, "\n"), "\n")
        out:close()
      end
    end
  end
  local ll = {}
  for _, line in ipairs(lines) do
    local k, v = line:match("^(%S+) (%S+)$")
    if k then ll[k] = tonumber(v) end
  end
  if not ll.schemas then
    print(("\n(llama.cpp harness %s gave no figures)"):format(HARNESS))
  else
    local ours = summarize(function(name) return schemas[name].line % LLAMA_SAMPLE == 0 end)
    print(("\n### Same machine: llama.cpp's grammar engine (every %dth schema: %d)\n"):format(LLAMA_SAMPLE, ll.schemas))
    if ours.schemas ~= ll.schemas then
      print(("(our run covered %d of these schemas: set BENCH_SAMPLE to a divisor of %d)\n"):format(ours.schemas, LLAMA_SAMPLE))
    end
    local function lw(k) return ("%s (%s)"):format(n(ll[k] or 0), n(ll[k:gsub("^(%a+)_", "%1_cpu_")] or 0)) end
    print("| metric | moonlm | llama.cpp |")
    print("|---|---:|---:|")
    print(("| schemas passing | %s (%.1f%%) | %s (%.1f%%) |"):format(n(ours.passing), 100 * ours.passing / math.max(1, ours.schemas),
      n(ll.passing), 100 * ll.passing / math.max(1, ll.schemas)))
    print(("| compile errors (refused) | %s | %s |"):format(n(ours.refused), n(ll.refused)))
    print(("| validation errors | %s of %s | %s of %s |"):format(n(ours.verr), n(ours.valid), n(ll.verr), n(ll.valid)))
    print(("| invalidation errors | %s | %s |"):format(n(ours.inverr), n(ll.inverr)))
    print(("| crashes / timeouts | %s / %s | %s / %s |"):format(n(ours.crash), n(ours.timeout), n(ll.crash), n(ll.timeout)))
    print(("| TBM avg | %s | %s |"):format(w_c(ours, "tbm_avg"), lw("tbm_avg")))
    print(("| TBM p50 / p99 | %s / %s | %s / %s |"):format(w_c(ours, "tbm_p50"), w_c(ours, "tbm_p99"), lw("tbm_p50"), lw("tbm_p99")))
    print(("| TBM p99.9 / max | %s / %s | %s / %s |"):format(w_c(ours, "tbm_p999"), w_c(ours, "tbm_max"), lw("tbm_p999"), lw("tbm_max")))
    print(("| TTFM avg | %s | %s |"):format(w_c(ours, "ttfm_avg"), lw("ttfm_avg")))
    print(("| TTFM p50 / p99 | %s / %s | %s / %s |"):format(w_c(ours, "ttfm_p50"), w_c(ours, "ttfm_p99"), lw("ttfm_p50"), lw("ttfm_p99")))
    print(("\nµs, wall clock (CPU time). llama.cpp (60 s of CPU a schema, then a timeout): %s tokens, %.0f s CPU; %s."):format(n(ll.tokens),
      ll.cpu_s or 0, l1 and ("load average %s before, %s after"):format(l0, l1) or l0))
  end
end
