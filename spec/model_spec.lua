-- Models against data other engines produced: stories260K (llama2.c's run.c) and the random
-- mini models in every weight type (llama.cpp's logits). Read from ../shared, never copied.
local lm = require "moonlm"
local json = require "moonlm.json"
local S = require "support"
local T = lm.tensor

local stories = S.path("models/stories260K.gguf")

local function argmax(row)
  local best, bi = -math.huge, 0
  for i = 1, #row do
    if row[i] > best then best, bi = row[i], i end
  end
  return bi - 1
end

describe("stories260K against llama2.c", function()
  local ref = json.decode(S.read_file(S.path("models/stories260K.reference.json")))
  local model = assert(lm.load(stories))

  it("loads with the right facts", function()
    assert.are.equal("llama", model.arch)
    assert.are.equal(512, model.n_vocab)
    assert.are.equal(64, model.n_embd)
    assert.are.equal(5, model.n_layer)
    assert.are.equal(8, model.n_head)
    assert.are.equal(4, model.n_head_kv)
    assert.are.equal(2048, model.n_ctx_train)
    assert.are.equal("llama", model.meta["general.architecture"])
    assert.are.equal(1, model.vocab.bos)
    -- n_params counts every element in the file
    local n = 0
    for _, name in ipairs(model:tensor_names()) do n = n + model:tensor(name):numel() end
    assert.are.equal(n, model.n_params)
  end)

  it("greedy decoding from BOS gives the 256 reference ids, and their top-5 logits", function()
    local ctx = assert(model:context { n_ctx = 512, kv_type = "f32" })
    local logits = ctx:decode({ 1 })
    local per = {}
    for _, p in ipairs(ref.per_position) do per[p.pos] = p end
    local worst = 0
    for i = 1, 256 do
      local p = per[i - 1]
      if p then
        for _, pair in ipairs(p.top5) do
          local d = math.abs(logits[pair[1] + 1] - pair[2])
          if d > worst then worst = d end
        end
      end
      local id = logits:argmax() - 1
      assert.are.equal(ref.greedy_ids[i], id, "step " .. i)
      if i < 256 then logits = ctx:decode({ id }) end
    end
    assert.is_true(worst < 1e-3, "top-5 logits differ by " .. worst)
  end)

  it("full logits at positions 0 and 1", function()
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32" })
    local all = ctx:decode({ 1, ref.greedy_ids[1] }, { logits = "all" })
    local full = ref.full_logits_pos0_and_pos1
    local rows = { full["0"] or full.pos0 or full[1], full["1"] or full.pos1 or full[2] }
    for r = 1, 2 do
      assert.are.equal(512, #rows[r])
      S.near(all[r], rows[r], 1e-3)
    end
  end)
end)

-- the mini models: one batch of 24 tokens, logits at every position
local index = json.decode(S.read_file(S.path("ref/index.json"))).files
local function tolerance(entry)
  local t = entry.type
  if t == "F32" then return 1e-5, nil end
  if t == "F16" then return 2e-3, nil end
  if t == "BF16" then return 1e-2, nil end
  return 3e-2, 0.01
end

describe("random mini models against llama.cpp (precise settings, f32 KV)", function()
  for _, entry in ipairs(index) do
    it(entry.name, function()
      local path = entry.gguf:find("^%.%./") and S.path("ref/" .. entry.gguf) or S.path("ref/" .. entry.gguf)
      local model = assert(lm.load(path))
      local ctx = assert(model:context { n_ctx = 64, kv_type = "f32" })
      local logits = ctx:decode(entry.token_ids, { logits = "all" })
      local want = S.read_f32(S.path("ref/" .. entry.precise_file))
      local nv = entry.n_vocab
      local maxabs, maxdiff, sq = 0, 0, 0
      for i = 1, #want do maxabs = math.max(maxabs, math.abs(want[i])) end
      local got = logits:view(-1):totable()
      for i = 1, #want do
        local d = math.abs(got[i] - want[i])
        maxdiff = math.max(maxdiff, d)
        sq = sq + d * d
      end
      local rel, rms_bound = tolerance(entry)
      local tol = rel * maxabs
      assert.is_true(maxdiff <= tol, ("%s: max |diff| %.3g > %.3g"):format(entry.name, maxdiff, tol))
      if rms_bound then
        local rms = math.sqrt(sq / #want)
        assert.is_true(rms <= rms_bound, ("%s: rms diff %.3g > %.3g"):format(entry.name, rms, rms_bound))
      end
      -- top-1 agrees wherever the reference is not a near tie
      for t = 0, entry.n_tokens - 1 do
        local row, gotrow = {}, {}
        for v = 1, nv do
          row[v] = want[t * nv + v]
          gotrow[v] = got[t * nv + v]
        end
        local a = argmax(row)
        local second = -math.huge
        for v = 1, nv do if v - 1 ~= a and row[v] > second then second = row[v] end end
        if row[a + 1] - second > 2 * tol then
          assert.are.equal(a, argmax(gotrow), ("%s: top-1 at position %d"):format(entry.name, t))
        end
      end
    end)
  end

  it("stories260K precise logits (one 24-token batch)", function()
    local entry = index[1]
    local model = assert(lm.load(stories))
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32" })
    local got = ctx:decode(entry.token_ids, { logits = "all" }):view(-1):totable()
    local want = S.read_f32(S.path("ref/stories260K.precise.logits.f32"))
    local maxabs = 0
    for i = 1, #want do maxabs = math.max(maxabs, math.abs(want[i])) end
    S.near(got, want, 1e-5 * maxabs)
  end)

  it("the default f16 cache lands within the default-settings tolerance", function()
    local entry = index[2] -- mini-f32
    local model = assert(lm.load(S.path("ref/" .. entry.gguf)))
    local ctx = assert(model:context { n_ctx = 64 })
    assert.are.equal("f16", ctx.kv_type)
    local got = ctx:decode(entry.token_ids, { logits = "all" }):view(-1):totable()
    local want = S.read_f32(S.path("ref/" .. entry.logits_file))
    local maxabs = 0
    for i = 1, #want do maxabs = math.max(maxabs, math.abs(want[i])) end
    S.near(got, want, 2e-3 * maxabs)
  end)
end)

describe("contexts and sequences", function()
  local model = assert(lm.load(stories))
  local prompt = { 1, 403, 407, 261, 378, 383, 286, 261 }

  local function run(ids, opts)
    local ctx = assert(model:context(opts or { n_ctx = 64, kv_type = "f32" }))
    return ctx:decode(ids, { logits = "all" }):clone()
  end

  it("token-by-token decoding equals one batch", function()
    local batch = run(prompt)
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32" })
    for i, id in ipairs(prompt) do
      local l = ctx:decode({ id })
      S.near(l, batch[i], 1e-4)
    end
    assert.are.equal(#prompt, ctx:pos(0))
  end)

  it("chunks of n_batch give the same logits", function()
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32", n_batch = 3 })
    S.near(ctx:decode(prompt, { logits = "all" }), run(prompt), 1e-4)
  end)

  it("sequences are independent, copy shares a prefix, truncate rewinds", function()
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32", seqs = 3 })
    ctx:decode({ 1, 403, 407 }, { seq = 0 })
    ctx:copy(0, 1)
    assert.are.equal(3, ctx:pos(1))
    assert.are.equal(3, ctx:used()) -- shared cells, not copies
    local a = ctx:decode({ 261, 378 }, { seq = 0 }):clone()
    local b = ctx:decode({ 261, 378 }, { seq = 1 }):clone()
    S.near(a, b, 1e-5)
    S.near(a, run({ 1, 403, 407, 261, 378 })[5], 1e-4)
    -- a different continuation in seq 2 from scratch
    local c = ctx:decode({ 1, 500 }, { seq = 2 })
    S.near(c, run({ 1, 500 })[2], 1e-4)
    -- rewind seq 0 and take another path
    ctx:truncate(0, 3)
    assert.are.equal(3, ctx:pos(0))
    S.near(ctx:decode({ 300 }, { seq = 0 }), run({ 1, 403, 407, 300 })[4], 1e-4)
    ctx:clear(1)
    assert.are.equal(0, ctx:pos(1))
    ctx:clear()
    assert.are.equal(0, ctx:used())
  end)

  it("decode_batch runs several sequences in one pass", function()
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32", seqs = 2 })
    local out = ctx:decode_batch { { { 1, 403, 407 }, seq = 0 }, { { 1, 500 }, seq = 1, logits = "all" } }
    S.near(out[1], run({ 1, 403, 407 })[3], 1e-4)
    S.near(out[2], run({ 1, 500 }), 1e-4)
    assert.are.equal(3, ctx:pos(0))
    assert.are.equal(2, ctx:pos(1))
  end)

  it("a full context says so and stays usable", function()
    local ctx = assert(model:context { n_ctx = 8, kv_type = "f32" })
    assert.truthy(ctx:decode({ 1, 403, 407, 261, 378 }))
    local l, err = ctx:decode({ 383, 286, 261, 376 })
    assert.is_nil(l)
    assert.are.equal("context full (n_ctx = 8)", err)
    assert.are.equal(5, ctx:pos(0))
    S.near(ctx:decode({ 383, 286, 261 }), run({ 1, 403, 407, 261, 378, 383, 286, 261 })[8], 1e-4)
    assert.is_nil(ctx:decode({ 1 }))
    ctx:truncate(0, 2)
    S.near(ctx:decode({ 407 }), run({ 1, 403, 407 })[3], 1e-4)
  end)

  it("state save and load restore a sequence without recomputing", function()
    local ctx = assert(model:context { n_ctx = 64, kv_type = "f32", seqs = 2 })
    ctx:decode(prompt, { seq = 0 })
    local bytes = ctx:state_save(0)
    local ctx2 = assert(model:context { n_ctx = 64, kv_type = "f32" })
    assert(ctx2:state_load(0, bytes))
    assert.are.equal(#prompt, ctx2:pos(0))
    S.near(ctx2:decode({ 376 }), ctx:decode({ 376 }), 1e-6)
    local other = assert(model:context { n_ctx = 64 }) -- f16 cache: incompatible
    local ok, err = other:state_load(0, bytes)
    assert.is_nil(ok)
    assert.truthy(err:find("does not match", 1, true))
    ok, err = ctx2:state_load(0, bytes:sub(1, -5))
    assert.is_nil(ok)
    assert.truthy(err:find("damaged", 1, true))
    assert.are.same({ nil, "saved state is truncated" }, { ctx2:state_load(0, "abc") })
  end)

  it("kv_type q8_0 and f16 stay close to f32", function()
    local want = run(prompt)
    local got16 = run(prompt, { n_ctx = 64, kv_type = "f16" })
    S.near(got16, want, 0.02)
    -- stories260K heads are 8 wide: too small for q8_0 blocks
    assert.has_error(function() model:context { n_ctx = 64, kv_type = "q8_0" } end,
      "bad argument #2 to 'context' (kv_type q8_0 needs a head size that is a multiple of 32 (this model has 8))")
    -- mini models have 64-wide heads
    local mini = assert(lm.load(S.path("ref/mini-f32.gguf")))
    local ids = index[2].token_ids
    local a = assert(mini:context { n_ctx = 64, kv_type = "f32" }):decode(ids, { logits = "all" })
    local b = assert(mini:context { n_ctx = 64, kv_type = "q8_0" }):decode(ids, { logits = "all" })
    S.near(b, a, 0.03)
  end)
end)

describe("model errors", function()
  local model = assert(lm.load(stories))
  local ctx = assert(model:context { n_ctx = 16 })

  local cases = {
    {"token id too large", function() return ctx:decode({ 1, 512 }) end,
     "bad argument #2 to 'decode' (token id 512 out of range (the vocabulary has 512: 0 to 511))"},
    {"negative token id", function() return ctx:decode({ -1 }) end,
     "bad argument #2 to 'decode' (token id -1 out of range (the vocabulary has 512: 0 to 511))"},
    {"not an id", function() return ctx:decode({ "a" }) end,
     "bad argument #2 to 'decode' (item 1 is not an integer token id)"},
    {"empty", function() return ctx:decode({}) end, "bad argument #2 to 'decode' (nothing to decode (no tokens))"},
    {"sequence", function() return ctx:decode({ 1 }, { seq = 1 }) end,
     "bad argument #3 to 'decode' (sequence 1 out of range (the context has 1: 0 to 0))"},
    {"logits mode", function() return ctx:decode({ 1 }, { logits = "some" }) end,
     "bad argument #3 to 'decode' (logits must be \"last\", \"all\" or \"none\", got \"some\")"},
    {"kv type", function() return model:context { kv_type = "q4_0" } end,
     "bad argument #2 to 'context' (kv_type must be f16, f32 or q8_0, got 'q4_0')"},
    {"seqs", function() return model:context { seqs = 65 } end,
     "bad argument #2 to 'context' (seqs = 65: at most 64 sequences)"},
    -- misuse of a sequence or a count is raised against the argument that holds it, while
    -- a bad saved state (an expected failure) is nil, err
    {"state_load sequence", function() return ctx:state_load(3, "") end,
     "bad argument #2 to 'state_load' (sequence 3 out of range (the context has 1: 0 to 0))"},
    {"truncate count", function() return ctx:truncate(0, -1) end, "bad argument #3 to 'truncate' (cannot keep -1 tokens)"},
    {"copy target", function() return ctx:copy(0, 2) end,
     "bad argument #3 to 'copy' (sequence 2 out of range (the context has 1: 0 to 0))"},
    {"hidden sequence", function() return ctx:hidden({ 1 }, 4) end,
     "bad argument #3 to 'hidden' (sequence 4 out of range (the context has 1: 0 to 0))"},
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ok, err = pcall(c[2])
      assert.is_false(ok)
      assert.are.equal(c[3], (tostring(err):gsub("^[^:]*:%d+: ", "")))
      assert.are.equal(0, ctx:pos(0)) -- nothing was written
    end)
  end

  it("errors point at the caller's line, not at moonlm's own wrappers", function()
    local ok, err = pcall(function() return ctx:decode({ 512 }) end) -- this line
    assert.is_false(ok)
    assert.truthy(err:find("^spec/model_spec%.lua:%d+: bad argument #2 to 'decode'"), err)
  end)

  it("files that are not models give nil, err", function()
    local m, err = lm.load("/nonexistent.gguf")
    assert.is_nil(m)
    assert.truthy(err:find("No such file", 1, true))
    -- a GGUF with an unknown architecture
    local p = S.tmpname(".gguf")
    assert(lm.save(p, { ["token_embd.weight"] = T.zeros(4, 8) }, { ["general.architecture"] = "mamba9" }))
    m, err = lm.load(p)
    assert.is_nil(m)
    assert.are.equal("unsupported architecture 'mamba9'", err)
    -- a llama whose tensors have the wrong shape
    local meta = { ["general.architecture"] = "llama", ["llama.embedding_length"] = 8, ["llama.block_count"] = 1,
                   ["llama.attention.head_count"] = 2, ["llama.feed_forward_length"] = 16,
                   ["llama.context_length"] = 32 }
    local w = {
      ["token_embd.weight"] = T.zeros(10, 8), ["output_norm.weight"] = T.ones(8),
      ["blk.0.attn_norm.weight"] = T.ones(8), ["blk.0.attn_q.weight"] = T.zeros(8, 8),
      ["blk.0.attn_k.weight"] = T.zeros(8, 8), ["blk.0.attn_v.weight"] = T.zeros(8, 8),
      ["blk.0.attn_output.weight"] = T.zeros(8, 8), ["blk.0.ffn_norm.weight"] = T.ones(8),
      ["blk.0.ffn_gate.weight"] = T.zeros(16, 8), ["blk.0.ffn_up.weight"] = T.zeros(16, 8),
      ["blk.0.ffn_down.weight"] = T.zeros(8, 15),
    }
    assert(lm.save(p, w, meta))
    m, err = lm.load(p)
    assert.is_nil(m)
    assert.are.equal(p .. ": tensor 'blk.0.ffn_down.weight' has shape {8, 15}, expected {8, 16}", err)
    w["blk.0.ffn_down.weight"] = T.zeros(8, 16)
    w["blk.0.attn_q.weight"] = nil
    assert(lm.save(p, w, meta))
    m, err = lm.load(p)
    assert.are.equal(p .. ": tensor 'blk.0.attn_q.weight' is missing", err)
    -- the fixed file loads and runs (no tokenizer: ids only)
    w["blk.0.attn_q.weight"] = T.randn({ 8, 8 }, { seed = 1 })
    assert(lm.save(p, w, meta))
    m = assert(lm.load(p))
    assert.is_true(m.tied_output)
    local l = assert(assert(m:context { n_ctx = 8 }):decode({ 1, 2, 3 }))
    assert.are.same({ 10 }, l:shape())
    os.remove(p)
  end)

  it("truncated model files give nil, err at every cut", function()
    local data = S.read_file(stories)
    local p = S.tmpname(".gguf")
    for _, cut in ipairs { 3, 8, 24, 100, 1000, 5000, 20000, math.floor(#data / 2), #data - 1 } do
      local f = io.open(p, "wb")
      f:write(data:sub(1, cut))
      f:close()
      local m, err = lm.load(p)
      assert.is_nil(m, "cut at " .. cut)
      assert.are.equal("string", type(err))
    end
    os.remove(p)
  end)

  it("prepare packs the weights once, up front", function()
    local m = assert(lm.load(S.path("ref/mini-q8_0.gguf")))
    local t = m:prepare()
    assert.are.equal("number", type(t))
    assert.are.equal(t, m:prepare()) -- already done: the same figure
    local v = assert(lm.load(S.path("tokenizer/ggml-vocab-gpt-2.gguf"), { vocab_only = true }))
    assert.has_error(function() v:prepare() end, "the model was loaded with vocab_only: it has no weights")
  end)

  it("mmap = false reads the file into memory and computes the same", function()
    local a = assert(lm.load(S.path("ref/mini-q4_0.gguf")))
    local want = assert(a:context { n_ctx = 32 }):decode({ 1, 403, 407 }, { logits = "all" }):clone()
    a:close()
    collectgarbage()
    local b = assert(lm.load(S.path("ref/mini-q4_0.gguf"), { mmap = false }))
    S.near(assert(b:context { n_ctx = 32 }):decode({ 1, 403, 407 }, { logits = "all" }), want, 0)
  end)

  it("loading the same file twice shares one model", function()
    local a, b = assert(lm.load(stories)), assert(lm.load(stories))
    assert.are.equal(a.handle, b.handle)
    local c = assert(lm.attach(a.handle))
    assert.are.equal(a.path, c.path)
    assert.is_nil((lm.attach(987654)))
  end)
end)
