-- Speculative decoding (generate{ draft = model } and generate{ lookup = true }): greedy
-- output identical to plain decoding on several models and proposers, and with sampling,
-- the target's distribution kept (a chi-square test against the exact distribution computed
-- from the target's own logits).
local lm = require "moonlm"
local S = require "support"

local stories = assert(lm.load(S.path("models/stories260K.gguf")))
local mini = assert(lm.load(S.path("ref/mini-f32.gguf")))       -- random weights, same vocabulary
local mini_q8 = assert(lm.load(S.path("ref/mini-q8_0.gguf")))

local story = "Once upon a time, there was a little girl named Lily. She loved to play"
local repetitive = "one two three four five six one two three four five six one two three four five six one two"

describe("speculative decoding, greedy", function()
  local cases = {
    { "stories260K, prompt lookup", stories, story, { lookup = true } },
    { "stories260K, repetitive prompt, lookup", stories, repetitive, { lookup = true, n_draft = 4 } },
    { "stories260K drafted by itself", stories, story, { draft = stories } },
    { "stories260K drafted by a random model", stories, story, { draft = mini, n_draft = 3 } },
    { "mini q8_0 drafted by stories260K", mini_q8, story, { draft = stories } },
    { "mini f32, lookup, 1-token drafts", mini, repetitive, { lookup = true, n_draft = 1 } },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. ": the same text and the same cache as without", function()
      local model, prompt, extra = c[2], c[3], c[4]
      local ctx1 = assert(model:context { n_ctx = 256 })
      local want, wi = model:generate(prompt, { max_tokens = 80, temperature = 0, context = ctx1 })
      local opts = { max_tokens = 80, temperature = 0, context = assert(model:context { n_ctx = 256 }) }
      for k, v in pairs(extra) do opts[k] = v end
      local got, gi = model:generate(prompt, opts)
      assert.are.equal(want, got)
      assert.are.same(wi.ids, gi.ids)
      assert.are.equal(wi.stop_reason, gi.stop_reason)
      assert.are.equal(ctx1:pos(0), opts.context:pos(0))
      local sp = gi.speculative
      assert.is_true(sp.rounds > 0 and sp.accepted <= sp.proposed)
      assert.are.equal(sp.proposed > 0 and sp.accepted / sp.proposed or 0, sp.acceptance)
    end)
  end

  it("guesses well where it should: a self-draft is always right, lookup finds the repetition", function()
    local _, i1 = stories:generate(story, { max_tokens = 60, temperature = 0, draft = stories })
    assert.are.equal(1, i1.speculative.acceptance)
    assert.is_true(i1.speculative.rounds <= 60 / 8 + 2)
    local _, i2 = mini:generate(repetitive, { max_tokens = 40, temperature = 0, lookup = true })
    assert.is_true(i2.speculative.proposed > 0)
  end)

  it("stops where plain decoding stops: stop strings, max_tokens, on_token", function()
    for _, extra in ipairs { { stop = { "ball" } }, { max_tokens = 5 }, { max_tokens = 1 } } do
      local a = { temperature = 0, max_tokens = 60 }
      local b = { temperature = 0, max_tokens = 60, lookup = true }
      for k, v in pairs(extra) do a[k], b[k] = v, v end
      assert.are.equal((stories:generate(story, a)), (stories:generate(story, b)))
    end
    local n = 0
    local _, info = stories:generate(story, { temperature = 0, draft = stories, on_token = function()
      n = n + 1
      return n < 7
    end })
    assert.are.equal(7, info.tokens)
    assert.are.equal("abort", info.stop_reason)
  end)

  it("refuses what it cannot keep exact", function()
    assert.has_error(function() stories:generate(story, { lookup = true, logprobs = 2 }) end,
      "bad option 'logprobs' (not available with draft or lookup)")
    local other = assert(lm.load(S.path("ref/mini-f32.gguf"), { vocab_only = true }))
    assert.has_error(function() stories:generate(story, { temperature = 0.5, mirostat = 2, lookup = true }) end,
      "speculative decoding cannot follow mirostat (its cut changes with every draw)")
    other:close()
  end)
end)

-- chi-square statistic of counts against probabilities, categories with expected < 5 merged
local function chi2(counts, probs, n)
  local stat, df, rest_o, rest_e = 0, -1, 0, 0
  for k, p in pairs(probs) do
    local e = p * n
    if e >= 5 then
      stat = stat + ((counts[k] or 0) - e) ^ 2 / e
      df = df + 1
    else
      rest_o, rest_e = rest_o + (counts[k] or 0), rest_e + e
    end
  end
  if rest_e > 0 then
    stat = stat + (rest_o - rest_e) ^ 2 / math.max(rest_e, 1e-9)
    df = df + 1
  end
  for k, c in pairs(counts) do assert(probs[k], "drawn a token outside the target's distribution: " .. tostring(k)) end
  return stat, df
end

-- 99.9% quantile of chi-square with df degrees of freedom (Wilson-Hilferty)
local function chi2_limit(df)
  local z = 3.09
  return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ^ 3
end

