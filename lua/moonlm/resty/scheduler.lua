-- moonlm.resty.scheduler: continuous batching for one nginx worker (see moonlm/resty.lua for
-- the design). One context with `slots` sequences; a bounded queue of requests waiting for a
-- slot; a driver (an ngx.timer) that, while any slot is busy, admits waiting requests, runs
-- one stepping call in the thread pool for all busy slots together, and hands each request
-- its new text. Requests wait on their own ngx.semaphore.
--
-- Everything here runs in the nginx worker's Lua VM, on the event loop, and never blocks:
-- the only slow thing, decoding, happens inside ngx.run_worker_thread. Only the driver calls
-- into the thread pool with this context, one call at a time, so the context is never busy
-- when the driver truncates a slot between calls.
local semaphore = require "ngx.semaphore"
local split_stop = require("moonlm.generate").split_stop

local ngx = ngx
local now, timer_at, run_worker_thread = ngx.now, ngx.timer.at, ngx.run_worker_thread
local log, ERR = ngx.log, ngx.ERR
local ipairs, min, concat = ipairs, math.min, table.concat
local remove = table.remove

local _M = {}
local Sched = {}
Sched.__index = Sched

-- new{ model, ctx, slots, n_ctx (per slot), max_queue, pool, limits, lock } -> scheduler
-- lock: an ngx.semaphore with one resource shared by the schedulers of several models in
-- one worker, so that only one of them computes at a time (each call uses every core).
function _M.new(o)
  local self = setmetatable({
    model = o.model, ctx = o.ctx, pool = o.pool, max_queue = o.max_queue, n_ctx = o.n_ctx,
    limits = o.limits, lock = o.lock, slots = {}, queue = {}, running = false,
    stats = { calls = 0, forwards = 0, rows = 0, tokens = 0, requests = 0, rejected = 0, copies = 0 },
    kv_used = 0, kv_cells = o.n_ctx * o.slots, occupancy = 0,
  }, Sched)
  for i = 1, o.slots do
    self.slots[i] = { seq = i - 1, tokens = {}, used = 0 }
  end
  return self
end

-- full() -> whether a new request would have to wait beyond the queue's limit: requests
-- that arrive together all enter the queue, and the driver moves them into free slots at
-- its next step, so those that free slots will take do not count as waiting.
-- full(n) -> whether n more requests (a request asking for n choices) would not fit.
function Sched:full(n)
  local free = 0
  for _, s in ipairs(self.slots) do
    if not s.req then free = free + 1 end
  end
  return #self.queue + (n or 1) - 1 >= self.max_queue + free
end

function Sched:busy()
  local n = 0
  for _, s in ipairs(self.slots) do
    if s.req then n = n + 1 end
  end
  return n, #self.slots, #self.queue
end

---------------------------------------------------------------------------------------
-- Text: stop strings matched across token boundaries, never split inside a UTF-8 character

