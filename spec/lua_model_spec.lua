-- Models written in Lua: a model's weights from Lua (model:weights, model:tensor, x:linear
-- on the prepared copies).
local lm = require "moonlm"
local S = require "support"
local T = lm.tensor

local mini = S.path("ref/mini-q8_0.gguf")

describe("model weights from Lua", function()
  local model
  setup(function() model = assert(lm.load(mini)) end)
  teardown(function() model:close() end)

  it("weights() walks every tensor of the file in order; a pattern filters", function()
    local names, n = model:tensor_names(), 0
    for name, t in model:weights() do
      n = n + 1
      assert.are.equal(names[n], name)
      assert.is_true(lm.tensor.is_tensor(t))
      assert.is_true(t == model:tensor(name))
    end
    assert.are.equal(#names, n)
    local q = {}
    for name, t in model:weights("^blk%.%d+%.attn_q%.weight$") do q[#q + 1] = name .. " " .. tostring(t:shape()) end
    assert.are.same({ "blk.0.attn_q.weight {256, 256}", "blk.1.attn_q.weight {256, 256}" }, q)
    assert.has_error(function() model:weights(3) end, "bad argument #1 to 'weights' (string pattern expected, got number)")
  end)

  it("x:linear(w) on a model matrix runs its prepared copy: the same product as the rows as stored", function()
    for _, name in ipairs({ "blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight", "output.weight" }) do
      local w = model:tensor(name)
      local x = T.randn({ 3, w:size(2) }, { seed = 7 })
      local got = x:linear(w)                       -- linked: the model's packed copy
      local plain = x:linear(w:narrow(1, 1, w:size(1))) -- a view is not linked: the rows as stored
      local exact = x:linear(w:dequantize())        -- f32 reference
      local scale = exact:abs():max()
      assert.is_true((got - plain):abs():max() <= 1e-5 * scale, name)
      assert.is_true((got - exact):abs():max() <= 2e-2 * scale, name) -- activations rounded to q8_0
      -- and with a bias
      local b = T.randn({ w:size(1) }, { seed = 8 })
      assert.is_true((x:linear(w, b) - (got + b)):abs():max() <= 1e-6 * scale)
    end
    assert.has_error(function() T.randn({ 2, 5 }):linear(model:tensor("blk.0.attn_q.weight")) end,
      "bad argument #2 to 'linear' (inner dimensions 5 and 256 differ)")
  end)
end)

local nn = require "moonlm.nn"
local json = require "moonlm.json"
local Llama = dofile("examples/llama_in_lua.lua")
local stories = S.path("models/stories260K.gguf")

local function maxabs(t)
  local m = 0
  for i = 1, #t do m = math.max(m, math.abs(t[i])) end
  return m
end

describe("x:linear_many", function()
  it("gives what x:linear gives for each weight, prepared or not, with or without biases", function()
    local model = assert(lm.load(mini))
    local ws = { model:tensor("blk.0.attn_q.weight"), model:tensor("blk.0.attn_k.weight"),
                 model:tensor("blk.0.attn_v.weight") }
    for _, m in ipairs { 1, 3, 20 } do
      local x = T.randn({ m, 256 }, { seed = m })
      local a, b, c = x:linear_many(ws)
      assert.is_true(a == x:linear(ws[1]) and b == x:linear(ws[2]) and c == x:linear(ws[3]), "rows " .. m)
      -- packed weights of two types, and plain tensors (one product after the other)
      local p1, p2 = T.randn({ 48, 256 }, { seed = 1 }):quantize("q4_0"), T.randn({ 16, 256 }, { seed = 2 })
      local y1, y2 = x:linear_many { p1:pack(), p2:pack() }
      assert.is_true(y1 == x:linear(p1:pack()))
      -- f32 from 16 rows on is OpenBLAS's sgemm for x:linear: another summation order
      assert.is_true((y2 - x:linear(p2:pack())):abs():max() <= 1e-6 * y2:abs():max())
      y1, y2 = x:linear_many { p1, p2 }
      assert.is_true(y1 == x:linear(p1) and y2 == x:linear(p2))
      local bias = T.randn({ 16 }, { seed = 3 })
      y1, y2 = x:linear_many({ p1, p2 }, { nil, bias })
      assert.is_true(y1 == x:linear(p1) and y2 == x:linear(p2, bias))
    end
    -- outs: written in place and returned
    local x = T.randn({ 2, 256 }, { seed = 9 })
    local o1, o2 = T.empty(2, 256), T.empty(2, 128)
    local a, b = x:linear_many({ ws[1], ws[2] }, nil, { o1, o2 })
    assert.is_true(rawequal(a, o1) and rawequal(b, o2))
    assert.is_true(o1 == x:linear(ws[1]) and o2 == x:linear(ws[2]))
    assert.has_error(function() x:linear_many({ ws[1], ws[2] }, nil, { o2, o1 }) end,
      "bad argument #4 to 'linear_many' (out 1 must be a contiguous f32 tensor {2, 256})")
    -- g:silu_mul_(u): SwiGLU's product in place
    local g, u = T.randn({ 3, 100 }, { seed = 1 }), T.randn({ 3, 100 }, { seed = 2 })
    local want = g:silu() * u
    assert.is_true(rawequal(g:silu_mul_(u), g))
    assert.is_true((g - want):abs():max() <= 1e-5 * want:abs():max())
    assert.has_error(function() g:silu_mul_(T.ones(5)) end,
      "bad argument #2 to 'silu_mul_' (a contiguous f32 tensor of the size of self expected)")
    assert.has_error(function() T.randn({ 1, 256 }):linear_many { ws[1], 3 } end,
      "bad argument #2 to 'linear_many' (item 2 is not a tensor or a packed weight)")
    assert.has_error(function() T.randn({ 1, 256 }):linear_many {} end,
      "bad argument #2 to 'linear_many' (1 to 8 weights expected, got 0)")
    assert.has_error(function() T.randn({ 1, 128 }):linear_many { ws[1] } end,
      "bad argument #2 to 'linear_many' (inner dimensions 128 and 256 differ)")
    model:close()
  end)
end)

describe("tensor.attention on a kv_cache view", function()
  for _, ty in ipairs { "f32", "f16", "q8_0" } do
    it("reads the cache in place: the same as on the view's keys and values (" .. ty .. ")", function()
      local H, Hk, D = 6, 2, 64
      local kv = lm.kv_cache { layers = 2, kv_heads = Hk, head_dim = D, n_ctx = 200, type = ty, seqs = 2 }
      -- two chunks (a prefill of 70 across two key blocks, then one token), GQA, causal
      kv:append(1, 1, T.randn({ Hk, 70, D }, { seed = 1 }), T.randn({ Hk, 70, D }, { seed = 2 }))
      local q = T.randn({ H, 70, D }, { seed = 3 })
      local w = kv:view(1, 1)
      local got = T.attention(q, w, { causal = true })
      local want = T.attention(q, w:k(), w:v(), { causal = true })
      assert.is_true((got - want):abs():max() <= 1e-5)
      -- rows in, rows out: q {n, H·D} as a product writes it (opts.heads), the result too
      local rows = T.attention(q:transpose(1, 2):reshape(70, H * D), w, { causal = true, heads = H })
      assert.are.same({ 70, H * D }, { rows:size(1), rows:size(2) })
      assert.is_true((rows - got:transpose(1, 2):reshape(70, H * D)):abs():max() <= 1e-6)
      assert.has_error(function() T.attention(q, w, { heads = H }) end,
        "bad argument #1 to 'attention' (with heads = 6, q must be f32 rows {n, 6 · head_dim})")
      kv:append(1, 1, T.randn({ Hk, 1, D }, { seed = 4 }), T.randn({ Hk, 1, D }, { seed = 5 }))
      local q1 = T.randn({ H, 1, D }, { seed = 6 })
      w = kv:view(1, 1)
      assert.are.equal(71, #w)
      local o = { scale = 0.1, softcap = 20, window = 30, causal = true }
      got = T.attention(q1, w, w, o)
      want = T.attention(q1, w:k(), w:v(), o)
      assert.is_true((got - want):abs():max() <= 1e-5)
      -- the f32 cache holds exactly what went in
      if ty == "f32" then
        local k = T.randn({ Hk, 3, D }, { seed = 7 })
        kv:append(0, 0, k, k * 2)
        local v0 = kv:view(0, 0)
        assert.is_true((T.attention(q:narrow(2, 1, 3), v0, { causal = true }) -
                        T.attention(q:narrow(2, 1, 3), k, k * 2, { causal = true })):abs():max() <= 1e-6)
      end
    end)
  end

  it("refuses a second view, a stale view and head sizes that differ", function()
    local kv = lm.kv_cache { layers = 2, kv_heads = 2, head_dim = 32, n_ctx = 16, type = "f32" }
    kv:append(0, 0, T.randn({ 2, 4, 32 }), T.randn({ 2, 4, 32 }))
    kv:append(1, 0, T.randn({ 2, 4, 32 }), T.randn({ 2, 4, 32 }))
    local q = T.randn({ 4, 1, 32 })
    assert.has_error(function() T.attention(q, kv:view(0, 0), kv:view(1, 0)) end,
      "bad argument #3 to 'attention' (with a kv_view as k, v must be the same view (or left out))")
    assert.has_error(function() T.attention(T.randn({ 4, 1, 16 }), kv:view(0, 0)) end,
      "bad argument #2 to 'attention' (head sizes of q (16) and the kv_view (32) differ)")
    assert.has_error(function() T.attention(T.randn({ 3, 1, 32 }), kv:view(0, 0)) end,
      "bad argument #2 to 'attention' (3 query heads cannot share 2 key/value heads)")
    local w = kv:view(0, 0)
    kv:truncate(0, 2)
    assert.has_error(function() T.attention(q, w) end,
      "bad argument #2 to 'attention' (stale kv_view: its sequence was truncated, copied over or cleared since (take a new view))")
    local o = T.attention(q, kv:view(0, 0))
    assert.are.same({ 4, 1, 32 }, { o:size(1), o:size(2), o:size(3) })
  end)
end)

describe("moonlm.nn blocks", function()
  local model
  setup(function() model = assert(lm.load(mini)) end)
  teardown(function() model:close() end)

  it("compute what their formulas say, on a model's weights loaded by name", function()
    local x = T.randn({ 5, 256 }, { seed = 11 })
    local lin = nn.Linear { n_in = 256, n_out = 256 }:load(model, "blk.0.attn_q")
    assert.is_true(lin.weight == model:tensor("blk.0.attn_q.weight"))
    assert.is_true(lin:forward(x) == x:linear(model:tensor("blk.0.attn_q.weight")))
    local norm = nn.RMSNorm { n_embd = 256, eps = 1e-5 }:load(model, "blk.1.ffn_norm")
    local w = model:tensor("blk.1.ffn_norm.weight")
    local want = x / (x:square():mean(2, true) + 1e-5):sqrt() * w
    assert.is_true((norm:forward(x) - want):abs():max() <= 1e-5)
    local emb = nn.Embedding { n_vocab = 512, n_embd = 256 }:load(model, "token_embd")
    local e = emb:forward({ 0, 7, 511 })
    assert.is_true(e[2] == model:tensor("token_embd.weight")[8]:dequantize())
    -- SwiGLU: down(silu(gate x) * up x)
    local mlp = nn.MLP { n_embd = 256, n_ff = 512, kind = "swiglu" }:load(model, "blk.0")
    local g = x:linear(model:tensor("blk.0.ffn_gate.weight")):silu()
    local u = x:linear(model:tensor("blk.0.ffn_up.weight"))
    local ref = (g * u):linear(model:tensor("blk.0.ffn_down.weight"))
    assert.is_true((mlp:forward(x) - ref):abs():max() <= 1e-5 * ref:abs():max())
    -- GELU and GeGLU on plain tensors
    local up, down = T.randn({ 8, 4 }, { seed = 1 }), T.randn({ 4, 8 }, { seed = 2 })
    local xs = T.randn({ 3, 4 }, { seed = 3 })
    local gelu = nn.MLP { kind = "gelu" }:load({ ["ffn_up.weight"] = up, ["ffn_down.weight"] = down })
    assert.is_true((gelu:forward(xs) - xs:linear(up):gelu():linear(down)):abs():max() <= 1e-6)
    local gate = T.randn({ 8, 4 }, { seed = 4 })
    local geglu = nn.MLP { kind = "geglu" }:load({ ["ffn_gate.weight"] = gate, ["ffn_up.weight"] = up,
                                                   ["ffn_down.weight"] = down })
    assert.is_true((geglu:forward(xs) - (xs:linear(gate):gelu() * xs:linear(up)):linear(down)):abs():max() <= 1e-6)
    -- fused gate and up: rows [gate; up]
    local fused = nn.MLP { kind = "swiglu", fused = true }:load({ ["ffn_up.weight"] = T.cat({ gate, up }, 1),
                                                                 ["ffn_down.weight"] = down })
    assert.is_true((fused:forward(xs) - (xs:linear(gate):silu() * xs:linear(up)):linear(down)):abs():max() <= 1e-6)
    -- LayerNorm with its bias
    local lw, lb = T.randn({ 4 }, { seed = 5 }), T.randn({ 4 }, { seed = 6 })
    local ln = nn.LayerNorm { n_embd = 4, eps = 1e-5 }:load({ ["n.weight"] = lw, ["n.bias"] = lb }, "n")
    local c = xs - xs:mean(2, true)
    local want_ln = c / (c:square():mean(2, true) + 1e-5):sqrt() * lw + lb
    assert.is_true((ln:forward(xs) - want_ln):abs():max() <= 1e-5)
  end)

  it("attention with the cache equals attention over the whole sequence at once", function()
    local att = nn.Attention { n_embd = 256, n_head = 4, n_head_kv = 2, rope = { base = 10000 } }:load(model, "blk.1")
    local x = T.randn({ 9, 256 }, { seed = 12 })
    local whole = att:forward(x, { pos = 0 })
    local kv = lm.kv_cache { layers = 2, kv_heads = 2, head_dim = 64, n_ctx = 16, type = "f32" }
    local a = att:forward(x:narrow(1, 1, 6), { kv = kv, layer = 1, seq = 0, pos = 0 })
    local b = att:forward(x:narrow(1, 7, 3), { kv = kv, layer = 1, seq = 0, pos = 6 })
    local d = (T.cat({ a, b }, 1) - whole):abs():max()
    assert.is_true(d <= 1e-5 * whole:abs():max(), tostring(d))
    -- a full cache: nil, err, and nothing appended
    local small = lm.kv_cache { layers = 2, kv_heads = 2, head_dim = 64, n_ctx = 4, type = "f32" }
    local r, err = att:forward(x, { kv = small, layer = 0, seq = 0, pos = 0 })
    assert.is_nil(r)
    assert.are.equal("kv cache full (n_ctx = 4)", err)
    assert.are.equal(0, small:pos(0))
  end)

  it("load names the missing tensor and the shape that differs; state and nn.save round-trip", function()
    local lin = nn.Linear { n_in = 256, n_out = 128 }
    assert.has_error(function() lin:load(model, "blk.0.attn_q") end,
      "load: tensor 'blk.0.attn_q.weight' has shape {256, 256}, Linear expects {128, 256}")
    assert.has_error(function() nn.RMSNorm { n_embd = 256 }:load(model, "blk.9.attn_norm") end,
      "load: tensor 'blk.9.attn_norm.weight' not found")
    assert.has_error(function() nn.MLP { kind = "swish" } end,
      "bad argument #1 to 'MLP' (kind must be \"swiglu\", \"geglu\", \"gelu\", \"relu\" or \"silu\", got swish)")
    local seq = nn.Sequential("blk.%d", { nn.MLP { n_embd = 256, n_ff = 512 }, nn.MLP { n_embd = 256, n_ff = 512 } })
    seq:load(model)
    local names = {}
    for name in seq:parameters() do names[#names + 1] = name end
    assert.are.same({ "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight",
                      "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.1.ffn_down.weight" }, names)
    local path = S.tmpname(".gguf")
    assert(nn.save(path, seq, { ["general.name"] = "two mlps" }))
    local tensors, meta = lm.load_tensors(path)
    assert.are.equal("two mlps", meta["general.name"])
    local copy = nn.Sequential("blk.%d", { nn.MLP { n_embd = 256, n_ff = 512 }, nn.MLP { n_embd = 256, n_ff = 512 } })
    copy:load(tensors)
    local x = T.randn({ 2, 256 }, { seed = 3 })
    local want = seq:forward(x)
    -- file tensors run the dot products over their rows; packed, the model's kernels
    assert.is_true((copy:forward(x) - want):abs():max() <= 1e-5 * want:abs():max())
    assert.is_true(copy:pack():forward(x) == want)
    assert.are.equal("q8_0", copy[2].down.weight.dtype)
    -- nn.save is lm.save over the module's state: the same names and tensors
    local path2 = S.tmpname(".gguf")
    assert(lm.save(path2, seq:state(), { ["general.name"] = "two mlps" }))
    local t2 = lm.load_tensors(path2)
    local n2 = 0
    for name, t in pairs(t2) do
      n2 = n2 + 1
      assert.is_true(t == tensors[name], name)
    end
    assert.are.equal(6, n2)
    os.remove(path)
    os.remove(path2)
  end)
end)

local DECODE_LOOP = { stories260K = true, ["mini-f16"] = true, ["mini-q8_0"] = true, ["mini-q4_k_s"] = true }

-- per-type tolerance of the Lua forward against the C one, as a fraction of the largest
-- |logit|: the same kernels, in another order (f32 attention sums, the residual adds)
local function tolerance(ty)
  if ty == "F32" then return 1e-5 end
  return 1e-4
end

describe("examples/llama_in_lua.lua against the C forward pass", function()
  local index = json.decode(S.read_file(S.path("ref/index.json"))).files
  for _, entry in ipairs(index) do
    it(entry.name .. ": logits at every position, one batch and token by token", function()
      local path = entry.gguf:find("^%.%./") and S.path(entry.gguf:sub(4)) or S.path("ref/" .. entry.gguf)
      local model = assert(lm.load(path))
      local net = Llama.from(model)
      local ids = entry.token_ids
      local c = assert(model:context { n_ctx = 64, kv_type = "f32" })
      local want = c:decode(ids, { logits = "all" }):view(-1):totable()
      local l = assert(nn.context(net, { n_ctx = 64, kv_type = "f32" }))
      local got = l:decode(ids, { logits = "all" }):view(-1):totable()
      local tol = tolerance(entry.type) * maxabs(want)
      local d = 0
      for i = 1, #want do d = math.max(d, math.abs(got[i] - want[i])) end
      assert.is_true(d <= tol, ("%s: max |diff| %.3g > %.3g"):format(entry.name, d, tol))
      -- the decode loop: one token at a time through the cache (a few types: it is slow
      -- under the reference kernels)
      if not DECODE_LOOP[entry.name] then return end
      l:clear(0)
      c:clear(0)
      d = 0
      for i, id in ipairs(ids) do
        local g, w = l:decode({ id }):totable(), c:decode({ id }):totable()
        for v = 1, #w do d = math.max(d, math.abs(g[v] - w[v])) end
        assert.are.equal(i, l:pos(0))
      end
      assert.is_true(d <= tol, ("%s token by token: max |diff| %.3g > %.3g"):format(entry.name, d, tol))
      l:close()
      c:close()
      model:close()
    end)
  end

  it("stories260K: 256 greedy tokens identical to the C path (f16 cache, as generate's default)", function()
    local model = assert(lm.load(stories))
    local lua_model = nn.model(Llama.from(model), { tokenizer = model })
    local opts = { max_tokens = 256, temperature = 0, ignore_eos = true }
    local text, info = lua_model:generate("Once upon a time", opts)
    local ctext, cinfo = model:generate("Once upon a time", opts)
    assert.are.equal(256, info.tokens)
    assert.are.same(cinfo.ids, info.ids)
    assert.are.equal(ctext, text)
    lua_model:close()
    model:close()
  end)
end)

describe("a model written in Lua in generate, stream, chat, samplers and grammars", function()
  local model, lua_model
  setup(function()
    model = assert(lm.load(stories))
    lua_model = nn.model(Llama.from(model), { tokenizer = model, arch = "llama (Lua)" })
  end)
  teardown(function()
    lua_model:close()
    model:close()
  end)

  it("stream gives the text generate gives, sampled with a seed as the C path samples", function()
    local opts = { max_tokens = 40, temperature = 0.8, top_k = 40, top_p = 0.9, seed = 7 }
    local parts = {}
    for piece in lua_model:stream("Lily had a ball", opts) do parts[#parts + 1] = piece end
    local text, info = lua_model:generate("Lily had a ball", opts)
    assert.are.equal(text, table.concat(parts))
    local ctext, cinfo = model:generate("Lily had a ball", opts)
    assert.are.same(cinfo.ids, info.ids)
    assert.are.equal(ctext, text)
    assert.are.equal("llama (Lua)", lua_model.arch)
    assert.are.equal(model.n_vocab, lua_model.n_vocab)
  end)

  it("grammars constrain it as they constrain the C path; a sampler of its own works too", function()
    local g = lm.grammar.gbnf('root ::= " the " ("dog" | "cat" | "bird") " was " [a-z]+ "."')
    local text = lua_model:generate("Once upon a time", { grammar = g, temperature = 0, max_tokens = 20 })
    assert.are.equal(model:generate("Once upon a time", { grammar = g, temperature = 0, max_tokens = 20 }), text)
    assert.truthy(text:match("^ the %a+ was [a-z]+%.$"), text)
    local s = lm.sampler { temperature = 0, logit_bias = { [403] = -math.huge } }
    local _, info = lua_model:generate("Once", { sampler = s, max_tokens = 5 })
    for _, id in ipairs(info.ids) do assert.are_not.equal(403, id) end
    -- closed: an open object may start with any other key (the schema compiler allows that)
    local schema = { type = "object", properties = { a = { type = "integer" } }, required = { "a" },
                     additionalProperties = false }
    local json_text = lua_model:generate("A", { json_schema = schema, temperature = 0, max_tokens = 20 })
    assert.are.equal(model:generate("A", { json_schema = schema, temperature = 0, max_tokens = 20 }), json_text)
    assert.truthy(json_text:match('^{ ?"a"'), json_text)
  end)

  it("chat sessions run on it: the same replies as on the C model", function()
    local opts = { system = "Tell a story.", template = "chatml", temperature = 0, max_tokens = 16, n_ctx = 256 }
    local chat, cchat = lua_model:chat(opts), model:chat(opts)
    for _, turn in ipairs { "Once upon a time there was a cat.", "What did the cat do?" } do
      assert.are.equal(cchat:say(turn), chat:say(turn))
    end
    assert.are.equal(4, #chat.history)
    -- what a Lua net cannot do is refused, not ignored
    local ok, err = chat.ctx:state_save(0)
    assert.is_nil(ok)
    assert.are.equal("saving the state is not available for a model written in Lua", err)
    assert.has_error(function() lua_model:embed("x") end, "embeddings are not available for a model written in Lua")
  end)

  it("any object with decode and the context operations will do (a net with its own contexts)", function()
    -- a "model" that always predicts the token after the last one: logits as plain tensors
    local net = { n_vocab = model.n_vocab }
    function net:context(opts)
      local ctx = { n_ctx = opts and opts.n_ctx or 64, len = {} }
      function ctx:decode(ids, o)
        local seq = o and o.seq or 0
        self.len[seq] = (self.len[seq] or 0) + #ids
        local l = T.full({ net.n_vocab }, -10)
        l[(ids[#ids] + 1) % net.n_vocab + 1] = 10
        return l
      end
      function ctx:pos(seq) return self.len[seq or 0] or 0 end
      function ctx:clear(seq) self.len[seq or 0] = 0 end
      function ctx:truncate(seq, n) self.len[seq] = math.min(self.len[seq] or 0, n) return self.len[seq] end
      function ctx:close() end
      return ctx
    end
    local counter = nn.model(net, { tokenizer = model, arch = "counter" })
    local _, info = counter:generate({ 1, 300 }, { max_tokens = 5, temperature = 0 })
    assert.are.same({ 301, 302, 303, 304, 305 }, info.ids)
    local g = lm.grammar.regex("[0-9]+")
    local text = counter:generate("x", { grammar = g, max_tokens = 3, temperature = 0 })
    assert.truthy(text:match("^[0-9]+$"), text)
    counter:close()
  end)

  it("its context: a full context says so and stays usable; bad ids and options are refused", function()
    local ctx = assert(lua_model:context { n_ctx = 8, kv_type = "f32", seqs = 2 })
    assert.truthy(ctx:decode({ 1, 403, 407 }))
    local l, err = ctx:decode({ 1, 2, 3, 4, 5, 6 }, { seq = 1 })
    assert.is_nil(l)
    assert.are.equal("context full (n_ctx = 8)", err)
    assert.are.equal(0, ctx:pos(1))
    assert.are.equal(3, ctx:pos(0))
    ctx:copy(0, 1)
    assert.are.equal(3, ctx:used())
    local a, b = ctx:decode({ 261 }, { seq = 0 }), ctx:decode({ 261 }, { seq = 1 })
    assert.is_true(a == b)
    assert.are.equal(2, ctx:truncate(0, 2))
    assert.has_error(function() ctx:decode({ 1, 512 }) end,
      "bad argument #1 to 'decode' (item 2: 512 is not a token id (0 to 511))")
    assert.has_error(function() ctx:decode({ 1 }, { seq = 2 }) end,
      "bad argument #2 to 'decode' (sequence 2 out of range (0 to 1))")
    assert.has_error(function() ctx:decode({ 1 }, { logits = "first" }) end,
      "bad argument #2 to 'decode' (logits must be \"last\", \"all\" or \"none\", got \"first\")")
    assert.has_error(function() lua_model:context { n_ctx = 8, kv = "f32" } end,
      "bad argument #2 to 'context' (unknown option 'kv')")
    assert.are.equal(true, ctx:decode({ 1 }, { logits = "none", seq = 1 }))
    ctx:close()
  end)
end)

describe("architectures written only in Lua against llama.cpp (ref-arch)", function()
  local IDS = { 1, 403, 407, 261, 378, 383, 286, 261, 376, 400, 428, 395, 392, 412, 444, 263, 415, 414, 397, 355, 267,
                352, 379, 426 }
  local MPT = dofile("examples/mpt_in_lua.lua")
  -- ../shared/ref-arch/README.md's tolerances, as a fraction of the largest |logit|
  local function tol(arch, ty, precise)
    if ty == "q8_0" then return 3e-2 end
    if not precise then return 3e-3 end
    return arch == "phi3" and 1e-5 or 1e-3
  end
  for _, arch in ipairs { "mpt", "phi3" } do
    for _, ty in ipairs { "f32", "q8_0" } do
      for _, precise in ipairs { true, false } do
        it(("%s %s, %s"):format(arch, ty, precise and "precise (f32 cache)" or "default (f16 cache)"), function()
          local m = assert(lm.load(S.path("ref-arch/" .. arch .. "-" .. ty .. ".gguf")))
          local net = (arch == "mpt" and MPT or Llama).from(m)
          local ctx = assert(nn.context(net, { n_ctx = 64, kv_type = precise and "f32" or "f16" }))
          local got = ctx:decode(IDS, { logits = "all" }):view(-1):totable()
          local want = S.read_f32(S.path("ref-arch/" .. arch .. "-" .. ty .. (precise and ".precise" or "") .. ".logits.f32"))
          local d = 0
          for i = 1, #want do d = math.max(d, math.abs(got[i] - want[i])) end
          local t = tol(arch, ty, precise) * maxabs(want)
          assert.is_true(d <= t, ("max |diff| %.3g > %.3g"):format(d, t))
          ctx:close()
          m:close()
        end)
      end
    end
  end
end)

describe("README: write your own model", function()
  it("the smallest complete example runs and writes what the C forward pass writes", function()
    local readme = S.read_file("README.md")
    local code = readme:match("<!%-%- readme%-model:[^\n]*\n```lua\n(.-)\n```")
    assert.truthy(code, "the README's example block")
    code = code:gsub('lm%.load%("stories260K%.gguf"%)', ("lm.load(%q)"):format(stories))
    local printed = {}
    local env = setmetatable({ print = function(s) printed[#printed + 1] = s end }, { __index = _G })
    local chunk
    if setfenv then
      chunk = assert(loadstring(code, "README"))
      setfenv(chunk, env)
    else
      chunk = assert(load(code, "README", "t", env))
    end
    chunk()
    local model = assert(lm.load(stories))
    assert.are.same({ (model:generate("Once upon a time", { max_tokens = 32, temperature = 0 })) }, printed)
    model:close()
  end)
end)
