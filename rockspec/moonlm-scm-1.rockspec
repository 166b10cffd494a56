rockspec_format = "3.0"
package = "moonlm"
version = "scm-1"
source = {
  url = "git+https://example.invalid/moonlm.git",
}
description = {
  summary = "Large language models on the CPU, from Lua",
  detailed = [[
moonlm runs GGUF language models (llama, qwen2, qwen3 families) on the CPU with
AVX2 / AVX-512 / AMX kernels chosen at run time, and gives Lua a tensor library,
tokenizers, sampling, chat templates and streaming generation.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
}
external_dependencies = {
  OPENBLAS = { library = "openblas" },
}
build = {
  type = "make",
  makefile = "Makefile",
  build_target = "rock",
  build_variables = {
    ROCK_LUA_INC = "$(LUA_INCDIR)",
    ROCK_CFLAGS = "$(CFLAGS)",
  },
  install_target = "rock-install",
  install_variables = {
    ROCK_LUA_INC = "$(LUA_INCDIR)",
    ROCK_LIBDIR = "$(LIBDIR)",
    ROCK_LUADIR = "$(LUADIR)",
  },
}
