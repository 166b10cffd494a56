-- LÖVE settings for the talking NPC: a fixed 800x600 window, no audio (the game is silent
-- and headless machines have no sound card).
function love.conf(t)
  t.identity = "moonlm-love-npc"
  t.version = "11.4"
  t.window.title = "moonlm: talk to Pip"
  t.window.width = 800
  t.window.height = 600
  t.window.vsync = 1
  t.modules.audio = false
  t.modules.sound = false
  t.modules.joystick = false
  t.modules.physics = false
  t.modules.video = false
end
