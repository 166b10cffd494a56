-- bench/grammar_cost.lua: what a JSON Schema grammar costs per generated token, next to the
-- decode time of a SmolLM-135M-shaped model (q8_0, written once by bench/modelgen.lua into
-- build/bench-models/), one thread. For each schema (real ones, of ../shared/jsonschema):
--   decode   CPU time per token of plain sampling (temperature 1, no grammar)
--   with     CPU time per token of the same generation under the grammar (fast_forward off,
--            so every token has a forward pass of its own)
--   grammar  CPU time per token of the grammar's own work, replayed on the generated ids:
--            one full mask + one commit per token (the model's 32,000-token vocabulary;
--            the grammar's caches are warm by then: "with" includes their first fill)
--   llama3   the same work for the same text in the Llama 3 vocabulary (128,256 real tokens:
--            a harder vocabulary than SmolLM's 49,152)
-- The target (issue 10): the grammar's cost under 10% of decode time.
--   SCHEMAS=a.json,b.json  TOKENS=96
local lm = require "moonlm"
local json = require "moonlm.json"
local B = require "common"
local gen = require "modelgen"

local SHARED = os.getenv("MOONLM_SHARED") or "../shared"
local TOKENS = tonumber(os.getenv("TOKENS")) or 96
local LIST = os.getenv("SCHEMAS") or table.concat({ "BFCL_multiple_28.json", "BFCL_simple_158.json",
  "Github_easy---o5214.json", "Github_medium---o68600.json", "Kubernetes---kb_874_Normalized.json",
  "Snowplow---sp_20_Normalized.json" }, ",")
lm.threads(1)

local dir = B.build .. "/bench-models"
os.execute("mkdir -p " .. dir)
local path = dir .. "/smollm-q8_0.gguf"
local f = io.open(path, "rb")
if f then f:close() else assert(gen.write(path, gen.shapes.smollm, "q8_0")) end
local model = assert(lm.load(path))
local llama3 = assert(lm.load(SHARED .. "/tokenizer/ggml-vocab-llama-bpe.gguf", { vocab_only = true }))

local texts = {}
for line in io.lines(SHARED .. "/jsonschema/schemas.jsonl") do
  local d = json.decode(line)
  texts[d.schema] = d.text
end

local cpu = os.clock
local prompt = "Here is the JSON:"

-- CPU seconds of mask + commit per token, replaying ids on a fresh matcher of g over voc
local function replay(g, voc, ids)
  local m = g:matcher(voc)
  local buf = m:mask()
  m:reset()
  local c0 = cpu()
  local n = 0
  for _, id in ipairs(ids) do
    m:mask(buf)
    if not m:accept(id) then break end
    n = n + 1
  end
  return (cpu() - c0) / math.max(1, n), n
end

print(("## Grammar cost per generated token (SmolLM-135M shape, q8_0, one thread, %d tokens at most)\n"):format(TOKENS))
print("CPU time per token in ms; ratios to plain decoding.\n")
print("| schema | tokens | decode | with grammar | grammar (32k vocab) | ratio | Llama 3 vocab | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
local sum = { dec = 0, with = 0, g = 0, g3 = 0, n = 0 }
for name in LIST:gmatch("[^,]+") do
  local text = assert(texts[name], name .. " is not in schemas.jsonl")
  local g = assert(lm.grammar.json_schema(text, { whitespace = "compact" }))
  local c0 = cpu()
  local _, plain = model:generate(prompt, { max_tokens = TOKENS, temperature = 1, seed = 1, ignore_eos = true })
  local dec = (cpu() - c0) / math.max(1, plain.tokens)
  c0 = cpu()
  local out, info = model:generate(prompt, { max_tokens = TOKENS, temperature = 1, seed = 1, grammar = g, fast_forward = false })
  local with = (cpu() - c0) / math.max(1, info.tokens)
  local gt = replay(g, model, info.ids)
  local ids3 = llama3:tokenize(out or "", { bos = false })
  local g3 = replay(g, llama3, ids3)
  print(("| %s | %d | %.2f | %.2f | %.3f | %.1f%% | %.3f | %.1f%% |"):format(name, info.tokens, dec * 1e3, with * 1e3,
    gt * 1e3, 100 * gt / dec, g3 * 1e3, 100 * g3 / dec))
  sum.dec, sum.with, sum.g, sum.g3, sum.n = sum.dec + dec, sum.with + with, sum.g + gt, sum.g3 + g3, sum.n + 1
end
local k = math.max(1, sum.n)
print(("| **mean** | | %.2f | %.2f | %.3f | %.1f%% | %.3f | %.1f%% |"):format(sum.dec / k * 1e3, sum.with / k * 1e3,
  sum.g / k * 1e3, 100 * sum.g / sum.dec, sum.g3 / k * 1e3, 100 * sum.g3 / sum.dec))
local la = io.open("/proc/loadavg")
print(("\nload average %s (CPU times: the process's own, valid on a shared machine up to cache effects)"):format(la and la:read("l"):match("^(%S+ %S+ %S+)") or "?"))
