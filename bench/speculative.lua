-- Speculative decoding figures: acceptance rate and speed-up of generate{ draft = } and
-- generate{ lookup = true }, greedy (the text is the same with and without: checked here).
--
-- The draft is stories260K (../shared/models). The target is a larger model written from it
-- (build/bench-models/stories-wide<NFF>.gguf): stories260K's weights with the feed-forward
-- layers widened from 172 to NFF hidden units; the new units' gate/up rows are random and
-- their ffn_down columns random times EPS, so the target is many times the draft's cost and
-- close to it without being equal (the acceptance rate says how close).
--   NFF=16384 EPS=0.1 THREADS=2 REPS=3 TOKENS=200 N_DRAFT=8
local lm = require "moonlm"
local B = require "common"
local T = lm.tensor

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 3
local NFF = tonumber(os.getenv("NFF")) or 16384
local EPS = tonumber(os.getenv("EPS")) or 0.1
local TOKENS = tonumber(os.getenv("TOKENS")) or 200
local N_DRAFT = tonumber(os.getenv("N_DRAFT")) or 8
local shared = os.getenv("SHARED") or os.getenv("MOONLM_SHARED") or "../shared"
lm.threads(threads)

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local draft = assert(lm.load(shared .. "/models/stories260K.gguf"))
local target_path = ("%s/bench-models/stories-wide%d-%g.gguf"):format(B.build, NFF, EPS)
if not exists(target_path) then
  os.execute(("mkdir -p %s/bench-models"):format(B.build))
  local t, r = {}, 0
  local n_ff = draft.meta["llama.feed_forward_length"]
  for _, name in ipairs(draft:tensor_names()) do
    local x = draft:tensor(name)
    local kind = name:match("ffn_(%a+)%.weight$")
    if kind == "gate" or kind == "up" then
      r = r + 1
      local n_embd = x:size(2)
      x = T.cat({ x, T.randn({ NFF - n_ff, n_embd }, { seed = r, std = 1 / math.sqrt(n_embd) }) }, 1)
    elseif kind == "down" then
      r = r + 1
      x = T.cat({ x, T.randn({ x:size(1), NFF - n_ff }, { seed = r, std = EPS / math.sqrt(NFF) }) }, 2)
    end
    t[name] = x
  end
  local meta = {}
  for k, v in pairs(draft.meta) do meta[k] = v end
  meta["llama.feed_forward_length"] = NFF
  meta["general.name"] = ("stories260K widened to n_ff %d"):format(NFF)
  meta["tokenizer.ggml.scores"] = lm.gguf_value("f32", draft.meta["tokenizer.ggml.scores"])
  meta["tokenizer.ggml.token_type"] = lm.gguf_value("i32", draft.meta["tokenizer.ggml.token_type"])
  meta["llama.rope.freq_base"] = lm.gguf_value("f32", 10000)
  meta["llama.attention.layer_norm_rms_epsilon"] =
    lm.gguf_value("f32", draft.meta["llama.attention.layer_norm_rms_epsilon"])
  meta["tokenizer.ggml.padding_token_id"], meta["tokenizer.ggml.seperator_token_id"] = nil, nil
  assert(lm.save(target_path, t, meta))
  t = nil
  collectgarbage()
end
local target = assert(lm.load(target_path))
target:prepare()
draft:prepare()

local story = "Once upon a time, there was a little girl named Lily. She loved to play"
-- the cat prompt: greedy stories260K text repeats itself there (lookup finds something)
local repetitive = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat"

-- best tokens/s of reps runs, the text, and the last run's info
local function run(model, prompt, opts)
  local best, text, info = 0, nil, nil
  for _ = 0, reps do -- one warm-up
    local o = { max_tokens = TOKENS, temperature = 0, ignore_eos = true }
    for k, v in pairs(opts) do o[k] = v end
    local t0 = lm.clock()
    local s, i = model:generate(prompt, o)
    local tps = i.tokens / (lm.clock() - t0 - (i.prompt_seconds or 0))
    if tps > best then best = tps end
    text, info = s, i
  end
  return best, text, info
end

B.row("## Speculative decoding, greedy, %d threads, %d tokens, best of %d; %s", threads, TOKENS, reps,
  os.date("!%Y-%m-%d %H:%M UTC"))
B.row("")
B.row("Target: %s (%.1f M parameters, f32); draft: stories260K (0.26 M). Speed-up = tokens/s with / without, same text.",
  target_path, target.weight_bytes / 4 / 1e6)
B.row("")
B.row("| target | prompt | proposer | n_draft | rounds | proposed | accepted | acceptance | tok/s | plain tok/s | speed-up | same text |")
B.row("|---|---|---|---|---|---|---|---|---|---|---|---|")
local cases = {
  { "stories-wide", target, "story", story, "stories260K draft", { draft = draft, n_draft = N_DRAFT } },
  { "stories-wide", target, "repetitive", repetitive, "prompt lookup", { lookup = true, n_draft = N_DRAFT } },
  { "stories-wide", target, "repetitive", repetitive, "prompt lookup", { lookup = true, n_draft = 3 } },
  { "stories-wide", target, "story", story, "prompt lookup", { lookup = true, n_draft = 3 } },
}
local plain = {}
for _, c in ipairs(cases) do
  local key = c[3]
  if not plain[key] then
    local tps, text = run(c[2], c[4], {})
    plain[key] = { tps = tps, text = text }
  end
  local tps, text, info = run(c[2], c[4], c[6])
  local sp = info.speculative or {}
  B.row("| %s | %s | %s | %d | %d | %d | %d | %.2f | %.1f | %.1f | %.2f | %s |", c[1], c[3], c[5], c[6].n_draft,
    sp.rounds or 0, sp.proposed or 0, sp.accepted or 0, sp.acceptance or 0, tps, plain[key].tps, tps / plain[key].tps,
    text == plain[key].text and "yes" or "NO")
end
