-- bench/grammar.lua: the grammar engine's mask speed with the Llama 3 vocabulary (128,256
-- tokens), single-threaded, as JSONSchemaBench measures it:
--   TTFM  time to first mask: compile the grammar, make a matcher, compute one mask;
--   TBM   time between masks: one full mask (into a reused i8 tensor) plus one commit.
-- Wall-clock figures, and the process's CPU time beside them (on a shared machine the wall
-- clock also counts the time other processes had the core).
-- Each grammar is compiled once (as a schema would be) and then matches several texts,
-- each tokenized without BOS; every text must be accepted (a refusal is a bug: it stops
-- the run). The figures next to ours are LLGuidance's and llama.cpp's published averages
-- for the benchmark's JSON schemas (../shared/jsonschema/README.md), for scale.
local lm = require "moonlm"
local json = require "moonlm.json"
local G = lm.grammar

local SHARED = os.getenv("MOONLM_SHARED") or "../shared"
local LLAMA = os.getenv("MOONLM_LLAMA_CPP") or "/work/peers/llama.cpp"
lm.threads(1)
local vocab = assert(lm.load(SHARED .. "/tokenizer/ggml-vocab-llama-bpe.gguf", { vocab_only = true }))
local clock = lm.clock
-- the vocabulary's token index is built once per model (on its first matcher), not per grammar
local t_index = clock()
assert(G.choice { "x" }):matcher(vocab)
t_index = clock() - t_index

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- JSON texts: valid instances of the shared JSONSchemaBench set (real documents)
local function json_texts(n)
  local out = {}
  for line in io.lines(SHARED .. "/jsonschema/instances.jsonl") do
    local d = json.decode(line)
    if d.valid and #d.text > 40 and #d.text < 3000 and not d.text:find("^%[") then out[#out + 1] = d.text end
    if #out >= n then break end
  end
  return out
end

local C_PROGRAMS = {
  "int main(){int i = 0;while(i<10){i = i+1;}return i;}",
  "int fib(int n){if(n<2){return n;}return fib(n-1)+fib(n-2);}int main(){return fib(10);}",
  "float avg(int n){float s = 0;for(i = 0; i<n; i = i+1){s = s+i;}// the mean\nreturn s/n;}",
  "char up(char c){/* lower to upper */if(c>=97){return c-32;}return c;}",
}

local COUNTRIES = { "Afghanistan", "Albania", "Algeria", "Andorra", "Angola", "Argentina", "Armenia", "Australia",
  "Austria", "Azerbaijan", "Bahamas", "Bahrain", "Bangladesh", "Barbados", "Belarus", "Belgium", "Belize", "Benin",
  "Bhutan", "Bolivia", "Botswana", "Brazil", "Brunei", "Bulgaria", "Burundi", "Cambodia", "Cameroon", "Canada",
  "Chad", "Chile", "China", "Colombia", "Comoros", "Congo", "Croatia", "Cuba", "Cyprus", "Czechia", "Denmark",
  "Djibouti", "Dominica", "Ecuador", "Egypt", "Eritrea", "Estonia", "Eswatini", "Ethiopia", "Fiji", "Finland",
  "France", "Gabon", "Gambia", "Georgia", "Germany", "Ghana", "Greece", "Grenada", "Guatemala", "Guinea", "Guyana",
  "Haiti", "Honduras", "Hungary", "Iceland", "India", "Indonesia", "Iran", "Iraq", "Ireland", "Israel", "Italy",
  "Jamaica", "Japan", "Jordan", "Kazakhstan", "Kenya", "Kiribati", "Kuwait", "Kyrgyzstan", "Laos", "Latvia",
  "Lebanon", "Lesotho", "Liberia", "Libya", "Lithuania", "Luxembourg", "Madagascar", "Malawi", "Malaysia" }

-- A grammar of the shape a JSON Schema compiler produces: JSON structure, bounded strings,
-- integers and an enum.
local SCHEMA_GBNF = [[
root ::= "{" ws "\"name\"" ws ":" ws name ws "," ws "\"age\"" ws ":" ws int ws "," ws "\"email\"" ws ":" ws str ws "," ws "\"role\"" ws ":" ws role ws "," ws "\"tags\"" ws ":" ws tags ws "}" ws
name ::= "\"" char{1,40} "\""
str ::= "\"" char* "\""
char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
int ::= "-"? ("0" | [1-9] [0-9]{0,15})
role ::= "\"admin\"" | "\"user\"" | "\"guest\""
tags ::= "[" ws (str (ws "," ws str)*)? ws "]"
ws ::= [ \t\n\r]*
]]
local SCHEMA_TEXTS = {
  '{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "role": "admin", "tags": ["math", "engines"]}',
  '{"name": "Grace Hopper", "age": 85, "email": "grace@navy.mil", "role": "user", "tags": []}',
  '{"name": "Alan Turing", "age": 41, "email": "alan@bletchley.uk", "role": "guest", "tags": ["computing", "codes", "biology"]}',
  '{"name": "Edsger W. Dijkstra", "age": 72, "email": "ewd@utexas.edu", "role": "user", "tags": ["goto considered harmful"]}',
}

