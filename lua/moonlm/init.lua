-- moonlm: large language models on the CPU, from Lua.
-- This file is the public API. The C module moonlm.core does the heavy lifting; the
-- objects here are thin Lua tables around its userdata, so generation, sampling and chat
-- (their own modules) can be written and changed in Lua.
local core = require "moonlm.core"
local options = require "moonlm.options"

local setmetatable, type, error, select = setmetatable, type, error, select

local _M = {
  _VERSION = core.info().version,
  tensor = core.tensor,
  threads = core.threads,
  clock = core.clock,

  save = core.save,
  load_tensors = core.load_tensors,
  kv_cache = core.kv_cache, -- lm.kv_cache{ layers, kv_heads, head_dim, n_ctx, type, seqs }
  grammar = core.grammar, -- gbnf / regex / choice / attach / vocab / apply (src/lua_grammar.c)
}

-- isa([level]) -> the kernel level in use ("ref", "avx2", "avx512", "amx"); a level forces
-- it (lower than the CPU's only). lm.info() has the details: kernels (the level of each
-- weight type's dot products) and kernel_tables (each type's dot, gemv and gemm tables).
function _M.isa(level) return (core.isa(level)) end

-- info() -> { version, isa, isa_supported, levels, threads, max_threads, cpu, features,
-- kernels, kernel_tables, limits, ... }
function _M.info()
  local info = core.info()
  local _, kernels, tables = core.isa()
  info.kernels, info.kernel_tables = kernels, tables
  info.limits = _M.limits()
  return info
end

-- limits{ max_tensor_bytes = n } -> the limits now: the largest tensor storage or KV cache (K and
-- V of all its layers) this process allocates (a larger one is an error, not minutes of paging);
-- by default half the physical memory. Process-wide; 0 restores the default.
function _M.limits(opts)
  options.check("limits", opts, 1)
  if opts and opts.max_tensor_bytes then core.storage_limit(opts.max_tensor_bytes) end
  return { max_tensor_bytes = core.storage_limit() }
end

-- A metadata value with an explicit GGUF type, for moonlm.save:
--   { ["llama.rope.freq_base"] = moonlm.gguf_value("f32", 10000) }
function _M.gguf_value(gguf_type, value)
  return { gguf_type = gguf_type, value = value }
end

-- tensor(...) is tensor.new(...)
setmetatable(_M.tensor, { __call = function(_, ...) return _M.tensor.new(...) end })

-- sampler(opts) -> s; s:sample(logits, history) -> id (see moonlm/sampler.lua)
function _M.sampler(opts) return require("moonlm.sampler").new(opts) end

---------------------------------------------------------------------------------------
-- Models
---------------------------------------------------------------------------------------

local Model = {}
_M.Model = Model

