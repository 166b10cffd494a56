-- moonlm.grammar_schema: JSON Schema as a grammar (lm.grammar.json_schema and
-- lm.grammar.schema_to_gbnf). The compiler is C (src/grammar_schema.c); this file checks
-- options and turns a Lua table into JSON text.
--
-- Property order matters: instances must write properties in the order of `properties`
-- (as llguidance and XGrammar do). JSON text keeps that order. A Lua table does not, so
-- a table schema lists its properties in this order: the names in `opts.property_order`
-- first (in that order, at every level), then objects made with moonlm.json.object(t, keys)
-- in their recorded order, then the rest sorted by name. Pass JSON text when the order of
-- every object matters.

local core = require "moonlm.core"
local json = require "moonlm.json"

local _M = {}

local type, pairs, ipairs, tostring, error, next, getmetatable =
  type, pairs, ipairs, tostring, error, next, getmetatable
local concat, sort = table.concat, table.sort

local OPTIONS = { whitespace = true, property_order = true, max_bytes = true, max_ms = true, max_repeat = true }

-- keywords whose value is a list even when empty
local LIST_KEYS = { required = true, enum = true, allOf = true, anyOf = true, oneOf = true, prefixItems = true,
  type = true, examples = true }

-- keywords whose members are named schemas (their names are not keywords)
local MAP_KEYS = { properties = true, ["$defs"] = true, definitions = true, patternProperties = true,
  dependentSchemas = true }

local function encode(v, fname, order_rank, key, depth)
  if depth > 500 then error(("bad argument #1 to '%s' (schema nested too deeply)"):format(fname), 0) end
  local tv = type(v)
  if v == json.null then return "null" end
  if tv == "string" or tv == "number" or tv == "boolean" then return json.encode(v) end
  if tv ~= "table" then
    error(("bad argument #1 to '%s' (schema holds a %s)"):format(fname, tv), 0)
  end
  local kind = json.table_kind(v)
  if kind == "array" and next(v) == nil and not LIST_KEYS[key] and getmetatable(v) == nil then
    kind = "object" -- an empty plain table in a schema is an empty schema or map
  end
  local out = {}
  if kind == "array" then
    for i = 1, #v do out[i] = encode(v[i], fname, order_rank, nil, depth + 1) end
    return "[" .. concat(out, ",") .. "]"
  end
  local keys = json.keys(v)
  if order_rank and key == "properties" then
    local copy = {}
    for i, k in ipairs(keys) do copy[i] = k end
    local pos = {}
    for i, k in ipairs(copy) do pos[k] = i end
    sort(copy, function(a, b)
      local ra, rb = order_rank[a], order_rank[b]
      if ra and rb then return ra < rb end
      if ra or rb then return ra ~= nil end
      return pos[a] < pos[b]
    end)
    keys = copy
  end
  for i, k in ipairs(keys) do
    if type(k) ~= "string" then
      error(("bad argument #1 to '%s' (schema object key %s is not a string)"):format(fname, tostring(k)), 0)
    end
    -- a member of `properties` is a schema; a member of a schema keyword is named by it
    local child_key = MAP_KEYS[key] and "" or k
    out[i] = json.encode(k) .. ":" .. encode(v[k], fname, order_rank, child_key, depth + 1)
  end
  return "{" .. concat(out, ",") .. "}"
end

local function prepare(schema, opts, fname)
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)"):format(fname, type(opts)), 0)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] then error(("bad argument #2 to '%s' (unknown option '%s')"):format(fname, tostring(k)), 0) end
  end
  local ws = opts.whitespace
  if ws ~= nil and ws ~= "json" and ws ~= "compact" then
    error(("bad argument #2 to '%s' (whitespace must be \"json\" or \"compact\")"):format(fname), 0)
  end
  for _, k in ipairs{ "max_bytes", "max_ms", "max_repeat" } do
    local x = opts[k]
    if x ~= nil and (type(x) ~= "number" or x <= 0 or x ~= x) then
      error(("bad argument #2 to '%s' (%s must be a positive number)"):format(fname, k), 0)
    end
  end
  local rank
  if opts.property_order ~= nil then
    if type(opts.property_order) ~= "table" then
      error(("bad argument #2 to '%s' (property_order must be a list of names)"):format(fname), 0)
    end
    rank = {}
    for i, name in ipairs(opts.property_order) do
      if type(name) ~= "string" then
        error(("bad argument #2 to '%s' (property_order must be a list of names)"):format(fname), 0)
      end
      if rank[name] == nil then rank[name] = i end
    end
  end
  local text
  if type(schema) == "string" then
    if rank then
      error(("bad argument #2 to '%s' (property_order applies to table schemas; JSON text keeps its own order)"):format(fname), 0)
    end
    text = schema
  elseif type(schema) == "table" or type(schema) == "boolean" then
    text = encode(schema, fname, rank, nil, 0)
  else
    error(("bad argument #1 to '%s' (table or JSON text expected, got %s)"):format(fname, type(schema)), 0)
  end
  return text, { compact = ws == "compact", max_bytes = opts.max_bytes, max_ms = opts.max_ms,
    max_repeat = opts.max_repeat }
end

-- lm.grammar.schema_to_gbnf(schema, opts) -> GBNF text (root rule "root"), or nil, err
function _M.schema_to_gbnf(schema, opts)
  local text, copts = prepare(schema, opts, "schema_to_gbnf")
  return core.schema_to_gbnf(text, copts)
end

-- lm.grammar.json_schema(schema, opts) -> grammar, or nil, err
function _M.json_schema(schema, opts)
  local text, copts = prepare(schema, opts, "json_schema")
  local gbnf, err = core.schema_to_gbnf(text, copts)
  if not gbnf then return nil, err end
  local G = _M.engine
  if not (G and G.gbnf) then return nil, "json_schema: the grammar engine (lm.grammar.gbnf) is not available" end
  return G.gbnf(gbnf)
end

-- adds json_schema and schema_to_gbnf to the lm.grammar table G (created when nil)
function _M.install(G)
  G = G or {}
  _M.engine = G
  G.json_schema = _M.json_schema
  G.schema_to_gbnf = _M.schema_to_gbnf
  return G
end

return _M
