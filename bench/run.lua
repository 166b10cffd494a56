-- make bench: every benchmark in turn, each in its own process. Each prints a markdown table
-- with its ratios.
local lm = require "moonlm"
local info = lm.info()
io.write(("# moonlm benchmarks\n\nmachine: %s, %d threads available, kernel level %s, %s\n\n"):format(
  info.cpu, info.max_threads, info.isa, os.date("!%Y-%m-%d %H:%M UTC")))
local only = os.getenv("BENCH")
-- board (the peers on many files, tens of minutes), coldstart, speculative and chat_shift run
-- only when named
local on_request = { board = true, coldstart = true, speculative = true, chat_shift = true }
for _, name in ipairs{"matmul_f32", "matmul", "attention", "tokenizer", "e2e", "arch", "sampling", "recsys", "grammar",
                      "jsonschema", "grammar_cost", "lua_model", "schema_generation", "board", "coldstart",
                      "speculative", "chat_shift"} do
  if (not only and not on_request[name]) or only == name then
    local path = "bench/" .. name .. ".lua"
    local f = io.open(path)
    if f then
      f:close()
      -- each in a process of its own: memory figures (peak RSS) must not carry what the
      -- benchmarks before it allocated
      io.stdout:flush()
      local ok = os.execute(("%s %s"):format(arg[-1] or "lua5.4", path))
      if not ok then io.write(("(%s failed)\n"):format(path)) end
      io.write("\n")
    end
  end
end
