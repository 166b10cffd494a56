-- Writes llama-architecture GGUF models with random weights, in a given weight type, with
-- moonlm's own GGUF writer: the benchmark models (TinyLlama-1.1B and SmolLM-135M shapes).
-- The files carry a 32000-token SentencePiece-style vocabulary so llama.cpp loads them too.
local lm = require "moonlm"
local T = lm.tensor

local _M = {}

_M.shapes = {
  tinyllama = { name = "TinyLlama-1.1B shape", n_embd = 2048, n_layer = 22, n_head = 32, n_head_kv = 4,
                n_ff = 5632, n_vocab = 32000, n_ctx = 2048 },
  smollm = { name = "SmolLM-135M shape", n_embd = 576, n_layer = 30, n_head = 9, n_head_kv = 3,
             n_ff = 1536, n_vocab = 32000, n_ctx = 2048 },
}

-- llama.cpp's Q4_K_M recipe, as far as these tensors go: q6_K for output, and for attn_v
-- and ffn_down in the first and last eighth of the layers and every third one between.
local function q4km(name, il, n_layer)
  if name == "output" then return "q6_k" end
  if name == "attn_v" or name == "ffn_down" then
    local more = il < n_layer / 8 or il >= 7 * n_layer / 8 or (il - math.floor(n_layer / 8)) % 3 == 2
    if more then return "q6_k" end
  end
  return "q4_k"
end

