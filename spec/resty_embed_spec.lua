-- /v1/embeddings pools as the model says: a BERT file's pooling_type (here CLS), mean for a
-- decoder, and the server's `pooling` option over both; the rows are llama.cpp's normalised
-- vectors for the same texts (../shared/ref-arch). Tagged #once, like the other server specs.
local S = require "support"
local H = require "resty_helpers"
local lm = require "moonlm"
local launch = require "moonlm.resty.launch"

local bert_path = S.path("ref-arch/bert-f32.gguf")
local texts = {}
for l in io.lines(S.path("ref-arch/bert-texts.txt")) do texts[#texts + 1] = l end

local function cosine(a, b)
  local ab, aa, bb = 0, 0, 0
  for i = 1, #a do ab, aa, bb = ab + a[i] * b[i], aa + a[i] * a[i], bb + b[i] * b[i] end
  return ab / math.sqrt(aa * bb)
end

-- llama.cpp's normalised pooled rows for the 3 texts ([3][128])
local function reference(kind)
  local all, rows = S.read_f32(S.path("ref-arch/bert-f32.precise." .. kind .. ".f32")), {}
  for i = 1, #texts do
    rows[i] = {}
    for c = 1, 128 do rows[i][c] = all[(i - 1) * 128 + c] end
  end
  return rows
end

local function embed(url, model)
  local r = H.http("POST", url .. "/v1/embeddings", { model = model, input = texts })
  assert.are.equal(200, r.status, r.text)
  local rows = {}
  for i, d in ipairs(r.json.data) do rows[i] = d.embedding end
  return rows
end

local function close_to(rows, want, what)
  assert.are.equal(#want, #rows)
  for i = 1, #want do
    local c = cosine(rows[i], want[i])
    assert.is_true(c >= 0.99999, ("%s text %d: cosine %.7f"):format(what, i, c))
    S.near(rows[i], want[i], 5e-4, what)
  end
end

-- the BERT file with another pooling_type (0 none, 4 rank: then with a classifier head)
local function with_pooling(kind)
  local T = lm.tensor
  local src = assert(lm.load(bert_path))
  local meta = {}
  for k, v in pairs(src.meta) do
    if type(v) == "number" then
      meta[k] = lm.gguf_value(k:find("epsilon", 1, true) and "f32" or "u32", v)
    elseif k ~= "tokenizer.ggml.token_type" then
      meta[k] = v
    end
  end
  meta["tokenizer.ggml.token_type"] = lm.gguf_value("i32", src.meta["tokenizer.ggml.token_type"])
  meta["bert.pooling_type"] = lm.gguf_value("u32", kind)
  local t = {}
  for k, x in pairs(assert(lm.load_tensors(bert_path))) do t[k] = x:clone() end
  if kind == 4 then
    t["cls.weight"], t["cls.bias"] = T.randn({ 128, 128 }, { seed = 5, std = 0.1 }), T.randn({ 128 }, { seed = 6 })
    t["cls.output.weight"], t["cls.output.bias"] = T.randn({ 1, 128 }, { seed = 7, std = 0.3 }), T.randn({ 1 }, { seed = 8 })
  end
  local path = S.tmpname(".gguf")
  assert(lm.save(path, t, meta))
  src:close()
  return path
end

describe("/v1/embeddings pooling #once", function()
  setup(function()
    assert.truthy(launch.module_dir(), "lua-nginx-module is not installed (make deps)")
    H.tmpdir()
  end)
  teardown(function() H.cleanup() end)

  it("the file's pooling (BERT: CLS), mean for a decoder; the pooling option overrides", function()
    local srv = H.start { MOONLM_MODELS = "bert=" .. bert_path .. ",stories=" .. H.stories, MOONLM_SLOTS = "1" }
    local ok, err = pcall(function()
      close_to(embed(srv.url, "bert"), reference("cls"), "bert, its CLS pooling")
      local stories = assert(lm.load(H.stories))
      assert.is_nil(stories.pooling)
      local want = stories:embed(texts, { pooling = "mean", normalize = true }):totable()
      local got = embed(srv.url, "stories")
      for i = 1, #texts do assert.is_true(S.maxdiff(want[i], got[i]) < 1e-5, "stories, mean pooling") end
      stories:close()
    end)
    srv:stop()
    assert(ok, err)
    srv = H.start { MOONLM_MODEL = bert_path, MOONLM_SLOTS = "1", MOONLM_POOLING = "mean" }
    ok, err = pcall(function() close_to(embed(srv.url), reference("mean"), "bert, pooling = mean") end)
    srv:stop()
    assert(ok, err)
  end)

  it("a file whose pooling is none or rank: 400 saying why, unless the server sets a pooling", function()
    local none, rank = with_pooling(0), with_pooling(4)
    local srv = H.start { MOONLM_MODELS = "none=" .. none .. ",rank=" .. rank, MOONLM_SLOTS = "1" }
    local ok, err = pcall(function()
      for name, msg in pairs { none = "this model's pooling is 'none' (one vector per token), which /v1/embeddings cannot return",
                               rank = "this model is a reranker (pooling 'rank'): it scores pairs and gives no embeddings" } do
        local r = H.http("POST", srv.url .. "/v1/embeddings", { model = name, input = texts })
        assert.are.equal(400, r.status, r.text)
        assert.matches(msg, r.json.error.message, 1, true)
      end
    end)
    srv:stop()
    assert(ok, err)
    srv = H.start { MOONLM_MODEL = rank, MOONLM_SLOTS = "1", MOONLM_POOLING = "cls" }
    ok, err = pcall(function() close_to(embed(srv.url), reference("cls"), "a reranker's file, pooling = cls") end)
    srv:stop()
    os.remove(none)
    os.remove(rank)
    assert(ok, err)
  end)

  it("refuses at start a pooling it cannot serve, naming the choices", function()
    local srv, err = launch.start { conf = "examples/openresty/nginx.conf", lib_dir = H.BUILD .. "/5.1",
                                    env = { MOONLM_MODEL = bert_path, MOONLM_THREADS = "1", MOONLM_POOLING = "none" } }
    if srv then srv:stop() end
    assert.is_nil(srv)
    assert.matches('pooling must be "mean", "cls" or "last", got none', err, 1, true)
  end)
end)
