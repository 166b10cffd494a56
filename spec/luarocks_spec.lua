-- `luarocks make` installs the module for Lua 5.4 and for LuaJIT (5.1 ABI) into a temporary
-- tree, and the installed module loads and works from there.
local S = require "support"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out
end

describe("luarocks make #once", function()
  local cases = {
    {"5.4", "lua5.4", ""},
    {"5.1", "luajit", "LUA_INCDIR=/usr/include/luajit-2.1"},
  }
  for _, c in ipairs(cases) do
    it("installs and loads under Lua " .. c[1], function()
      local tree = S.tmpname("-rocks")
      local rc, out = sh(("luarocks --lua-version=%s --tree %s make rockspec/moonlm-scm-1.rockspec %s"):format(c[1], tree, c[3]))
      assert.are.equal(0, rc, out)
      -- every variable luarocks offers reaches make (its CFLAGS: no "variable CFLAGS was not
      -- passed in build_variables" warning), and nothing cancels the --no-undefined check
      assert.falsy(out:find("was not passed", 1, true), out)
      assert.falsy(out:find("unresolved-symbols", 1, true), out)
      local script = [[
        local lm = require "moonlm"
        local src = package.searchpath and package.searchpath("moonlm.core", package.cpath) or "?"
        local y = lm.tensor{{1, 2}, {3, 4}}:matmul(lm.tensor{1, 1})
        assert(package.searchpath("moonlm.resty.scheduler", package.path), "subfolder modules installed")
        io.write(src, " ", y[1], " ", y[2])
      ]]
      local cmd = ("eval \"$(luarocks --lua-version=%s --tree %s path)\" && %s -e %q"):format(c[1], tree, c[2], script)
      rc, out = sh(cmd)
      assert.are.equal(0, rc, out)
      assert.truthy(out:find(tree, 1, true), out) -- loaded from the installed tree, not build/
      assert.truthy(out:find(" 3%.?0? 7"), out)
      sh("rm -rf " .. tree)
    end)
  end
end)
