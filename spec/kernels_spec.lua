-- The SIMD kernel levels against ref, the oracle (src/kernels). For every weight type and
-- kernel table this machine can run, y = x w^T through each path (the dot products over w
-- as stored, the packed GEMV, the packed GEMM) is compared with ref's: shapes with K at the
-- format's minimum and larger, N and M in {1, 2, 3, 7, 8, 17, 64, 129, 512}, zero and huge
-- inputs, activation rows further apart than K, outputs into a wider matrix. Activation
-- quantizers must write ref's bytes. The tables: the active level, and when it is the best
-- level this CPU has, also the test-only ones ("avx512-base": avx512 without VNNI/BF16;
-- "amx-emu": the AMX kernels on the tile emulator). The exhaustive cross product of shapes
-- over every table is tagged #once.
local lm = require "moonlm"
local core = require "moonlm.core"
local T = lm.tensor

-- tolerance on max |y - y_ref| / max |y_ref| (the levels accumulate in another order; the
-- int8 sums inside a block are exact everywhere, so only float rounding differs)
local tol = {
  f32 = 2e-6, f16 = 2e-6, bf16 = 2e-6, q8_0 = 2e-6, q4_0 = 2e-6, q4_1 = 2e-6, q5_0 = 2e-6,
  q5_1 = 2e-6, q2_k = 2e-6, q3_k = 2e-6, q4_k = 2e-6, q5_k = 2e-6, q6_k = 2e-6,
}
local types = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}
-- K at the format's minimum (whole x16 blocks for f16 / bf16) and larger; float types also
-- take a K that no packed layout accepts (then only the dot products run)
local function ks(ty)
  if ty:match("_k$") then return {256, 768} end
  if ty == "f32" or ty == "f16" or ty == "bf16" then return {32, 160, 40} end
  return {32, 160}
end
local sizes = {1, 2, 3, 7, 8, 17, 64, 129, 512}

local level = lm.isa()
local supported = lm.info().isa_supported
local function available(name)
  return pcall(core._weight, T.zeros({1, 32}), name)
