-- An NPC that talks: type to Pip, and the reply streams into a speech bubble while the game
-- keeps drawing. Generation runs in a love.thread (moonlm.love); pieces of the reply come
-- back over a Channel. See README.md for how the game finds moonlm.
--
--   love examples/love-npc [--model file.gguf] [--threads n] [--temperature t] [--seed n]
--                          [--max-tokens n] [--n-ctx n] [--cps chars_per_second] [--system text]
-- Scripted mode (what spec/love_spec.lua runs under xvfb-run):
--   love examples/love-npc --question "Where is the cat?" --screenshot out.png --log out.log
--                          --quit-after-reply [--timeout seconds]
local W, H = 800, 600
local FPS_CAP = 60 -- the render loop sleeps the rest of each frame, leaving the CPU to the NPC

---------------------------------------------------------------------------------------
-- Finding moonlm (README.md): $MOONLM_ROOT, else the repository this example sits in
-- (../..): its lua/ and build/5.1/ (LÖVE embeds LuaJIT, the 5.1 ABI) go in front of the
-- search paths. Else a copy inside the game directory (moonlm/*.lua, moonlm/core.so). Else
-- require finds an installed moonlm (luarocks --lua-version=5.1) or fails.
-- The paths are set explicitly, not left to LÖVE's loaders, because the generation thread
-- gets them too (a love.thread starts with the default package.path).
---------------------------------------------------------------------------------------
local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function add_moonlm_paths()
  local src = love.filesystem.getSource()
  local env = os.getenv("MOONLM_ROOT")
  for _, root in ipairs { env ~= "" and env or false, src .. "/../.." } do
    if root and exists(root .. "/build/5.1/moonlm/core.so") then
      package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
      package.cpath = root .. "/build/5.1/?.so;" .. package.cpath
      return root
    end
  end
  if exists(src .. "/moonlm/core.so") then
    package.path = src .. "/?.lua;" .. src .. "/?/init.lua;" .. package.path
    package.cpath = src .. "/?.so;" .. package.cpath
    return src
  end
  return nil
end

---------------------------------------------------------------------------------------
-- Options
---------------------------------------------------------------------------------------
local function parse_args(args)
  local o = {
    model = nil, threads = 1, temperature = 0.8, seed = 7, max_tokens = 80, n_ctx = 2048, cps = 45,
    system = "You are Pip, a friendly fox who lives in the forest. You answer in short stories.",
  }
  local numeric = { threads = true, temperature = true, seed = true, ["max-tokens"] = true, ["n-ctx"] = true,
                    cps = true, timeout = true }
  local i = 1
  while i <= #args do
    local name = args[i]:match("^%-%-(.+)$")
    if name == "quit-after-reply" then
      o.quit_after_reply = true
    elseif name then
      local v = args[i + 1]
      if v == nil then error("option --" .. name .. " needs a value") end
      if numeric[name] then v = assert(tonumber(v), "option --" .. name .. " needs a number") end
      o[name:gsub("%-", "_")] = v
      i = i + 1
    end
    i = i + 1
  end
  return o
end

---------------------------------------------------------------------------------------
-- State
---------------------------------------------------------------------------------------
local opts, log, json, lm, model
local mind -- moonlm.love's chat in a love.thread
local font, small
local npc = {
  state = "loading", -- loading | idle | thinking | talking | error
  heard = "",        -- reply text received so far
  shown = 0,         -- characters of it revealed in the bubble (the NPC "speaks" at opts.cps)
  generating = false,
  message = "",
}
local input = ""
local last_question = ""
local frames = { count = 0, t0 = 0, fps = 0 }
local gen = { frames = 0, worst = 0, t0 = 0 } -- frames drawn while the thread generates
local calm = { worst = 0 }                     -- the slowest frame before the first question
local talk = { min_fps = math.huge }       -- per-second fps while the NPC thinks or talks
local script = { asked = false, shot = false, started = 0 }

local function logf(fmt, ...)
  local line = fmt:format(...)
  if log then
    log:write(line, "\n")
    log:flush()
  end
  print(line)
end

local function ask(text)
  if text == "" or npc.state ~= "idle" then return end
  last_question = text
  npc.heard, npc.shown, npc.state, npc.generating = "", 0, "thinking", true
  gen.frames, gen.worst, gen.t0 = 0, 0, love.timer.getTime()
  mind:ask(text)
  logf("question %s", json.encode(text))
end

function love.load(args)
  opts = parse_args(args)
  love.keyboard.setKeyRepeat(true)
  font = love.graphics.newFont(17)
  small = love.graphics.newFont(13)
  if opts.log then log = assert(io.open(opts.log, "w")) end
  script.started = love.timer.getTime()

  local root = add_moonlm_paths()
  local ok, mod = pcall(require, "moonlm")
  if not ok then
    npc.state, npc.message = "error", "moonlm not found: " .. tostring(mod)
    logf("error %s", npc.message)
    return
  end
  lm, json = mod, require "moonlm.json"
  opts.model = opts.model or ((root or ".") .. "/../shared/models/stories260K.gguf")
  local err
  model, err = lm.load(opts.model, { threads = opts.threads })
  if not model then
    npc.state, npc.message = "error", err
    logf("error %s", err)
    return
  end
  logf("moonlm %s isa %s model %s threads %d", lm._VERSION, lm.isa(), opts.model, lm.threads())
  local settings = { system = opts.system, temperature = opts.temperature, seed = opts.seed,
                     max_tokens = opts.max_tokens, n_ctx = opts.n_ctx }
  logf("settings %s", json.encode(settings, { compact = true }))
  mind = require("moonlm.love").chat(model, settings)
  npc.state = "idle"
end

---------------------------------------------------------------------------------------
-- Update: drain the channel, reveal text, count frames, drive the scripted mode
---------------------------------------------------------------------------------------
local function receive()
  for _, msg in ipairs(mind and mind:poll() or {}) do
    if msg.piece then
      npc.heard = npc.heard .. msg.piece
      npc.state = "talking"
    elseif msg.done then
      npc.generating = false
      if npc.state == "thinking" then npc.state = "talking" end
      npc.last = msg
      logf("reply %s", json.encode(npc.heard))
      -- the frames the game drew while the thread worked, from the question to the last piece
      local window = love.timer.getTime() - gen.t0
      logf("generation tokens %d seconds %.3f tps %.0f stop %s", msg.tokens, msg.seconds, msg.tps, msg.stop)
      logf("frames_while_generating %d window_s %.3f fps %.1f worst_frame_ms %.1f", gen.frames, window,
           gen.frames / window, gen.worst * 1000)
    elseif msg.error then
      npc.state, npc.message, npc.generating = "error", msg.error, false
      logf("error %s", msg.error)
    end
  end
end

local function utf8_chars(s)
  return (select(2, s:gsub("[^\128-\191]", "")))
end

-- the first n characters of s
local function utf8_prefix(s, n)
  local count = 0
  for pos in s:gmatch("()[^\128-\191]") do
    count = count + 1
    if count > n then return s:sub(1, pos - 1) end
  end
  return s
end

function love.update(dt)
  if npc.generating then
    gen.frames = gen.frames + 1
    if dt > gen.worst then gen.worst = dt end
  elseif not script.asked and frames.t0 > 0 and dt > calm.worst then
    calm.worst = dt
  end
  receive()
  if npc.state == "talking" then
    local total = utf8_chars(npc.heard)
    npc.shown = opts.cps > 0 and math.min(total, npc.shown + opts.cps * dt) or total
    if not npc.generating and npc.shown >= total then npc.state = "idle" end
  end

  -- frame rate, logged once a second
  frames.count = frames.count + 1
  local now = love.timer.getTime()
  if now - frames.t0 >= 1 then
    frames.fps = frames.count / (now - frames.t0)
    if frames.t0 > 0 then
      logf("fps %.1f %s", frames.fps, npc.state)
      if npc.state == "thinking" or npc.state == "talking" then talk.min_fps = math.min(talk.min_fps, frames.fps) end
    end
    frames.count, frames.t0 = 0, now
  end

  -- scripted mode: ask once the game has been drawing for two seconds (the idle frame rate,
  -- logged each second, is what the frame rate while the NPC talks is compared with)
  if opts.question and npc.state == "idle" and not script.asked and now - script.started > 2.2 then
    script.asked = true
    logf("idle worst_frame_ms %.1f", calm.worst * 1000)
    ask(opts.question)
  end
  if script.asked and npc.state == "idle" and not script.shot and opts.screenshot then
    script.shot = true
    love.graphics.captureScreenshot(function(img)
      local f = assert(io.open(opts.screenshot, "wb"))
      f:write(img:encode("png"):getString())
      f:close()
      logf("screenshot %s %dx%d", opts.screenshot, img:getWidth(), img:getHeight())
      if talk.min_fps < math.huge then logf("talking min_fps %.1f", talk.min_fps) end
      if opts.quit_after_reply then love.event.quit(0) end
    end)
  elseif script.asked and npc.state == "idle" and opts.quit_after_reply and not opts.screenshot then
    love.event.quit(0)
  end
  if (npc.state == "error" and opts.quit_after_reply) or (opts.timeout and now - script.started > opts.timeout) then
    logf("quit %s", npc.state == "error" and "error" or "timeout")
    love.event.quit(1)
  end

  -- cap the frame rate: sleep what is left of this frame
  local spare = 1 / FPS_CAP - (love.timer.getTime() - (frames.last or now))
  if spare > 0 then love.timer.sleep(spare) end
  frames.last = love.timer.getTime()
end

---------------------------------------------------------------------------------------
-- Input
---------------------------------------------------------------------------------------
function love.textinput(t)
  if npc.state ~= "error" then input = input .. t end
end

function love.keypressed(key)
  if key == "escape" then
    love.event.quit()
  elseif key == "backspace" then
    input = input:gsub("[^\128-\191][\128-\191]*$", "")
  elseif key == "return" or key == "kpenter" then
    if npc.state == "idle" then
      ask(input)
      input = ""
    elseif npc.state == "talking" or npc.state == "thinking" then
      -- Enter while Pip talks: "hush" (ends the reply, shows what was said)
      if npc.generating then mind:stop() end
      npc.shown = math.huge
    end
  end
end

function love.quit()
  if mind then mind:close() end
  if model then model:close() end
  if log then log:close() end
end

function love.threaderror(_, err)
  npc.state, npc.message, npc.generating = "error", err, false
  logf("error %s", err)
end

---------------------------------------------------------------------------------------
-- Drawing
---------------------------------------------------------------------------------------
local function draw_scene(t)
  local g = love.graphics
  g.clear(0.56, 0.79, 0.95)
  g.setColor(1, 0.93, 0.55)
  g.circle("fill", 90, 80, 40)
  g.setColor(0.36, 0.66, 0.33)
  g.rectangle("fill", 0, 430, W, H - 430)
  g.setColor(0.80, 0.70, 0.50)
  g.polygon("fill", 330, 600, 470, 600, 420, 430, 380, 430)
  -- a tree
  g.setColor(0.45, 0.30, 0.16)
  g.rectangle("fill", 80, 300, 30, 140)
  g.setColor(0.20, 0.50, 0.22)
  g.circle("fill", 95, 280, 60)
  g.circle("fill", 55, 320, 40)
  g.circle("fill", 135, 320, 40)
end

-- Pip the fox: an orange body, ears, a white muzzle, eyes that blink, a mouth that moves
-- while text is being revealed.
local function draw_npc(x, y, t)
  local g = love.graphics
  g.setColor(0.93, 0.50, 0.18)
  g.rectangle("fill", x - 45, y, 90, 110, 30, 30)           -- body
  g.polygon("fill", x + 40, y + 80, x + 110, y + 60, x + 45, y + 105) -- tail
  g.setColor(1, 1, 1)
  g.polygon("fill", x + 100, y + 62, x + 110, y + 60, x + 104, y + 72)
  g.setColor(0.93, 0.50, 0.18)
  g.circle("fill", x, y - 20, 50)                           -- head
  g.polygon("fill", x - 45, y - 45, x - 35, y - 95, x - 10, y - 62) -- ears
  g.polygon("fill", x + 45, y - 45, x + 35, y - 95, x + 10, y - 62)
  g.setColor(1, 0.96, 0.90)
  g.ellipse("fill", x, y, 28, 20)                           -- muzzle
  g.rectangle("fill", x - 22, y + 25, 44, 60, 18, 18)       -- chest
  g.setColor(0.1, 0.1, 0.1)
  local blink = (t % 4) < 0.12
  if blink then
    g.rectangle("fill", x - 24, y - 30, 14, 3)
    g.rectangle("fill", x + 10, y - 30, 14, 3)
  else
    g.circle("fill", x - 17, y - 30, 7)
    g.circle("fill", x + 17, y - 30, 7)
  end
  g.circle("fill", x, y - 8, 6)                             -- nose
  local open = npc.state == "talking" and 2 + 6 * math.abs(math.sin(t * 14)) or 1.5
  g.ellipse("fill", x, y + 8, 9, open)                      -- mouth
  if npc.state == "thinking" then                           -- "..." above the head
    for k = 1, 3 do
      local a = 0.3 + 0.7 * math.max(0, math.sin(t * 5 - k))
      g.setColor(1, 1, 1, a)
      g.circle("fill", x + 40 + k * 16, y - 90, 6)
    end
  end
end

-- The speech bubble: the revealed part of the reply, wrapped, showing the last lines that fit.
local function draw_bubble(px, py)
  local g = love.graphics
  local text = utf8_prefix(npc.heard, math.floor(npc.shown))
  if text == "" and npc.state ~= "talking" then return end
  local bw, max_lines = 460, 9
  local _, lines = font:getWrap(text, bw - 30)
  if #lines > max_lines then
    local keep = {}
    for i = #lines - max_lines + 1, #lines do keep[#keep + 1] = lines[i] end
    lines = keep
  end
  local lh = font:getHeight()
  local bh = math.max(1, #lines) * lh + 24
  local bx, by = px - bw + 60, py - 120 - bh
  local tail = { px - 75, by + bh, px - 45, by + bh, px - 58, py - 80 } -- points at Pip's head
  g.setColor(1, 1, 1)
  g.rectangle("fill", bx, by, bw, bh, 14, 14)
  g.setColor(0.25, 0.25, 0.3)
  g.setLineWidth(2)
  g.rectangle("line", bx, by, bw, bh, 14, 14)
  g.setColor(1, 1, 1)
  g.polygon("fill", tail[1], tail[2] - 2, tail[3], tail[4] - 2, tail[5], tail[6])
  g.setColor(0.25, 0.25, 0.3)
  g.line(tail[1], tail[2], tail[5], tail[6], tail[3], tail[4])
  g.setColor(0.12, 0.12, 0.16)
  g.setFont(font)
  for i, line in ipairs(lines) do g.print(line, bx + 15, by + 12 + (i - 1) * lh) end
end

local function draw_hud(t)
  local g = love.graphics
  g.setFont(small)
  g.setColor(0, 0, 0, 0.45)
  g.rectangle("fill", 8, 8, 250, 40, 6, 6)
  g.setColor(1, 1, 1)
  g.print(("fps %.0f   %s"):format(frames.fps, npc.state), 16, 12)
  local last = npc.last
  g.print(last and ("last reply: %d tokens, %.0f tokens/s"):format(last.tokens, last.tps) or "Pip is listening", 16, 28)
  -- the input line
  g.setColor(0, 0, 0, 0.6)
  g.rectangle("fill", 20, 548, W - 40, 36, 8, 8)
  g.setFont(font)
  if npc.state == "error" then
    g.setColor(1, 0.6, 0.6)
    g.printf(npc.message, 32, 556, W - 64)
    return
  end
  if last_question ~= "" then
    g.setColor(0, 0, 0, 0.45)
    g.rectangle("fill", 20, 508, math.min(W - 40, font:getWidth("You: " .. last_question) + 24), 32, 8, 8)
    g.setColor(1, 1, 1)
    g.print("You: " .. last_question, 32, 514)
  end
  local cursor = (t % 1 < 0.5) and "_" or ""
  if input == "" and npc.state == "idle" then
    g.setColor(0.8, 0.8, 0.8)
    g.print("Type to talk to Pip, then press Enter" .. cursor, 32, 556)
  else
    g.setColor(1, 1, 1)
    g.print("> " .. input .. cursor, 32, 556)
  end
end

function love.draw()
  local t = love.timer.getTime()
  draw_scene(t)
  draw_npc(600, 360, t)
  draw_bubble(600, 360)
  draw_hud(t)
end
