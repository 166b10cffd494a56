-- A recommender, the other classic CPU inference workload: a DLRM-style click model
-- (Naumov et al., 2019) built from moonlm tensors alone, with random weights saved to and
-- loaded from GGUF, scored in batches of 1, 64 and 512 requests.
--
--   lua5.4 examples/recsys.lua [--dtype bf16|q8_0|f32|all] [--threads n] [--seconds s]
--                              [--rows n] [--file model.gguf]
-- prints p50 / p99 latency per batch and requests per second for each weight type.
--
-- As a module: local recsys = dofile "examples/recsys.lua"
--   local model = recsys.new { dtype = "q8_0" }            -- random weights (options below)
--   model:save "dlrm.gguf"; model = assert(recsys.load "dlrm.gguf")
--   local p = model:score(dense, ids)   -- click probabilities, f32 {B}
--     dense  f32 {B, n_dense}           -- numeric features of each request
--     ids    i32 {B, n_tables, hot}     -- 0-based rows of each embedding table
--
-- The model, for a batch of B requests:
--   bottom MLP   dense {B, n_dense} -> relu layers -> z {B, dim}
--   embeddings   one table per categorical feature: e_f = sum of `hot` rows {B, dim}
--   interaction  the dot products of every pair among {z, e_1 .. e_F}: {B, (F+1)F/2}
--                (x:pairwise_dot() on the stacked {B, F+1, dim} vectors)
--   top MLP      [z, interactions] -> relu layers -> 1 logit -> sigmoid
-- Weights and tables are bf16, q8_0 (int8 blocks of 32 with a scale) or f32; activations
-- are f32. Layers read inputs whose width is a multiple of 32 (bf16) or 64 (q8_0), what the
-- packed GEMM kernels take; narrower inputs are padded with zeros, and the extra hidden
-- units of padded layers have zero weights and bias, so they output 0 and change nothing.
local lm = require "moonlm"
local T = lm.tensor

local _M = {}

_M.defaults = {
  dense = 13,                   -- numeric features per request (Criteo has 13)
  rows = nil,                   -- rows of each table; default 26 tables of 1k, 10k, 100k rows
  dim = 64,                     -- embedding width, also the bottom MLP's output width
  hot = 1,                      -- ids per categorical feature and request, summed
  bottom = { 512, 256 },        -- hidden widths: dense -> 512 -> 256 -> dim
  top = { 512, 256 },           -- hidden widths: interactions -> 512 -> 256 -> 1
  dtype = "bf16",               -- "bf16", "q8_0" (alias "int8") or "f32"
  seed = 1,
}

local function default_rows()
  local rows = {}
  for f = 1, 26 do rows[f] = ({ 1000, 10000, 100000 })[(f - 1) % 3 + 1] end
  return rows
end

local Model = {}
Model.__index = Model

-- Input width a layer of this weight type reads: the packed kernels take bf16 rows in
-- blocks of 32 and q8_0 rows in pairs of 32-blocks; other widths take a much slower path.
local function width(n, dtype)
  local m = ({ bf16 = 32, q8_0 = 64 })[dtype] or 1
  return math.ceil(n / m) * m
end

local function convert(t, dtype)
  if dtype == "bf16" then return t:to("bf16") end
  if dtype == "q8_0" then return t:quantize("q8_0") end
  return t
end

-- A layer (out_w, in_w) with random values in the top-left (out, inp) block, zeros around.
local function random_layer(out_w, in_w, out, inp, dtype, seed)
  local w, b = T.zeros(out_w, in_w), T.zeros(out_w)
  local scale = math.sqrt(2 / inp) -- He initialisation for relu layers
  w:narrow(1, 1, out):narrow(2, 1, inp):copy_(T.randn({ out, inp }, { seed = seed }):mul(scale))
  b:narrow(1, 1, out):copy_(T.randn({ out }, { seed = seed + 1 }):mul(0.01))
  return { w = convert(w, dtype), b = b }
end

local function n_pairs(cfg) local n = #cfg.rows + 1 return n * (n - 1) / 2 end

