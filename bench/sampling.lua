-- The cost of sampling next to decoding, per generated token, on the SmolLM-shaped q8_0
-- model (32,000-token vocabulary): the Lua sampler (with its C candidate selection) must
-- stay under 5% of the decode time. Also the prompt tokens a 5-turn chat prefills per turn.
local lm = require "moonlm"
local B = require "common"
local gen = require "modelgen"

local threads = tonumber(os.getenv("THREADS")) or 2
lm.threads(threads)
local path = B.build .. "/bench-models/smollm-q8_0.gguf"
local f = io.open(path)
if f then f:close() else assert(gen.write(path, gen.shapes.smollm, "q8_0")) end
local model = assert(lm.load(path))
local ctx = assert(model:context { n_ctx = 512 })

local configs = {
  { "greedy", { temperature = 0 } },
  { "default (top_k 40, top_p 0.95, T 0.8)", { top_k = 40, top_p = 0.95, temperature = 0.8, seed = 1 } },
  { "penalties + min_p + typical", { top_k = 40, min_p = 0.05, typical_p = 0.9, repeat_penalty = 1.1,
                                     frequency_penalty = 0.1, presence_penalty = 0.1, penalty_last_n = 64, seed = 1 } },
  { "no top_k (all 32000 candidates), top_p 0.9", { top_k = 0, top_p = 0.9, temperature = 0.8, seed = 1 } },
}
B.row("## Sampling cost per token (SmolLM shape, q8_0, vocabulary 32000, %d threads)", threads)
B.row("| sampler | decode ms/token | sampling ms/token | sampling share |")
B.row("|---|---|---|---|")
for _, c in ipairs(configs) do
  local s = lm.sampler(c[2])
  ctx:clear()
  local history, id = { 1 }, 1
  local t_dec, t_smp, n = 0, 0, 64
  local logits = assert(ctx:decode({ id }))
  for _ = 1, n do
    local t0 = lm.clock()
    id = s:sample(logits, history)
    local t1 = lm.clock()
    history[#history + 1] = id
    logits:close()
    logits = assert(ctx:decode({ id }))
    local t2 = lm.clock()
    t_smp, t_dec = t_smp + (t1 - t0), t_dec + (t2 - t1)
  end
  B.row("| %s | %.2f | %.3f | %.1f%% |", c[1], 1000 * t_dec / n, 1000 * t_smp / n, 100 * t_smp / t_dec)
end

-- a 5-turn chat: prompt tokens prefilled per turn (the rest come from the cache)
B.row("\n## A 5-turn chat (chatml, 48 tokens per reply): prompt tokens prefilled per turn")
B.row("| turn | rendered prompt | from cache | prefilled | prefill ms |")
B.row("|---|---|---|---|---|")
local chat = model:chat { system = "You are a helpful assistant.", template = "chatml", max_tokens = 48, temperature = 0 }
for turn = 1, 5 do
  local _, info = chat:say(("Question number %d: tell me something about the number %d."):format(turn, turn * 7))
  B.row("| %d | %d | %d | %d | %.1f |", turn, info.cached_tokens + info.prompt_tokens, info.cached_tokens,
    info.prompt_tokens, info.prompt_seconds * 1000)
end
