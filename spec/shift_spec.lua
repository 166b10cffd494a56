-- Context shift (ctx:shift): dropping positions from the middle of a sequence and rotating
-- the later keys with RoPE instead of decoding them again. The reference is computed here,
-- independently of the C code: the saved state of an f32 cache, with the dropped rows cut
-- out and the later keys rotated in Lua (double precision), loaded into a second context.
local lm = require "moonlm"
local S = require "support"

local stories = S.path("models/stories260K.gguf")

-- float32 <-> bytes and little-endian int64 in both interpreters
local unpack_f32, pack_f32, read_i64, write_i64
if string.unpack then
  unpack_f32 = function(s, at, n)
    local t = {}
    for i = 1, n do t[i] = string.unpack("<f", s, at + 4 * (i - 1)) end
    return t
  end
  pack_f32 = function(t)
    local parts = {}
    for i = 1, #t do parts[i] = string.pack("<f", t[i]) end
    return table.concat(parts)
  end
  read_i64 = function(s, at) return (string.unpack("<i8", s, at)) end
  write_i64 = function(v) return string.pack("<i8", v) end
else
  local ffi = require "ffi"
  unpack_f32 = function(s, at, n)
    local buf = ffi.new("float[?]", n)
    ffi.copy(buf, s:sub(at, at + 4 * n - 1), 4 * n)
    local t = {}
    for i = 1, n do t[i] = buf[i - 1] end
    return t
  end
  pack_f32 = function(t)
    local buf = ffi.new("float[?]", #t)
    for i = 1, #t do buf[i - 1] = t[i] end
    return ffi.string(buf, 4 * #t)
  end
  read_i64 = function(s, at)
    local v = ffi.new("int64_t[1]")
    ffi.copy(v, s:sub(at, at + 7), 8)
    return tonumber(v[0])
  end
  write_i64 = function(v)
    local b = ffi.new("int64_t[1]", v)
    return ffi.string(b, 8)
  end
end

-- The state of an f32 cache (context.c: a 48-byte header {magic, type, n_layer,
-- n_layer_swa, row, len, off}, then per layer the K and V rows of every position) with
-- positions [keep, keep + d) cut out and the keys after them rotated by -d.
local function shifted_state(state, model, keep, d)
  local n_layer, row, len = read_i64(state, 9), read_i64(state, 25), read_i64(state, 33)
  local hd = model.n_embd / model.n_head
  local n_rot = model.meta["llama.rope.dimension_count"] or hd
  local base = model.meta["llama.rope.freq_base"] or 10000
  local out, at = {}, 49
  for _ = 1, n_layer do
    for p = 0, len - 1 do
      local k = unpack_f32(state, at, row)
      local v = unpack_f32(state, at + 4 * row, row)
      at = at + 8 * row
      if p < keep or p >= keep + d then
        if p >= keep + d then
          for h = 0, row / hd - 1 do
            for i = 0, n_rot / 2 - 1 do -- adjacent pairs ("normal" RoPE)
              local th = -d * base ^ (-2 * i / n_rot)
              local a, b = k[h * hd + 2 * i + 1], k[h * hd + 2 * i + 2]
              k[h * hd + 2 * i + 1] = a * math.cos(th) - b * math.sin(th)
              k[h * hd + 2 * i + 2] = a * math.sin(th) + b * math.cos(th)
            end
          end
        end
        out[#out + 1] = pack_f32(k)
        out[#out + 1] = pack_f32(v)
      end
    end
  end
  return state:sub(1, 32) .. write_i64(len - d) .. write_i64(len - d) .. table.concat(out)
end

local function greedy(ctx, logits, n, seq)
  local ids = {}
  for i = 1, n do
    ids[i] = logits:argmax() - 1
    logits = assert(ctx:decode({ ids[i] }, { seq = seq or 0 }))
  end
  return ids, logits
end

describe("context shift", function()
  local model = assert(lm.load(stories))
  local prompt = model:tokenize("Once upon a time there was a little girl named Lily. She loved to play outside", { bos = true })

  it("matches the reference: cached rows cut out, later keys rotated", function()
    for _, case in ipairs { { 1, 7 }, { 4, 10 }, { 0, 1 }, { 1, #prompt - 2 } } do
      local keep, d = case[1], case[2]
      local a = assert(model:context { n_ctx = 128, kv_type = "f32" })
      assert(a:decode(prompt))
      local want_state = shifted_state(a:state_save(0), model, keep, d)
      assert.is_true(a:shift(0, keep, d))
      assert.are.equal(#prompt - d, a:pos(0))
      local b = assert(model:context { n_ctx = 128, kv_type = "f32" })
      assert(b:state_load(0, want_state))
      local la, lb = assert(a:decode({ 262 })), assert(b:decode({ 262 }))
      local diff = S.maxdiff(la:totable(), lb:totable())
      assert.is_true(diff < 1e-4, ("keep %d, discard %d: logits differ by %g"):format(keep, d, diff))
      local ga, gb = greedy(a, la, 30), greedy(b, lb, 30)
      assert.same(gb, ga)
    end
  end)

  it("shifts the keys exactly: a shifted cache equals one decoded at the new positions, in layer 0's keys", function()
    -- the first layer's keys depend only on the token and its position, so shifting the
    -- cache must give the keys a fresh decode of the remaining tokens computes
    local a = assert(model:context { n_ctx = 128, kv_type = "f32" })
    assert(a:decode(prompt))
    assert(a:shift(0, 1, 5))
    local rest = { prompt[1] }
    for i = 7, #prompt do rest[#rest + 1] = prompt[i] end
    local b = assert(model:context { n_ctx = 128, kv_type = "f32" })
    assert(b:decode(rest))
    local sa, sb = a:state_save(0), b:state_save(0)
    local row = read_i64(sa, 25)
    local ka = unpack_f32(sa, 49, 2 * row * #rest) -- layer 0: K and V rows of every position
    local kb = unpack_f32(sb, 49, 2 * row * #rest)
    local worst = 0
    for p = 0, #rest - 1 do
      for i = 1, row do worst = math.max(worst, math.abs(ka[2 * row * p + i] - kb[2 * row * p + i])) end
    end
    assert.is_true(worst < 1e-5, "layer 0 keys differ by " .. worst)
  end)

  it("f16 and q8_0 caches shift like f32 within their rounding", function()
    local mini = assert(lm.load(S.path("ref/mini-f32.gguf")))
    local ids = {}
    for i = 1, 60 do ids[i] = 3 + (i * 37) % 500 end
    local function after_shift(kv)
      local c = assert(mini:context { n_ctx = 64, kv_type = kv })
      assert(c:decode(ids))
      assert(c:shift(0, 1, 20))
      return assert(c:decode({ 7 })):totable()
    end
    local want = after_shift("f32")
    assert.is_true(S.maxdiff(after_shift("f16"), want) < 0.01)
    assert.is_true(S.maxdiff(after_shift("q8_0"), want) < 0.03)
  end)

  it("leaves other sequences that share the cells as they were", function()
    local c = assert(model:context { n_ctx = 128, kv_type = "f32", seqs = 2 })
    assert(c:decode(prompt))
    c:copy(0, 1)
    assert(c:shift(0, 1, 6))
    -- sequence 1 still reads the whole prompt at the old positions
    local solo = assert(model:context { n_ctx = 128, kv_type = "f32" })
    local want = assert(solo:decode(prompt)):totable()
    assert(c:truncate(1, #prompt - 1))
    local got = assert(c:decode({ prompt[#prompt] }, { seq = 1 })):totable()
    assert.is_true(S.maxdiff(got, want) < 1e-5)
    -- and sequence 0 is the shifted one
    local alone = assert(model:context { n_ctx = 128, kv_type = "f32" })
    assert(alone:decode(prompt))
    assert(alone:shift(0, 1, 6))
    assert.is_true(S.maxdiff(assert(c:decode({ 262 })):totable(), assert(alone:decode({ 262 })):totable()) < 1e-5)
  end)

  it("refuses copies it has no room for, and bad ranges, leaving the context usable", function()
    local c = assert(model:context { n_ctx = 24, kv_type = "f32", seqs = 2 })
    local ids = {}
    for i = 1, 20 do ids[i] = prompt[(i - 1) % #prompt + 1] end
    assert(c:decode(ids))
    c:copy(0, 1)
    -- 19 shared cells to copy, 4 free
    local ok, err = c:shift(0, 1, 1)
    assert.is_nil(ok)
    assert.are.equal("context full (n_ctx = 24): no free cells to copy the shifted cells that other sequences share", err)
    assert.are.equal(20, c:pos(0))
    assert.has_error(function() c:shift(0, 21, 1) end,
      "bad argument #3 to 'shift' (cannot keep 21 tokens of the 20 in sequence 0)")
    assert.has_error(function() c:shift(0, 5, 16) end,
      "bad argument #4 to 'shift' (cannot discard 16 tokens after the 5 kept (sequence 0 has 20))")
    assert.has_error(function() c:shift(2, 0, 1) end)
    assert.is_true(c:shift(0, 5, 0))
    assert(c:decode({ 3 }))
  end)
end)
