-- Architecture quirks against an independent forward pass written here in plain Lua (no
-- moonlm ops): qwen2 (q/k/v biases, NeoX RoPE), qwen3 (per-head q/k RMSNorm, a head size
-- that is not n_embd / n_head), llama with linear RoPE scaling and with rope_freqs factors,
-- GQA, and quantized weights. The tiny models are written with moonlm's GGUF writer.
-- (These same quirks were checked against llama.cpp on larger random models: see the notes
-- of the models issue.)
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local E, H, KV, FF, NL, V = 32, 4, 2, 64, 2, 40

local function build(arch, opt)
  local HD = opt.hd or E / H
  local seed = 100
  local function w(r, c, std) seed = seed + 1 return T.randn({ r, c }, { seed = seed, std = std or 0.3 }) end
  local function v(n, base) seed = seed + 1 return T.randn({ n }, { seed = seed, std = 0.1 }) + (base or 0) end
  local t = { ["token_embd.weight"] = w(V, E, 1), ["output_norm.weight"] = v(E, 1), ["output.weight"] = w(V, E) }
  for l = 0, NL - 1 do
    local p = "blk." .. l .. "."
    t[p .. "attn_norm.weight"], t[p .. "ffn_norm.weight"] = v(E, 1), v(E, 1)
    t[p .. "attn_q.weight"], t[p .. "attn_k.weight"], t[p .. "attn_v.weight"] = w(H * HD, E), w(KV * HD, E), w(KV * HD, E)
    t[p .. "attn_output.weight"] = w(E, H * HD)
    t[p .. "ffn_gate.weight"], t[p .. "ffn_up.weight"], t[p .. "ffn_down.weight"] = w(FF, E), w(FF, E), w(E, FF)
    if opt.bias then
      t[p .. "attn_q.bias"], t[p .. "attn_k.bias"], t[p .. "attn_v.bias"] = v(H * HD), v(KV * HD), v(KV * HD)
    end
    if opt.qknorm then t[p .. "attn_q_norm.weight"], t[p .. "attn_k_norm.weight"] = v(HD, 1), v(HD, 1) end
  end
  if opt.freqs then t["rope_freqs.weight"] = T.rand({ HD / 2 }, { seed = 7, min = 1, max = 8 }) end
  if opt.wtype then
    for k, x in pairs(t) do if x:dim() == 2 then t[k] = x:to(opt.wtype) end end
  end
  local m = {
    ["general.architecture"] = arch, [arch .. ".context_length"] = 64, [arch .. ".embedding_length"] = E,
    [arch .. ".block_count"] = NL, [arch .. ".feed_forward_length"] = FF, [arch .. ".attention.head_count"] = H,
    [arch .. ".attention.head_count_kv"] = KV, [arch .. ".rope.freq_base"] = lm.gguf_value("f32", opt.base or 10000),
    [arch .. ".attention.layer_norm_rms_epsilon"] = lm.gguf_value("f32", 1e-6),
  }
  if opt.hd then m[arch .. ".attention.key_length"], m[arch .. ".attention.value_length"] = HD, HD end
  if opt.linear then
    m[arch .. ".rope.scaling.type"] = "linear"
    m[arch .. ".rope.scaling.factor"] = lm.gguf_value("f32", opt.linear)
  end
  local path = S.tmpname(".gguf")
  assert(lm.save(path, t, m))
  -- the reference reads the weights back dequantized, as the model sees them
  local back = assert(lm.load_tensors(path))
  local W = {}
  for k, x in pairs(back) do W[k] = x:dequantize():totable() end
  return path, W, HD
end

