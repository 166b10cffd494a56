-- Specs for logprobs: generate{ logprobs = n } gives, per generated token, its
-- log-probability and the n most likely tokens, as OpenAI defines them. moonlm's choice,
-- written in sampler.lua: the softmax at temperature 1 of the logits after logit_bias and
-- the penalties (and, with a grammar, its mask), before temperature and the cuts. Checked
-- against a log-softmax computed here in Lua over logits decoded again token by token.
local lm = require "moonlm"
local S = require "support"

local stories = S.path("models/stories260K.gguf")

-- the adjusted logits as sampler.lua documents them (llama.cpp's penalties), then log-softmax
local function reference(logits, history, o)
  local v = {}
  for i, x in ipairs(logits) do v[i] = x end
  for id, b in pairs(o.logit_bias or {}) do v[id + 1] = v[id + 1] + b end
  local rep, freq, pres = o.repeat_penalty or 1, o.frequency_penalty or 0, o.presence_penalty or 0
  if rep ~= 1 or freq ~= 0 or pres ~= 0 then
    local last_n = o.penalty_last_n or 64
    local count = {}
    for i = math.max(1, #history - last_n + 1), #history do count[history[i]] = (count[history[i]] or 0) + 1 end
    for id, c in pairs(count) do
      local x = v[id + 1]
      x = x > 0 and x / rep or x * rep
      v[id + 1] = x - c * freq - pres
    end
  end
  local m = -math.huge
  for _, x in ipairs(v) do if x > m then m = x end end
  local s = 0
  for _, x in ipairs(v) do s = s + math.exp(x - m) end
  local lse = m + math.log(s)
  local lp = {}
  for i, x in ipairs(v) do lp[i] = x - lse end
  return lp
end

local function top_n(lp, n)
  local order = {}
  for i = 1, #lp do order[i] = i end
  table.sort(order, function(a, b)
    if lp[a] ~= lp[b] then return lp[a] > lp[b] end
    return a < b
  end)
  local out = {}
  for i = 1, math.min(n, #order) do
    if lp[order[i]] == -math.huge then break end
    out[i] = { id = order[i] - 1, logprob = lp[order[i]] }
  end
  return out
end

describe("logprobs", function()
  local model = assert(lm.load(stories))
  local prompt = model:tokenize("Once upon a time, there was a little dog")

  -- decode prompt + generated[1..t-1] again and compare step t
  local function check(info, o, n)
    assert.are.equal(info.tokens, #info.logprobs)
    local ctx = assert(model:context { n_ctx = 256 })
    local history = {}
    for i, id in ipairs(prompt) do history[i] = id end
    local logits = assert(ctx:decode(prompt))
    for t, e in ipairs(info.logprobs) do
      local lp = reference(logits:totable(), history, o)
      local id = info.ids[t]
      assert.are.equal(id, e.id)
      assert.near(lp[id + 1], e.logprob, 2e-4)
      local want = top_n(lp, n)
      assert.are.equal(#want, #e.top_logprobs)
      for j, w in ipairs(want) do
        assert.are.equal(w.id, e.top_logprobs[j].id)
        assert.near(w.logprob, e.top_logprobs[j].logprob, 2e-4)
      end
      -- the token's text and bytes
      local piece = model:piece(id, true)
      assert.are.equal(piece, e.token)
      assert.are.same({ piece:byte(1, -1) }, e.bytes)
      history[#history + 1] = id
      logits = assert(ctx:decode({ id }))
    end
    ctx:close()
  end

  it("sampled with top_k, logit_bias and penalties: log-softmax of the adjusted logits", function()
    local o = { temperature = 1.3, top_k = 20, seed = 7, max_tokens = 14, logprobs = 5, repeat_penalty = 1.3,
                frequency_penalty = 0.2, presence_penalty = 0.1, logit_bias = { [13] = 2.5, [300] = -1 } }
    local _, info = model:generate(prompt, o)
    assert.are.equal(14, info.tokens)
    check(info, o, 5)
  end)

  it("the whole-vocabulary path (top_k = 0) and greedy give the same definition", function()
    local o = { temperature = 0.7, top_k = 0, top_p = 0.9, seed = 3, max_tokens = 10, logprobs = 3 }
    local _, info = model:generate(prompt, o)
    check(info, o, 3)
    local g = { temperature = 0, max_tokens = 10, logprobs = 0 }
    local _, gi = model:generate(prompt, g)
    check(gi, g, 0)
    for _, e in ipairs(gi.logprobs) do assert.are.same({}, e.top_logprobs) end
  end)

  it("does not depend on temperature or the cuts; a banned token is never listed", function()
    local _, a = model:generate(prompt, { temperature = 0, max_tokens = 1, logprobs = 8 })
    local _, b = model:generate(prompt, { temperature = 5, top_k = 3, top_p = 0.5, min_p = 0.2, seed = 1, max_tokens = 1, logprobs = 8 })
    assert.are.same(a.logprobs[1].top_logprobs, b.logprobs[1].top_logprobs)
    local best = a.logprobs[1].top_logprobs[1].id
    local _, c = model:generate(prompt, { temperature = 0, max_tokens = 1, logprobs = 8, logit_bias = { [best] = -math.huge } })
    for _, e in ipairs(c.logprobs[1].top_logprobs) do assert.are_not.equal(best, e.id) end
    assert.are.equal(a.logprobs[1].top_logprobs[2].id, c.logprobs[1].top_logprobs[1].id)
    -- the sampler's own method: a banned token has -inf
    local s = lm.sampler { logit_bias = { [best] = -math.huge } }
    local ctx = assert(model:context { n_ctx = 64 })
    local logits = assert(ctx:decode(prompt))
    local lp, top = s:logprobs(logits, prompt, best, 2)
    assert.are.equal(-math.huge, lp)
    assert.are.equal(2, #top)
    local total = 0
    for _, x in ipairs(reference(logits:totable(), prompt, {})) do total = total + math.exp(x) end
    assert.near(1, total, 1e-6)
    ctx:close()
  end)

  it("streams and chats keep them; bad values are refused", function()
    local n = 0
    for _, info in model:stream(prompt, { temperature = 0, max_tokens = 6, logprobs = 1 }) do
      n = #info.logprobs
    end
    assert.are.equal(6, n)
    local chat = model:chat { template = "chatml", temperature = 0, max_tokens = 5 }
    local _, info = chat:say("Hi", { logprobs = 2 })
    assert.are.equal(info.tokens, #info.logprobs)
    assert.are.equal(2, #info.logprobs[1].top_logprobs)
    for bad, got in pairs { [-1] = "-1", [1.5] = "1.5", ["3"] = "string" } do
      assert.has_error(function() model:generate(prompt, { logprobs = bad, max_tokens = 1 }) end,
        "bad argument #2 to 'generate' (option 'logprobs' must be true, false or a whole number >= 0, got " .. got .. ")")
    end
  end)
end)
