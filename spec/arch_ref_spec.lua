-- The families of issue 13 against llama.cpp on the random-weight models of
-- ../shared/ref-arch (README there): mpt (ALiBi, LayerNorm, clamp_kqv, GELU), gemma2
-- (soft-caps, post-norms, GeGLU, sliding window), gemma3 (q/k norms, local RoPE base,
-- 5 local : 1 global), phi3 (fused q/k/v and gate/up), each in F32 and Q8_0 in llama.cpp's
-- two settings; BERT's pooled and per-token embeddings through model:embed; sliding-window
-- caches that keep only the window.
local lm = require "moonlm"
local S = require "support"

local IDS = { 1, 403, 407, 261, 378, 383, 286, 261, 376, 400, 428, 395, 392, 412, 444, 263, 415, 414, 397, 355, 267,
              352, 379, 426 }
local V = 512

local function ref(name) return S.path("ref-arch/" .. name) end

-- tolerances of ../shared/ref-arch/README.md, as a fraction of the largest |logit|
local function tolerance(arch, ty, precise)
  if ty == "q8_0" then return 3e-2 end
  if not precise then return 3e-3 end
  return arch == "phi3" and 1e-5 or 1e-3
end

describe("families against llama.cpp (ref-arch)", function()
  for _, arch in ipairs { "phi3", "mpt", "gemma2", "gemma3" } do
    for _, ty in ipairs { "f32", "q8_0" } do
      for _, precise in ipairs { true, false } do
        local setting = precise and "precise (f32 cache)" or "default (f16 cache)"
        it(("%s %s, %s"):format(arch, ty, setting), function()
          local m = assert(lm.load(ref(arch .. "-" .. ty .. ".gguf")))
          assert.are.equal(arch, m.arch)
          local ctx = assert(m:context { n_ctx = 64, kv_type = precise and "f32" or "f16" })
          local got = ctx:decode(IDS, { logits = "all" }):totable()
          local want = S.read_f32(ref(arch .. "-" .. ty .. (precise and ".precise" or "") .. ".logits.f32"))
          local maxabs, maxdiff = 0, 0
          for i = 1, #want do maxabs = math.max(maxabs, math.abs(want[i])) end
          local tol = tolerance(arch, ty, precise)
          for t = 1, #IDS do
            local best, second, bi, gi, gbest = -math.huge, -math.huge, 0, 0, -math.huge
            for v = 1, V do
              local w, g = want[(t - 1) * V + v], got[t][v]
              maxdiff = math.max(maxdiff, math.abs(w - g))
              if w > best then best, second, bi = w, best, v elseif w > second then second = w end
              if g > gbest then gbest, gi = g, v end
            end
            -- top-1 agrees wherever the reference margin exceeds twice the tolerance
            if best - second > 2 * tol * maxabs then
              assert.are.equal(bi, gi, ("position %d: top-1 %d, llama.cpp %d"):format(t, gi - 1, bi - 1))
            end
          end
          assert.is_true(maxdiff <= tol * maxabs, ("max diff %.3g > %.3g (%.3g of max |logit|)"):format(
            maxdiff, tol * maxabs, maxdiff / maxabs))
          m:close()
        end)
      end
    end
  end
end)

local function cosine(a, b)
  local d, na, nb = 0, 0, 0
  for i = 1, #a do d, na, nb = d + a[i] * b[i], na + a[i] * a[i], nb + b[i] * b[i] end
  return d / math.sqrt(na * nb)
end

