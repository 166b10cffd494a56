-- Issue #11: hostile input and API misuse end as clear errors, never a crash, a hang or a
-- silently wrong answer. One describe per item of the issue.
local lm = require "moonlm"
local support = require "support"

local MODEL = support.path("models/stories260K.gguf")

describe("read-only tensors (#11.1)", function()
  local tensors, model
  setup(function()
    tensors = assert(lm.load_tensors(MODEL))
    model = assert(lm.load(MODEL))
  end)
  teardown(function() model:close() end)

  local RO = "read%-only tensor %(it maps a model file; clone%(%) gives a writable copy%)"

  it("refuses every in-place method on a view of the mapping, and the tensor stays as it was", function()
    local w = tensors["token_embd.weight"]
    assert.equal("f32", w.dtype)
    local before = w[1][1]
    local names = {}
    for name in pairs(getmetatable(w).methods) do
      if name:sub(-1) == "_" then names[#names + 1] = name end
    end
    table.sort(names)
    -- every writing method of the tensor API, so a new one cannot slip past this spec
    assert.is_true(#names >= 25, table.concat(names, " "))
    for _, name in ipairs(names) do
      local ok, err = pcall(w[name], w, 0)
      assert.is_false(ok, name)
      assert.matches("bad argument #1 to '" .. name:gsub("_", "%%_") .. "' %(" .. RO, err)
    end
    local ok, err = pcall(w.set, w, 1, 1, 5)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'set' %(" .. RO, err)
    ok, err = pcall(function() w[1][1] = 5 end)
    assert.is_false(ok)
    assert.matches("cannot assign into a " .. RO, err)
    ok, err = pcall(function() w[2] = 0 end)
    assert.is_false(ok)
    assert.matches("cannot assign into a " .. RO, err)
    assert.equal(before, w[1][1])
  end)

  it("refuses writes through a model's tensors, views of them and grammar masks", function()
    local w = model:tensor("output_norm.weight")
    local before = w[1]
    for _, f in ipairs {
      function() w:fill_(0) end,
      function() w:narrow(1, 1, 4):add_(1) end,
      function() w:view(-1):mul_(2) end,
      function() w:t() end, -- a view: fine, writes below
    } do pcall(f) end
    assert.equal(before, w[1])
    local ok, err = pcall(function() w:narrow(1, 1, 4):add_(1) end)
    assert.is_false(ok)
    assert.matches(RO, err)
    local emb = model:tensor("token_embd.weight")
    local x = lm.tensor.randn({ 1, 64 }, { seed = 1 })
    ok, err = pcall(x.linear_many, x, { model:tensor("blk.0.attn_q.weight") }, nil, { emb:narrow(1, 1, 1) })
    assert.is_false(ok)
    assert.matches("bad argument #4 to 'linear_many' %(out 1 is a read%-only tensor%)", err)
    local g = lm.grammar.choice { "yes", "no" }
    local m = g:matcher(model)
    ok, err = pcall(m.apply, m, emb[1])
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'apply' %(" .. RO, err)
  end)

  it("gives writable copies: clone() and to()", function()
    local w = tensors["token_embd.weight"]
    local c = w:clone()
    c:fill_(3)
    assert.equal(3, c[1][1])
    assert.are_not.equal(3, w[1][1])
    local h = w:to("f16")
    h[1][1] = 2
    assert.equal(2, h[1][1])
    -- the model generates what it generated before anything tried to write into it
    local text = model:generate("Once", { max_tokens = 8, temperature = 0 })
    assert.is_false(pcall(function() model:tensor("output_norm.weight"):zero_() end))
    assert.is_false(pcall(function() model:tensor("blk.0.attn_q.weight"):add_(1) end))
    assert.equal(text, model:generate("Once", { max_tokens = 8, temperature = 0 }))
  end)
end)

describe("options (#11 API hygiene)", function()
  local model
  setup(function() model = assert(lm.load(MODEL)) end)
  teardown(function() model:close() end)

  local function refuses(pattern, f, ...)
    local ok, err = pcall(f, ...)
    assert.is_false(ok)
    assert.matches(pattern, err)
  end

  it("names unknown options, with the nearest known one", function()
    for _, case in ipairs {
      { "generate", function() return model:generate("Hi", { max_token = 5 }) end, "max_token", "max_tokens", 2 },
      { "stream", function() return model:stream("Hi", { temprature = 0 }) end, "temprature", "temperature", 2 },
      { "load", function() return lm.load(MODEL, { thread = 2 }) end, "thread", "threads", 2 },
      { "context", function() return model:context { nctx = 64 } end, "nctx", "n_ctx", 2 },
      { "sampler", function() return lm.sampler { top_kk = 3 } end, "top_kk", "top_k", 1 },
      { "embed", function() return model:embed("x", { normalise = true }) end, "normalise", "normalize", 2 },
      { "chat", function() return model:chat { sytem = "x" } end, "sytem", "system", 1 },
    } do
      local fname, f, bad, good, argn = case[1], case[2], case[3], case[4], case[5]
      refuses(("bad argument #%d to '%s' %%(unknown option '%s' %%(did you mean '%s'%%?%%)%%)"):format(argn, fname, bad, good), f)
    end
    refuses("unknown option 'colour'%)$", model.generate, model, "Hi", { colour = "red" })
    local chat = model:chat {}
    refuses("bad argument #2 to 'say' %(unknown option 'max_tokenz' %(did you mean 'max_tokens'%?%)%)", chat.say, chat, "Hi", { max_tokenz = 3 })
    refuses("bad argument #2 to 'say' %(option 'system' does not apply here", chat.say, chat, "Hi", { system = "x" })
    chat:close()
  end)

  it("refuses values of the wrong kind, naming the option", function()
    refuses("bad argument #2 to 'generate' %(option 'max_tokens' must be a whole number >= 0, got string%)",
      model.generate, model, "Hi", { max_tokens = "5" })
    refuses("option 'max_tokens' must be a whole number >= 0, got nan", model.generate, model, "Hi", { max_tokens = 0 / 0 })
    refuses("option 'max_tokens' must be a whole number >= 0, got %-1", model.generate, model, "Hi", { max_tokens = -1 })
    refuses("option 'max_tokens' must be a whole number >= 0, got 2.5", model.generate, model, "Hi", { max_tokens = 2.5 })
    refuses("bad argument #2 to 'load' %(option 'threads' must be a whole number >= 1, got string%)",
      lm.load, MODEL, { threads = "two" })
    refuses("option 'temperature' must be a number, got nan", model.generate, model, "Hi", { temperature = 0 / 0 })
    refuses("option 'kv_type' must be a string, got number", model.context, model, { kv_type = 8 })
    refuses("option 'pooling' must be \"mean\", \"cls\", \"last\", \"none\" or \"rank\", got \"avg\"", model.embed, model, "x", { pooling = "avg" })
    refuses("option 'on_token' must be a function, got boolean", model.generate, model, "Hi", { on_token = true })
    refuses("option 'stop_tokens' must be a table of token ids", model.generate, model, "Hi", { stop_tokens = { "x" } })
    -- the sampler's ranges, checked with the other options (not later, by an inner function)
    refuses("bad argument #2 to 'generate' %(option 'top_p' must be a number in %(0, 1%], got %-1%)",
      model.generate, model, "Hi", { top_p = -1 })
    refuses("option 'min_p' must be a number in %[0, 1%], got 2", model.generate, model, "Hi", { min_p = 2 })
    refuses("option 'typical_p' must be a number in %(0, 1%], got 0", model.generate, model, "Hi", { typical_p = 0 })
    refuses("option 'repeat_penalty' must be a number > 0, got 0", model.generate, model, "Hi", { repeat_penalty = 0 })
    refuses("option 'mirostat' must be 0 or 2 %(v1 is not supported%), got 1", model.generate, model, "Hi", { mirostat = 1 })
    refuses("bad argument #1 to 'sampler' %(option 'top_p' must be a number in %(0, 1%], got 0%)", lm.sampler, { top_p = 0 })
    -- a seed must fit the generator (2^70 has no 64-bit integer form)
    refuses("bad argument #2 to 'generate' %(option 'seed' must be a number from %-2%^63 to 2%^63, got 1%.18", model.generate,
      model, "Hi", { seed = 2 ^ 70 })
    -- logit_bias: ids whole numbers, biases numbers but not NaN
    refuses("option 'logit_bias' must be a table { %[token id%] = bias } with biases numbers %(not NaN%)",
      model.generate, model, "Hi", { logit_bias = { [5] = 0 / 0 } })
    refuses("option 'logit_bias' must be a table { %[token id%] = bias } with ids whole numbers >= 0",
      lm.sampler, { logit_bias = { ["5"] = 1 } })
  end)

  it("refuses options that cannot work here, saying why", function()
    refuses("bad argument #2 to 'load' %(option 'n_gpu_layers' is not supported: moonlm runs on the CPU%)",
      lm.load, MODEL, { n_gpu_layers = 99 })
    refuses("option 'n_gpu_layers' is not supported", model.generate, model, "Hi", { n_gpu_layers = 99 })
    refuses("option 'temperature' is a sampler option: with option 'sampler', set it on that sampler",
      model.generate, model, "Hi", { sampler = lm.sampler { temperature = 0 }, temperature = 0.5 })
  end)

  it("max_tokens = 0 generates nothing, and good options work as before", function()
    local text, info = model:generate("Once upon", { max_tokens = 0 })
    assert.equal("", text)
    assert.equal(0, info.tokens)
    assert.equal("length", info.stop_reason)
    local a = model:generate("Once upon", { max_tokens = 6, temperature = 0, stop = { "zzz" }, seed = 1 })
    local b = model:generate("Once upon", { max_tokens = 6, sampler = lm.sampler { temperature = 0 } })
    assert.equal(a, b)
    assert.is_true(#a > 0)
  end)

  it("is one table other modules extend", function()
    local options = require "moonlm.options"
    options.schemas.sampler.my_knob = "count"
    finally(function() options.schemas.sampler.my_knob = nil end)
    -- an option of the sampler is one of generate and of a chat's turns too
    assert.is_true(options.names("generate").my_knob)
    assert.is_true(options.names("say").my_knob)
    assert.is_nil(options.names("generate").model)
    assert.equal("max_tokens", options.suggest("generate", "max_token"))
    assert.is_nil(options.suggest("generate", "zebra"))
  end)
end)

describe("template budgets (#11.2)", function()
  local T = require "moonlm.template"
  -- the work, memory or CPU time budget, or the longest string (which of them comes first
  -- depends on the interpreter's speed)
  local BUDGET = { "exceeded its [a-z]+ limit", "MemoryError: [a-z]+ longer than 4194304 bytes" }

  -- each case: a template from an untrusted GGUF that used to run for minutes or take
  -- gigabytes; now a clear error from the budget (work, memory, CPU time or string size)
  local HOSTILE = {
    { "a list doubled in a loop (300 s and 9.4 GB before)",
      "{% set ns = namespace(a=[]) %}{% for i in range(10000) %}{% set ns.a = ns.a + ns.a + [1] %}{% endfor %}", BUDGET },
    { "a list repeated", "{% set ns = namespace(a=[1]) %}{% for i in range(100) %}{% set ns.a = ns.a * 2 %}{% endfor %}", BUDGET },
    { "printing a list that holds itself twice, 60 deep",
      "{% set ns = namespace(a=[1]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a }}", BUDGET },
    { "tojson of it", "{% set ns = namespace(a=[1]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a|tojson }}", BUDGET },
    { "comparing two of them",
      "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}{{ ns.a == ns.b }}", BUDGET },
    { "a macro calling itself twice", "{% macro m(n) %}{% if n > 0 %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(90) }}", BUDGET },
    { "a string doubled", "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "MemoryError" },
    { "join of a huge list",
      "{% set ns = namespace(a=['xxxxxxxxxxxxxxxx']) %}{% for i in range(30) %}{% set ns.a = ns.a + ns.a %}{% endfor %}{{ ns.a|join(',') }}", BUDGET },
    { "a long loop body", "{% for i in range(1000000) %}" .. string.rep("{{ i + 1 }}", 2000) .. "{% endfor %}", BUDGET },
    { "replace that squares a string",
      "{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('x', ns.s) %}{% endfor %}", "MemoryError" },
    { "indent by a huge width", "{{ ('a\\n' * 100000)|indent(100000) }}", "MemoryError" },
    { "sorting again and again", "{% for i in range(1000) %}{{ range(100000)|list|sort|length }}{% endfor %}", BUDGET },
  }
  for _, c in ipairs(HOSTILE) do
    it("stops " .. c[1], function()
      local out, err, info = T.render(c[2], {})
      assert.is_nil(out)
      local pats = type(c[3]) == "table" and c[3] or { c[3] }
      local hit = false
      for _, p in ipairs(pats) do hit = hit or err:find(p) ~= nil end
      assert.is_true(hit, err)
      assert.equal("runtime", info.kind)
    end)
  end

  it("lexes in linear time: a template of many {{ \"x\" }} renders, a 10 MB one is refused", function()
    local n = 14000 -- 126 KB of source, under the 128 KiB limit
    local out = assert(T.render(string.rep('{{ "x" }}', n), {}))
    assert.equal(string.rep("x", n), out)
    local big = string.rep('{{ "x" }}', math.floor(10 * 1024 * 1024 / 9))
    local t, err, info = T.compile(big)
    assert.is_nil(t)
    assert.equal(("line 0: template source too long (%d bytes; the limit is 131072)"):format(#big), err)
    assert.equal("syntax", info.kind)
  end)

  it("counts lines past long stretches without newlines", function()
    local src = string.rep('{{ "x" }}', 5000) .. "\n\n{{ 1 / 0 }}"
    local _, err = T.render(src, {})
    assert.equal("line 3: ZeroDivisionError: division by zero", err)
  end)

  it("gives every render a fresh budget, and the limits can be changed", function()
    local src = "{% for i in range(30000) %}{{ i % 2 }}{% endfor %}"
    for _ = 1, 3 do assert.is_string(T.render(src, {})) end
    local old = T.LIMITS.steps
    T.LIMITS.steps = 1000
    finally(function() T.LIMITS.steps = old end)
    local out, err = T.render(src, {})
    assert.is_nil(out)
    assert.equal("line 1: template exceeded its work limit (1000 steps)", err)
  end)
end)

describe("one generation at a time on a sequence (#11.3)", function()
  local model
  setup(function() model = assert(lm.load(MODEL)) end)
  teardown(function() model:close() end)

  local function greedy(prompt, n) return model:generate(prompt, { max_tokens = n, temperature = 0 }) end

  it("refuses generate from inside another generation's on_token", function()
    local inner_err
    local text = model:generate("Once upon", { max_tokens = 4, temperature = 0, on_token = function()
      local ok, err = pcall(model.generate, model, "The cat", { max_tokens = 2 })
      inner_err = inner_err or (not ok and err)
    end })
    assert.matches("the default context is busy: a generation on it is running", inner_err)
    assert.equal(greedy("Once upon", 4), text) -- the outer one is unharmed
  end)

  it("interleaved streams: the later one runs, the earlier one raises when resumed", function()
    local want_b = greedy("The cat", 6)
    local a = model:stream("Once upon", { max_tokens = 6, temperature = 0 })
    assert.is_string(a())
    local parts = {}
    for piece in model:stream("The cat", { max_tokens = 6, temperature = 0 }) do parts[#parts + 1] = piece end
    assert.equal(want_b, table.concat(parts))
    local ok, err = pcall(a)
    assert.is_false(ok)
    assert.matches("the default context is busy: a later generation took it over", err)
  end)

  it("a stream left early does not block the next generation", function()
    for piece in model:stream("Once upon", { max_tokens = 20, temperature = 0 }) do
      if piece then break end
    end
    assert.equal(greedy("The cat", 5), (model:generate("The cat", { max_tokens = 5, temperature = 0 })))
  end)
end)

describe("load-time model checks (#11.4)", function()
  local T = lm.tensor
  -- a tiny llama: every tensor a family declares, random weights
  local function tiny(over, V)
    local E, FF, L = 32, 64, 1
    V = V or 40
    local t = {
      ["token_embd.weight"] = T.randn({ V, E }, { seed = 1 }),
      ["output_norm.weight"] = T.ones(E),
      ["output.weight"] = T.randn({ V, E }, { seed = 2 }),
    }
    for l = 0, L - 1 do
      local p = "blk." .. l .. "."
      t[p .. "attn_norm.weight"] = T.ones(E)
      t[p .. "attn_q.weight"] = T.randn({ E, E }, { seed = 3 })
      t[p .. "attn_k.weight"] = T.randn({ E, E }, { seed = 4 })
      t[p .. "attn_v.weight"] = T.randn({ E, E }, { seed = 5 })
      t[p .. "attn_output.weight"] = T.randn({ E, E }, { seed = 6 })
      t[p .. "ffn_norm.weight"] = T.ones(E)
      t[p .. "ffn_gate.weight"] = T.randn({ FF, E }, { seed = 7 })
      t[p .. "ffn_up.weight"] = T.randn({ FF, E }, { seed = 8 })
      t[p .. "ffn_down.weight"] = T.randn({ E, FF }, { seed = 9 })
    end
    local tokens, scores, types = {}, {}, {}
    for i = 1, V do
      tokens[i] = i <= 3 and ({ "<unk>", "<s>", "</s>" })[i] or string.char(96 + (i % 26) + 1) .. i
      scores[i] = 0
      types[i] = i <= 3 and 3 or 1
    end
    local meta = {
      ["general.architecture"] = "llama", ["llama.context_length"] = 64, ["llama.embedding_length"] = E,
      ["llama.block_count"] = L, ["llama.feed_forward_length"] = FF, ["llama.attention.head_count"] = 4,
      ["llama.attention.head_count_kv"] = 4, ["llama.attention.layer_norm_rms_epsilon"] = lm.gguf_value("f32", 1e-5),
      ["tokenizer.ggml.model"] = "llama", ["tokenizer.ggml.tokens"] = tokens, ["tokenizer.ggml.scores"] = scores,
      ["tokenizer.ggml.token_type"] = types, ["tokenizer.ggml.bos_token_id"] = 1, ["tokenizer.ggml.eos_token_id"] = 2,
    }
    if over then over(t, meta) end
    local path = support.tmpname(".gguf")
    assert(lm.save(path, t, meta))
    return path
  end

  it("loads the well-formed file", function()
    local m = assert(lm.load(tiny()))
    assert.is_string(m:generate("a", { max_tokens = 2, temperature = 0 }))
    m:close()
  end)

  local BAD = {
    { "a tokenizer smaller than token_embd", function(t, meta)
        local toks = {}
        for i = 1, 30 do toks[i] = meta["tokenizer.ggml.tokens"][i] end
        meta["tokenizer.ggml.tokens"] = toks
        meta["tokenizer.ggml.scores"], meta["tokenizer.ggml.token_type"] = nil, nil
      end, "the tokenizer has 30 tokens but token_embd.weight has 40 rows" },
    { "token_embd stored as i32", function(t) t["token_embd.weight"] = t["token_embd.weight"]:to("i32") end,
      "tensor 'token_embd.weight' has type i32, which no matrix kernel takes" },
    { "output_norm stored as i8", function(t) t["output_norm.weight"] = t["output_norm.weight"]:to("i8") end,
      "tensor 'output_norm.weight' has type i8; a vector of weights is f32, f16 or bf16" },
    { "a weight no matmul kernel takes (f64)", function(t) t["blk.0.attn_q.weight"] = t["blk.0.attn_q.weight"]:to("f64") end,
      "tensor 'blk.0.attn_q.weight' has type f64, which no matrix kernel takes" },
  }
  it("refuses a tensor whose type does not match its data (q4_0 bytes labelled q8_0)", function()
    local T = lm.tensor
    local path = support.tmpname(".gguf")
    assert(lm.save(path, { ["a.weight"] = T.randn({ 4, 64 }, { seed = 1 }):quantize("q4_0"),
                           ["b.weight"] = T.randn({ 4, 64 }, { seed = 2 }):quantize("q4_0") }, {}))
    local data = support.read_file(path)
    local at = assert(data:find("a.weight", 1, true)) + #"a.weight" -- then n_dims, 2 dims, type
    assert.equal(2, data:byte(at + 20))                             -- q4_0
    local f = assert(io.open(path, "wb"))
    f:write(data:sub(1, at + 19), string.char(8), data:sub(at + 21)) -- q8_0
    f:close()
    local t, err = lm.load_tensors(path)
    assert.is_nil(t)
    assert.matches("tensor 'a.weight': 272 bytes of q8_0 at offset 0 run into tensor 'b.weight' at offset 160", err, 1, true)
  end)

  it("a file rewritten in place is loaded again, not shared with the load of its old bytes", function()
    local path = support.tmpname(".gguf")
    local function put(src) -- in place, as cp or a download tool writes (lm.save renames)
      local f = assert(io.open(path, "wb"))
      f:write(support.read_file(src))
      f:close()
    end
    put(tiny(nil, 40))
    local a = assert(lm.load(path))
    assert.equal(40, a.n_vocab)
    local again = assert(lm.load(path)) -- unchanged: the same load, shared
    assert.equal(a.handle, again.handle)
    put(tiny(nil, 48))
    local b = assert(lm.load(path))
    assert.equal(48, b.n_vocab)
    assert.are_not.equal(a.handle, b.handle)
    assert.is_string((b:generate("a", { max_tokens = 2, temperature = 0 })))
    b:close()
  end)

  it("loads a weights-only file (no tokenizer.ggml.*): vocab is false, text in or out raises a clear error", function()
    local m = assert(lm.load(tiny(function(_, meta)
      for k in pairs(meta) do if k:match("^tokenizer%.") then meta[k] = nil end end
    end)))
    assert.is_false(m.vocab)
    assert.equal(40, m.n_vocab)
    for _, f in ipairs { function() m:tokenize("a") end, function() m:detokenize({ 1 }) end,
                         function() m:generate("a", { max_tokens = 1 }) end, function() m:chat() end } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("this model has no tokenizer", err, 1, true)
    end
    local ctx = m:context()
    local logits = ctx:decode({ 1, 5, 7 }) -- ids still run
    assert.equal(40, logits:shape()[1])
    ctx:close()
    m:close()
  end)

  for _, c in ipairs(BAD) do
    it("refuses " .. c[1] .. " at load, as nil, err", function()
      local m, err = lm.load(tiny(c[2]))
      assert.is_nil(m)
      assert.matches(c[3], err, 1, true)
    end)
  end
end)

describe("C strings, sampling, token ids (#11.5-7)", function()
  local model
  setup(function() model = assert(lm.load(MODEL)) end)
  teardown(function() model:close() end)

  it("refuses paths and names with a zero byte", function()
    local ZB = "string with a zero byte %(a path or a name cannot hold one%)"
    local ok, err = pcall(lm.load, MODEL .. "\0junk")
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'load' %(" .. ZB, err)
    ok, err = pcall(lm.load_tensors, MODEL .. "\0junk")
    assert.is_false(ok)
    assert.matches(ZB, err)
    ok, err = pcall(lm.save, support.tmpname(".gguf") .. "\0x", { a = lm.tensor.ones(2) }, {})
    assert.is_false(ok)
    assert.matches(ZB, err)
    ok, err = pcall(model.tensor, model, "output_norm.weight\0")
    assert.is_false(ok)
    assert.matches(ZB, err)
    ok, err = pcall(model.context, model, { kv_type = "f16\0x" })
    assert.is_false(ok)
  end)

  it("the sampler says when no token has finite probability", function()
    local T = lm.tensor
    local NF = "no token has finite probability"
    for _, o in ipairs { { temperature = 0.8 }, { temperature = 0 }, { top_k = 0 }, { top_k = 0, temperature = 0 },
                         { top_k = 0, top_p = 0.9 } } do
      local s = lm.sampler(o)
      for _, v in ipairs { 0 / 0, -math.huge, math.huge } do
        local id, err = s:sample(T.full({ 32 }, v), {})
        assert.is_nil(id)
        assert.matches(NF, err)
      end
      -- a logit_bias that bans every token
      local bias = {}
      for i = 0, 31 do bias[i] = -math.huge end
      o.logit_bias = bias
      local id, err = lm.sampler(o):sample(T.randn({ 32 }, { seed = 1 }), {})
      assert.is_nil(id)
      assert.matches(NF, err)
      o.logit_bias = nil
    end
    -- generate stops with the error, and everything stays usable
    local bias = {}
    for i = 0, model.n_vocab - 1 do bias[i] = -math.huge end
    local text, err, info = model:generate("Once", { max_tokens = 4, logit_bias = bias })
    assert.is_nil(text)
    assert.matches(NF, err)
    assert.equal("error", info.stop_reason)
    assert.is_string((model:generate("Once", { max_tokens = 2 })))
  end)

  it("reports token ids as given", function()
    local big = 2 ^ 32 + 5
    for _, f in ipairs {
      function() return model:piece(big) end,
      function() return model:detokenize({ 1, big }) end,
      function() return model:decoder():push(big) end,
      function() local c = model:context { n_ctx = 16 }; return c:decode({ big }) end,
      function() return model:generate({ 1, big }, { max_tokens = 2 }) end,
      function() return model:generate("Once", { max_tokens = 2, stop_tokens = { big } }) end,
      function() return model:generate("Once", { max_tokens = 2, logit_bias = { [big] = 1 } }) end,
      function() return lm.sampler({ logit_bias = { [big] = 1 } }):sample(lm.tensor.randn({ 512 }), {}) end,
    } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("token id 4294967301 out of range %(the vocabulary has 512: 0 to 511%)", err)
    end
    -- each error blames the argument or option that holds the id (not an internal function)
    for _, c in ipairs {
      { function() return model:generate({ 1, big }) end, "bad argument #1 to 'generate' %(item 2: token id 4294967301 " },
      { function() return model:stream({ 1, 2.5 }) end, "bad argument #1 to 'stream' %(item 2: 2.5 is not an integer token id%)" },
      { function() return model:generate("Once", { stop_tokens = { 3, 512 } }) end,
        "bad argument #2 to 'generate' %(option 'stop_tokens': token id 512 out of range" },
      { function() return model:generate("Once", { logit_bias = { [600] = 1 } }) end,
        "bad argument #2 to 'generate' %(option 'logit_bias': token id 600 out of range" },
      { function() return lm.sampler({ logit_bias = { [600] = 1 } }):sample(lm.tensor.randn({ 512 }), {}) end,
        "^option 'logit_bias': token id 600 out of range %(the vocabulary has 512: 0 to 511%)$" },
      -- the history the penalties read (ids out of range were skipped, as if never seen)
      { function() return lm.sampler({ repeat_penalty = 1.3 }):sample(lm.tensor.randn({ 512 }), { 5, big }) end,
        "^history item 2: token id 4294967301 out of range %(the vocabulary has 512: 0 to 511%)$" },
      { function() return lm.sampler({ presence_penalty = 0.5, top_k = 0 }):sample(lm.tensor.randn({ 512 }), { -1 }) end,
        "^history item 1: token id %-1 out of range" },
      { function() local c = model:context { n_ctx = 16 }; return c:decode_batch { { { 1 }, seq = 0 }, { { big }, seq = 0 } } end,
        "bad argument #2 to 'decode_batch' %(entry 2: token id 4294967301 out of range" },
      -- a chat turn's options name the chat's call, at the caller's line (they named 'generate')
      { function() return (model:chat():say("Hi", { stop_tokens = { 3, 512 } })) end,
        "^spec/robust_spec.lua:%d+: bad argument #2 to 'say' %(option 'stop_tokens': token id 512 out of range" },
      { function() for _ in model:chat():stream("Hi", { logit_bias = { [big] = 1 } }) do end end,
        "^spec/robust_spec.lua:%d+: bad argument #2 to 'stream' %(option 'logit_bias': token id 4294967301 out of range" },
    } do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
  end)

  it("reports indices, handles and sizes as given", function()
    local big = 2 ^ 40 + 2
    local T = lm.tensor
    for _, c in ipairs {
      { function() return T.ones(3)[big] end, "index 1099511627778 out of range %(dimension 1 has size 3%)" },
      { function() local t = T.ones(3); t[big] = 1 end, "index 1099511627778 out of range %(dimension 1 has size 3%)" },
      { function() return T.zeros { 2, -big } end, "negative dimension %-1099511627778" },
      { function() return lm.kv_cache { layers = 2 ^ 32 + 1, kv_heads = 1, head_dim = 8, n_ctx = 8 } end,
        "option 'layers' = 4294967297 out of range %[1, 65536%]" },
      { function() return lm.grammar.choice({ "a" }):matcher(model):rollback(2 ^ 32 + 1) end,
        "cannot roll back 4294967297 steps %(0 accepted%)" },
      { function() return model:embed({}) end, "bad argument #1 to 'embed' %(an empty table: no text to embed%)" },
    } do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    local m, err = lm.attach(big)
    assert.is_nil(m)
    assert.equal("no model with handle 1099511627778", err)
    m, err = lm.attach_context(2 ^ 32 + 1)
    assert.is_nil(m)
    assert.equal("no context with handle 4294967297", err)
  end)

  it("reports sequence ids as given", function()
    local big = 2 ^ 32 + 5
    local SEQ = "sequence 4294967301 out of range %(the context has 2: 0 to 1%)"
    local ctx = model:context { n_ctx = 16, seqs = 2 }
    for _, c in ipairs {
      { function() return ctx:decode({ 1 }, { seq = big }) end, "#3 to 'decode'" },
      { function() return ctx:decode_batch { { { 1 }, seq = big } } end, "#2 to 'decode_batch'" },
      { function() return ctx:copy(0, big) end, "#3 to 'copy'" },
      { function() return ctx:copy(big, 0) end, "#2 to 'copy'" },
      { function() return ctx:truncate(big, 0) end, "#2 to 'truncate'" },
      { function() return ctx:clear(big) end, "#2 to 'clear'" },
      { function() return ctx:pos(big) end, "#2 to 'pos'" },
      { function() return ctx:shift(big, 0, 1) end, "#2 to 'shift'" },
      { function() return ctx:state_save(big) end, "#2 to 'state_save'" },
      { function() return ctx:state_load(big, "") end, "#2 to 'state_load'" },
    } do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches("bad argument " .. c[2] .. " %(" .. SEQ .. "%)", err)
    end
    local ok, err = pcall(model.context, model, { n_ctx = 16, seqs = 2 ^ 32 + 1 })
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'context' %(seqs = 4294967297: at most 64 sequences%)", err)
    -- and sequence 1 (in range) still works
    assert.is_truthy(ctx:decode({ 1, 2 }, { seq = 1 }))
    assert.equal(2, ctx:pos(1))
    ctx:close()
  end)
end)

describe("context full, sessions, isa, limits (#11.7)", function()
  local model
  setup(function() model = assert(lm.load(MODEL)) end)
  teardown(function() model:close() end)

  it("generate says the prompt does not fit, unless context_shift cuts it", function()
    local long = string.rep("Once upon a time there was a cat. ", 40)
    local n = #model:tokenize(long)
    assert.is_true(n > 64)
    local text, err, info = model:generate(long, { n_ctx = 64, max_tokens = 4 })
    assert.is_nil(text)
    assert.equal(("context full: prompt of %d tokens does not fit n_ctx = 64 (context_shift = true keeps its start and end)"):format(n), err)
    assert.equal("error", info.stop_reason)
    local ok, serr = pcall(function() for _ in model:stream(long, { n_ctx = 64 }) do end end)
    assert.is_false(ok)
    assert.matches("context full: prompt of %d+ tokens does not fit n_ctx = 64", serr)
    text, info = model:generate(long, { n_ctx = 64, max_tokens = 4, context_shift = true, temperature = 0 })
    assert.is_string(text)
    assert.is_true(info.truncated > 0)
  end)

  it("chat:save keeps every option it can write and names the one it cannot", function()
    local path = support.tmpname(".chat")
    local bias = { [5] = -math.huge, [7] = 1.5 }
    local chat = model:chat { template = "chatml", temperature = 0, max_tokens = 6, stop = { "zz", "qq" },
                              logit_bias = bias, vars = { x = 1 }, stop_tokens = { 13 } }
    chat:say("Hi")
    assert(chat:save(path))
    local back = assert(lm.chat_load(model, path))
    assert.same({ "zz", "qq" }, { back.opts.stop[1], back.opts.stop[2] })
    assert.equal(-math.huge, back.opts.logit_bias[5])
    assert.equal(1.5, back.opts.logit_bias[7])
    assert.equal(1, back.opts.vars.x)
    assert.equal(13, back.opts.stop_tokens[1])
    assert.equal((chat:say("More")), (back:say("More")))
    local c2 = model:chat { template = "chatml", on_token = function() end }
    local ok, err = c2:save(path)
    assert.is_nil(ok)
    assert.matches("chat:save cannot keep option 'on_token' %(a function%)", err)
    assert(c2:save(path, { drop = { "on_token" } }))
  end)

  it("breaking out of chat:stream keeps the partial turn", function()
    local chat = model:chat { template = "chatml", temperature = 0, max_tokens = 30 }
    local got = {}
    for piece in chat:stream("Tell me a story") do
      got[#got + 1] = piece
      if #got == 3 then break end
    end
    local msgs = chat:messages()
    assert.equal("assistant", msgs[#msgs].role)
    assert.equal(table.concat(got), msgs[#msgs].content)
    assert.equal("user", msgs[#msgs - 1].role)
    assert.is_string((chat:say("And then?")))
  end)

  it("lm.isa() is one string; lm.info() has the kernels", function()
    assert.equal(1, select("#", lm.isa()))
    assert.equal(lm.info().isa, lm.isa())
    assert.is_string(lm.info().kernels.q4_0)
    assert.is_string(lm.info().kernel_tables.q8_0.dot)
  end)

  it("lm.limits caps tensor sizes with a clear error", function()
    local T = lm.tensor
    local default = lm.limits().max_tensor_bytes
    assert.is_true(default > 2 ^ 28)
    local ok, err = pcall(T.randn, { 4e9 })
    assert.is_false(ok)
    assert.matches(("a tensor of 16000000000 bytes is over the limit of %d bytes"):format(default), err)
    lm.limits { max_tensor_bytes = 1024 }
    finally(function() lm.limits { max_tensor_bytes = 0 } end)
    assert.equal(1024, lm.limits().max_tensor_bytes)
    ok, err = pcall(T.zeros, { 257 })
    assert.is_false(ok)
    assert.matches("a tensor of 1028 bytes is over the limit of 1024 bytes", err)
    assert.equal(256, T.zeros({ 256 }):numel())
    lm.limits { max_tensor_bytes = 0 }
    assert.equal(default, lm.limits().max_tensor_bytes)
  end)

  it("lm.limits caps KV caches too (cells are allocated lazily: 34 TB was accepted)", function()
    local default = lm.limits().max_tensor_bytes
    local kv, err = lm.kv_cache { layers = 1000, kv_heads = 64, head_dim = 128, n_ctx = 2 ^ 20 }
    assert.is_nil(kv)
    assert.equal(("a KV cache of 34359738368000 bytes is over the limit of %d bytes (lm.limits{ max_tensor_bytes = n }"
      .. " sets it)"):format(default), err)
    local m = assert(lm.load(MODEL))
    finally(function() lm.limits { max_tensor_bytes = 0 }; m:close() end)
    assert.is_string(m:generate("Once", { max_tokens = 2, temperature = 0, n_ctx = 64 }))
    lm.limits { max_tensor_bytes = 100000 } -- stories260K: 640 bytes a cell (K and V of 5 layers, f16)
    local ctx, cerr = m:context { n_ctx = 512 }
    assert.is_nil(ctx)
    assert.equal("a KV cache of 327680 bytes is over the limit of 100000 bytes (lm.limits{ max_tensor_bytes = n } sets it)",
      cerr)
    local ok, gerr = pcall(m.generate, m, "Once", { max_tokens = 2, n_ctx = 512 })
    assert.is_false(ok)
    assert.matches("a KV cache of 327680 bytes is over the limit", gerr, 1, true)
    ctx = assert(m:context { n_ctx = 128 }) -- 81920 bytes: under it
    ctx:close()
    lm.limits { max_tensor_bytes = 0 }
    -- the model's default context is made again after the failed replacement, not reused closed
    assert.is_string(m:generate("Once", { max_tokens = 2, temperature = 0, n_ctx = 64 }))
  end)

  it("lm.limits refuses unknown options", function()
    assert.has_error(function() lm.limits { max_tensor_byte = 1 } end,
      "bad argument #1 to 'limits' (unknown option 'max_tensor_byte' (did you mean 'max_tensor_bytes'?))")
  end)
end)