-- the forward pass, written from the model definition
local function reference(W, HD, opt, ids)
  local eps, base = 1e-6, opt.base or 10000
  local neox = opt.neox
  local half = HD / 2
  local function rmsnorm(x, w)
    local ss = 0
    for i = 1, #x do ss = ss + x[i] * x[i] end
    local s = 1 / math.sqrt(ss / #x + eps)
    local y = {}
    for i = 1, #x do y[i] = x[i] * s * w[i] end
    return y
  end
  local function matvec(m, x, b)
    local y = {}
    for r = 1, #m do
      local s = b and b[r] or 0
      for c = 1, #x do s = s + m[r][c] * x[c] end
      y[r] = s
    end
    return y
  end
  local function rope(x, nh, pos)
    for h = 0, nh - 1 do
      for k = 0, half - 1 do
        local th = pos * base ^ (-2 * k / HD) / (opt.linear or 1)
        if opt.freqs then th = th / W["rope_freqs.weight"][k + 1] end
        local i0, i1
        if neox then i0, i1 = h * HD + k + 1, h * HD + k + half + 1 else i0, i1 = h * HD + 2 * k + 1, h * HD + 2 * k + 2 end
        local a, b = x[i0], x[i1]
        x[i0], x[i1] = a * math.cos(th) - b * math.sin(th), a * math.sin(th) + b * math.cos(th)
      end
    end
  end
  local xs, ks, vs = {}, {}, {}
  for t, id in ipairs(ids) do
    local x = {}
    for i = 1, E do x[i] = W["token_embd.weight"][id + 1][i] end
    xs[t] = x
  end
  for l = 0, NL - 1 do
    local p = "blk." .. l .. "."
    ks[l], vs[l] = {}, {}
    for t = 1, #ids do
      local x = xs[t]
      local h = rmsnorm(x, W[p .. "attn_norm.weight"])
      local q = matvec(W[p .. "attn_q.weight"], h, W[p .. "attn_q.bias"])
      local k = matvec(W[p .. "attn_k.weight"], h, W[p .. "attn_k.bias"])
      local v = matvec(W[p .. "attn_v.weight"], h, W[p .. "attn_v.bias"])
      if W[p .. "attn_q_norm.weight"] then
        local function per_head(x, nh, w)
          for hh = 0, nh - 1 do
            local seg = {}
            for i = 1, HD do seg[i] = x[hh * HD + i] end
            seg = rmsnorm(seg, w)
            for i = 1, HD do x[hh * HD + i] = seg[i] end
          end
        end
        per_head(q, H, W[p .. "attn_q_norm.weight"])
        per_head(k, KV, W[p .. "attn_k_norm.weight"])
      end
      rope(q, H, t - 1)
      rope(k, KV, t - 1)
      ks[l][t], vs[l][t] = k, v
      local att = {}
      for hh = 0, H - 1 do
        local kvh = math.floor(hh / (H / KV))
        local sc, mx = {}, -math.huge
        for j = 1, t do
          local s = 0
          for i = 1, HD do s = s + q[hh * HD + i] * ks[l][j][kvh * HD + i] end
          sc[j] = s / math.sqrt(HD)
          mx = math.max(mx, sc[j])
        end
        local z = 0
        for j = 1, t do sc[j] = math.exp(sc[j] - mx) z = z + sc[j] end
        for i = 1, HD do
          local a = 0
          for j = 1, t do a = a + sc[j] / z * vs[l][j][kvh * HD + i] end
          att[hh * HD + i] = a
        end
      end
      local o = matvec(W[p .. "attn_output.weight"], att)
      for i = 1, E do x[i] = x[i] + o[i] end
      h = rmsnorm(x, W[p .. "ffn_norm.weight"])
      local g, u = matvec(W[p .. "ffn_gate.weight"], h), matvec(W[p .. "ffn_up.weight"], h)
      for i = 1, FF do g[i] = g[i] / (1 + math.exp(-g[i])) * u[i] end
      local d = matvec(W[p .. "ffn_down.weight"], g)
      for i = 1, E do x[i] = x[i] + d[i] end
    end
  end
  local out = {}
  for t = 1, #ids do out[t] = matvec(W["output.weight"], rmsnorm(xs[t], W["output_norm.weight"])) end
  return out
end

local ids = { 1, 7, 23, 5, 39, 12, 12, 30 }
local cases = {
  { "qwen2: q/k/v biases, NeoX RoPE", "qwen2", { bias = true, base = 1000000, neox = true } },
  { "qwen3: per-head q/k norms, head size 16 with n_embd 32 and 4 heads", "qwen3",
    { qknorm = true, hd = 16, base = 1000000, neox = true } },
  { "llama: linear RoPE scaling", "llama", { linear = 4 } },
  { "llama: rope_freqs frequency factors (Llama 3.1 style)", "llama", { freqs = true, base = 500000 } },
  { "qwen2 with q8_0 weights", "qwen2", { bias = true, neox = true, wtype = "q8_0" }, 0.03 },
  { "qwen3 with f16 weights", "qwen3", { qknorm = true, hd = 16, neox = true, wtype = "f16" }, 3e-3 },
}

describe("architectures against a plain-Lua forward pass", function()
  for _, c in ipairs(cases) do
    it(c[1], function()
      local path, W, HD = build(c[2], c[3])
      local model = assert(lm.load(path))
      assert.are.equal(c[2], model.arch)
      assert.are.equal(HD, model.head_dim)
      local got = assert(model:context { n_ctx = 32, kv_type = "f32" }):decode(ids, { logits = "all" }):totable()
      local want = reference(W, HD, c[3], ids)
      local maxabs, maxdiff = 0, 0
      for t = 1, #ids do
        for v = 1, V do
          maxabs = math.max(maxabs, math.abs(want[t][v]))
          maxdiff = math.max(maxdiff, math.abs(got[t][v] - want[t][v]))
        end
      end
      -- quantized and f16 weights: the kernels also round the activations, as llama.cpp does
      local tol = (c[4] or 1e-5) * maxabs
      assert.is_true(maxdiff <= tol, ("%s: max diff %.3g > %.3g"):format(c[2], maxdiff, tol))
      model:close()
      os.remove(path)
    end)
  end

  it("a tensor the family does not declare is refused, not ignored", function()
    local t = {}
    for k, x in pairs(assert(lm.load_tensors((build("llama", {}))))) do t[k] = x:clone() end
    t["blk.1.attn_q_norm.weight"] = T.ones({ E / H })
    local path = S.tmpname(".gguf")
    assert(lm.save(path, t, { ["general.architecture"] = "llama", ["llama.embedding_length"] = E,
      ["llama.block_count"] = NL, ["llama.feed_forward_length"] = FF, ["llama.attention.head_count"] = H,
      ["llama.attention.head_count_kv"] = KV }))
    local m, err = lm.load(path)
    assert.is_nil(m)
    assert.matches("tensor 'blk.1.attn_q_norm.weight' is not part of moonlm's llama", err, 1, true)
    os.remove(path)
  end)

  it("the wrong RoPE mode would be caught", function()
    local path, W, HD = build("qwen2", { bias = true })
    local model = assert(lm.load(path))
    local got = assert(model:context { n_ctx = 32, kv_type = "f32" }):decode(ids, { logits = "all" }):totable()
    local wrong = reference(W, HD, { bias = true, neox = false }, ids)
    local maxdiff = 0
    for t = 1, #ids do for v = 1, V do maxdiff = math.max(maxdiff, math.abs(got[t][v] - wrong[t][v])) end end
    assert.is_true(maxdiff > 1e-3)
    os.remove(path)
  end)
end)

-- MPT with 6 heads: ALiBi's slopes for a head count that is not a power of two (ggml's
-- second series, m1^(2(h - n2) + 1) for the heads past n2 = 4), which ../shared/ref-arch's
-- 4-head model does not reach; against a plain-Lua MPT forward pass.
describe("mpt ALiBi with 6 heads against a plain-Lua forward pass", function()
  local E6, H6, FF6, NL6, V6, MAXB = 48, 6, 96, 2, 40, 8
  local function mpt_file(heads_slopes_wrong)
    local seed = 300
    local function w(r, c) seed = seed + 1 return T.randn({ r, c }, { seed = seed, std = 0.3 }) end
    local function v(n, base) seed = seed + 1 return T.randn({ n }, { seed = seed, std = 0.1 }) + base end
    local t = { ["token_embd.weight"] = w(V6, E6), ["output_norm.weight"] = v(E6, 1) }
    for l = 0, NL6 - 1 do
      local p = "blk." .. l .. "."
      t[p .. "attn_norm.weight"], t[p .. "ffn_norm.weight"] = v(E6, 1), v(E6, 1)
      t[p .. "attn_qkv.weight"], t[p .. "attn_output.weight"] = w(3 * E6, E6), w(E6, E6)
      t[p .. "ffn_up.weight"], t[p .. "ffn_down.weight"] = w(FF6, E6), w(E6, FF6)
    end
    local path = S.tmpname(".gguf")
    assert(lm.save(path, t, {
      ["general.architecture"] = "mpt", ["mpt.context_length"] = 64, ["mpt.embedding_length"] = E6,
      ["mpt.block_count"] = NL6, ["mpt.feed_forward_length"] = FF6, ["mpt.attention.head_count"] = H6,
      ["mpt.attention.layer_norm_epsilon"] = lm.gguf_value("f32", 1e-5),
      ["mpt.attention.max_alibi_bias"] = lm.gguf_value("f32", MAXB),
      ["mpt.attention.clamp_kqv"] = lm.gguf_value("f32", 1.5),
    }))
    local back, W = assert(lm.load_tensors(path)), {}
    for k, x in pairs(back) do W[k] = x:dequantize():totable() end
    return path, W
  end

  local function reference(W, slopes, ids)
    local hd = E6 / H6
    local function ln(x, w)
      local m, v = 0, 0
      for i = 1, #x do m = m + x[i] end
      m = m / #x
      for i = 1, #x do v = v + (x[i] - m) ^ 2 end
      local s = 1 / math.sqrt(v / #x + 1e-5)
      local y = {}
      for i = 1, #x do y[i] = (x[i] - m) * s * w[i] end
      return y
    end
    local function mv(m, x)
      local y = {}
      for r = 1, #m do
        local s = 0
        for c = 1, #x do s = s + m[r][c] * x[c] end
        y[r] = s
      end
      return y
    end
    local function gelu(x) return 0.5 * x * (1 + math.tanh(0.7978845608 * (x + 0.044715 * x ^ 3))) end
    local xs, ks, vs = {}, {}, {}
    for t, id in ipairs(ids) do
      xs[t] = {}
      for i = 1, E6 do xs[t][i] = W["token_embd.weight"][id + 1][i] end
    end
    for l = 0, NL6 - 1 do
      local p = "blk." .. l .. "."
      ks[l], vs[l] = {}, {}
      for t = 1, #ids do
        local x = xs[t]
        local qkv = mv(W[p .. "attn_qkv.weight"], ln(x, W[p .. "attn_norm.weight"]))
        for i = 1, #qkv do qkv[i] = math.max(-1.5, math.min(1.5, qkv[i])) end
        local k, v = {}, {}
        for i = 1, E6 do k[i], v[i] = qkv[E6 + i], qkv[2 * E6 + i] end
        ks[l][t], vs[l][t] = k, v
        local att = {}
        for h = 0, H6 - 1 do
          local sc, mx = {}, -math.huge
          for j = 1, t do
            local s = 0
            for i = 1, hd do s = s + qkv[h * hd + i] * ks[l][j][h * hd + i] end
            sc[j] = s / math.sqrt(hd) - slopes[h + 1] * (t - j)
            mx = math.max(mx, sc[j])
          end
          local z = 0
          for j = 1, t do sc[j] = math.exp(sc[j] - mx) z = z + sc[j] end
          for i = 1, hd do
            local a = 0
            for j = 1, t do a = a + sc[j] / z * vs[l][j][h * hd + i] end
            att[h * hd + i] = a
          end
        end
        local o = mv(W[p .. "attn_output.weight"], att)
        for i = 1, E6 do x[i] = x[i] + o[i] end
        local u = mv(W[p .. "ffn_up.weight"], ln(x, W[p .. "ffn_norm.weight"]))
        for i = 1, #u do u[i] = gelu(u[i]) end
        local d = mv(W[p .. "ffn_down.weight"], u)
        for i = 1, E6 do x[i] = x[i] + d[i] end
      end
    end
    local out = {}
    for t = 1, #ids do out[t] = mv(W["token_embd.weight"], ln(xs[t], W["output_norm.weight"])) end
    return out
  end

  it("uses m0^(h+1) for the first 4 heads and m1^(2(h-4)+1) for the others", function()
    local path, W = mpt_file()
    local model = assert(lm.load(path))
    local got = assert(model:context { n_ctx = 32, kv_type = "f32" }):decode(ids, { logits = "all" }):totable()
    local m0, m1 = 2 ^ (-MAXB / 4), 2 ^ (-MAXB / 2 / 4)
    local ggml = { m0, m0 ^ 2, m0 ^ 3, m0 ^ 4, m1, m1 ^ 3 }
    local naive = {}
    for h = 1, H6 do naive[h] = 2 ^ (-MAXB * h / H6) end
    local function diff(slopes)
      local want, maxabs, d = reference(W, slopes, ids), 0, 0
      for t = 1, #ids do
        for v = 1, V6 do
          maxabs = math.max(maxabs, math.abs(want[t][v]))
          d = math.max(d, math.abs(got[t][v] - want[t][v]))
        end
      end
      return d / maxabs
    end
    -- the GELU table rounds to f16: 1e-3 of the largest logit, as for the ref-arch models
    local good, bad = diff(ggml), diff(naive)
    assert.is_true(good < 1e-3, ("ggml slopes: %.3g"):format(good))
    assert.is_true(bad > 10 * good, ("the simple formula would give %.3g (ggml %.3g)"):format(bad, good))
    model:close()
    os.remove(path)
  end)
end)
