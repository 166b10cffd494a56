-- Tensor API: constructors, inspection, views, math, reductions, errors, lifetime.
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local function tbl(t) return t:totable() end

-- a non-contiguous tensor with the same values as `t` (2-d or more): transposed storage
local function noncontig(t)
  local nd = t:dim()
  local c = t:transpose(nd - 1, nd):contiguous():transpose(nd - 1, nd)
  assert(not c:is_contiguous() or t:size(nd) == 1 or t:size(nd - 1) == 1)
  return c
end

describe("tensor constructors", function()
  it("builds from nested tables, row-major", function()
    local t = T{{1, 2, 3}, {4, 5, 6}}
    assert.are.same({2, 3}, t:shape())
    assert.are.equal("f32", t.dtype)
    assert.are.equal(6, t:numel())
    assert.are.same({3, 1}, t:stride())
    assert.are.same({{1, 2, 3}, {4, 5, 6}}, tbl(t))
    assert.are.equal(2, #t)
    assert.are.equal(6, t[2][3])
    assert.are.equal(6, t:get(2, 3))
    assert.are.equal(4, t:get(-1, 1))
  end)

  local cases = {
    {"zeros", function() return T.zeros(2, 3) end, {{0, 0, 0}, {0, 0, 0}}},
    {"zeros{}", function() return T.zeros({2, 3}) end, {{0, 0, 0}, {0, 0, 0}}},
    {"ones", function() return T.ones({2, 2}) end, {{1, 1}, {1, 1}}},
    {"full", function() return T.full({3}, 7.5) end, {7.5, 7.5, 7.5}},
    {"arange(n)", function() return T.arange(4) end, {0, 1, 2, 3}},
    {"arange(a,b,s)", function() return T.arange(1, 2, 0.25) end, {1, 1.25, 1.5, 1.75}},
    {"arange down", function() return T.arange(3, 0, -1) end, {3, 2, 1}},
    {"i32", function() return T({1.0, 2.0, -3.0}, "i32") end, {1, 2, -3}},
    {"f16", function() return T({0.5, 1.5, 65504}, {dtype = "f16"}) end, {0.5, 1.5, 65504}},
    {"bf16", function() return T({1, 2, 256}, "bf16") end, {1, 2, 256}},
    {"scalar", function() return T(3) end, 3},
  }
  for _, c in ipairs(cases) do
    it(c[1], function() assert.are.same(c[3], tbl(c[2]())) end)
  end

  it("empty has the shape and dtype asked", function()
    local t = T.empty({3, 4}, "i8")
    assert.are.same({3, 4}, t:shape())
    assert.are.equal("i8", t.dtype)
    assert.are.equal(12, t:nbytes())
  end)

  it("rand/randn: same seed, same values; different seed, different values", function()
    local a = T.randn({4, 8}, {seed = 7})
    local b = T.randn({4, 8}, {seed = 7})
    local c = T.randn({4, 8}, {seed = 8})
    assert.are.same(tbl(a), tbl(b))
    assert.are_not.same(tbl(a), tbl(c))
    -- values pinned so a change of generator is noticed (same on every machine)
    local r = T.rand({3}, {seed = 1})
    S.near(r, {0.70292181, 0.52043664, 0.57410568}, 1e-7)
    local u = T.rand({10000}, {seed = 3, min = -2, max = 2})
    assert.is_true(u:min() >= -2 and u:max() < 2)
    local n = T.randn({20000}, {seed = 5, mean = 3, std = 2})
    assert.is_true(math.abs(n:mean() - 3) < 0.05)
    assert.is_true(math.abs(((n - 3):square():mean()) ^ 0.5 - 2) < 0.05)
  end)

  it("manual_seed makes unseeded calls repeatable", function()
    T.manual_seed(42)
    local a = T.randn(5)
    T.manual_seed(42)
    assert.are.same(tbl(a), tbl(T.randn(5)))
  end)
end)

describe("tensor printing", function()
  it("prints values, dtype and shape", function()
    local s = tostring(T{{1, 2}, {3, 4}})
    assert.are.equal("[[ 1  2]\n [ 3  4]]\n[f32 tensor of shape {2, 2}]", s)
    assert.truthy(tostring(T{0.5, -1.25}):find("-1.2500", 1, true))
    assert.are.equal("{2, 3}", tostring(T.zeros(2, 3):shape()))
  end)
  it("truncates big tensors", function()
    local s = tostring(T.arange(100000))
    assert.truthy(s:find("...", 1, true))
    assert.is_true(#s < 200)
    assert.truthy(s:find("99999", 1, true))
  end)
end)

describe("tensor views", function()
  local base = function() return T.arange(24):view(2, 3, 4) end

  it("view/reshape share or copy", function()
    local a = T.arange(6)
    local v = a:view({2, 3})
    v[1][1] = 100
    assert.are.equal(100, a[1])
    assert.are.same({3, 2}, a:view(3, -1):shape())
    local nc = v:t()
    assert.has_error(function() nc:view(6) end, "bad argument #1 to 'view' (view needs a contiguous tensor (call contiguous() or use reshape))")
    assert.are.same({100, 3, 1, 4, 2, 5}, tbl(nc:reshape(6)))
  end)

  it("narrow, slice, select", function()
    local t = base()
    assert.are.same({{{4, 5, 6, 7}, {8, 9, 10, 11}}}, tbl(t:narrow(1, 1, 1):narrow(2, 2, 2)))
    assert.are.same({{2, 3}, {6, 7}, {10, 11}}, tbl(t[1]:slice(2, 3, 4)))
    assert.are.same({{3}, {7}, {11}}, tbl(t[1]:slice(2, -1)))
    assert.are.same({1, 5, 9}, tbl(t:select(3, 2)[1]))
    assert.are.same({20, 21, 22, 23}, tbl(t[-1][-1]))
  end)

  it("transpose and permute", function()
    local t = base()
    local p = t:permute(3, 1, 2)
    assert.are.same({4, 2, 3}, p:shape())
    assert.are.equal(t:get(2, 3, 4), p:get(4, 2, 3))
    assert.are.equal(t:get(1, 2, 3), t:transpose(1, 3):get(3, 2, 1))
    assert.is_false(p:is_contiguous())
    assert.is_true(p:contiguous():is_contiguous())
    assert.are.same(tbl(p), tbl(p:contiguous()))
    assert.are.same(tbl(p), tbl(p:clone()))
  end)

  it("expand, squeeze, unsqueeze", function()
    local t = T{1, 2, 3}
    assert.are.same({{1, 2, 3}, {1, 2, 3}}, tbl(t:expand(2, 3)))
    assert.are.same({1, 3}, t:unsqueeze(1):shape())
    assert.are.same({3, 1}, t:unsqueeze(2):shape())
    assert.are.same({3}, t:unsqueeze(1):unsqueeze(3):squeeze():shape())
  end)

  it("assignment through views writes the base", function()
    local t = T.zeros(3, 3)
    t[2] = 5
    t:select(2, 3):fill_(1)
    t[3] = {7, 8, 9}
    assert.are.same({{0, 0, 1}, {5, 5, 1}, {7, 8, 9}}, tbl(t))
    t:set(1, 1, -1)
    assert.are.equal(-1, t[1][1])
  end)

  it("views keep their base alive after it is collected", function()
    local v
    do
      local big = T.arange(1000):view(10, 100)
      v = big[7]:narrow(1, 3, 2)
    end
    collectgarbage()
    collectgarbage()
    local w = v:view(2)
    v = nil
    collectgarbage()
    collectgarbage()
    assert.are.same({602, 603}, tbl(w))
  end)

  it("close releases once; using a closed tensor is an error", function()
    local t = T.ones(3)
    local v = t:view(3)
    t:close()
    t:close()
    assert.has_error(function() return t:sum() end, "bad argument #1 to 'sum' (tensor has been released)")
    assert.are.equal(3, v:sum()) -- the view still holds the storage
    assert.are.equal("moonlm.tensor (released)", tostring(t))
  end)
end)

describe("tensor math", function()
  local a = T{{1, 2, 3}, {4, 5, 6}}
  local b = T{10, 20, 30}

  local binops = {
    {"add", function(x, y) return x + y end},
    {"sub", function(x, y) return x - y end},
    {"mul", function(x, y) return x * y end},
    {"div", function(x, y) return x / y end},
    {"pow", function(x, y) return x ^ y end},
    {"maximum", function(x, y) return math.max(x, y) end},
    {"minimum", function(x, y) return math.min(x, y) end},
  }
  for _, op in ipairs(binops) do
    it(op[1] .. " broadcasts a row, a scalar, and non-contiguous inputs", function()
      local f = op[2]
      local y = a[op[1]](a, b / 10)
      for i = 1, 2 do
        for j = 1, 3 do
          assert.is_true(math.abs(y[i][j] - f(a[i][j], j)) < 1e-5 * math.max(1, math.abs(f(a[i][j], j))))
        end
      end
      S.near(a[op[1]](noncontig(a), b / 10), y, 0)
      local s = a[op[1]](a, 2)
      for i = 1, 2 do
        for j = 1, 3 do assert.is_true(math.abs(s[i][j] - f(a[i][j], 2)) < 1e-5 * math.max(1, math.abs(f(a[i][j], 2)))) end
      end
      -- in place
      local c = a:clone()
      c[op[1] .. "_"](c, b / 10)
      S.near(c, y, 0)
    end)
  end

  it("metamethods, scalar first", function()
    assert.are.same({{9, 8, 7}, {6, 5, 4}}, tbl(10 - a))
    assert.are.same({{2, 4, 6}, {8, 10, 12}}, tbl(2 * a))
    assert.are.same({{-1, -2, -3}, {-4, -5, -6}}, tbl(-a))
    assert.are.same({{1, 0.5}}, tbl(1 / T{{1, 2}}))
  end)

  it("column broadcast: (2,1) with (1,3)", function()
    local c = T{{1}, {2}} + T{{10, 20, 30}}
    assert.are.same({{11, 21, 31}, {12, 22, 32}}, tbl(c))
  end)

  local unops = {
    {"neg", function(x) return -x end},
    {"exp", math.exp},
    {"log", math.log},
    {"sqrt", math.sqrt},
    {"tanh", function(x) return (math.exp(x) - math.exp(-x)) / (math.exp(x) + math.exp(-x)) end},
    {"relu", function(x) return x > 0 and x or 0 end},
    {"silu", function(x) return x / (1 + math.exp(-x)) end},
    {"sigmoid", function(x) return 1 / (1 + math.exp(-x)) end},
    {"gelu", function(x) return 0.5 * x * (1 + math.tanh and 0 or 0) end},
    {"abs", math.abs},
    {"square", function(x) return x * x end},
  }
  local function gelu(x)
    local u = 0.7978845608028654 * (x + 0.044715 * x ^ 3)
    local th = (math.exp(u) - math.exp(-u)) / (math.exp(u) + math.exp(-u))
    return 0.5 * x * (1 + th)
  end
  unops[9][2] = gelu
  local xs = T{{0.5, 1.5, 2.5}, {0.25, 3, 0.125}}
  for _, op in ipairs(unops) do
    it(op[1] .. " matches the formula, also non-contiguous and in place", function()
      local y = xs[op[1]](xs)
      for i = 1, 2 do
        for j = 1, 3 do
          local want = op[2](xs[i][j])
          assert.is_true(math.abs(y[i][j] - want) <= 1e-6 * math.max(1, math.abs(want)), op[1])
        end
      end
      S.near(noncontig(xs)[op[1]](noncontig(xs)), y, 0)
      local c = xs:clone()
      c[op[1] .. "_"](c)
      S.near(c, y, 0)
    end)
  end

  it("reductions along a dim and over all elements", function()
    assert.are.equal(21, a:sum())
    assert.are.equal(3.5, a:mean())
    assert.are.equal(6, a:max())
    assert.are.equal(1, a:min())
    assert.are.equal(6, a:argmax()) -- flat, 1-based
    assert.are.same({5, 7, 9}, tbl(a:sum(1)))
    assert.are.same({{6}, {15}}, tbl(a:sum(2, true)))
    assert.are.same({2, 5}, tbl(a:mean(2)))
    local v, i = a:max(2)
    assert.are.same({3, 6}, tbl(v))
    assert.are.same({3, 3}, tbl(i))
    v, i = a:min(1)
    assert.are.same({1, 2, 3}, tbl(v))
    assert.are.same({1, 1, 1}, tbl(i))
    assert.are.same({3, 3}, tbl(a:argmax(2)))
    assert.are.same({1, 1}, tbl(a:argmin(-1)))
    local n = noncontig(a)
    assert.are.same({5, 7, 9}, tbl(n:sum(1)))
    assert.are.same({3, 3}, tbl(n:argmax(2)))
  end)

  it("softmax and log_softmax along any dim", function()
    local x = T{{1, 2, 3}, {1, 1, 1}}
    local s = x:softmax()
    local e = {math.exp(1), math.exp(2), math.exp(3)}
    local z = e[1] + e[2] + e[3]
    S.near(s[1], {e[1] / z, e[2] / z, e[3] / z}, 1e-6)
    S.near(s[2], {1 / 3, 1 / 3, 1 / 3}, 1e-6)
    S.near(x:softmax(1), {{0.5, 0.7310586, 0.8807971}, {0.5, 0.2689414, 0.1192029}}, 1e-6)
    S.near(x:log_softmax(), s:log(), 1e-6)
    S.near(noncontig(x):softmax(), s, 1e-7)
    -- large values do not overflow
    S.near(T{1000, 1000}:softmax(), {0.5, 0.5}, 0)
  end)

  it("rmsnorm and layernorm over the last dim", function()
    local x = T{{1, 2, 3, 4}, {-2, 0, 2, 0}}
    local w = T{1, 2, 1, 0.5}
    local rms1 = math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-5)
    S.near(x:rmsnorm(w)[1], {1 / rms1, 4 / rms1, 3 / rms1, 2 / rms1}, 1e-6)
    S.near(x:rmsnorm(1e-6)[2], {-2 / math.sqrt(2 + 1e-6), 0, 2 / math.sqrt(2 + 1e-6), 0}, 1e-6)
    local ln = x:layernorm(nil, T{1, 1, 1, 1}, 0)
    local sd = math.sqrt(1.25)
    S.near(ln[1], {-1.5 / sd + 1, -0.5 / sd + 1, 0.5 / sd + 1, 1.5 / sd + 1}, 1e-6)
    S.near(x:layernorm(w, T.zeros(4))[2], {-2 / math.sqrt(2 + 1e-5), 0, 2 / math.sqrt(2 + 1e-5), 0}, 1e-6)
    S.near(noncontig(x):rmsnorm(w), x:rmsnorm(w), 1e-7)
  end)

  it("matmul: values, identities, batches, vectors, layouts", function()
    local m = T{{1, 2}, {3, 4}, {5, 6}}
    local n = T{{1, 0, -1}, {2, 1, 0}}
    assert.are.same({{5, 2, -1}, {11, 4, -3}, {17, 6, -5}}, tbl(m:matmul(n)))
    -- (a·b)ᵀ = bᵀ·aᵀ on random shapes, with non-contiguous operands
    local A, B = T.randn({7, 13}, {seed = 1}), T.randn({13, 5}, {seed = 2})
    S.near(A:matmul(B):t(), B:t():matmul(A:t()), 1e-5)
    S.near(noncontig(A):matmul(noncontig(B)), A:matmul(B), 1e-5)
    -- batched with broadcasting of the batch dims
    local X = T.randn({3, 4, 6}, {seed = 3})
    local W = T.randn({6, 2}, {seed = 4})
    local Y = X:matmul(W)
    assert.are.same({3, 4, 2}, Y:shape())
    for i = 1, 3 do S.near(Y[i], X[i]:matmul(W), 1e-5) end
    -- vectors
    assert.are.same({{7, 10}}, tbl(T{{1, 2}}:matmul(T{{1, 2}, {3, 4}})))
    assert.are.same({7, 10}, tbl(T{1, 2}:matmul(T{{1, 2}, {3, 4}})))
    assert.are.same({5, 11}, tbl(T{{1, 2}, {3, 4}}:matmul(T{1, 2})))
    assert.are.equal(5, T{1, 2}:matmul(T{1, 2}):item())
    -- a large product agrees with a naive sum
    local P, Q = T.randn({64, 100}, {seed = 5}), T.randn({100, 48}, {seed = 6})
    local R = P:matmul(Q)
    local s = 0
    for k = 1, 100 do s = s + P[17][k] * Q[k][33] end
    assert.is_true(math.abs(R[17][33] - s) < 1e-4)
  end)

  it("linear: x·wᵀ + b for f32, f16, bf16 and quantized weights", function()
    local x = T.randn({5, 64}, {seed = 11})
    local w = T.randn({9, 64}, {seed = 12})
    local b = T.randn({9}, {seed = 13})
    local ref = x:matmul(w:t()) + b
    S.near(x:linear(w, b), ref, 1e-4)
    S.near(noncontig(x):linear(w, b), ref, 1e-4)
    -- other types: the same as linear on the dequantized weights, up to activation rounding
    for _, c in ipairs{{"f16", 0.02}, {"bf16", 0.15}, {"q8_0", 0.2}, {"q4_0", 0.3}} do
      local wq = w:to(c[1])
      S.near(x:linear(wq, b), x:matmul(wq:dequantize():t()) + b, c[2], c[1])
    end
    -- a batch of leading dims
    local x3 = x:view(5, 1, 64)
    assert.are.same({5, 1, 9}, x3:linear(w):shape())
  end)

  it("topk: values and 1-based indices, largest or smallest, any dim", function()
    local v, i = T{3, 1, 4, 1, 5, 9, 2, 6}:topk(3)
    assert.are.same({9, 6, 5}, tbl(v))
    assert.are.same({6, 8, 5}, tbl(i))
    v, i = T{3, 1, 4, 1, 5}:topk(2, -1, false)
    assert.are.same({1, 1}, tbl(v))
    assert.are.same({2, 4}, tbl(i)) -- ties: lower index first
    v, i = T{{1, 5}, {7, 2}, {3, 3}}:topk(2, 1)
    assert.are.same({{7, 5}, {3, 3}}, tbl(v))
    assert.are.same({{2, 1}, {3, 3}}, tbl(i))
    local big = T.randn({32000}, {seed = 9})
    local bv, bi = big:topk(40)
    assert.are.equal(big:max(), bv[1])
    assert.are.equal(big:argmax(), bi[1])
    for k = 2, 40 do assert.is_true(bv[k] <= bv[k - 1]) end
  end)

  it("cat and stack", function()
    local x, y = T{{1, 2}}, T{{3, 4}, {5, 6}}
    assert.are.same({{1, 2}, {3, 4}, {5, 6}}, tbl(T.cat({x, y}, 1)))
    assert.are.same({{1, 2, 1, 2}}, tbl(T.cat({x, x}, 2)))
    assert.are.same({{{1, 2}}, {{1, 2}}}, tbl(T.stack({x, x})))
    assert.are.same({{{1, 2}, {1, 2}}}, tbl(T.stack({x, x}, 2)))
    assert.are.same({{{1, 1}, {2, 2}}}, tbl(T.stack({x, x}, 3)))
    assert.are.same({{1, 3}, {2, 4}}, tbl(T.cat({x:t(), T{{3}, {4}}}, 2)))
  end)

  it("index_select and embedding", function()
    local e = T{{1, 1}, {2, 2}, {3, 3}}
    assert.are.same({{3, 3}, {1, 1}, {3, 3}}, tbl(e:index_select(1, {3, 1, 3})))
    assert.are.same({{1, 1}, {2, 2}}, tbl(e:embedding({0, 1})))
    local q = T.randn({3, 32}, {seed = 1}):quantize("q8_0")
    local row = q:embedding(T({2}, "i32"))
    assert.are.equal("f32", row.dtype)
    assert.are.same({1, 32}, row:shape())
    assert.are.same(tbl(q:dequantize()[3]), tbl(row[1]))
  end)
end)

describe("dtypes", function()
  it("to/quantize/dequantize round trips", function()
    local x = T.randn({4, 64}, {seed = 21})
    S.near(x:to("f16"):to("f32"), x, 2e-3)
    S.near(x:to("bf16"), x, 2e-2)
    for _, c in ipairs{{"q8_0", 0.02}, {"q4_0", 0.35}, {"q4_1", 0.25}, {"q5_0", 0.2}, {"q5_1", 0.15}} do
      local q = x:quantize(c[1])
      assert.are.equal(c[1], q.dtype)
      assert.are.same({4, 64}, q:shape())
      S.near(q:dequantize(), x, c[2], c[1])
      -- element reads on block types dequantize
      assert.is_true(math.abs(q[2][33] - q:dequantize()[2][33]) == 0)
    end
    assert.are.same({1, 2, -3}, tbl(T{1.7, 2.2, -3.4}:to("i32"))) -- truncation, as torch
    assert.are.same({127, -128}, tbl(T{300, -300}:to("i8")))
  end)

  it("f16 and bf16 conversions are exact where representable", function()
    assert.are.same({1, -2, 0.5, 1024, 6.103515625e-05}, tbl(T{1, -2, 0.5, 1024, 6.103515625e-05}:to("f16")))
    assert.are.equal(math.huge, T{1e6}:to("f16")[1])
    assert.are.equal(1.0078125, T{1.0078125}:to("bf16")[1])
    assert.are.equal(1, T{1.00390625}:to("bf16")[1]) -- ties to even
  end)
end)

describe("packed weights (w:pack())", function()
  local x = T.randn({5, 64}, {seed = 3})
  local w = T.randn({40, 64}, {seed = 4})

  it("x:linear(w:pack()) gives x:linear(w), with and without a bias, for every packable type", function()
    local b = T.randn({40}, {seed = 5})
    for _, ty in ipairs{"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "bf16", "f16", "f32"} do
      local wq = w:quantize(ty)
      local pw = wq:pack()
      local info = pw:info()
      assert.are.same({40, 64}, info.shape)
      assert.are.equal(ty, info.dtype)
      for _, xs in ipairs{x, x[2]} do -- 5 rows, and one (a vector)
        local want, got = xs:linear(wq, b), xs:linear(pw, b)
        assert.are.same(want:shape(), got:shape())
        local d = (got - want):abs():max()
        assert.is_true(d <= 1e-5 * want:abs():max(), ty .. (": max difference %g"):format(d))
      end
    end
  end)

  it("packs as many bytes as the weight, once; later writes to w are not seen", function()
    local wq = w:to("f16")
    local pw = wq:pack()
    local info = pw:info()
    if info.packed then assert.are.equal(40 * 64 * 2 + 8 * 64 * 2, info.packed_bytes) end -- 3 tiles of 16 rows
    local before = x:linear(pw)
    wq:fill_(0)
    assert.are.equal(0, x:linear(wq):abs():max())
    assert.are.equal(0, (x:linear(pw) - before):abs():max())
    assert.truthy(tostring(pw):find("packed f16 weight of shape {40, 64}", 1, true))
  end)

  it("refuses what is not a weight, and a released one", function()
    assert.has_error(function() T.zeros(2, 3, 32):pack() end,
      "bad argument #1 to 'pack' (weight must be a matrix (out, in), got 3 dimensions)")
    assert.has_error(function() T.zeros(4, 32):to("i32"):pack() end,
      "bad argument #1 to 'pack' (no matmul kernel for i32 weights)")
    local pw = w:pack()
    assert.has_error(function() return T.zeros(2, 63):linear(pw) end,
      "bad argument #2 to 'linear' (inner dimensions 63 and 64 differ)")
    pw:close()
    assert.has_error(function() return x:linear(pw) end, "bad argument #2 to 'linear' (weight was released)")
  end)
end)

describe("tensor errors", function()
  local a = T.zeros(2, 3)
  local cases = {
    {"matmul shapes", function() return a:matmul(T.zeros(2, 3)) end, "bad argument #2 to 'matmul' (inner dimensions 3 and 2 differ)"},
    {"linear shapes", function() return a:linear(T.zeros(4, 2)) end, "bad argument #2 to 'linear' (inner dimensions 3 and 2 differ)"},
    {"broadcast", function() return a + T.zeros(4) end, "bad argument #2 to '__add' (shapes do not broadcast (size 3 and 4 in dimension 2))"},
    {"not a tensor", function() return a:add("x") end, "bad argument #2 to 'add' (tensor or number expected, got string)"},
    {"self not a tensor", function() return a.add(5, a) end, "bad argument #1 to 'add' (tensor expected, got number)"},
    {"index range", function() return a:get(3, 1) end, "bad argument #2 to 'get' (index 3 out of range (dimension 1 has size 2))"},
    {"dim range", function() return a:sum(3) end, "bad argument #2 to 'sum' (dimension 3 out of range (tensor has 2))"},
    {"narrow range", function() return a:narrow(2, 2, 5) end, "bad argument #4 to 'narrow' (length 5 out of range (2 elements from 2))"},
    {"view size", function() return a:view(4, 2) end, "bad argument #2 to 'view' (shape has 8 elements, tensor has 6)"},
    {"dtype name", function() return a:to("q9_9") end, "bad argument #2 to 'to' (unknown dtype 'q9_9')"},
    {"quantize blocks", function() return a:quantize("q4_0") end, "bad argument #2 to 'quantize' (q4_0 needs the last dimension to be a multiple of 32, got 3)"},
    {"ragged table", function() return T{{1, 2}, {3}} end, "bad argument #1 to 'new' (ragged nested table (dimension 2 has sizes 2 and 1))"},
    {"table values", function() return T{1, "x"} end, "bad argument #1 to 'new' (number expected in nested table, got string)"},
    {"negative shape", function() return T.zeros(2, -3) end, "bad argument #2 to 'zeros' (negative dimension -3)"},
    {"non-integer index", function() return a:get(1.5, 1) end, "bad argument #2 to 'get' (number has no integer representation)"},
    {"topk k", function() return T{1, 2}:topk(3) end, "bad argument #2 to 'topk' (k = 3 out of range (dimension has 2 elements))"},
    {"cat shapes", function() return T.cat({a, T.zeros(2, 2)}, 1) end, "bad argument #1 to 'cat' (tensor 2 has size 2 in dimension 2, tensor 1 has 3)"},
    {"in-place dtype", function() return T({1, 2}, "i32"):add_(1) end, "bad argument #1 to 'add_' (in-place operations need an f32 tensor, got i32)"},
    {"in-place shape", function() return T{1, 2}:add_(T.zeros(2, 2)) end, "bad argument #2 to 'add_' (in-place result would change the shape of the tensor written into)"},
    {"set on quantized", function() return T.zeros(1, 32):quantize("q8_0"):set(1, 1, 2) end, "set: cannot write single elements of a q8_0 tensor (dequantize first)"},
    {"huge", function() return T.zeros(2 ^ 40, 2 ^ 20) end, "bad argument #1 to 'zeros' (tensor too large)"},
    {"embedding id", function() return a:embedding({2}) end, "bad argument #2 to 'embedding' (index 3 out of range (dimension 1 has size 2))"},
    -- the core names the input it rejects; the binding maps it to the Lua argument holding it
    {"dtype after a shape", function() return T.zeros(2, 3, "q4_0") end, "bad argument #3 to 'zeros' (q4_0 needs the last dimension to be a multiple of 32, got 3)"},
    {"dtype of arange", function() return T.arange(10, "q4_0") end, "bad argument #2 to 'arange' (q4_0 needs the last dimension to be a multiple of 32, got 10)"},
    {"dtype of randn", function() return T.randn({2, 3}, "q8_0") end, "bad argument #2 to 'randn' (q8_0 needs the last dimension to be a multiple of 32, got 3)"},
    {"row assigned", function() local t = T.zeros(2, 3); t[1] = T.zeros(4) end, "bad argument #3 to '__newindex' (cannot expand size 4 to 3 in dimension 1)"},
    {"copy source", function() return T.zeros(2, 3):copy_(T.zeros(4)) end, "bad argument #2 to 'copy_' (cannot expand size 4 to 3 in dimension 2)"},
    {"weight type", function() return a:linear(T.zeros(4, 3):to("i32")) end, "bad argument #2 to 'linear' (no matmul kernel for i32 weights)"},
    {"topk dim", function() return T.zeros(2, 3):topk(1, 3) end, "bad argument #3 to 'topk' (dimension 3 out of range (tensor has 2))"},
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ok, err = pcall(c[2])
      assert.is_false(ok)
      err = tostring(err):gsub("^[^:]*:%d+: ", "")
      assert.are.equal(c[3], err)
    end)
  end

  it("leaves tensors usable after an error", function()
    pcall(function() return a:matmul(T.zeros(5, 5)) end)
    assert.are.same({2, 3}, a:shape())
    assert.are.equal(0, a:sum())
  end)
end)

describe("tensor files (GGUF)", function()
  it("save and load_tensors round trip every dtype with metadata", function()
    local path = S.tmpname(".gguf")
    local x = T.randn({4, 64}, {seed = 31})
    local tensors = {
      ["a.f32"] = x, ["b.f16"] = x:to("f16"), ["c.q8_0"] = x:quantize("q8_0"),
      ["d.i32"] = T({1, 2, 3}, "i32"), ["e.t"] = x:t(), ["f.bf16"] = x:to("bf16"),
    }
    assert(lm.save(path, tensors, {
      ["general.name"] = "test", ["my.count"] = 3, ["my.ratio"] = 0.5, ["my.flag"] = true,
      ["my.list"] = {"a", "b"}, ["my.ints"] = {1, 2, 3}, ["my.base"] = lm.gguf_value("f32", 10000),
    }))
    local got, meta = assert(lm.load_tensors(path))
    assert.are.equal("test", meta["general.name"])
    assert.are.equal(3, meta["my.count"])
    assert.are.equal(0.5, meta["my.ratio"])
    assert.are.equal(true, meta["my.flag"])
    assert.are.same({"a", "b"}, meta["my.list"])
    assert.are.same({1, 2, 3}, meta["my.ints"])
    assert.are.equal(10000, meta["my.base"])
    for name, t in pairs(tensors) do
      assert.are.equal(t.dtype, got[name].dtype, name)
      assert.are.same(t:shape(), got[name]:shape(), name)
      assert.are.same(tbl(t), tbl(got[name]), name)
    end
    -- loaded tensors are usable after the table is dropped (the mapping stays)
    local keep = got["c.q8_0"]
    got = nil
    collectgarbage()
    S.near(keep:dequantize(), x, 0.02)
    os.remove(path)
  end)

  it("GGUF ne order: ne = [256, 64] is shape {64, 256}", function()
    local got = assert(lm.load_tensors(S.path("ref/quant-blocks.gguf")))
    assert.are.same({64, 256}, got["w.f32"]:shape())
    assert.are.same({8, 256}, got["x"]:shape())
    local ref = S.read_f32(S.path("ref/quant-blocks.f32.f32"))
    assert.are.equal(ref[256 + 2], got["w.f32"][2][2])
  end)

  it("a missing or broken file gives nil, err", function()
    local t, err = lm.load_tensors("/nonexistent/x.gguf")
    assert.is_nil(t)
    assert.truthy(err:find("No such file", 1, true))
    local p = S.tmpname(".gguf")
    local f = io.open(p, "wb") f:write("GGUF\3\0\0\0") f:close()
    t, err = lm.load_tensors(p)
    assert.is_nil(t)
    assert.truthy(err:find("truncated", 1, true))
    os.remove(p)
  end)
end)

describe("module info", function()
  it("threads sets and reports", function()
    local n = lm.threads()
    assert.are.equal(1, lm.threads(1))
    assert.are.equal(1, lm.threads())
    lm.threads(n)
    assert.has_error(function() lm.threads(0) end, "bad argument #1 to 'threads' (thread count must be at least 1)")
  end)
  it("isa and info report the level and CPU features", function()
    local level, per_type = lm.isa(), lm.info().kernels
    assert.are.equal(1, select("#", lm.isa())) -- one string, as print(lm.isa()) shows
    assert.truthy(({ref = 1, avx2 = 1, avx512 = 1, amx = 1})[level])
    assert.are.equal(level, lm.info().isa)
    assert.are.equal("string", type(per_type.q4_0))
    local env = os.getenv("MOONLM_ISA")
    local available = {}
    for _, l in ipairs(lm.info().levels) do available[l] = true end
    assert.is_true(available.ref)
    if env and available[env] then assert.are.equal(env, level) end
    assert.are.equal("boolean", type(lm.info().features.avx2))
  end)
end)
