-- The recommender example (examples/recsys.lua) and the tensor op it added: pairwise_dot,
-- the DLRM feature interaction. The model is checked against a plain-Lua computation with
-- the same weights (read back from its tensors), through a GGUF round trip, and batch
-- against per-request scoring.
local S = require "support"
local lm = require "moonlm"
local T = lm.tensor
local recsys = dofile("examples/recsys.lua")

-- plain-Lua pairwise dots of the rows of one matrix (a table of rows)
local function ref_pairs(rows, diagonal)
  local out = {}
  for i = 1, #rows do
    for j = 1, diagonal and i or i - 1 do
      local s = 0
      for k = 1, #rows[i] do s = s + rows[i][k] * rows[j][k] end
      out[#out + 1] = s
    end
  end
  return out
end

describe("tensor:pairwise_dot", function()
  local cases = { -- batch shape, n, d
    { {}, 1, 8 }, { {}, 2, 1 }, { { 3 }, 4, 8 }, { { 5 }, 7, 13 }, { { 2, 3 }, 5, 64 }, { { 1 }, 27, 70 },
  }
  for _, c in ipairs(cases) do
    local batch, n, d = c[1], c[2], c[3]
    it(("matches plain Lua for batch {%s}, n = %d, d = %d, with and without the diagonal"):format(
         table.concat(batch, ", "), n, d), function()
      local shape = {}
      for i, s in ipairs(batch) do shape[i] = s end
      shape[#shape + 1], shape[#shape + 2] = n, d
      local x = T.randn(shape, { seed = n * 100 + d })
      for _, diagonal in ipairs { false, true } do
        local y = x:pairwise_dot(diagonal)
        local pairs = diagonal and n * (n + 1) / 2 or n * (n - 1) / 2
        local want_shape = {}
        for i, s in ipairs(batch) do want_shape[i] = s end
        want_shape[#want_shape + 1] = pairs
        assert.are.same(want_shape, y:shape())
        -- every (n, d) matrix of the batch against the reference
        if pairs > 0 then
          local mats = x:reshape(-1, n, d):totable()
          local flat = y:reshape(-1, pairs):totable()
          for b = 1, #mats do
            S.near(flat[b], ref_pairs(mats[b], diagonal), 1e-4 * d)
          end
        end
      end
    end)
  end

  it("reads any strides and dtypes", function()
    local x = T.randn({ 3, 16, 5 }, { seed = 7 })
    local xt = x:transpose(2, 3) -- {3, 5, 16}, not contiguous
    S.near(xt:pairwise_dot(), xt:contiguous():pairwise_dot(), 1e-5)
    local h = x:transpose(2, 3):contiguous():to("bf16")
    S.near(h:pairwise_dot(), h:to("f32"):pairwise_dot(), 1e-5)
  end)

  it("equals the strict lower triangle of x · xᵀ", function()
    local x = T.randn({ 4, 6, 32 }, { seed = 9 })
    local gram = x:matmul(x:transpose(2, 3)):totable()
    local want = {}
    for b = 1, 4 do
      want[b] = {}
      for i = 2, 6 do
        for j = 1, i - 1 do want[b][#want[b] + 1] = gram[b][i][j] end
      end
    end
    S.near(x:pairwise_dot(), want, 1e-4)
  end)

  it("names its argument on misuse", function()
    local ok, err = pcall(function() return T.randn({ 8 }):pairwise_dot() end)
    assert.is_false(ok)
    assert.truthy(err:find("bad argument #1 to 'pairwise_dot'", 1, true), err)
    assert.truthy(err:find("(..., n, d)", 1, true), err)
  end)
end)

---------------------------------------------------------------------------------------
-- The click model
---------------------------------------------------------------------------------------

local tiny = { dense = 5, rows = { 7, 11, 13 }, dim = 32, hot = 2, bottom = { 24 }, top = { 40 }, seed = 3 }

local function config(dtype)
  local c = {}
  for k, v in pairs(tiny) do c[k] = v end
  c.dtype = dtype
  return c
end

-- The model's forward pass in plain Lua, from its weights as numbers.
local function ref_logits(model, dense, ids)
  local c = model.cfg
  local function dense_layer(layer, x, relu)
    local w, b = layer.w:totable(), layer.b:totable()
    local y = {}
    for o = 1, #w do
      local s = b[o]
      for k = 1, #w[o] do s = s + w[o][k] * (x[k] or 0) end -- missing inputs: the zero padding
      y[o] = relu and math.max(s, 0) or s
    end
    return y
  end
  local function mlp(layers, x)
    for l, layer in ipairs(layers) do x = dense_layer(layer, x, l < #layers) end
    return x
  end
  local tables = {}
  for f, t in ipairs(model.tables) do tables[f] = t:totable() end
  local out = {}
  for r, row in ipairs(dense:totable()) do
    local z = mlp(model.bottom, row)
    local vecs = { z }
    for f = 1, #tables do
      local e = {}
      for j = 1, c.dim do e[j] = 0 end
      for _, id in ipairs(ids:totable()[r][f]) do
        for j = 1, c.dim do e[j] = e[j] + tables[f][id + 1][j] end
      end
      vecs[f + 1] = e
    end
    local top_in = {}
    for j = 1, c.dim do top_in[j] = z[j] end
    for _, p in ipairs(ref_pairs(vecs)) do top_in[#top_in + 1] = p end
    out[r] = mlp(model.top, top_in)[1]
  end
  return out
end

local function sigmoid(v)
  local out = {}
  for i, x in ipairs(v) do out[i] = 1 / (1 + math.exp(-x)) end
  return out
end

local function spread(v)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(v) do lo, hi = math.min(lo, x), math.max(hi, x) end
  return hi - lo
end

describe("recsys example", function()
  -- weights of every type against the plain-Lua model: f32 to rounding; bf16 and q8_0 round
  -- the activations too (to bf16, or to int8 blocks), within a few per cent of the spread
  local tolerance = { f32 = 1e-4, bf16 = 0.025, q8_0 = 0.04 }
  for _, dtype in ipairs { "f32", "bf16", "q8_0" } do
    it(dtype .. " weights: scores equal a plain-Lua forward pass with the same weights", function()
      local model = recsys.new(config(dtype))
      assert.are.equal(dtype, model.tables[1].dtype)
      assert.are.equal(dtype, model.top[1].w.dtype)
      local dense, ids = recsys.random_batch(model.cfg, 9, 11)
      local want = ref_logits(model, dense, ids)
      local got = model:logits(dense, ids):totable()
      assert.is_true(spread(want) > 0.5, "the logits should differ between requests")
      S.near(got, want, tolerance[dtype] * spread(want))
      S.near(model:score(dense, ids), sigmoid(want), tolerance[dtype] * spread(want))
    end)
  end

  it("pads q8_0 layers to widths of 64 and bf16 ones to 32 with zeros", function()
    local q = recsys.new(config("q8_0"))
    assert.are.same({ 64, 64 }, q.bottom[1].w:shape()) -- 24 hidden units padded to 64, 5 inputs to 64
    assert.are.same({ 32, 64 }, q.bottom[2].w:shape()) -- out: dim 32
    assert.are.same({ 1, 64 }, q.top[2].w:shape())
    local b = recsys.new(config("bf16"))
    assert.are.same({ 32, 32 }, b.bottom[1].w:shape())
    assert.are.same({ 64, 64 }, b.top[1].w:shape()) -- 32 + 6 pairs = 38 -> 64; 40 hidden -> 64
    -- padded units are zero: weights and biases
    local w = q.bottom[1].w:dequantize()
    assert.are.equal(0, w:narrow(1, 25, 40):abs():sum())
    assert.are.equal(0, w:narrow(2, 6, 59):abs():sum())
    assert.are.equal(0, q.bottom[1].b:narrow(1, 25, 40):abs():sum())
  end)

  for _, dtype in ipairs { "bf16", "q8_0" } do
    it(dtype .. ": saving to GGUF and loading back gives identical scores", function()
      local model = recsys.new(config(dtype))
      local path = S.tmpname(".gguf")
      assert(model:save(path))
      local loaded = assert(recsys.load(path))
      assert.are.same(model.cfg.rows, loaded.cfg.rows)
      assert.are.equal(dtype, loaded.cfg.dtype)
      assert.are.equal(dtype, loaded.tables[2].dtype)
      local dense, ids = recsys.random_batch(model.cfg, 33, 5)
      assert.are.same(model:score(dense, ids):totable(), loaded:score(dense, ids):totable())
      local bytes, params = loaded:size()
      assert.are.same({ bytes, params }, { model:size() })
      os.remove(path)
    end)

    it(dtype .. ": a batch scores each request as it would be scored alone", function()
      local model = recsys.new(config(dtype))
      local B = 40 -- enough rows for the batched (packed GEMM) kernels
      local dense, ids = recsys.random_batch(model.cfg, B, 21)
      local batch = model:score(dense, ids):totable()
      local alone = {}
      for i = 1, B do
        alone[i] = model:score(dense:narrow(1, i, 1), ids:narrow(1, i, 1)):item()
      end
      S.near(batch, alone, 1e-5)
    end)
  end

  it("checks its inputs and files", function()
    local model = recsys.new(config("f32"))
    local dense, ids = recsys.random_batch(model.cfg, 4, 1)
    local ok, err = pcall(model.score, model, dense:narrow(2, 1, 4), ids)
    assert.is_false(ok)
    assert.truthy(err:find("5 dense features expected, got 4", 1, true), err)
    ok, err = pcall(model.score, model, dense, ids:narrow(1, 1, 3))
    assert.is_false(ok)
    assert.truthy(err:find("ids of shape {4, 3, 2} expected", 1, true), err)
    assert.has_error(function() recsys.new { dtype = "q4_0" } end)
    local path = S.tmpname(".gguf")
    assert(lm.save(path, { x = T.zeros(2, 2) }, { ["general.architecture"] = "llama" }))
    local m, lerr = recsys.load(path)
    assert.is_nil(m)
    assert.truthy(lerr:find("not a DLRM model", 1, true))
    os.remove(path)
    m, lerr = recsys.load("/nonexistent/dlrm.gguf")
    assert.is_nil(m)
    assert.truthy(lerr)
  end)

  it("ids reach every row of every table, skewed toward the first rows", function()
    local cfg = config("f32")
    local _, ids = recsys.random_batch(cfg, 2000, 3)
    for f, rows in ipairs(cfg.rows) do
      local col = ids:select(2, f)
      assert.are.equal(0, col:min())
      assert.are.equal(rows - 1, col:max())
      assert.is_true(col:mean() < rows / 3) -- E[u^4] = 1/5
    end
  end)
end)

describe("recsys example, run as a script #once", function()
  it("prints p50 / p99 latency and requests/s for batches of 1, 64 and 512", function()
    local interp = jit and "luajit" or "lua5.4" -- the same ABI as this run (LUA_CPATH is inherited)
    local p = io.popen(interp .. " examples/recsys.lua --seconds 0 --rows 1000 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    assert.truthy(out:find("rc=0", 1, true), out)
    assert.truthy(out:find("| weights | batch | p50 ms | p99 ms | requests/s |", 1, true), out)
    local rows = 0
    for dtype, batch, p50, p99, rps in out:gmatch("\n| (%S+) +| +(%d+) | +([%d.]+) | +([%d.]+) | +(%d+) |") do
      rows = rows + 1
      assert.truthy(dtype == "bf16" or dtype == "q8_0", dtype)
      assert.truthy(batch == "1" or batch == "64" or batch == "512", batch)
      assert.is_true(tonumber(p50) > 0 and tonumber(p99) >= tonumber(p50), out)
      assert.is_true(tonumber(rps) > 0, out)
    end
    assert.are.equal(6, rows, out)
  end)
end)
