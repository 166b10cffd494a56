-- The torch7 essentials (comparisons, where, masked_fill, clamp, sort, cumsum, gather and
-- scatter, moments and norms, eye, linspace, multinomial, randint, conv1d, mm/bmm/dot) and
-- the position schemes (rope, ALiBi), each against a plain Lua computation written from
-- the definition, on awkward sizes and strided views.
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local flat = S.flatten

-- random values with ties (rounded to quarters), as nested tables and tensors
local function rnd(shape, seed)
  local t = T.randn(shape, { seed = seed })
  return (t * 4):totable()
end

local function round_q(x) return math.floor(x + 0.5) / 4 end

local function map(t, f)
  if type(t) ~= "table" then return f(t) end
  local o = {}
  for i = 1, #t do o[i] = map(t[i], f) end
  return o
end

local function zip(a, b, f)
  if type(a) ~= "table" then return f(a, b) end
  local o = {}
  for i = 1, #a do o[i] = zip(a[i], type(b) == "table" and b[i] or b, f) end
  return o
end

describe("comparisons", function()
  local a = map(rnd({ 3, 5, 7 }, 1), round_q)
  local b = map(rnd({ 5, 7 }, 2), round_q)
  local ta, tb = T(a), T(b)
  local ops = {
    eq = function(x, y) return x == y end, ne = function(x, y) return x ~= y end,
    lt = function(x, y) return x < y end, le = function(x, y) return x <= y end,
    gt = function(x, y) return x > y end, ge = function(x, y) return x >= y end,
  }
  for name, f in pairs(ops) do
    it(name .. " broadcasts and gives 1 / 0 in f32", function()
      local want = map(a, function() return 0 end)
      for i = 1, 3 do for j = 1, 5 do for k = 1, 7 do want[i][j][k] = f(a[i][j][k], b[j][k]) and 1 or 0 end end end
      local got = ta[name](ta, tb)
      assert.are.equal("f32", got.dtype)
      assert.are.same(want, got:totable())
      -- a number operand, and a strided view
      local want2 = map(b, function(x) return f(x, 0.25) and 1 or 0 end)
      assert.are.same(want2, tb[name](tb, 0.25):totable())
      local tv = tb:t()
      local want3 = {}
      for k = 1, 7 do want3[k] = {} for j = 1, 5 do want3[k][j] = f(b[j][k], 0) and 1 or 0 end end
      assert.are.same(want3, tv[name](tv, 0):totable())
    end)
  end

  it("NaN is unequal to everything, itself included", function()
    local n = T{ 0 / 0, 1 }
    assert.are.same({ 0, 1 }, n:eq(T{ 0 / 0, 1 }):totable())
    assert.are.same({ 1, 0 }, n:ne(T{ 0 / 0, 1 }):totable())
    assert.are.same({ 0, 0 }, n:lt(T{ 0 / 0, 1 }):totable())
  end)

  it("T.equal and a == b compare shapes and values; == is never elementwise", function()
    local x = T{ { 1, 2 }, { 3, 4 } }
    assert.is_true(T.equal(x, x:clone()))
    assert.is_true(x == x:clone())
    assert.is_true(x == T({ { 1, 2 }, { 3, 4 } }, "i32")) -- values, whatever the dtype
    assert.is_false(x == x:t())
    assert.is_false(x == T{ 1, 2, 3, 4 })                  -- same values, other shape
    assert.is_false(x ~= x:clone())
    assert.is_false(T{ 0 / 0 } == T{ 0 / 0 })
    local y = T{ 1 }
    y:release()
    assert.is_false(x == y)
  end)

  it("refuses extra operands, and says what torch7's sub and add are here", function()
    local x = T{ 1, 2, 3 }
    assert.has_error(function() x:sub(1, 2) end,
      "bad argument #3 to 'sub' (sub takes one operand (x - y); torch7's x:sub(i, j) is x:slice(1, i, j) here)")
    assert.has_error(function() x:add(2, x) end,
      "bad argument #3 to 'add' (add takes one operand; torch7's x:add(v, y) is x:add(y * v) here)")
    assert.has_error(function() x:lt(1, 2) end, "bad argument #3 to 'lt' (unexpected argument (one operand))")
    assert.has_error(function() x:lt(T{ 1, 2 }) end)
  end)
end)

