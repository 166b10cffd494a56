-- moonlm: large language models on the CPU, from Lua.
-- This file is the public API; the heavy lifting is in the C module moonlm.core.
local core = require "moonlm.core"

local _M = {
  _VERSION = core.info().version,
  tensor = core.tensor,
  threads = core.threads,
  clock = core.clock,
  isa = core.isa,
  info = core.info,
  save = core.save,
  load_tensors = core.load_tensors,
}

-- A metadata value with an explicit GGUF type, for moonlm.save:
--   { ["llama.rope.freq_base"] = moonlm.gguf_value("f32", 10000) }
function _M.gguf_value(gguf_type, value)
  return { gguf_type = gguf_type, value = value }
end

-- tensor(...) is tensor.new(...)
setmetatable(_M.tensor, { __call = function(_, ...) return _M.tensor.new(...) end })

return _M
