-- The model families (issue 13) at the speed of the llama block: Q8_0 files of each decoder
-- family in the TinyLlama-1.1B (or SmolLM-135M) shape (mpt, which has no GQA and a
-- two-matrix GELU FFN, with an n_ff that makes its weights the same bytes), written once into build/bench-models/ by
-- bench/modelgen.lua; pp512 / tg128 like bench/e2e.lua, each as a ratio to the llama file
-- measured in the same run, and llama.cpp on the same file when LLAMA_BENCH is set (and
-- ik_llama.cpp when IK_LLAMA_BENCH is: llama.cpp builds before March 2025 have no gemma3).
-- The TinyLlama shape runs with 26 layers (LAYERS=n to change): llama.cpp sizes gemma2 by its
-- layer count and aborts on any but Gemma 2's 26, 42 and 46. Then
-- BERT: embeddings per second for 64 texts of 32 tokens (a bge-small shape), against
-- LLAMA_EMBEDDING (llama-embedding) on the same file when set.
--   FAMILIES="llama,phi3,mpt,gemma2,gemma3"; SHAPE=tinyllama|smollm; REPS=2 (rounds over all
--   families in turn, best kept; the load average is printed with the tables); PP=512; TG=128;
--   PEER_ROUNDS=n runs the peers in the first n rounds only (default: every round).
-- Besides each family's best round, the table gives the median over rounds of its ratio to
-- the llama file measured in the same round: on this VM single runs move 10-25% between
-- rounds minutes apart, and a ratio within one round is the steadier figure.
local lm = require "moonlm"
local B = require "common"
local gen = require "modelgen"

local threads = tonumber(os.getenv("THREADS")) or 2
local reps = tonumber(os.getenv("REPS")) or 2
local PP, TG = tonumber(os.getenv("PP")) or 512, tonumber(os.getenv("TG")) or 128
lm.threads(threads)
local dir = B.build .. "/bench-models"
os.execute("mkdir -p " .. dir)

