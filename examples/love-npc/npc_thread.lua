-- The NPC's mind: a love.thread that runs generation, so the game keeps drawing while the
-- model thinks. It attaches to the model the main state loaded (by registry handle: the
-- weights are mapped once per process) and keeps one chat session, so the NPC remembers
-- the conversation.
--
-- Started as thread:start(package_path, package_cpath, handle, settings, inbox, outbox).
--   inbox  <- "question text" | { stop = true } (ends the reply early) | { quit = true }
--   outbox -> { piece = "text" } ... then { done = true, tokens, seconds, tps, stop }
--             | { error = "message" }
local path, cpath, handle, settings, inbox, outbox = ...
package.path, package.cpath = path, cpath

local ok, err = pcall(function()
  local lm = require "moonlm"
  local model = assert(lm.attach(handle))
  local chat = model:chat {
    system = settings.system,
    n_ctx = settings.n_ctx,
    max_tokens = settings.max_tokens,
    temperature = settings.temperature,
    seed = settings.seed,
  }
  -- Messages that arrive while the NPC talks: a stop ends the reply, a quit ends the
  -- thread, a question waits for its turn.
  local queued, quitting = {}, false
  local function keep_talking()
    local msg = inbox:pop()
    while msg ~= nil do
      if type(msg) == "table" and msg.quit then quitting = true end
      if type(msg) == "string" then queued[#queued + 1] = msg end
      if type(msg) == "table" and (msg.stop or msg.quit) then return false end
      msg = inbox:pop()
    end
    return true
  end
  while not quitting do
    local question = table.remove(queued, 1) or inbox:demand()
    if type(question) == "table" then
      quitting = question.quit or false
    else
      local info
      for piece, i in chat:stream(question, { on_token = keep_talking }) do
        outbox:push { piece = piece }
        info = i
      end
      info = info or {}
      outbox:push { done = true, tokens = info.tokens or 0, seconds = info.gen_seconds or 0,
                    tps = info.gen_tps or 0, stop = info.stop_reason or "eos" }
    end
  end
  chat:close()
  model:close()
end)
if not ok then outbox:push { error = tostring(err) } end
