-- Sampling, generation loops, chat sessions and embeddings, checked against the reference
-- greedy story of stories260K and against direct computations on the logits.
local lm = require "moonlm"
local json = require "moonlm.json"
local S = require "support"
local T = lm.tensor

local stories = S.path("models/stories260K.gguf")
local ref = json.decode(S.read_file(S.path("models/stories260K.reference.json")))

local valid_utf8 = S.valid_utf8

describe("sampler", function()
  local logits = T{ 1.0, 3.0, 2.0, -1.0, 3.0, 0.5 } -- ids 1 and 4 tie at the top

  it("greedy takes the best adjusted logit, ties to the lower id", function()
    local s = lm.sampler { temperature = 0 }
    assert.are.equal(1, s:sample(logits))
    assert.are.equal(4, lm.sampler { temperature = 0, logit_bias = { [1] = -math.huge } }:sample(logits))
    assert.are.equal(2, lm.sampler { temperature = 0, logit_bias = { [2] = 5 } }:sample(logits))
  end)

  it("candidates apply bias and penalties in C, sorted, cut at top_k", function()
    local s = lm.sampler { top_k = 3, repeat_penalty = 2, frequency_penalty = 0.25, presence_penalty = 0.5,
                           logit_bias = { [3] = 4 } }
    local c = s:candidates(logits, { 1, 1, 3, 5 })
    -- id 1: 3/2 - 2*0.25 - 0.5 = 0.5; id 3: (-1+4)/2 - 0.25 - 0.5 = 0.75; id 5: 0.5/2 - 0.75 = -0.5
    assert.are.same({ 4, 2, 0 }, c.ids)
    S.near(c.logits, { 3.0, 2.0, 1.0 }, 1e-6)
    local all = lm.sampler { top_k = 0, repeat_penalty = 2, frequency_penalty = 0.25, presence_penalty = 0.5,
                             logit_bias = { [3] = 4 } }:candidates(logits, { 1, 1, 3, 5 })
    assert.are.same({ 4, 2, 0, 3, 1, 5 }, all.ids)
    S.near(all.logits, { 3.0, 2.0, 1.0, 0.75, 0.5, -0.5 }, 1e-6)
    -- a negative logit is multiplied by the repeat penalty
    local neg = lm.sampler { top_k = 0, repeat_penalty = 2 }:candidates(T{ -1, 0.5 }, { 0 })
    S.near(neg.logits, { 0.5, -2 }, 0)
    -- only the last penalty_last_n ids count
    local win = lm.sampler { top_k = 0, repeat_penalty = 10, penalty_last_n = 1 }:candidates(T{ 1, 2 }, { 1, 0 })
    assert.are.same({ 1, 0 }, win.ids)
  end)

  it("draws follow the distribution; same seed, same draws", function()
    local p = { 0.5, 0.3, 0.2 }
    local l = T{ math.log(p[1]), math.log(p[2]), math.log(p[3]) }
    local s = lm.sampler { temperature = 1, top_k = 0, seed = 11 }
    local count = { 0, 0, 0 }
    local seq1 = {}
    for i = 1, 20000 do
      local id = s:sample(l)
      count[id + 1] = count[id + 1] + 1
      if i <= 50 then seq1[i] = id end
    end
    for k = 1, 3 do assert.is_true(math.abs(count[k] / 20000 - p[k]) < 0.015) end
    local s2 = lm.sampler { temperature = 1, top_k = 0, seed = 11 }
    for i = 1, 50 do assert.are.equal(seq1[i], s2:sample(l)) end
    -- temperature 0.5 squares the probabilities (renormalised)
    local t = lm.sampler { temperature = 0.5, top_k = 0, seed = 3 }
    local c2 = { 0, 0, 0 }
    for _ = 1, 20000 do local id = t:sample(l); c2[id + 1] = c2[id + 1] + 1 end
    local z = 0.25 + 0.09 + 0.04
    assert.is_true(math.abs(c2[1] / 20000 - 0.25 / z) < 0.015)
  end)

  it("cuts: top_k = 1, top_p, min_p, typical_p", function()
    local l = T{ math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05) }
    local function support(opts, n)
      opts.seed, opts.temperature, opts.top_k = 5, 1, opts.top_k or 0
      local s, seen = lm.sampler(opts), {}
      for _ = 1, n or 3000 do seen[s:sample(l)] = true end
      local out = {}
      for id in pairs(seen) do out[#out + 1] = id end
      table.sort(out)
      return out
    end
    assert.are.same({ 0 }, support { top_k = 1 })
    assert.are.same({ 0, 1 }, support { top_p = 0.8 })
    assert.are.same({ 0, 1, 2 }, support { top_p = 0.81 })
    assert.are.same({ 0, 1 }, support { min_p = 0.5 })
    assert.are.same({ 0, 1, 2 }, support { min_p = 0.25 })
    -- typical: entropy H = 1.1427 nats; |-ln p - H| = 0.45, 0.06, 0.75, 1.85: the 0.3 token
    -- alone has mass 0.3 < 0.5, adding the 0.5 token reaches 0.8
    assert.are.same({ 0, 1 }, support { typical_p = 0.5 })
    assert.are.same({ 1 }, support { typical_p = 0.25 })
  end)

  it("without top_k, C returns only the head that top_p keeps, with the same draws", function()
    local l = T.randn({ 32000 }, { seed = 4, std = 6 })
    local head = lm.sampler { top_k = 0, top_p = 0.9, temperature = 1 }:candidates(l)
    local all = lm.sampler { top_k = 0, temperature = 1 }:candidates(l)
    assert.are.equal(32000, #all.ids)
    assert.is_true(#head.ids < 32000)
    local z, mass = 0, 0
    for i = 1, #all.logits do z = z + math.exp(all.logits[i] - all.logits[1]) end
    for i = 1, #head.logits do
      assert.are.equal(all.ids[i], head.ids[i])
      mass = mass + math.exp(head.logits[i] - all.logits[1])
    end
    assert.is_true(mass / z >= 0.9)
  end)

  it("without top_k or user steps, the whole chain runs in C: same distribution as in Lua", function()
    local l = T.randn({ 1000 }, { seed = 4, std = 3 })
    for _, o in ipairs { { top_p = 0.9, temperature = 1 }, { top_p = 0.7, min_p = 0.05, temperature = 0.7 },
                         { temperature = 1.5 } } do
      -- the expected distribution, from the Lua chain's candidates (sorted, full precision)
      local all = lm.sampler { top_k = 0, temperature = 1 }:candidates(l)
      local z, cum, keep = 0, 0, #all.ids
      for i = 1, #all.logits do z = z + math.exp(all.logits[i] - all.logits[1]) end
      for i = 1, #all.logits do
        cum = cum + math.exp(all.logits[i] - all.logits[1]) / z
        if o.top_p and cum >= o.top_p then keep = i break end
      end
      local cut = o.min_p and all.logits[1] + math.log(o.min_p) or -math.huge
      local want, s = {}, 0
      for i = 1, keep do
        if all.logits[i] >= cut then
          want[all.ids[i]] = math.exp((all.logits[i] - all.logits[1]) / o.temperature)
          s = s + want[all.ids[i]]
        end
      end
      for id, e in pairs(want) do want[id] = e / s end
      -- C's draws: only kept tokens, each with its probability, at the right frequencies
      local a = lm.sampler { top_k = 0, top_p = o.top_p, min_p = o.min_p, temperature = o.temperature, seed = 3 }
      local b = lm.sampler { top_k = 0, top_p = o.top_p, min_p = o.min_p, temperature = o.temperature, seed = 3,
                             steps = { function() end } } -- a user step: the Lua chain
      local ca, cb, n = {}, {}, 4000
      for _ = 1, n do
        local id, p = a:sample(l)
        assert.is_not_nil(want[id], "drew a token outside the kept set")
        assert.is_true(math.abs(p - want[id]) <= 1e-5 * want[id] + 1e-9, ("p %g, want %g"):format(p, want[id]))
        ca[id] = (ca[id] or 0) + 1
        local jd = b:sample(l)
        cb[jd] = (cb[jd] or 0) + 1
      end
      for id, p in pairs(want) do
        if p > 0.05 then
          local sd = math.sqrt(p * (1 - p) / n)
          assert.is_true(math.abs((ca[id] or 0) / n - p) < 5 * sd, ("C: token %d %d/%d, p %.3f"):format(id, ca[id] or 0, n, p))
          assert.is_true(math.abs((cb[id] or 0) / n - p) < 5 * sd, ("Lua: token %d %d/%d, p %.3f"):format(id, cb[id] or 0, n, p))
        end
      end
      -- the same seed gives the same draws
      local a2 = lm.sampler { top_k = 0, top_p = o.top_p, min_p = o.min_p, temperature = o.temperature, seed = 3 }
      local a3 = lm.sampler { top_k = 0, top_p = o.top_p, min_p = o.min_p, temperature = o.temperature, seed = 3 }
      for _ = 1, 50 do assert.are.equal(a2:sample(l), a3:sample(l)) end
    end
    -- greedy: the best (lowest id among equals); every token banned: no token (#11)
    assert.are.equal(2, (lm.sampler { top_k = 0, temperature = 0 }:sample(T{ 1, 2, 3, 3 })))
    local none, err = lm.sampler { top_k = 0, logit_bias = { [0] = -math.huge, [1] = -math.huge } }:sample(T{ 1, 2 })
    assert.is_nil(none)
    assert.matches("^no token has finite probability", err)
    assert.are.equal(1, (lm.sampler { top_k = 0, logit_bias = { [0] = -math.huge } }:sample(T{ 5, 2 })))
  end)

  it("mirostat v2 adapts mu toward tau", function()
    local l = T.randn({ 512 }, { seed = 2, std = 3 })
    local s = lm.sampler { mirostat = 2, mirostat_tau = 3, mirostat_eta = 0.1, top_k = 0, temperature = 1, seed = 1 }
    assert.are.equal(6, s.mu)
    for _ = 1, 200 do s:sample(l) end
    assert.is_true(s.mu ~= 6)
    assert.is_true(s.mu > 0 and s.mu < 12)
  end)

  it("a token mask (core.candidates' allow) bans tokens before bias and penalties, in every path", function()
    local core = require "moonlm.core"
    -- allowed: ids 0, 2, 3, 5 (bits 0, 2, 3, 5 of the one byte: 45)
    local mask = string.char(45)
    local ids, vals = core.candidates(logits, { top_k = 0, allow = mask, bias = { [1] = 10 }, history = { 4 },
                                                repeat_penalty = 0.5 })
    assert.are.same({ 2, 0, 5, 3, 1, 4 }, ids)
    assert.are.same({ 2, 1, 0.5, -1, -math.huge, -math.huge }, vals)
    assert.are.equal(2, (core.candidates(logits, { top_k = 0, allow = mask, draw = 0.9, temperature = 0 })))
    -- 300 tokens, every third allowed: the whole-vocabulary draw and the top-k path keep to them
    local n, bytes = 300, {}
    for b = 0, math.floor((n + 7) / 8) - 1 do
      local x = 0
      for i = 0, 7 do if (8 * b + i) % 3 == 0 then x = x + 2 ^ i end end
      bytes[#bytes + 1] = string.char(x)
    end
    local big, rng = T.randn({ n }, { seed = 3 }), core.rng(1)
    for _ = 1, 200 do
      local id = core.candidates(big, { top_k = 0, allow = table.concat(bytes), draw = rng:uniform(), top_p = 0.9 })
      assert.are.equal(0, id % 3)
    end
    local top = core.candidates(big, { top_k = 100, allow = table.concat(bytes) })
    for i, id in ipairs(top) do assert.are.equal(i <= 100 and 0 or 1, id % 3) end
    assert.has_error(function() core.candidates(logits, { allow = "ab" }) end,
      "bad argument #2 to 'candidates' (allow has 2 bytes, the vocabulary needs 1)")
  end)

  it("user steps see the top_k candidates and can edit them", function()
    local seen
    local s = lm.sampler { temperature = 0, top_k = 3, steps = {
      function(c) seen = #c.ids; table.remove(c.ids, 1); table.remove(c.logits, 1) end,
    } }
    assert.are.equal(4, s:sample(logits))
    assert.are.equal(3, seen)
    local bad = lm.sampler { temperature = 0, steps = { function() return { ids = {}, logits = {} } end } }
    assert.has_error(function() bad:sample(logits) end)
  end)

  local bad = {
    { { top_p = 0 }, "bad argument #1 to 'sampler' (option 'top_p' must be a number in (0, 1], got 0)" },
    { { temperature = "hot" }, "bad argument #1 to 'sampler' (option 'temperature' must be a number, got string)" },
    { { mirostat = 1 }, "bad argument #1 to 'sampler' (option 'mirostat' must be 0 or 2 (v1 is not supported), got 1)" },
    { { logit_bias = 3 }, "bad argument #1 to 'sampler' (option 'logit_bias' must be a table { [token id] = bias }, got number)" },
  }
  for _, c in ipairs(bad) do
    it("rejects " .. c[2], function()
      local ok, err = pcall(lm.sampler, c[1])
      assert.is_false(ok)
      assert.are.equal(c[2], (tostring(err):gsub("^[^:]*:%d+: ", "")))
    end)
  end
end)

describe("generation", function()
  local model = assert(lm.load(stories))
  local greedy = { temperature = 0 }

  it("greedy generation from BOS is the reference story", function()
    local text, info = model:generate({ 1 }, { temperature = 0, max_tokens = 100 })
    for i = 1, 100 do assert.are.equal(ref.greedy_ids[i], info.ids[i], "token " .. i) end
    assert.are.equal(model:detokenize(info.ids), text)
    assert.are.equal("length", info.stop_reason)
    assert.are.equal(100, info.tokens)
    assert.are.equal(1, info.prompt_tokens)
    assert.is_true(info.gen_tps > 0 and info.prompt_tps > 0)
  end)

  it("stream gives the same text in valid UTF-8 pieces, inside a coroutine too", function()
    local text = model:generate("Once upon a time", { temperature = 0, max_tokens = 60 })
    local parts = {}
    for piece, info in model:stream("Once upon a time", { temperature = 0, max_tokens = 60 }) do
      assert.is_true(#piece > 0 and valid_utf8(piece))
      assert.are.equal("table", type(info))
      parts[#parts + 1] = piece
    end
    assert.are.equal(text, table.concat(parts))
    local co = coroutine.wrap(function()
      for piece in model:stream("Once upon a time", { temperature = 0, max_tokens = 60 }) do coroutine.yield(piece) end
    end)
    local got = {}
    for piece in co do got[#got + 1] = piece end
    assert.are.equal(text, table.concat(got))
  end)

  it("stop strings end generation, across token boundaries, and are never emitted", function()
    local full = model:generate("Once upon a time", { temperature = 0, max_tokens = 80 })
    for _, stop in ipairs { "Lily", "ere was", " a", "ball." } do
      local at = full:find(stop, 1, true)
      assert.truthy(at, stop)
      local text, info = model:generate("Once upon a time", { temperature = 0, max_tokens = 80, stop = { "zzz", stop } })
      assert.are.equal(full:sub(1, at - 1), text)
      assert.are.equal("stop", info.stop_reason)
      local streamed = {}
      for p in model:stream("Once upon a time", { temperature = 0, max_tokens = 80, stop = stop }) do streamed[#streamed + 1] = p end
      assert.are.equal(text, table.concat(streamed))
    end
  end)

  it("end-of-generation tokens, stop_tokens, on_token abort", function()
    local text, info = model:generate("Once", { temperature = 0, logit_bias = { [2] = 100 } })
    assert.are.equal("", text)
    assert.are.equal("eos", info.stop_reason)
    assert.are.equal(0, info.tokens)
    local _, base = model:generate("Once", { temperature = 0, max_tokens = 10 })
    local _, st = model:generate("Once", { temperature = 0, max_tokens = 10, stop_tokens = { base.ids[4] } })
    assert.are.equal(3, st.tokens)
    assert.are.equal("eos", st.stop_reason)
    local calls = 0
    local _, ab = model:generate("Once", { temperature = 0, max_tokens = 50, on_token = function(piece, id)
      calls = calls + 1
      assert.are.equal(base.ids[calls], id)
      return calls < 5
    end })
    assert.are.equal(5, ab.tokens)
    assert.are.equal("abort", ab.stop_reason)
  end)

  it("the same seed gives the same text; another seed another", function()
    local o = { temperature = 1.0, top_k = 40, top_p = 0.95, max_tokens = 40 }
    o.seed = 7
    local a = model:generate("The dog", o)
    local b = model:generate("The dog", o)
    o.seed = 8
    local c = model:generate("The dog", o)
    assert.are.equal(a, b)
    assert.are_not.equal(a, c)
  end)

  it("runs in a given context and sequence, and says when the context is full", function()
    local ctx = assert(model:context { n_ctx = 32, seqs = 2 })
    local text, info = model:generate("Once upon a time", { temperature = 0, max_tokens = 100, context = ctx, seq = 1 })
    assert.are.equal("length", info.stop_reason)
    assert.is_true(info.context_full)
    assert.are.equal(32, ctx:pos(1))
    assert.are.equal(0, ctx:pos(0))
    assert.truthy(#text > 0)
  end)
end)

describe("chat sessions", function()
  local model = assert(lm.load(stories))

  it("each turn prefills only what is new, and replies as a full prefill would", function()
    local chat = model:chat { system = "Tell a story.", template = "chatml", temperature = 0, max_tokens = 16, n_ctx = 512 }
    local r1, i1 = chat:say("Once upon a time there was a cat.")
    assert.are.equal(0, i1.cached_tokens)
    local r2, i2 = chat:say("What did the cat do?")
    assert.is_true(i2.cached_tokens > i1.prompt_tokens)
    local full = model:apply_template(chat:messages(), { template = "chatml", add_generation_prompt = false })
    -- the same reply from scratch: render the whole conversation and generate
    local msgs = { { role = "system", content = "Tell a story." }, { role = "user", content = "Once upon a time there was a cat." },
                   { role = "assistant", content = r1 }, { role = "user", content = "What did the cat do?" } }
    local prompt = assert(model:apply_template(msgs, { template = "chatml" }))
    local ids = model:tokenize(prompt, { special = true })
    local again = model:generate(ids, { temperature = 0, max_tokens = 16 })
    assert.are.equal(again, r2)
    assert.are.equal(#ids, i2.cached_tokens + i2.prompt_tokens)
    assert.are.equal(4, #chat.history)
    assert.truthy(full:find("What did the cat do?", 1, true))
    chat:reset()
    assert.are.equal(0, #chat.history)
  end)

  it("stream records the turn", function()
    local chat = model:chat { template = "zephyr", temperature = 0, max_tokens = 10 }
    local parts = {}
    for piece in chat:stream("Hello") do parts[#parts + 1] = piece end
    assert.are.equal(2, #chat.history)
    assert.are.equal(table.concat(parts), chat.history[2].content)
  end)

  it("drops the oldest turns when the context overflows, keeping the system prompt", function()
    local chat = model:chat { system = "Be short.", template = "chatml", temperature = 0, max_tokens = 16, n_ctx = 128 }
    local truncated = false
    for i = 1, 6 do
      local reply, info = chat:say("Tell me about the dog number " .. i)
      assert.truthy(reply)
      truncated = truncated or info.truncated
    end
    assert.is_true(truncated)
    assert.is_true(#chat.history < 12)
    assert.are.equal("Be short.", chat:messages()[1].content)
  end)

  it("save and chat_load resume without re-prefilling", function()
    local path = S.tmpname(".chat")
    local chat = model:chat { system = "Tell a story.", template = "chatml", temperature = 0, max_tokens = 12 }
    chat:say("A dog ran.")
    assert(chat:save(path))
    local back = assert(lm.chat_load(model, path))
    assert.are.same(chat.history, back.history)
    local r1, i1 = back:say("Then?")
    local r2, i2 = chat:say("Then?")
    assert.are.equal(r2, r1)
    assert.are.equal(i2.prompt_tokens, i1.prompt_tokens)
    assert.is_true(i1.cached_tokens > 0)
    -- another model, a damaged file, a missing file
    local other = assert(lm.load(S.path("ref/mini-f32.gguf")))
    local c, err = lm.chat_load(other, path)
    assert.is_nil(c)
    assert.truthy(err:find("saved with another model", 1, true))
    local data = S.read_file(path)
    local f = io.open(path, "wb") f:write(data:sub(1, #data - 10)) f:close()
    c, err = lm.chat_load(model, path)
    assert.is_nil(c)
    assert.truthy(err:find("damaged", 1, true))
    f = io.open(path, "wb") f:write("hello") f:close()
    c, err = lm.chat_load(model, path)
    assert.is_nil(c)
    assert.truthy(err:find("not a moonlm chat file", 1, true))
    os.remove(path)
  end)

  it("template errors are reported", function()
    assert.has_error(function() model:chat { template = "{% for %}" } end)
    assert.has_error(function() model:chat { template = "nosuchtemplate" } end,
      "bad option 'template' (no built-in template 'nosuchtemplate')")
  end)
end)

describe("embeddings", function()
  local model = assert(lm.load(stories))

  it("identical texts, unit length, batching does not change rows", function()
    local e = model:embed({ "the cat sat", "the cat sat", "a dog ran far" }, { normalize = true })
    assert.are.same({ 3, 64 }, e:shape())
    S.near(e[1], e[2], 0)
    assert.is_true(math.abs(e[1]:matmul(e[1]):item() - 1) < 1e-5)
    S.near(model:embed("a dog ran far", { normalize = true })[1], e[3], 1e-5)
    -- many texts go through in groups of sequences: the same rows as one at a time
    local texts = {}
    for i = 1, 20 do texts[i] = ("text number %d about a cat"):format(i) end
    local many = model:embed(texts)
    assert.are.same({ 20, 64 }, many:shape())
    for _, i in ipairs { 1, 7, 20 } do S.near(many[i], model:embed(texts[i])[1], 1e-5) end
    for _, pooling in ipairs { "last", "cls" } do
      local p = model:embed({ "the cat sat", "a dog" }, { pooling = pooling, normalize = false })
      assert.are.same({ 2, 64 }, p:shape())
    end
    assert.has_error(function() model:embed("x", { pooling = "max" }) end)
  end)
end)