describe("where, masked_fill, clamp", function()
  local a = map(rnd({ 4, 9 }, 3), round_q)
  local ta = T(a)

  it("where picks from two broadcast operands", function()
    local cond = ta:gt(0)
    local got = T.where(cond, ta, T.arange(9))
    local want = {}
    for i = 1, 4 do want[i] = {} for j = 1, 9 do want[i][j] = a[i][j] > 0 and a[i][j] or j - 1 end end
    assert.are.same(want, got:totable())
    assert.are.same({ 5, 7 }, T.where(T{ 1, 0 }, 5, 7):totable())
    assert.has_error(function() T.where(T.ones(2, 3), T.ones(3), T.ones(4)) end,
      "bad argument #3 to 'where' (shapes do not broadcast (size 3 and 4 in dimension 2))")
  end)

  it("masked_fill copies; masked_fill_ writes through a view", function()
    local mask = ta:lt(0)
    local want = zip(a, mask:totable(), function(x, m) return m == 1 and -99 or x end)
    assert.are.same(want, ta:masked_fill(mask, -99):totable())
    assert.are.same(a, ta:totable()) -- untouched
    local c = ta:clone()
    local col = c:narrow(2, 2, 3) -- a strided view
    col:masked_fill_(col:lt(0), 0)
    for i = 1, 4 do
      for j = 1, 9 do
        local w = (j >= 2 and j <= 4 and a[i][j] < 0) and 0 or a[i][j]
        assert.are.equal(w, c[i][j])
      end
    end
    -- a mask row broadcast over the rows
    local m = T.zeros(9)
    m[3] = 1
    local got = ta:masked_fill(m, -math.huge):totable()
    for i = 1, 4 do assert.are.equal(-math.huge, got[i][3]) assert.are.equal(a[i][4], got[i][4]) end
    assert.has_error(function() T({ 1, 2 }, "f16"):masked_fill_(T{ 1, 0 }, 0) end,
      "bad argument #1 to 'masked_fill_' (in-place operations need an f32 tensor, got f16)")
  end)

  it("clamp with either bound open; NaN stays NaN", function()
    local want = map(a, function(x) return math.min(math.max(x, -0.5), 0.75) end)
    assert.are.same(want, ta:clamp(-0.5, 0.75):totable())
    assert.are.same(map(a, function(x) return math.max(x, 0) end), ta:clamp(0):totable())
    assert.are.same(map(a, function(x) return math.min(x, 0) end), ta:clamp(nil, 0):totable())
    local n = T{ 0 / 0, 5 }:clamp_(0, 1)
    assert.is_true(n[1] ~= n[1])
    assert.are.equal(1, n[2])
    assert.has_error(function() ta:clamp() end, "bad argument #2 to 'clamp' (min or max expected (nil leaves that side open))")
    assert.has_error(function() ta:clamp(2, 1) end, "bad argument #3 to 'clamp' (max is below min)")
  end)
end)

