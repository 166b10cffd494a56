-- Tokenizers against the reference ids in ../shared/tokenizer (llama.cpp's test vectors and
-- Hugging Face's ids for Llama 3 and Qwen), plus round trips and the streaming decoder.
local lm = require "moonlm"
local S = require "support"

local SEP = "\n__ggml_vocab_test__\n"

local function cases(name)
  local inp = S.read_file(S.path("tokenizer/ggml-vocab-" .. name .. ".gguf.inp"))
  local out = S.read_file(S.path("tokenizer/ggml-vocab-" .. name .. ".gguf.out"))
  local texts, pos = {}, 1
  while pos <= #inp do
    local at = inp:find(SEP, pos, true)
    texts[#texts + 1] = inp:sub(pos, at - 1)
    pos = at + #SEP
  end
  local ids = {}
  for line in (out .. ""):gmatch("([^\n]*)\n") do
    local row = {}
    for n in line:gmatch("%d+") do row[#row + 1] = tonumber(n) end
    ids[#ids + 1] = row
  end
  assert(#texts == #ids, name .. ": " .. #texts .. " strings, " .. #ids .. " lines")
  return texts, ids
end

-- Cases whose ids do not decode back to the input, with the reason.
local no_round_trip = {
  qwen2 = { [54] = "the tokenizer normalizes to NFC" }, -- case 53 (1-based 54)
}

local vocabs = { "llama-spm", "phi-3", "gpt-2", "llama-bpe", "qwen2" }

describe("tokenizer reference ids", function()
  for _, name in ipairs(vocabs) do
    local vocab = assert(lm.load(S.path("tokenizer/ggml-vocab-" .. name .. ".gguf"), { vocab_only = true }))
    local texts, ids = cases(name)
    it(name .. ": every case gives exactly the listed ids and decodes back", function()
      local spm = vocab.vocab.model == "llama"
      for i, text in ipairs(texts) do
        local got = vocab:tokenize(text, { bos = false, special = false })
        assert.are.same(ids[i], got, ("%s case %d %q"):format(name, i - 1, text))
        if not (no_round_trip[name] or {})[i] then
          -- SPM decoders drop the dummy-prefix space the tokenizer added
          local back = vocab:detokenize(got)
          assert.are.equal(text, back, ("%s case %d round trip"):format(name, i - 1))
        end
        if spm and text ~= "" then
          assert.are.equal(" " .. text, vocab:detokenize(got, { strip_space = false }))
        end
      end
    end)
  end
end)

describe("stories260K tokenizer", function()
  local model = assert(lm.load(S.path("models/stories260K.gguf"), { vocab_only = true }))
  local examples = {
    { "Once upon a time", { 1, 403, 407, 261, 378 } },
    { "Lily and Tom went to the park.", { 1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433, 426 } },
    { "Hello world", { 1, 346, 306, 414, 263, 304, 341 } },
  }
  for _, e in ipairs(examples) do
    it(e[1], function()
      assert.are.same(e[2], model:tokenize(e[1]))
      assert.are.equal(e[1], model:detokenize(e[2]))
    end)
  end
  it("pieces and token facts", function()
    assert.are.equal(" Once", model:piece(403))
    assert.are.equal("", model:piece(1))
    assert.are.equal("<s>", model:piece(1, true))
    local text, score, ty, eog = model:token(2)
    assert.are.equal("</s>", text)
    assert.are.equal("control", ty)
    assert.is_true(eog)
    assert.are.equal("number", type(score))
    assert.are.equal(403, model:find_token("\226\150\129Once"))
    assert.is_nil(model:find_token("no such token"))
    assert.are.equal(1, model.vocab.bos)
    assert.are.equal(2, model.vocab.eos)
    assert.is_true(model.vocab.add_bos)
    assert.is_true(model.vocab_only)
    local ctx, err = model:context()
    assert.is_nil(ctx)
    assert.are.equal("the model was loaded with vocab_only: it has no weights to run", err)
  end)
end)

describe("special tokens", function()
  local q = assert(lm.load(S.path("tokenizer/ggml-vocab-qwen2.gguf"), { vocab_only = true }))
  local l3 = assert(lm.load(S.path("tokenizer/ggml-vocab-llama-bpe.gguf"), { vocab_only = true }))
  it("are recognised only with special = true", function()
    local im_start = assert(q:find_token("<|im_start|>"))
    local on = q:tokenize("<|im_start|>user", { special = true, bos = false })
    assert.are.equal(im_start, on[1])
    local off = q:tokenize("<|im_start|>user", { special = false, bos = false })
    assert.are_not.equal(im_start, off[1])
    assert.is_true(#off > #on)
    -- Llama 3 adds <|begin_of_text|> by default
    local ids = l3:tokenize("Hello world")
    assert.are.same({ 128000, 9906, 1917 }, ids)
    assert.are.same({ 9906, 1917 }, l3:tokenize("Hello world", { bos = false }))
    assert.are.same({ 9707, 1879 }, q:tokenize("Hello world"))
  end)
  it("end-of-turn tokens are known", function()
    local eot = l3:find_token("<|eot_id|>")
    assert.is_true(l3:is_eog(eot))
    assert.is_true(q:is_eog(q:find_token("<|im_end|>")))
    assert.is_false(q:is_eog(q:find_token("Hello")))
  end)
end)

-- random strings of code points from several scripts, emoji and controls
local function random_text(rng, n)
  local ranges = { { 0x20, 0x7e }, { 0xa0, 0x24f }, { 0x391, 0x3c9 }, { 0x410, 0x44f }, { 0x4e00, 0x4fff },
                   { 0x3040, 0x30ff }, { 0xac00, 0xac40 }, { 0x1f600, 0x1f64f }, { 0x9, 0xd } }
  local out = {}
  for i = 1, n do
    local r = ranges[math.floor(rng:uniform() * #ranges) + 1]
    local cp = r[1] + math.floor(rng:uniform() * (r[2] - r[1] + 1))
    if cp < 0x80 then out[i] = string.char(cp)
    elseif cp < 0x800 then out[i] = string.char(0xc0 + math.floor(cp / 64), 0x80 + cp % 64)
    elseif cp < 0x10000 then out[i] = string.char(0xe0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    else out[i] = string.char(0xf0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64, 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64) end
  end
  return table.concat(out)
end

describe("round trips and hostile input", function()
  local core = require "moonlm.core"
  for _, name in ipairs(vocabs) do
    it(name .. ": detokenize(tokenize(s)) == s for random text; invalid UTF-8 does not crash", function()
      local v = assert(lm.load(S.path("tokenizer/ggml-vocab-" .. name .. ".gguf"), { vocab_only = true }))
      local rng = core.rng(42)
      for _ = 1, 40 do
        local s = random_text(rng, 1 + math.floor(rng:uniform() * 40))
        local ids = v:tokenize(s, { bos = false })
        local back = v:detokenize(ids)
        if name == "qwen2" then
          -- NFC may recompose: compare after tokenizing again
          assert.are.same(ids, v:tokenize(back, { bos = false }))
        else
          assert.are.equal(s, back)
        end
      end
      for _, bad in ipairs { "\255\254abc", "a\192", "\237\160\128", ("\128"):rep(50), "x\0y" } do
        local ids = v:tokenize(bad, { bos = false })
        assert.are.equal("table", type(ids))
        assert.are.equal("string", type(v:detokenize(ids)))
      end
    end)
  end
end)

describe("streaming decoder", function()
  local v = assert(lm.load(S.path("tokenizer/ggml-vocab-llama-spm.gguf"), { vocab_only = true }))
  it("never returns a split UTF-8 character", function()
    local text = "héllo 🦙 世界 ok"
    local ids = v:tokenize(text, { bos = false })
    local d = v:decoder()
    local parts = {}
    for _, id in ipairs(ids) do
      local piece = d:push(id)
      assert.is_true(S.valid_utf8(piece), ("piece %q"):format(piece))
      parts[#parts + 1] = piece
    end
    parts[#parts + 1] = d:flush()
    assert.are.equal(" " .. text, table.concat(parts))
    -- byte tokens of 🦙 pushed one at a time: nothing until the character is whole
    local d2 = v:decoder()
    local b1 = v:find_token("<0xF0>")
    local bytes = { 0xF0, 0x9F, 0xA6, 0x99 }
    for i, b in ipairs(bytes) do
      local piece = d2:push(v:find_token(("<0x%02X>"):format(b)))
      if i < 4 then assert.are.equal("", piece) else assert.are.equal("🦙", piece) end
    end
    assert.truthy(b1)
    -- an incomplete character at the end is flushed as U+FFFD
    local d3 = v:decoder()
    assert.are.equal("", d3:push(v:find_token("<0xE4>")))
    assert.are.equal("\239\191\189", d3:flush())
  end)
end)