local function llama_bench(path, var)
  local exe = os.getenv(var or "LLAMA_BENCH")
  if not exe or exe == "" then return nil end
  local p = io.popen(("%s -m %s -t %d -p %d -n %d -r 1 -o csv 2>/dev/null"):format(exe, path, threads, PP, TG))
  local out = p:read("*a")
  p:close()
  local header, pp, tg
  for line in out:gmatch("[^\n]+") do
    -- CSV fields, quoted ones with commas inside (ik_llama.cpp writes "-1,0")
    local f, pos = {}, 1
    while pos <= #line + 1 do
      local q = line:match('^"([^"]*)"', pos)
      if q then
        f[#f + 1], pos = q, pos + #q + 3
      else
        local x = line:match("^[^,]*", pos)
        f[#f + 1], pos = x, pos + #x + 1
      end
    end
    if not header then
      header = {}
      for i, name in ipairs(f) do header[name] = i end
      if not (header.n_prompt and header.n_gen and header.avg_ts) then return nil end
    else
      local np, ng, avg = tonumber(f[header.n_prompt]), tonumber(f[header.n_gen]), tonumber(f[header.avg_ts])
      if np and ng and avg then
        if np > 0 and ng == 0 then pp = avg elseif ng > 0 and np == 0 then tg = avg end
      end
    end
  end
  return pp, tg
end

local function uptime()
  local f = io.open("/proc/loadavg")
  local l = f and f:read("*l") or "?"
  if f then f:close() end
  return l:match("^(%S+ %S+ %S+)") or l
end

local shape_name = os.getenv("SHAPE") or "tinyllama"
local shape = {}
for k, v in pairs(gen.shapes[shape_name]) do shape[k] = v end
local layers = tonumber(os.getenv("LAYERS")) or (shape_name == "tinyllama" and 26 or shape.n_layer)
local tag = shape_name
if layers ~= shape.n_layer then
  shape.n_layer, tag = layers, shape_name .. layers
  shape.name = ("%s, %d layers"):format(shape.name, layers)
end
-- mpt: no GQA and a two-matrix FFN; n_ff chosen so that its weights are the llama file's bytes
local mpt_ff = { tinyllama = 6656, smollm = 1920 }
local fams, paths = {}, {}
for fam in (os.getenv("FAMILIES") or "llama,phi3,mpt,gemma2,gemma3"):gmatch("[^,]+") do
  local s = {}
  for k, v in pairs(shape) do s[k] = v end
  if fam == "mpt" then s.n_head_kv, s.n_ff = s.n_head, mpt_ff[shape_name] end
  local path = ("%s/%s-%s-q8_0.gguf"):format(dir, tag, fam)
  local f = io.open(path)
  if f then f:close() else
    io.stderr:write(("writing %s ...\n"):format(path))
    assert(gen.write(path, s, "q8_0", 1, fam ~= "llama" and fam or nil))
    collectgarbage()
  end
  fams[#fams + 1], paths[fam] = fam, path
end

-- one round: our pp and tg for a family (after a warm-up on the first round), then
-- llama.cpp's on the same file. Rounds go over every family in turn, so that a change in
-- the machine's load (it is shared) hits every family alike; each figure is the best round.
local function ours(path, warm)
  local model = assert(lm.load(path))
  model:prepare()
  local ctx = assert(model:context { n_ctx = PP + TG + 16 })
  local ids = {}
  for i = 1, PP do ids[i] = 3 + (i * 7919) % (model.n_vocab - 3) end
  local function pp()
    ctx:clear()
    local t0 = lm.clock()
    assert(ctx:decode(ids))
    return PP / (lm.clock() - t0)
  end
  local function tg()
    ctx:clear()
    local t0, id = lm.clock(), 1
    for _ = 1, TG do
      local l = assert(ctx:decode({ id }))
      id = 3 + (id * 31 + 7) % (model.n_vocab - 3)
      l:close()
    end
    return TG / (lm.clock() - t0)
  end
  if warm then pp() tg() end
  local a, b = pp(), tg()
  ctx:close()
  model:close()
  collectgarbage()
  return a, b
end

local peer_rounds = tonumber(os.getenv("PEER_ROUNDS")) or reps
local R, loads = {}, { uptime() }
for round = 1, reps do
  for _, fam in ipairs(fams) do
    local r = R[fam] or { pp = 0, tg = 0, each = {} }
    R[fam] = r
    local pp, tg = ours(paths[fam], round == 1)
    r.pp, r.tg = math.max(r.pp, pp), math.max(r.tg, tg)
    r.each[round] = { pp = pp, tg = tg }
    local peers = round <= peer_rounds
    local lpp, ltg, ipp, itg
    if peers then lpp, ltg = llama_bench(paths[fam]) end
    if lpp then r.lpp, r.ltg = math.max(r.lpp or 0, lpp), math.max(r.ltg or 0, ltg or 0) end
    if peers then ipp, itg = llama_bench(paths[fam], "IK_LLAMA_BENCH") end
    if ipp then r.ipp, r.itg = math.max(r.ipp or 0, ipp), math.max(r.itg or 0, itg or 0) end
    io.stderr:write(("round %d %s: pp %.1f tg %.1f, llama.cpp pp %s tg %s, ik_llama.cpp pp %s tg %s (load %s)\n"):format(
      round, fam, pp, tg, tostring(lpp), tostring(ltg), tostring(ipp), tostring(itg), uptime()))
  end
  loads[#loads + 1] = uptime()
end
B.row("## Model families (%s, Q8_0, %d threads, pp%d / tg%d, best of %d interleaved rounds)", shape.name, threads, PP, TG, reps)
B.row("load average (1/5/15 min) before and after each round: %s", table.concat(loads, "; "))
-- "read": the weight bytes a token reads (the file less token_embd where the output has a
-- matrix of its own; a tied output reads token_embd as the output matrix), the work the
-- "of llama" ratios compare
B.row("| family | size | read | pp%d t/s | tg%d t/s | of llama pp / tg | of llama, median of rounds | " ..
  "llama.cpp pp / tg | ours/llama.cpp | ik_llama.cpp pp / tg | ours/ik |", PP, TG)
B.row("|---|---|---|---|---|---|---|---|---|---|---|")
local base = R[fams[1]]
local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end
-- per round: the family's figure over the llama file's in the same round
local function round_ratio(r, key)
  local q = {}
  for i, e in ipairs(r.each) do q[i] = e[key] / base.each[i][key] end
  return median(q)
end
local embd = shape.n_vocab * shape.n_embd / 32 * 34 / 2 ^ 20
local function peer(r, pp, tg)
  if not pp then return "-", "-" end
  return ("%.1f / %.1f"):format(pp, tg or 0), ("%.2f / %.2f"):format(r.pp / pp, r.tg / math.max(tg or 0, 1e-9))
end
for _, fam in ipairs(fams) do
  local r = R[fam]
  local size = io.open(paths[fam]):seek("end") / 2 ^ 20
  local read = (fam == "llama" or fam == "phi3") and size - embd or size
  local a, b = peer(r, r.lpp, r.ltg)
  local c, d = peer(r, r.ipp, r.itg)
  B.row("| %s | %.0f MiB | %.0f MiB | %.1f | %.1f | %.2f / %.2f | %.2f / %.2f | %s | %s | %s | %s |", fam, size, read,
    r.pp, r.tg, r.pp / base.pp, r.tg / base.tg, round_ratio(r, "pp"), round_ratio(r, "tg"), a, b, c, d)
end

-- BERT: embeddings per second, 64 texts of 32 tokens ([CLS] 30 words [SEP]) in one call,
-- in a bge-small shape (384 wide, 12 layers, 12 heads, n_ff 1536, 512 positions) with the
-- BGE vocabulary of ../shared/ref-arch, Q8_0, CLS pooling.
local shared = os.getenv("MOONLM_SHARED") or "../shared"
local vocab_src = shared .. "/ref-arch/bert-f32.gguf"
local bpath = dir .. "/bge-small-shape-q8_0.gguf"
if io.open(vocab_src) then
  if not io.open(bpath) then
    io.stderr:write(("writing %s ...\n"):format(bpath))
    local T = lm.tensor
    local src = assert(lm.load(vocab_src, { vocab_only = true }))
    local meta = {}
    for k, v in pairs(src.meta) do
      if k:match("^tokenizer%.") then
        meta[k] = type(v) == "number" and lm.gguf_value("u32", v) or v
      end
    end
    meta["tokenizer.ggml.token_type"] = lm.gguf_value("i32", src.meta["tokenizer.ggml.token_type"])
    local E, L, H, F, V, P = 384, 12, 12, 1536, src.n_vocab, 512
    for k, v in pairs { context_length = P, embedding_length = E, block_count = L, feed_forward_length = F,
                        ["attention.head_count"] = H, pooling_type = 2 } do meta["bert." .. k] = lm.gguf_value("u32", v) end
    meta["general.architecture"] = "bert"
    meta["bert.attention.layer_norm_epsilon"] = lm.gguf_value("f32", 1e-12)
    meta["bert.attention.causal"] = false
    local t, r = {}, 0
    local function w(rows, cols)
      r = r + 1
      return T.randn({ rows, cols }, { seed = 500 + r, std = 0.05 }):to("q8_0")
    end
    local function v(n, base) r = r + 1 return T.randn({ n }, { seed = 500 + r, std = 0.02 }) + base end
    t["token_embd.weight"], t["position_embd.weight"] = w(V, E), T.randn({ P, E }, { seed = 1, std = 0.05 })
    t["token_types.weight"] = T.randn({ 2, E }, { seed = 2, std = 0.05 })
    t["token_embd_norm.weight"], t["token_embd_norm.bias"] = v(E, 1), v(E, 0)
    for il = 0, L - 1 do
      local p = "blk." .. il .. "."
      for _, n in ipairs { "attn_q", "attn_k", "attn_v", "attn_output" } do t[p .. n .. ".weight"], t[p .. n .. ".bias"] = w(E, E), v(E, 0) end
      t[p .. "ffn_up.weight"], t[p .. "ffn_up.bias"] = w(F, E), v(F, 0)
      t[p .. "ffn_down.weight"], t[p .. "ffn_down.bias"] = w(E, F), v(E, 0)
      for _, n in ipairs { "attn_output_norm", "layer_output_norm" } do t[p .. n .. ".weight"], t[p .. n .. ".bias"] = v(E, 1), v(E, 0) end
    end
    assert(lm.save(bpath, t, meta))
    src:close()
    t = nil
    collectgarbage()
  end
  local model = assert(lm.load(bpath))
  model:prepare()
  local texts = {}
  for i = 1, 64 do
    local words = {}
    for k = 1, 30 do
      local tok = model:token(2000 + (i * 31 + k * 7) % 6000)
      words[k] = tok:gsub("^\226\150\129", "")
    end
    texts[i] = table.concat(words, " ")
  end
  local n_tok = 0
  for _, s in ipairs(texts) do n_tok = n_tok + #model:tokenize(s) end
  -- interleaved like the decoders: each round ours, then llama-embedding on the same file
  local exe = os.getenv("LLAMA_EMBEDDING")
  local tf = dir .. "/bert-texts.txt"
  if exe and exe ~= "" then
    local f = io.open(tf, "w")
    f:write(table.concat(texts, "\n"), "\n")
    f:close()
  end
  assert(model:embed(texts)) -- warm-up
  local eps, b, bloads = 0, 0, { uptime() }
  for _ = 1, reps do
    local t0 = lm.clock()
    assert(model:embed(texts))
    eps = math.max(eps, #texts / (lm.clock() - t0))
    if exe and exe ~= "" then
      local p = io.popen(("%s -m %s -f %s -t %d -c 2048 -b 2048 -ub 2048 --pooling cls 2>&1 >/dev/null"):format(exe, bpath, tf, threads))
      local out = p:read("*a")
      p:close()
      local ms = tonumber(out:match("prompt eval time =%s*([%d%.]+) ms"))
      if ms and #texts / (ms / 1000) > b then b = #texts / (ms / 1000) end
    end
    bloads[#bloads + 1] = uptime()
  end
  local theirs = b > 0 and ("%.0f (ours/theirs %.2f)"):format(b, eps / b) or "-"
  B.row("")
  B.row("## BERT embeddings (bge-small shape, Q8_0, CLS pooling, %d threads, 64 texts, %d tokens in all, best of %d)",
    threads, n_tok, reps)
  B.row("load average before and after each round: %s", table.concat(bloads, "; "))
  B.row("| embeddings/s | tokens/s | llama.cpp llama-embedding embeddings/s |")
  B.row("|---|---|---|")
  B.row("| %.0f | %.0f | %s |", eps, eps * n_tok / #texts, theirs)
  model:close()
end
