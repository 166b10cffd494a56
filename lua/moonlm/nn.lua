-- moonlm.nn: building blocks for models written in Lua, inference only (no autograd).
--
--   local nn = require "moonlm.nn"
--   local att = nn.Attention { n_embd = 256, n_head = 4, n_head_kv = 2, rope = { base = 1e4 } }
--   att:load(model, "blk.0")          -- blk.0.attn_q.weight, ... from a loaded GGUF
--   local y = att:forward(x, { kv = kv, layer = 0, seq = 0, pos = 0 })
--
-- A module holds parameters (tensors, under the names GGUF files use: "weight", "bias")
-- and children (modules, under the names of their GGUF prefixes: "attn_q", "ffn_up" ...).
-- m:load(src, prefix) fills every parameter from src, a model (lm.load) or a table of
-- tensors (lm.load_tensors), under prefix .. "." .. child .. "." .. name; "%d" in a
-- prefix is a container's item index counted from 0 (nn.Sequential's "blk.%d"). A missing
-- required parameter, or one of the wrong shape, is an error naming it. m:state() gives the
-- same names -> tensors, for lm.save (nn.save does both). Shapes follow moonlm's tensors:
-- x is {n, features} (a row per token), a Linear's weight {out, in} as GGUF stores it.
local lm = require "moonlm"
local T = lm.tensor

local type, error, ipairs, pairs, setmetatable, tostring, select = type, error, ipairs, pairs, setmetatable,
  tostring, select
local fmt = string.format

-- the tensor methods the blocks call on every forward, taken once from tensor.methods: a
-- method call on a tensor first looks the name up through the tensor's __index (a C call
-- in Lua 5.4), and a decode runs a dozen ops per layer
local M = T.methods
local t_size, t_linear, t_linear_many, t_rmsnorm, t_layernorm, t_silu_mul_ = M.size, M.linear, M.linear_many,
  M.rmsnorm, M.layernorm, M.silu_mul_

local nn = {}

-- products that read the same input run together (x:linear_many: q, k and v; gate and up);
-- false runs them one by one (the same results)
nn.fuse = true

---------------------------------------------------------------------------------------
-- Module: parameters, children, loading and saving
---------------------------------------------------------------------------------------

local Module = {}
Module.__index = Module
nn.Module = Module

-- class(name [, parent]) -> a new module class; Class(opts) builds one through Class.init
local function class(name, parent)
  local c = {}
  c.__index = c
  c.__name = name
  c.__tostring = function(self) return self:describe() end
  setmetatable(c, { __index = parent or Module, __call = function(cls, ...)
    local self = setmetatable({ _params = {}, _children = {} }, cls)
    cls.init(self, ...)
    return self
  end })
  return c
end
nn.class = class

function Module:init() end

