-- moonlm.resty: an OpenAI-compatible HTTP endpoint inside nginx with lua-nginx-module
-- (OpenResty, or Debian's nginx + libnginx-mod-http-lua). examples/openresty/nginx.conf is
-- a complete configuration.
--
--   init_worker_by_lua_block { require("moonlm.resty").init { model = "/path/model.gguf" } }
--   location / { content_by_lua_block { require("moonlm.resty").serve() } }
--
-- Endpoints: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings,
-- GET /v1/models, GET /v1/models/{id}, GET /health. Errors are OpenAI-style
-- { "error": { "message", "type", "param", "code" } }: 400 (bad JSON or parameters, prompt
-- too long), 404 (unknown model or URL), 405, 413 (from nginx.conf), 503 (queue full).
--
-- Design
--
--   * Decoding never runs on the event loop. It runs in ngx.run_worker_thread: nginx posts
--     a call (module moonlm.resty.thread, function step) to its thread pool, where a pooled
--     Lua VM attaches to the model and context by integer handle (the registry is
--     process-wide), and the calling coroutine yields until the call returns.
--   * One scheduler per nginx worker (moonlm.resty.scheduler): one context with `slots`
--     sequences of `n_ctx` tokens each, and a queue of at most `max_queue` requests waiting
--     for a slot (beyond that: 503). A driver, an ngx.timer that lives while any request is
--     running, loops: admit waiting requests into free slots, then make ONE thread call that
--     steps every busy slot together: each step is one ctx:decode_batch forward pass over
--     the next prompt chunk of slots still prefilling and the last sampled token of the
--     others (continuous batching: requests join and leave between steps), followed by
--     sampling. A call runs up to `max_steps` steps or `step_ms` milliseconds (and ends
--     right after a new request's first token, for time to first token), then returns
--     the new token ids of every slot; the driver turns them into text and wakes the request
--     coroutines (ngx.semaphore), which forward it (server-sent events with ngx.flush(true)).
--     Only the driver touches the context, one call at a time, so it is never "in use by
--     another thread".
--   * Sampling runs in the thread, so a call can step many tokens. Sampler state must not
--     depend on which pooled VM runs the next call: each request has a seed (given or drawn
--     at arrival), and the driver keeps the number of random draws and the mirostat state
--     per request; a VM that has not seen the request (or saw it at another point) rebuilds
--     the sampler from the options, reseeds and skips that many draws. So a seed gives the
--     same text whatever the load and however the calls land on VMs.
--   * Text is made in the worker VM: a streaming decoder per request (whole UTF-8
--     characters only) and stop strings matched across token boundaries; a stop string or a
--     client that went away frees the slot at the next step.
--   * KV cache reuse: a finished request leaves its tokens in its slot. A new request gets
--     the free slot whose cache shares the longest prefix with its prompt; the cache is cut
--     back to that prefix (ctx:truncate) and only the rest is prefilled: the next turn of a
--     conversation prefills only its new tokens. Across machines, balancer.conf hashes a
--     conversation id to keep a conversation on one node.
--   * The decoding threads lower their own priority (nice 10 by default): when a core is
--     shared, the event loop (answering /health, accepting, streaming) gets it at once.
--   * Embeddings run in the thread pool too (moonlm.resty.thread.embed); each pooled VM has
--     its own embedding context.
local lm = require "moonlm"
local json = require "moonlm.json"
local template = require "moonlm.template"
local sampler = require "moonlm.sampler"
local scheduler = require "moonlm.resty.scheduler"

local ngx = ngx
local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local floor, huge = math.floor, math.huge
local concat = table.concat

local _M = { _VERSION = lm._VERSION }

local C = { compact = true }
local null = json.null

local S -- this worker's server state (init)
local init_error

---------------------------------------------------------------------------------------
-- Set-up

local defaults = {
  slots = 4, max_queue = 16, max_tokens = 256, step_ms = 20, max_steps = 16, prefill_chunk = 256,
  thread_pool = "moonlm", pooling = "mean", nice = 10,
}

local function basename(path)
  return (path:gsub("^.*/", ""):gsub("%.gguf$", ""))
end

-- init(opts), in init_worker_by_lua. opts (defaults in brackets):
--   model         path of the GGUF file (required)
--   name          model id in the API [file name without .gguf]; aliases {} other ids
--   slots [4]     requests decoded together; n_ctx per slot [min(n_ctx_train, 2048)]
--   max_queue [16] requests waiting for a slot before 503
--   max_tokens [256] default reply length; threads: kernel threads [all cores]
--   kv_type ["f16"]; template: chat template name or source [the model's, else chatml]
--   step_ms [20], max_steps [16], prefill_chunk [256]: the size of one thread call
--   thread_pool ["moonlm"]: the name in nginx's thread_pool directive
--   nice [10]: decoding threads run at this nice value (Linux), so that the event loop gets
--   the CPU at once when it needs it while they compute; 0 leaves them as they are
--   pooling ["mean"] for embeddings
-- A failure is logged and reported by /health and every endpoint (503).
function _M.init(opts)
  local ok, err = pcall(function()
    local o = {}
    for k, v in pairs(defaults) do o[k] = v end
    for k, v in pairs(opts or {}) do o[k] = v end
    if type(o.model) ~= "string" or o.model == "" then error("no model: set init{ model = path }", 0) end
    if o.threads then lm.threads(o.threads) end
    local model, lerr = lm.load(o.model)
    if not model then error(lerr, 0) end
    o.n_ctx = o.n_ctx or math.min(model.n_ctx_train or 2048, 2048)
    local ctx, cerr = model:context { n_ctx = o.n_ctx * o.slots, seqs = o.slots, kv_type = o.kv_type }
    if not ctx then error(cerr, 0) end
    local src = o.template
    if src and not src:find("{[%%{]") then
      src = template.builtin(src)
      if not src then error(("no built-in chat template '%s'"):format(o.template), 0) end
    end
    if not src then
      src = model.meta["tokenizer.chat_template"]
      if type(src) ~= "string" or src == "" then src = template.builtin("chatml") end
    end
    local tmpl, terr = template.compile(src)
    if not tmpl then error("chat template: " .. terr, 0) end
    local names = { [o.name or basename(o.model)] = true }
    for _, a in ipairs(o.aliases or {}) do names[a] = true end
    local bos, eos = model.vocab.bos, model.vocab.eos
    S = {
      o = o, model = model, ctx = ctx, tmpl = tmpl, name = o.name or basename(o.model), names = names,
      created = ngx.time(), counter = 0,
      bos_text = bos and model:token(bos) or "", eos_text = eos and model:token(eos) or "",
      sched = scheduler.new {
        model = model, ctx = ctx, slots = o.slots, n_ctx = o.n_ctx, max_queue = o.max_queue,
        pool = o.thread_pool,
        limits = { max_steps = o.max_steps, budget = o.step_ms / 1000, chunk = o.prefill_chunk, nice = o.nice },
      },
    }
  end)
  if not ok then
    init_error = tostring(err)
    ngx.log(ngx.ERR, "moonlm: ", init_error)
    return false, init_error
  end
  S.sched:start() -- warm-up: /health says "loading" (503) until the first decode is done
  return true
end

---------------------------------------------------------------------------------------
-- HTTP helpers

local function obj(t, keys) return json.object(t, keys) end

local error_types = { [400] = "invalid_request_error", [404] = "invalid_request_error",
                      [405] = "invalid_request_error", [413] = "invalid_request_error",
                      [500] = "server_error", [503] = "server_error" }

local function send_json(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(json.encode(body, C))
end

local function send_error(status, message, param, code)
  send_json(status, obj({ error = obj({ message = message, type = error_types[status] or "server_error",
                                        param = param or null, code = code or null },
                                      { "message", "type", "param", "code" }) }))
end

-- A request error, raised by the validators and caught by serve().
local function fail(status, message, param, code)
  error({ status = status, message = message, param = param, code = code }, 0)
end

local function read_json()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local file = ngx.req.get_body_file()
    if file then
      local f = io.open(file, "rb")
      if f then
        body = f:read("*a")
        f:close()
      end
    end
  end
  if not body or body == "" then fail(400, "the request body is empty: a JSON object is expected") end
  local v, err = json.decode(body)
  if v == nil then fail(400, "the request body is not valid JSON (" .. tostring(err) .. ")") end
  if type(v) ~= "table" or json.table_kind(v) ~= "object" then fail(400, "the request body must be a JSON object") end
  return v
end

local function next_id(prefix)
  S.counter = S.counter + 1
  return ("%s-%x%x%04d"):format(prefix, ngx.worker.pid(), floor(ngx.now() * 1000) % 0x100000, S.counter % 10000)
end

---------------------------------------------------------------------------------------
-- Validation

local function opt(b, k)
  local v = b[k]
  if v == null then return nil end
  return v
end

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 end

local function number_in(b, k, lo, hi)
  local v = opt(b, k)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v then fail(400, ("'%s' must be a number"):format(k), k) end
  if v < lo or v > hi then fail(400, ("'%s' must be between %s and %s, got %s"):format(k, lo, hi, v), k) end
  return v
end

local function integer_in(b, k, lo, hi)
  local v = opt(b, k)
  if v == nil then return nil end
  if not is_int(v) then fail(400, ("'%s' must be an integer"):format(k), k) end
  if v < lo or v > hi then fail(400, ("'%s' must be between %d and %s, got %d"):format(k, lo, hi, v), k) end
  return v
end

local function boolean(b, k)
  local v = opt(b, k)
  if v ~= nil and type(v) ~= "boolean" then fail(400, ("'%s' must be a boolean"):format(k), k) end
  return v
end

local function check_model(b)
  local m = opt(b, "model")
  if m == nil then return end
  if type(m) ~= "string" then fail(400, "'model' must be a string", "model") end
  if not S.names[m] then
    fail(404, ("The model '%s' does not exist (this server has '%s')"):format(m, S.name), "model", "model_not_found")
  end
end

-- The generation options shared by chat and text completions.
local function generation_params(b, chat)
  local p = {}
  p.max_tokens = integer_in(b, "max_tokens", 1, huge)
  if chat then p.max_tokens = integer_in(b, "max_completion_tokens", 1, huge) or p.max_tokens end
  p.max_tokens = p.max_tokens or S.o.max_tokens
  local n = integer_in(b, "n", 1, huge)
  if n and n > 1 then fail(400, "'n' greater than 1 is not supported", "n") end
  p.stream = boolean(b, "stream") or false
  local so = opt(b, "stream_options")
  if so ~= nil and (type(so) ~= "table" or json.table_kind(so) ~= "object") then
    fail(400, "'stream_options' must be an object", "stream_options")
  end
  p.include_usage = so and so.include_usage == true
  local stop = opt(b, "stop")
  p.stops = {}
  if type(stop) == "string" then
    if stop ~= "" then p.stops[1] = stop end
  elseif type(stop) == "table" and json.table_kind(stop) == "array" then
    if #stop > 16 then fail(400, "'stop' may have at most 16 strings", "stop") end
    for _, s in ipairs(stop) do
      if type(s) ~= "string" then fail(400, "'stop' must be a string or an array of strings", "stop") end
      if s ~= "" then p.stops[#p.stops + 1] = s end
    end
  elseif stop ~= nil then
    fail(400, "'stop' must be a string or an array of strings", "stop")
  end
  p.ignore_eos = boolean(b, "ignore_eos") or false
  local seed = integer_in(b, "seed", -2 ^ 53 + 1, 2 ^ 53 - 1)
  if not seed then seed = (floor(ngx.now() * 1000) * 7919 + S.counter) % 2147483647 end
  local s = {
    temperature = number_in(b, "temperature", 0, 2) or 1.0,
    top_p = number_in(b, "top_p", 0, 1) or 1.0,
    top_k = integer_in(b, "top_k", 0, huge) or 40,
    min_p = number_in(b, "min_p", 0, 1),
    frequency_penalty = number_in(b, "frequency_penalty", -2, 2),
    presence_penalty = number_in(b, "presence_penalty", -2, 2),
    repeat_penalty = number_in(b, "repeat_penalty", 0, huge),
    seed = seed,
  }
  if s.top_p == 0 then s.top_p = 1e-9 end -- "only the best token": the smallest nucleus
  local bias = opt(b, "logit_bias")
  if bias ~= nil then
    if type(bias) ~= "table" or json.table_kind(bias) ~= "object" then fail(400, "'logit_bias' must be an object", "logit_bias") end
    s.logit_bias = {}
    for k, v in pairs(bias) do
      local id = tonumber(k)
      if not is_int(id) or id < 0 or id >= S.model.n_vocab then
        fail(400, ("'logit_bias' has a key that is not a token id: %s"):format(tostring(k)), "logit_bias")
      end
      if type(v) ~= "number" or v < -100 or v > 100 then fail(400, "'logit_bias' values must be numbers from -100 to 100", "logit_bias") end
      s.logit_bias[id] = v <= -100 and -huge or v
    end
  end
  local ok, err = pcall(sampler.new, s)
  if not ok then fail(400, tostring(err):gsub("^.-bad argument #1 to 'sampler' %((.*)%)$", "%1")) end
  p.penalties = (s.frequency_penalty or 0) ~= 0 or (s.presence_penalty or 0) ~= 0 or (s.repeat_penalty or 1) ~= 1
  p.sampling = s
  return p
end

-- Text longer than this cannot fit in a slot's context whatever the tokenizer does (no token
-- is that long on average); refusing it early keeps template rendering and tokenization of
-- huge inputs off the event loop.
local function check_bytes(n, param)
  local limit = S.o.n_ctx * 64
  if n > limit then
    fail(400, ("the input has %d bytes, more than a context of %d tokens can hold"):format(n, S.o.n_ctx), param,
         "context_length_exceeded")
  end
end

local function message_text(m, i)
  local c = m.content
  if c == nil or c == null then return "" end
  if type(c) == "string" then return c end
  if type(c) == "table" and json.table_kind(c) == "array" then
    local parts = {}
    for _, part in ipairs(c) do
      if type(part) ~= "table" or part.type ~= "text" or type(part.text) ~= "string" then
        fail(400, ("messages[%d].content: only text parts ({\"type\": \"text\", \"text\": ...}) are supported"):format(i - 1), "messages")
      end
      parts[#parts + 1] = part.text
    end
    return concat(parts)
  end
  fail(400, ("messages[%d].content must be a string or an array of text parts"):format(i - 1), "messages")
end

local function chat_prompt(b)
  local msgs = b.messages
  if type(msgs) ~= "table" or json.table_kind(msgs) ~= "array" then fail(400, "'messages' must be an array", "messages") end
  if #msgs == 0 then fail(400, "'messages' must not be empty", "messages") end
  local list, bytes = {}, 0
  for i, m in ipairs(msgs) do
    if type(m) ~= "table" or json.table_kind(m) ~= "object" then fail(400, ("messages[%d] must be an object"):format(i - 1), "messages") end
    if type(m.role) ~= "string" then fail(400, ("messages[%d].role must be a string"):format(i - 1), "messages") end
    list[i] = { role = m.role, content = message_text(m, i) }
    bytes = bytes + #list[i].content + #m.role
  end
  check_bytes(bytes, "messages")
  local text, err = S.tmpl:render {
    messages = list, add_generation_prompt = true, bos_token = S.bos_text, eos_token = S.eos_text,
    tools = null, documents = null,
  }
  if not text then fail(400, "the chat template failed: " .. tostring(err), "messages") end
  -- a template that writes the BOS text itself gets it as a special token; others get the
  -- model's default BOS in front (as moonlm.chat does)
  local bos = S.model.vocab.add_bos and S.bos_text ~= "" and text:sub(1, #S.bos_text) ~= S.bos_text
  return S.model:tokenize(text, { bos = bos and true or false, special = true })
end

local function text_prompt(b)
  local p = opt(b, "prompt")
  if p == nil then p = "" end
  if type(p) == "table" and json.table_kind(p) == "array" then
    if #p == 1 and type(p[1]) == "string" then
      p = p[1]
    elseif #p > 0 and type(p[1]) == "table" then
      if #p > 1 then fail(400, "only one prompt per request is supported", "prompt") end
      p = p[1]
    end
  end
  local ids
  if type(p) == "string" then
    check_bytes(#p, "prompt")
    ids = S.model:tokenize(p)
  elseif type(p) == "table" and json.table_kind(p) == "array" then
    ids = {}
    for i, id in ipairs(p) do
      if not is_int(id) or id < 0 or id >= S.model.n_vocab then
        fail(400, ("prompt[%d] is not a token id of this model (0 to %d)"):format(i - 1, S.model.n_vocab - 1), "prompt")
      end
      ids[i] = id
    end
  else
    fail(400, "'prompt' must be a string, an array of one string, or an array of token ids", "prompt")
  end
  if #ids == 0 then
    local bos = S.model.vocab.bos
    if not bos then fail(400, "the prompt is empty and the model has no BOS token", "prompt") end
    ids = { bos }
  end
  return ids, S.model:detokenize(ids) == ""
end

---------------------------------------------------------------------------------------
-- Completions

local function usage(req, details)
  local u = obj({ prompt_tokens = #req.prompt, completion_tokens = req.completion_tokens,
                  total_tokens = #req.prompt + req.completion_tokens },
                { "prompt_tokens", "completion_tokens", "total_tokens" })
  if details then json.set(u, "prompt_tokens_details", obj({ cached_tokens = req.cached_tokens })) end
  return u
end

local function sse(v)
  local ok, err = ngx.print("data: ", type(v) == "string" and v or json.encode(v, C), "\n\n")
  if ok then ok, err = ngx.flush(true) end
  return ok, err
end

-- Stream a request's text as server-sent events; chunk(text, finish, usage) -> one chunk.
local function stream(req, p, chunk, head)
  ngx.header["Content-Type"] = "text/event-stream"
  ngx.header["Cache-Control"] = "no-cache"
  ngx.header["X-Accel-Buffering"] = "no"
  if head and not sse(head()) then return false end
  while true do
    local text, done = scheduler.wait(req)
    if text == nil then return false end
    if text ~= "" and not sse(chunk(text)) then return false end
    if done then break end
  end
  if req.finish_reason == "error" then
    sse(obj({ error = obj({ message = "generation failed: " .. tostring(req.error), type = "server_error", param = null, code = null },
                          { "message", "type", "param", "code" }) }))
  else
    sse(chunk(nil, req.finish_reason))
    if p.include_usage then sse(chunk(nil, nil, true)) end
  end
  sse("[DONE]")
  return true
end

local function collect(req)
  local parts = {}
  while true do
    local text, done = scheduler.wait(req)
    if text == nil then return nil end
    parts[#parts + 1] = text
    if done then break end
  end
  return concat(parts)
end

-- Run a request through the scheduler and answer: stream(...) or final(text) -> the reply.
-- Whatever goes wrong on the way, the request stops generating.
local function complete(req, p, chunk, head, final)
  req.max_tokens, req.sampling, req.stops = p.max_tokens, p.sampling, p.stops
  req.ignore_eos, req.penalties = p.ignore_eos, p.penalties
  local ok, status, msg = S.sched:submit(req)
  if not ok then
    fail(status, msg, status == 400 and req.param or nil,
         status == 503 and "server_busy" or status == 400 and "context_length_exceeded" or nil)
  end
  ngx.on_abort(function()
    S.sched:cancel(req)
    ngx.exit(499)
  end)
  local text
  ok, text = pcall(function()
    if p.stream then return stream(req, p, chunk, head) end
    return collect(req)
  end)
  if not ok or not text then
    S.sched:cancel(req)
    if not ok then error(text, 0) end
    return
  end
  if p.stream then return end
  if req.finish_reason == "error" then fail(500, "generation failed: " .. tostring(req.error)) end
  send_json(200, final(text))
end

local function chat_completions()
  local b = read_json()
  check_model(b)
  local p = generation_params(b, true)
  local req = { id = next_id("chatcmpl"), prompt = chat_prompt(b), starts = false, param = "messages" }
  local created = ngx.time()
  local function head_of(t, delta, finish)
    return obj({ id = req.id, object = t, created = created, model = S.name, system_fingerprint = null,
                 choices = { obj({ index = 0, [t == "chat.completion" and "message" or "delta"] = delta, logprobs = null,
                                   finish_reason = finish or null },
                                 { "index", t == "chat.completion" and "message" or "delta", "logprobs", "finish_reason" }) } },
               { "id", "object", "created", "model", "system_fingerprint", "choices" })
  end
  local function chunk(text, finish, with_usage)
    if with_usage then
      local c = head_of("chat.completion.chunk", nil)
      c.choices = json.array {}
      json.set(c, "usage", usage(req, true))
      return c
    end
    return head_of("chat.completion.chunk", text and obj({ content = text }) or obj({}), finish)
  end
  complete(req, p, chunk,
    function() return head_of("chat.completion.chunk", obj({ role = "assistant", content = "" }, { "role", "content" })) end,
    function(text)
      local r = head_of("chat.completion", obj({ role = "assistant", content = text }, { "role", "content" }), req.finish_reason)
      json.set(r, "usage", usage(req, true))
      return r
    end)
end

local function completions()
  local b = read_json()
  check_model(b)
  local p = generation_params(b, false)
  local prompt, starts = text_prompt(b)
  local req = { id = next_id("cmpl"), prompt = prompt, starts = starts, param = "prompt" }
  local created = ngx.time()
  local function reply(text, finish)
    return obj({ id = req.id, object = "text_completion", created = created, model = S.name,
                 choices = { obj({ text = text, index = 0, logprobs = null, finish_reason = finish or null },
                                 { "text", "index", "logprobs", "finish_reason" }) } },
               { "id", "object", "created", "model", "choices" })
  end
  complete(req, p,
    function(text, finish, with_usage)
      if with_usage then
        local c = reply("")
        c.choices = json.array {}
        json.set(c, "usage", usage(req))
        return c
      end
      return reply(text or "", finish)
    end, nil,
    function(text)
      local r = reply(text, req.finish_reason)
      json.set(r, "usage", usage(req))
      return r
    end)
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
  local b = read_json()
  check_model(b)
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
  local dims = integer_in(b, "dimensions", 1, huge)
  if dims and dims ~= S.model.n_embd then
    fail(400, ("this model gives %d dimensions"):format(S.model.n_embd), "dimensions")
  end
  local n_tokens = 0
  for _, t in ipairs(texts) do
    check_bytes(#t, "input")
    local n = #S.model:tokenize(t)
    if n > S.o.n_ctx then fail(400, ("input has %d tokens; at most %d"):format(n, S.o.n_ctx), "input", "context_length_exceeded") end
    n_tokens = n_tokens + math.max(n, 1)
  end
  local ok, rows, err = ngx.run_worker_thread(S.o.thread_pool, "moonlm.resty.thread", "embed", S.model.handle, texts,
                                              { pooling = S.o.pooling, normalize = true, nice = S.o.nice })
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
  send_json(200, obj({ object = "list", data = data, model = S.name,
                       usage = obj({ prompt_tokens = n_tokens, total_tokens = n_tokens }, { "prompt_tokens", "total_tokens" }) },
                     { "object", "data", "model", "usage" }))
end

---------------------------------------------------------------------------------------
-- Models and health

local function model_entry()
  return obj({ id = S.name, object = "model", created = S.created, owned_by = "moonlm" },
             { "id", "object", "created", "owned_by" })
end

local function models(id)
  if id then
    if not S.names[id] then fail(404, ("The model '%s' does not exist"):format(id), "model", "model_not_found") end
    return send_json(200, model_entry())
  end
  send_json(200, obj({ object = "list", data = { model_entry() } }, { "object", "data" }))
end

local function health()
  if not S then
    return send_json(503, obj({ status = "error", error = init_error or "not initialised" }, { "status", "error" }))
  end
  local busy, slots, queued = S.sched:busy()
  local st = S.sched.stats
  send_json(S.sched.warm and 200 or 503, obj({ status = S.sched.warm and "ok" or "loading", model = S.name, slots = slots, busy = busy, queued = queued,
                       max_queue = S.o.max_queue, requests = st.requests, rejected = st.rejected,
                       tokens = st.tokens, calls = st.calls, forwards = st.forwards, rows = st.rows },
                     { "status", "model", "slots", "busy", "queued", "max_queue", "requests", "rejected", "tokens", "calls",
                       "forwards", "rows" }))
end

---------------------------------------------------------------------------------------
-- Routing

local routes = {
  ["/v1/chat/completions"] = { POST = chat_completions },
  ["/v1/completions"] = { POST = completions },
  ["/v1/embeddings"] = { POST = embeddings },
  ["/v1/models"] = { GET = function() models() end },
  ["/health"] = { GET = health },
}

-- serve(): the content handler for every endpoint.
function _M.serve()
  local uri, method = ngx.var.uri, ngx.req.get_method()
  uri = uri:gsub("/+$", "")
  if uri == "/health" and method == "GET" then return health() end -- first: it must stay fast
  local ok, err = pcall(function()
    local route = routes[uri]
    local mid = not route and uri:match("^/v1/models/(.+)$")
    if mid then route = { GET = function() models(ngx.unescape_uri(mid)) end } end
    if not route then fail(404, ("Unknown request URL: %s %s"):format(method, ngx.var.uri), nil, "unknown_url") end
    local h = route[method]
    if not h then
      local allowed = {}
      for m in pairs(route) do allowed[#allowed + 1] = m end
      ngx.header["Allow"] = concat(allowed, ", ")
      fail(405, ("Method %s is not allowed for %s (use %s)"):format(method, uri, concat(allowed, ", ")), nil, "method_not_allowed")
    end
    if not S then fail(503, "the model is not loaded: " .. tostring(init_error or "init was not called")) end
    if S.o.node_header ~= false then
      ngx.header["X-Moonlm-Node"] = S.o.node or (ngx.var.server_addr .. ":" .. ngx.var.server_port)
    end
    h()
  end)
  if ok then return end
  if type(err) == "table" and err.status then
    if ngx.headers_sent then return end
    if err.status == 503 then ngx.header["Retry-After"] = "1" end
    return send_error(err.status, err.message, err.param, err.code)
  end
  ngx.log(ngx.ERR, "moonlm: ", tostring(err))
  if not ngx.headers_sent then send_error(500, "internal error: " .. tostring(err)) end
end

return _M
