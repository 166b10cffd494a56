-- A terminal chat with streaming replies.
--   lua5.4 examples/chat.lua --model model.gguf [--system TEXT] [--template NAME]
--          [--temperature 0.8] [--top-p 0.95] [--max-tokens 256] [--seed N] [--n-ctx N]
-- Commands: /reset  /save FILE  /load FILE  /system TEXT  /quit   (anything else is a message)
local lm = require "moonlm"

local opts = { model = "../shared/models/stories260K.gguf", max_tokens = 256, temperature = 0.8, top_p = 0.95 }
local names = { ["--model"] = "model", ["--system"] = "system", ["--template"] = "template",
                ["--temperature"] = "temperature", ["--top-p"] = "top_p", ["--max-tokens"] = "max_tokens",
                ["--seed"] = "seed", ["--n-ctx"] = "n_ctx", ["--threads"] = "threads" }
local numeric = { temperature = true, top_p = true, max_tokens = true, seed = true, n_ctx = true, threads = true }
local i = 1
while i <= #arg do
  local key = names[arg[i]]
  if not key or not arg[i + 1] then
    io.stderr:write("unknown or incomplete option: ", tostring(arg[i]), "\n")
    os.exit(2)
  end
  local v = arg[i + 1]
  opts[key] = numeric[key] and assert(tonumber(v), arg[i] .. " needs a number") or v
  i = i + 2
end

local model, err = lm.load(opts.model, { threads = opts.threads })
if not model then
  io.stderr:write(err, "\n")
  os.exit(1)
end
local function new_chat()
  return model:chat { system = opts.system, template = opts.template, n_ctx = opts.n_ctx, max_tokens = opts.max_tokens,
                      temperature = opts.temperature, top_p = opts.top_p, seed = opts.seed }
end
local chat = new_chat()
local interactive = os.getenv("TERM") and io.stdin and not os.getenv("MOONLM_BATCH")

io.write(("moonlm chat: %s (%s). /reset /save FILE /load FILE /system TEXT /quit\n"):format(
  model.meta["general.name"] or opts.model, lm.isa()))
while true do
  if interactive then io.write("> ") io.flush() end
  local line = io.read("*l")
  if not line or line == "/quit" then break end
  local cmd, rest = line:match("^/(%w+)%s*(.-)%s*$")
  if cmd == "reset" then
    chat:reset()
    print("[conversation cleared]")
  elseif cmd == "save" then
    local ok, e = chat:save(rest)
    print(ok and ("[saved to " .. rest .. "]") or ("[save failed: " .. tostring(e) .. "]"))
  elseif cmd == "load" then
    local c, e = lm.chat_load(model, rest)
    if c then
      chat:close()
      chat = c
      print(("[loaded %s: %d messages]"):format(rest, #chat.history))
    else
      print("[load failed: " .. tostring(e) .. "]")
    end
  elseif cmd == "system" then
    chat:reset(rest)
    opts.system = rest
    print("[system prompt set]")
  elseif cmd then
    print("[unknown command /" .. cmd .. "]")
  elseif line ~= "" then
    local info
    for piece, inf in chat:stream(line) do
      io.write(piece)
      io.flush()
      info = inf
    end
    io.write("\n")
    if info then
      io.write(("[%d new prompt tokens, %d cached, %d generated at %.1f tokens/s%s]\n"):format(
        info.prompt_tokens, info.cached_tokens or 0, info.tokens, info.gen_tps, info.truncated and ", old turns dropped" or ""))
    end
  end
end
