-- moonlm.resty.thread: the functions OpenResty runs with ngx.run_worker_thread, in pooled
-- Lua VMs on nginx's thread pool, away from the event loop (see moonlm/resty.lua for the
-- whole design). Only strings, numbers, booleans and tables cross between VMs, so models and
-- contexts are reached by integer handle through the process-wide registry.
--
-- A pooled VM may serve any call: nothing here may depend on which VM ran the previous step.
-- What is cached per VM (attached contexts, samplers) is checked against the state the
-- caller passes in, and rebuilt when it does not match.
local lm = require "moonlm"
local core = require "moonlm.core"
local sampler = require "moonlm.sampler"

local clock, floor, min = core.clock, math.floor, math.min
local ipairs, pcall, tostring = ipairs, pcall, tostring

local _M = {}

local contexts = {} -- context handle -> { ctx, eog = { [id] = true } }
local models = {}   -- model handle -> model
local samplers = {} -- request id -> { s = sampler, rng = counted rng, m = matcher, gh, acc }
local grammars = {} -- grammar handle -> grammar, attached for the slots of the last call
local compiled, compiled_keys = {}, {} -- the grammars this VM compiled last (key -> grammar)
local KEEP_COMPILED = 32

local function attach(handle)
  local c = contexts[handle]
  if c then return c end
  local ctx, err = lm.attach_context(handle)
  if not ctx then error(err, 0) end
  local eog = {}
  for _, id in ipairs(ctx.model.vocab.eog or {}) do eog[id] = true end
  c = { ctx = ctx, eog = eog }
  contexts[handle] = c
  return c
end

-- An rng that counts its draws, so a sampler can be rebuilt in another VM at the same point
-- of its stream: reseed, then skip `draws` numbers.
local function counted_rng(seed)
  local r = core.rng(seed)
  local box = { n = 0 }
  function box.uniform()
    box.n = box.n + 1
    return r:uniform()
  end
  function box.seed(_, s)
    r:seed(s)
    box.n = 0
  end
  return box
end

local function grammar_of(handle, gcache)
  local g = gcache[handle] or grammars[handle]
  if not g then
    local err
    g, err = lm.grammar.attach(handle)
    if not g then error(err, 0) end
  end
  gcache[handle] = g
  return g
end

-- The sampler of slot `sl` at the state the caller recorded (draws, mu, and the tokens its
-- grammar has accepted: a matcher that saw other tokens, or none, is made again and fed
-- them).
local function sampler_for(sl, cache, gcache, model)
  local e = samplers[sl.id]
  if not e or e.rng.n ~= sl.draws then
    local s = sampler.new(sl.sampling)
    local rng = counted_rng(floor(sl.sampling.seed))
    for _ = 1, sl.draws do rng.uniform() end
    s.rng = rng
    e = { s = s, rng = rng }
  end
  if sl.mu then e.s.mu = sl.mu end
  if sl.grammar then
    local accepted = sl.accepted or {}
    if not e.m or e.gh ~= sl.grammar or e.acc ~= #accepted then
      local m = grammar_of(sl.grammar, gcache):matcher(model, sl.mopts)
      for _, id in ipairs(accepted) do
        if not m:accept(id) then error(("the grammar refuses token %d it allowed before"):format(id), 0) end
      end
      e.m, e.gh, e.acc = m, sl.grammar, #accepted
      e.s:set_grammar(m)
    else
      grammar_of(sl.grammar, gcache) -- keep it attached
    end
  end
  cache[sl.id] = e
  return e
end

