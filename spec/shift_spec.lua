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

  it("a context that only loaded a saved state shifts like the one that decoded it", function()
    local a = assert(model:context { n_ctx = 128 })
    assert(a:decode(prompt))
    local b = assert(model:context { n_ctx = 128 })
    assert(b:state_load(0, a:state_save(0)))
    assert(a:shift(0, 1, 6))
    assert(b:shift(0, 1, 6))
    assert.are.same(assert(a:decode({ 262 })):totable(), assert(b:decode({ 262 })):totable())
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

describe("generate with context_shift", function()
  local model = assert(lm.load(stories))
  local prompt = "Once upon a time, there was a little girl named Lily. She loved to play"

  -- the policy written out: llama-cli's loop (shift when the next token would take the last
  -- cell: drop half of what follows n_keep), greedy on the raw logits
  local function reference(n_ctx, n_tokens, n_keep)
    local ctx = assert(model:context { n_ctx = n_ctx })
    local ids = model:tokenize(prompt)
    local logits = assert(ctx:decode(ids))
    local out, shifted = {}, 0
    for i = 1, n_tokens do
      local id = logits:argmax() - 1
      out[i] = id
      if i == n_tokens then break end
      local pos = ctx:pos(0)
      if pos + 1 >= n_ctx then
        local discard = math.floor((pos - n_keep) / 2)
        assert(ctx:shift(0, n_keep, discard))
        shifted = shifted + discard
      end
      logits = assert(ctx:decode({ id }))
    end
    return out, shifted
  end

  for _, case in ipairs { { 48, 150 }, { 64, 200 }, { 100, 260 } } do
    it(("keeps generating past n_ctx = %d as the written-out policy does"):format(case[1]), function()
      local want, shifted = reference(case[1], case[2], 1)
      local _, info = model:generate(prompt, { n_ctx = case[1], max_tokens = case[2], temperature = 0,
                                               context_shift = true, ignore_eos = true })
      assert.are.equal(case[2], info.tokens)
      assert.are.same(want, info.ids)
      assert.are.equal(shifted, info.shifted)
      assert.is_true(shifted > 0)
    end)
  end

  it("n_keep keeps more of the start", function()
    local want = reference(64, 120, 9)
    local _, info = model:generate(prompt, { n_ctx = 64, max_tokens = 120, temperature = 0, context_shift = true,
                                             n_keep = 9, ignore_eos = true })
    assert.are.same(want, info.ids)
  end)

  it("speculative decoding goes through the shifts unchanged", function()
    local o = { n_ctx = 64, max_tokens = 150, temperature = 0, context_shift = true, ignore_eos = true }
    local _, plain = model:generate(prompt, o)
    o.lookup = true
    local _, looked = model:generate(prompt, o)
    o.lookup, o.draft = nil, model
    local _, drafted = model:generate(prompt, o)
    assert.are.same(plain.ids, looked.ids)
    assert.are.same(plain.ids, drafted.ids)
  end)

  it("without it, generation stops at the end of the context", function()
    local _, info = model:generate(prompt, { n_ctx = 48, max_tokens = 150, temperature = 0, ignore_eos = true })
    assert.are.equal("length", info.stop_reason)
    assert.is_true(info.tokens < 48)
  end)

  it("a prompt longer than the context keeps n_keep tokens and its end (llama-server's cut)", function()
    local ids = { 1 }
    for i = 1, 150 do ids[#ids + 1] = 262 + (i % 40) end
    local _, info = model:generate(ids, { n_ctx = 64, max_tokens = 5, temperature = 0, context_shift = true })
    -- n_keep 1, blocks of (64 - 1) / 2 = 31: erased floor((151 - 1 - 31) / 31) = 3 blocks
    assert.are.equal(93, info.truncated)
    local cut = { 1 }
    for i = 95, #ids do cut[#cut + 1] = ids[i] end
    local _, want = model:generate(cut, { n_ctx = 64, max_tokens = 5, temperature = 0 })
    assert.are.same(want.ids, info.ids)
  end)
end)

describe("chat with context_shift", function()
  local model = assert(lm.load(stories))
  local function question(turn) return ("Question number %d: tell me something about the number %d."):format(turn, turn * 7) end
  local function new_chat(shift, n_ctx)
    return model:chat { system = "You are a helpful assistant.", template = "chatml", max_tokens = 48, temperature = 0,
                        n_ctx = n_ctx or 400, context_shift = shift }
  end

  it("shifts the turns that stay instead of prefilling them again", function()
    local a, b = new_chat(false), new_chat(true)
    for turn = 1, 5 do
      local _, ia = a:say(question(turn))
      local _, ib = b:say(question(turn))
      assert.are.equal(ia.cached_tokens + ia.prompt_tokens, ib.cached_tokens + ib.prompt_tokens)
      if ib.truncated then
        assert.is_true(ib.shifted > 0)
        assert.is_true(ib.prompt_tokens < ia.prompt_tokens)
      end
      -- the cache holds exactly the tokens the session says it holds
      assert.are.equal(#b.tokens, b.ctx:pos(b.seq))
    end
  end)

  it("a turn after a shift answers as the cache shifted by hand would", function()
    local c = new_chat(true)
    for turn = 1, 2 do c:say(question(turn)) end
    -- by hand: the state after turn 2, the new prompt's ids, the gap found by matching tokens
    local state, cached = c.ctx:state_save(c.seq), {}
    for i, id in ipairs(c.tokens) do cached[i] = id end
    local reply, info = c:say(question(3))
    assert.is_true(info.truncated and info.shifted > 0)
    local ids = c.prompt_ids
    local keep = 0
    while cached[keep + 1] == ids[keep + 1] do keep = keep + 1 end
    local gap
    for j = keep + 2, #cached do
      local ok = true
      for t = 0, #cached - j do
        if cached[j + t] ~= ids[keep + 1 + t] then ok = false break end
      end
      if ok then gap = j - keep - 1 break end
    end
    assert.are.equal(info.shifted, gap)
    local ctx = assert(model:context { n_ctx = 400 })
    assert(ctx:state_load(0, state))
    assert(ctx:shift(0, keep, gap))
    local rest = {}
    for i = #cached - gap + 1, #ids do rest[#rest + 1] = ids[i] end
    local want = model:generate(rest, { context = ctx, keep = true, temperature = 0, max_tokens = 48 })
    assert.are.equal(want, reply)
  end)
end)
