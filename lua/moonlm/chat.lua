-- Chat sessions: a conversation rendered with the model's own chat template, kept in a
-- context so that each turn only prefills the tokens that are new since the last one.
--
--   local chat = model:chat { system = "You are a helpful assistant." }
--   local reply, info = chat:say("What is Lua?")     -- info.prompt_tokens: prefilled now
--   for piece in chat:stream("And LuaJIT?") do io.write(piece) end
--   chat:save("chat.bin")  ...  chat = moonlm.chat_load(model, "chat.bin")
--
-- Options of model:chat (defaults in brackets), besides generation and sampler options
-- used as defaults for every turn:
--   system         the system prompt (kept when old turns are dropped)
--   template       a built-in name (chatml, llama2, llama3, mistral, phi3, gemma, zephyr) or
--                  Jinja source [the model's tokenizer.chat_template, else chatml]
--   n_ctx          context size [min(n_ctx_train, 4096)]; context, seq: run in a given one
--   max_tokens     per reply [512]
-- When the conversation outgrows the context, the oldest turns (never the system prompt)
-- are dropped and the reply's info says truncated = true.
local template = require "moonlm.template"
local generate = require "moonlm.generate"
local json = require "moonlm.json"

local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable

local _M = {}
local Chat = {}
Chat.__index = Chat

local function token_text(model, id)
  if not id then return "" end
  local text = model:token(id)
  return text or ""
end

-- The Jinja source for a model and an optional template option.
local function template_source(model, opt)
  if opt ~= nil then
    if type(opt) ~= "string" then error("bad option 'template' (string expected)", 4) end
    if opt:find("{[%%{]") then return opt end
    local src = template.builtin(opt)
    if not src then error(("bad option 'template' (no built-in template '%s')"):format(opt), 4) end
    return src
  end
  local src = model.meta["tokenizer.chat_template"]
  if type(src) == "string" and src ~= "" then return src end
  return template.builtin("chatml")
end

-- model:apply_template(messages, { add_generation_prompt = true, template = ... }) -> text | nil, err
function _M.apply_template(model, messages, opts)
  opts = opts or {}
  local tmpl, err = template.compile(template_source(model, opts.template))
  if not tmpl then return nil, err end
  local vars = {
    messages = messages,
    add_generation_prompt = opts.add_generation_prompt ~= false,
    bos_token = token_text(model, model.vocab.bos),
    eos_token = token_text(model, model.vocab.eos),
    tools = json.null,
    documents = json.null,
  }
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  return tmpl:render(vars)
end

function _M.new(model, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'chat' (table expected, got " .. type(opts) .. ")", 3) end
  local src = template_source(model, opts.template)
  local tmpl, err = template.compile(src)
  if not tmpl then error("chat template: " .. err, 3) end
  local self = setmetatable({ model = model, opts = opts, tmpl = tmpl, history = {}, tokens = {} }, Chat)
  self.system = opts.system
  if opts.context then
    self.ctx, self.own_ctx = opts.context, false
  else
    local n_ctx = opts.n_ctx or math.min(model.n_ctx_train or 4096, 4096)
    local ctx, cerr = model:context { n_ctx = n_ctx, kv_type = opts.kv_type }
    if not ctx then error(cerr, 3) end
    self.ctx, self.own_ctx = ctx, true
  end
  self.seq = opts.seq or 0
  self.ctx:clear(self.seq)
  self.bos_text = token_text(model, model.vocab.bos)
  return self
end

function Chat:messages(extra)
  local msgs = {}
  if self.system then msgs[1] = { role = "system", content = self.system } end
  for _, m in ipairs(self.history) do msgs[#msgs + 1] = m end
  if extra then msgs[#msgs + 1] = extra end
  return msgs
end

function Chat:render(extra)
  local text, err = self.tmpl:render {
    messages = self:messages(extra),
    add_generation_prompt = true,
    bos_token = self.bos_text,
    eos_token = token_text(self.model, self.model.vocab.eos),
    tools = json.null,
    documents = json.null,
  }
  if not text then error("chat template: " .. err, 4) end
  return text
end

function Chat:tokenize(text)
  local v = self.model.vocab
  -- templates that write the BOS text themselves get it as a special token; others get
  -- the model's default BOS in front
  local bos = v.add_bos and self.bos_text ~= "" and text:sub(1, #self.bos_text) ~= self.bos_text
  return self.model:tokenize(text, { bos = bos and true or false, special = true })
end

-- Prepare the prompt for a user turn: drop old turns while it does not fit, then keep the
-- cached prefix and return the tokens still to prefill.
function Chat:prepare(text, opts)
  local user = { role = "user", content = text }
  local n_ctx = self.ctx.n_ctx
  -- room kept for the reply: max_tokens, but never more than a quarter of the context
  local max_tokens = math.min(opts.max_tokens or self.opts.max_tokens or 512, math.floor(n_ctx / 4))
  local truncated = false
  local ids = self:tokenize(self:render(user))
  while #ids + max_tokens > n_ctx and #self.history > 0 do
    -- drop the oldest exchange (a user turn and the reply that followed it)
    table.remove(self.history, 1)
    if self.history[1] and self.history[1].role == "assistant" then table.remove(self.history, 1) end
    truncated = true
    ids = self:tokenize(self:render(user))
  end
  if #ids >= n_ctx then return nil, ("the message does not fit in the context (%d tokens, n_ctx = %d)"):format(#ids, n_ctx) end
  -- keep the longest prefix already in the cache (at least one token is decoded again,
  -- so there are logits to sample from)
  local keep = 0
  local cached = self.tokens
  while keep < #cached and keep < #ids - 1 and cached[keep + 1] == ids[keep + 1] do keep = keep + 1 end
  self.ctx:truncate(self.seq, keep)
  local rest = {}
  for i = keep + 1, #ids do rest[#rest + 1] = ids[i] end
  self.pending_user = user
  self.prompt_ids = ids
  return rest, truncated, keep
end

local function merged(defaults, opts)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

-- The generation for one turn (a generate.lua state machine).
function Chat:turn(text, opts)
  if type(text) ~= "string" then error("bad argument #1 to 'say' (string expected, got " .. type(text) .. ")", 3) end
  opts = merged(self.opts, opts)
  opts.system, opts.template, opts.n_ctx = nil, nil, nil
  local rest, truncated, kept = self:prepare(text, opts)
  if not rest then return nil, truncated end
  opts.context, opts.seq, opts.keep = self.ctx, self.seq, true
  opts.max_tokens = opts.max_tokens or 512
  local g = generate.start(self.model, rest, opts)
  g.info.prompt_tokens = #rest
  g.info.cached_tokens = kept
  g.info.truncated = truncated
  return g
end

-- After a turn: record the reply and what the cache now holds.
function Chat:commit(g, reply)
  self.history[#self.history + 1] = self.pending_user
  self.history[#self.history + 1] = { role = "assistant", content = reply }
  local toks = {}
  for i, id in ipairs(self.prompt_ids) do toks[i] = id end
  local n = self.ctx:pos(self.seq)
  for _, id in ipairs(g.info.ids) do
    if #toks >= n then break end
    toks[#toks + 1] = id
  end
  self.tokens = toks
end

-- say(text, opts) -> reply, info | nil, err
function Chat:say(text, opts)
  local g, err = self:turn(text, opts)
  if not g then return nil, err end
  local parts = {}
  while true do
    local piece = g:next()
    if not piece then break end
    parts[#parts + 1] = piece
  end
  local reply = table.concat(parts)
  self:commit(g, reply)
  return reply, g.info
end

-- stream(text, opts) -> iterator of pieces (piece, info); the turn is recorded at the end
function Chat:stream(text, opts)
  local g, err = self:turn(text, opts)
  if not g then error(err, 2) end
  local parts = {}
  return function()
    local piece = g:next()
    if piece then
      parts[#parts + 1] = piece
      return piece, g.info
    end
    if not g.committed then
      g.committed = true
      self:commit(g, table.concat(parts))
    end
    return nil
  end
end

function Chat:reset(system)
  if system ~= nil then self.system = system end
  self.history, self.tokens = {}, {}
  self.ctx:clear(self.seq)
end

function Chat:close()
  if self.own_ctx and self.ctx then self.ctx:close() end
  self.ctx = nil
end

-- File: a magic line, a JSON header line, then the cache of the sequence.
local MAGIC = "moonlm-chat 1\n"

local function identity(model)
  return { arch = model.arch, n_params = model.n_params, n_vocab = model.n_vocab, n_layer = model.n_layer,
           n_embd = model.n_embd, name = model.meta["general.name"] }
end

function Chat:save(path)
  local state = self.ctx:state_save(self.seq)
  local options = {}
  for k, v in pairs(self.opts) do
    local t = type(v)
    if (t == "number" or t == "string" or t == "boolean") and k ~= "system" and k ~= "seq" then options[k] = v end
  end
  local header = json.encode({ model = identity(self.model), system = self.system or json.null, options = options,
                               history = self.history, tokens = self.tokens, kv_type = self.ctx.kv_type,
                               n_ctx = self.ctx.n_ctx, state_bytes = #state }, { compact = true })
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(MAGIC, header, "\n", state)
  f:close()
  if not ok then return nil, werr end
  return true
end

-- chat_load(model, path, opts) -> chat | nil, err
function _M.load(model, path, opts)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("*a")
  f:close()
  if data:sub(1, #MAGIC) ~= MAGIC then return nil, path .. ": not a moonlm chat file" end
  local nl = data:find("\n", #MAGIC + 1, true)
  if not nl then return nil, path .. ": damaged chat file (no header)" end
  local header, jerr = json.decode(data:sub(#MAGIC + 1, nl - 1))
  if type(header) ~= "table" or type(header.model) ~= "table" then
    return nil, path .. ": damaged chat file (" .. tostring(jerr or "bad header") .. ")"
  end
  local want, have = identity(model), header.model
  for _, k in ipairs { "arch", "n_params", "n_vocab", "n_layer", "n_embd", "name" } do
    if want[k] ~= have[k] and not (want[k] == nil and have[k] == json.null) then
      return nil, ("%s: saved with another model (%s: %s, this model has %s)"):format(path, k, tostring(have[k]), tostring(want[k]))
    end
  end
  local state = data:sub(nl + 1)
  if #state ~= header.state_bytes then return nil, path .. ": damaged chat file (cache truncated)" end
  local o = {}
  if type(header.options) == "table" then
    for k, v in pairs(header.options) do o[k] = v end
  end
  for k, v in pairs(opts or {}) do o[k] = v end
  o.system = header.system ~= json.null and header.system or nil
  o.n_ctx = o.n_ctx or header.n_ctx
  o.kv_type = o.kv_type or header.kv_type
  local chat = _M.new(model, o)
  local ok, lerr = chat.ctx:state_load(chat.seq, state)
  if not ok then
    chat:close()
    return nil, path .. ": " .. lerr
  end
  chat.history = header.history or {}
  chat.tokens = header.tokens or {}
  return chat
end

return _M
