-- moonlm.love: a chat that runs in a love.thread, so a LÖVE game keeps drawing while the
-- model thinks. The thread attaches to the model the game loaded (by registry handle: the
-- weights are mapped once per process) and keeps one chat session; pieces of the reply
-- come back over a Channel that the game drains once per frame.
--
--   local npc = require("moonlm.love").chat(model, { system = "You are Pip, a fox.", max_tokens = 80 })
--   npc:ask("Where is the cat?")
--   function love.update(dt)
--     for _, ev in ipairs(npc:poll()) do
--       if ev.piece then bubble = bubble .. ev.piece              -- whole UTF-8 characters
--       elseif ev.done then print(ev.tokens, ev.tps, ev.stop)      -- the reply has ended
--       elseif ev.error then print(ev.error) end
--     end
--   end
--   npc:stop()    -- end the current reply early (what was said stays)
--   npc:close()   -- in love.quit: stops the thread
--
-- Options are model:chat's (system, template, n_ctx, max_tokens, temperature, seed, ...),
-- plain values only (they cross to the thread through a Channel).
local _M = {}

-- The thread: started with (package.path, package.cpath, handle, options, inbox, outbox).
--   inbox  <- "question" | { stop = true } | { quit = true }
--   outbox -> { piece = "text" } ... { done = true, tokens, seconds, tps, stop } | { error = msg }
local THREAD = [==[
local path, cpath, handle, settings, inbox, outbox = ...
package.path, package.cpath = path, cpath
local ok, err = pcall(function()
  local lm = require "moonlm"
  local model = assert(lm.attach(handle))
  local chat = model:chat(settings)
  local queued, quitting = {}, false
  -- messages that arrive while the reply streams: stop ends it, quit ends the thread too,
  -- a question waits for its turn
  local function keep_talking()
    local msg = inbox:pop()
    while msg ~= nil do
      if type(msg) == "string" then queued[#queued + 1] = msg end
      if type(msg) == "table" and msg.quit then quitting = true end
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
      local info = {}
      for piece, i in chat:stream(question, { on_token = keep_talking }) do
        outbox:push { piece = piece }
        info = i
      end
      outbox:push { done = true, tokens = info.tokens or 0, seconds = info.gen_seconds or 0,
                    tps = info.gen_tps or 0, stop = info.stop_reason or "eos" }
    end
  end
  chat:close()
  model:close()
end)
if not ok then outbox:push { error = tostring(err) } end
]==]

local Npc = {}
Npc.__index = Npc

-- chat(model, opts) -> npc: a chat session running in its own love.thread
function _M.chat(model, opts)
  assert(love and love.thread, "moonlm.love needs LÖVE's love.thread module")
  local settings = {}
  for k, v in pairs(opts or {}) do
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" then settings[k] = v end
  end
  local self = setmetatable({ inbox = love.thread.newChannel(), outbox = love.thread.newChannel(),
                              busy = false }, Npc)
  self.thread = love.thread.newThread(THREAD)
  self.thread:start(package.path, package.cpath, model.handle, settings, self.inbox, self.outbox)
  return self
end

-- ask(text): queue a question (answered after the current reply, if any)
function Npc:ask(text)
  assert(type(text) == "string", "ask: a string expected")
  self.busy = true
  self.inbox:push(text)
end

-- poll() -> the events that arrived since the last call (never blocks)
function Npc:poll()
  local events = {}
  while true do
    local msg = self.outbox:pop()
    if msg == nil then break end
    if msg.done or msg.error then self.busy = false end
    events[#events + 1] = msg
  end
  local err = self.thread:getError()
  if err then
    self.busy = false
    events[#events + 1] = { error = err }
  end
  return events
end

-- stop(): end the reply being generated (the text so far stays)
function Npc:stop()
  if self.busy then self.inbox:push { stop = true } end
end

function Npc:close()
  if self.thread and self.thread:isRunning() then
    self.inbox:push { quit = true }
    self.thread:wait()
  end
  self.thread = nil
end

return _M
