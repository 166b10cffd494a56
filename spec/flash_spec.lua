-- tensor.attention: the forward pass's attention kernel on tensors, against a plain Lua
-- computation of softmax(q·kᵀ·scale + masks)·v written from the definition. Sizes cover
-- several key blocks (64), tiles of query rows (16), grouped-query heads, head sizes the
-- SIMD kernels take (multiples of 16) and one they leave to the portable code (40), and
-- one query row against a long key list, which the kernel splits over threads and merges.
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local function rows3(t) return t:totable() end

-- reference: q {H, n, d}, k/v {Hk, nkv, d} as nested tables
local function naive(q, k, v, o)
  local H, n, d = #q, #q[1], #q[1][1]
  local Hk, nkv = #k, #k[1]
  local g = math.floor(H / Hk)
  local scale = o.scale or 1 / math.sqrt(d)
  local out = {}
  for h = 1, H do
    local kh = math.floor((h - 1) / g) + 1
    out[h] = {}
    for i = 1, n do
      local pos = nkv - n + (i - 1)
      local s, mx = {}, -math.huge
      for j = 1, nkv do
        local key = j - 1
        local ok = (not o.causal or key <= pos) and (not o.window or o.window == 0 or key > pos - o.window)
        if ok then
          local acc = 0
          for x = 1, d do acc = acc + q[h][i][x] * k[kh][j][x] end
          acc = acc * scale
          if o.softcap then acc = o.softcap * math.tanh(acc / o.softcap) end
          if o.alibi then acc = acc - o.alibi[h] * math.abs(pos - key) end
          if o.mask then acc = acc + o.mask[i][j] end
          s[j] = acc
          if acc > mx then mx = acc end
        else
          s[j] = -math.huge
        end
      end
      local row, sum = {}, 0
      for x = 1, d do row[x] = 0 end
      if mx > -math.huge then
        for j = 1, nkv do
          local p = s[j] > -math.huge and math.exp(s[j] - mx) or 0
          sum = sum + p
          if p > 0 then
            for x = 1, d do row[x] = row[x] + p * v[kh][j][x] end
          end
        end
        for x = 1, d do row[x] = row[x] / sum end
      end
      out[h][i] = row
    end
  end
  return out
end