local function vocab(n)
  local tokens, scores, types = { "<unk>", "<s>", "</s>" }, { 0, 0, 0 }, { 2, 3, 3 }
  for b = 0, 255 do
    tokens[#tokens + 1] = ("<0x%02X>"):format(b)
    scores[#scores + 1] = 0
    types[#types + 1] = 6
  end
  local i = 0
  while #tokens < n do
    i = i + 1
    tokens[#tokens + 1] = "\226\150\129t" .. i
    scores[#scores + 1] = -i
    types[#types + 1] = 1
  end
  return tokens, scores, types
end

-- write(path, shape, wtype [, seed [, family]]): wtype is "f16", "bf16", "q8_0", "q4_0",
-- "q4_k_m", ...; family "llama" (default), "phi3", "mpt", "gemma2" or "gemma3" (the same
-- matrices in that family's layout: fused q/k/v and gate/up for phi3, fused q/k/v and a GELU
-- FFN for mpt, post-norms and q/k norms for gemma; norms are ones)
function _M.write(path, shape, wtype, seed, family)
  family = family or "llama"
  if family ~= "llama" then return _M.write_family(path, shape, wtype, seed, family) end
  local s = shape
  local hd = math.floor(s.n_embd / s.n_head)
  local t, r = {}, 0
  local function w(rows, cols, name, il)
    r = r + 1
    local x = T.randn({ rows, cols }, { seed = (seed or 1) * 1000 + r, std = 0.02 })
    local ty = wtype == "q4_k_m" and q4km(name, il or 0, s.n_layer) or wtype
    local q = ty == "f32" and x or x:to(ty)
    x = nil
    collectgarbage()
    return q
  end
  t["token_embd.weight"] = w(s.n_vocab, s.n_embd, "token_embd")
  t["output_norm.weight"] = T.ones(s.n_embd)
  t["output.weight"] = w(s.n_vocab, s.n_embd, "output")
  for il = 0, s.n_layer - 1 do
    local p = "blk." .. il .. "."
    t[p .. "attn_norm.weight"] = T.ones(s.n_embd)
    t[p .. "ffn_norm.weight"] = T.ones(s.n_embd)
    t[p .. "attn_q.weight"] = w(s.n_head * hd, s.n_embd, "attn_q", il)
    t[p .. "attn_k.weight"] = w(s.n_head_kv * hd, s.n_embd, "attn_k", il)
    t[p .. "attn_v.weight"] = w(s.n_head_kv * hd, s.n_embd, "attn_v", il)
    t[p .. "attn_output.weight"] = w(s.n_embd, s.n_head * hd, "attn_output", il)
    t[p .. "ffn_gate.weight"] = w(s.n_ff, s.n_embd, "ffn_gate", il)
    t[p .. "ffn_up.weight"] = w(s.n_ff, s.n_embd, "ffn_up", il)
    t[p .. "ffn_down.weight"] = w(s.n_embd, s.n_ff, "ffn_down", il)
  end
  local tokens, scores, types = vocab(s.n_vocab)
  local ftype = { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 7, q5_0 = 8, q5_1 = 9, q4_k_m = 15, bf16 = 32 }
  local meta = {
    ["general.architecture"] = "llama",
    ["general.name"] = ("random %s %s"):format(s.name, wtype),
    ["general.file_type"] = ftype[wtype] or 0,
    ["llama.context_length"] = s.n_ctx,
    ["llama.embedding_length"] = s.n_embd,
    ["llama.block_count"] = s.n_layer,
    ["llama.feed_forward_length"] = s.n_ff,
    ["llama.attention.head_count"] = s.n_head,
    ["llama.attention.head_count_kv"] = s.n_head_kv,
    ["llama.rope.dimension_count"] = hd,
    ["llama.rope.freq_base"] = lm.gguf_value("f32", 10000),
    ["llama.attention.layer_norm_rms_epsilon"] = lm.gguf_value("f32", 1e-5),
    ["llama.vocab_size"] = s.n_vocab,
    ["tokenizer.ggml.model"] = "llama",
    ["tokenizer.ggml.tokens"] = tokens,
    ["tokenizer.ggml.scores"] = lm.gguf_value("f32", scores),
    ["tokenizer.ggml.token_type"] = lm.gguf_value("i32", types),
    ["tokenizer.ggml.bos_token_id"] = 1,
    ["tokenizer.ggml.eos_token_id"] = 2,
    ["tokenizer.ggml.unknown_token_id"] = 0,
  }
  local ok, err = lm.save(path, t, meta)
  t = nil
  collectgarbage()
  return ok, err
end

function _M.write_family(path, shape, wtype, seed, family)
  local s = shape
  local hd = math.floor(s.n_embd / s.n_head)
  local E, Q, KV, F = s.n_embd, s.n_head * hd, s.n_head_kv * hd, s.n_ff
  local t, r = {}, 0
  local function w(rows, cols)
    r = r + 1
    local x = T.randn({ rows, cols }, { seed = (seed or 1) * 1000 + r, std = 0.02 })
    local q = wtype == "f32" and x or x:to(wtype)
    x = nil
    collectgarbage()
    return q
  end
  t["token_embd.weight"] = w(s.n_vocab, E)
  t["output_norm.weight"] = T.ones(E)
  if family == "phi3" then t["output.weight"] = w(s.n_vocab, E) end
  for il = 0, s.n_layer - 1 do
    local p = "blk." .. il .. "."
    t[p .. "attn_norm.weight"] = T.ones(E)
    t[p .. "ffn_norm.weight"] = T.ones(E)
    t[p .. "attn_output.weight"] = w(E, Q)
    if family == "phi3" or family == "mpt" then
      t[p .. "attn_qkv.weight"] = w(Q + 2 * KV, E)
    else
      t[p .. "attn_q.weight"], t[p .. "attn_k.weight"], t[p .. "attn_v.weight"] = w(Q, E), w(KV, E), w(KV, E)
    end
    if family == "phi3" then
      t[p .. "ffn_up.weight"] = w(2 * F, E)
    elseif family == "mpt" then
      t[p .. "ffn_up.weight"] = w(F, E)
    else
      t[p .. "ffn_gate.weight"], t[p .. "ffn_up.weight"] = w(F, E), w(F, E)
    end
    t[p .. "ffn_down.weight"] = w(E, F)
    if family == "gemma2" or family == "gemma3" then
      t[p .. "post_attention_norm.weight"], t[p .. "post_ffw_norm.weight"] = T.ones(E), T.ones(E)
    end
    if family == "gemma3" then t[p .. "attn_q_norm.weight"], t[p .. "attn_k_norm.weight"] = T.ones(hd), T.ones(hd) end
  end
  local tokens, scores, types = vocab(s.n_vocab)
  -- llama.cpp (before mid-2025) sets attributes on Phi-3's "<|endoftext|>" by name when the
  -- model's name says phi3, and fails to load a vocabulary without it
  if family == "phi3" then tokens[s.n_vocab], scores[s.n_vocab], types[s.n_vocab] = "<|endoftext|>", 0, 3 end
  local a = family
  local meta = {
    ["general.architecture"] = a,
    ["general.name"] = ("random %s %s %s"):format(family, s.name, wtype),
    ["general.file_type"] = wtype == "q8_0" and 7 or 0,
    [a .. ".context_length"] = s.n_ctx,
    [a .. ".embedding_length"] = E,
    [a .. ".block_count"] = s.n_layer,
    [a .. ".feed_forward_length"] = F,
    [a .. ".attention.head_count"] = s.n_head,
    [a .. ".attention.head_count_kv"] = s.n_head_kv,
    [a .. ".vocab_size"] = s.n_vocab,
    ["tokenizer.ggml.model"] = "llama",
    ["tokenizer.ggml.tokens"] = tokens,
    ["tokenizer.ggml.scores"] = lm.gguf_value("f32", scores),
    ["tokenizer.ggml.token_type"] = lm.gguf_value("i32", types),
    ["tokenizer.ggml.bos_token_id"] = 1,
    ["tokenizer.ggml.eos_token_id"] = 2,
    ["tokenizer.ggml.unknown_token_id"] = 0,
  }
  if family == "mpt" then
    meta[a .. ".attention.layer_norm_epsilon"] = lm.gguf_value("f32", 1e-5)
    meta[a .. ".attention.max_alibi_bias"] = lm.gguf_value("f32", 8)
    meta[a .. ".attention.clamp_kqv"] = lm.gguf_value("f32", 6)
  else
    meta[a .. ".attention.layer_norm_rms_epsilon"] = lm.gguf_value("f32", 1e-6)
    meta[a .. ".rope.freq_base"] = lm.gguf_value("f32", 10000)
  end
  if family == "phi3" then
    meta[a .. ".rope.dimension_count"] = hd
    -- real Phi-3 files carry it (Phi-3-mini-4k: 2047), and llama.cpp builds before mid-2025
    -- refuse a phi3 file without it; moonlm and current llama.cpp run phi3 without a window
    meta[a .. ".attention.sliding_window"] = lm.gguf_value("u32", s.n_ctx - 1)
  end
  if family == "gemma2" or family == "gemma3" then
    meta[a .. ".attention.key_length"], meta[a .. ".attention.value_length"] = hd, hd
    meta[a .. ".attention.sliding_window"] = 512
  end
  local ok, err = lm.save(path, t, meta)
  t = nil
  collectgarbage()
  return ok, err
end

return _M
