-- Sampling policy. Everything that scans the whole vocabulary (bias, penalties, the top-k
-- cut) runs in C (core.candidates); the rest works on a few dozen candidates here, where
-- users can change it.
--
--   local s = moonlm.sampler { temperature = 0.8, top_k = 40, top_p = 0.95, seed = 1 }
--   local id = s:sample(logits, history)   -- history: the ids so far (for penalties)
--
-- Options (defaults in brackets):
--   temperature [0.8]   0 or less: greedy (the best adjusted logit)
--   top_k [40]          0: no cut (every token is a candidate)
--   top_p [1.0]         nucleus: the smallest set with cumulative probability >= top_p
--   min_p [0.0]         drop tokens with probability < min_p * p(best)
--   typical_p [1.0]     locally typical sampling
--   repeat_penalty [1.0], frequency_penalty [0], presence_penalty [0] over the last
--   penalty_last_n [64] ids of history (repeat: positive logits divided, negative multiplied)
--   logit_bias {}       { [id] = bias }, added before anything else (-math.huge bans a token)
--   mirostat [0]        2: mirostat v2 with mirostat_tau [5.0] and mirostat_eta [0.1]
--   seed                the same seed gives the same choices on every run and machine
--   steps {}            user functions step(cands, history), see below
--   grammar             a matcher (g:matcher(model)), or a grammar (lm.grammar.gbnf/regex/
--                       choice) with model = the model: only tokens it allows are sampled;
--                       its mask is applied in C before anything else, so the cuts and the
--                       user steps only see allowed candidates. s:accept(id) advances it.
--   json_schema         a JSON Schema (table or JSON text) with model = ...: the same, with
--                       the schema's grammar (lm.grammar.json_schema) where whitespace is
--                       one space or a line break and indentation, never a run of it
--
-- The order, as llama.cpp's default chain: logit_bias -> penalties -> top_k -> user steps
-- -> typical_p -> top_p -> min_p -> temperature -> draw (or mirostat instead of the cuts).
-- A step gets cands = { ids = {...}, logits = {...} } (0-based ids, sorted best first, already
-- cut by top_k) and the history; it may edit both arrays in place (they stay parallel) or
-- return a new cands table. Returning an empty set is an error.
-- Where it runs: the work over the whole vocabulary (bias, penalties, top_k) is C, the rest
-- Lua over the few candidates left. With top_k = 0 and no steps, typical_p or mirostat, the
-- cuts and the draw run in C as well (with a number from this sampler's generator), since a
-- flat distribution would otherwise hand most of the vocabulary to Lua; the draws then
-- follow the same distribution in a different order than with a step added.
local core = require "moonlm.core"
local options = require "moonlm.options"

local exp, log, huge, floor = math.exp, math.log, math.huge, math.floor
local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable

local _M = {}
local Sampler = {}

local NO_FINITE = "no token has finite probability (every logit is -inf or NaN after bias and masks, or one is +inf)"
Sampler.__index = Sampler

local defaults = {
  temperature = 0.8, top_k = 40, top_p = 1.0, min_p = 0.0, typical_p = 1.0,
  repeat_penalty = 1.0, frequency_penalty = 0.0, presence_penalty = 0.0, penalty_last_n = 64,
  mirostat = 0, mirostat_tau = 5.0, mirostat_eta = 0.1,
}

local numeric = {
  temperature = true, top_k = true, top_p = true, min_p = true, typical_p = true,
  repeat_penalty = true, frequency_penalty = true, presence_penalty = true,
  penalty_last_n = true, mirostat = true, mirostat_tau = true, mirostat_eta = true, seed = true,
}

local function argerr(msg) error("bad argument #1 to 'sampler' (" .. msg .. ")", 3) end

-- new(opts): the options checked (moonlm.options' "sampler" schema); build(opts) takes a
-- generate's options as they are, ignoring the ones that are not the sampler's
function _M.new(opts)
  options.check("sampler", opts, 1)
  return _M.build(opts)
end

function _M.build(opts)
  if opts ~= nil and type(opts) ~= "table" then argerr("options table expected, got " .. type(opts)) end
  opts = opts or {}
  local self = setmetatable({}, Sampler)
  for k, v in pairs(defaults) do self[k] = v end
  for k, v in pairs(opts) do
    if numeric[k] then
      if type(v) ~= "number" or v ~= v then argerr(("option '%s' must be a number"):format(k)) end
      self[k] = v
    elseif k == "logit_bias" or k == "steps" then
      if type(v) ~= "table" then argerr(("option '%s' must be a table"):format(k)) end
      self[k] = v
    elseif k == "grammar" or k == "json_schema" or k == "model" then -- below
    elseif k ~= "greedy" and Sampler[k] == nil then
      -- generation options pass through the same table; they are not ours to judge (but
      -- one named like a method, as generate's logprobs, must not hide it)
      self[k] = v
    end
  end
  if opts.greedy then self.temperature = 0 end
  if self.top_p <= 0 or self.top_p > 1 then argerr("top_p must be in (0, 1]") end
  if self.min_p < 0 or self.min_p > 1 then argerr("min_p must be in [0, 1]") end
  if self.typical_p <= 0 or self.typical_p > 1 then argerr("typical_p must be in (0, 1]") end
  if self.repeat_penalty <= 0 then argerr("repeat_penalty must be positive") end
  if self.mirostat ~= 0 and self.mirostat ~= 2 then argerr("mirostat must be 0 or 2 (v1 is not supported)") end
  if self.top_k < 0 then argerr("top_k must be >= 0") end
  self.rng = core.rng(floor(self.seed or os.time()))
  self.mu = 2 * self.mirostat_tau
  self.c_opts = {
    top_k = self.top_k, bias = self.logit_bias, penalty_last_n = self.penalty_last_n,
    repeat_penalty = self.repeat_penalty, frequency_penalty = self.frequency_penalty,
    presence_penalty = self.presence_penalty,
  }
  -- with no top_k cut, C may return just the head of the distribution that top_p keeps,
  -- when nothing between top_k and top_p needs the rest (user steps, typical_p, mirostat)
  if self.top_k == 0 and self.top_p < 1 and not self.steps and self.typical_p >= 1 and self.mirostat == 0 then
    self.c_opts.top_p_hint = self.top_p
  end
  -- and sample() then runs top_p, min_p, temperature and the draw in C too, with a uniform
  -- number from our generator: with a flat distribution the head is most of the vocabulary
  if self.top_k == 0 and not self.steps and self.typical_p >= 1 and self.mirostat == 0 then
    local w = { temperature = self.temperature, top_p = self.top_p, min_p = self.min_p }
    for k, v in pairs(self.c_opts) do w[k] = v end
    self.whole = w
  end
  local m = _M.matcher(opts.grammar, opts.json_schema, opts.model, argerr)
  if m then self:set_grammar(m) end
  return self
end

local function is_matcher(g) return type(g) == "userdata" and g.accept ~= nil and g.mask ~= nil end

-- matcher(grammar, json_schema, model, fail) -> a matcher, or nil when neither is given
function _M.matcher(grammar, schema, model, fail)
  if grammar ~= nil and schema ~= nil then fail("give grammar or json_schema, not both") end
  if grammar == nil and schema == nil then return nil end
  if is_matcher(grammar) then return grammar end
  if model == nil then fail("a grammar or json_schema needs model = <the model> (or pass g:matcher(model))") end
  if schema ~= nil then
    local err
    grammar, err = require("moonlm.gbnf").json_schema(schema)
    if not grammar then fail("json_schema: " .. err) end
  elseif not (type(grammar) == "userdata" and grammar.matcher ~= nil) then
    fail("grammar must be a grammar (lm.grammar.gbnf/regex/choice/json_schema) or a matcher, got " .. type(grammar))
  end
  return grammar:matcher(model)
end

-- set_grammar(m): constrain the following samples with matcher m (nil: no constraint)
function Sampler:set_grammar(m)
  self.grammar = m
  self.c_opts.grammar = m
  if self.whole then self.whole.grammar = m end
end

-- accept(id) -> true, or false when the grammar does not allow id (its state unchanged).
-- Advances the grammar, if there is one, past the token that was chosen.
function Sampler:accept(id)
  if self.grammar then return self.grammar:accept(id) end
  return true
end

setmetatable(_M, { __call = function(_, opts) return _M.new(opts) end })

-- softmax over candidate logits (already sorted, best first) -> probabilities
local function softmax(logits, temp)
  local n, p, m = #logits, {}, logits[1]
  local s = 0
  for i = 1, n do
    local e = exp((logits[i] - m) / temp)
    p[i] = e
    s = s + e
  end
  for i = 1, n do p[i] = p[i] / s end
  return p
end

-- Keep the first `n` candidates.
local function keep(c, n)
  for i = #c.ids, n + 1, -1 do
    c.ids[i] = nil
    c.logits[i] = nil
  end
end

local function top_p(c, p, min_keep)
  if p >= 1 then return end
  local probs = softmax(c.logits, 1)
  if c.z then -- only the head came back from C: probabilities of the full distribution
    local s = 0
    for i = 1, #probs do s = s + exp(c.logits[i] - c.logits[1]) end
    local scale = s / c.z
    for i = 1, #probs do probs[i] = probs[i] * scale end
  end
  local cum = 0
  for i = 1, #probs do
    cum = cum + probs[i]
    if cum >= p and i >= min_keep then return keep(c, i) end
  end
end

local function min_p(c, mp, min_keep)
  if mp <= 0 then return end
  local best = c.logits[1]
  local cut = best + log(mp) -- p_i >= mp * p_best  <=>  l_i >= l_best + log(mp)
  for i = 2, #c.logits do
    if c.logits[i] < cut and i > min_keep then return keep(c, i - 1) end
  end
end

local function typical(c, tp, min_keep)
  if tp >= 1 then return end
  local probs = softmax(c.logits, 1)
  local ent = 0
  for i = 1, #probs do
    if probs[i] > 0 then ent = ent - probs[i] * log(probs[i]) end
  end
  -- the smallest set, by |surprise - entropy|, whose mass reaches tp
  local order, dev = {}, {}
  for i = 1, #probs do
    order[i] = i
    dev[i] = math.abs(-log(probs[i]) - ent)
  end
  table.sort(order, function(a, b)
    if dev[a] ~= dev[b] then return dev[a] < dev[b] end
    return a < b
  end)
  local cum, n = 0, #order
  for k = 1, #order do
    cum = cum + probs[order[k]]
    if cum >= tp and k >= min_keep then n = k break end
  end
  local kept = {}
  for k = 1, n do kept[order[k]] = true end
  local ids, logits = {}, {}
  for i = 1, #probs do -- keep the best-first order
    if kept[i] then
      ids[#ids + 1] = c.ids[i]
      logits[#logits + 1] = c.logits[i]
    end
  end
  c.ids, c.logits = ids, logits
end

local function draw(self, probs)
  local u = self.rng:uniform()
  local cum = 0
  for i = 1, #probs do
    cum = cum + probs[i]
    if u < cum then return i end
  end
  return #probs
end

-- candidates(logits, history) -> cands after bias, penalties and top_k (C), and user steps
function Sampler:candidates(logits, history)
  local opts = self.c_opts
  opts.history = history
  local ids, vals, z = core.candidates(logits, opts)
  opts.history = nil
  if self.grammar then -- top_k may reach past the tokens the grammar allows
    while #ids > 0 and vals[#ids] == -huge do
      ids[#ids], vals[#ids] = nil, nil
    end
    if #ids == 0 then error("the grammar allows no token here", 3) end
  end
  local c = { ids = ids, logits = vals, z = z }
  if self.steps then
    for i, step in ipairs(self.steps) do
      local r = step(c, history)
      if r ~= nil then c = r end
      if type(c) ~= "table" or not c.ids or #c.ids == 0 then
        error(("sampler step %d left no candidates"):format(i), 3)
      end
    end
  end
  return c
end

-- sample(logits, history) -> id (0-based), and its probability under the final distribution;
-- nil, "no token has finite probability ..." when every token is banned (-inf, NaN) or a
-- logit is +inf
function Sampler:sample(logits, history)
  local w = self.whole
  if w then
    w.history, w.draw = history, self.temperature > 0 and self.rng:uniform() or 0
    local id, p = core.candidates(logits, w)
    w.history = nil
    return id, p
  end
  local c = self:candidates(logits, history)
  if #c.ids == 0 then error("no candidates to sample from", 2) end
  -- every candidate banned (-inf, and NaN ranks as -inf), or a logit of +inf: no distribution
  local best = c.logits[1]
  if best == -huge or best == huge or best ~= best then return nil, NO_FINITE end
  if self.temperature <= 0 then return c.ids[1], 1 end
  if self.mirostat == 2 then
    local probs = softmax(c.logits, self.temperature)
    -- drop candidates more surprising than mu (keep at least one)
    local n = #probs
    for i = 2, #probs do
      if -log(probs[i]) / log(2) > self.mu then n = i - 1 break end
    end
    keep(c, n)
    probs = softmax(c.logits, self.temperature)
    local i = draw(self, probs)
    local surprise = -log(probs[i]) / log(2)
    self.mu = self.mu - self.mirostat_eta * (surprise - self.mirostat_tau)
    return c.ids[i], probs[i]
  end
  typical(c, self.typical_p, 1)
  top_p(c, self.top_p, 1)
  min_p(c, self.min_p, 1)
  local probs = softmax(c.logits, self.temperature)
  local i = draw(self, probs)
  return c.ids[i], probs[i]
end

-- dist(logits, history) -> ids, probs: the distribution sample() draws from, after every cut
-- and the temperature, best first (greedy: the best id, probability 1). Speculative decoding
-- needs it to accept or reject a draft (moonlm/speculative.lua). Not for mirostat, whose cut
-- moves with every draw.
function Sampler:dist(logits, history)
  if self.mirostat == 2 then error("the distribution of a mirostat sampler depends on its draws", 2) end
  local c = self:candidates(logits, history)
  if #c.ids == 0 then error("no candidates to sample from", 2) end
  local best = c.logits[1]
  if best == -huge or best == huge or best ~= best then return nil, NO_FINITE end
  if self.temperature <= 0 then return { c.ids[1] }, { 1 } end
  typical(c, self.typical_p, 1)
  top_p(c, self.top_p, 1)
  min_p(c, self.min_p, 1)
  return c.ids, softmax(c.logits, self.temperature)
end

-- uniform() -> a number in [0, 1) from this sampler's generator
function Sampler:uniform() return self.rng:uniform() end

-- logprobs(logits, history, id, n) -> logprob, top: the log-probability of token `id` and
-- the n most likely tokens as { { id = , logprob = }, ... } best first (fewer if fewer
-- tokens are possible). The distribution is the softmax at temperature 1 of the logits after
-- logit_bias and the penalties (what the sampler starts from), before temperature and the
-- cuts (top_k, top_p, min_p, typical_p, mirostat, user steps): OpenAI's logprobs. A banned
-- token has -math.huge. Computed in C over the whole vocabulary.
function Sampler:logprobs(logits, history, id, n)
  local opts = self.c_opts
  opts.history, opts.logprobs, opts.logprob_id = history, n or 0, id
  local lp, ids, lps = core.candidates(logits, opts)
  opts.history, opts.logprobs, opts.logprob_id = nil, nil, nil
  local top = {}
  for i = 1, #ids do top[i] = { id = ids[i], logprob = lps[i] } end
  return lp, top
end

-- Forget adaptive state (mirostat's mu, the grammar's progress) and optionally reseed.
function Sampler:reset(seed)
  self.mu = 2 * self.mirostat_tau
  if self.grammar then self.grammar:reset() end
  if seed then self.rng:seed(floor(seed)) end
end

return _M
