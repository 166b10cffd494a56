-- The generation loop: prompt -> prefill -> sample -> decode, one token at a time, with
-- stop strings matched across token boundaries, streaming text that is always whole UTF-8
-- characters. Plain Lua on purpose: it is the policy users want to read and change.
--
--   text, info = model:generate(prompt, opts)
--   for piece, info in model:stream(prompt, opts) do io.write(piece) end
--
-- prompt: a string (tokenized with the model's BOS default) or a table of token ids.
-- opts (defaults in brackets), plus every sampler option (moonlm.sampler):
--   max_tokens [256]   tokens to generate at most
--   stop {}            strings that end generation; never part of the output
--   stop_tokens {}     ids that end generation, besides the model's end-of-turn tokens
--   ignore_eos [false] keep going past end-of-generation tokens
--   on_token(piece, id) called for every token; return false to stop ("abort")
--   sampler            a moonlm.sampler to use instead of building one from opts
--   context, seq [0]   where to run; by default a context kept by the model for generate.
--                      One generation at a time per sequence: generate from inside another
--                      one's on_token raises "the default context is busy"; a second stream
--                      started before the first ends takes the sequence over (the first
--                      raises if resumed): give each its own context = model:context{...}
--   keep [false]       continue the sequence instead of clearing it first
--   special [false]    render control tokens in the output text
--   preserved_tokens {} ids of control tokens whose text goes into the output all the same
--                      (tool-call markers such as [TOOL_CALLS] that a parser must see)
--   n_ctx              size of the model's own context (default min(n_ctx_train, 4096))
--   draft              speculative decoding: a smaller model with the same vocabulary guesses
--                      n_draft [8] tokens, the model checks them in one batched decode
--                      (moonlm/speculative.lua); greedy text is unchanged, sampled text keeps
--                      the model's distribution
--   lookup [false]     speculative decoding with guesses taken from the text so far (the
--                      continuation of the last n-gram's latest occurrence: repetitive text,
--                      code edits, quoting the prompt)
--   grammar            a grammar (lm.grammar.gbnf/regex/choice/json_schema) or a matcher:
--                      only what it allows is generated (its mask comes before every sampler
--                      step); generation ends when it is done, EOS is possible only where it
--                      may end. A grammar gets a fresh matcher per call; a matcher goes on
--                      from its state.
--   json_schema        a JSON Schema (table or JSON text): as grammar = lm.grammar.json_schema(it)
--                      but whitespace is one space or a line break and indentation (a model
--                      is never invited to write it forever); compile it yourself for others
--   fast_forward [true] with a grammar, the tokens it forces (one possible continuation) are
--                      appended without sampling and decoded in one batch with the token
--                      before them (not with logprobs, where every token has its own step)
--   context_shift [false] when the context is full, drop the oldest half of the tokens
--                      after the first n_keep and go on (their cached keys are rotated,
--                      not decoded again; llama.cpp's context shift); a prompt that does not
--                      fit keeps its first n_keep tokens and its end (info.truncated tokens
--                      dropped); info.shifted counts the tokens shifted out
--   n_keep             tokens at the start of the sequence a shift keeps [1 after BOS, else 0]
--   logprobs           n >= 0 (true: 0): info.logprobs gets, for every generated token,
--                      its log-probability and the n most likely tokens at its place (see
--                      sampler:logprobs: temperature 1, after logit_bias and penalties)
-- model:generate returns nil, err, info when the prompt does not fit the context ("context
-- full: prompt of N tokens does not fit n_ctx = M"; with context_shift it is cut to fit) or
-- no token can be sampled ("no token has finite probability ..."); model:stream raises it.
-- info: prompt_tokens, tokens, stop_reason ("eos" | "stop" | "length" | "abort" |
--   "grammar": the grammar is complete | "error": see above), forced_tokens (with a grammar: how many tokens
--   were fast-forwarded),
--   prompt_seconds, gen_seconds, prompt_tps, gen_tps, ids (the generated ids),
--   speculative (with draft or lookup: { rounds, proposed, accepted, acceptance }),
--   logprobs (with the option: one entry per id, { id, token, bytes, logprob,
--   top_logprobs = { { id, token, bytes, logprob }, ... } }; token is the token's bytes,
--   bytes the same as a list of numbers, as OpenAI's)
local sampler = require "moonlm.sampler"
local core = require "moonlm.core"
local options = require "moonlm.options"

local clock = core.clock
local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable
local find, sub = string.find, string.sub
local floor = math.floor

local _M = {}

local Gen = {}
Gen.__index = Gen

local function stop_list(stop)
  if stop == nil then return {} end
  if type(stop) == "string" then return { stop } end
  if type(stop) ~= "table" then error("bad option 'stop' (string or table of strings expected)", 4) end
  local out = {}
  for _, s in ipairs(stop) do
    if type(s) ~= "string" then error("bad option 'stop' (string or table of strings expected)", 4) end
    if s ~= "" then out[#out + 1] = s end
  end
  return out
end

-- Length of the longest suffix of `text` that is a proper prefix of some stop string.
local function held_suffix(text, stops)
  local best = 0
  for _, s in ipairs(stops) do
    for k = math.min(#s - 1, #text), 1, -1 do
      if k <= best then break end
      if sub(text, -k) == sub(s, 1, k) then
        best = k
        break
      end
    end
  end
  return best
end

-- Do not split a UTF-8 character when holding back a suffix.
local function char_start(text, i)
  while i > 1 do
    local b = text:byte(i)
    if not b or b < 0x80 or b >= 0xC0 then break end
    i = i - 1
  end
  return i
end

-- start(model, prompt, opts [, fname]) -> the generation's state; fname: the public name
-- in errors ("generate" or "stream"; chat turns check their options before)
-- token ids against the model's vocabulary, as given (2^32 + 5 is not token 5): the prompt
-- (argument #1) and the options that hold ids (#2); raised at start's caller's caller
local function check_vocab(model, prompt, opts, fname, level)
  local n = model.n_vocab
  if type(n) ~= "number" then return end
  local function bad(argn, what, id)
    local msg = type(id) == "number" and id == floor(id)
      and ("token id %.0f out of range (the vocabulary has %d: 0 to %d)"):format(id, n, n - 1)
      or ("%s is not an integer token id"):format(tostring(id))
    error(("bad argument #%d to '%s' (%s%s)"):format(argn, fname, what, msg), level)
  end
  local function ok(id) return type(id) == "number" and id >= 0 and id < n and id == floor(id) end
  if type(prompt) == "table" then
    for i, id in ipairs(prompt) do
      if not ok(id) then bad(1, ("item %d: "):format(i), id) end
    end
  end
  for _, name in ipairs { "stop_tokens", "preserved_tokens" } do
    for _, id in ipairs(opts[name] or {}) do
      if not ok(id) then bad(2, ("option '%s': "):format(name), id) end
    end
  end
  for id in pairs(opts.logit_bias or {}) do
    if not ok(id) then bad(2, "option 'logit_bias': ", id) end
  end
end

-- fname: the function whose options these are (default "generate"); caller: the name errors
-- about ids give, and the stack level of its caller (chat's say/stream, which call this
-- through Chat:turn)
function _M.start(model, prompt, opts, fname, caller, level)
  opts = options.check(fname or "generate", opts, 2, 3) or {}
  check_vocab(model, prompt, opts, caller or fname or "generate", level or 5)
  local self = setmetatable({ model = model, opts = opts }, Gen)
  -- where to run
  local ctx = opts.context
  if not ctx then
    local want = opts.n_ctx or math.min(model.n_ctx_train or 4096, 4096)
    ctx = model._gen_ctx
    if not ctx or ctx.n_ctx ~= want then
      if ctx then ctx:close() end
      model._gen_ctx = nil -- a failed replacement must not leave the closed one behind
      local err
      ctx, err = model:context { n_ctx = want }
      if not ctx then error(err, 3) end
      model._gen_ctx = ctx
    end
  end
  self.ctx, self.seq = ctx, opts.seq or 0
  -- one generation at a time on a sequence: one started from inside another (on_token) is
  -- refused; one started while another is unfinished takes the sequence over, and the
  -- other raises if it is resumed (interleaved streams would garble both)
  local owners = rawget(ctx, "_gen_owners")
  if not owners then
    owners = setmetatable({}, { __mode = "v" })
    rawset(ctx, "_gen_owners", owners)
  end
  local prev = owners[self.seq]
  if prev and not prev.done then
    if prev.running then
      error(("the %s is busy: a generation on it is running (called from its on_token?); give this one its own context = model:context{...}")
        :format(opts.context and "context" or "default context"), 3)
    end
    prev.taken = opts.context and "context" or "default context"
  end
  owners[self.seq] = self
  if not opts.keep then ctx:clear(self.seq) end
  -- prompt
  local ids
  if type(prompt) == "string" then
    ids = model:tokenize(prompt, { special = opts.parse_special })
  elseif type(prompt) == "table" then
    ids = prompt
  else
    error("bad argument #1 to 'generate' (string or table of token ids expected, got " .. type(prompt) .. ")", 3)
  end
  self.history = {}
  for i, id in ipairs(ids) do self.history[i] = id end
  local function fail(msg) error("bad option '" .. (opts.json_schema ~= nil and "json_schema" or "grammar") .. "' (" .. msg .. ")", 5) end
  local matcher = sampler.matcher(opts.grammar, opts.json_schema, model, fail)
  if opts.sampler then
    if matcher then
      error("bad option 'sampler' (give the grammar to your sampler: lm.sampler{ grammar = ..., model = ... })", 3)
    end
    self.sampler = opts.sampler
  elseif matcher then
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.grammar, o.json_schema = matcher, nil
    self.sampler = sampler.build(o)
  else
    self.sampler = sampler.build(opts)
  end
  self.matcher = self.sampler.grammar
  if self.matcher and opts.ignore_eos then
    error("bad option 'ignore_eos' (with a grammar, the grammar decides where the output ends)", 3)
  end
  -- the dummy-prefix space of the first word is dropped when the output starts the text
  -- (an empty prompt, or only BOS and other control tokens)
  local starts = #ids == 0 or model:detokenize(ids) == ""
  self.decoder = model:decoder { special = opts.special, strip_space = starts }
  if opts.preserved_tokens and not opts.special then
    self.preserved = {}
    for _, id in ipairs(opts.preserved_tokens) do self.preserved[id] = true end
  end
  self.stops = stop_list(opts.stop)
  self.stop_ids = {}
  if not opts.ignore_eos then
    for _, id in ipairs(model.vocab and model.vocab.eog or {}) do self.stop_ids[id] = true end
  end
  for _, id in ipairs(opts.stop_tokens or {}) do self.stop_ids[id] = true end
  self.max_tokens = opts.max_tokens or 256
  local lp = opts.logprobs
  if lp ~= nil and lp ~= false then
    if lp == true then lp = 0 end
    if type(lp) ~= "number" or lp < 0 or lp ~= math.floor(lp) then
      error("bad option 'logprobs' (true or a whole number >= 0 expected)", 3)
    end
    self.logprobs_n, self.token_info = lp, {}
  end
  if opts.draft ~= nil and not (type(opts.draft) == "table" and opts.draft._ud and opts.draft.context) then
    error("bad option 'draft' (a model expected, got " .. type(opts.draft) .. ")", 3)
  end
  local nd = opts.n_draft
  if nd ~= nil and (type(nd) ~= "number" or nd < 1 or nd ~= math.floor(nd)) then
    error("bad option 'n_draft' (a whole number >= 1 expected)", 3)
  end
  if (opts.draft or opts.lookup) and self.logprobs_n then
    error("bad option 'logprobs' (not available with draft or lookup)", 3)
  end
  self.fast_forward = self.matcher ~= nil and opts.fast_forward ~= false and not self.logprobs_n
  if self.matcher and (opts.draft or opts.lookup) then
    error("bad option '" .. (opts.draft and "draft" or "lookup") .. "' (not available with a grammar)", 3)
  end
  self.pending = ""
  self.info = { prompt_tokens = #ids, tokens = 0, ids = {}, stop_reason = nil, logprobs = self.logprobs_n and {} or nil,
                forced_tokens = self.matcher and 0 or nil }
  -- prefill
  local t0 = clock()
  if #ids == 0 then
    local bos = model.vocab and model.vocab.bos
    if not bos then error("empty prompt and the model has no BOS token", 3) end
    ids = { bos }
    self.history[1] = bos
  end
  if opts.context_shift then ids = self:fit_prompt(ids) end
  local free = ctx.n_ctx - ctx:pos(self.seq)
  local logits, err = ctx:decode(ids, { seq = self.seq })
  self.info.prompt_seconds = clock() - t0
  self.info.prompt_tps = #ids / math.max(self.info.prompt_seconds, 1e-9)
  self.t_gen = clock()
  if not logits then
    if free < ctx.n_ctx then
      err = ("context full: prompt of %d tokens does not fit the %d free cells of n_ctx = %d"):format(#ids, free, ctx.n_ctx)
    else
      err = ("context full: prompt of %d tokens does not fit n_ctx = %d"):format(#ids, ctx.n_ctx)
    end
    self:fail(err .. (opts.context_shift and "" or " (context_shift = true keeps its start and end)"))
  end
  self.logits = logits
  if logits and (opts.draft or opts.lookup) then
    self.spec = require("moonlm.speculative").new(self, opts, logits)
    self.logits = nil
  end
  return self
end

-- ---- context shift (opts.context_shift) ----
-- As llama.cpp's llama-cli: when the next token would take the last cell of the context,
-- the oldest half of what follows the first n_keep tokens goes, and the rest moves down
-- with its cached keys rotated (ctx:shift) instead of being decoded again. A prompt that
-- cannot fit is cut as llama-server cuts it: n_keep tokens, then the end, in blocks of
-- half the rest of the context.

function Gen:shift_keep(first_id)
  local k = self.opts.n_keep
  if k == nil then k = (self.model.vocab and first_id == self.model.vocab.bos) and 1 or 0 end
  return k
end

-- Make room for n more tokens, if the option allows; returns true if there is room.
function Gen:make_room(n)
  local ctx, seq = self.ctx, self.seq
  local pos, n_ctx = ctx:pos(seq), ctx.n_ctx
  while self.opts.context_shift and pos + n >= n_ctx do
    local keep = math.min(self.n_keep, pos)
    local discard = math.floor((pos - keep) / 2)
    if discard <= 0 then break end
    local ok, err = ctx:shift(seq, keep, discard)
    if not ok then
      self.info.error = err
      break
    end
    self.info.shifted = (self.info.shifted or 0) + discard
    if self.spec then self.spec:on_shift(keep, discard) end
    pos = pos - discard
  end
  return pos + n < n_ctx
end

function Gen:fit_prompt(ids)
  local ctx, seq = self.ctx, self.seq
  self.n_keep = self:shift_keep(ctx:pos(seq) > 0 and self.history[1] or ids[1])
  if ctx:pos(seq) > 0 then self:make_room(#ids) end
  local room = ctx.n_ctx - ctx:pos(seq)
  if #ids < room then return ids end
  local keep = math.min(ctx:pos(seq) > 0 and 0 or self.n_keep, room - 4)
  local block = math.floor((room - keep) / 2)
  if keep < 0 or block <= 0 then return ids end -- no room to speak of: decode fails as without
  local erased = math.floor((#ids - keep - block) / block) * block
  local out = {}
  for i = 1, keep do out[i] = ids[i] end
  for i = keep + erased + 1, #ids do out[#out + 1] = ids[i] end
  self.info.truncated = erased
  return out
end

-- fail(err): generation cannot go on (the prompt does not fit, no token can be sampled):
-- generate returns nil, err, info; a stream raises err
function Gen:fail(err)
  self.info.stop_reason = "error"
  self.info.error = err
  self.failed = err
  self.done = true
end

function Gen:finish(reason)
  if not self.done then
    self.done = true
    self.info.stop_reason = self.info.stop_reason or reason
  end
  local info = self.info
  info.gen_seconds = clock() - self.t_gen
  info.gen_tps = info.tokens / math.max(info.gen_seconds, 1e-9)
  if self.spec then
    self.spec:finish()
    info.speculative = self.spec:stats()
    self.spec = nil
  end
  if self.logits then
    self.logits:close()
    self.logits = nil
  end
end

-- split_stop(text, stops, final) -> emit, held, stopped. The text before the first stop
-- string (then stopped = true and nothing is held), or all of it but a tail that may be the
-- start of a stop string (held back, unless final), never splitting a UTF-8 character.
-- Shared with the OpenResty scheduler.
function _M.split_stop(text, stops, final)
  for _, s in ipairs(stops) do
    local at = find(text, s, 1, true)
    if at then return sub(text, 1, at - 1), "", true end
  end
  if not final and #stops > 0 then
    local hold = held_suffix(text, stops)
    if hold > 0 then
      local cut = char_start(text, #text - hold + 1)
      return sub(text, 1, cut - 1), sub(text, cut), false
    end
  end
  return text, "", false
end

-- Move safe text out of `pending`: everything, or all but a possible stop-string start.
function Gen:release(final)
  local out, held, stopped = _M.split_stop(self.pending, self.stops, final)
  self.pending = held
  if stopped then
    self.info.stop_reason = "stop"
    self.stopped = true
  end
  return out
end

-- { id, token, bytes, logprob } for a token (its text and bytes cached per generation)
function Gen:token_entry(id, logprob)
  local t = self.token_info[id]
  if not t then
    local text = self.model:piece(id, true)
    t = { text, { text:byte(1, -1) } }
    self.token_info[id] = t
  end
  local bytes = {}
  for i, b in ipairs(t[2]) do bytes[i] = b end
  return { id = id, token = t[1], bytes = bytes, logprob = logprob }
end

-- One generated token into the history, the info and the text; returns its piece.
function Gen:push(id, lp, top)
  self.history[#self.history + 1] = id
  local info = self.info
  info.tokens = info.tokens + 1
  info.ids[info.tokens] = id
  if lp then
    local e = self:token_entry(id, lp)
    e.top_logprobs = {}
    for i, t in ipairs(top) do e.top_logprobs[i] = self:token_entry(t.id, t.logprob) end
    info.logprobs[info.tokens] = e
  end
  local piece
  if self.preserved and self.preserved[id] then
    piece = self.decoder:flush() .. self.model:piece(id, true)
  else
    piece = self.decoder:push(id)
  end
  if self.opts.on_token and self.opts.on_token(piece, id) == false then
    info.stop_reason = "abort"
    self.done = true
  end
  return piece
end

-- forced() -> the tokens of the text the grammar forces now (its only continuation),
-- already accepted by the grammar. The last one is left out unless the grammar ends after
-- it: the model may continue that text with a longer token.
function Gen:forced()
  local m = self.matcher
  local text = m:forced()
  if text == "" then return {} end
  local ids = self.model:tokenize(text, { bos = false, eos = false, prefix = false })
  local n = 0
  while n < #ids and self.sampler:accept(ids[n + 1]) do n = n + 1 end
  if n > 0 and not (n == #ids and m:is_done()) then
    m:rollback(1)
    n = n - 1
  end
  for i = #ids, n + 1, -1 do ids[i] = nil end
  return ids
end

-- next() -> the next piece of text (never ""), or nil when generation has ended.
function Gen:next()
  if self.taken and not self.done then
    error(("the %s is busy: a later generation took it over before this one finished (give each stream its own context = model:context{...})")
      :format(self.taken), 2)
  end
  self.running = true
  local ok, piece = pcall(self.step, self)
  self.running = false
  if not ok then error(piece, 0) end
  return piece
end

function Gen:step()
  while true do
    if self.stopped or self.done then
      if not self.flushed then
        self.flushed = true
        if not self.stopped then
          self.pending = self.pending .. self.decoder:flush()
          local out = self:release(true)
          self:finish(self.info.stop_reason or "length")
          if out ~= "" then return out end
        end
        self:finish("stop")
      end
      return nil
    end
    local info = self.info
    if info.tokens >= self.max_tokens then
      self.done = true
      info.stop_reason = "length"
    else
      local id, lp, top
      if self.spec then
        local err
        if self.spec:idle() then self:make_room(1) end
        id, err = self.spec:next(self.ctx.n_ctx - self.ctx:pos(self.seq) - 1)
        if not id then
          self.done = true
          self.info.stop_reason = "length"
          self.info.context_full = true
          self.info.error = err
        end
      else
        local serr
        id, serr = self.sampler:sample(self.logits, self.history)
        if id and self.logprobs_n then lp, top = self.sampler:logprobs(self.logits, self.history, id, self.logprobs_n) end
        self.logits:close()
        self.logits = nil
        if not id then self:fail(serr) end
      end
      if not id then -- nothing more: the context is full, or no token can be sampled
      elseif self.stop_ids[id] then
        self.done = true
        info.stop_reason = "eos"
        info.eos_id = id
      else
        if self.matcher and not self.sampler:accept(id) then
          error(("the grammar refused token %d, which its mask allowed"):format(id), 2)
        end
        local piece = self:push(id, lp, top)
        local batch = { id }
        if self.fast_forward and not self.done and not self.matcher:is_done() then
          -- the tokens the grammar forces come without a sampling step of their own
          local forced = self:forced()
          for i, f in ipairs(forced) do
            if self.done or info.tokens >= self.max_tokens then
              self.matcher:rollback(#forced - i + 1) -- accepted, but not in the output
              break
            end
            piece = piece .. self:push(f)
            batch[#batch + 1] = f
            info.forced_tokens = info.forced_tokens + 1
          end
        end
        if self.matcher and not self.done and self.matcher:is_done() then
          info.stop_reason = "grammar"
          self.done = true
        end
        if not self.spec and not self.done and info.tokens < self.max_tokens then
          self:make_room(#batch)
          local logits, err = self.ctx:decode(batch, { seq = self.seq })
          if not logits then
            self.done = true
            info.stop_reason = "length"
            info.context_full = true
            info.error = err
          end
          self.logits = logits
        end
        self.pending = self.pending .. piece
        local out = self:release(false)
        if self.stopped then self.done = true end
        if out ~= "" then return out end
      end
    end
  end
end

-- model:stream(prompt, opts) -> iterator of pieces (each call: piece, info)
function _M.stream(model, prompt, opts)
  local g = _M.start(model, prompt, opts, "stream")
  return function()
    local piece = g:next()
    if piece == nil then
      if g.failed then error(g.failed, 2) end
      return nil
    end
    return piece, g.info
  end, g
end

-- model:generate(prompt, opts) -> text, info | nil, err, info (the prompt does not fit the
-- context, or no token can be sampled: info.stop_reason = "error")
function _M.generate(model, prompt, opts)
  local g = _M.start(model, prompt, opts)
  local parts = {}
  while true do
    local piece = g:next()
    if piece == nil then break end
    parts[#parts + 1] = piece
  end
  if g.failed then return nil, g.failed, g.info end
  return table.concat(parts), g.info
end

return _M
