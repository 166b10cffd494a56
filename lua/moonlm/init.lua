-- moonlm: large language models on the CPU, from Lua.
-- This file is the public API. The C module moonlm.core does the heavy lifting; the
-- objects here are thin Lua tables around its userdata, so generation, sampling and chat
-- (their own modules) can be written and changed in Lua.
local core = require "moonlm.core"

local setmetatable, type, error, select = setmetatable, type, error, select

local _M = {
  _VERSION = core.info().version,
  tensor = core.tensor,
  threads = core.threads,
  clock = core.clock,
  isa = core.isa,
  info = core.info,
  save = core.save,
  load_tensors = core.load_tensors,
}

-- A metadata value with an explicit GGUF type, for moonlm.save:
--   { ["llama.rope.freq_base"] = moonlm.gguf_value("f32", 10000) }
function _M.gguf_value(gguf_type, value)
  return { gguf_type = gguf_type, value = value }
end

-- tensor(...) is tensor.new(...)
setmetatable(_M.tensor, { __call = function(_, ...) return _M.tensor.new(...) end })

---------------------------------------------------------------------------------------
-- Models
---------------------------------------------------------------------------------------

local Model = {}
_M.Model = Model

-- Fields computed on first use: meta (all GGUF metadata), vocab (tokenizer facts).
local lazy = {
  meta = function(self) return self._ud:meta() end,
  vocab = function(self) return self._ud:vocab() end,
}

Model.__index = function(self, k)
  local m = Model[k]
  if m ~= nil then return m end
  local f = lazy[k]
  if f then
    local v = f(self)
    rawset(self, k, v)
    return v
  end
  return nil
end

local function wrap_model(ud)
  local info = ud:info()
  local self = setmetatable({ _ud = ud }, Model)
  for k, v in pairs(info) do self[k] = v end
  return self
end

-- load(path, { threads = n, vocab_only = false }) -> model | nil, err
function _M.load(path, opts)
  if type(path) ~= "string" then
    error(("bad argument #1 to 'load' (string expected, got %s)"):format(type(path)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'load' (table expected, got %s)"):format(type(opts)), 2)
  end
  opts = opts or {}
  if opts.threads then core.threads(opts.threads) end
  local ud, err = core.load(path, opts)
  if not ud then return nil, err end
  return wrap_model(ud)
end

-- attach(handle) -> model: the model another Lua state of this process loaded
function _M.attach(handle)
  local ud, err = core.attach_model(handle)
  if not ud then return nil, err end
  return wrap_model(ud)
end

function Model:close() self._ud:close() end
Model.__close = Model.close

function Model:__tostring()
  return ("moonlm.model(%s, %s, %d params)"):format(self.arch, self.path, self.n_params or 0)
end

-- tokenize(text, { bos = <model default>, eos = <model default>, special = false }) -> ids
-- Ids are 0-based, as in GGUF.
function Model:tokenize(text, opts)
  if type(text) ~= "string" then
    error(("bad argument #1 to 'tokenize' (string expected, got %s)"):format(type(text)), 2)
  end
  opts = opts or {}
  return self._ud:tokenize(text, opts.bos, opts.eos, opts.special)
end

-- detokenize(ids, { special = false, remove_special = false, strip_space = true }) -> text
function Model:detokenize(ids, opts) return self._ud:detokenize(ids, opts) end

-- piece(id [, special]) -> the bytes of one token (may be part of a UTF-8 character)
function Model:piece(id, special) return self._ud:piece(id, special) end

-- token(id) -> text as stored, score, type ("normal", "control", ...), ends generation
function Model:token(id) return self._ud:token(id) end

-- find_token(text) -> id | nil: the token whose stored text is exactly `text`
function Model:find_token(text) return self._ud:find_token(text) end

-- decoder({ special = false }) -> d; d:push(id) -> text that is always whole UTF-8
-- characters (split ones are held back until complete); d:flush() -> the rest
function Model:decoder(opts) return self._ud:decoder(opts) end

-- is_eog(id): does this token end generation (eos, eot, <|im_end|> ...)?
function Model:is_eog(id)
  local _, _, _, eog = self._ud:token(id)
  return eog
end

function Model:tensor(name) return self._ud:tensor(name) end
function Model:tensor_names() return self._ud:tensor_names() end

---------------------------------------------------------------------------------------
-- Contexts
---------------------------------------------------------------------------------------

local Context = {}
Context.__index = Context
_M.Context = Context

local function wrap_context(ud, model)
  local info = ud:info()
  return setmetatable({ _ud = ud, model = model, n_ctx = info.n_ctx, seqs = info.seqs,
                        kv_type = info.kv_type, handle = info.handle }, Context)
end

-- model:context{ n_ctx = min(n_ctx_train, 4096), n_batch = 512, kv_type = "f16", seqs = 1 }
function Model:context(opts)
  local ud, err = self._ud:context(opts)
  if not ud then return nil, err end
  return wrap_context(ud, self)
end

-- attach_context(handle) -> context: a context another Lua state created
function _M.attach_context(handle)
  local ud, err = core.attach_context(handle)
  if not ud then return nil, err end
  return wrap_context(ud, wrap_model(ud:model()))
end

-- decode(ids, { seq = 0, logits = "last" | "all" | "none" }) -> logits | nil, err
-- The logits tensor ({n_vocab}, or {n, n_vocab} with "all") is valid until it is collected;
-- a full context returns nil, "context full (n_ctx = N)" and leaves the context as it was.
function Context:decode(ids, opts) return self._ud:decode(ids, opts) end
-- decode_batch({ {ids, seq = s, logits = "last"}, ... }) -> { logits per entry }
function Context:decode_batch(entries) return self._ud:decode_batch(entries) end
-- hidden(ids [, seq]) -> final hidden states {n, n_embd} (after the output norm)
function Context:hidden(ids, seq) return self._ud:hidden(ids, seq) end
function Context:pos(seq) return self._ud:pos(seq) end
function Context:clear(seq) return self._ud:clear(seq) end
function Context:truncate(seq, n) return self._ud:truncate(seq, n) end
function Context:copy(from, to) return self._ud:copy(from, to) end
function Context:used() return self._ud:info().used end
function Context:state_save(seq) return self._ud:state_save(seq) end
function Context:state_load(seq, bytes) return self._ud:state_load(seq, bytes) end
function Context:close() self._ud:close() end
Context.__close = Context.close

return _M
