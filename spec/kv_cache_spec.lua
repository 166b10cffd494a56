-- lm.kv_cache: what goes in comes back in the cache type's rounding, per layer and
-- sequence; cells are claimed once per position and shared by copies; truncate, copy and
-- clear per sequence; views go stale when their sequence changes under them; a full cache
-- says so and stays usable.
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

-- what the cache holds for t: the same rounding as converting it to the cache type
local function rounded(t, ty)
  if ty == "f32" then return t end
  return t:to(ty):to("f32")
end

describe("kv_cache", function()
  for _, ty in ipairs({ "f32", "f16", "q8_0" }) do
    it("stores keys and values per layer and sequence (" .. ty .. ")", function()
      local H, D = 3, 32
      local kv = assert(lm.kv_cache { layers = 2, kv_heads = H, head_dim = D, n_ctx = 40, type = ty, seqs = 3 })
      assert.are.same({ 2, H, D, 40, ty, 3 }, { kv.layers, kv.kv_heads, kv.head_dim, kv.n_ctx, kv.type, kv.seqs })
      local k1, v1 = T.randn({ H, 5, D }, { seed = 1 }), T.randn({ H, 5, D }, { seed = 2 })
      local k2, v2 = T.randn({ H, 7, D }, { seed = 3 }), T.randn({ H, 7, D }, { seed = 4 })
      -- layer 0 claims the cells, layer 1 writes into them; rows {n, H*D} work as well
      assert.is_true(kv:append(0, 1, k1, v1))
      assert.are.equal(5, kv:pos(1))
      assert.are.equal(5, kv:used())
      assert.is_true(kv:append(1, 1, k1 * 2, v1 * 2))
      assert.are.equal(5, kv:used())
      assert.is_true(kv:append(0, 1, k2:transpose(1, 2):reshape(7, H * D), v2:transpose(1, 2):reshape(7, H * D)))
      assert.is_true(kv:append(1, 1, k2 * 2, v2 * 2))
      assert.are.equal(12, kv:pos(1))
      assert.are.equal(0, kv:pos(0))
      local w0, w1 = kv:view(0, 1), kv:view(1, 1)
      assert.are.equal(12, #w0)
      assert.are.same({ 12, 0, 1 }, { w0.n, w0.layer, w0.seq })
      local kk, vv = T.cat({ k1, k2 }, 2), T.cat({ v1, v2 }, 2)
      assert.is_true(w0:k() == rounded(kk, ty))
      assert.is_true(w0:v() == rounded(vv, ty))
      assert.is_true(w1:k() == rounded(kk * 2, ty))
      assert.are.equal(0, #kv:view(0, 0))
    end)
  end

  it("copies share cells; truncate and clear release them; stale views are refused", function()
    local kv = lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 4, n_ctx = 10, seqs = 2, type = "f32" }
    local k = T.arange(24):view(1, 6, 4)
    kv:append(0, 0, k, -k)
    local w = kv:view(0, 0)
    kv:copy(0, 1)
    assert.are.equal(6, kv:pos(1))
    assert.are.equal(6, kv:used()) -- shared
    assert.is_true(kv:view(0, 1):k() == k)
    assert.are.equal(2, kv:truncate(0, 2))
    assert.are.equal(6, kv:used()) -- still held by sequence 1
    assert.has_error(function() w:k() end,
      "bad argument #1 to 'k' (stale kv_view: its sequence was truncated, copied over or cleared since (take a new view))")
    assert.is_true(kv:view(0, 0):k() == k:narrow(2, 1, 2))
    -- appending to one sequence leaves the other's view valid and unchanged
    local w1 = kv:view(0, 1)
    kv:append(0, 0, T.ones(1, 3, 4), T.ones(1, 3, 4))
    assert.is_true(w1:k() == k)
    assert.are.equal(9, kv:used())
    kv:clear(1)
    assert.are.equal(5, kv:used())
    assert.are.equal(0, kv:pos(1))
    kv:clear()
    assert.are.equal(0, kv:used())
  end)

  it("a full cache returns nil, err and is unchanged", function()
    local kv = lm.kv_cache { layers = 2, kv_heads = 2, head_dim = 8, n_ctx = 6 }
    assert.is_true(kv:append(0, 0, T.ones(2, 4, 8), T.ones(2, 4, 8)))
    local ok, err = kv:append(0, 0, T.ones(2, 3, 8), T.ones(2, 3, 8))
    assert.is_nil(ok)
    assert.are.equal("kv cache full (n_ctx = 6)", err)
    assert.are.equal(4, kv:pos(0))
    assert.are.equal(4, #kv:view(0, 0))
    assert.is_true(kv:append(0, 0, T.ones(2, 2, 8), T.ones(2, 2, 8)))
    -- layer 1 writes into the cells layer 0 claimed: no room needed
    assert.is_true(kv:append(1, 0, T.ones(2, 6, 8), T.ones(2, 6, 8)))
  end)

  -- kv:attend is x:rope_ on q and k, kv:append and T.attention over the view, in one call
  for _, case in ipairs({ { "f32", "normal" }, { "f16", "neox" }, { "q8_0", false } }) do
    local ty, mode = case[1], case[2]
    it("attend: one call for rope, append and attention, as the ops one by one (" .. ty .. ", rope " ..
      tostring(mode) .. ")", function()
      local H, Hk, D, L = 6, 2, 32, 2
      -- normal: frequencies from rope_freqs (base 500), neox: from the base
      local rope = mode == "normal" and { mode = mode, freqs = T.rope_freqs { dims = D, base = 500 } } or
        mode and { mode = mode, base = 10000 } or nil
      local opts = { causal = true, rope = rope or false }
      local a = assert(lm.kv_cache { layers = L, kv_heads = Hk, head_dim = D, n_ctx = 200, type = ty, seqs = 2 })
      local b = assert(lm.kv_cache { layers = L, kv_heads = Hk, head_dim = D, n_ctx = 200, type = ty, seqs = 2 })
      local seed = 10
      -- a prefill of 160 rows (rotated on every thread), then one-row decodes, then 3 rows,
      -- on sequence 1, every layer
      for _, n in ipairs({ 160, 1, 1, 3 }) do
        for layer = 0, L - 1 do
          seed = seed + 3
          local q = T.randn({ n, H * D }, { seed = seed })
          local k, v = T.randn({ n, Hk * D }, { seed = seed + 1 }), T.randn({ n, Hk * D }, { seed = seed + 2 })
          local q0, k0 = q:clone(), k:clone()
          local pos = #b:view(layer, 1)
          local out = (n == 1) and T.empty(n, H * D) or nil
          local got = assert(a:attend(layer, 1, q, k, v, opts, out))
          if out then assert.are.equal(out, got) end
          -- q and k are left as they were
          assert.is_true(q == q0)
          assert.is_true(k == k0)
          local qr, kr = q:clone(), k:clone()
          if rope then
            qr:view(n, H, D):transpose(1, 2):rope_(pos, rope)
            kr:view(n, Hk, D):transpose(1, 2):rope_(pos, rope)
          end
          assert.is_true(b:append(layer, 1, kr, v))
          local want = T.attention(qr, b:view(layer, 1), { causal = true, heads = H })
          S.near(got, want, 1e-6)
          assert.is_true(a:view(layer, 1):k() == b:view(layer, 1):k())
          assert.is_true(a:view(layer, 1):v() == b:view(layer, 1):v())
        end
      end
      assert.are.same({ 0, 165, 165 }, { a:pos(0), a:pos(1), a:used() })
      -- rows with a row stride (narrowed from one product), alibi and a window, as T.attention
      local qkv = T.randn({ 2, (H + 2 * Hk) * D }, { seed = 99 })
      local q, k, v = qkv:narrow(2, 1, H * D), qkv:narrow(2, H * D + 1, Hk * D), qkv:narrow(2, (H + Hk) * D + 1, Hk * D)
      local slopes = T.alibi_slopes(H, 8)
      local o2 = { causal = true, window = 4, alibi = slopes, scale = 0.1 }
      local got = assert(a:attend(0, 0, q, k, v, o2))
      assert.is_true(b:append(0, 0, k, v))
      S.near(got, T.attention(q, b:view(0, 0), { causal = true, window = 4, alibi = slopes, scale = 0.1, heads = H }),
        1e-6)
    end)
  end

  it("attend: a full cache returns nil, err and writes nothing; bad arguments are named", function()
    local kv = lm.kv_cache { layers = 1, kv_heads = 2, head_dim = 8, n_ctx = 4 }
    local q, k = T.ones(3, 32), T.ones(3, 16)
    assert(kv:attend(0, 0, q, k, k))
    local ok, err = kv:attend(0, 0, q, k, k, { causal = true })
    assert.is_nil(ok)
    assert.are.equal("kv cache full (n_ctx = 4)", err)
    assert.are.same({ 3, 3 }, { kv:pos(0), #kv:view(0, 0) })
    local one, k1 = T.ones(1, 32), T.ones(1, 16)
    assert.has_error(function() kv:attend(1, 0, one, k1, k1) end,
      "bad argument #2 to 'attend' (layer 1 out of range (0 to 0))")
    assert.has_error(function() kv:attend(0, 0, T.ones(1, 30), k1, k1) end,
      "bad argument #4 to 'attend' (q must be f32 rows {n, heads · 8})")
    assert.has_error(function() kv:attend(0, 0, one:to("f16"), k1, k1) end,
      "bad argument #4 to 'attend' (q must be f32 rows {n, heads · 8})")
    assert.has_error(function() kv:attend(0, 0, one, T.ones(1, 24), k1) end,
      "bad argument #5 to 'attend' (k must be {n, 16} (kv_heads · head_dim))")
    assert.has_error(function() kv:attend(0, 0, one, k1, T.ones(2, 16)) end,
      "bad argument #6 to 'attend' (1 rows of q, 1 of k and 2 of v)")
    assert.has_error(function() kv:attend(0, 0, T.ones(1, 24), k1, k1) end,
      "bad argument #4 to 'attend' (3 query heads cannot share 2 key/value heads)")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, { heads = 4 }) end,
      "bad argument #7 to 'attend' (unknown option 'heads')")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, { rope = 1 }) end,
      "bad argument #7 to 'attend' (option 'rope' must be a table (the options of x:rope) or false)")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, { rope = { mode = "spiral" } }) end,
      "bad argument #7 to 'attend' (mode must be \"normal\" or \"neox\", got \"spiral\")")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, { rope = { base = 1e4, spin = 1 } }) end,
      "bad argument #7 to 'attend' (unknown option 'spin')")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, { mask = T.zeros(1, 2) }) end,
      "bad argument #7 to 'attend' (mask must be {1, 4})")
    assert.has_error(function() kv:attend(0, 0, one, k1, k1, {}, T.empty(2, 32)) end,
      "bad argument #8 to 'attend' (out must be a contiguous f32 tensor {1, 32})")
    -- none of that wrote anything
    assert.are.same({ 3, 3 }, { kv:pos(0), #kv:view(0, 0) })
  end)

  it("refuses bad options and arguments, naming them", function()
    assert.has_error(function() lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 4 } end,
      "bad argument #1 to 'kv_cache' (option 'n_ctx' is required)")
    assert.has_error(function() lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 4, n_ctx = 4, type = "q4_0" } end,
      "bad argument #1 to 'kv_cache' (type must be \"f16\", \"f32\" or \"q8_0\")")
    assert.has_error(function() lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 20, n_ctx = 4, type = "q8_0" } end,
      "bad argument #1 to 'kv_cache' (type q8_0 needs a head_dim that is a multiple of 32 (got 20))")
    assert.has_error(function() lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 4, n_ctx = 4, seq = 2 } end,
      "bad argument #1 to 'kv_cache' (unknown option 'seq')")
    assert.has_error(function() lm.kv_cache { layers = 1, kv_heads = 1, head_dim = 4, n_ctx = 4, seqs = 65 } end,
      "bad argument #1 to 'kv_cache' (option 'seqs' = 65 out of range [1, 64])")
    local kv = lm.kv_cache { layers = 2, kv_heads = 2, head_dim = 4, n_ctx = 4 }
    assert.has_error(function() kv:append(2, 0, T.ones(2, 1, 4), T.ones(2, 1, 4)) end,
      "bad argument #2 to 'append' (layer 2 out of range (0 to 1))")
    assert.has_error(function() kv:append(0, 1, T.ones(2, 1, 4), T.ones(2, 1, 4)) end,
      "bad argument #3 to 'append' (sequence 1 out of range (0 to 0))")
    assert.has_error(function() kv:append(0, 0, T.ones(3, 1, 4), T.ones(2, 1, 4)) end,
      "bad argument #4 to 'append' (expected {2, n, 4} (kv_heads, tokens, head_dim) or {n, 8})")
    assert.has_error(function() kv:append(0, 0, T.ones(2, 1, 4), T.ones(2, 2, 4)) end,
      "bad argument #5 to 'append' (2 values for 1 keys)")
    kv:close()
    assert.has_error(function() kv:pos(0) end, "bad argument #1 to 'pos' (kv_cache has been closed)")
  end)
end)
