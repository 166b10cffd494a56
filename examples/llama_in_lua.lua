-- examples/llama_in_lua.lua: the llama architecture written in Lua with moonlm.nn, on a
-- loaded GGUF's weights (packed and quantized as the C forward pass uses them), with the
-- KV cache of lm.kv_cache. Run it:
--
--   lua5.4 examples/llama_in_lua.lua [model.gguf] ["prompt"]
--
-- or require it (it returns the class): spec/lua_model_spec.lua checks its logits against
-- the C forward pass at every position, and bench/lua_model.lua its speed.
--
--   h   = embd(ids)
--   for each layer:
--     h = h + wo · attention(rope(wq · norm(h)), rope(wk · norm(h)), wv · norm(h))
--     h = h + down(silu(gate(norm(h))) * up(norm(h)))
--   logits = output · norm(h)
local lm = require "moonlm"
local nn = require "moonlm.nn"

local Llama = nn.class("Llama")

-- config(model) -> the hyperparameters of a loaded llama (or phi3) GGUF
function Llama.config(model)
  local meta, a = model.meta, model.arch
  local function key(k, default)
    local v = meta[a .. "." .. k]
    if v == nil then return default end
    return v
  end
  local E, H = key("embedding_length"), key("attention.head_count")
  local c = {
    n_vocab = model.n_vocab, n_embd = E, n_layer = key("block_count"), n_head = H,
    n_head_kv = key("attention.head_count_kv", H), n_ff = key("feed_forward_length"),
    head_dim = key("attention.key_length", math.floor(E / H)), eps = key("attention.layer_norm_rms_epsilon", 1e-5),
    n_ctx_train = key("context_length"),
  }
  -- phi3 is this block with q, k, v in one matrix, gate and up in one, and NeoX RoPE
  c.fused = a == "phi3"
  c.rope = { mode = c.fused and "neox" or "normal", base = key("rope.freq_base", 10000), dims = key("rope.dimension_count", c.head_dim) }
  local scaling = key("rope.scaling.type")
  if scaling == "linear" then
    c.rope.scaling = { factor = key("rope.scaling.factor", 1) }
  elseif scaling ~= nil and scaling ~= "none" then
    error(("llama_in_lua: rope scaling %q is not written here"):format(scaling))
  end
  return c
end

-- One block: pre-norm attention and SwiGLU, each added to the residual stream.
local Block = nn.class("LlamaBlock")

function Block:init(c)
  self:child("attn_norm", nn.RMSNorm { n_embd = c.n_embd, eps = c.eps })
  -- "" : the attention's and the MLP's tensors sit directly under blk.N
  self:child("", nn.Attention { n_embd = c.n_embd, n_head = c.n_head, n_head_kv = c.n_head_kv,
                                head_dim = c.head_dim, rope = c.rope, fused = c.fused }, "attn")
  self:child("ffn_norm", nn.RMSNorm { n_embd = c.n_embd, eps = c.eps })
  self:child("", nn.MLP { n_embd = c.n_embd, n_ff = c.n_ff, kind = "swiglu", fused = c.fused }, "mlp")
end

function Block:forward(x, state)
  local a, err = self.attn:forward(self.attn_norm:forward(x), state)
  if not a then return nil, err end
  x = a:add_(x)
  return self.mlp:forward(self.ffn_norm:forward(x)):add_(x)
end

function Llama:init(c)
  for k, v in pairs(c) do self[k] = v end
  self:child("token_embd", nn.Embedding { n_vocab = c.n_vocab, n_embd = c.n_embd }, "embd")
  local blocks = {}
  for l = 1, c.n_layer do blocks[l] = Block(c) end
  self:child("", nn.Sequential("blk.%d", blocks), "blocks")
  self:child("output_norm", nn.RMSNorm { n_embd = c.n_embd, eps = c.eps })
  -- an absent output.weight means the embedding is tied to the output
  self:child("output", nn.Linear { n_in = c.n_embd, n_out = c.n_vocab, optional = true })
end

function Llama:loaded()
  nn.Module.loaded(self)
  if not self.output.weight then self.output.weight = self.embd.weight end
end

-- forward(ids, { kv, seq, pos, logits = "last" | "all" }) -> logits | nil, err
function Llama:forward(ids, state)
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

-- Llama.from(model) -> the net with the model's weights
function Llama.from(model) return Llama(Llama.config(model)):load(model) end

-- as a script: a story from the Lua forward pass, then the same from the C one
if arg and arg[0] and arg[0]:find("llama_in_lua") then
  local path = arg[1] or "../shared/models/stories260K.gguf"
  local model = assert(lm.load(path))
  local net = Llama.from(model)
  local lua_model = nn.model(net, { tokenizer = model, arch = "llama (Lua)" })
  local prompt = arg[2] or "Once upon a time"
  local opts = { max_tokens = 64, temperature = 0 }
  local text, info = lua_model:generate(prompt, opts)
  print(("Lua forward: %s\n  (%d tokens, %.1f tokens/s)"):format(prompt .. text, info.tokens, info.gen_tps))
  local ctext, cinfo = model:generate(prompt, opts)
  print(("C forward:   %s\n  (%d tokens, %.1f tokens/s)"):format(prompt .. ctext, cinfo.tokens, cinfo.gen_tps))
  print(text == ctext and "identical" or "DIFFERENT")
end

return Llama