describe("sort and cumulative sums", function()
  -- stable reference: by value, ties by position
  local function ref_sort(row, desc)
    local idx = {}
    for i = 1, #row do idx[i] = i end
    table.sort(idx, function(i, j)
      local x, y = row[i], row[j]
      if x ~= y then if desc then return x > y else return x < y end end
      return i < j
    end)
    local v = {}
    for i, k in ipairs(idx) do v[i] = row[k] end
    return v, idx
  end

  for _, n in ipairs({ 1, 3, 7, 17, 129 }) do
    it("sorts rows of " .. n .. ", stable, ascending and descending, along any dim", function()
      local a = map(rnd({ 3, n }, n), round_q)
      local t = T(a)
      for _, desc in ipairs({ false, true }) do
        local v, i = t:sort(2, desc)
        assert.are.equal("i32", i.dtype)
        for r = 1, 3 do
          local wv, wi = ref_sort(a[r], desc)
          assert.are.same(wv, v[r]:totable())
          assert.are.same(wi, i[r]:totable())
        end
        -- along dim 1 of the transpose: the same, transposed
        local v2, i2 = t:t():sort(1, desc)
        assert.are.same(v:t():totable(), v2:totable())
        assert.are.same(i:t():totable(), i2:totable())
      end
    end)
  end

  it("puts NaN above every number", function()
    local v, i = T{ 2, 0 / 0, -1, math.huge }:sort()
    local got = v:totable()
    assert.are.same({ -1, 2, math.huge }, { got[1], got[2], got[3] })
    assert.is_true(got[4] ~= got[4])
    assert.are.same({ 3, 1, 4, 2 }, i:totable())
    local vd = T{ 2, 0 / 0, -1 }:sort(1, true):totable()
    assert.is_true(vd[1] ~= vd[1])
    assert.are.same({ 2, -1 }, { vd[2], vd[3] })
  end)

  it("cumsum and cumprod along a dimension", function()
    local a = rnd({ 4, 6, 5 }, 9)
    local t = T(a)
    for dim = 1, 3 do
      local s, p = t:cumsum(dim):totable(), t:cumprod(dim):totable()
      for i = 1, 4 do for j = 1, 6 do for k = 1, 5 do
        local acc, prod = 0, 1
        local idx = { i, j, k }
        for m = 1, idx[dim] do
          local ix = { i, j, k }
          ix[dim] = m
          acc = acc + a[ix[1]][ix[2]][ix[3]]
          prod = prod * a[ix[1]][ix[2]][ix[3]]
        end
        assert.is_true(math.abs(s[i][j][k] - acc) <= 1e-5 * (1 + math.abs(acc)))
        assert.is_true(math.abs(p[i][j][k] - prod) <= 1e-5 * (1 + math.abs(prod)))
      end end end
    end
    assert.are.same({ 1, 3, 6 }, T{ 1, 2, 3 }:cumsum():totable())
    assert.has_error(function() t:cumsum() end,
      "bad argument #2 to 'cumsum' (dimension expected for a tensor of more than one dimension)")
  end)
end)

describe("gather and scatter", function()
  local a = rnd({ 3, 4, 5 }, 11)
  local ta = T(a)

  for dim = 1, 3 do
    it("gather along dim " .. dim .. " (index smaller than the tensor elsewhere)", function()
      local shape = { 2, 3, 4 }
      local size = ({ 3, 4, 5 })[dim]
      local ix = T.randint(1, size, shape, { seed = dim })
      local got = ta:gather(dim, ix):totable()
      local ixt = ix:totable()
      for i = 1, 2 do for j = 1, 3 do for k = 1, 4 do
        local p = { i, j, k }
        p[dim] = ixt[i][j][k]
        assert.are.equal(a[p[1]][p[2]][p[3]], got[i][j][k])
      end end end
    end)

    it("scatter_ and scatter_add_ along dim " .. dim, function()
      local shape = { 2, 3, 4 }
      local size = ({ 3, 4, 5 })[dim]
      local ix = T.randint(1, size, shape, { seed = 10 + dim })
      local src = rnd(shape, 20 + dim)
      local want, wadd = map(a, function(x) return x end), map(a, function(x) return x end)
      local ixt = ix:totable()
      for i = 1, 2 do for j = 1, 3 do for k = 1, 4 do
        local p = { i, j, k }
        p[dim] = ixt[i][j][k]
        want[p[1]][p[2]][p[3]] = src[i][j][k] -- the last write wins, in index order
        wadd[p[1]][p[2]][p[3]] = wadd[p[1]][p[2]][p[3]] + src[i][j][k]
      end end end
      assert.are.same(want, ta:scatter(dim, ix, T(src)):totable())
      local got = ta:scatter_add(dim, ix, T(src)):totable()
      S.near(got, wadd, 1e-5)
      local c = ta:clone()
      assert.are.equal(c, c:scatter_(dim, ix, 0))
    end)
  end

  it("refuses bad indices with the argument named", function()
    assert.has_error(function() ta:gather(2, T({ { { 5 } } }, "i32")) end,
      "bad argument #3 to 'gather' (index 5 out of range (dimension 2 has size 4))")
    assert.has_error(function() ta:gather(2, T({ { 1 } }, "i32")) end,
      "bad argument #3 to 'gather' (index has 2 dimensions, the tensor 3)")
    assert.has_error(function() ta:gather(4, T({ { { 1 } } }, "i32")) end,
      "bad argument #2 to 'gather' (dimension 4 out of range (tensor has 3))")
    assert.has_error(function() ta:scatter(1, T({ { { 1, 1 } } }, "i32"), T{ { { 1 } } }) end,
      "bad argument #4 to 'scatter' (index has size 2 in dimension 3, more than 1)")
  end)
end)