-- Fields computed on first use: meta (all GGUF metadata), vocab (tokenizer facts; false for a
-- weights-only file without tokenizer.ggml.model, whose tokenize/generate raise "this model has
-- no tokenizer").
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

-- load(path, { threads = n, vocab_only = false, prepare = false, progress = fn }) -> model | nil, err
-- prepare: pack the weights for the kernels now (else the first decode does), progress(done,
-- total) reporting it in bytes; progress returning false cancels: nil, "preparing the
-- weights was cancelled", and nothing stays loaded.
function _M.load(path, opts)
  if type(path) ~= "string" then
    error(("bad argument #1 to 'load' (string expected, got %s)"):format(type(path)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'load' (table expected, got %s)"):format(type(opts)), 2)
  end
  opts = options.check("load", opts, 2) or {}
  if opts.threads then core.threads(opts.threads) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    error(("bad argument #2 to 'load' (option 'progress' must be a function, got %s)"):format(type(opts.progress)), 2)
  end
  if opts.progress ~= nil and not opts.prepare then
    error("bad argument #2 to 'load' (option 'progress' reports the packing of option 'prepare', which is not set)", 2)
  end
  local ud, err = core.load(path, opts)
  if not ud then return nil, err end
  if opts.prepare and not opts.vocab_only then
    -- pack now, reporting progress; a cancel or an error closes what was loaded
    local ok, secs, perr = pcall(ud.prepare, ud, opts.progress)
    if not ok or not secs then
      ud:close()
      if not ok then error(secs, 0) end
      return nil, perr
    end
  end
  return wrap_model(ud)
end

-- attach(handle) -> model: the model another Lua state of this process loaded
function _M.attach(handle)
  local ud, err = core.attach_model(handle)
  if not ud then return nil, err end
  return wrap_model(ud)
end

function Model:close()
  if self._gen_ctx then self._gen_ctx:close() end
  if self._embed_ctx then self._embed_ctx:close() end
  self._ud:close()
end
Model.__close = Model.close

function Model:__tostring()
  return ("moonlm.model(%s, %s, %d params)"):format(self.arch, self.path, self.n_params or 0)
end

-- tokenize(text, { bos = <model default>, eos = <model default>, special = false,
-- prefix = true }) -> ids; prefix = false: no SentencePiece dummy-prefix space (for text
-- that continues other text)
-- Ids are 0-based, as in GGUF.
function Model:tokenize(text, opts)
  if type(text) ~= "string" then
    error(("bad argument #1 to 'tokenize' (string expected, got %s)"):format(type(text)), 2)
  end
  opts = options.check("tokenize", opts, 2) or {}
  return self._ud:tokenize(text, opts.bos, opts.eos, opts.special, opts.prefix == false)
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

-- generate(prompt, opts) -> text, info; stream(prompt, opts) -> iterator of pieces.
-- Options and info are documented in moonlm/generate.lua.
function Model:generate(prompt, opts) return require("moonlm.generate").generate(self, prompt, opts) end
function Model:stream(prompt, opts) return require("moonlm.generate").stream(self, prompt, opts) end

-- chat{ system = ..., template = ..., n_ctx = ... } -> session (see moonlm/chat.lua)
function Model:chat(opts) return require("moonlm.chat").new(self, opts) end
-- apply_template(messages, { add_generation_prompt = true, template = ... }) -> text | nil, err
function Model:apply_template(messages, opts) return require("moonlm.chat").apply_template(self, messages, opts) end
-- chat_load(model, path) -> session | nil, err: a session saved with session:save(path)
function _M.chat_load(model, path, opts) return require("moonlm.chat").load(model, path, opts) end

-- embed(text | {texts}, opts) -> pooled rows {n, n_embd}, what llama.cpp's embeddings API
-- returns; with pooling "none", a table of {n_tokens, n_embd} tensors, one per text.
--   pooling    "mean" | "cls" | "last" | "none" | "rank"; default: the file's pooling_type
--              (BERT models carry one), else "mean". "rank" is a reranker's score, {n, 1}.
--   normalize  [false] divide each pooled row by its L2 norm
--   truncate   [false] cut texts longer than an encoder's positions (keeping its [SEP])
--              instead of failing
-- Texts go through together, one sequence each, in groups that fit a context.
local POOLINGS = { none = true, mean = true, cls = true, last = true, rank = true }

local function norm_rows(v)
  return v / math.max(v:square():sum() ^ 0.5, 1e-12)
end

function Model:embed(texts, opts)
  opts = options.check("embed", opts, 2) or {}
  local single = type(texts) == "string"
  if single then texts = { texts } end
  if type(texts) ~= "table" then
    error(("bad argument #1 to 'embed' (string or table of strings expected, got %s)"):format(type(texts)), 2)
  end
  if #texts == 0 then error("bad argument #1 to 'embed' (an empty table: no text to embed)", 2) end
  local pooling = opts.pooling or self.pooling or "mean"
  if not POOLINGS[pooling] then
    error(("bad argument #2 to 'embed' (pooling must be \"mean\", \"cls\", \"last\", \"none\" or \"rank\", got %q)"):format(tostring(pooling)), 2)
  end
  if pooling == "rank" and not self:tensor("cls.output.weight") and not self:tensor("cls.weight") then
    error("bad argument #2 to 'embed' (pooling \"rank\" needs a reranker's classifier head, which this model has not)", 2)
  end
  local T = _M.tensor
  local encoder = self.causal == false
  local max_len = encoder and self.n_ctx_train or math.huge
  local batch = {}
  for i, text in ipairs(texts) do
    if type(text) ~= "string" then error(("bad argument #1 to 'embed' (item %d is not a string)"):format(i), 2) end
    local ids = self:tokenize(text)
    if #ids == 0 then ids = { self.vocab.bos or 0 } end
    if #ids > max_len then
      if not opts.truncate then
        return nil, ("text %d has %d tokens, more than the %d positions of %s (truncate = true cuts it)"):format(
          i, #ids, max_len, self.arch)
      end
      local last = ids[#ids]
      for k = #ids, max_len + 1, -1 do ids[k] = nil end
      if self.vocab.add_eos and last == self.vocab.eos then ids[max_len] = last end
    end
    batch[i] = ids
  end
  -- an encoder reads each group in one pass: a group is at most n_batch tokens
  local seqs = math.min(#batch, encoder and 64 or 16)
  local need = 0
  for _, ids in ipairs(batch) do need = math.max(need, #ids) end
  local budget = encoder and 1024 or math.max(need * seqs, 512)
  local ctx = self._embed_ctx
  if not ctx or ctx.n_ctx < need or ctx.seqs < seqs or (encoder and ctx.n_ctx < budget) then
    if ctx then ctx:close() end
    local err
    ctx, err = self:context { n_ctx = budget, n_batch = encoder and budget or nil, seqs = math.max(seqs, 1),
                              kv_type = "f32" }
    if not ctx then return nil, err end
    self._embed_ctx = ctx
  end
  local rows, i = {}, 1
  while i <= #batch do
    local group, used = {}, 0
    while i <= #batch and #group < ctx.seqs and used + #batch[i] <= ctx.n_ctx do
      group[#group + 1] = batch[i]
      used = used + #batch[i]
      i = i + 1
    end
    if not encoder then ctx:clear() end
    local hs, err = ctx:hidden(group)
    if not hs then return nil, err end
    for g, h in ipairs(hs) do
      local n = #group[g]
      local v
      if pooling == "none" then v = h:clone()
      elseif pooling == "mean" then v = h:mean(1)
      elseif pooling == "last" then v = h[n]:clone()
      else v = h[1]:clone() end
      if pooling == "rank" then v = self:_rank(v) end
      if opts.normalize then v = norm_rows(v) end
      rows[#rows + 1] = v
    end
  end
  if not encoder then ctx:clear() end
  if pooling == "none" then return rows end
  return T.stack(rows, 1)
end

-- A reranker's score from the hidden state of its first token ([CLS]), as llama.cpp's
-- rank pooling: cls_out(tanh(cls(x))) with the biases the file has.
function Model:_rank(x)
  local function lin(v, w, b)
    local y = v:view(1, -1):linear(self:tensor(w)):view(-1)
    local bias = self:tensor(b)
    if bias then y = y + bias:to("f32") end
    return y
  end
  if self:tensor("cls.weight") then x = lin(x, "cls.weight", "cls.bias"):tanh() end
  if self:tensor("cls.output.weight") then x = lin(x, "cls.output.weight", "cls.output.bias") end
  return x
end

-- prepare([progress]) -> seconds | nil, err: pack the weights for the kernel level now
-- (otherwise the first decode does it); loading itself only maps the file.
-- progress(done, total) is called after each matrix (bytes of weights); false cancels.
function Model:prepare(progress) return self._ud:prepare(progress) end

-- tensor(name) -> a view of the tensor in the mapping, or nil. x:linear(w) on a model's
-- matrix runs its prepared (packed) copy, as the forward pass does.
function Model:tensor(name) return self._ud:tensor(name) end
function Model:tensor_names() return self._ud:tensor_names() end
-- weights([pattern]) -> iterator of name, tensor over every tensor of the file, in file order
-- (names matching the Lua pattern only, when given)
function Model:weights(pattern)
  if pattern ~= nil and type(pattern) ~= "string" then
    error(("bad argument #1 to 'weights' (string pattern expected, got %s)"):format(type(pattern)), 2)
  end
  local ud, names, i = self._ud, self._ud:tensor_names(), 0
  return function()
    while true do
      i = i + 1
      local name = names[i]
      if name == nil then return nil end
      if not pattern or name:find(pattern) then return name, ud:tensor(name) end
    end
  end
end

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
  options.check("context", opts, 2) -- counting self, as the C binding does
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
-- truncate(seq, n) -> kept: keep the first n tokens of seq. Sliding-window layers (gemma2/3)
-- hold only the last positions, so a rewind further back than they reach keeps 0 tokens
-- (decode the sequence again); the result says how many were kept.
function Context:truncate(seq, n) return self._ud:truncate(seq, n) end
function Context:copy(from, to) return self._ud:copy(from, to) end
-- shift(seq, n_keep, n_discard) -> true | nil, err: drop positions [n_keep, n_keep +
-- n_discard) of seq; the later tokens move down, their cached keys rotated (RoPE) instead of
-- decoded again (llama.cpp's context shift)
function Context:shift(seq, n_keep, n_discard) return self._ud:shift(seq, n_keep, n_discard) end
function Context:used() return self._ud:info().used end
-- info() -> { n_ctx, seqs, used, kv_type, kv_bytes (memory of the key/value caches), ... }
function Context:info() return self._ud:info() end
function Context:state_save(seq) return self._ud:state_save(seq) end
function Context:state_load(seq, bytes) return self._ud:state_load(seq, bytes) end
function Context:close() self._ud:close() end
Context.__close = Context.close

-- lm.grammar: JSON Schema -> grammar (moonlm.grammar_schema) beside the engine's constructors
_M.grammar = require("moonlm.grammar_schema").install(_M.grammar)

return _M
