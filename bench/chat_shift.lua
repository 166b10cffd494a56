-- Context shift in chat: a 5-turn conversation in a context too small for all of it, with and
-- without context_shift. Without, a turn whose history no longer fits drops the oldest turns
-- and prefills what stays again; with it, the turns that stay are shifted down in the cache
-- (keys rotated) and only the new text is prefilled. Prints per turn the tokens prefilled,
-- the tokens reused from the cache, and the turn's prompt seconds, best of REPS.
-- The model needs a real vocabulary (a random model's replies re-tokenize into many more
-- tokens): stories260K by default, or the larger model bench/speculative.lua writes from it.
--   MODEL=path (default ../shared/models/stories260K.gguf) N_CTX=560 MAX_TOKENS=64
--   THREADS=2 REPS=3
local lm = require "moonlm"
local B = require "common"

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 3
local shared = os.getenv("SHARED") or os.getenv("MOONLM_SHARED") or "../shared"
local path = os.getenv("MODEL") or (shared .. "/models/stories260K.gguf")
local n_ctx = tonumber(os.getenv("N_CTX")) or 560
local max_tokens = tonumber(os.getenv("MAX_TOKENS")) or 64
lm.threads(threads)
local model = assert(lm.load(path))
model:prepare()

local function question(turn)
  return ("Question number %d: tell me something about the number %d, and about the number after it."):format(turn,
    turn * 7)
end

-- one 5-turn conversation; per turn { prompt_tokens, cached_tokens, prompt_seconds, truncated, shifted }
local function conversation(shift)
  local c = model:chat { system = "You are a helpful assistant.", template = "chatml", max_tokens = max_tokens,
                         temperature = 0, ignore_eos = true, n_ctx = n_ctx, context_shift = shift }
  local turns = {}
  for turn = 1, 5 do
    local t0 = lm.clock()
    local _, info = c:say(question(turn))
    turns[turn] = { prompt = info.prompt_tokens, cached = info.cached_tokens or 0, secs = info.prompt_seconds,
                    total = lm.clock() - t0, truncated = info.truncated, shifted = info.shifted or 0 }
  end
  return turns
end

local best = {}
for _, shift in ipairs { false, true } do
  local b
  for _ = 0, reps do -- one warm-up
    local t = conversation(shift)
    if not b then b = t
    else
      for k = 1, 5 do
        if t[k].secs < b[k].secs then b[k].secs = t[k].secs end
        if t[k].total < b[k].total then b[k].total = t[k].total end
      end
    end
  end
  best[shift] = b
end

B.row("## Chat, 5 turns in n_ctx %d, with and without context_shift, %d threads, best of %d; %s", n_ctx, threads, reps,
  os.date("!%Y-%m-%d %H:%M UTC"))
B.row("")
B.row("Model %s, %d tokens per reply (ignore_eos). Prompt ms = the turn's prefill (info.prompt_seconds).", path, max_tokens)
B.row("")
B.row("| turn | prefilled (no shift) | cached | prompt ms | turn ms | prefilled (shift) | cached | shifted out | prompt ms | turn ms | prompt speed-up |")
B.row("|---|---|---|---|---|---|---|---|---|---|---|")
for k = 1, 5 do
  local a, s = best[false][k], best[true][k]
  B.row("| %d%s | %d | %d | %.1f | %.0f | %d | %d | %d | %.1f | %.0f | %.2f |", k, (a.truncated or s.truncated) and " (full)" or "",
    a.prompt, a.cached, a.secs * 1e3, a.total * 1e3, s.prompt, s.cached, s.shifted, s.secs * 1e3, s.total * 1e3,
    a.secs / s.secs)
end
