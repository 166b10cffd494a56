-- examples/mpt_in_lua.lua: MPT written in Lua with moonlm.nn, from its description alone
-- (no RoPE: ALiBi slopes on the scores; LayerNorm; q, k and v from one clamped matrix; a
-- GELU feed-forward, with GELU rounded as ggml rounds it; the output tied to the embeddings unless the file has its own).
-- spec/lua_model_spec.lua checks it against llama.cpp's logits on ../shared/ref-arch.
--
--   h = embd(ids)
--   for each layer:
--     h = h + wo · attention(clamp(wqkv · ln(h)), alibi = slopes(n_head, max_alibi_bias))
--     h = h + down(gelu(up(ln(h))))
--   logits = output · ln(h)
--
--   lua5.4 examples/mpt_in_lua.lua model.gguf ["prompt"]
local lm = require "moonlm"
local nn = require "moonlm.nn"
local T = lm.tensor

local MPT = nn.class("MPT")

function MPT.config(model)
  local meta = model.meta
  local function key(k, default)
    local v = meta["mpt." .. k]
    if v == nil then return default end
    return v
  end
  local E, H = key("embedding_length"), key("attention.head_count")
  return { n_vocab = model.n_vocab, n_embd = E, n_layer = key("block_count"), n_head = H,
           n_head_kv = key("attention.head_count_kv", H), head_dim = math.floor(E / H),
           n_ff = key("feed_forward_length"), eps = key("attention.layer_norm_epsilon", 1e-5),
           max_alibi_bias = key("attention.max_alibi_bias", 0), clamp = key("attention.clamp_kqv"),
           n_ctx_train = key("context_length") }
end

local Block = nn.class("MPTBlock")

function Block:init(c)
  -- biases are optional everywhere (MPT-7B has none)
  self:child("attn_norm", nn.LayerNorm { n_embd = c.n_embd, eps = c.eps, bias = false })
  local alibi = c.max_alibi_bias > 0 and T.alibi_slopes(c.n_head, c.max_alibi_bias) or nil
  self:child("", nn.Attention { n_embd = c.n_embd, n_head = c.n_head, n_head_kv = c.n_head_kv, head_dim = c.head_dim,
                                fused = true, rope = false, alibi = alibi, clamp = c.clamp, bias = false }, "attn")
  self:child("ffn_norm", nn.LayerNorm { n_embd = c.n_embd, eps = c.eps, bias = false })
  self:child("", nn.MLP { n_embd = c.n_embd, n_ff = c.n_ff, kind = "gelu", bias = false,
                         act = "gelu_ggml" }, "mlp")
end

function Block:forward(x, state)
  local a, err = self.attn:forward(self.attn_norm:forward(x), state)
  if not a then return nil, err end
  x = a:add_(x)
  return self.mlp:forward(self.ffn_norm:forward(x)):add_(x)
end

function MPT:init(c)
  for k, v in pairs(c) do self[k] = v end
  self:child("token_embd", nn.Embedding { n_vocab = c.n_vocab, n_embd = c.n_embd }, "embd")
  local blocks = {}
  for l = 1, c.n_layer do blocks[l] = Block(c) end
  self:child("", nn.Sequential("blk.%d", blocks), "blocks")
  self:child("output_norm", nn.LayerNorm { n_embd = c.n_embd, eps = c.eps, bias = false })
  self:child("output", nn.Linear { n_in = c.n_embd, n_out = c.n_vocab, optional = true })
end

function MPT:loaded()
  nn.Module.loaded(self)
  if not self.output.weight then self.output.weight = self.embd.weight end
end

function MPT:forward(ids, state)
  local x, err = self.embd:forward(ids)
  for l = 1, self.n_layer do
    state.layer = l - 1
    x, err = self.blocks[l]:forward(x, state)
    if not x then return nil, err end
  end
  local n = x:size(1)
  if state.logits ~= "all" and n > 1 then x = x:narrow(1, n, 1) end
  local logits = self.output:forward(self.output_norm:forward(x))
  if state.logits ~= "all" then logits = logits:view(-1) end
  return logits
end

function MPT.from(model) return MPT(MPT.config(model)):load(model) end

if arg and arg[0] and arg[0]:find("mpt_in_lua") then
  local path = arg[1] or error("usage: mpt_in_lua.lua model.gguf [prompt]")
  local model = assert(lm.load(path))
  local m = nn.model(MPT.from(model), { tokenizer = model, arch = "mpt (Lua)" })
  print((arg[2] or "Once upon a time") .. m:generate(arg[2] or "Once upon a time", { max_tokens = 32, temperature = 0 }))
end

return MPT
