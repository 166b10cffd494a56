-- The C self-tests in tools/, built with AddressSanitizer and UndefinedBehaviorSanitizer
-- (make selftest): tools/gguf_check.c runs the GGUF reader and writer through round trips of
-- every value type, every truncation of a file, hostile headers (each with the message it
-- must give), writer and open errors; tools/quant_check.c checks the type table, f16/bf16
-- conversions, the reference quantizers and kernels against ggml's bytes in ../shared/ref,
-- and every matrix llama-quantize wrote into the mini models. Runs once, under Lua 5.4.
if jit then return end
local S = require "support"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

local build = os.getenv("BUILD") or "build"

describe("C self-tests #once", function()
  local rc, out = sh("make --no-print-directory selftest BUILD=" .. build)
  it("build", function() assert.are.equal(0, rc, out) end)

  it("tools/gguf_check --selftest: the GGUF reader and writer", function()
    local dir = S.tmpname("-gguf")
    os.execute("mkdir -p " .. dir)
    local code, log = sh(("%s/selftest/gguf_check --selftest %s"):format(build, dir))
    os.execute("rm -rf " .. dir)
    assert.are.equal(0, code, log)
    assert.truthy(log:find("gguf selftest: ok (0 failures)", 1, true), log)
  end)

  it("tools/quant_check: the block formats against ggml", function()
    local code, log = sh(("%s/selftest/quant_check %s"):format(build, S.path("ref")))
    assert.are.equal(0, code, log)
    assert.truthy(log:find("%d+ checks, 0 failed"), log)
    assert.is_nil(log:find("\nFAIL"), log)
  end)
end)