describe("moments, norms, dot, mm, bmm", function()
  local a = rnd({ 5, 7 }, 31)
  local ta = T(a)
  local function mean(xs) local s = 0 for _, x in ipairs(xs) do s = s + x end return s / #xs end
  local function var(xs, unbiased)
    local m, s = mean(xs), 0
    for _, x in ipairs(xs) do s = s + (x - m) ^ 2 end
    return s / (#xs - (unbiased and 1 or 0))
  end

  it("var and std, unbiased by default, over all or along a dim", function()
    local all = flat(a)
    assert.is_true(math.abs(ta:var() - var(all, true)) < 1e-4)
    assert.is_true(math.abs(ta:std(nil, nil, false) - math.sqrt(var(all, false))) < 1e-5)
    local v = ta:var(2):totable()
    for i = 1, 5 do assert.is_true(math.abs(v[i] - var(a[i], true)) < 1e-4) end
    assert.are.same({ 5, 1 }, ta:std(2, true):shape())
    local s = T{ 3 }:var()
    assert.is_true(s ~= s) -- one element, n - 1 = 0
  end)

  it("norm for p = 2, 1, 3, inf and 0", function()
    local all = flat(a)
    local function pnorm(xs, p)
      if p == math.huge then local m = 0 for _, x in ipairs(xs) do m = math.max(m, math.abs(x)) end return m end
      if p == 0 then local c = 0 for _, x in ipairs(xs) do if x ~= 0 then c = c + 1 end end return c end
      local s = 0
      for _, x in ipairs(xs) do s = s + math.abs(x) ^ p end
      return s ^ (1 / p)
    end
    for _, p in ipairs({ 2, 1, 3, math.huge, 0 }) do
      local want = pnorm(all, p)
      assert.is_true(math.abs(ta:norm(p) - want) <= 1e-5 * (1 + want), "p = " .. p)
      local rows = ta:norm(p, 2):totable()
      for i = 1, 5 do assert.is_true(math.abs(rows[i] - pnorm(a[i], p)) <= 1e-5 * (1 + rows[i])) end
    end
    assert.are.equal(5, T{ 3, 4 }:norm())
    assert.has_error(function() ta:norm(-1) end, "bad argument #2 to 'norm' (p must be a number >= 0 (or math.huge), got -1)")
  end)

  it("dot, mm and bmm", function()
    local b = rnd({ 7, 3 }, 32)
    local s = 0
    for i = 1, 5 do for j = 1, 7 do s = s + a[i][j] * a[i][j] end end
    assert.is_true(math.abs(ta:dot(ta) - s) < 1e-3)
    assert.is_true(math.abs(T.dot(ta, ta:clone()) - s) < 1e-3)
    assert.has_error(function() ta:dot(T{ 1 }) end,
      "bad argument #2 to 'dot' (dot needs tensors with the same number of elements (35 and 1))")
    local want = {}
    for i = 1, 5 do want[i] = {} for j = 1, 3 do
      local acc = 0
      for k = 1, 7 do acc = acc + a[i][k] * b[k][j] end
      want[i][j] = acc
    end end
    S.near(ta:mm(T(b)), want, 1e-4)
    S.near(T.bmm(ta:unsqueeze(1):expand(2, 5, 7), T(b):unsqueeze(1):expand(2, 7, 3))[2], want, 1e-4)
    assert.has_error(function() ta:mm(T{ 1, 2 }) end, "bad argument #2 to 'mm' (mm needs matrices, got 1 dimensions)")
    assert.has_error(function() ta:bmm(ta) end, "bad argument #1 to 'bmm' (bmm needs 3-d tensors (batch, n, m), got 2 dimensions)")
  end)
end)

describe("constructors and random draws", function()
  it("eye and linspace", function()
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 } }, T.eye(2, 3):totable())
    assert.are.same({ { 1, 0 }, { 0, 1 } }, T.eye(2):totable())
    assert.are.same({ 0, 0.25, 0.5, 0.75, 1 }, T.linspace(0, 1, 5):totable())
    local l = T.linspace(-3, 7.7, 13):totable()
    assert.are.equal(13, #l)
    assert.is_true(math.abs(l[13] - 7.7) < 1e-6 and l[1] == -3)
    for i = 2, 13 do assert.is_true(math.abs((l[i] - l[i - 1]) - 10.7 / 12) < 1e-5) end
    assert.are.same({ 2 }, T.linspace(2, 5, 1):totable())
    assert.has_error(function() T.linspace(0, 1, 0) end, "bad argument #3 to 'linspace' (linspace needs at least 1 point, got 0)")
  end)

  it("randint covers [lo, hi] uniformly, both ends included, seeded", function()
    local r = T.randint(-2, 3, { 60000 }, { seed = 5 })
    assert.are.equal("i32", r.dtype)
    assert.are.same(r:totable(), T.randint(-2, 3, { 60000 }, { seed = 5 }):totable())
    local count = {}
    for _, v in ipairs(r:totable()) do count[v] = (count[v] or 0) + 1 end
    for v = -2, 3 do assert.is_true(math.abs(count[v] / 60000 - 1 / 6) < 0.01, "value " .. v) end
    assert.is_nil(count[-3])
    assert.is_nil(count[4])
    assert.has_error(function() T.randint(3, 2, { 1 }) end,
      "bad argument #1 to 'randint' (bounds [3, 2] are empty or outside 32-bit integers)")
    assert.has_error(function() T.randint(1, 2, { 1 }, { sed = 1 }) end, "bad argument #4 to 'randint' (unknown option 'sed')")
  end)

  it("multinomial with replacement follows the weights; without, draws distinct positions", function()
    local p = T{ 0.1, 0, 0.6, 0.3 }
    local d = p:multinomial(40000, { replacement = true, seed = 7 })
    local count = { 0, 0, 0, 0 }
    for _, v in ipairs(d:totable()) do count[v] = count[v] + 1 end
    assert.are.equal(0, count[2])
    for k, w in ipairs({ 0.1, 0, 0.6, 0.3 }) do assert.is_true(math.abs(count[k] / 40000 - w) < 0.01) end
    -- rows, without replacement: a permutation of the positive entries
    local rows = T{ { 1, 2, 3, 0 }, { 0, 0, 5, 5 } }
    local s = T.multinomial(rows, 2, { seed = 3 }):totable()
    for r = 1, 2 do
      assert.are_not.equal(s[r][1], s[r][2])
      for _, v in ipairs(s[r]) do assert.is_true(rows[r][v] > 0) end
    end
    assert.are.same(s, T.multinomial(rows, 2, { seed = 3 }):totable())
    assert.has_error(function() rows:multinomial(3) end,
      "bad argument #2 to 'multinomial' (row 2 has fewer positive entries than the draws asked without replacement)")
    assert.has_error(function() T{ 1, -1 }:multinomial(1) end,
      "bad argument #1 to 'multinomial' (probabilities must be finite and not negative (row 1 has -1))")
    assert.has_error(function() T{ 0, 0 }:multinomial(1) end, "bad argument #1 to 'multinomial' (row 1 has no positive probability)")
  end)