-- The stored shapes of the MLPs: { {out_w, in_w, out, in} ... } for "bottom" and "top".
local function mlp_shapes(cfg)
  local function chain(first, hidden, last)
    local dims, shapes = { first }, {}
    for _, h in ipairs(hidden) do dims[#dims + 1] = h end
    dims[#dims + 1] = last
    for l = 1, #dims - 1 do
      local out_w = l < #dims - 1 and width(dims[l + 1], cfg.dtype) or dims[l + 1]
      shapes[l] = { out_w, width(dims[l], cfg.dtype), dims[l + 1], dims[l] }
    end
    return shapes
  end
  return chain(cfg.dense, cfg.bottom, cfg.dim), chain(cfg.dim + n_pairs(cfg), cfg.top, 1)
end

local function check_config(opts)
  local cfg = {}
  for k, v in pairs(_M.defaults) do cfg[k] = v end
  for k, v in pairs(opts or {}) do cfg[k] = v end
  if cfg.dtype == "int8" then cfg.dtype = "q8_0" end
  if cfg.dtype ~= "bf16" and cfg.dtype ~= "q8_0" and cfg.dtype ~= "f32" then
    error(("bad option 'dtype' (bf16, q8_0 or f32 expected, got %s)"):format(tostring(cfg.dtype)), 3)
  end
  cfg.rows = cfg.rows or default_rows()
  if cfg.dtype == "q8_0" and cfg.dim % 32 ~= 0 then
    error("bad option 'dim' (q8_0 tables need a multiple of 32)", 3)
  end
  return cfg
end

local function wrap(cfg, tables, bottom, top)
  local self = setmetatable({ cfg = cfg, tables = tables, bottom = bottom, top = top, pads = {} }, Model)
  self.n_tables = #tables
  return self
end

-- new(opts) -> a model with random weights (options and defaults in _M.defaults)
function _M.new(opts)
  local cfg = check_config(opts)
  local seed = cfg.seed * 1000
  local tables = {}
  for f, rows in ipairs(cfg.rows) do
    local t = T.randn({ rows, cfg.dim }, { seed = seed + f }):mul_(1 / math.sqrt(cfg.dim))
    tables[f] = convert(t, cfg.dtype)
    if tables[f] ~= t then t:close() end
  end
  local bshapes, tshapes = mlp_shapes(cfg)
  local bottom, top = {}, {}
  for l, s in ipairs(bshapes) do bottom[l] = random_layer(s[1], s[2], s[3], s[4], cfg.dtype, seed + 100 + 2 * l) end
  for l, s in ipairs(tshapes) do top[l] = random_layer(s[1], s[2], s[3], s[4], cfg.dtype, seed + 200 + 2 * l) end
  return wrap(cfg, tables, bottom, top)
end

---------------------------------------------------------------------------------------
-- GGUF: tensors "table.F", "bottom.L.weight", "bottom.L.bias", "top.L..."; the shape in
-- metadata under "dlrm.*"
---------------------------------------------------------------------------------------

function Model:save(path)
  local tensors = {}
  for f, t in ipairs(self.tables) do tensors["table." .. f] = t end
  for _, part in ipairs { "bottom", "top" } do
    for l, layer in ipairs(self[part]) do
      tensors[("%s.%d.weight"):format(part, l)] = layer.w
      tensors[("%s.%d.bias"):format(part, l)] = layer.b
    end
  end
  local c = self.cfg
  return lm.save(path, tensors, {
    ["general.architecture"] = "dlrm", ["general.name"] = "moonlm recsys example",
    ["dlrm.dense"] = c.dense, ["dlrm.rows"] = c.rows, ["dlrm.dim"] = c.dim, ["dlrm.hot"] = c.hot,
    ["dlrm.bottom"] = c.bottom, ["dlrm.top"] = c.top, ["dlrm.dtype"] = c.dtype, ["dlrm.seed"] = c.seed,
  })
end

-- load(path) -> model | nil, err. The tensors stay memory-mapped (zero copy).
function _M.load(path)
  local ts, meta = lm.load_tensors(path)
  if not ts then return nil, meta end
  if meta["general.architecture"] ~= "dlrm" then return nil, path .. ": not a DLRM model" end
  local cfg = check_config {
    dense = meta["dlrm.dense"], rows = meta["dlrm.rows"], dim = meta["dlrm.dim"], hot = meta["dlrm.hot"],
    bottom = meta["dlrm.bottom"], top = meta["dlrm.top"], dtype = meta["dlrm.dtype"], seed = meta["dlrm.seed"],
  }
  local tables, parts = {}, { bottom = {}, top = {} }
  for f = 1, #cfg.rows do
    tables[f] = ts["table." .. f]
    if not tables[f] then return nil, path .. ": no tensor table." .. f end
  end
  local bshapes, tshapes = mlp_shapes(cfg)
  for part, shapes in pairs { bottom = bshapes, top = tshapes } do
    for l = 1, #shapes do
      local w, b = ts[("%s.%d.weight"):format(part, l)], ts[("%s.%d.bias"):format(part, l)]
      if not (w and b) then return nil, ("%s: no tensors for %s layer %d"):format(path, part, l) end
      parts[part][l] = { w = w, b = b }
    end
  end
  return wrap(cfg, tables, parts.bottom, parts.top)
end

---------------------------------------------------------------------------------------
-- Scoring. Every intermediate is closed as soon as it is used: the collector does not see
-- tensor memory, and returning it at once lets the allocator hand the same warm pages to
-- the next batch (at B = 512 this is several times faster than waiting for the GC).
---------------------------------------------------------------------------------------

-- zeros {B, n}, kept per shape (they are never written)
function Model:zeros(B, n)
  local key = B * 65536 + n
  local z = self.pads[key]
  if not z then
    z = T.zeros(B, n)
    self.pads[key] = z
  end
  return z
end

-- x {B, n} -> {B, want}: x followed by zero columns (x itself when want == n)
function Model:pad(x, want)
  local n = x:size(2)
  if n == want then return x end
  return T.cat({ x, self:zeros(x:size(1), want - n) }, 2)
end

-- Runs an MLP on x, closing x (unless keep) and every intermediate. Relu between layers.
local function mlp(layers, x, keep)
  for l, layer in ipairs(layers) do
    local y = x:linear(layer.w, layer.b)
    if l < #layers then y:relu_() end
    if l > 1 or not keep then x:close() end
    x = y
  end
  return x
end

-- logits(dense, ids) -> f32 {B}: the model's output before the sigmoid
function Model:logits(dense, ids)
  local c = self.cfg
  local B = dense:size(1)
  if dense:size(2) ~= c.dense then
    error(("bad argument #1 to 'score' (%d dense features expected, got %d)"):format(c.dense, dense:size(2)), 2)
  end
  local want = { B, self.n_tables, c.hot }
  local got = ids:shape()
  if #got ~= 3 or got[1] ~= B or got[2] ~= want[2] or got[3] ~= want[3] then
    error(("bad argument #2 to 'score' (ids of shape {%d, %d, %d} expected)"):format(B, want[2], want[3]), 2)
  end
  local x = self:pad(dense, self.bottom[1].w:size(2))
  local z = mlp(self.bottom, x, x == dense)                      -- {B, dim}
  local vecs = { z }
  for f, tab in ipairs(self.tables) do
    local e = tab:embedding(ids:select(2, f))                    -- {B * hot, dim}
    if c.hot > 1 then
      local bag = e:reshape(B, c.hot, c.dim):sum(2)              -- {B, dim}
      e:close()
      e = bag
    end
    vecs[f + 1] = e
  end
  local stacked = T.stack(vecs, 2)                               -- {B, F + 1, dim}
  for f = 2, #vecs do vecs[f]:close() end
  local pairs = stacked:pairwise_dot()                           -- {B, (F + 1) F / 2}
  stacked:close()
  local top_in = self.top[1].w:size(2)
  local parts = { z, pairs }
  if top_in > c.dim + pairs:size(2) then parts[3] = self:zeros(B, top_in - c.dim - pairs:size(2)) end
  local t = T.cat(parts, 2)                                      -- {B, top_in}
  z:close()
  pairs:close()
  local out = mlp(self.top, t)                                   -- {B, 1}
  local logits = out:reshape(B)
  out:close()
  return logits
end

-- score(dense, ids) -> f32 {B}: click probabilities
function Model:score(dense, ids)
  local logits = self:logits(dense, ids)
  return logits:sigmoid_()
end

-- Bytes of weights and tables, and the parameter count.
function Model:size()
  local bytes, params = 0, 0
  local function add(t)
    bytes = bytes + t:nbytes()
    params = params + t:numel()
  end
  for _, t in ipairs(self.tables) do add(t) end
  for _, part in ipairs { self.bottom, self.top } do
    for _, layer in ipairs(part) do add(layer.w) add(layer.b) end
  end
  return bytes, params
end

-- A batch of B random requests: dense features in [0, 1), ids skewed toward low rows (u^4,
-- as real traffic has hot items). Same seed, same batch.
function _M.random_batch(cfg, B, seed)
  local F = #cfg.rows
  local dense = T.rand({ B, cfg.dense }, { seed = seed })
  local limit = T(cfg.rows):reshape(1, F, 1)
  local u = T.rand({ B, F, cfg.hot }, { seed = seed + 1 })
  local ids = u:pow(4):mul(limit):minimum(limit - 1):to("i32")
  return dense, ids
end

---------------------------------------------------------------------------------------
-- Benchmark
---------------------------------------------------------------------------------------

local function percentile(sorted, p)
  local i = math.max(1, math.min(#sorted, math.ceil(p / 100 * #sorted)))
  return sorted[i]
end

-- Times model:score over `seconds` (at least `min_runs` batches); p50/p99 in seconds.
function _M.bench(model, B, seconds, min_runs)
  local batches = {}
  for i = 1, 8 do
    local dense, ids = _M.random_batch(model.cfg, B, 100 + 2 * i)
    batches[i] = { dense, ids }
  end
  for i = 1, 3 do model:score(batches[i][1], batches[i][2]):close() end -- warm up
  local times, total = {}, 0
  local t_end = lm.clock() + seconds
  while #times < (min_runs or 20) or lm.clock() < t_end do
    local b = batches[#times % #batches + 1]
    local t0 = lm.clock()
    model:score(b[1], b[2]):close()
    local dt = lm.clock() - t0
    times[#times + 1] = dt
    total = total + dt
  end
  table.sort(times)
  return { p50 = percentile(times, 50), p99 = percentile(times, 99), rps = B * #times / total, runs = #times }
end

local function parse_args(args)
  local o = { dtype = "all", threads = 1, seconds = 2 }
  local i = 1
  while i <= #args do
    local name, v = args[i]:match("^%-%-([%w-]+)$"), args[i + 1]
    if not name or v == nil then error("usage: recsys.lua [--dtype bf16|q8_0|f32|all] [--threads n] [--seconds s] [--rows n] [--file path]") end
    o[name] = tonumber(v) or v
    i = i + 2
  end
  return o
end

-- Prints the benchmark table: o.dtypes (default bf16 and q8_0), o.seconds per batch size,
-- o.rows (rows of each of the 26 tables; default 1k/10k/100k), o.file (keep the GGUF there).
function _M.report(o)
  local info = lm.info()
  print(("moonlm %s, %s, kernels %s, %d thread(s)"):format(lm._VERSION, info.cpu, lm.isa(), lm.threads()))
  print()
  print("| weights | batch | p50 ms | p99 ms | requests/s |")
  print("|---------|------:|-------:|-------:|-----------:|")
  local sizes = {}
  for _, dtype in ipairs(o.dtypes or { "bf16", "q8_0" }) do
    local rows
    if o.rows then
      rows = {}
      for f = 1, 26 do rows[f] = o.rows end
    end
    local path = o.file or (os.tmpname() .. ".gguf")
    local fresh = _M.new { dtype = dtype, rows = rows }
    assert(fresh:save(path))
    fresh = nil
    collectgarbage()
    local model = assert(_M.load(path)) -- scored from the memory-mapped file
    local bytes, params = model:size()
    for _, B in ipairs { 1, 64, 512 } do
      local r = _M.bench(model, B, o.seconds or 2)
      print(("| %-7s | %5d | %6.3f | %6.3f | %10.0f |"):format(dtype, B, r.p50 * 1e3, r.p99 * 1e3, r.rps))
    end
    sizes[#sizes + 1] = ("%s %.1fM parameters, %.0f MB"):format(dtype, params / 1e6, bytes / 2 ^ 20)
    if not o.file then os.remove(path) end
  end
  print()
  print("model: " .. table.concat(sizes, "; "))
end

local function main(args)
  local o = parse_args(args)
  lm.threads(o.threads)
  if o.dtype ~= "all" then o.dtypes = { o.dtype } end
  _M.report(o)
  return 0
end

-- run as a script; return the module when loaded with dofile / require
if type(arg) == "table" and type(arg[0]) == "string" and arg[0]:find("recsys%.lua$") then
  os.exit(main(arg))
end

return _M
