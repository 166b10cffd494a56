-- Models written in Lua: a model's weights from Lua (model:weights, model:tensor, x:linear
-- on the prepared copies).
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local mini = S.path("ref/mini-q8_0.gguf")

describe("model weights from Lua", function()
  local model
  setup(function() model = assert(lm.load(mini)) end)
  teardown(function() model:close() end)

  it("weights() walks every tensor of the file in order; a pattern filters", function()
    local names, n = model:tensor_names(), 0
    for name, t in model:weights() do
      n = n + 1
      assert.are.equal(names[n], name)
      assert.is_true(lm.tensor.is_tensor(t))
      assert.is_true(t == model:tensor(name))
    end
    assert.are.equal(#names, n)
    local q = {}
    for name, t in model:weights("^blk%.%d+%.attn_q%.weight$") do q[#q + 1] = name .. " " .. tostring(t:shape()) end
    assert.are.same({ "blk.0.attn_q.weight {256, 256}", "blk.1.attn_q.weight {256, 256}" }, q)
    assert.has_error(function() model:weights(3) end, "bad argument #1 to 'weights' (string pattern expected, got number)")
  end)

  it("x:linear(w) on a model matrix runs its prepared copy: the same product as the rows as stored", function()
    for _, name in ipairs({ "blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight", "output.weight" }) do
      local w = model:tensor(name)
      local x = T.randn({ 3, w:size(2) }, { seed = 7 })
      local got = x:linear(w)                       -- linked: the model's packed copy
      local plain = x:linear(w:narrow(1, 1, w:size(1))) -- a view is not linked: the rows as stored
      local exact = x:linear(w:dequantize())        -- f32 reference
      local scale = exact:abs():max()
      assert.is_true((got - plain):abs():max() <= 1e-5 * scale, name)
      assert.is_true((got - exact):abs():max() <= 2e-2 * scale, name) -- activations rounded to q8_0
      -- and with a bias
      local b = T.randn({ w:size(1) }, { seed = 8 })
      assert.is_true((x:linear(w, b) - (got + b)):abs():max() <= 1e-6 * scale)
    end
    assert.has_error(function() T.randn({ 2, 5 }):linear(model:tensor("blk.0.attn_q.weight")) end,
      "bad argument #2 to 'linear' (inner dimensions 5 and 256 differ)")
  end)
end)