-- param(name, shape, optional [, value]): declare a parameter (shape: table of sizes, or nil
-- for any shape); its tensor is self[name]
function Module:param(name, shape, optional, value)
  self._params[#self._params + 1] = { name = name, shape = shape, optional = optional }
  self[name] = value
  return self
end

-- child(name, module): a sub-module, self[key or name] = module, loaded under prefix.name
function Module:child(name, module, key)
  self._children[#self._children + 1] = { name = name, module = module }
  self[key or name] = module
  return module
end

-- buffers(n, sizes) -> f32 tensors {n, size}, kept for the next call with the same sizes
-- and n rows (one set for one-row decodes, one for the last other row count), shared by
-- every module: layers run one after the other, and the products written into them
-- (x:linear_many's outs) are used up inside one module's forward, never returned. So a
-- decode allocates no activation buffers, and a prefill keeps one set, not one per layer.
local shared_buffers = {}
-- the keys of a sizes table (a module keeps its own: no string is built per call)
local size_keys = setmetatable({}, { __mode = "k" })
local function buffers(n, sizes)
  local keys = size_keys[sizes]
  if not keys then
    local k = table.concat(sizes, ",")
    keys = { k .. "/1", k .. "/n" }
    size_keys[sizes] = keys
  end
  local key = n == 1 and keys[1] or keys[2]
  local b = shared_buffers[key]
  if not b or b.n ~= n then
    b = { n = n }
    for i, c in ipairs(sizes) do b[i] = T.empty(n, c) end
    shared_buffers[key] = b
  end
  return b
end
nn.buffers = buffers

local function join(prefix, name)
  if prefix == nil or prefix == "" then return name end
  return prefix .. "." .. name
end

local function shape_str(s)
  local parts = {}
  for i, v in ipairs(s) do parts[i] = tostring(v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function get_tensor(src, name)
  if type(src) == "table" and type(src.tensor) == "function" then return src:tensor(name) end
  if type(src) == "table" then return src[name] end
  error(fmt("bad argument #1 to 'load' (a model or a table of tensors expected, got %s)", type(src)), 4)
end

-- declared(prefix) -> iterator of full name, tensor (nil when absent), module, declaration
function Module:declared(prefix)
  local out = {}
  local function walk(m, p)
    for _, d in ipairs(m._params) do out[#out + 1] = { join(p, d.name), m[d.name], m, d } end
    for i, c in ipairs(m._children) do
      local cp = c.name
      if cp:find("%%d") then cp = cp:gsub("%%d", tostring(i - 1)) end
      walk(c.module, cp == "" and p or join(p, cp))
    end
  end
  walk(self, prefix)
  local i = 0
  return function()
    i = i + 1
    local e = out[i]
    if e then return e[1], e[2], e[3], e[4] end
  end
end

-- parameters(prefix) -> iterator of full name, tensor over the parameters present
function Module:parameters(prefix)
  local it = self:declared(prefix)
  return function()
    while true do
      local name, t = it()
      if name == nil or t ~= nil then return name, t end
    end
  end
end

-- load(src, prefix) -> self: every parameter from src (a model or a table name -> tensor)
function Module:load(src, prefix)
  if prefix ~= nil and type(prefix) ~= "string" then
    error(fmt("bad argument #2 to 'load' (string prefix expected, got %s)", type(prefix)), 2)
  end
  for name, _, m, d in self:declared(prefix) do
    local t = get_tensor(src, name)
    if t == nil then
      if not d.optional then error(fmt("load: tensor '%s' not found", name), 2) end
    elseif d.shape then
      local s = t:shape()
      local ok = #s == #d.shape
      for k = 1, #d.shape do ok = ok and s[k] == d.shape[k] end
      if not ok then
        error(fmt("load: tensor '%s' has shape %s, %s expects %s", name, shape_str(s), m.__name or "module",
          shape_str(d.shape)), 2)
      end
    end
    m[d.name] = t
  end
  self:loaded()
  return self
end

-- called after load: modules that prepare something from their parameters override it
function Module:loaded()
  for _, c in ipairs(self._children) do c.module:loaded() end
end

-- pack() -> self: every Linear's weight packed for the kernels, as a model's matrices are
-- (weights from lm.load_tensors or made in Lua; a model's own are packed already)
function Module:pack()
  for _, c in ipairs(self._children) do c.module:pack() end
  return self
end

-- state(prefix) -> { name = tensor } of every parameter present, for lm.save
function Module:state(prefix)
  local out = {}
  for name, t in self:parameters(prefix) do out[name] = t end
  return out
end

-- save(path, module [, metadata [, prefix]]) -> true | nil, err
function nn.save(path, module, meta, prefix)
  return lm.save(path, module:state(prefix), meta)
end

function Module:describe()
  local kids = {}
  for _, c in ipairs(self._children) do kids[#kids + 1] = c.name end
  return fmt("nn.%s(%s)", self.__name or "Module", table.concat(kids, ", "))
end

---------------------------------------------------------------------------------------
-- Linear, Embedding, norms
---------------------------------------------------------------------------------------

-- Linear{ n_in, n_out, bias = false, optional = false, weight = t, b = t }: y = x · weightᵀ (+ bias).
-- The weight is any type x:linear takes; a model's matrix runs its packed copy.
local Linear = class("Linear")
nn.Linear = Linear

function Linear:init(o)
  o = o or {}
  self.n_in, self.n_out = o.n_in, o.n_out
  local shape = (o.n_in and o.n_out) and { o.n_out, o.n_in } or nil
  self:param("weight", shape, o.optional, o.weight)
  self:param("bias", o.n_out and { o.n_out } or nil, not o.bias, o.b)
end

function Linear:forward(x)
  local w = self.packed or self.weight
  if self.bias then return t_linear(x, w, self.bias) end
  return t_linear(x, w)
end

-- pack(): the weight packed once for the kernels (w:pack()); load() drops it
function Linear:pack()
  if self.weight and not self.packed then self.packed = self.weight:pack() end
  return self
end

function Linear:loaded() self.packed = nil end

function Linear:describe()
  local s = self.weight and self.weight:shape()
  return fmt("nn.Linear(%s -> %s, %s%s)", s and s[2] or "?", s and s[1] or "?", self.weight and self.weight.dtype or "?",
    self.bias and ", bias" or "")
end

-- Embedding{ n_vocab, n_embd }: rows of weight for token ids (0-based), as f32 {n, n_embd}
local Embedding = class("Embedding")
nn.Embedding = Embedding

function Embedding:init(o)
  o = o or {}
  self:param("weight", (o.n_vocab and o.n_embd) and { o.n_vocab, o.n_embd } or nil, false, o.weight)
end

function Embedding:forward(ids) return self.weight:embedding(ids) end

-- RMSNorm{ n_embd, eps = 1e-5 }: x / rms(x) · weight
local RMSNorm = class("RMSNorm")
nn.RMSNorm = RMSNorm

function RMSNorm:init(o)
  o = o or {}
  self.eps = o.eps or 1e-5
  self:param("weight", o.n_embd and { o.n_embd } or nil, o.affine == false, o.weight)
end

function RMSNorm:forward(x)
  if self.weight then return t_rmsnorm(x, self.weight, self.eps) end
  return t_rmsnorm(x, self.eps)
end

-- LayerNorm{ n_embd, eps = 1e-5, bias = true }: (x - mean) / std · weight + bias
local LayerNorm = class("LayerNorm")
nn.LayerNorm = LayerNorm

function LayerNorm:init(o)
  o = o or {}
  self.eps = o.eps or 1e-5
  self:param("weight", o.n_embd and { o.n_embd } or nil, false, o.weight)
  self:param("bias", o.n_embd and { o.n_embd } or nil, o.bias == false, o.b)
end

function LayerNorm:forward(x) return t_layernorm(x, self.weight, self.bias, self.eps) end

---------------------------------------------------------------------------------------
-- MLP: SwiGLU / GeGLU (gated) and GELU (plain)
---------------------------------------------------------------------------------------

-- MLP{ n_embd, n_ff, kind = "swiglu" | "geglu" | "gelu" | "relu" | "silu", bias = false,
--      fused = false, act = <the kind's> }
-- gated: down(act(gate(x)) * up(x)); plain: down(act(up(x))). GGUF names: ffn_gate,
-- ffn_up, ffn_down; fused: ffn_up holds [gate; up] (2·n_ff rows, as phi3 stores it).
-- act names the activation's tensor method instead of the kind's (silu, gelu ...):
-- "gelu_ggml" is GELU rounded as llama.cpp computes it.
local MLP = class("MLP")
nn.MLP = MLP

local ACT = { swiglu = "silu_", geglu = "gelu_", gelu = "gelu_", relu = "relu_", silu = "silu_" }
local GATED = { swiglu = true, geglu = true }

function MLP:init(o)
  o = o or {}
  local kind = o.kind or "swiglu"
  if not ACT[kind] then
    error(fmt("bad argument #1 to 'MLP' (kind must be \"swiglu\", \"geglu\", \"gelu\", \"relu\" or \"silu\", got %s)",
      tostring(kind)), 3)
  end
  local act = ACT[kind]
  if o.act ~= nil then -- another activation: the name of a tensor method ("gelu_ggml")
    act = tostring(o.act) .. "_"
    if type(T.zeros(1)[act]) ~= "function" then
      error(fmt("bad argument #1 to 'MLP' (act: no in-place tensor method '%s')", act), 3)
    end
  end
  self.kind, self.act, self.gated, self.fused, self.n_ff = kind, act, GATED[kind], o.fused, o.n_ff
  local E, F = o.n_embd, o.n_ff
  if self.gated and not o.fused then
    self:child("ffn_gate", Linear { n_in = E, n_out = F, bias = o.bias }, "gate")
  end
  self:child("ffn_up", Linear { n_in = E, n_out = (F and o.fused) and 2 * F or F, bias = o.bias }, "up")
  self:child("ffn_down", Linear { n_in = F, n_out = E, bias = o.bias }, "down")
  if o.fused and not self.gated then error("bad argument #1 to 'MLP' (fused needs a gated kind)", 3) end
end

-- the gate's size may change with what is loaded
function MLP:loaded()
  self._sizes = nil
  Module.loaded(self)
end

function MLP:forward(x)
  local h
  if self.fused then
    local gu = self.up:forward(x)
    local F = math.floor(gu:size(2) / 2)
    h = gu:narrow(2, 1, F):contiguous()
    h[self.act](h)
    h:mul_(gu:narrow(2, F + 1, F))
  elseif self.gated then
    local gate, up = self.gate, self.up
    local u
    if nn.fuse and not (gate.bias or up.bias) then
      local sizes = self._sizes
      if not sizes then
        local F = gate.weight:size(1)
        sizes = { F, F }
        self._sizes = sizes
      end
      h, u = t_linear_many(x, { gate.packed or gate.weight, up.packed or up.weight }, nil, buffers(t_size(x, 1), sizes))
    else
      h, u = gate:forward(x), up:forward(x)
    end
    if self.act == "silu_" then t_silu_mul_(h, u) else h[self.act](h):mul_(u) end
  else
    h = self.up:forward(x)
    h[self.act](h)
  end
  return self.down:forward(h)
end

---------------------------------------------------------------------------------------
-- Attention
---------------------------------------------------------------------------------------

-- Attention{ n_embd, n_head, n_head_kv = n_head, head_dim = n_embd / n_head,
--            rope = { mode = "normal" | "neox", base = 10000, dims = head_dim, scaling } | false,
--            bias = false, out_bias = bias, fused = false, scale = 1/√head_dim, softcap,
--            window, alibi = slopes, clamp = c }
-- GGUF names: attn_q, attn_k, attn_v, attn_output; fused: attn_qkv, rows [q; k; v].
-- forward(x {n, n_embd}, state) with state = { pos = p (position of the first row) and
--   kv = lm.kv_cache, layer = l, seq = s }: the rows' keys and values go into the cache and
--   the queries see the whole sequence (causal), in one kv:attend, the rows at the
--   positions after what the layer holds of the sequence (p, as nn.Context keeps it);
--   without kv, the rows (at p, p+1, ...) attend to each other only.
local Attention = class("Attention")
nn.Attention = Attention

function Attention:init(o)
  o = o or {}
  local E, H = o.n_embd, o.n_head
  if not H then error("bad argument #1 to 'Attention' (n_head expected)", 3) end
  local Hk = o.n_head_kv or H
  if H % Hk ~= 0 then error(fmt("bad argument #1 to 'Attention' (%d heads cannot share %d key/value heads)", H, Hk), 3) end
  local D = o.head_dim or (E and math.floor(E / H))
  self.n_head, self.n_head_kv, self.head_dim = H, Hk, D
  self.rope = o.rope ~= false and (o.rope or {}) or nil
  if self.rope then
    local r = {}
    for k, v in pairs(self.rope) do r[k] = v end
    if r.freqs == nil then
      -- frequencies once: the rotation then reads them instead of recomputing
      r.freqs = T.rope_freqs { dims = r.dims or D, base = r.base, scaling = r.scaling }
      r.base, r.scaling = nil, nil
    end
    self.rope = r
  end
  self.opts = { causal = o.causal ~= false, scale = o.scale, softcap = o.softcap, window = o.window, alibi = o.alibi,
                heads = H }
  -- kv:attend's: the same with the rotation, which it does on the way
  self.attend_opts = { causal = self.opts.causal, scale = o.scale, softcap = o.softcap, window = o.window,
                       alibi = o.alibi, rope = self.rope or false }
  self._osizes = { H * D }
  self.clamp = o.clamp
  self.fused = o.fused
  local out_bias = o.out_bias
  if out_bias == nil then out_bias = o.bias end
  if o.fused then
    self:child("attn_qkv", Linear { n_in = E, n_out = E and (H + 2 * Hk) * D, bias = o.bias }, "wqkv")
  else
    self:child("attn_q", Linear { n_in = E, n_out = E and H * D, bias = o.bias }, "wq")
    self:child("attn_k", Linear { n_in = E, n_out = E and Hk * D, bias = o.bias }, "wk")
    self:child("attn_v", Linear { n_in = E, n_out = E and Hk * D, bias = o.bias }, "wv")
  end
  self:child("attn_output", Linear { n_in = E and H * D, n_out = E, bias = out_bias }, "wo")
end

-- q, k, v as rows {n, heads·head_dim} (views, maybe with a row stride), and with heads
-- true q and k as heads {n, heads, head_dim} over the same memory
function Attention:qkv(x, heads)
  local H, Hk, D = self.n_head, self.n_head_kv, self.head_dim
  local n = t_size(x, 1)
  if self.fused then
    local qkv = self.wqkv:forward(x)
    if self.clamp then qkv:clamp_(-self.clamp, self.clamp) end
    local q, k, v = qkv:narrow(2, 1, H * D), qkv:narrow(2, H * D + 1, Hk * D), qkv:narrow(2, (H + Hk) * D + 1, Hk * D)
    if not heads then return q, k, v end
    local h3 = qkv:view(n, H + 2 * Hk, D)
    return q, k, v, h3:narrow(2, 1, H), h3:narrow(2, H + 1, Hk)
  end
  local q, k, v
  local wq, wk, wv = self.wq, self.wk, self.wv
  if nn.fuse and not (wq.bias or wk.bias or wv.bias) then
    -- one activation pass and one thread team for the three products, into buffers
    local sizes = self._sizes
    if not sizes then
      sizes = { H * D, Hk * D, Hk * D }
      self._sizes = sizes
    end
    q, k, v = t_linear_many(x, { wq.packed or wq.weight, wk.packed or wk.weight, wv.packed or wv.weight }, nil,
      buffers(n, sizes))
  else
    q, k, v = wq:forward(x), wk:forward(x), wv:forward(x)
  end
  if self.clamp then
    q:clamp_(-self.clamp, self.clamp)
    k:clamp_(-self.clamp, self.clamp)
    v:clamp_(-self.clamp, self.clamp)
  end
  if not heads then return q, k, v end
  return q, k, v, q:view(n, H, D), k:view(n, Hk, D)
end

function Attention:forward(x, state)
  state = state or {}
  local kv = state.kv
  if kv then
    -- rotation, the cache's append and the attention in one call, into a buffer wo reads
    local q, k, v = self:qkv(x)
    local o, err = kv:attend(state.layer or 0, state.seq or 0, q, k, v, self.attend_opts,
      buffers(t_size(q, 1), self._osizes)[1])
    if not o then return nil, err end
    return self.wo:forward(o)
  end
  local n, Hk, D = t_size(x, 1), self.n_head_kv, self.head_dim
  local q, k, v, q3, k3 = self:qkv(x, true)
  if self.rope then -- in place, on {heads, n, head_dim} views of the rows
    local pos = state.pos or 0
    q3:transpose(1, 2):rope_(pos, self.rope)
    k3:transpose(1, 2):rope_(pos, self.rope)
  end
  local o = T.attention(q, k3:transpose(1, 2):contiguous(), v:contiguous():view(n, Hk, D):transpose(1, 2):contiguous(),
    self.opts)
  return self.wo:forward(o)
end

---------------------------------------------------------------------------------------
-- Sequential
---------------------------------------------------------------------------------------

-- Sequential(name_pattern, { modules }) or Sequential{ modules }: forward runs them in
-- order (each module's forward(x, ...)); its items load under name_pattern with "%d" the
-- 0-based index ("blk.%d"), or under their index when no pattern is given.
local Sequential = class("Sequential")
nn.Sequential = Sequential

function Sequential:init(a, b)
  local pattern, mods = a, b
  if type(a) == "table" then pattern, mods = nil, a end
  self.n = 0
  for i, m in ipairs(mods or {}) do self:add(m, pattern and (pattern:find("%%d") and pattern or pattern .. ".%d")
    or tostring(i - 1)) end
end

function Sequential:add(m, name)
  self.n = self.n + 1
  self:child(name or tostring(self.n - 1), m, self.n)
  return self
end

function Sequential:forward(x, ...)
  for i = 1, self.n do x = self[i]:forward(x, ...) end
  return x
end

function Sequential:__len() return self.n end

---------------------------------------------------------------------------------------
-- Contexts and models: a net written in Lua behind generate / stream / chat
---------------------------------------------------------------------------------------

-- A net is any object with
--   net:forward(ids, state) -> logits    state = { kv = lm.kv_cache, seq = s, pos = p,
--                                          logits = "last" | "all" }: ids (0-based token
--                                          ids) are positions p, p+1, ... of sequence s;
--                                          their keys and values go into kv; the logits
--                                          of the last row ({n_vocab}) or of all rows
--                                          ({n, n_vocab}); nil, err when kv is full
--   net.n_layer, net.n_head_kv, net.head_dim, net.n_vocab   (the cache's shape)
-- nn.Context(net, { n_ctx, kv_type = "f16", seqs = 1 }) gives it the operations of a
-- context (decode, pos, clear, truncate, copy, used, info, close) over an lm.kv_cache;
-- nn.model(net, { tokenizer = model }) makes it a model that generate, stream, chat, the
-- samplers and grammars take as they take a loaded one.

local Context = {}
Context.__index = Context
nn.Context = Context

local options = require "moonlm.options"

-- context(net, { n_ctx = min(n_ctx_train, 4096), n_batch = 512, kv_type = "f16", seqs = 1 })
function nn.context(net, opts)
  opts = options.check("nn_context", opts, 2, 2, "context") or {}
  local n_ctx = opts.n_ctx or math.min(net.n_ctx_train or 4096, 4096)
  local kv, err = lm.kv_cache { layers = net.n_layer, kv_heads = net.n_head_kv, head_dim = net.head_dim, n_ctx = n_ctx,
                               type = opts.kv_type or "f16", seqs = opts.seqs or 1 }
  if not kv then return nil, err end
  return setmetatable({ net = net, kv = kv, n_ctx = n_ctx, seqs = kv.seqs, kv_type = kv.type,
                        n_batch = opts.n_batch or 512 }, Context)
end
setmetatable(Context, { __call = function(_, net, opts) return nn.context(net, opts) end })

local function check_seq(self, seq, arg, fname)
  if seq == nil then return 0 end
  if type(seq) ~= "number" or seq ~= math.floor(seq) or seq < 0 or seq >= self.seqs then
    error(fmt("bad argument #%d to '%s' (sequence %s out of range (0 to %d))", arg, fname, tostring(seq), self.seqs - 1), 3)
  end
  return seq
end

-- decode(ids, { seq = 0, logits = "last" | "all" | "none" }) -> logits | nil, err
function Context:decode(ids, opts)
  if type(ids) ~= "table" then error(fmt("bad argument #1 to 'decode' (table of token ids expected, got %s)", type(ids)), 2) end
  if #ids == 0 then error("bad argument #1 to 'decode' (nothing to decode (no tokens))", 2) end
  local V = self.net.n_vocab
  for i = 1, #ids do
    local id = ids[i]
    if type(id) ~= "number" or id ~= math.floor(id) or id < 0 or (V and id >= V) then
      error(fmt("bad argument #1 to 'decode' (item %d: %s is not a token id (0 to %d))", i, tostring(id), (V or 0) - 1), 2)
    end
  end
  opts = opts or {}
  local seq = check_seq(self, opts.seq, 2, "decode")
  local mode = opts.logits or "last"
  if mode ~= "last" and mode ~= "all" and mode ~= "none" then
    error(fmt("bad argument #2 to 'decode' (logits must be \"last\", \"all\" or \"none\", got \"%s\")", tostring(mode)), 2)
  end
  local kv = self.kv
  if kv:used() + #ids > self.n_ctx then return nil, fmt("context full (n_ctx = %d)", self.n_ctx) end
  local pos = kv:pos(seq)
  -- prefill in chunks of n_batch: a chunk's activations stay small
  local out, i, B = nil, 1, self.n_batch
  local all = mode == "all" and {} or nil
  while i <= #ids do
    local chunk = ids
    if #ids > B then
      chunk = {}
      for j = i, math.min(i + B - 1, #ids) do chunk[#chunk + 1] = ids[j] end
    end
    local last = i + #chunk - 1 == #ids
    local ok, logits, err = pcall(self.net.forward, self.net, chunk,
      { kv = kv, seq = seq, pos = pos + i - 1, logits = (mode == "all") and "all" or "last" })
    if not ok or not logits then
      kv:truncate(seq, pos) -- all or nothing, as the C context
      if not ok then error(logits, 0) end
      return nil, err
    end
    if all then all[#all + 1] = logits elseif last then out = logits end
    i = i + #chunk
  end
  if mode == "none" then return true end
  if all then out = #all == 1 and all[1] or T.cat(all, 1) end
  return out
end

-- decode_batch({ { ids, seq = s, logits = "last" }, ... }) -> { logits per entry } | nil, err
function Context:decode_batch(entries)
  local out = {}
  for i, e in ipairs(entries) do
    local l, err = self:decode(e[1], { seq = e.seq, logits = e.logits })
    if not l then return nil, err end
    out[i] = l ~= true and l or nil
  end
  return out
end

function Context:pos(seq) return self.kv:pos(check_seq(self, seq, 1, "pos")) end
function Context:clear(seq)
  if seq == nil then return self.kv:clear() end
  return self.kv:clear(check_seq(self, seq, 1, "clear"))
end
function Context:truncate(seq, n) return self.kv:truncate(check_seq(self, seq, 1, "truncate"), n) end
function Context:copy(from, to) return self.kv:copy(check_seq(self, from, 1, "copy"), check_seq(self, to, 2, "copy")) end
function Context:used() return self.kv:used() end
function Context:info()
  return { n_ctx = self.n_ctx, seqs = self.seqs, used = self.kv:used(), kv_type = self.kv_type }
end
-- what a Lua net cannot do generically: said, not ignored
function Context:shift() return nil, "context shift is not available for a model written in Lua" end
function Context:state_save() return nil, "saving the state is not available for a model written in Lua" end
function Context:state_load() return nil, "loading a state is not available for a model written in Lua" end
function Context:hidden() error("hidden states are not available for a model written in Lua", 2) end
function Context:close()
  if self.kv then self.kv:close() end
end
Context.__close = Context.close

-- nn.model(net, { tokenizer = model, arch = "name", n_ctx_train = N }) -> a model: the
-- tokenizer's vocabulary, chat template and metadata, the net's forward pass. A net with
-- its own net:context(opts) method makes its contexts itself: any object with decode(ids,
-- { seq, logits }) -> logits and pos, clear, truncate, n_ctx (copy, shift, state_save,
-- close where used) will do; it then needs only n_vocab.
local LuaModel = {}
nn.LuaModel = LuaModel

local function model_index(self, k)
  local m = LuaModel[k]
  if m ~= nil then return m end
  return lm.Model.__index(self, k)
end

function nn.model(net, opts)
  opts = options.check("nn_model", opts, 2, 2, "model") or {}
  local tok = opts.tokenizer
  if type(tok) ~= "table" or not tok._ud then
    error("bad argument #2 to 'model' (option 'tokenizer' must be a model loaded with lm.load)", 2)
  end
  local own = type(net) == "table" and type(net.context) == "function"
  if type(net) ~= "table" or (type(net.forward) ~= "function" and not own) then
    error("bad argument #1 to 'model' (a net with a forward(ids, state) or a context(opts) method expected)", 2)
  end
  for _, f in ipairs(own and { "n_vocab" } or { "n_layer", "n_head_kv", "head_dim", "n_vocab" }) do
    if type(net[f]) ~= "number" then error(fmt("bad argument #1 to 'model' (net.%s expected)", f), 2) end
  end
  if net.n_vocab ~= tok.n_vocab then
    error(fmt("bad argument #2 to 'model' (the tokenizer has %d tokens, the net %d)", tok.n_vocab, net.n_vocab), 2)
  end
  local self = setmetatable({ _ud = tok._ud, net = net, tokenizer = tok }, { __index = model_index,
    __tostring = LuaModel.__tostring, __close = LuaModel.close })
  for _, k in ipairs { "n_vocab", "n_ctx_train", "path" } do self[k] = tok[k] end
  self.arch = opts.arch or net.arch or "lua"
  self.n_ctx_train = opts.n_ctx_train or net.n_ctx_train or tok.n_ctx_train
  self.n_layer, self.n_embd = net.n_layer, net.n_embd
  return self
end

function LuaModel:context(opts)
  local net = self.net
  if type(net.context) == "function" then return net:context(opts) end
  options.check("nn_context", opts, 2, 2, "context") -- counting self, as model:context does
  return nn.context(net, opts)
end
function LuaModel:close()
  if self._gen_ctx then self._gen_ctx:close() end
  self._gen_ctx = nil
end
function LuaModel:prepare() return 0 end
function LuaModel:embed() error("embeddings are not available for a model written in Lua", 2) end
function LuaModel:__tostring() return fmt("moonlm.model(%s, written in Lua)", self.arch) end

return nn
