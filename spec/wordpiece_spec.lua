-- WordPiece (BERT's tokenizer, tokenizer.ggml.model = "bert"): the ids llama.cpp gave for
-- the reference texts, and Hugging Face's `tokenizers` (the Rust library, through its npm
-- build) run on the same vocabulary over the shared test strings and cases of our own.
local lm = require "moonlm"
local S = require "support"

local vocab_path = S.path("ref-arch/bert-f32.gguf")

local function lines(path)
  local out = {}
  for l in io.lines(path) do out[#out + 1] = l end
  return out
end

local function read_inp(path) -- the .inp format of ../shared/tokenizer (README there)
  local s, sep, out, pos = S.read_file(path), "\n__ggml_vocab_test__\n", {}, 1
  while pos <= #s do
    local a = s:find(sep, pos, true)
    out[#out + 1] = s:sub(pos, a - 1)
    pos = a + #sep
  end
  return out
end

describe("WordPiece", function()
  local m = assert(lm.load(vocab_path, { vocab_only = true }))

  it("the reference texts give llama.cpp's ids ([CLS] text [SEP])", function()
    local texts, ids = lines(S.path("ref-arch/bert-texts.txt")), lines(S.path("ref-arch/bert-ids.txt"))
    assert.are.equal(3, #texts)
    for i, text in ipairs(texts) do
      local want = {}
      for w in ids[i]:gmatch("%d+") do want[#want + 1] = tonumber(w) end
      assert.are.same(want, m:tokenize(text))
    end
  end)

  it("facts: [CLS] 101, [SEP] 102, [UNK] 100, lower-casing vocabulary", function()
    local v = m.vocab
    assert.are.equal("bert", v.model)
    assert.are.equal(101, v.bos)
    assert.are.equal(102, v.eos)
    assert.are.equal(102, v.sep)
    assert.are.equal(100, v.unk)
    assert.is_true(v.lowercase)
  end)

  local cases = {
    { "lower-casing and accents", "Héllo WÖRLD, Ça va?", { "▁hello", "▁world", "▁,", "▁ca", "▁va", "▁?" } },
    { "decomposed accents too", "cafe\204\129 nai\204\136ve", { "▁cafe", "▁naive" } },
    { "punctuation is a word of its own", "a.b-c", { "▁a", "▁.", "▁b", "▁-", "▁c" } },
    { "CJK ideographs one by one", "中文ab", { "▁中", "▁文", "▁ab" } },
    { "continuation pieces", "tokenization", { "▁token", "ization" } },
    { "control characters vanish (\\v too), white space splits", "a\0b\tc\1d\ve", { "▁ab", "▁cd", "e" } },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ids = m:tokenize(c[2], { bos = false, eos = false })
      local got = {}
      for i, id in ipairs(ids) do got[i] = m:token(id) end
      assert.are.same(c[3], got)
    end)
  end

  it("a word longer than 100 characters, or with no pieces, is [UNK]", function()
    assert.are.same({ 100 }, m:tokenize(("a"):rep(101), { bos = false, eos = false }))
    assert.are.same({ 1037 }, m:tokenize("a", { bos = false, eos = false }))
    local ids = m:tokenize(("ab"):rep(50), { bos = false, eos = false })
    assert.is_true(#ids >= 1 and ids[1] ~= 100)
    assert.are.same({ 100 }, m:tokenize("\240\159\166\153", { bos = false, eos = false })) -- 🦙: no piece
  end)

  it("special tokens in the text only with special = true", function()
    assert.are.same({ 101, 102 }, m:tokenize("[CLS][SEP]", { bos = false, eos = false, special = true }))
    local got = {}
    for i, id in ipairs(m:tokenize("[CLS]", { bos = false, eos = false })) do got[i] = m:token(id) end
    assert.are.same({ "▁[", "▁cl", "s", "▁]" }, got)
  end)

  it("detokenizes to the lower-cased words", function()
    assert.are.equal("hello, world!", m:detokenize(m:tokenize("Hello, World!"), { clean_spaces = true }))
  end)
end)

describe("WordPiece against Hugging Face tokenizers #once", function()
  it("every shared test string and our own cases give Hugging Face's ids", function()
    local m = assert(lm.load(vocab_path, { vocab_only = true }))
    local dir = S.tmpname("")
    local function sh(cmd)
      local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
      local out = f:read("*a")
      f:close()
      local rc = tonumber(out:match("rc=(%d+)%s*$"))
      return out, rc
    end
    local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error @anush008/tokenizers@0.6.0"):format(dir, dir))
    assert.are.equal(0, rc, "npm install failed: " .. out)
    local json = require "moonlm.json"
    -- the vocabulary back in Hugging Face's spelling: "▁the" is "the", "ing" is "##ing"
    local vocab = {}
    for id = 0, m.n_vocab - 1 do
      local t = m:token(id)
      local hf
      if t:match("^%[.*%]$") then hf = t
      elseif t:sub(1, 3) == "\226\150\129" then hf = t:sub(4)
      else hf = "##" .. t end
      if vocab[hf] == nil then vocab[hf] = id end
    end
    local strings = read_inp(S.path("tokenizer/ggml-vocab-llama-bpe.gguf.inp"))
    for _, t in ipairs(lines(S.path("ref-arch/bert-texts.txt"))) do strings[#strings + 1] = t end
    for _, t in ipairs {
      "İstanbul ΣΊΣΥΦΟΣ straße ǅungla", "ﬁne ① ½ x² Ⅻ", "Ｈｅｌｌｏ ｗｏｒｌｄ", "e\204\129 a\204\136\204\132",
      ("x"):rep(100) .. " " .. ("x"):rep(101), "un" .. ("believable"):rep(12), "$5+3=8 <tag> a^b `c` |d| ~e",
      "\227\128\128中\227\128\129文。", "line\r\nbreak\vvt\fff\194\133nel", "\239\187\191bom \226\128\139zw",
    } do strings[#strings + 1] = t end
    local spec = {
      normalizer = { type = "BertNormalizer", clean_text = true, handle_chinese_chars = true, strip_accents = json.null,
                     lowercase = true },
      pre_tokenizer = { type = "BertPreTokenizer" },
      model = { type = "WordPiece", unk_token = "[UNK]", continuing_subword_prefix = "##", max_input_chars_per_word = 100,
                vocab = vocab },
    }
    local f = assert(io.open(dir .. "/tokenizer.json", "wb"))
    f:write(json.encode(spec))
    f:close()
    f = assert(io.open(dir .. "/strings.json", "wb"))
    f:write(json.encode(strings))
    f:close()
    f = assert(io.open(dir .. "/run.mjs", "wb"))
    f:write([[
import fs from "fs";
import { Tokenizer } from "@anush008/tokenizers";
const tok = Tokenizer.fromString(fs.readFileSync("tokenizer.json", "utf8"));
const strings = JSON.parse(fs.readFileSync("strings.json", "utf8"));
const out = [];
for (const s of strings) out.push((await tok.encode(s, null, { addSpecialTokens: false })).getIds());
fs.writeFileSync("ids.json", JSON.stringify(out));
]])
    f:close()
    out, rc = sh(("cd %s && node run.mjs"):format(dir))
    assert.are.equal(0, rc, "node failed: " .. out)
    local want = json.decode(S.read_file(dir .. "/ids.json"))
    assert.are.equal(#strings, #want)
    local bad = {}
    for i, s in ipairs(strings) do
      local got = m:tokenize(s, { bos = false, eos = false })
      local w = want[i]
      local same = #got == #w
      for k = 1, #w do same = same and got[k] == w[k] end
      if not same then bad[#bad + 1] = ("case %d %q: got %s want %s"):format(i - 1, s, table.concat(got, " "), table.concat(w, " ")) end
    end
    sh("rm -rf " .. dir)
    assert.are.equal(0, #bad, table.concat(bad, "\n"))
  end)
end)

describe("pre-tokenizer names of current llama.cpp", function()
  local function vocab(pre)
    local path = S.tmpname(".gguf")
    assert(lm.save(path, {}, {
      ["general.architecture"] = "llama", ["tokenizer.ggml.model"] = "gpt2", ["tokenizer.ggml.pre"] = pre,
      ["tokenizer.ggml.tokens"] = { "a", "b", "ab", "Ġ", "Ġab" }, ["tokenizer.ggml.merges"] = { "a b", "Ġ ab" },
    }))
    local m, err = lm.load(path, { vocab_only = true })
    os.remove(path)
    return m, err
  end
  it("names of regex sets moonlm has load (grok-2, solar-open, mellum2, deepseek-v3, gpt-4o, llama4 ...)", function()
    for _, pre in ipairs { "grok-2", "solar-open", "kormo", "f2llmv2", "mellum", "mellum2", "modern-bert", "a.x-4.0",
                           "jina-v5-nano", "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4", "gpt-4o", "llama4",
                           "kanana2", "talkie", "minimax-m2", "bailingmoe", "bailingmoe2", "llada-moe", "qwen35",
                           "seed-coder", "tekken" } do
      local m, err = vocab(pre)
      assert(m, err)
      assert.are.same({ 2, 4 }, m:tokenize("ab ab", { bos = false }))
    end
  end)
  it("the others are refused by name, as not supported yet", function()
    for _, pre in ipairs { "kimi-k2", "youtu", "jais-2", "chameleon", "bloom", "viking", "superbpe", "gemma4" } do
      local m, err = vocab(pre)
      assert.is_nil(m)
      assert.is_truthy(err:find("pre-tokenizer '" .. pre .. "' (tokenizer.ggml.pre) is not supported by moonlm yet", 1, true), err)
    end
    local m, err = vocab("no-such-thing")
    assert.is_nil(m)
    assert.is_truthy(err:find("unknown pre-tokenizer 'no-such-thing'", 1, true), err)
  end)
  -- every tokenizer_pre name of llama.cpp's src/llama-vocab.cpp (ggml-org/llama.cpp at
  -- 00ad355e, the newest snapshot read), in its order: 68 load, 22 are refused by name
  it("every name llama.cpp knows either loads or is refused by name", function()
    local names = [[default minicpm5 llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano
      deepseek-llm deepseek-coder deepseek-v3 spark2_5 youtu falcon mpt starcoder gpt-2 phi-2 jina-es jina-de gigachat
      jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert jais-2 gemma4 granite-embed-multi-311m sarvam-moe jina-v1-en
      jina-v2-code roberta-bpe whitespace refact command-r qwen2 deepseek-r1-qwen kormo f2llmv2 qwen35 stablelm2 olmo
      dbrx smaug-bpe poro-chat glm4 chatglm-bpe viking jais tekken smollm codeshell bloom gpt3-finnish exaone exaone4
      exaone-moe chameleon minerva-7b megrez gpt-4o llama4 kanana2 talkie granite-embed-multi-97m tiny_aya cohere2moe
      superbpe trillion granite-docling bailingmoe bailingmoe2 llada-moe seed-coder hunyuan hunyuan-dense hy_v4
      joyai-llm kimi-k2 ufakzeka grok-2 afmoe laguna minimax-m2 solar-open mellum2]]
    local refused = {}
    for pre in ([[minicpm5 spark2_5 youtu jais-2 gemma4 granite-embed-multi-311m sarvam-moe whitespace poro-chat viking
                  bloom gpt3-finnish exaone-moe chameleon granite-embed-multi-97m tiny_aya cohere2moe superbpe kimi-k2
                  ufakzeka afmoe laguna]]):gmatch("%S+") do refused[pre] = true end
    local n, n_loaded, n_refused = 0, 0, 0
    for pre in names:gmatch("%S+") do
      n = n + 1
      local m, err = vocab(pre)
      if refused[pre] then
        assert.is_nil(m, pre)
        assert.are.equal(("pre-tokenizer '%s' (tokenizer.ggml.pre) is not supported by moonlm yet"):format(pre),
          err:match("pre%-tokenizer '.-' %(tokenizer%.ggml%.pre%) is not supported by moonlm yet"), err)
        n_refused = n_refused + 1
      else
        assert(m, pre .. ": " .. tostring(err))
        assert.are.same({ 2, 4 }, m:tokenize("ab ab", { bos = false }), pre)
        m:close()
        n_loaded = n_loaded + 1
      end
    end
    assert.are.same({ 90, 68, 22 }, { n, n_loaded, n_refused })
  end)
end)