-- Move the text that is safe to send from req.pending to req.outbox: one piece per call, so
-- one per token (a token whose text is held back, part of a UTF-8 character or maybe the
-- start of a stop string, joins the piece of the token that completes it).
-- req.outbox_upto[i]: how many generated tokens the pieces up to outbox[i] cover.
local function release(req, final)
  local out, held, stopped = split_stop(req.pending, req.stops, final)
  req.pending = held
  if stopped then req.stopped = true end
  if out ~= "" then
    req.outbox[#req.outbox + 1] = out
    req.outbox_upto[#req.outbox] = #req.generated
  end
end

local function finish(req, reason, err)
  if req.done then return end
  if not req.stopped and req.decoder then
    req.pending = req.pending .. req.decoder:flush()
    release(req, true)
  end
  req.done = true
  req.finish_reason = req.stopped and "stop" or reason
  if req.outbox_upto and #req.outbox > 0 then
    req.outbox_upto[#req.outbox] = #req.generated -- the last piece carries the tokens held back
  end
  req.error = err
  req.decoder = nil
  req.sema:post(1)
end

-- New token ids for a request: through its streaming decoder and the stop strings.
-- lps: their logprobs (thread.step's), kept in req.logprobs beside req.generated.
-- req.preserved: { [id] = text } of control tokens that the reply must show (tool-call
-- markup), which the decoder would hide.
local function accept(req, ids, lps)
  if #ids > 0 then
    local t = now()
    req.t_first = req.t_first or t
    req.t_last = t
  end
  for k, id in ipairs(ids) do
    if req.stopped then break end
    req.completion_tokens = req.completion_tokens + 1
    req.generated[#req.generated + 1] = id
    if req.logprobs then req.logprobs[#req.generated] = lps and lps[k] or false end
    local keep = req.preserved and req.preserved[id]
    if keep then
      req.pending = req.pending .. req.decoder:flush() .. keep
    else
      req.pending = req.pending .. req.decoder:push(id)
    end
    release(req, false)
  end
end

---------------------------------------------------------------------------------------
-- Requests

-- submit(req) -> true | nil, status, message
-- req: { prompt = ids, max_tokens, sampling = sampler options with a seed, stops = {...},
--   ignore_eos, starts (the output starts the text), penalties (send history) }
-- no_cache (prefill the whole prompt: no reuse of cached tokens), grammar (a grammar handle:
-- the caller keeps the grammar alive until the request is done) with mopts (matcher
-- options), logprobs (the number of alternatives per token, or nil), preserved,
-- leader (n > 1: the request of the first choice, whose cache this one copies once it is
-- prefilled), sema (a semaphore shared by the choices of one request)
-- Adds: sema, outbox (pieces of text not yet sent, one per token), done, finish_reason,
-- completion_tokens, cached_tokens, error, t_first and t_last (ngx.now() when the first and
-- the last token came back from the thread).
function Sched:submit(req)
  if #req.prompt + 1 > self.n_ctx then
    return nil, 400, ("this model's context per request is %d tokens, and the prompt has %d"):format(self.n_ctx, #req.prompt)
  end
  if self:full() then
    self.stats.rejected = self.stats.rejected + 1
    return nil, 503, ("the server is busy (%d requests wait for a slot, the limit); retry later"):format(self.max_queue)
  end
  req.max_new = min(req.max_tokens, self.n_ctx - #req.prompt)
  req.sema = req.sema or semaphore.new()
  req.outbox, req.outbox_upto, req.pending, req.generated = {}, {}, "", {}
  if req.logprobs_n then req.logprobs = {} end
  req.completion_tokens, req.cached_tokens, req.draws = 0, 0, 0
  req.decoder = self.model:decoder { strip_space = req.starts }
  self.queue[#self.queue + 1] = req
  self.stats.requests = self.stats.requests + 1
  local ok, err = self:start()
  if not ok then
    remove(self.queue)
    req.decoder = nil
    return nil, 503, "cannot start the scheduler: " .. tostring(err)
  end
  return true
end

-- The client went away: stop generating for it.
function Sched:cancel(req)
  req.cancelled = true
  for i, q in ipairs(self.queue) do
    if q == req then
      remove(self.queue, i)
      finish(req, "abort")
      return
    end
  end
end

-- wait_all(reqs) -> for each request { pieces, upto, done (true once, when it has just
-- ended) }, all done | nil, err. The requests share one semaphore (the choices of one
-- request): it returns as soon as one of them has news.
function _M.wait_all(reqs, timeout)
  while true do
    local news, all = false, true
    for _, r in ipairs(reqs) do
      if #r.outbox > 0 or (r.done and not r.reported) then news = true end
      if not r.done then all = false end
    end
    if news or all then break end
    local ok, err = reqs[1].sema:wait(timeout or 60)
    if not ok and err ~= "timeout" then return nil, err end
  end
  local out, all = {}, true
  for i, r in ipairs(reqs) do
    out[i] = { pieces = r.outbox, upto = r.outbox_upto, done = r.done and not r.reported }
    if r.done then r.reported = true else all = false end
    r.outbox, r.outbox_upto = {}, {}
  end
  return out, all
end

-- The text of a list of pieces.
_M.text = concat

---------------------------------------------------------------------------------------
-- The driver

local function common_prefix(a, b)
  local n, m = 0, min(#a, #b)
  while n < m and a[n + 1] == b[n + 1] do n = n + 1 end
  return n
end

-- The free slot for a prompt, and where its cache comes from: the free slot whose cache
-- shares the longest prefix with the prompt; when no free cache shares a useful part (16
-- tokens, or half the prompt), the one whose cache is worth least (empty, else least
-- recently used). When a busy slot holds a longer prefix, the chosen slot gets a copy of
-- its cache (the cells are shared, not duplicated) -> slot, tokens kept, source slot or nil.
local function worth(s) return #s.tokens == 0 and -1 or s.used end

local function useful(n, prompt) return n >= 16 or n * 2 >= #prompt end

local function pick(slots, prompt, no_cache)
  local best, best_n, spare, busy, busy_n
  for _, s in ipairs(slots) do
    local n = no_cache and 0 or common_prefix(s.tokens, prompt)
    if not s.req then
      if not best or n > best_n then best, best_n = s, n end
      if not spare or worth(s) < worth(spare) then spare = s end
    elseif n > 0 and (not busy or n > busy_n) then
      busy, busy_n = s, n
    end
  end
  if not best then return nil end
  if not useful(best_n, prompt) then best, best_n = spare, no_cache and 0 or common_prefix(spare.tokens, prompt) end
  if busy and busy_n > best_n and useful(busy_n, prompt) then return spare, busy_n, busy end
  return best, best_n
end

-- Free the slots whose request finished; give waiting requests a slot, keeping the part
-- of its cache that their prompt starts with.
function Sched:admit()
  for _, s in ipairs(self.slots) do
    local r = s.req
    if r and (r.done or r.cancelled or r.stopped) then
      if not r.done then finish(r, r.cancelled and "abort" or "stop") end
      s.req, s.used = nil, now()
    end
  end
  while #self.queue > 0 do
    local req = self.queue[1]
    local lead = req.leader
    -- a later choice of a request waits for the first one's prompt, to share its cache
    if lead and not (lead.t_first or lead.done or lead.cancelled) then return end
    local best, best_n, from = pick(self.slots, req.prompt, req.no_cache and not lead)
    if not best then return end
    remove(self.queue, 1)
    local keep = min(best_n, #req.prompt - 1) -- decode at least one token for logits
    if from then
      self.ctx:copy(from.seq, best.seq)
      best.tokens = {}
      for i = 1, keep do best.tokens[i] = from.tokens[i] end
      self.stats.copies = self.stats.copies + 1
    end
    keep = self.ctx:truncate(best.seq, keep) -- a sliding-window cache may keep less
    for i = #best.tokens, keep + 1, -1 do best.tokens[i] = nil end
    req.feed = {}
    for i = keep + 1, #req.prompt do req.feed[#req.feed + 1] = req.prompt[i] end
    req.cached_tokens = keep
    best.req = req
  end
end

function Sched:batch()
  local args, slots = {}, {}
  for _, s in ipairs(self.slots) do
    local r = s.req
    if r then
      local hist
      if r.penalties then -- the last penalty_last_n ids of prompt and reply
        hist = {}
        local p, g, n = r.prompt, r.generated, r.sampling.penalty_last_n or 64
        for i = math.max(1, #p + #g - n + 1), #p + #g do hist[#hist + 1] = i <= #p and p[i] or g[i - #p] end
      end
      args[#args + 1] = { id = r.id, seq = s.seq, feed = r.feed, max_new = r.max_new - #r.generated,
                          sampling = r.sampling, draws = r.draws, mu = r.mu, hist = hist,
                          ignore_eos = r.ignore_eos, first = #r.generated == 0, grammar = r.grammar,
                          mopts = r.mopts, accepted = r.grammar and r.generated or nil, logprobs = r.logprobs_n }
      slots[#slots + 1] = s
    end
  end
  return args, slots
end

-- One step's results: what each slot's cache now holds, and the new text.
function Sched:distribute(slots, res)
  self.stats.forwards = self.stats.forwards + (res.forwards or 0)
  self.stats.rows = self.stats.rows + (res.rows or 0)
  if (res.forwards or 0) > 0 then self.occupancy = res.rows / res.forwards / #self.slots end
  for i, s in ipairs(slots) do
    local r, req = res[i], s.req
    -- the cache now also holds the fed tokens, then the sampled ones up to r.pos
    local tokens = s.tokens
    for k = 1, r.fed do
      if #tokens >= r.pos then break end
      tokens[#tokens + 1] = req.feed[k]
    end
    for _, id in ipairs(r.ids) do
      if #tokens >= r.pos then break end
      tokens[#tokens + 1] = id
    end
    if #tokens ~= r.pos and not r.done then -- never continue on a cache we cannot account for
      log(ERR, "moonlm: slot ", s.seq, " holds ", r.pos, " tokens, ", #tokens, " expected")
      r.done, r.err = "error", "the cache is out of step"
    end
    local rest = {}
    for k = r.fed + 1, #req.feed do rest[#rest + 1] = req.feed[k] end
    req.draws, req.mu = r.draws, r.mu
    self.stats.tokens = self.stats.tokens + #r.ids
    accept(req, r.ids, r.lps)
    if r.done then
      finish(req, (r.done == "eos" or r.done == "grammar") and "stop" or r.done == "error" and "error" or "length", r.err)
    elseif req.stopped then
      finish(req, "stop")
    else
      if #rest == 0 and #r.ids > 0 then rest = r.tail or { r.ids[#r.ids] } end
      req.feed = rest
      if #req.outbox > 0 then req.sema:post(1) end
    end
    if #tokens ~= r.pos then
      self.ctx:clear(s.seq)
      s.tokens = {}
    end
  end
end

-- A failed stepping call: fail its requests and forget their caches.
function Sched:fail(slots, err)
  log(ERR, "moonlm: step failed: ", err)
  for _, s in ipairs(slots) do
    finish(s.req, "error", err)
    self.ctx:clear(s.seq)
    s.tokens = {}
  end
end

-- Start the driver now: it warms the context up before the first request (init calls it).
function Sched:start()
  if self.running then return true end
  local ok, err = timer_at(0, function(premature)
    if not premature then self:drive() end
  end)
  if ok then self.running = true end
  return ok, err
end

function Sched:drive()
  local ok, err = pcall(function()
    if not self.warm then
      local locked = self.lock and self.lock:wait(600)
      local called, res, werr = run_worker_thread(self.pool, "moonlm.resty.thread", "warm", self.ctx.handle, self.limits.nice)
      if locked then self.lock:post(1) end
      if not (called and res) then log(ERR, "moonlm: warm-up: ", tostring(called and werr or res)) end
      self.warm = true
    end
    while true do
      self:admit()
      local args, slots = self:batch()
      if #args == 0 then break end
      if self.lock then
        local locked, lerr = self.lock:wait(600)
        if not locked then error("waiting for the other models' decoding: " .. tostring(lerr), 0) end
      end
      local called, res, serr = run_worker_thread(self.pool, "moonlm.resty.thread", "step", self.ctx.handle, args, self.limits)
      if self.lock then self.lock:post(1) end
      self.stats.calls = self.stats.calls + 1
      if called and res then
        self:distribute(slots, res)
      else
        self:fail(slots, called and serr or res)
      end
      self.kv_used = self.ctx:used()
    end
  end)
  self.running = false
  if not ok then
    log(ERR, "moonlm: scheduler: ", err)
    for _, s in ipairs(self.slots) do
      if s.req then
        finish(s.req, "error", tostring(err))
        s.req = nil
        self.ctx:clear(s.seq)
        s.tokens = {}
      end
    end
    if #self.queue > 0 then self:start() end -- start over for the requests still waiting
  end
end

return _M
