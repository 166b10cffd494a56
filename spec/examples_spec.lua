-- The examples, driven as users run them: the terminal chat through a pipe, the demo story.
local S = require "support"

local function run(cmd, input)
  local tmp = S.tmpname(".in")
  local f = io.open(tmp, "wb")
  f:write(input or "")
  f:close()
  local interp = jit and "luajit" or "lua5.4" -- the same ABI as this run (LUA_CPATH is inherited)
  local p = io.popen(("MOONLM_BATCH=1 %s %s < %s 2>&1; echo \"rc=$?\""):format(interp, cmd, tmp))
  local out = p:read("*a")
  p:close()
  os.remove(tmp)
  return out:gsub("rc=(%d+)%s*$", ""), tonumber(out:match("rc=(%d+)%s*$"))
end

local stories = S.path("models/stories260K.gguf")

describe("examples #once", function()
  it("chat.lua: streaming replies, /save, /reset, /load resume the conversation", function()
    local save = S.tmpname(".chat")
    local flags = ("examples/chat.lua --model %s --temperature 0 --max-tokens 16 --template chatml"):format(stories)
    local out, rc = run(flags, ("Hello there\n/save %s\n/reset\n/load %s\nTell me more\n/bogus\n/quit\n"):format(save, save))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("[saved to " .. save .. "]", 1, true), out)
    assert.truthy(out:find("[conversation cleared]", 1, true), out)
    assert.truthy(out:find("[loaded " .. save .. ": 2 messages]", 1, true), out)
    assert.truthy(out:find("[unknown command /bogus]", 1, true), out)
    -- the reply after /load equals the reply of an uninterrupted session
    local straight = run(flags, "Hello there\nTell me more\n/quit\n")
    local function second_reply(text)
      local blocks = {}
      for b in text:gmatch("(.-)%[%d+ new prompt tokens[^\n]*%]\n") do blocks[#blocks + 1] = b end
      return blocks[2] and blocks[2]:gsub("^.*%]\n", "") or nil
    end
    local a, b = second_reply(out), second_reply(straight)
    assert.truthy(a)
    assert.are.equal(b, a)
    -- the resumed turn reused the cache
    local cached = tonumber(out:match(".*%[%d+ new prompt tokens, (%d+) cached"))
    assert.is_true(cached > 0)
    os.remove(save)
  end)

  it("story.lua streams a story, and says how to get a model when there is none", function()
    local out, rc = run("examples/story.lua " .. stories .. " 'Once upon a time'")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("^moonlm") or out:find("\nOnce upon a time"), out)
    assert.truthy(out:find("generated at [%d.]+ tokens/s"), out)
    out, rc = run("examples/story.lua /nonexistent/model.gguf")
    assert.are.equal(1, rc)
    assert.truthy(out:find("No model at /nonexistent/model.gguf", 1, true))
    assert.truthy(out:find("make demo MODEL=", 1, true))
  end)

  it("llama_in_lua.lua writes the C forward pass's story from its Lua forward pass", function()
    local out, rc = run("examples/llama_in_lua.lua " .. stories .. " 'Once upon a time'")
    assert.are.equal(0, rc, out)
    local lua_text, c_text = out:match("Lua forward: (.-)\n  %("), out:match("C forward:   (.-)\n  %(")
    assert.truthy(lua_text and lua_text:find("^Once upon a time"), out)
    assert.are.equal(c_text, lua_text)
    assert.truthy(out:find("\nidentical\n", 1, true), out)
  end)
end)