describe("speculative decoding, the acceptance rule", function()
  local verify = require("moonlm.speculative").verify
  local rng = lm.sampler { seed = 11 }
  local function uniform() return rng:uniform() end

  -- guesses d ~ q checked against p: the tokens that come out follow p, whatever q is
  local cases = {
    { "q far from p", { 10, 11, 12, 13 }, { 0.5, 0.3, 0.15, 0.05 }, { [10] = 0.05, [11] = 0.05, [12] = 0.1, [13] = 0.8 } },
    { "q close to p", { 10, 11, 12 }, { 0.5, 0.3, 0.2 }, { [10] = 0.45, [11] = 0.35, [12] = 0.2 } },
    { "q guessing outside p", { 10, 11 }, { 0.7, 0.3 }, { [10] = 0.2, [20] = 0.5, [21] = 0.3 } },
    { "q equal to p", { 10, 11, 12 }, { 0.6, 0.3, 0.1 }, { [10] = 0.6, [11] = 0.3, [12] = 0.1 } },
    { "one-hot guesses (lookup)", { 10, 11, 12 }, { 0.6, 0.3, 0.1 }, nil, { 10, 12, 30, 11 } },
    { "no guess", { 10, 11, 12 }, { 0.2, 0.3, 0.5 }, nil, {} },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ids, probs, q, guesses = c[2], c[3], c[4], c[5]
      local qids, qps = {}, {}
      for id, pr in pairs(q or {}) do qids[#qids + 1], qps[#qps + 1] = id, pr end
      local n, counts, want = 20000, {}, {}
      for j, id in ipairs(ids) do want[id] = probs[j] end
      for t = 1, n do
        local d
        if q then
          local u, cum = uniform(), 0
          for j = 1, #qids do
            cum = cum + qps[j]
            if u < cum or j == #qids then d = qids[j] break end
          end
        else
          d = guesses[(t - 1) % math.max(#guesses, 1) + 1]
        end
        local tok = verify(ids, probs, q, d, uniform)
        counts[tok] = (counts[tok] or 0) + 1
      end
      local stat, df = chi2(counts, want, n)
      assert.is_true(stat < chi2_limit(df), ("chi2 %.1f with %d df"):format(stat, df))
    end)
  end
end)

describe("speculative decoding, sampling #once", function()
  -- thousands of tiny generations: one thread each (a parallel region per token costs more
  -- than these models' work, and much more on a busy machine)
  local threads
  setup(function() threads = lm.threads() lm.threads(1) end)
  teardown(function() lm.threads(threads) end)
  -- the exact distribution of the first two tokens under the target's sampler
  local function exact(model, prompt, sopts)
    local ctx = assert(model:context { n_ctx = 128 })
    local ids = model:tokenize(prompt)
    local s = lm.sampler(sopts)
    local logits = assert(ctx:decode(ids)):clone()
    local first_ids, first_p = s:dist(logits, ids)
    local p1, p2 = {}, {}
    for i, a in ipairs(first_ids) do
      p1[a] = first_p[i]
      ctx:truncate(0, #ids)
      local hist = { table.unpack and table.unpack(ids) or unpack(ids) }
      hist[#hist + 1] = a
      local l2 = assert(ctx:decode({ a }))
      local sids, sp = s:dist(l2, hist)
      for j, b in ipairs(sids) do p2[a .. ":" .. b] = first_p[i] * sp[j] end
    end
    return p1, p2
  end

  local function check(model, prompt, sopts, extra, n)
    local p1, p2 = exact(model, prompt, sopts)
    local c1, c2 = {}, {}
    local ctx = assert(model:context { n_ctx = 128 })
    for seed = 1, n do
      local o = { max_tokens = 2, context = ctx, ignore_eos = true, seed = seed }
      for k, v in pairs(sopts) do o[k] = v end
      for k, v in pairs(extra) do o[k] = v end
      local _, info = model:generate(prompt, o)
      local a, b = info.ids[1], info.ids[2]
      c1[a] = (c1[a] or 0) + 1
      c2[a .. ":" .. b] = (c2[a .. ":" .. b] or 0) + 1
    end
    local s1, d1 = chi2(c1, p1, n)
    local s2, d2 = chi2(c2, p2, n)
    assert.is_true(s1 < chi2_limit(d1), ("first token: chi2 %.1f with %d df"):format(s1, d1))
    assert.is_true(s2 < chi2_limit(d2), ("two tokens: chi2 %.1f with %d df"):format(s2, d2))
  end

  it("a draft model far from the target: the target's distribution, not the draft's", function()
    check(stories, "Once upon a time, there was a", { temperature = 1.0, top_k = 6 }, { draft = mini, n_draft = 4 }, 1500)
  end)

  it("a quantized draft of the same weights (close to the target, not equal)", function()
    local mini_q4 = assert(lm.load(S.path("ref/mini-q4_0.gguf")))
    check(mini, "Once upon a time", { temperature = 1.5, top_k = 6 }, { draft = mini_q4, n_draft = 4 }, 1500)
  end)

  it("a draft close to the target, with top_p and a temperature", function()
    check(stories, "Lily and her mom", { temperature = 0.7, top_k = 20, top_p = 0.9 }, { draft = stories, n_draft = 3 }, 1000)
  end)

  it("prompt lookup (one-hot guesses)", function()
    check(stories, "the cat sat. the cat sat. the cat sat. the cat", { temperature = 1.0, top_k = 5 }, { lookup = true }, 1000)
  end)
end)
