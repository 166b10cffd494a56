-- The GGUF block formats, bit for bit against ggml (../shared/ref/quant-blocks.*): one 64x256
-- matrix w in 13 types and 8 activation rows x. Dequantizing gives exactly ggml's floats;
-- quantizing w.f32 gives exactly ggml's bytes; the round trip error is bounded per type;
-- x:linear(w) matches ggml's mul_mat on the active kernel level (tools/runspecs.sh runs
-- this file under each level), through the dot products over w as stored, and through
-- the packed GEMV and GEMM kernels.
local lm = require "moonlm"
local core = require "moonlm.core"
local S = require "support"
local T = lm.tensor

local ref = S.path("ref/")
local have = S.exists(ref .. "quant-blocks.gguf")

-- rms: bound on the quantize -> dequantize error of N(0, 1) data (ggml measured 0.9 of it);
-- mm: bound on max |y - y_ggml| / max |y_ggml| for y = x w^T with ggml's activation rounding
local types = {
  {"f32", rms = 0, mm = 1e-5},
  {"f16", rms = 2.3e-4, mm = 1e-5},
  {"bf16", rms = 1.9e-3, mm = 1e-5},
  {"q8_0", rms = 6.0e-3, mm = 1e-5},
  {"q4_0", rms = 9.5e-2, mm = 1e-5},
  {"q4_1", rms = 8.7e-2, mm = 1e-5},
  {"q5_0", rms = 4.8e-2, mm = 1e-5},
  {"q5_1", rms = 4.3e-2, mm = 1e-5},
  {"q2_k", rms = 3.3e-1, mm = 1e-5},
  {"q3_k", rms = 1.7e-1, mm = 1e-5},
  {"q4_k", rms = 8.0e-2, mm = 1e-5},
  {"q5_k", rms = 4.1e-2, mm = 1e-5},
  {"q6_k", rms = 2.0e-2, mm = 1e-5},
}

local function maxabs(t) return t:abs():max() end

-- max |a - b| / max |b| with b a flat Lua array of floats, a a tensor of the same numel
local function rel_to(a, b)
  local fa = S.flatten(a:totable())
  assert.are.equal(#b, #fa)
  local d, m = 0, 0
  for i = 1, #b do
    local e = math.abs(fa[i] - b[i])
    if e ~= e then return math.huge end
    if e > d then d = e end
    if math.abs(b[i]) > m then m = math.abs(b[i]) end
  end
  return d / m
end

describe("GGUF block formats against ggml", function()
  if not have then
    pending("../shared/ref/quant-blocks.gguf not found")
    return
  end
  local ts = assert(lm.load_tensors(ref .. "quant-blocks.gguf"))
  local x, wf = ts.x, ts["w.f32"]

  it("holds the matrix in every type", function()
    assert.are.same({8, 256}, x:shape())
    for _, c in ipairs(types) do
      local w = ts["w." .. c[1]]
      assert.truthy(w, c[1])
      assert.are.same({64, 256}, w:shape())
      assert.are.equal(c[1], w.dtype)
    end
  end)

  for _, c in ipairs(types) do
    local ty = c[1]
    describe(ty, function()
      it("dequantizes to exactly ggml's floats", function()
        local want = S.read_file(ref .. "quant-blocks." .. ty .. ".f32")
        assert.is_true(ts["w." .. ty]:dequantize():bytes() == want)
      end)

      it("quantizes w.f32 to exactly ggml's bytes", function()
        assert.is_true(wf:quantize(ty):bytes() == ts["w." .. ty]:bytes())
      end)

      it(("round-trips with rms error <= %g"):format(c.rms), function()
        local d = wf:quantize(ty):dequantize():sub(wf)
        local rms = math.sqrt(d:square():mean())
        assert.is_true(rms <= c.rms, ("rms %g"):format(rms))
        if c.rms > 0 then assert.is_true(rms > 0.5 * c.rms, ("rms %g suspiciously small"):format(rms)) end
      end)

      local want = S.read_f32(ref .. "quant-blocks." .. ty .. ".matmul.f32")
      it(("x:linear(w) matches ggml's mul_mat to %g of max |y|"):format(c.mm), function()
        local y = x:linear(ts["w." .. ty])
        assert.are.same({8, 64}, y:shape())
        local r = rel_to(y, want)
        assert.is_true(r <= c.mm, ("relative difference %g"):format(r))
      end)

      it("matches it through every kernel path of the active level", function()
        local w = core._weight(ts["w." .. ty])
        for _, path in ipairs{"plain", "gemv", "gemm"} do
          local r = rel_to(w:mm(x, path), want)
          assert.is_true(r <= c.mm, ("%s: relative difference %g"):format(path, r))
        end
      end)

      it("matches it through w:pack(), for 8 rows and for each row alone", function()
        local pw = ts["w." .. ty]:pack()
        assert.are.same({64, 256}, pw:info().shape)
        local r = rel_to(x:linear(pw), want)
        assert.is_true(r <= c.mm, ("relative difference %g"):format(r))
        for m = 1, 8 do
          local y = x:narrow(1, m, 1):linear(pw)
          local row = {}
          for i = 1, 64 do row[i] = want[64 * (m - 1) + i] end
          r = rel_to(y, row)
          assert.is_true(r <= c.mm, ("row %d: relative difference %g"):format(m, r))
        end
      end)

      it("matches it with 32 rows (weights packed on the fly)", function()
        local x4 = T.cat({x, x, x, x}, 1)
        local y = x4:linear(ts["w." .. ty])
        for k = 0, 3 do
          local r = rel_to(y:narrow(1, 8 * k + 1, 8), want)
          assert.is_true(r <= c.mm, ("rows %d..%d: relative difference %g"):format(8 * k + 1, 8 * k + 8, r))
        end
      end)
    end)
  end

  it("quantizing zeros gives zero blocks and zero products", function()
    local z = T.zeros({16, 256})
    for _, c in ipairs(types) do
      local w = z:quantize(c[1])
      assert.are.equal(0, maxabs(w:dequantize()), c[1])
      assert.are.equal(0, maxabs(x:linear(w)), c[1])
    end
  end)
end)
