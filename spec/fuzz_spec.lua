-- The libFuzzer harnesses of the parsers of untrusted bytes (GGUF files, tokenizer input),
-- built with AddressSanitizer and UndefinedBehaviorSanitizer, run briefly on every test run
-- (a smoke run of 6-10 s each keeps make test under 10 minutes on 2 cores; campaigns: make fuzz,
-- make fuzz-template, make fuzz-loader, FUZZ_SECONDS=...). Runs once, under Lua 5.4.
if jit then return end
local S = require "support"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

local build = os.getenv("BUILD") or "build"

describe("fuzzing #once", function()
  local rc, out = sh("make --no-print-directory fuzz BUILD=" .. build)
  it("the harnesses build", function() assert.are.equal(0, rc, out) end)

  local function fuzz(name, seconds, seeds)
    local corpus = S.tmpname("-corpus")
    os.execute("mkdir -p " .. corpus)
    local cmd = ("MOONLM_SHARED=%s %s/fuzz/%s -max_total_time=%d -rss_limit_mb=2048 -malloc_limit_mb=1024 "
                 .. "-max_len=16384 -print_final_stats=1 %s %s"):format(S.shared, build, name, seconds, corpus, seeds)
    local code, log = sh(cmd)
    os.execute("rm -rf " .. corpus)
    return code, log
  end

  it("GGUF reader: 10 seconds, no crash, leak or timeout", function()
    local code, log = fuzz("gguf", 10, "fuzz/seeds/gguf " .. S.path("tokenizer"))
    assert.are.equal(0, code, log:sub(-3000))
    local runs = tonumber(log:match("Done (%d+) runs"))
    assert.truthy(runs, log:sub(-2000))
    assert.is_true(runs > 1000)
  end)

  it("JSON Schema compiler: 6 seconds, no crash, leak or timeout", function()
    local code, log = fuzz("schema", 6, "fuzz/seeds/schema")
    assert.are.equal(0, code, log:sub(-3000))
    assert.truthy(log:match("Done (%d+) runs"), log:sub(-2000))
  end)

  it("grammar engine (GBNF, regex, masks): 8 seconds, no crash, leak or timeout", function()
    local code, log = fuzz("grammar", 8, "fuzz/seeds/grammar")
    assert.are.equal(0, code, log:sub(-3000))
    assert.truthy(log:match("Done (%d+) runs"), log:sub(-2000))
  end)

  it("template renderer: 6 seconds of random and mutated templates, nothing raises, no internal error, no runaway", function()
    local code, log = sh(("MOONLM_SHARED=%s lua5.4 fuzz/template.lua 6"):format(S.shared))
    assert.are.equal(0, code, log:sub(-3000))
    local cases, failures = log:match("(%d+) cases, (%d+) failures")
    assert.truthy(cases, log:sub(-2000))
    assert.are.equal("0", failures)
    assert.is_true(tonumber(cases) > 100, log:sub(-2000))
  end)

  it("model loader: 8 seconds of mutated model files through lm.load and generation, nothing raises", function()
    local out = S.tmpname("-loader")
    local code, log = sh(("MOONLM_SHARED=%s LUA_CPATH='%s/5.4/?.so;;' lua5.4 fuzz/loader.lua 8 1 %s"):format(S.shared,
      build, out))
    os.execute("rm -rf " .. out)
    assert.are.equal(0, code, log:sub(-3000))
    local cases, failures = log:match("(%d+) cases, (%d+) failures %(%d+ loaded")
    assert.truthy(cases, log:sub(-2000))
    assert.are.equal("0", failures)
    assert.is_true(tonumber(cases) > 0, log:sub(-2000))
  end)

  it("tokenizers: 8 seconds, no crash, leak or timeout", function()
    local code, log = fuzz("tokenizer", 8, "fuzz/seeds/tokenizer")
    assert.are.equal(0, code, log:sub(-3000))
    assert.truthy(log:match("Done (%d+) runs"), log:sub(-2000))
  end)
end)