-- compile(kind, text) -> the handle of the grammar | nil, err. kind "gbnf": GBNF text;
-- "schema": a JSON Schema as JSON text, with generation's whitespace (moonlm.gbnf). The
-- grammar stays referenced here (the last KEEP_COMPILED of this VM) until the caller has
-- attached it; compiling runs here because a hostile schema may take the compiler's whole
-- time budget, which the event loop must not wait out.
function _M.compile(kind, text)
  local ok, g, err = pcall(function()
    if kind == "schema" then return require("moonlm.gbnf").json_schema(text) end
    return lm.grammar.gbnf(text)
  end)
  if not ok then return nil, tostring(g) end
  if not g then return nil, tostring(err) end
  local key = kind .. "\0" .. text
  if not compiled[key] then
    compiled_keys[#compiled_keys + 1] = key
    if #compiled_keys > KEEP_COMPILED then compiled[table.remove(compiled_keys, 1)] = nil end
  end
  compiled[key] = g
  return g.handle
end

-- forced(e, model, room) -> the tokens of the text the grammar forces now (its only
-- continuation), accepted by the matcher, at most `room` of them: generate.lua's
-- fast-forward. The last one is left out unless the grammar ends after it (the model may
-- continue that text with a longer token).
local function forced(e, model, room)
  local m = e.m
  local text = m:forced()
  if text == "" or room <= 0 then return {} end
  local ids = model:tokenize(text, { bos = false, eos = false, prefix = false })
  local n = 0
  while n < #ids and e.s:accept(ids[n + 1]) do n = n + 1 end
  if n > 0 and not (n == #ids and m:is_done()) then
    m:rollback(1)
    n = n - 1
  end
  if n > room then
    m:rollback(n - room)
    n = room
  end
  for i = #ids, n + 1, -1 do ids[i] = nil end
  return ids
end

-- Lower the priority of the calling thread (on Linux nice is per thread, and the OpenMP
-- threads it starts later inherit it), so the event loop wins the CPU when both want it.
local set_nice
do
  local ok, ffi = pcall(require, "ffi")
  if ok and ffi.os == "Linux" then
    pcall(ffi.cdef, "int setpriority(int which, unsigned int who, int prio);")
    set_nice = function(n) ffi.C.setpriority(0, 0, n) end
  end
end

-- step(ctx_handle, slots, limits) -> results
-- slots: array of { id, seq, feed = {ids to decode first}, max_new (tokens it may still
--   generate), sampling (moonlm.sampler options, seed set), draws, mu, hist (ids for the
--   penalties, or nil), ignore_eos, first (no token generated yet), grammar (a grammar handle,
--   or nil), mopts (its matcher options: lazy, triggers, trigger_tokens), accepted (the ids
--   generated so far, which its matcher has accepted), logprobs (nil, or the number of
--   alternatives to report per token) }
-- limits: { max_steps, budget (seconds), chunk (prompt tokens per slot per step), nice (the
--   priority of decoding threads relative to the event loop's) }
-- Each step decodes, in one forward pass (ctx:decode_batch), the next prompt chunk of slots
-- still prefilling and the last sampled token of the others, then samples every slot whose
-- logits came back. Returns per slot { ids (new tokens), fed (feed tokens consumed),
-- done ("eos" | "length" | "grammar" | "error" | nil), draws, mu, pos, err, lps (with
-- logprobs: per new id { logprob, ids = { alternatives }, lps = { their logprobs } }),
-- tail (the new ids the cache does not hold yet: the next call's feed) },
-- and in forwards and rows the number of forward passes and of sequence entries in them.
local function step(handle, slots, limits)
  if set_nice and (limits.nice or 0) ~= 0 then set_nice(limits.nice) end
  local c = attach(handle)
  local ctx, eog = c.ctx, c.eog
  local t0 = clock()
  local max_steps, budget, chunk = limits.max_steps or 16, limits.budget or 0.02, limits.chunk or 256
  local cache, gcache, out, state = {}, {}, {}, {}
  for i, sl in ipairs(slots) do
    out[i] = { ids = {}, fed = 0, draws = sl.draws, lps = sl.logprobs and {} or nil }
    local ok, e = pcall(sampler_for, sl, cache, gcache, ctx.model)
    state[i] = { at = 1, e = ok and e or nil, hist = sl.hist or {}, ng = 0 }
    if not ok then
      out[i].done, out[i].err = "error", tostring(e)
    elseif #sl.feed == 0 or sl.max_new <= 0 then
      out[i].done = "length"
    end
  end
  samplers, grammars = cache, gcache -- forget requests that are no longer running
  local early, forwards, rows = false, 0, 0
  for _ = 1, max_steps do
    local entries, who = {}, {}
    for i, sl in ipairs(slots) do
      local r, st = out[i], state[i]
      if not r.done then
        local ids, last
        if st.at <= #sl.feed then
          local n = min(#sl.feed - st.at + 1, chunk)
          ids = {}
          for k = 1, n do ids[k] = sl.feed[st.at + k - 1] end
          st.at = st.at + n
          r.fed = r.fed + n
          last = st.at > #sl.feed
        else
          ids, last = st.tail, true
        end
        entries[#entries + 1] = { ids, seq = sl.seq, logits = last and "last" or "none" }
        who[#who + 1] = i
      end
    end
    if #entries == 0 then break end
    forwards, rows = forwards + 1, rows + #entries
    local logits, err = ctx:decode_batch(entries)
    if not logits then
      for _, i in ipairs(who) do
        out[i].done, out[i].err = "error", err
      end
      break
    end
    for k, i in ipairs(who) do
      local l = logits[k]
      if l then
        local sl, r, st = slots[i], out[i], state[i]
        local e = st.e
        local ok, id, serr = pcall(e.s.sample, e.s, l, st.hist)
        if ok and not id then ok, id = false, serr end -- no token has finite probability (#11)
        local lp, top
        if ok and sl.logprobs and not eog[id] then lp, top = e.s:logprobs(l, st.hist, id, sl.logprobs) end
        l:close()
        if not ok then -- the request fails, clearly
          r.done, r.err = "error", tostring(id)
        elseif eog[id] and not sl.ignore_eos then
          r.done = "eos"
        elseif e.m and not e.s:accept(id) then
          r.done, r.err = "error", ("the grammar refused token %d, which its mask allowed"):format(id)
        else
          if e.m then e.acc = e.acc + 1 end
          r.ids[#r.ids + 1] = id
          st.hist[#st.hist + 1] = id
          if lp then
            local ids, lps = {}, {}
            for k, t in ipairs(top) do ids[k], lps[k] = t.id, t.logprob end
            r.lps[#r.ids] = { lp, ids = ids, lps = lps }
          end
          st.tail = { id }
          -- the tokens the grammar forces come without a sampling step (nor a forward pass)
          -- of their own: decoded together with this one (not with logprobs, which are
          -- per sampled token)
          if e.m and not sl.logprobs and not e.m:is_done() then
            for _, f in ipairs(forced(e, ctx.model, sl.max_new - #r.ids)) do
              e.acc = e.acc + 1
              r.ids[#r.ids + 1] = f
              st.hist[#st.hist + 1] = f
              st.tail[#st.tail + 1] = f
            end
          end
          if e.m and e.m:is_done() then
            r.done = "grammar"
          elseif #r.ids >= sl.max_new then
            r.done = "length"
          end
          if sl.first and #r.ids == 1 then early = true end
        end
      end
    end
    -- return as soon as a new request has its first token (time to first token), or when
    -- the time is up
    if early or clock() - t0 >= budget then break end
  end
  for i, sl in ipairs(slots) do
    local r, e = out[i], state[i].e
    if e then r.draws, r.mu = e.rng.n, e.s.mu end
    r.pos = ctx:pos(sl.seq)
    if not r.done then r.tail = state[i].tail end
  end
  out.forwards, out.rows = forwards, rows
  return out
end

function _M.step(handle, slots, limits)
  local ok, res = pcall(step, handle, slots, limits)
  if not ok then return nil, tostring(res) end
  return res
end

-- warm(ctx_handle) -> true | nil, err: one decode on sequence 0, then forgotten, so that
-- what the core prepares on first use (packed weights) is ready before the first request.
function _M.warm(handle, nice)
  if set_nice and (nice or 0) ~= 0 then set_nice(nice) end
  local ok, err = pcall(function()
    local c = attach(handle)
    local bos = c.ctx.model.vocab.bos
    local l, derr = c.ctx:decode({ bos or 0 }, { seq = 0 })
    if not l then error(derr, 0) end
    l:close()
    c.ctx:clear(0)
  end)
  if not ok then return nil, tostring(err) end
  return true
end

-- embed(model_handle, texts, opts) -> rows (arrays of numbers) | nil, err
-- Each pooled VM keeps its own embedding context (on its model object), so two calls in
-- two threads never share one.
function _M.embed(handle, texts, opts)
  if set_nice and (opts.nice or 0) ~= 0 then set_nice(opts.nice) end
  local ok, res, err = pcall(function()
    local m = models[handle]
    if not m then
      local e
      m, e = lm.attach(handle)
      if not m then error(e, 0) end
      models[handle] = m
    end
    local t, eerr = m:embed(texts, { pooling = opts.pooling, normalize = opts.normalize }) -- nice is ours
    if not t then return nil, eerr end
    local rows = t:totable()
    t:close()
    return rows
  end)
  if not ok then return nil, tostring(res) end
  return res, err
end

return _M