end)

describe("conv1d", function()
  local function ref(x, w, b, s, p, d, g)
    local cin, L = #x, #x[1]
    local cout, cg, K = #w, #w[1], #w[1][1]
    local og = math.floor(cout / g)
    local lout = math.floor((L + 2 * p - d * (K - 1) - 1) / s) + 1
    local y = {}
    for o = 1, cout do
      y[o] = {}
      local grp = math.floor((o - 1) / og)
      for t = 1, lout do
        local acc = b and b[o] or 0
        for c = 1, cg do
          for k = 1, K do
            local at = (t - 1) * s + (k - 1) * d - p
            if at >= 0 and at < L then acc = acc + w[o][c][k] * x[grp * cg + c][at + 1] end
          end
        end
        y[o][t] = acc
      end
    end
    return y
  end

  local cases = {
    { "plain", 3, 17, 5, 3, {} },
    { "stride, padding", 4, 29, 2, 5, { stride = 3, padding = 2 } },
    { "dilation", 2, 33, 3, 3, { dilation = 4, padding = 1 } },
    { "groups", 6, 20, 4, 3, { groups = 2, padding = 1 } },
    { "depthwise", 4, 9, 4, 7, { groups = 4, padding = 3 } },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local cin, L, cout, K, o = c[2], c[3], c[4], c[5], c[6]
      local g = o.groups or 1
      local x, w, b = rnd({ cin, L }, 41), rnd({ cout, math.floor(cin / g), K }, 42), flat(rnd({ cout }, 43))
      local want = ref(x, w, b, o.stride or 1, o.padding or 0, o.dilation or 1, g)
      S.near(T(x):conv1d(T(w), T(b), o), want, 1e-3)
      -- a batch of two
      local xb = T.stack({ T(x), T(x) * 2 }, 1)
      local got = T.conv1d(xb, T(w), nil, o)
      S.near(got[1], ref(x, w, nil, o.stride or 1, o.padding or 0, o.dilation or 1, g), 1e-3)
    end)
  end

  it("refuses what does not fit, naming the argument", function()
    local x, w = T.ones(4, 10), T.ones(2, 4, 3)
    assert.has_error(function() T.conv1d(x, T.ones(2, 3, 3)) end,
      "bad argument #2 to 'conv1d' (weight has 3 input channels per group, the input 4)")
    assert.has_error(function() T.conv1d(x, w, nil, { groups = 3 }) end,
      "bad argument #4 to 'conv1d' (groups = 3 must divide the input (4) and output (2) channels)")
    assert.has_error(function() T.conv1d(x, w, { stride = 0 }) end,
      "bad argument #3 to 'conv1d' (stride, dilation and groups must be >= 1 and padding >= 0)")
    assert.has_error(function() T.conv1d(x, w, { strides = 2 }) end, "bad argument #3 to 'conv1d' (unknown option 'strides')")
    assert.has_error(function() T.conv1d(T.ones(4, 2), w) end,
      "bad argument #1 to 'conv1d' (input length 2 is shorter than the kernel's span 3 (with padding 0))")
    assert.has_error(function() T.conv1d(x, w, T.ones(3)) end, "bad argument #3 to 'conv1d' (bias must have shape {2})")
  end)
end)

