-- A tour of the tensor API: what `make demo` showed before models could load, and a quick
-- check that the module works on this machine. Run: lua5.4 examples/demo.lua
local lm = require "moonlm"
local T = lm.tensor

local level, kernels = lm.isa(), lm.info().kernels
print(("moonlm %s on %s: kernel level %s, %d threads"):format(lm._VERSION, lm.info().cpu, level, lm.threads()))

-- tensors from tables, views, broadcasting
local a = T{{1, 2, 3}, {4, 5, 6}}
print("a =") print(a)
print("a:t() · a =") print(a:t():matmul(a))
print("softmax over rows:") print(a:softmax())

-- a small MLP with quantized weights: y = silu(x · w1ᵀ) · w2ᵀ
local x = T.randn({4, 256}, { seed = 1 })
local w1 = T.randn({512, 256}, { seed = 2 }) * 0.05
local w2 = T.randn({10, 512}, { seed = 3 }) * 0.05
local exact = x:linear(w1):silu():linear(w2)
for _, q in ipairs{"f16", "q8_0", "q4_k"} do
  local y = x:linear(w1:quantize(q)):silu():linear(w2:quantize(q))
  local err = (y - exact):abs():max() / exact:abs():max()
  print(("MLP with %-5s weights (kernel %s): relative error %.2e"):format(q, kernels[q], err))
end
local probs = exact:softmax()
local v, i = probs[1]:topk(3)
print(("top-3 classes of row 1: %d (%.3f), %d (%.3f), %d (%.3f)"):format(i[1], v[1], i[2], v[2], i[3], v[3]))
