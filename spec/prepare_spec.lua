-- Cold start: lm.load(path, { prepare = true, progress = fn }) packs the weights during the
-- load and reports it; a cancel (fn returns false) or an error in fn leaves nothing loaded.
-- What it costs is measured by make bench (bench/coldstart.lua), not here.
local lm = require "moonlm"
local S = require "support"

local path = S.path("ref/mini-q4_0.gguf")
local ids = { 1, 403, 407, 261, 378 }

local function logits_of(model)
  local ctx = assert(model:context { n_ctx = 16 })
  local l = assert(ctx:decode(ids)):totable()
  ctx:close()
  return l
end

-- Is a model of this file still registered? Loading it again then returns the same handle.
local function still_loaded(handle)
  local m = assert(lm.load(path, { vocab_only = true }))
  local same = m.handle == handle
  m:close()
  return same
end

describe("lm.load with prepare", function()
  -- Loading a file shares the model of it that is still alive, and a shared model that is
  -- already packed has nothing to report. Other spec files leave models of this file to the
  -- collector (model_spec's mmap = false one, with its context): collect them first, so each
  -- test starts from a model of its own.
  before_each(function()
    collectgarbage()
    collectgarbage()
  end)

  it("packs during the load, reporting bytes done and in all, and decodes as an unprepared model", function()
    local plain = assert(lm.load(path))
    local want = logits_of(plain)
    plain:close()
    local calls = {}
    local m = assert(lm.load(path, { prepare = true, progress = function(done, total)
      calls[#calls + 1] = { done, total }
    end }))
    finally(function() m:close() end)
    assert.are.equal(15, #calls) -- one call per matrix: 2 layers of 7, and the output
    local total = calls[1][2]
    for i, c in ipairs(calls) do
      assert.are.equal(total, c[2])
      assert.is_true(c[1] > 0 and c[1] <= total)
      if i > 1 then assert.is_true(c[1] >= calls[i - 1][1]) end
    end
    assert.are.equal(total, calls[#calls][1])
    -- the matrices: the weights read per token but the norm vectors
    assert.is_true(total <= m.weight_bytes and total > 0.99 * m.weight_bytes)
    -- already prepared: no more calls, the same logits
    local again = 0
    assert.is_number(m:prepare(function() again = again + 1 end))
    assert.are.equal(0, again)
    assert.are.same(want, logits_of(m))
  end)

  it("returning false cancels: nil, the message, and nothing stays loaded", function()
    local seen = 0
    local m, err = lm.load(path, { prepare = true, progress = function()
      seen = seen + 1
      return seen < 3
    end })
    assert.is_nil(m)
    assert.are.equal("preparing the weights was cancelled", err)
    assert.are.equal(3, seen)
    -- a model kept open meanwhile shares the file: it stays usable and unprepared
    local keep = assert(lm.load(path))
    assert.is_nil((lm.load(path, { prepare = true, progress = function() return false end })))
    local want = logits_of(keep)
    local h = keep.handle
    keep:close()
    collectgarbage()
    assert.is_false(still_loaded(h))
    local m2 = assert(lm.load(path, { prepare = true }))
    assert.are.same(want, logits_of(m2))
    m2:close()
  end)

  it("an error in the callback is raised from load, and nothing stays loaded", function()
    local keep = assert(lm.load(path))
    local h = keep.handle
    assert.has_error(function()
      lm.load(path, { prepare = true, progress = function(done) error("stop at " .. done, 0) end })
    end)
    keep:close()
    collectgarbage()
    assert.is_false(still_loaded(h))
  end)

  it("the model cannot be used from inside its own progress callback", function()
    local m = assert(lm.load(path))
    local ctx = assert(m:context { n_ctx = 16 })
    local got, err
    assert.is_number(m:prepare(function() got, err = ctx:decode({ 1 }) end))
    assert.is_nil(got)
    assert.are.equal("the model's weights are being prepared (a use from inside the progress callback?)", err)
    assert(ctx:decode({ 1 }))
    ctx:close()
    m:close()
  end)

  it("checks its options", function()
    assert.has_error(function() lm.load(path, { progress = function() end }) end,
      "bad argument #2 to 'load' (option 'progress' reports the packing of option 'prepare', which is not set)")
    assert.has_error(function() lm.load(path, { prepare = true, progress = 3 }) end,
      "bad argument #2 to 'load' (option 'progress' must be a function, got number)")
  end)
end)