describe("rope", function()
  -- plain Lua: pairs (2i, 2i+1) or (i, i + dims/2) rotate by pos * inv[i]
  local function ref(x, pos, o)
    local hd = #x[1][1]
    local dims = o.dims or hd
    local base = o.base or 10000
    local half = math.floor(dims / 2)
    local out = map(x, function(v) return v end)
    for h = 1, #x do
      for t = 1, #x[1] do
        local p = type(pos) == "table" and pos[t] or pos + t - 1
        for i = 0, half - 1 do
          local inv = base ^ (-2 * i / dims) * (o.scale or 1) / (o.factors and o.factors[i + 1] or 1)
          local th = p * inv
          local i0, i1
          if o.mode == "neox" then i0, i1 = i + 1, i + half + 1 else i0, i1 = 2 * i + 1, 2 * i + 2 end
          local a, b = x[h][t][i0], x[h][t][i1]
          out[h][t][i0] = (a * math.cos(th) - b * math.sin(th)) * (o.mscale or 1)
          out[h][t][i1] = (a * math.sin(th) + b * math.cos(th)) * (o.mscale or 1)
        end
      end
    end
    return out
  end

  local cases = {
    { "normal, one head", { 1, 5, 8 }, 0, {} },
    { "neox, grouped heads", { 3, 7, 16 }, 5, { mode = "neox" } },
    { "partial dims, base", { 2, 4, 12 }, 100, { dims = 6, base = 500 } },
    { "positions per token", { 2, 3, 8 }, { 7, 2, 40 }, { mode = "neox" } },
    { "linear scaling", { 1, 9, 10 }, 3, { scaling = { factor = 4 } }, { scale = 0.25 } },
    { "factors and attn_factor", { 2, 2, 8 }, 11,
      { scaling = { factors = { 1, 2, 4, 8 }, attn_factor = 1.5 } }, { factors = { 1, 2, 4, 8 }, mscale = 1.5 } },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local x = T.randn(c[2], { seed = 51 })
      local o = c[4]
      local r = {}
      for k, v in pairs(o) do r[k] = v end
      for k, v in pairs(c[5] or {}) do r[k] = v end
      local want = ref(x:totable(), c[3], r)
      S.near(x:rope(c[3], o), want, 2e-5)
      -- in place through a strided view: {heads, n, hd} over a (n, heads, hd) buffer
      local buf = x:transpose(1, 2):contiguous()
      local view = buf:transpose(1, 2)
      assert.are.equal(view, view:rope_(c[3], o))
      S.near(buf:transpose(1, 2), want, 2e-5)
    end)
  end

  it("llama3 scaling: factors of 1 for high frequencies, `factor` for low ones", function()
    local f = T.rope_freqs { dims = 64, base = 500000, scaling = { type = "llama3", factor = 8, low_freq_factor = 1,
                                                                   high_freq_factor = 4, original_context_length = 8192 } }
    local plain = T.rope_freqs { dims = 64, base = 500000 }
    local ft, pt = f:totable(), plain:totable()
    for i = 1, 32 do
      local wavelen = 2 * math.pi / pt[i]
      local ratio = pt[i] / ft[i]
      if wavelen < 8192 / 4 then assert.is_true(math.abs(ratio - 1) < 1e-5)
      elseif wavelen > 8192 then assert.is_true(math.abs(ratio - 8) < 1e-4)
      else
        local smooth = (8192 / wavelen - 1) / 3
        assert.is_true(math.abs(ratio - 1 / ((1 - smooth) / 8 + smooth)) < 1e-4)
      end
    end
    -- freqs from rope_freqs rotate as the options they came from
    local x = T.randn({ 2, 3, 64 }, { seed = 2 })
    local o = { base = 500000, scaling = { type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
                                           original_context_length = 8192 } }
    assert.is_true(x:rope(9, o) == x:rope(9, { freqs = f }))
  end)

  it("refuses what it cannot honour", function()
    local x = T.randn({ 2, 3, 8 })
    assert.has_error(function() x:rope(0, { mode = "glm" }) end,
      "bad argument #3 to 'rope' (mode must be \"normal\" or \"neox\", got \"glm\")")
    assert.has_error(function() x:rope(0, { dims = 9 }) end,
      "bad argument #3 to 'rope' (dims = 9: an even count up to the head size (8))")
    assert.has_error(function() x:rope(0, { scaling = { type = "yarn" } }) end,
      "bad argument #3 to 'rope' (scaling type \"yarn\" is not supported (linear and llama3 are))")
    assert.has_error(function() x:rope(0, { bsae = 1 }) end, "bad argument #3 to 'rope' (unknown option 'bsae')")
    assert.has_error(function() x:rope({ 1, 2 }) end, "bad argument #2 to 'rope' (2 positions for 3 tokens)")
    assert.has_error(function() x[1]:unsqueeze(1):expand(2, 3, 8):rope_(0) end,
      "bad argument #1 to 'rope_' (cannot rotate in place an expanded (broadcast) view)")
    assert.has_error(function() T.zeros(2, 8, "f16"):rope_(0) end,
      "bad argument #1 to 'rope_' (rope needs an f32 tensor (..., tokens, head_dim), got f16 with 2 dimensions)")
  end)
end)

