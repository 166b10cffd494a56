-- Tokenizer throughput through the Lua API: about 1 MB of mixed English, code and CJK text,
-- single-threaded, with each shared vocabulary (best of 5), and the time to load the
-- 151,936-token qwen2 vocabulary. Target: at least 10 MB/s each, loading under 50 ms.
local lm = require "moonlm"
local B = require "common"

local shared = os.getenv("MOONLM_SHARED") or "../shared"

-- deterministic mixed text: prose, code, CJK, and the shared pre-tokenizer test strings
local english = {
  "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his father had taught him. ",
  "Markets opened lower on Tuesday after the central bank kept interest rates unchanged for the third meeting. ",
  "She didn't know whether the train would arrive on time; the board said 7:45. \"We'll see,\" she muttered.\n",
  "In 1969, roughly 650 million people watched the first Moon landing on television.\n\n",
}
local code = {
  "static int sum(const int *a, size_t n) {\n    int s = 0;\n    for (size_t i = 0; i < n; i++) s += a[i];\n    return s;\n}\n",
  "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
  "local function map(t, f)\n  local r = {}\n  for i, v in ipairs(t) do r[i] = f(v) end\n  return r\nend\n",
}
local cjk = {
  "今天的天气很好，我们一起去公园散步吧。小明说他想吃冰淇淋，但是妈妈说要先吃午饭。",
  "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
  "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.",
}
local f = io.open(shared .. "/tokenizer/ggml-vocab-llama-bpe.gguf.inp", "rb")
local extra = f and f:read("*a") or ""
if f then f:close() end

local parts, size, seed = {}, 0, 1
local function pick(t)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return t[seed % #t + 1]
end
while size < 1e6 do
  local r = seed % 10
  local s = r < 6 and pick(english) or r < 8 and pick(code) or pick(cjk)
  if seed % 97 == 0 then s = extra:sub(1, 2000) end
  parts[#parts + 1] = s
  size = size + #s
  seed = (seed * 1103515245 + 12345) % 2147483648
end
local text = table.concat(parts)

B.row("## Tokenizers (%.2f MB of mixed text, one thread, best of 5)", #text / 1e6)
B.row("| vocabulary | tokens | MB/s | 4 KB calls MB/s |")
B.row("|---|---|---|---|")
for _, name in ipairs { "gpt-2", "llama-spm", "llama-bpe", "qwen2" } do
  local v = assert(lm.load(shared .. "/tokenizer/ggml-vocab-" .. name .. ".gguf", { vocab_only = true }))
  local n
  local t = B.best(function() n = #v:tokenize(text, { bos = false }) end, 5)
  -- many short calls: the per-call word cache never warms up
  local chunks = {}
  for i = 1, #text, 4096 do chunks[#chunks + 1] = text:sub(i, i + 4095) end
  local t4 = B.best(function() for _, c in ipairs(chunks) do v:tokenize(c, { bos = false }) end end, 3)
  B.row("| %s | %d | %.1f | %.1f |", name, n, #text / t / 1e6, #text / t4 / 1e6)
end
local loads = {}
for i = 1, 5 do
  collectgarbage()
  local t0 = lm.clock()
  local v = assert(lm.load(shared .. "/tokenizer/ggml-vocab-qwen2.gguf", { vocab_only = true }))
  loads[i] = lm.clock() - t0
  v:close()
end
table.sort(loads)
B.row("\nloading the qwen2 vocabulary (151,936 tokens, 151,387 merges): %.1f ms (median of 5)", loads[3] * 1000)