local cases = {
  { name = "json.gbnf, JSON documents", gbnf = read(LLAMA .. "/grammars/json.gbnf"), texts = json_texts(40) },
  { name = "schema-shaped GBNF (bounded strings, enum)", gbnf = SCHEMA_GBNF, texts = SCHEMA_TEXTS },
  { name = "c.gbnf, C functions", gbnf = read(LLAMA .. "/grammars/c.gbnf"), texts = C_PROGRAMS },
  { name = "regex: e-mail addresses", regex = "[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,6}",
    texts = { "ada.lovelace@example.org", "grace_hopper+navy@us.navy.mil", "turing@bletchley-park.co" } },
  { name = "regex: ISO dates and a sentence", regex = "\\d{4}-\\d{2}-\\d{2}: [A-Z][a-z ,']{0,200}\\.",
    texts = { "2024-05-17: The meeting moved to the afternoon, after lunch.", "1999-12-31: It's the end of an era." } },
  { name = "choice of 91 countries", choice = COUNTRIES, texts = { "Madagascar", "Kyrgyzstan", "Chad" } },
}

local function pct(t, p)
  if #t == 0 then return 0 end
  table.sort(t)
  return t[math.max(1, math.min(#t, math.ceil(p / 100 * #t)))]
end
local function avg(t)
  local s = 0
  for _, x in ipairs(t) do s = s + x end
  return #t > 0 and s / #t or 0
end

print("## Grammar masks (Llama 3 vocabulary, 128,256 tokens, one thread)\n")
print("| grammar | texts | tokens | TTFM µs (cpu) | TBM avg µs (cpu) | TBM p50 | TBM p99 (cpu) | TBM max |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
local all_tbm, all_ttfm, all_cpu, all_ttfm_cpu = {}, {}, {}, {}
local cpu = os.clock
for _, c in ipairs(cases) do
  if (c.gbnf == nil and not c.regex and not c.choice) then
    print(("| %s | (skipped: no llama.cpp checkout at %s; set MOONLM_LLAMA_CPP) | | | | | | |"):format(c.name, LLAMA))
  else
    local t0, c0 = clock(), cpu()
    local g = c.gbnf and assert(G.gbnf(c.gbnf)) or c.regex and assert(G.regex(c.regex)) or assert(G.choice(c.choice))
    local m = g:matcher(vocab)
    local buf = m:mask()
    local ttfm, ttfm_cpu = (clock() - t0) * 1e6, (cpu() - c0) * 1e6
    all_ttfm[#all_ttfm + 1] = ttfm
    all_ttfm_cpu[#all_ttfm_cpu + 1] = ttfm_cpu
    local tbm, tcpu, ntok = {}, {}, 0
    for _, text in ipairs(c.texts) do
      m:reset()
      local ids = vocab:tokenize(text, { bos = false })
      for k = 1, #ids do
        local a, ac = clock(), cpu()
        m:mask(buf)
        local ok = m:accept(ids[k])
        local dt, dc = (clock() - a) * 1e6, (cpu() - ac) * 1e6
        tbm[#tbm + 1] = dt
        tcpu[#tcpu + 1] = dc
        all_tbm[#all_tbm + 1] = dt
        all_cpu[#all_cpu + 1] = dc
        if not ok then error(("%s: token %d (%q) of %q refused"):format(c.name, k, vocab:piece(ids[k]), text)) end
      end
      if not m:can_end() then error(("%s: %q cannot end"):format(c.name, text)) end
      ntok = ntok + #ids
    end
    print(("| %s | %d | %d | %.0f (%.0f) | %.1f (%.1f) | %.1f | %.0f (%.0f) | %.0f |"):format(c.name, #c.texts, ntok, ttfm,
      ttfm_cpu, avg(tbm), avg(tcpu), pct(tbm, 50), pct(tbm, 99), pct(tcpu, 99), pct(tbm, 100)))
  end
end
print(("| **all** | | %d | p50 %.0f (%.0f) | %.1f (%.1f) | %.1f | %.0f (%.0f) | %.0f |"):format(#all_tbm, pct(all_ttfm, 50),
  pct(all_ttfm_cpu, 50), avg(all_tbm), avg(all_cpu), pct(all_tbm, 50), pct(all_tbm, 99), pct(all_cpu, 99), pct(all_tbm, 100)))
print(("\nThe vocabulary's token index (built once per model, on its first matcher): %.0f ms."):format(t_index * 1e3))
print("\nFor scale (JSONSchemaBench's published figures on its JSON schemas, a faster server core): LLGuidance"
  .. " TBM avg 64 µs, p99 533 µs, TTFM p50 1,037 µs; llama.cpp's engine TBM avg 16,565 µs. Targets here: TBM avg"
  .. " <= 64 µs, p99 <= 500 µs, TTFM p50 <= 1 ms.")