describe("ALiBi", function()
  it("slopes as ggml computes them, and the bias the attention kernel adds", function()
    local function slopes(h, mb)
      local n2 = 1
      while n2 * 2 <= h do n2 = n2 * 2 end
      local m0, m1 = 2 ^ (-mb / n2), 2 ^ (-(mb / 2) / n2)
      local s = {}
      for i = 0, h - 1 do s[i + 1] = i < n2 and m0 ^ (i + 1) or m1 ^ (2 * (i - n2) + 1) end
      return s
    end
    for _, h in ipairs({ 1, 3, 4, 6, 12 }) do S.near(T.alibi_slopes(h, 8), slopes(h, 8), 1e-7) end
    local s = slopes(3, 8)
    local b = T.alibi(T(s), 2, 5):totable()
    for h = 1, 3 do for i = 1, 2 do for j = 1, 5 do
      local p = 5 - 2 + (i - 1)
      assert.is_true(math.abs(b[h][i][j] + s[h] * math.abs(p - (j - 1))) < 1e-6)
    end end end
    assert.has_error(function() T.alibi(T(s), 6, 5) end, "bad argument #2 to 'alibi' (6 query rows cannot be the last of 5 keys)")
  end)
end)

describe("ops split across threads", function()
  -- A batch's row ops (rows x features from 32K floats up) run on every thread; each row is
  -- computed the same way on any thread, so the result has the single thread's bits.
  local function same_bits(a, b)
    assert.are.same(a:shape(), b:shape())
    local fa, fb = flat(a:totable()), flat(b:totable())
    for i = 1, #fa do
      local x, y = fa[i], fb[i]
      if not (x == y and (x ~= 0 or 1 / x == 1 / y)) then
        error(("element %d: %.9g with threads, %.9g with one"):format(i, y, x), 2)
      end
    end
  end

  local function across(f)
    local n = lm.threads()
    lm.threads(1)
    local one = f()
    lm.threads(math.max(2, n)) -- at most the cores
    local many = f()
    lm.threads(n)
    return one, many
  end

  local x = T.randn({ 129, 577 }, { seed = 7 }) -- 74,433 floats, rows not a multiple of 8
  local w, b = T.randn({ 577 }, { seed = 8 }), T.randn({ 577 }, { seed = 9 })
  local y, heads = T.randn({ 129, 577 }, { seed = 11 }), T.randn({ 129, 9, 64 }, { seed = 10 })
  local g = T.randn({ 30, 2481 }, { seed = 12 }) * 4
  local cases = {
    { "rmsnorm", function() return x:rmsnorm(w, 1e-5) end },
    { "layernorm", function() return x:layernorm(w, b, 1e-5) end },
    { "add_ (a residual add)", function() return x:clone():add_(y) end },
    { "mul by a broadcast row", function() return x:mul(w) end },
    { "silu", function() return x:silu() end },
    { "exp_", function() return x:clone():exp_() end },
    -- 74,430 floats: halves of 37,215, which a 16- or 8-wide kernel would end with a scalar tail
    { "silu_mul_", function() return g:clone():silu_mul_(g:mul(0.5)) end },
    { "softmax", function() return x:softmax() end },
    { "clamp_", function() return x:clone():clamp_(-0.5, 0.75) end },
    { "rope_ on {heads, n, head_dim} views", function()
      local h = heads:clone()
      h:transpose(1, 2):rope_(5, { mode = "neox" })
      return h
    end },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " gives the single thread's bits", function()
      local one, many = across(c[2])
      same_bits(one, many)
    end)
  end

  it("a tensor made from a dropped one's memory starts as zeros", function()
    for _ = 1, 8 do T.full({ 129, 577 }, 7) end
    collectgarbage()
    collectgarbage()
    for _ = 1, 4 do
      assert.are.equal(0, T.zeros(129, 577):abs():sum())
      assert.are.equal(0, T.empty(129, 577):abs():sum())
    end
  end)
end)