end
local tables = {level}
local all_tables = {}
for _, name in ipairs{"ref", "avx2", "avx512-base", "avx512", "amx", "amx-emu"} do
  if available(name) then
    all_tables[#all_tables + 1] = name
    if level == supported and (name == "avx512-base" or name == "amx-emu") then tables[#tables + 1] = name end
  end
end

-- x: (M, K) f32 whose rows are K + 5 apart
local function spaced(M, K, seed, scale)
  local big = T.randn({M, K + 5}, {seed = seed}):mul(scale or 1)
  return big:narrow(2, 1, K)
end

local function check(name, ty, w, x, yref, label)
  local pw = core._weight(w, name)
  local info = pw:info()
  local ymax = yref:abs():max()
  for _, path in ipairs{"plain", "gemv", "gemm"} do
    if path == "plain" or info.packed then
      local N = w:size(1)
      local out = T.full({x:size(1), N + 3}, 7)
      local y = pw:mm(x, path, out:narrow(2, 1, N))
      local d = y:sub(yref):abs():max()
      local lim = tol[ty] * ymax
      assert(d <= lim, ("%s %s %s %s: max difference %g > %g (max |y| %g)"):format(name, ty, path, label, d, lim, ymax))
      assert(out:narrow(2, N + 1, 3):min() == 7 and out:narrow(2, N + 1, 3):max() == 7,
             ("%s %s %s %s: wrote past N"):format(name, ty, path, label))
    end
  end
end

local function run_case(tabs, ty, N, K, M, opts)
  opts = opts or {}
  local w = T.randn({N, K}, {seed = N * 7 + K}):mul(opts.wscale or 1):quantize(ty)
  local x = opts.zero_x and T.zeros({M, K}):narrow(2, 1, K) or spaced(M, K, M * 3 + K, opts.xscale)
  local yref = core._weight(w, "ref"):mm(x, "plain")
  if opts.zero_x then assert.are.equal(0, yref:abs():max()) end
  for _, name in ipairs(tabs) do check(name, ty, w, x, yref, ("N=%d K=%d M=%d"):format(N, K, M)) end
end

describe("kernel levels against ref", function()
  it("the tables under test exist", function()
    assert.truthy(available("ref"))
    assert.truthy(available(level))
    assert.is_false(available("no-such-table"))
  end)

  for _, ty in ipairs(types) do
    describe(ty, function()
      for _, K in ipairs(ks(ty)) do
        it(("K = %d, every N and M"):format(K), function()
          for i, N in ipairs(sizes) do
            run_case(tables, ty, N, K, sizes[#sizes + 1 - i]) -- (1, 512), (2, 129), ... (512, 1)
          end
          run_case(tables, ty, 17, K, 17)
        end)
      end
      it("zero activations give zero, zero weights give zero", function()
        local K = ks(ty)[1]
        run_case(tables, ty, 17, K, 3, {zero_x = true})
        run_case(tables, ty, 17, K, 17, {wscale = 0})
      end)
      it("huge inputs", function()
        local K = ks(ty)[2]
        run_case(tables, ty, 33, K, 9, {xscale = 3e3, wscale = 1e3})
        run_case(tables, ty, 33, K, 17, {xscale = 1e-3})
      end)
    end)
  end

  it("activation quantizers write ref's bytes", function()
    local n = 512
    local x = T.randn({n}, {seed = 5}):mul(3)
    -- ties of x * 127 / amax, exact zeros, tiny and large values, a zero block
    local v = x:totable()
    for i = 1, 32 do v[i] = (i - 16) * 0.5 end
    v[33], v[34], v[35] = 1e-30, -1e-30, 0
    for i = 65, 96 do v[i] = 0 end
    for i = 97, 128 do v[i] = 1e5 * (i % 7 - 3) end
    local xs = {x, T(v)}
    for _, name in ipairs(all_tables) do
      for _, vt in ipairs{"q8_0", "q8_1", "q8_k", "f16", "bf16"} do
        for _, t in ipairs(xs) do
          assert.is_true(core._act_bytes(name, vt, t) == core._act_bytes("ref", vt, t), name .. " " .. vt)
        end
      end
    end
  end)

  it("the x16 packed layout reads back every value", function()
    for _, ty in ipairs(types) do
      if ty ~= "f32" then
        for _, K in ipairs(ks(ty)) do
          local w = T.randn({21, K}, {seed = K}):quantize(ty)
          local d = core._x16_check(w)
          if K % 32 == 0 then
            assert.are.equal(0, d, ty .. " K=" .. K)
          else
            assert.is_nil(d)
          end
        end
      end
    end
  end)

  it("row ops (dot, axpy, scale, add, f16 conversions, rmsnorm, silu_mul, exp_shift, gelu_mul, layernorm, add_clamp) agree with ref's", function()
    -- sizes 0 to 1000 around the vector widths, unaligned rows, nothing written past n
    -- (src/kernels/rowcheck.c); ref against itself checks the guards and bounds
    for _, name in ipairs(all_tables) do
      local ok, msg = core._rowops_check(name)
      assert.is_true(ok, msg)
      assert.are.equal(name .. ": every row op agrees with ref", msg)
    end
    assert.has_error(function() core._rowops_check("no-such-table") end,
      "bad argument #1 to '_rowops_check' (kernel table not available on this CPU or build)")
  end)

  it("the AMX emulator agrees with plain loops", function()
    local ok, msg = core._amx_emu_selftest()
    assert.is_true(ok, msg)
  end)

  it("info() names the kernels per type", function()
    local info = lm.info()
    local by_type, detail = info.kernels, info.kernel_tables
    for _, ty in ipairs(types) do
      assert.are.equal("string", type(by_type[ty]))
      assert.are.equal("string", type(detail[ty].dot))
      assert.are.equal("string", type(detail[ty].gemv))
      assert.are.equal("string", type(detail[ty].gemm))
    end
    if level ~= "ref" then assert.are_not.equal("none", detail.q4_0.gemv) end
    assert.are.equal("none", detail.f32.gemm)
  end)

  it("prepared weights: packed copy as large as the weight, results as ml_mm, two phases", function()
    local w = T.randn({40, 256}, {seed = 1}):quantize("q4_k")
    local pw = core._weight(w)
    local info = pw:info()
    if info.packed then assert.are.equal(48 / 16 * 16 * 144, info.packed_bytes) end
    local x = T.randn({5, 256}, {seed = 2})
    local d = pw:mm(x):sub(x:linear(w)):abs():max()
    assert.is_true(d <= 1e-5 * x:linear(w):abs():max())
    for _, m in ipairs{1, 5, 40} do -- the two-phase API, as in a caller's parallel region
      local xm = T.randn({m, 256}, {seed = m})
      assert.is_true(pw:mm(xm, "phases"):sub(pw:mm(xm)):abs():max() == 0)
    end
    local np = core._weight(w, nil, false)
    assert.is_false(np:info().packed)
    pw:release()
    assert.has_error(function() pw:mm(x) end)
  end)
end)

describe("kernel levels against ref, every shape #once", function()
  for _, ty in ipairs(types) do
    it(ty, function()
      local K = ks(ty)[2]
      for _, N in ipairs(sizes) do
        for _, M in ipairs(sizes) do
          local tabs = {}
          for _, name in ipairs(all_tables) do
            -- the emulator is slow: the largest products on the others only
            if name ~= "ref" and (name ~= "amx-emu" or N * M <= 512 * 64) then tabs[#tabs + 1] = name end
          end
          run_case(tabs, ty, N, K, M)
        end
      end
    end)
  end
end)
