-- What `make demo` runs: load a GGUF model and stream a story as it is generated.
--   lua5.4 examples/story.lua [model.gguf] [prompt]
local lm = require "moonlm"

local path = arg[1] or "../shared/models/stories260K.gguf"
local f = io.open(path, "rb")
if not f then
  io.stderr:write(([[
No model at %s.

moonlm runs GGUF models (llama, qwen2, qwen3 families). Get one, for example
  stories260K.gguf from https://huggingface.co/ggml-org/models (tinyllamas/), or any
  Q4_K_M / Q8_0 GGUF of TinyLlama, SmolLM, Llama 3, Qwen2.5 or Qwen3,
and run:  make demo MODEL=/path/to/model.gguf
]]):format(path))
  os.exit(1)
end
f:close()

local model = assert(lm.load(path, { threads = lm.info().max_threads }))
local level = lm.isa()
io.stderr:write(("moonlm %s: %s (%s, %.1fM parameters), kernels %s, %d threads\n\n"):format(
  lm._VERSION, model.meta["general.name"] or path, model.arch, model.n_params / 1e6, level, lm.threads()))

local prompt = arg[2] or "Once upon a time"
io.write(prompt)
io.flush()
local info
for piece, i in model:stream(prompt, { max_tokens = 200, temperature = 0.8, top_p = 0.95, seed = 42 }) do
  io.write(piece)
  io.flush()
  info = i
end
io.write("\n")
if info then
  io.stderr:write(("\n[%d prompt tokens at %.0f tokens/s, %d generated at %.1f tokens/s, stop: %s]\n"):format(
    info.prompt_tokens, info.prompt_tps, info.tokens, info.gen_tps, info.stop_reason))
end