describe("BERT embeddings against llama.cpp (ref-arch)", function()
  local texts = {}
  for l in io.lines(ref("bert-texts.txt")) do texts[#texts + 1] = l end
  for _, ty in ipairs { "f32", "q8_0" } do
    it(ty .. ": pooled CLS (the file's pooling) and MEAN, raw and normalised, and per-token states", function()
      local m = assert(lm.load(ref("bert-" .. ty .. ".gguf")))
      assert.are.equal("cls", m.pooling)
      assert.is_false(m.causal)
      local min_cos, abs_tol = ty == "f32" and 0.99999 or 0.999, ty == "f32" and 5e-4 or 1e-2
      local function check(rows, file, normalised)
        local want = S.read_f32(ref("bert-" .. ty .. ".precise." .. file))
        for i = 1, #texts do
          local w = {}
          for c = 1, 128 do w[c] = want[(i - 1) * 128 + c] end
          local g = rows[i]:totable()
          assert.is_true(cosine(g, w) >= min_cos, ("%s text %d: cosine %.7f"):format(file, i, cosine(g, w)))
          if normalised then S.near(g, w, abs_tol, file) end
        end
      end
      check(m:embed(texts), "cls.raw.f32")                       -- one batch, three lengths
      check(m:embed(texts, { normalize = true }), "cls.f32", true)
      check(m:embed(texts, { pooling = "mean" }), "mean.raw.f32")
      check(m:embed(texts, { pooling = "mean", normalize = true }), "mean.f32", true)
      -- pooling none: the hidden state of every token, the texts in order
      local per = m:embed(texts, { pooling = "none" })
      local want = S.read_f32(ref("bert-" .. ty .. ".precise.tokens.f32"))
      local row, maxabs, maxdiff = 0, 0, 0
      for i = 1, #texts do
        local t = per[i]:totable()
        for r = 1, #t do
          for c = 1, 128 do
            local w = want[row * 128 + c]
            maxabs, maxdiff = math.max(maxabs, math.abs(w)), math.max(maxdiff, math.abs(w - t[r][c]))
          end
          row = row + 1
        end
      end
      assert.are.equal(58, row)
      local tol = ty == "f32" and 1e-3 or 3e-2
      assert.is_true(maxdiff <= tol * maxabs, ("per-token max diff %.3g of %.3g"):format(maxdiff, maxabs))
      -- one text alone gives its row of the batch
      S.near(m:embed(texts[2])[1], m:embed(texts)[2], 1e-4)
      m:close()
    end)
  end

  it("an encoder: no logits, texts past its positions refused (or cut on request), no state kept", function()
    local m = assert(lm.load(ref("bert-f32.gguf")))
    local ctx = assert(m:context { n_ctx = 64 })
    local ok, err = ctx:decode({ 101, 1996, 102 })
    assert.is_nil(ok)
    assert.matches("no output head", err)
    local long = ("word "):rep(600)
    local e, eerr = m:embed(long)
    assert.is_nil(e)
    assert.matches("more than the 512 positions", eerr)
    local cut = assert(m:embed(long, { truncate = true }))
    assert.are.same({ 1, 128 }, cut:shape())
    -- two calls in a row give the same vectors: nothing of the first stays in the context
    S.near(m:embed("hello there"), m:embed("hello there"), 0)
    assert.has_error(function() m:embed("x", { pooling = "rank" }) end)
  end)
end)

describe("a BERT reranker (pooling rank: the classifier head on [CLS])", function()
  it("scores as cls.output(tanh(cls(h_cls)))", function()
    local T = lm.tensor
    local src = assert(lm.load(ref("bert-f32.gguf")))
    local meta = {}
    for k, v in pairs(src.meta) do
      if type(v) == "number" then
        meta[k] = lm.gguf_value(k:find("epsilon", 1, true) and "f32" or "u32", v)
      elseif k ~= "tokenizer.ggml.token_type" then
        meta[k] = v
      end
    end
    meta["tokenizer.ggml.token_type"] = lm.gguf_value("i32", src.meta["tokenizer.ggml.token_type"])
    meta["bert.pooling_type"] = lm.gguf_value("u32", 4)
    local t = {}
    for k, x in pairs(assert(lm.load_tensors(ref("bert-f32.gguf")))) do t[k] = x:clone() end
    t["cls.weight"], t["cls.bias"] = T.randn({ 128, 128 }, { seed = 5, std = 0.1 }), T.randn({ 128 }, { seed = 6, std = 0.1 })
    t["cls.output.weight"], t["cls.output.bias"] = T.randn({ 1, 128 }, { seed = 7, std = 0.3 }), T.randn({ 1 }, { seed = 8 })
    local path = S.tmpname(".gguf")
    assert(lm.save(path, t, meta))
    src:close()
    local m = assert(lm.load(path))
    assert.are.equal("rank", m.pooling)
    local texts = { "what is a panda?", "The giant panda is a bear native to China." }
    local scores, cls = m:embed(texts):totable(), m:embed(texts, { pooling = "cls" }):totable()
    local W, b = t["cls.weight"]:totable(), t["cls.bias"]:totable()
    local wo, bo = t["cls.output.weight"]:totable()[1], t["cls.output.bias"]:totable()[1]
    for i = 1, #texts do
      local s = bo
      for r = 1, 128 do
        local y = b[r]
        for c = 1, 128 do y = y + W[r][c] * cls[i][c] end
        s = s + wo[r] * math.tanh(y)
      end
      assert.is_true(math.abs(scores[i][1] - s) < 1e-4 * math.max(1, math.abs(s)), ("%g vs %g"):format(scores[i][1], s))
    end
    m:close()
    os.remove(path)
  end)
end)

describe("sliding-window layers", function()
  it("keep only the window in their cache, and decoding past it stays exact", function()
    local m = assert(lm.load(ref("gemma2-f32.gguf")))
    assert.are.equal(16, m.n_swa)
    local full = assert(lm.load(ref("phi3-f32.gguf")))
    -- the cache memory of 3 layers (2 local) with n_ctx 4096: the local ones hold the
    -- window, slack and one batch, not the context
    local big = assert(m:context { n_ctx = 4096, n_batch = 64, kv_type = "f32" })
    local row = 2 * 64 * 4 -- bytes of a cached row: 2 heads of 64, f32
    assert.are.equal(2 * row * (4096 * 1 + (16 - 1 + 64 + 64) * 2), big:info().kv_bytes)
    big:close()
    -- 120 tokens one at a time (evicting past position 79) against one chunk of 120, where
    -- nothing is evicted before attention ran (the cache holds the window, the slack and the
    -- chunk), so only the mask keeps the window; and against chunks of 64 (evicting between)
    local ids = {}
    for i = 1, 120 do ids[i] = (i * 37) % 500 + 3 end
    local a = assert(m:context { n_ctx = 512, n_batch = 64, kv_type = "f32" })
    local la
    for i = 1, #ids do la = a:decode({ ids[i] }) end
    local b = assert(m:context { n_ctx = 512, n_batch = 128, kv_type = "f32" })
    local lb = b:decode(ids, { logits = "all" }):totable()
    local b64 = assert(m:context { n_ctx = 512, n_batch = 64, kv_type = "f32" })
    local l64 = b64:decode(ids, { logits = "all" }):totable()
    assert.is_true(S.maxdiff(la:totable(), lb[120]) < 1e-4)
    for t = 1, 120 do assert.is_true(S.maxdiff(l64[t], lb[t]) < 1e-4, "position " .. t) end
    b64:close()
    -- rewinding: within the slack it keeps what was asked; further back it must start over
    assert.are.equal(110, a:truncate(0, 110))
    assert.are.equal(0, a:truncate(0, 30))
    assert.are.equal(0, a:pos(0))
    -- a sequence copied keeps working
    local c = assert(m:context { n_ctx = 1024, n_batch = 64, seqs = 2, kv_type = "f32" })
    c:decode(ids)
    c:copy(0, 1)
    S.near(c:decode({ 7 }, { seq = 1 }), c:decode({ 7 }, { seq = 0 }), 0)
    -- the saved state of a sequence holds the window, and loads back
    local st = c:state_save(0)
    c:clear()
    assert(c:state_load(1, st))
    S.near(c:decode({ 9 }, { seq = 1 }), b:decode({ 7, 9 }), 1e-4)
    full:close()
    m:close()
  end)
end)
