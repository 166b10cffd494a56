-- moonlm.resty: an OpenAI-compatible HTTP endpoint inside nginx with lua-nginx-module
-- (OpenResty, or Debian's nginx + libnginx-mod-http-lua). examples/openresty/nginx.conf is
-- a complete configuration.
--
--   init_worker_by_lua_block { require("moonlm.resty").init { model = "/path/model.gguf" } }
--   location / { content_by_lua_block { require("moonlm.resty").serve() }
--                log_by_lua_block { require("moonlm.resty").log() } }
--
-- Endpoints: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings,
-- GET /v1/models, GET /v1/models/{id}, POST /tokenize, POST /detokenize, GET /props,
-- GET /health, GET /metrics (Prometheus), POST /admin/drain. Generation honours structured
-- output (response_format, grammar, json_schema), tools (tool_calls in replies and streamed
-- deltas), logprobs and n > 1 (see "Structured output in the server" in docs/DESIGN.md and
-- examples/openresty/README.md). Errors are OpenAI-style
-- { "error": { "message", "type", "param", "code" } }: 400 (bad JSON or parameters, a field
-- the server cannot honour, prompt too long), 401 (API key), 403, 404 (unknown model or
-- URL), 405, 413 (from nginx.conf), 429 (per-key limits, with Retry-After), 503 (queue
-- full, draining, loading; with Retry-After).
--
-- Design
--
--   * Decoding never runs on the event loop. It runs in ngx.run_worker_thread: nginx posts
--     a call (module moonlm.resty.thread, function step) to its thread pool, where a pooled
--     Lua VM attaches to the model and context by integer handle (the registry is
--     process-wide), and the calling coroutine yields until the call returns.
--   * One scheduler per model per nginx worker (moonlm.resty.scheduler): one context with
--     `slots` sequences of `n_ctx` tokens each, and a queue of at most `max_queue` requests
--     waiting for a slot (beyond that: 503). A driver, an ngx.timer that lives while any
--     request is running, loops: admit waiting requests into free slots, then make ONE
--     thread call that steps every busy slot together: each step is one ctx:decode_batch
--     forward pass over the next prompt chunk of slots still prefilling and the last sampled
--     token of the others (continuous batching: requests join and leave between steps),
--     followed by sampling. A call runs up to `max_steps` steps or `step_ms` milliseconds
--     (and ends right after a new request's first token, for time to first token), then
--     returns the new token ids of every slot; the driver turns them into text, one piece
--     per token, and wakes the request coroutines (ngx.semaphore), which forward them as
--     server-sent events: one event per token (flush = "token") or per call ("call").
--     Only the driver touches the context, one call at a time, so it is never "in use by
--     another thread". Several models in one server share the thread pool and take turns:
--     one call at a time across models, since each call uses every core.
--   * Sampling runs in the thread, so a call can step many tokens. Sampler state must not
--     depend on which pooled VM runs the next call: each request has a seed (given or drawn
--     at arrival), and the driver keeps the number of random draws and the mirostat state
--     per request; a VM that has not seen the request (or saw it at another point) rebuilds
--     the sampler from the options, reseeds and skips that many draws. So a seed gives the
--     same text whatever the load and however the calls land on VMs.
--   * Text is made in the worker VM: a streaming decoder per request (whole UTF-8
--     characters only) and stop strings matched across token boundaries; a stop string or a
--     client that went away frees the slot at the next step.
--   * Prompt cache: a finished request leaves its tokens in its slot. A new request gets the
--     free slot whose cache shares the longest prefix with its prompt, or, when a busy slot
--     shares a longer one, a copy of that slot's cache (ctx:copy shares the cells); the
--     cache is cut back to the prefix (ctx:truncate) and only the rest is prefilled
--     (usage.prompt_tokens_details.cached_tokens). Across machines, balancer.conf hashes a
--     conversation id to keep a conversation on one node.
--   * The decoding threads lower their own priority (nice 10 by default): when a core is
--     shared, the event loop (answering /health, accepting, streaming) gets it at once.
--   * Embeddings run in the thread pool too (moonlm.resty.thread.embed); each pooled VM has
--     its own embedding context.
--   * Access (moonlm.resty.access): API keys, CORS, per-key limits. Observability
--     (moonlm.resty.metrics): /metrics, and one JSON access-log line per request from log().
--   * Drain (POST /admin/drain): new requests get 503 (a balancer sends them elsewhere),
--     /health says "draining", running requests finish, then the worker asks the nginx
--     master to quit gracefully (SIGQUIT), after `drain_grace` seconds without a request.
local lm = require "moonlm"
local json = require "moonlm.json"
local template = require "moonlm.template"
local scheduler = require "moonlm.resty.scheduler"
local access = require "moonlm.resty.access"
local metrics = require "moonlm.resty.metrics"
local request = require "moonlm.resty.request"
local toolstream = require "moonlm.resty.toolstream"
local tools = require "moonlm.tools"
local core = require "moonlm.core"
local semaphore = require "ngx.semaphore"

local ngx = ngx
local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local floor, huge, max = math.floor, math.huge, math.max
local concat, sort = table.concat, table.sort
local fail, opt = request.fail, request.opt

local _M = { _VERSION = lm._VERSION }

local C = { compact = true }
local null = json.null

local S -- this worker's server state (init)
local init_error

---------------------------------------------------------------------------------------
-- Set-up

local defaults = {
  slots = 4, max_queue = 16, max_tokens = 256, step_ms = 5, max_steps = 16, prefill_chunk = 256,
  thread_pool = "moonlm", nice = 10, flush = "token",
  open = { "/health", "/metrics" }, key_concurrency = 0, key_tokens_per_minute = 0,
  shared_dict = "moonlm", drain_grace = 1,
}

-- what init accepts; model-level ones may also be given per model in `models`
local model_options = { model = true, name = true, aliases = true, slots = true, n_ctx = true, max_queue = true,
                        kv_type = true, template = true, max_tokens = true }
local server_options = {
  models = true, default_model = true, threads = true, step_ms = true, max_steps = true, prefill_chunk = true,
  thread_pool = true, pooling = true, nice = true, flush = true, keys = true, open = true, key_concurrency = true,
  key_tokens_per_minute = true, cors_origins = true, cors_max_age = true, max_tokens_limit = true,
  shared_dict = true, node = true, node_header = true, drain_grace = true,
}

local function basename(path)
  return (path:gsub("^.*/", ""):gsub("%.gguf$", ""))
end

-- The models to serve: a list of { name, options }.
local function model_specs(o)
  local list = {}
  local function add(name, v, where)
    local e = type(v) == "table" and v or { model = v }
    if type(e.model) ~= "string" or e.model == "" then error(where .. ": no model path", 0) end
    for k in pairs(e) do
      if not model_options[k] then error(("%s: unknown option '%s'"):format(where, tostring(k)), 0) end
    end
    list[#list + 1] = { name = name or e.name or basename(e.model), o = e }
  end
  local m = o.models
  if m ~= nil then
    if o.model ~= nil then error("give either model or models, not both", 0) end
    if type(m) == "string" then -- "name=path,name=path" (MOONLM_MODELS)
      for item in m:gmatch("[^,]+") do
        local name, path = item:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
        if not name then name, path = nil, item:match("^%s*(.-)%s*$") end
        add(name, path, "models")
      end
    elseif type(m) == "table" then
      for i, v in ipairs(m) do add(nil, v, ("models[%d]"):format(i)) end
      local names = {}
      for k in pairs(m) do
        if type(k) == "string" then names[#names + 1] = k end
      end
      sort(names)
      for _, k in ipairs(names) do add(k, m[k], "models." .. k) end
    else
      error("models must be a table or a string 'name=path,...'", 0)
    end
    if #list == 0 then error("models is empty", 0) end
  else
    if type(o.model) ~= "string" or o.model == "" then error("no model: set init{ model = path }", 0) end
    local e = {}
    for k in pairs(model_options) do e[k] = o[k] end
    add(o.name, e, "init")
  end
  return list
end

local function load_model(spec, o, lock)
  local mo = {}
  for k, v in pairs(o) do mo[k] = v end
  for k, v in pairs(spec.o) do mo[k] = v end
  local model, lerr = lm.load(mo.model)
  if not model then error(spec.name .. ": " .. tostring(lerr), 0) end
  if model.vocab == false then error(spec.name .. ": " .. mo.model .. ": this model has no tokenizer", 0) end
  mo.n_ctx = mo.n_ctx or math.min(model.n_ctx_train or 2048, 2048)
  local ctx, cerr = model:context { n_ctx = mo.n_ctx * mo.slots, seqs = mo.slots, kv_type = mo.kv_type }
  if not ctx then error(spec.name .. ": " .. tostring(cerr), 0) end
  local src = mo.template
  if src and not src:find("{[%%{]") then
    src = template.builtin(src)
    if not src then error(("%s: no built-in chat template '%s'"):format(spec.name, mo.template), 0) end
  end
  if not src then
    src = model.meta["tokenizer.chat_template"]
    if type(src) ~= "string" or src == "" then src = template.builtin("chatml") end
  end
  local tmpl, terr = template.compile(src)
  if not tmpl then error(spec.name .. ": chat template: " .. terr, 0) end
  local bos, eos = model.vocab.bos, model.vocab.eos
  return {
    name = spec.name, o = mo, model = model, ctx = ctx, tmpl = tmpl, template_source = src, created = ngx.time(),
    fmt = tools.detect(src, function(t) return model:find_token(t) ~= nil end, model.meta), tokens = {},
    bos_text = bos and model:token(bos) or "", eos_text = eos and model:token(eos) or "",
    label = metrics.labels { model = spec.name },
    sched = scheduler.new {
      model = model, ctx = ctx, slots = mo.slots, n_ctx = mo.n_ctx, max_queue = mo.max_queue, pool = mo.thread_pool,
      lock = lock,
      limits = { max_steps = mo.max_steps, budget = mo.step_ms / 1000, chunk = mo.prefill_chunk, nice = mo.nice },
    },
  }
end

local function register_metrics(R)
  R:counter("moonlm_requests_total", "HTTP requests answered, by endpoint and status.")
  R:counter("moonlm_requests_rejected_total", "Requests refused before any work: 429 (per-key limits) and 503 (queue full, draining, loading), by reason.")
  R:counter("moonlm_prompt_tokens_total", "Prompt tokens of finished generation requests.")
  R:counter("moonlm_prompt_tokens_cached_total", "Prompt tokens found in the KV cache (not prefilled again).")
  R:counter("moonlm_generated_tokens_total", "Tokens generated.")
  R:counter("moonlm_embedding_tokens_total", "Tokens embedded.")
  R:histogram("moonlm_time_to_first_token_seconds", "From the request's arrival to its first generated token.",
              { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 })
  R:histogram("moonlm_time_per_output_token_seconds", "Per request: (last token - first token) / (generated tokens - 1).",
              { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 })
  R:histogram("moonlm_request_duration_seconds", "From arrival to the end of the answer, generation requests.",
              { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 })
  local function per_model(f)
    return function()
      local rows = {}
      for _, name in ipairs(S.order) do
        local M = S.models[name]
        rows[#rows + 1] = { M.label, f(M) }
      end
      return rows
    end
  end
  R:gauge("moonlm_slots", "Sequences decoded together (slots) per model.", per_model(function(M) return #M.sched.slots end))
  R:gauge("moonlm_slots_busy", "Slots running a request.", per_model(function(M) return (M.sched:busy()) end))
  R:gauge("moonlm_queue_length", "Requests waiting for a slot.", per_model(function(M) return #M.sched.queue end))
  R:gauge("moonlm_queue_limit", "Requests that may wait before 503.", per_model(function(M) return M.sched.max_queue end))
  R:gauge("moonlm_batch_occupancy_ratio", "Sequences per forward pass / slots, over the last decoding call.",
          per_model(function(M) return M.sched.occupancy end))
  R:counter_fn("moonlm_forward_passes_total", "Forward passes (this worker, since it started).",
               per_model(function(M) return M.sched.stats.forwards end))
  R:counter_fn("moonlm_batch_rows_total", "Sequence entries in those forward passes (rows / passes = mean batch).",
               per_model(function(M) return M.sched.stats.rows end))
  R:gauge("moonlm_kv_cache_tokens", "KV cache cells in use (tokens cached, shared prefixes once).",
          per_model(function(M) return M.sched.kv_used end))
  R:gauge("moonlm_kv_cache_capacity_tokens", "KV cache cells.", per_model(function(M) return M.sched.kv_cells end))
  R:gauge("moonlm_kv_cache_usage_ratio", "KV cache cells in use / cells.",
          per_model(function(M) return M.sched.kv_used / M.sched.kv_cells end))
  R:gauge("moonlm_draining", "1 while the server drains (POST /admin/drain).", function() return { { "", S.draining and 1 or 0 } } end)
  R:gauge("moonlm_info", "The server's version.", function() return { { metrics.labels { version = lm._VERSION }, 1 } } end)
end

-- init(opts), in init_worker_by_lua. opts (defaults in brackets):
--   model         path of the GGUF file; or models = { name = path | { model = path, slots,
--                 n_ctx, ... }, ... }, or a list of { name, model, ... }, or "name=path,...":
--                 several models in one server, chosen by the request's `model`; the first
--                 in the list (the first name in order for a map, or default_model) answers
--                 requests without one
--   name          model id in the API [file name without .gguf]; aliases {} other ids
--   slots [4]     requests decoded together; n_ctx per slot [min(n_ctx_train, 2048)]
--   max_queue [16] requests waiting for a slot before 503
--   max_tokens [256] default reply length; max_tokens_limit: the most a request may ask
--   (more is a 400); threads: kernel threads [all cores]
--   kv_type ["f16"]; template: chat template name or source [the model's, else chatml]
--   step_ms [5], max_steps [16], prefill_chunk [256]: the size of one thread call
--   flush ["token"]: one server-sent event per generated token, or "call": one per thread call
--   thread_pool ["moonlm"]: the name in nginx's thread_pool directive
--   nice [10]: decoding threads run at this nice value (Linux), so that the event loop gets
--   the CPU at once when it needs it while they compute; 0 leaves them as they are
--   pooling [the file's pooling_type, else "mean"] for /v1/embeddings: "mean", "cls" or
--   "last" (as llama-server, a file that says "none" or "rank" gets a 400 on /v1/embeddings
--   unless this overrides it); rows are L2-normalised, as OpenAI's and llama-server's
--   keys [MOONLM_API_KEYS]: API keys (see moonlm/resty/access.lua); none: no key needed
--   open [{"/health", "/metrics"}]: paths answered without a key
--   key_concurrency [0], key_tokens_per_minute [0]: per-key limits unless the key sets its
--   own (0: none)
--   cors_origins: "*" or a list of origins allowed to call from a browser; cors_max_age [600]
--   shared_dict ["moonlm"]: a lua_shared_dict for the metrics (optional)
--   drain_grace [1]: seconds a drained server stays idle before it quits
--   node: the X-Moonlm-Node header [address:port]; node_header = false leaves it out
-- A failure is logged and reported by /health and every endpoint (503).
function _M.init(opts)
  local ok, err = pcall(function()
    opts = opts or {}
    for k in pairs(opts) do
      if not server_options[k] and not model_options[k] then error(("unknown option '%s'"):format(tostring(k)), 0) end
    end
    local o = {}
    for k, v in pairs(defaults) do o[k] = v end
    for k, v in pairs(opts) do
      if not model_options[k] or k == "slots" or k == "max_queue" or k == "max_tokens" or k == "kv_type" or k == "n_ctx" then
        o[k] = v
      end
    end
    if o.flush ~= "token" and o.flush ~= "call" then error("flush must be \"token\" or \"call\"", 0) end
    if o.pooling ~= nil and o.pooling ~= "mean" and o.pooling ~= "cls" and o.pooling ~= "last" then
      error(("pooling must be \"mean\", \"cls\" or \"last\", got %s"):format(tostring(o.pooling)), 0)
    end
    if o.max_tokens_limit ~= nil and (type(o.max_tokens_limit) ~= "number" or o.max_tokens_limit < 1) then
      error("max_tokens_limit must be a number >= 1", 0)
    end
    local specs = model_specs(opts)
    local keys = opts.keys
    if keys == nil then keys = os.getenv("MOONLM_API_KEYS") end
    local list, kerr = access.load(keys)
    if not list then error(kerr, 0) end
    local cors, cerr = access.cors(o.cors_origins, o.cors_max_age)
    if cerr then error(cerr, 0) end
    if o.threads then lm.threads(o.threads) end
    local open = {}
    for _, p in ipairs(type(o.open) == "table" and o.open or {}) do open[p] = true end
    local dict = o.shared_dict and ngx.shared[o.shared_dict]
    S = {
      o = o, models = {}, order = {}, names = {}, counter = 0, active = 0, draining = false,
      keys = access.new(list, { concurrent = o.key_concurrency, tokens_per_minute = o.key_tokens_per_minute }),
      cors = cors, open = open, metrics = metrics.new { dict = dict },
    }
    local lock = #specs > 1 and semaphore.new(1) or nil
    for _, spec in ipairs(specs) do
      if S.models[spec.name] then error(("the model name '%s' is used twice"):format(spec.name), 0) end
      local M = load_model(spec, o, lock)
      S.models[spec.name] = M
      S.order[#S.order + 1] = spec.name
      S.names[spec.name] = M
      for _, a in ipairs(M.o.aliases or {}) do S.names[a] = M end
    end
    S.default = S.names[opts.default_model or S.order[1]]
    if not S.default then error(("default_model '%s' is not one of the models"):format(tostring(opts.default_model)), 0) end
    register_metrics(S.metrics)
  end)
  if not ok then
    init_error = tostring(err)
    S = nil
    ngx.log(ngx.ERR, "moonlm: ", init_error)
    return false, init_error
  end
  -- warm-up: /health says "loading" (503) until the first decode of every model is done
  for _, name in ipairs(S.order) do S.models[name].sched:start() end
  return true
end

---------------------------------------------------------------------------------------
-- HTTP helpers

local function obj(t, keys) return json.object(t, keys) end

local error_types = { [400] = "invalid_request_error", [401] = "invalid_request_error", [403] = "invalid_request_error",
                      [404] = "invalid_request_error", [405] = "invalid_request_error", [413] = "invalid_request_error",
                      [429] = "requests", [500] = "server_error", [503] = "server_error" }

local function send_json(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(json.encode(body, C))
end

local function send_error(status, message, param, code, etype)
  send_json(status, obj({ error = obj({ message = message, type = etype or error_types[status] or "server_error",
                                        param = param or null, code = code or null },
                                      { "message", "type", "param", "code" }) }))
end

local function next_id(prefix)
  S.counter = S.counter + 1
  return ("%s-%x%x%04d"):format(prefix, ngx.worker.pid(), floor(ngx.now() * 1000) % 0x100000, S.counter % 10000)
end

-- The request's bookkeeping, for the metrics and the access log (ngx.ctx.moonlm).
local function info() return ngx.ctx.moonlm end

local function reject(status, reason, message, code, retry, etype)
  S.metrics:inc("moonlm_requests_rejected_total", metrics.labels { status = status, reason = reason })
  fail(status, message, nil, code or reason, retry, etype)
end

-- The model a request names (or the default one); unknown ones are a 404.
local function model_of(b)
  local m = opt(b, "model")
  if m == nil then
    info().model = S.default.name
    return S.default
  end
  if type(m) ~= "string" then fail(400, "'model' must be a string", "model") end
  local M = S.names[m]
  if not M then
    fail(404, ("The model '%s' does not exist (this server has %s)"):format(m, concat(S.order, ", ")), "model",
         "model_not_found")
  end
  info().model = M.name
  return M
end

local function check_serving(M)
  if S.draining then
    reject(503, "draining", "the server is draining for a restart; retry on another node", "draining", 1)
  end
  if not M.sched.warm then reject(503, "loading", "the model is still loading; retry shortly", "loading", 1) end
end

-- Per-key limits: a request runs under its key's budget from here until it ends.
local function admit_key(tokens)
  local I = info()
  local ok, why = S.keys:acquire(I.key_entry, tokens)
  if not ok then
    reject(429, why.type == "tokens" and "tokens_per_minute" or "concurrency", why.message, "rate_limit_exceeded",
           why.retry_after, why.type)
  end
  I.holds_key = true
  local h = S.keys:headers(I.key_entry)
  for k, v in pairs(h or {}) do ngx.header[k] = v end
end

-- The tokens generated for a request, all its choices.
local function generated(I)
  local n = 0
  for _, r in ipairs(I.reqs or { I.req }) do n = n + (r.completion_tokens or 0) end
  return n
end

local function release_key()
  local I = info()
  if I and I.holds_key then
    I.holds_key = false
    S.keys:charge(I.key_entry, generated(I))
    S.keys:release(I.key_entry)
  end
end

---------------------------------------------------------------------------------------
-- Completions

local function usage(reqs, details)
  local lead, completion = reqs[1], 0
  for _, r in ipairs(reqs) do completion = completion + (r.completion_tokens or 0) end
  local u = obj({ prompt_tokens = #lead.prompt, completion_tokens = completion,
                  total_tokens = #lead.prompt + completion },
                { "prompt_tokens", "completion_tokens", "total_tokens" })
  if details then json.set(u, "prompt_tokens_details", obj({ cached_tokens = lead.cached_tokens })) end
  return u
end

local function event(v) return ngx.print("data: ", type(v) == "string" and v or json.encode(v, C), "\n\n") end

local function flush()
  local ok, err = ngx.flush(true)
  return ok, err
end

---------------------------------------------------------------------------------------
-- Grammars: compiled in the thread pool (a hostile schema may use the compiler's whole
-- time budget), attached here, and kept per worker by their text (the last 64), so a
-- schema that comes with every request is compiled once. A request holds its grammar
-- until it ends.

local grammar_cache, grammar_keys = {}, {}

local function compile_grammar(M, kind, text)
  local key = kind .. "\0" .. text
  local g = grammar_cache[key]
  if g then return g end
  local err
  for _ = 1, 2 do -- a second time if the compiling VM let it go before we attached it
    local called, handle, cerr = ngx.run_worker_thread(M.o.thread_pool, "moonlm.resty.thread", "compile", kind, text)
    if not called then fail(500, "cannot compile the grammar: " .. tostring(handle)) end
    if not handle then return nil, tostring(cerr) end
    g, err = lm.grammar.attach(handle)
    if g then break end
  end
  if not g then fail(500, "cannot attach the compiled grammar: " .. tostring(err)) end
  grammar_keys[#grammar_keys + 1] = key
  grammar_cache[key] = g
  if #grammar_keys > 64 then grammar_cache[table.remove(grammar_keys, 1)] = nil end
  return g
end

-- The grammar a request asks for (request.constraint), or a 400 that says why it cannot be.
local function constraint_grammar(M, c)
  local g, err = compile_grammar(M, c.kind, c.text)
  if g then return g end
  if c.kind == "schema" then
    fail(400, ("Invalid schema for %s: %s"):format(c.what, err), c.param, "invalid_json_schema")
  end
  fail(400, ("'grammar' is not a valid GBNF grammar: %s"):format(err), c.param, "invalid_grammar")
end

---------------------------------------------------------------------------------------
-- Logprobs

local function lp_number(x)
  if x == nil or x ~= x then return null end
  if x == -huge then return json.float(-9999) end -- OpenAI's value for "never": JSON has no -Infinity
  return json.float(x)
end

-- valid_text(s) -> s with every byte that is not part of a UTF-8 character as U+FFFD (a
-- token may hold part of a character; its bytes say which)
local function valid_text(s)
  if not json.utf8_error(s) then return s end
  local out, i = {}, 1
  while i <= #s do
    local bad = json.utf8_error(s:sub(i))
    if not bad then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, i + bad - 2) .. "\239\191\189"
    i = i + bad
  end
  return concat(out)
end

-- { text, bytes, chars } of a token, cached per model
local function token_of(M, id)
  local t = M.tokens[id]
  if not t then
    local piece = M.model:piece(id, true)
    local bytes = json.array {}
    for k = 1, #piece do bytes[k] = piece:byte(k) end
    local text = valid_text(piece)
    local chars = 0
    for _ in text:gmatch("[^\128-\191]") do chars = chars + 1 end
    t = { text = text, bytes = bytes, chars = chars }
    M.tokens[id] = t
  end
  return t
end

-- chat: { content = [ { token, logprob, bytes, top_logprobs = [ { token, logprob, bytes } ] } ],
-- refusal = null } for the generated tokens a..b of a choice
local function chat_logprobs(M, req, a, b)
  local content = json.array {}
  for k = a, b do
    local e, t = req.logprobs[k], token_of(M, req.generated[k])
    local top = json.array {}
    for j, id in ipairs(e and e.ids or {}) do
      local tt = token_of(M, id)
      top[j] = obj({ token = tt.text, logprob = lp_number(e.lps[j]), bytes = tt.bytes }, { "token", "logprob", "bytes" })
    end
    content[#content + 1] = obj({ token = t.text, logprob = lp_number(e and e[1]), bytes = t.bytes, top_logprobs = top },
                                { "token", "logprob", "bytes", "top_logprobs" })
  end
  return obj({ content = content, refusal = null }, { "content", "refusal" })
end

-- completions (the legacy shape): { tokens, token_logprobs, top_logprobs = [ { token: logprob }
-- (the alternatives and the chosen token) ], text_offset (characters from the start of the
-- completion) } for the generated tokens a..b
local function text_logprobs(M, req, a, b)
  local tokens, lps, tops, offsets = json.array {}, json.array {}, json.array {}, json.array {}
  for k = a, b do
    local e, t = req.logprobs[k], token_of(M, req.generated[k])
    tokens[#tokens + 1] = t.text
    lps[#lps + 1] = lp_number(e and e[1])
    local top, keys = {}, {}
    for j, id in ipairs(e and e.ids or {}) do
      local tt = token_of(M, id)
      if top[tt.text] == nil then
        top[tt.text] = lp_number(e.lps[j])
        keys[#keys + 1] = tt.text
      end
    end
    if top[t.text] == nil then
      top[t.text] = lp_number(e and e[1])
      keys[#keys + 1] = t.text
    end
    tops[#tops + 1] = obj(top, keys)
    offsets[#offsets + 1] = req.text_offset or 0
    req.text_offset = (req.text_offset or 0) + t.chars
  end
  return obj({ tokens = tokens, token_logprobs = lps, top_logprobs = tops, text_offset = offsets },
             { "tokens", "token_logprobs", "top_logprobs", "text_offset" })
end

---------------------------------------------------------------------------------------
-- Generation requests: n choices (scheduler requests) sharing the prompt

-- The scheduler requests of one API request. o: id, prompt, starts, param, grammar (an
-- attached grammar or nil), mopts, preserved.
local function make_reqs(p, o)
  local reqs, sema = {}, semaphore.new()
  for i = 1, p.n do
    local s = p.sampling
    if i > 1 then -- each choice draws its own numbers
      s = {}
      for k, v in pairs(p.sampling) do s[k] = v end
      s.seed = p.sampling.seed + i - 1
      if s.seed >= 2 ^ 53 then s.seed = s.seed - 2 ^ 53 end
    end
    reqs[i] = {
      id = i == 1 and o.id or ("%s/%d"):format(o.id, i), index = i - 1, prompt = o.prompt, starts = o.starts,
      param = o.param, sema = sema, leader = reqs[1], max_tokens = p.max_tokens, sampling = s, stops = p.stops,
      ignore_eos = p.ignore_eos, penalties = p.penalties, no_cache = p.no_cache, logprobs_n = p.logprobs,
      grammar = o.grammar and o.grammar.handle, grammar_ref = o.grammar, mopts = o.mopts, preserved = o.preserved,
    }
  end
  return reqs
end

local function cancel_all(M, reqs)
  for _, r in ipairs(reqs) do
    if not r.done then M.sched:cancel(r) end
  end
end

-- Run the requests through the scheduler; stream(...) -> whether the client is still there,
-- or final() -> the reply. Whatever goes wrong on the way, the requests stop generating.
local function complete(M, reqs, p, on_stream, final)
  local lead = reqs[1]
  local most = #M.sched.slots + M.sched.max_queue
  if #reqs > most then
    fail(400, ("'n' is %d; this server runs at most %d sequences of one request (slots and queue)"):format(#reqs, most), "n")
  end
  local I = info()
  I.id, I.stream, I.user = lead.id, p.stream, p.user
  ngx.header["X-Request-Id"] = lead.id
  check_serving(M)
  if #lead.prompt + 1 > M.o.n_ctx then
    fail(400, ("this model's context per request is %d tokens, and the prompt has %d"):format(M.o.n_ctx, #lead.prompt),
         lead.param, "context_length_exceeded")
  end
  if M.sched:full(#reqs) then
    M.sched.stats.rejected = M.sched.stats.rejected + 1
    reject(503, "busy", ("the server is busy (%d requests wait for a slot, the limit); retry later"):format(M.sched.max_queue),
           "server_busy", 1)
  end
  admit_key(#lead.prompt)
  for i, req in ipairs(reqs) do
    local ok, status, msg = M.sched:submit(req)
    if not ok then
      for k = 1, i - 1 do M.sched:cancel(reqs[k]) end
      if status == 503 then reject(503, "busy", msg, "server_busy", 1) end
      fail(status, msg, status == 400 and req.param or nil, status == 400 and "context_length_exceeded" or nil)
    end
  end
  I.req, I.reqs, I.M = lead, reqs, M
  S.active = S.active + 1
  I.running = true
  ngx.on_abort(function()
    cancel_all(M, reqs)
    _M.finish(499)
    ngx.exit(499)
  end)
  local ok, res = pcall(function()
    if p.stream then
      ngx.header["Content-Type"] = "text/event-stream"
      ngx.header["Cache-Control"] = "no-cache"
      ngx.header["X-Accel-Buffering"] = "no"
      return on_stream()
    end
    while true do
      local all = true
      for _, r in ipairs(reqs) do
        if not r.done then all = false end
      end
      if all then return true end
      local waited, err = lead.sema:wait(60)
      if not waited and err ~= "timeout" then return nil end
    end
  end)
  if not ok or not res then
    cancel_all(M, reqs)
    if not ok then error(res, 0) end
    return
  end
  if p.stream then return end
  for _, r in ipairs(reqs) do
    if r.finish_reason == "error" then fail(500, "generation failed: " .. tostring(r.error)) end
  end
  send_json(200, final())
end

-- The stream's end for an error of one choice (the others stop).
local function stream_error(M, reqs, r)
  cancel_all(M, reqs)
  event(obj({ error = obj({ message = "generation failed: " .. tostring(r.error), type = "server_error", param = null, code = null },
                          { "message", "type", "param", "code" }) }))
  event("[DONE]")
  flush()
  return true
end

-- Stream the choices as server-sent events: piece(r, text, upto) -> a chunk or nil for a
-- piece of choice r covering its generated tokens up to `upto`; ending(r) -> the chunks
-- that end choice r; usage_chunk() -> the last chunk (stream_options.include_usage).
local function stream_choices(M, reqs, p, heads, piece, ending, usage_chunk)
  for _, h in ipairs(heads or {}) do
    if not event(h) then return false end
  end
  if heads and not flush() then return false end
  local per_token = S.o.flush == "token"
  while true do
    local outs, all = scheduler.wait_all(reqs)
    if outs == nil then return false end
    local sent = false
    for i, o in ipairs(outs) do
      local r = reqs[i]
      if per_token then
        for k, text in ipairs(o.pieces) do
          local c = piece(r, text, o.upto[k])
          if c then
            if not event(c) then return false end
            sent = true
          end
        end
      elseif #o.pieces > 0 then
        local c = piece(r, scheduler.text(o.pieces), o.upto[#o.pieces])
        if c then
          if not event(c) then return false end
          sent = true
        end
      end
      if o.done then
        if r.finish_reason == "error" then return stream_error(M, reqs, r) end
        for _, c in ipairs(ending(r)) do
          if not event(c) then return false end
        end
        sent = true
      end
    end
    if sent and not flush() then return false end
    if all then break end
  end
  if p.include_usage then event(usage_chunk()) end
  event("[DONE]")
  flush()
  return true
end

-- The whole text of a request that is done.
local function collect(r)
  local text = concat(r.outbox)
  r.outbox, r.outbox_upto = {}, {}
  return text
end

local function chat_completions()
  local b = request.read_json()
  request.check_fields(b, "chat")
  local M = model_of(b)
  local p = request.generation(b, true, M, S.counter)
  p.logprobs = request.logprobs(b, true)
  local topts = request.tool_options(b)
  local use_tools = topts and topts.choice ~= "none"
  local c = request.constraint(b)
  if c and use_tools then
    fail(400, ("'%s' cannot be honoured together with 'tools' (the reply follows the tool-call format); "
               .. "set 'tool_choice' to \"none\" for a reply in your format"):format(c.param), c.param, "unsupported_parameter")
  end
  if (c or use_tools) and p.ignore_eos then
    fail(400, "'ignore_eos' cannot be honoured with a grammar or tools: the grammar decides where the reply ends", "ignore_eos",
         "unsupported_parameter")
  end
  local prompt, text = request.chat_prompt(b, M, topts)
  local id = next_id("chatcmpl")
  local o = { id = id, prompt = prompt, starts = false, param = "messages" }
  local fmt = M.fmt
  local open_think = tools.open_think(text, fmt)
  if c then
    o.grammar = constraint_grammar(M, c)
  elseif use_tools then
    local gtext, lazy = tools.grammar(fmt, topts.list, { choice = topts.choice, parallel = topts.parallel, open_think = open_think })
    local g, err
    if gtext then g, err = compile_grammar(M, "gbnf", gtext) else err = lazy end
    if g then
      o.grammar = g
      if lazy then
        o.mopts = { lazy = true, triggers = lazy.triggers, trigger_tokens = {} }
        for _, w in ipairs(lazy.triggers) do
          local tid = M.model:find_token(w)
          if tid then o.mopts.trigger_tokens[#o.mopts.trigger_tokens + 1] = tid end
        end
      end
    elseif topts.choice ~= "auto" then
      fail(400, "the tools' parameters cannot be followed: " .. tostring(err), "tools", "invalid_json_schema")
    end -- "auto" without a grammar: the reply is parsed all the same
  end
  local parse = use_tools or fmt.think
  if parse then
    o.preserved = {}
    for _, t in ipairs(tools.preserved(fmt)) do
      local tid = M.model:find_token(t)
      if tid then o.preserved[tid] = M.model:piece(tid, true) end
    end
  end
  local reqs = make_reqs(p, o)
  local rng = core.rng(floor(p.sampling.seed) + 7919)
  local parsers = {}
  for i = 1, #reqs do
    if parse then
      parsers[i] = tools.parser(fmt, { tools = topts and topts.list, tools_off = not use_tools, open_think = open_think })
    end
  end
  local created = ngx.time()
  local function chunk_of(index, delta, lp, finish)
    local ch = obj({ id = id, object = "chat.completion.chunk", created = created, model = M.name, system_fingerprint = null,
                     choices = { obj({ index = index, delta = delta, logprobs = lp or null, finish_reason = finish or null },
                                     { "index", "delta", "logprobs", "finish_reason" }) } },
                   { "id", "object", "created", "model", "system_fingerprint", "choices" })
    if p.include_usage then json.set(ch, "usage", null) end -- as OpenAI: null on every chunk but the last
    return ch
  end
  local function delta_of(content, reasoning, calls)
    local d, keys = {}, {}
    if reasoning and reasoning ~= "" then d.reasoning_content, keys[#keys + 1] = reasoning, "reasoning_content" end
    if content and content ~= "" then d.content, keys[#keys + 1] = content, "content" end
    if calls then d.tool_calls, keys[#keys + 1] = json.array(calls), "tool_calls" end
    return obj(d, keys)
  end
  -- logprobs of a choice's tokens not sent yet, up to `upto`
  local function lp_upto(r, upto)
    if not r.logprobs then return nil end
    local from = (r.lp_sent or 0) + 1
    if upto < from then return nil end
    r.lp_sent = upto
    return chat_logprobs(M, r, from, upto)
  end
  local function calls_of(r, msg)
    if not msg.tool_calls then return nil end
    return tools.assign_ids(msg.tool_calls, fmt, rng)
  end
  local function reason_of(r, calls)
    if calls and r.finish_reason ~= "length" then return "tool_calls" end
    return r.finish_reason
  end
  local function on_stream()
    local heads, streams = {}, {}
    for i = 1, #reqs do
      heads[i] = chunk_of(i - 1, obj({ role = "assistant", content = "" }, { "role", "content" }))
      -- tool calls go out as they are generated (moonlm.resty.toolstream)
      if parse then
        streams[i] = toolstream.new(fmt, { tools = topts and topts.list, tools_off = not use_tools, open_think = open_think }, rng)
      end
    end
    return stream_choices(M, reqs, p, heads,
      function(r, piece, upto)
        local content, reasoning, calls = piece, "", nil
        local ts = streams[r.index + 1]
        if ts then content, reasoning, calls = ts:push(piece) end
        local lp = lp_upto(r, upto)
        if content == "" and reasoning == "" and not calls and not lp then return nil end
        return chunk_of(r.index, delta_of(content, reasoning, calls), lp)
      end,
      function(r)
        local out = {}
        local ts, calls = streams[r.index + 1], nil
        local lp = lp_upto(r, #r.generated)
        if ts then
          local content, reasoning, deltas, _, list = ts:finish()
          calls = list
          if content ~= "" or reasoning ~= "" or lp then out[#out + 1] = chunk_of(r.index, delta_of(content, reasoning), lp) end
          for _, d in ipairs(deltas or {}) do out[#out + 1] = chunk_of(r.index, delta_of(nil, nil, { d })) end
        elseif lp then
          out[#out + 1] = chunk_of(r.index, obj({}), lp)
        end
        out[#out + 1] = chunk_of(r.index, obj({}), nil, reason_of(r, calls))
        return out
      end,
      function()
        local ch = obj({ id = id, object = "chat.completion.chunk", created = created, model = M.name, system_fingerprint = null,
                         choices = json.array {} }, { "id", "object", "created", "model", "system_fingerprint", "choices" })
        json.set(ch, "usage", usage(reqs, true))
        return ch
      end)
  end
  local function final()
    local choices = {}
    for i, r in ipairs(reqs) do
      local text = collect(r)
      local msg = { content = text }
      local calls
      if parsers[i] then
        parsers[i]:push(text)
        local _, _, m = parsers[i]:finish()
        msg = m
        calls = calls_of(r, m)
      end
      local mkeys = { "role", "content" }
      local message = { role = "assistant", content = msg.content }
      if msg.reasoning_content then
        message.reasoning_content = msg.reasoning_content
        mkeys[#mkeys + 1] = "reasoning_content"
      end
      if calls then
        message.tool_calls = json.array(calls)
        mkeys[#mkeys + 1] = "tool_calls"
        if message.content == "" then message.content = null end
      end
      choices[i] = obj({ index = i - 1, message = obj(message, mkeys),
                         logprobs = r.logprobs and chat_logprobs(M, r, 1, #r.generated) or null,
                         finish_reason = reason_of(r, calls) },
                       { "index", "message", "logprobs", "finish_reason" })
    end
    return obj({ id = id, object = "chat.completion", created = created, model = M.name, system_fingerprint = null,
                 choices = choices, usage = usage(reqs, true) },
               { "id", "object", "created", "model", "system_fingerprint", "choices", "usage" })
  end
  complete(M, reqs, p, on_stream, final)
end

local function completions()
  local b = request.read_json()
  request.check_fields(b, "completions")
  local M = model_of(b)
  local p = request.generation(b, false, M, S.counter)
  p.logprobs = request.logprobs(b, false)
  local c = request.constraint(b)
  if c and p.ignore_eos then
    fail(400, "'ignore_eos' cannot be honoured with a grammar: the grammar decides where the text ends", "ignore_eos",
         "unsupported_parameter")
  end
  local prompt, starts = request.text_prompt(b, M)
  local id = next_id("cmpl")
  local reqs = make_reqs(p, { id = id, prompt = prompt, starts = starts, param = "prompt",
                              grammar = c and constraint_grammar(M, c) or nil })
  local created = ngx.time()
  local function reply(index, text, lp, finish)
    local ch = obj({ id = id, object = "text_completion", created = created, model = M.name,
                     choices = { obj({ text = text, index = index, logprobs = lp or null, finish_reason = finish or null },
                                     { "text", "index", "logprobs", "finish_reason" }) } },
                   { "id", "object", "created", "model", "choices" })
    return ch
  end
  local function lp_upto(r, upto)
    if not r.logprobs then return nil end
    local from = (r.lp_sent or 0) + 1
    if upto < from then return nil end
    r.lp_sent = upto
    return text_logprobs(M, r, from, upto)
  end
  local function on_stream()
    return stream_choices(M, reqs, p, nil,
      function(r, piece, upto)
        local ch = reply(r.index, piece, lp_upto(r, upto))
        if p.include_usage then json.set(ch, "usage", null) end
        return ch
      end,
      function(r)
        local ch = reply(r.index, "", lp_upto(r, #r.generated), r.finish_reason)
        if p.include_usage then json.set(ch, "usage", null) end
        return { ch }
      end,
      function()
        local ch = reply(0, "")
        ch.choices = json.array {}
        json.set(ch, "usage", usage(reqs, true))
        return ch
      end)
  end
  local function final()
    local r = reply(0, "")
    local choices = {}
    for i, q in ipairs(reqs) do
      choices[i] = obj({ text = collect(q), index = i - 1, logprobs = q.logprobs and text_logprobs(M, q, 1, #q.generated) or null,
                         finish_reason = q.finish_reason }, { "text", "index", "logprobs", "finish_reason" })
    end
    r.choices = choices
    json.set(r, "usage", usage(reqs, true))
    return r
  end
  complete(M, reqs, p, on_stream, final)
end

---------------------------------------------------------------------------------------
-- Embeddings

local function base64_floats(row)
  local ffi = require "ffi"
  local buf = ffi.new("float[?]", #row)
  for i = 1, #row do buf[i - 1] = row[i] end
  return ngx.encode_base64(ffi.string(buf, 4 * #row))
end

local function embeddings()
  local b = request.read_json()
  request.check_fields(b, "embeddings")
  local M = model_of(b)
  local input = opt(b, "input")
  local texts
  if type(input) == "string" then
    texts = { input }
  elseif type(input) == "table" and json.table_kind(input) == "array" and #input > 0 then
    texts = {}
    for i, t in ipairs(input) do
      if type(t) ~= "string" then fail(400, ("input[%d] must be a string (token arrays are not supported)"):format(i - 1), "input") end
      texts[i] = t
    end
    if #texts > 256 then fail(400, "at most 256 inputs per request", "input") end
  else
    fail(400, "'input' must be a string or a non-empty array of strings", "input")
  end
  local fmt = opt(b, "encoding_format") or "float"
  if fmt ~= "float" and fmt ~= "base64" then fail(400, "'encoding_format' must be \"float\" or \"base64\"", "encoding_format") end
  local dims = request.integer_in(b, "dimensions", 1, huge)
  if dims and dims ~= M.model.n_embd then
    fail(400, ("this model gives %d dimensions"):format(M.model.n_embd), "dimensions")
  end
  local n_tokens = 0
  for _, t in ipairs(texts) do
    request.check_bytes(M, #t, "input")
    local n = #M.model:tokenize(t)
    if n > M.o.n_ctx then fail(400, ("input has %d tokens; at most %d"):format(n, M.o.n_ctx), "input", "context_length_exceeded") end
    n_tokens = n_tokens + max(n, 1)
  end
  -- the model's own pooling unless the server sets one (llama-server does the same)
  local pooling = M.o.pooling or M.model.pooling or "mean"
  if pooling == "none" then
    fail(400, "this model's pooling is 'none' (one vector per token), which /v1/embeddings cannot return; "
              .. "start the server with pooling = \"mean\", \"cls\" or \"last\"", "model")
  elseif pooling == "rank" then
    fail(400, "this model is a reranker (pooling 'rank'): it scores pairs and gives no embeddings; "
              .. "start the server with pooling = \"mean\", \"cls\" or \"last\" to embed with it", "model")
  end
  check_serving(M)
  admit_key(n_tokens)
  local I = info()
  I.embedding_tokens = n_tokens
  local ok, rows, err = ngx.run_worker_thread(M.o.thread_pool, "moonlm.resty.thread", "embed", M.model.handle, texts,
                                              { pooling = pooling, normalize = true, nice = M.o.nice })
  if not ok or not rows then fail(500, "embedding failed: " .. tostring(ok and err or rows)) end
  local data = {}
  for i, row in ipairs(rows) do
    local v = row
    if fmt == "base64" then
      v = base64_floats(row)
    else
      for k = 1, #v do v[k] = json.float(v[k]) end
    end
    data[i] = obj({ object = "embedding", index = i - 1, embedding = v }, { "object", "index", "embedding" })
  end
  S.metrics:inc("moonlm_embedding_tokens_total", M.label, n_tokens)
  send_json(200, obj({ object = "list", data = data, model = M.name,
                       usage = obj({ prompt_tokens = n_tokens, total_tokens = n_tokens }, { "prompt_tokens", "total_tokens" }) },
                     { "object", "data", "model", "usage" }))
end

---------------------------------------------------------------------------------------
-- Tokenizer endpoints (llama-server's /tokenize and /detokenize)

local function tokenize()
  local b = request.read_json()
  request.check_fields(b, "tokenize")
  local M = model_of(b)
  local content = opt(b, "content")
  if type(content) ~= "string" then fail(400, "'content' must be a string", "content") end
  request.check_bytes(M, #content, "content")
  local add_special = request.boolean(b, "add_special") or false
  local parse_special = request.boolean(b, "parse_special")
  if parse_special == nil then parse_special = true end
  local with_pieces = request.boolean(b, "with_pieces") or false
  local ids = M.model:tokenize(content, { bos = add_special and M.model.vocab.add_bos or false,
                                          eos = add_special and M.model.vocab.add_eos or false, special = parse_special })
  local tokens = json.array {}
  for i, id in ipairs(ids) do
    if with_pieces then
      local piece = M.model:piece(id)
      if json.utf8_error(piece) then
        local bytes = json.array {}
        for k = 1, #piece do bytes[k] = piece:byte(k) end
        piece = bytes
      end
      tokens[i] = obj({ id = id, piece = piece }, { "id", "piece" })
    else
      tokens[i] = id
    end
  end
  send_json(200, obj({ tokens = tokens }))
end

local function detokenize()
  local b = request.read_json()
  request.check_fields(b, "detokenize")
  local M = model_of(b)
  local t = opt(b, "tokens")
  if type(t) ~= "table" or json.table_kind(t) ~= "array" then fail(400, "'tokens' must be an array of token ids", "tokens") end
  local ids = request.token_ids(t, M, "tokens")
  send_json(200, obj({ content = M.model:detokenize(ids, { strip_space = false }) }))
end

---------------------------------------------------------------------------------------
-- Models, props, health, metrics

local function model_entry(M, id)
  return obj({ id = id or M.name, object = "model", created = M.created, owned_by = "moonlm" },
             { "id", "object", "created", "owned_by" })
end

local function models(id)
  if id then
    local M = S.names[id]
    if not M then fail(404, ("The model '%s' does not exist"):format(id), "model", "model_not_found") end
    return send_json(200, model_entry(M, id))
  end
  local data = {}
  for _, name in ipairs(S.order) do data[#data + 1] = model_entry(S.models[name]) end
  send_json(200, obj({ object = "list", data = data }, { "object", "data" }))
end

-- GET /props[?model=name]: what a client needs to know about a model and the server.
local function props()
  local args = ngx.req.get_uri_args()
  local name = args.model
  local M = S.default
  if name ~= nil then
    if type(name) ~= "string" or not S.names[name] then fail(404, ("The model '%s' does not exist"):format(tostring(name)), "model", "model_not_found") end
    M = S.names[name]
  end
  local m = M.model
  local list = json.array {}
  for i, n in ipairs(S.order) do list[i] = n end
  send_json(200, obj({
    model = M.name, models = list, model_path = basename(m.path) .. ".gguf",
    total_slots = #M.sched.slots, n_ctx = M.o.n_ctx,
    default_generation_settings = obj({ n_ctx = M.o.n_ctx, max_tokens = M.o.max_tokens, max_tokens_limit = S.o.max_tokens_limit or null,
                                        temperature = 1.0, top_p = 1.0, top_k = 40 },
                                      { "n_ctx", "max_tokens", "max_tokens_limit", "temperature", "top_p", "top_k" }),
    meta = obj({ arch = m.arch, n_params = m.n_params, n_vocab = m.n_vocab, n_embd = m.n_embd, n_layer = m.n_layer,
                 n_ctx_train = m.n_ctx_train, type = m.type, kv_type = M.o.kv_type or "f16" },
               { "arch", "n_params", "n_vocab", "n_embd", "n_layer", "n_ctx_train", "type", "kv_type" }),
    chat_template = M.template_source, bos_token = M.bos_text, eos_token = M.eos_text,
    modalities = obj({ vision = false, audio = false }, { "vision", "audio" }),
    build_info = "moonlm " .. lm._VERSION .. " (" .. lm.isa() .. ")",
  }, { "model", "models", "model_path", "total_slots", "n_ctx", "default_generation_settings", "meta", "chat_template",
       "bos_token", "eos_token", "modalities", "build_info" }))
end

local function health()
  if not S then
    return send_json(503, obj({ status = "error", error = init_error or "not initialised" }, { "status", "error" }))
  end
  local busy, slots, queued, limit, warm = 0, 0, 0, 0, true
  local st = { requests = 0, rejected = 0, tokens = 0, calls = 0, forwards = 0, rows = 0, copies = 0 }
  local per = {}
  for i, name in ipairs(S.order) do
    local sch = S.models[name].sched
    local b, n, q = sch:busy()
    busy, slots, queued, limit = busy + b, slots + n, queued + q, limit + sch.max_queue
    warm = warm and sch.warm
    for k in pairs(st) do st[k] = st[k] + sch.stats[k] end
    per[i] = obj({ model = name, status = sch.warm and "ok" or "loading", slots = n, busy = b, queued = q },
                 { "model", "status", "slots", "busy", "queued" })
  end
  local status = S.drained and "drained" or S.draining and "draining" or warm and "ok" or "loading"
  send_json(status == "ok" and 200 or 503, obj({ status = status, model = S.default.name, slots = slots, busy = busy,
                       queued = queued, max_queue = limit, requests = st.requests, rejected = st.rejected,
                       tokens = st.tokens, calls = st.calls, forwards = st.forwards, rows = st.rows, copies = st.copies,
                       models = per },
                     { "status", "model", "slots", "busy", "queued", "max_queue", "requests", "rejected", "tokens", "calls",
                       "forwards", "rows", "copies", "models" }))
end

local function metrics_page()
  ngx.status = 200
  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(S.metrics:render())
end

---------------------------------------------------------------------------------------
-- Drain

local function idle()
  if S.active > 0 then return false end
  for _, name in ipairs(S.order) do
    local b, _, q = S.models[name].sched:busy()
    if b > 0 or q > 0 then return false end
  end
  return true
end

local function quit_master()
  local pid = require("ngx.process").get_master_pid()
  if not pid then
    local f = io.open(ngx.config.prefix() .. "logs/nginx.pid", "rb")
    pid = f and tonumber(f:read("*a"))
    if f then f:close() end
  end
  if not pid then return ngx.log(ngx.ERR, "moonlm: drained, but the master's pid is unknown: stop nginx yourself") end
  local ffi = require "ffi"
  pcall(ffi.cdef, "int kill(int pid, int sig); char *strerror(int errnum);")
  S.drained = true
  if ffi.C.kill(pid, 3) == 0 then -- SIGQUIT: graceful shutdown
    return ngx.log(ngx.NOTICE, "moonlm: drained, asking nginx (pid ", pid, ") to quit")
  end
  -- a master started as root runs its workers as another user, who may not signal it
  ngx.log(ngx.ERR, "moonlm: drained, but the nginx master (pid ", pid, ") cannot be signalled: ",
          ffi.string(ffi.C.strerror(ffi.errno())), "; stop it with `nginx -s quit`, or run nginx as the",
          " user of its workers so that a drain ends it")
end

local function watch_drain(premature)
  if premature then return end
  if idle() then
    S.idle_since = S.idle_since or ngx.now()
    if ngx.now() - S.idle_since >= S.o.drain_grace then return quit_master() end
  else
    S.idle_since = nil
  end
  ngx.timer.at(0.1, watch_drain)
end

local function is_loopback(addr) return addr == "127.0.0.1" or addr == "::1" or (addr or ""):match("^127%.") ~= nil end

local function drain()
  local I = info()
  if S.keys.enabled then
    if not (I.key_entry and I.key_entry.admin) then fail(403, "draining needs an admin key", nil, "forbidden") end
  elseif not is_loopback(ngx.var.remote_addr) then
    fail(403, "without API keys, only loopback clients may drain this server", nil, "forbidden")
  end
  if not S.draining then
    S.draining = true
    ngx.log(ngx.NOTICE, "moonlm: draining (", I.key or "loopback", ")")
    ngx.timer.at(0, watch_drain)
  end
  local busy, queued = 0, 0
  for _, name in ipairs(S.order) do
    local b, _, q = S.models[name].sched:busy()
    busy, queued = busy + b, queued + q
  end
  send_json(202, obj({ status = "draining", running = busy, queued = queued }, { "status", "running", "queued" }))
end

---------------------------------------------------------------------------------------
-- Routing

local routes = {
  ["/v1/chat/completions"] = { POST = chat_completions },
  ["/v1/completions"] = { POST = completions },
  ["/v1/embeddings"] = { POST = embeddings },
  ["/v1/models"] = { GET = function() models() end },
  ["/tokenize"] = { POST = tokenize },
  ["/detokenize"] = { POST = detokenize },
  ["/props"] = { GET = props },
  ["/health"] = { GET = health },
  ["/metrics"] = { GET = metrics_page },
  ["/admin/drain"] = { POST = drain },
}
local model_route = { GET = true }

local function methods_of(route)
  local list = {}
  for m in pairs(route) do list[#list + 1] = m end
  sort(list)
  return list
end

-- finish(status): count the request once (also for clients that went away: 499).
function _M.finish(status)
  local I = info()
  if not I or I.counted or not S then return end
  I.counted = true
  I.status = status
  release_key()
  if I.running then
    I.running = false
    S.active = S.active - 1
  end
  S.metrics:inc("moonlm_requests_total", metrics.labels { endpoint = I.endpoint, status = status })
  local req, M = I.req, I.M
  if req and M then
    local t = ngx.now()
    S.metrics:inc("moonlm_prompt_tokens_total", M.label, #req.prompt)
    S.metrics:inc("moonlm_prompt_tokens_cached_total", M.label, req.cached_tokens or 0)
    local n = generated(I)
    S.metrics:inc("moonlm_generated_tokens_total", M.label, n)
    S.metrics:observe("moonlm_request_duration_seconds", M.label, t - I.start)
    if req.t_first then
      S.metrics:observe("moonlm_time_to_first_token_seconds", M.label, max(0, req.t_first - I.start))
      if (req.completion_tokens or 0) > 1 then
        S.metrics:observe("moonlm_time_per_output_token_seconds", M.label,
                          (req.t_last - req.t_first) / (req.completion_tokens - 1))
      end
    end
  end
end

local function handle(uri, method, I)
  local route = routes[uri]
  local mid = not route and uri:match("^/v1/models/(.+)$")
  if mid then
    route = model_route
    I.endpoint = "/v1/models/{id}"
  elseif route then
    I.endpoint = uri
  end
  local origin = ngx.var.http_origin
  if S and S.cors and origin then S.cors:apply(origin) end
  if method == "OPTIONS" and route then
    local list = methods_of(route)
    local ask = ngx.var.http_access_control_request_method
    if S and S.cors and origin and ask then
      local status, why = S.cors:preflight(origin, ask, ngx.var.http_access_control_request_headers, list)
      if status ~= 204 then fail(status, why, nil, status == 403 and "cors_origin_not_allowed" or "method_not_allowed") end
    end
    list[#list + 1] = "OPTIONS"
    ngx.header["Allow"] = concat(list, ", ")
    ngx.status = 204
    return
  end
  if not route then fail(404, ("Unknown request URL: %s %s"):format(method, ngx.var.uri), nil, "unknown_url") end
  if not S then
    if uri == "/health" then return health() end
    fail(503, "the model is not loaded: " .. tostring(init_error or "init was not called"))
  end
  if S.keys.enabled and not S.open[uri] then
    local e, why = S.keys:check(ngx.var.http_authorization)
    if not e then
      ngx.header["WWW-Authenticate"] = 'Bearer realm="moonlm"'
      fail(401, why, nil, "invalid_api_key")
    end
    I.key_entry, I.key = e, e.id
  end
  local h = route[method]
  if not h then
    local list = methods_of(route)
    list[#list + 1] = "OPTIONS"
    ngx.header["Allow"] = concat(list, ", ")
    fail(405, ("Method %s is not allowed for %s (use %s)"):format(method, uri, concat(methods_of(route), ", ")), nil,
         "method_not_allowed")
  end
  if S.o.node_header ~= false then
    ngx.header["X-Moonlm-Node"] = S.o.node or (ngx.var.server_addr .. ":" .. ngx.var.server_port)
  end
  if mid then return models(ngx.unescape_uri(mid)) end
  h()
end

-- serve(): the content handler for every endpoint.
function _M.serve()
  local uri, method = ngx.var.uri, ngx.req.get_method()
  uri = uri:gsub("/+$", "")
  local I = { endpoint = "other", start = ngx.req.start_time(), method = method }
  ngx.ctx.moonlm = I
  local ok, err = pcall(handle, uri, method, I)
  if not ok then
    if type(err) == "table" and err.status then
      if not ngx.headers_sent then
        if err.retry then ngx.header["Retry-After"] = tostring(err.retry) end
        send_error(err.status, err.message, err.param, err.code, err.etype)
      end
    else
      ngx.log(ngx.ERR, "moonlm: ", tostring(err))
      if not ngx.headers_sent then send_error(500, "internal error: " .. tostring(err)) end
    end
  end
  _M.finish(ngx.status)
end

-- serve_error(status): an error nginx raised itself (error_page), in the OpenAI format.
function _M.serve_error(status)
  local I = { endpoint = "other", start = ngx.req.start_time(), method = ngx.req.get_method() }
  ngx.ctx.moonlm = I
  local origin = ngx.var.http_origin
  if S and S.cors and origin then S.cors:apply(origin) end
  if status == 413 then
    send_error(413, "the request body is too large", nil, "request_too_large")
  else
    send_error(status, "request refused by nginx (" .. status .. ")")
  end
  _M.finish(status)
end

-- log(): in log_by_lua. One JSON line per request into the nginx variable $moonlm_log (for
-- an access_log with `log_format moonlm escape=none '$moonlm_log'`), or, without that
-- variable, into the error log at level notice. Fields: time, id, endpoint, method, status,
-- key (the key's id, never the key), model, user, stream, prompt_tokens, cached_tokens,
-- completion_tokens, ttft_ms, total_ms, finish_reason, remote_addr.
function _M.log()
  local I = ngx.ctx.moonlm
  if not I then return end
  _M.finish(ngx.status) -- counted already unless the request ended outside serve()
  ngx.update_time()
  local req = I.req
  local line = json.encode(obj({
    time = ngx.utctime():gsub(" ", "T") .. "Z", id = I.id or null, endpoint = I.endpoint, method = I.method, status = I.status or ngx.status,
    key = I.key or null, model = I.model or null, user = I.user or null, stream = I.stream or false,
    prompt_tokens = req and #req.prompt or I.embedding_tokens or null,
    cached_tokens = req and req.cached_tokens or null,
    completion_tokens = req and generated(I) or null,
    ttft_ms = req and req.t_first and floor((req.t_first - I.start) * 1e4 + 0.5) / 10 or null,
    total_ms = floor((ngx.now() - I.start) * 1e4 + 0.5) / 10,
    finish_reason = req and req.finish_reason or null,
    remote_addr = ngx.var.remote_addr,
  }, { "time", "id", "endpoint", "method", "status", "key", "model", "user", "stream", "prompt_tokens", "cached_tokens",
       "completion_tokens", "ttft_ms", "total_ms", "finish_reason", "remote_addr" }), C)
  local ok = pcall(function() ngx.var.moonlm_log = line end)
  if not ok then ngx.log(ngx.NOTICE, "moonlm access ", line) end
end

return _M
