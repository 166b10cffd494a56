-- Speculative decoding for generate: a proposer guesses the next n_draft tokens, the target
-- model checks them all in one batched decode and keeps the longest prefix it agrees with,
-- plus one token of its own (a correction, or a bonus when every guess was right). Each
-- round costs one target decode for up to n_draft + 1 tokens.
--
-- Greedy output is exactly the output without speculation. With sampling, a guess d drawn
-- from the proposer's distribution q is accepted with probability min(1, p(d) / q(d)), and
-- a rejection draws from max(0, p - q) normalised, where p is the target sampler's final
-- distribution (after its cuts and temperature) at that position: the tokens then follow
-- the target's distribution exactly (Leviathan et al. 2023, Chen et al. 2023).
--
-- Proposers:
--   draft = model     a smaller model with the same vocabulary, run in a context of its own
--                     and sampled with the target's sampler options
--   lookup = true     prompt lookup: the tokens that followed the latest earlier occurrence
--                     of the last 3, 2 or 1 tokens (no second model; q is one-hot)
--
-- The target context holds the history except the last token (pending), which the next
-- round decodes in front of the guesses.
local sampler_mod = require "moonlm.sampler"

local _M = {}
local Spec = {}
Spec.__index = Spec

local NGRAM = 3

-- new(gen, opts): gen = { model, ctx, seq, sampler, history }; the target has decoded the
-- whole history and `logits` are its scores for the next position.
function _M.new(gen, opts, logits)
  local self = setmetatable({
    ctx = gen.ctx, seq = gen.seq, sampler = gen.sampler, history = gen.history,
    n_draft = opts.n_draft or 8, logits = logits, queue = {}, qhead = 1,
    greedy = gen.sampler.temperature <= 0, proposed = 0, accepted = 0, rounds = 0,
    keep = 0, dropped = 0, -- context shifts so far (on_shift)
  }, Spec)
  self.uniform = function() return self.sampler:uniform() end
  if gen.sampler.mirostat == 2 and not self.greedy then
    error("speculative decoding cannot follow mirostat (its cut changes with every draw)", 0)
  end
  if opts.draft then
    local d = opts.draft
    if d.n_vocab ~= gen.model.n_vocab then
      error(("the draft model's vocabulary (%d tokens) is not the target's (%d)"):format(d.n_vocab, gen.model.n_vocab), 0)
    end
    local dctx, err = d:context { n_ctx = gen.ctx.n_ctx }
    if not dctx then error("draft context: " .. tostring(err), 0) end
    self.dctx = dctx
    -- the draft samples with the target's options, from a generator of its own
    local o = {}
    for k in pairs(sampler_mod.OPTIONS and sampler_mod.OPTIONS.fields or {}) do o[k] = gen.sampler[k] end
    if not sampler_mod.OPTIONS then
      for _, k in ipairs { "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                           "frequency_penalty", "presence_penalty", "penalty_last_n", "logit_bias" } do
        o[k] = gen.sampler[k]
      end
    end
    o.seed = (gen.sampler.seed or 0) + 7919
    o.mirostat, o.greedy, o.steps = nil, nil, gen.sampler.steps
    self.dsampler = sampler_mod.new(o)
  else
    self.index = { {}, {}, {} } -- n-gram -> position after its latest occurrence
    self.indexed = 0
  end
  return self
end

-- ---- proposers ----

local function key(h, i, n)
  if n == 1 then return h[i] end
  if n == 2 then return h[i] * 65536 * 4096 + h[i + 1] end
  return h[i] .. ":" .. h[i + 1] .. ":" .. h[i + 2]
end

-- prompt lookup: index the n-grams that end before the last token, then continue the
-- latest occurrence of the longest suffix found
function Spec:lookup(k)
  local h = self.history
  for p = self.indexed + 1, #h - 1 do
    for n = 1, NGRAM do
      if p - n + 1 >= 1 then self.index[n][key(h, p - n + 1, n)] = p + 1 end
    end
  end
  self.indexed = math.max(self.indexed, #h - 1)
  for n = NGRAM, 1, -1 do
    if #h >= n then
      local s = self.index[n][key(h, #h - n + 1, n)]
      if s then
        local out = {}
        for i = s, math.min(s + k - 1, #h) do out[#out + 1] = h[i] end
        return out
      end
    end
  end
  return {}
end

-- draft model: bring its context up to the history, then draw k tokens
function Spec:draft(k)
  local h, dctx = self.history, self.dctx
  local feed = {}
  for p = dctx:pos(0), #h - self.dropped - 1 do feed[#feed + 1] = h[self:visible(p)] end
  local logits, err = dctx:decode(feed)
  if not logits then return {}, {} end -- the draft's context is full: no guesses
  local out, qs, hist = {}, {}, {}
  for i = 1, #h do hist[i] = h[i] end
  for i = 1, k do
    local d, q
    if self.greedy then
      d = self.dsampler:sample(logits, hist)
    else
      local ids, probs = self.dsampler:dist(logits, hist)
      local u, cum = self.dsampler:uniform(), 0
      d = ids[#ids]
      for j = 1, #ids do
        cum = cum + probs[j]
        if u < cum then d = ids[j] break end
      end
      q = {}
      for j = 1, #ids do q[ids[j]] = probs[j] end
    end
    out[i], qs[i] = d, q
    hist[#hist + 1] = d
    if i < k then
      logits, err = dctx:decode({ d })
      if not logits then break end
    end
  end
  return out, qs
end

-- ---- one round ----

-- verify(ids, probs, q, d, uniform) -> token, accepted: the target's decision on guess d at
-- one position. p = (ids, probs), the target's distribution; q = { [id] = prob } the
-- proposer's, or nil for a one-hot guess. d is kept with probability min(1, p(d) / q(d)),
-- else the token is drawn from max(0, p - q) normalised; d == nil (no guess): drawn from p.
-- uniform() gives numbers in [0, 1).
function _M.verify(ids, probs, q, d, uniform)
  local function pick(xs, ps)
    local u, cum = uniform(), 0
    for j = 1, #xs do
      cum = cum + ps[j]
      if u < cum then return xs[j] end
    end
    return xs[#xs]
  end
  if d == nil then return pick(ids, probs), false end
  local p, qd = 0, q and q[d] or 1
  for j = 1, #ids do if ids[j] == d then p = probs[j] break end end
  if uniform() < p / qd then return d, true end
  local rid, rp, sum = {}, {}, 0
  for j = 1, #ids do
    local r = probs[j] - (q and (q[ids[j]] or 0) or (ids[j] == d and 1 or 0))
    if r > 0 then rid[#rid + 1], rp[#rp + 1], sum = ids[j], r, sum + r end
  end
  if sum <= 0 then return pick(ids, probs), false end -- p = q up to rounding
  for j = 1, #rp do rp[j] = rp[j] / sum end
  return pick(rid, rp), false
end

function Spec:round(room)
  local h = self.history
  local k = math.max(0, math.min(self.n_draft, room - (self.pending and 1 or 0)))
  local drafts, qs = {}, {}
  if k > 0 then
    if self.dctx then drafts, qs = self:draft(k) else drafts = self:lookup(k) end
  end
  local batch = {}
  if self.pending then batch[1] = self.pending end
  for _, d in ipairs(drafts) do batch[#batch + 1] = d end
  local rows, base = {}, self.ctx:pos(self.seq)
  if #batch > 0 then
    local out, err = self.ctx:decode(batch, { seq = self.seq, logits = "all" })
    if not out then return nil, err end
    for i = 1, #batch do rows[#rows + 1] = out[i] end
  end
  if not self.pending then table.insert(rows, 1, self.logits) end
  self.logits = nil
  -- rows[i] scores the position after h .. drafts[1..i-1]
  local hist = {}
  for i = 1, #h do hist[i] = h[i] end
  local emit, n = {}, 0
  for i = 1, #drafts + 1 do
    local row, d = rows[i], drafts[i]
    if self.greedy then
      local t = self.sampler:sample(row, hist)
      emit[#emit + 1] = t
      if t ~= d then break end
      n = n + 1
    else
      local ids, probs = self.sampler:dist(row, hist)
      local t, ok = _M.verify(ids, probs, qs[i], d, self.uniform)
      emit[#emit + 1] = t
      if not ok then break end
      n = n + 1
    end
    hist[#hist + 1] = emit[#emit]
  end
  -- the target keeps the history and the accepted guesses; the last emitted token is pending
  local keep = base + (self.pending and 1 or 0) + n
  if self.ctx:pos(self.seq) > keep then self.ctx:truncate(self.seq, keep) end
  if self.dctx and self.dctx:pos(0) > #h - self.dropped + n then self.dctx:truncate(0, #h - self.dropped + n) end
  self.pending = emit[#emit]
  self.rounds = self.rounds + 1
  self.proposed = self.proposed + #drafts
  self.accepted = self.accepted + n
  return emit
end

-- Is the queue of decided tokens empty (the next call runs a round)?
function Spec:idle() return self.qhead > #self.queue end

-- The target's context dropped positions [keep, keep + discard) (a context shift): the
-- draft's context follows. After shifts, context position p holds history index p + 1 for
-- p < keep and p + 1 + dropped after (visible).
function Spec:on_shift(keep, discard)
  self.keep, self.dropped = keep, self.dropped + discard
  if not self.dctx then return end
  local held = self.dctx:pos(0)
  if held > keep + discard then self.dctx:shift(0, keep, discard)
  else self.dctx:truncate(0, math.min(held, keep)) end
end

function Spec:visible(p) return p < self.keep and p + 1 or p + 1 + self.dropped end

-- next(room) -> id | nil, err: the next token. room: tokens the target context can still
-- take; a round is run when the queue of decided tokens is empty.
function Spec:next(room)
  if self.qhead > #self.queue then
    local ids, err = self:round(room)
    if not ids then return nil, err end
    self.queue, self.qhead = ids, 1
  end
  local id = self.queue[self.qhead]
  self.qhead = self.qhead + 1
  return id
end

-- After the generation: the target context holds exactly the history but its last token
-- (as generate without speculation leaves it), and the draft's context is closed.
function Spec:finish()
  local n = #self.history - 1 - self.dropped
  if n >= 0 and self.ctx:pos(self.seq) > n then self.ctx:truncate(self.seq, n) end
  if self.dctx then
    self.dctx:close()
    self.dctx = nil
  end
end

function Spec:stats()
  return { rounds = self.rounds, proposed = self.proposed, accepted = self.accepted,
           acceptance = self.proposed > 0 and self.accepted / self.proposed or 0 }
end

return _M