local function check(H, Hk, n, nkv, d, o, kvtype, tol)
  local q = T.randn({ H, n, d }, { seed = 1 })
  local k = T.randn({ Hk, nkv, d }, { seed = 2 })
  local v = T.randn({ Hk, nkv, d }, { seed = 3 })
  local kk, vv = k, v
  if kvtype then kk, vv = k:to(kvtype), v:to(kvtype) end
  local opts = {}
  for key, val in pairs(o) do opts[key] = val end
  if o.mask then opts.mask = T.new(o.mask) end
  local got = T.attention(q, kk, vv, opts)
  assert.same({ H, n, d }, { got:shape()[1], got:shape()[2], got:shape()[3] })
  -- the reference sees the values the kernel sees (after the cache type's rounding)
  local want = naive(rows3(q), rows3(kk:to("f32")), rows3(vv:to("f32")), o)
  local diff = S.maxdiff(S.flatten(got:totable()), S.flatten(want))
  assert.is_true(diff < (tol or 2e-5), ("max difference %g"):format(diff))
end

describe("tensor.attention", function()
  local cases = {
    { "one head, one block", 1, 1, 5, 7, 64, {} },
    { "causal prefill, grouped heads", 4, 2, 37, 37, 32, { causal = true } },
    { "causal, rows after a cached prefix", 4, 2, 20, 130, 32, { causal = true } },
    { "one query row, long keys (split and merged)", 6, 2, 1, 300, 64, { causal = true } },
    { "one query row, one KV head, long keys", 3, 1, 1, 700, 32, { causal = true } },
    { "head size 128", 2, 1, 3, 70, 128, { causal = true } },
    { "head size 40 (the AVX2 kernels; AVX-512 leaves it to the portable ones)", 4, 4, 9, 80, 40, { causal = true } },
    { "head size 20 (portable kernels at every level)", 3, 1, 7, 90, 20, { causal = true } },
    { "sliding window", 2, 1, 30, 100, 32, { causal = true, window = 17 } },
    { "softcap and scale", 2, 2, 6, 90, 64, { softcap = 0.7, scale = 0.3 } },
    { "ALiBi slopes", 4, 4, 12, 40, 32, { causal = true, alibi = { 0.5, 0.25, 0.125, 0.0625 } } },
    -- the soft-cap's and ALiBi's SIMD paths: scores from near 0 to past the cap's saturation,
    -- rows of every length (blocks and tails), a window with both
    { "softcap over a long causal prefill", 2, 1, 70, 70, 32, { causal = true, softcap = 3, scale = 0.05 } },
    { "softcap saturating, ALiBi and a window", 2, 2, 40, 150, 32,
      { causal = true, softcap = 0.5, window = 37, alibi = { 0.03125, 0.0078125 } } },
    { "more query rows than keys", 2, 1, 8, 3, 32, { causal = true } },
  }
  for _, c in ipairs(cases) do
    it(c[1], function() check(c[2], c[3], c[4], c[5], c[6], c[7]) end)
  end

  it("an additive mask, -inf hiding keys, and a row that sees nothing", function()
    local n, nkv = 3, 20
    local mask = {}
    for i = 1, n do
      mask[i] = {}
      for j = 1, nkv do mask[i][j] = (i == 3 or (i + j) % 3 == 0) and -math.huge or 0.1 * j end
    end
    check(2, 1, n, nkv, 64, { mask = mask })
    local got = T.attention(T.ones({ 2, n, 64 }), T.ones({ 1, nkv, 64 }), T.ones({ 1, nkv, 64 }), { mask = T.new(mask) })
    assert.are.equal(0, got[1][3]:abs():sum())
  end)

  -- Few query vectors (decode: one row's g heads; M = rows x g < 16) read keys and values
  -- straight from the store, each row once for all g heads, in groups of up to 8 vectors:
  -- g = 1, 3, 8 and 12 (two groups), the cache types, head sizes, key counts that are not a
  -- multiple of the 64-key block, and the score adjustments on that path.
  local decode = {
    -- name, query heads, KV heads, query rows, keys, head size, options, KV type
    { "g = 8 (TinyLlama), f16", 16, 2, 1, 333, 64, { causal = true }, "f16" },
    { "g = 8, q8_0", 8, 1, 1, 200, 64, { causal = true }, "q8_0" },
    { "g = 8, f32, head size 128", 8, 1, 1, 150, 128, { causal = true } },
    { "g = 3 (SmolLM), f16", 9, 3, 1, 271, 64, { causal = true }, "f16" },
    { "g = 3, q8_0, head size 96", 6, 2, 1, 100, 96, { causal = true }, "q8_0" },
    { "g = 1, f16, head size 48", 3, 3, 1, 129, 48, { causal = true }, "f16" },
    { "g = 1, head size 80", 2, 2, 1, 65, 80, { causal = true } },
    { "g = 12 (two groups of query vectors), f16", 12, 1, 1, 190, 64, { causal = true }, "f16" },
    { "g = 2 and 7 rows (M = 14), f16", 4, 2, 7, 90, 64, { causal = true }, "f16" },
    { "g = 5, q8_0, head size 128", 5, 1, 1, 77, 128, { causal = true }, "q8_0" },
    { "g = 8, a window, f16", 8, 1, 1, 300, 64, { causal = true, window = 100 }, "f16" },
    { "g = 4, softcap and ALiBi, f16", 8, 2, 1, 140, 64,
      { causal = true, softcap = 2, scale = 0.2, alibi = { 0.5, 0.25, 0.125, 0.0625, 0.03, 0.02, 0.01, 0.005 } }, "f16" },
    { "one key", 8, 1, 1, 1, 64, { causal = true }, "f16" },
  }
  for _, c in ipairs(decode) do
    it("decode: " .. c[1], function() check(c[2], c[3], c[4], c[5], c[6], c[7], c[8]) end)
  end

  it("decode: an additive mask hiding keys, f16", function()
    local nkv = 150
    local mask = { {} }
    for j = 1, nkv do mask[1][j] = j % 5 == 0 and -math.huge or 0.01 * j end
    check(8, 1, 1, nkv, 64, { mask = mask }, "f16")
  end)

  it("f16 and q8_0 keys and values", function()
    check(2, 1, 10, 130, 64, { causal = true }, "f16", 2e-5)
    check(4, 2, 1, 260, 64, { causal = true }, "q8_0", 2e-5)
    -- many query vectors: keys converted straight into the transposed block, a partial
    -- last block of 16 keys and of 8
    check(6, 2, 20, 100, 64, { causal = true }, "q8_0", 2e-5)
    check(4, 1, 9, 72, 32, { causal = true }, "f16", 2e-5)
  end)

  it("refuses what it cannot do, naming the argument", function()
    local q, k = T.zeros({ 3, 2, 16 }), T.zeros({ 2, 4, 16 })
    assert.has_error(function() T.attention(q, k, k) end,
      "bad argument #2 to 'attention' (3 query heads cannot share 2 key/value heads)")
    assert.has_error(function() T.attention(T.zeros({ 2, 16 }), k, k) end,
      "bad argument #1 to 'attention' (q must have 3 dimensions {heads, tokens, head_dim}, got 2)")
    assert.has_error(function() T.attention(T.zeros({ 2, 2, 8 }), k, k) end,
      "bad argument #2 to 'attention' (head sizes of q, k and v differ)")
    assert.has_error(function() T.attention(T.zeros({ 2, 2, 16 }), k, k, { mask = T.zeros({ 2, 5 }) }) end,
      "bad argument #4 to 'attention' (mask must be {2, 4})")
    assert.has_error(function() T.attention(T.zeros({ 2, 2, 16 }), k, k, { alibi = { 1 } }) end,
      "bad argument #4 to 'attention' (alibi must hold one slope per query head (2))")
    assert.has_error(function() T.attention(T.zeros({ 2, 2, 16 }), k, k, { window = -1 }) end,
      "bad argument #4 to 'attention' (softcap and window must not be negative)")
  end)
end)

describe("attention in the forward pass", function()
  it("a long prompt in one batch gives the logits of the same tokens one at a time", function()
    local model = assert(lm.load(S.path("ref/mini-f32.gguf")))
    local ids = {}
    for i = 1, 260 do ids[i] = 3 + (i * 37) % 500 end
    for _, kv in ipairs { "f32", "f16", "q8_0" } do
      local a = assert(model:context { n_ctx = 320, kv_type = kv })
      local all = a:decode(ids, { logits = "all" })
      local b = assert(model:context { n_ctx = 320, kv_type = kv })
      for i = 1, #ids do
        local l = b:decode({ ids[i] })
        if i == 1 or i == 130 or i == #ids then
          local d = S.maxdiff(l:totable(), all[i]:totable())
          assert.is_true(d < 1e-4, ("%s, token %d: %g"):format(kv, i, d))
        end
      end
    end
  end)
end)
