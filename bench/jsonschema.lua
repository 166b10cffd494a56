-- bench/jsonschema.lua: JSONSchemaBench's mask benchmark, the protocol of
-- ../shared/jsonschema/README.md. Per schema: compile + first mask (TTFM); per instance,
-- tokenized with the Llama 3 vocabulary (no BOS): per token one full mask and one commit
-- (TBM). Single-threaded. A valid instance must have every token allowed and the grammar
-- able to end; an invalid one must be refused somewhere. BENCH_SAMPLE=k runs every k-th
-- schema. Prints our figures next to the published table.
local lm = require "moonlm"
local json = require "moonlm.json"
local G = lm.grammar

local SHARED = os.getenv("MOONLM_SHARED") or "../shared"
local DIR = SHARED .. "/jsonschema/"
local SAMPLE = tonumber(os.getenv("BENCH_SAMPLE") or "1")
local SCHEMA_LIMIT_S = 60 -- per schema, instances included: past it the schema counts as a timeout

if not (G and G.gbnf and G.json_schema) then
  print("## JSON Schema (JSONSchemaBench)\n\n(skipped: the grammar engine lm.grammar.gbnf is not built in)")
  return
end

local vocab = assert(lm.load(SHARED .. "/tokenizer/ggml-vocab-llama-bpe.gguf", { vocab_only = true }))
lm.threads(1)

local schemas, order = {}, {}
local i = 0
for line in io.lines(DIR .. "schemas.jsonl") do
  if i % SAMPLE == 0 then
    local d = json.decode(line)
    schemas[d.schema] = { text = d.text, tests = {} }
    order[#order + 1] = d.schema
  end
  i = i + 1
end
for line in io.lines(DIR .. "instances.jsonl") do
  local d = json.decode(line)
  local s = schemas[d.schema]
  if s then s.tests[#s.tests + 1] = d end
end

local clock = lm.clock
local tbm, ttfm = {}, {}
local st = { schemas = #order, passing = 0, refused = 0, verr = 0, inverr = 0, crash = 0, timeout = 0, valid = 0, tokens = 0 }
local refusals = {}

for _, name in ipairs(order) do
  local s = schemas[name]
  local t0 = clock()
  local ok, g, err = pcall(G.json_schema, s.text)
  if not ok then
    st.crash = st.crash + 1
  elseif not g then
    st.refused = st.refused + 1
    local key = tostring(err):gsub(" at /.*", ""):gsub("%(branches.*%)", "(...)")
    refusals[key] = (refusals[key] or 0) + 1
  else
    local m = g:matcher(vocab)
    local buf = m:mask()
    ttfm[#ttfm + 1] = (clock() - t0) * 1e6
    local good, timed_out = true, false
    for _, test in ipairs(s.tests) do
      if test.valid then st.valid = st.valid + 1 end
      m:reset()
      local ids = vocab:tokenize(test.text, { bos = false })
      local accepted = true
      local okrun, e = pcall(function()
        for k = 1, #ids do
          local a = clock()
          m:mask(buf)
          local allowed = m:accept(ids[k])
          tbm[#tbm + 1] = (clock() - a) * 1e6
          if not allowed then accepted = false break end
        end
        if accepted and not m:can_end() then accepted = false end
      end)
      st.tokens = st.tokens + #ids
      if not okrun then
        st.crash = st.crash + 1
        good = false
        io.stderr:write(name, ": ", tostring(e), "\n")
        break
      end
      if accepted and not test.valid then st.inverr = st.inverr + 1; good = false end
      if not accepted and test.valid then st.verr = st.verr + 1; good = false end
      if clock() - t0 > SCHEMA_LIMIT_S then timed_out = true; good = false; break end
    end
    if timed_out then st.timeout = st.timeout + 1 end
    if good then st.passing = st.passing + 1 end
  end
end

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

print(("## JSON Schema (JSONSchemaBench mask benchmark, %d of the shared schemas%s, Llama 3 vocabulary, one thread)\n")
  :format(#order, SAMPLE > 1 and (", every %dth"):format(SAMPLE) or ""))
print("| metric | moonlm (this machine) | LLGuidance 0.7.10 | XGrammar 0.1.17 | llama.cpp grammars |")
print("|---|---:|---:|---:|---:|")
print(("| schemas passing | %s (%.1f%%) | 78.8%% | 71.8%% | 57.5%% |"):format(n(st.passing), 100 * st.passing / math.max(1, st.schemas)))
print(("| compile errors (refused) | %s | 2,377 | 90 | 1,301 |"):format(n(st.refused)))
print(("| validation errors | %s (%.2f%% of %s valid) | 20 | 1,408 | 2,850 |"):format(n(st.verr), 100 * st.verr / math.max(1, st.valid), n(st.valid)))
print(("| invalidation errors | %s | 0 | 1,368 | 649 |"):format(n(st.inverr)))
print(("| crashes / timeouts | %s / %s | 0 / 0 | 37 / 241 | 0 / 1 |"):format(n(st.crash), n(st.timeout)))
print(("| TBM avg (µs) | %s | 64 | 728 | 16,565 |"):format(n(avg(tbm))))
print(("| TBM p50 / p99 (µs) | %s / %s | 46 / 533 | 9 / 5,687 | 17,021 / 60,371 |"):format(n(pct(tbm, 50)), n(pct(tbm, 99))))
print(("| TBM p99.9 / max (µs) | %s / %s | | | |"):format(n(pct(tbm, 99.9)), n(pct(tbm, 100))))
print(("| TTFM avg (µs) | %s | 1,850 | 27,062,414 | 92,371 |"):format(n(avg(ttfm))))
print(("| TTFM p50 / p99 (µs) | %s / %s | 1,037 / 17,988 | 919,459 / 900,000,000 | 312 / 28,558 |"):format(n(pct(ttfm, 50)), n(pct(ttfm, 99))))
print(("\n(%s tokens; the peers' columns are the benchmark's published table on 11,306 schemas and a faster server core)"):format(n(st.tokens)))
local keys = {}
for k in pairs(refusals) do keys[#keys + 1] = k end
table.sort(keys, function(a, b) return refusals[a] > refusals[b] end)
if #keys > 0 then
  print("\nrefusals:")
  for k = 1, math.min(#keys, 15) do print(("  %4d  %s"):format(refusals[keys[k]], keys[k])) end
end
