-- moonlm.resty.metrics: counters, histograms and gauges in the Prometheus text format
-- (version 0.0.4), for GET /metrics of moonlm.resty.
--
-- Counters and histograms live in an nginx shared dict when one is given (lua_shared_dict:
-- summed over the workers, and kept across `nginx -s reload`), else in this worker's memory.
-- Gauges are read at scrape time from callbacks (the worker that answers the scrape).
--
--   local m = metrics.new { dict = ngx.shared.moonlm }            -- dict optional
--   m:counter("moonlm_requests_total", "Requests answered.")
--   m:histogram("moonlm_ttft_seconds", "Time to first token.", { 0.05, 0.1, 0.5, 1 })
--   m:gauge("moonlm_slots_busy", "Slots decoding.", function() return { { 'model="a"', 3 } } end)
--   m:counter_fn("moonlm_forward_passes_total", "...", function() return { { 'model="a"', 812 } } end)
--   m:inc("moonlm_requests_total", m.labels { endpoint = "/v1/models", status = 200 }, 1)
--   m:observe("moonlm_ttft_seconds", 'model="a"', 0.07)
--   ngx.print(m:render())
local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local setmetatable = setmetatable
local format, concat, sort = string.format, table.concat, table.sort
local huge = math.huge

local _M = {}
local Registry = {}
Registry.__index = Registry

-- Keys in the store: "m|<family>|<suffix>|<labels>", suffix "" for a counter's value, or a
-- bucket index, "sum" and "count" for a histogram.
local PREFIX = "m|"

local function escape(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- labels{ k = v, ... } -> 'k="v",...' in key order (the same set always gives the same string)
function _M.labels(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = format('%s="%s"', k, escape(t[k])) end
  return concat(parts, ",")
end
Registry.labels = _M.labels

-- A store with the shared dict's incr/get_keys/get, over a Lua table.
local function local_store()
  local t = {}
  return {
    incr = function(_, k, n) t[k] = (t[k] or 0) + n end,
    get = function(_, k) return t[k] end,
    get_keys = function()
      local ks = {}
      for k in pairs(t) do ks[#ks + 1] = k end
      return ks
    end,
  }
end

local function dict_store(dict)
  return {
    incr = function(_, k, n)
      local ok, err = dict:incr(k, n, 0)
      if not ok and ngx then ngx.log(ngx.WARN, "moonlm metrics: ", err) end
    end,
    get = function(_, k) return dict:get(k) end,
    get_keys = function() return dict:get_keys(0) end,
  }
end

-- new{ dict = a lua_shared_dict (optional) } -> registry
function _M.new(o)
  o = o or {}
  return setmetatable({ store = o.dict and dict_store(o.dict) or local_store(), families = {}, order = {} }, Registry)
end

local function family(self, name, kind, help, extra)
  local f = { name = name, kind = kind, help = help }
  for k, v in pairs(extra or {}) do f[k] = v end
  if not self.families[name] then self.order[#self.order + 1] = name end
  self.families[name] = f
  return f
end

function Registry:counter(name, help) family(self, name, "counter", help) end

-- histogram(name, help, buckets): upper bounds in increasing order (+Inf is added)
function Registry:histogram(name, help, buckets)
  local b = {}
  for i, v in ipairs(buckets) do b[i] = v end
  b[#b + 1] = huge
  family(self, name, "histogram", help, { buckets = b })
end

-- gauge(name, help, fn): fn() -> { { labels, value }, ... } at scrape time
function Registry:gauge(name, help, fn) family(self, name, "gauge", help, { fn = fn }) end

-- counter_fn(name, help, fn): a counter this process keeps itself (it restarts from 0 with
-- the worker), read like a gauge at scrape time
function Registry:counter_fn(name, help, fn) family(self, name, "counter", help, { fn = fn }) end

function Registry:inc(name, labels, n)
  self.store:incr(PREFIX .. name .. "||" .. (labels or ""), n or 1)
end

function Registry:observe(name, labels, v)
  local f = self.families[name]
  labels = labels or ""
  local base = PREFIX .. name .. "|"
  for i, le in ipairs(f.buckets) do
    if v <= le then self.store:incr(base .. i .. "|" .. labels, 1) end
  end
  self.store:incr(base .. "sum|" .. labels, v)
  self.store:incr(base .. "count|" .. labels, 1)
end

local function num(v)
  if v == huge then return "+Inf" end
  if v == -huge then return "-Inf" end
  if v ~= v then return "NaN" end
  if v == math.floor(v) and v > -1e15 and v < 1e15 then return format("%d", v) end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end

local function series(name, labels, extra)
  local l = labels
  if extra then l = (l ~= "" and l .. "," or "") .. extra end
  if l == "" then return name end
  return name .. "{" .. l .. "}"
end

-- render() -> the text exposition of every family, HELP and TYPE first, series sorted
function Registry:render()
  local data = {} -- family -> labels -> suffix -> value
  for _, k in ipairs(self.store:get_keys()) do
    if k:sub(1, #PREFIX) == PREFIX then
      local name, suffix, labels = k:match("^m|([^|]+)|([^|]*)|(.*)$")
      if name and self.families[name] then
        local v = tonumber(self.store:get(k))
        if v then
          data[name] = data[name] or {}
          data[name][labels] = data[name][labels] or {}
          data[name][labels][suffix] = v
        end
      end
    end
  end
  local out = {}
  for _, name in ipairs(self.order) do
    local f = self.families[name]
    out[#out + 1] = format("# HELP %s %s", name, f.help)
    out[#out + 1] = format("# TYPE %s %s", name, f.kind)
    if f.fn then
      local ok, rows = pcall(f.fn)
      if ok and type(rows) == "table" then
        for _, r in ipairs(rows) do out[#out + 1] = series(name, r[1], nil) .. " " .. num(r[2]) end
      end
    else
      local by = data[name] or {}
      local lbs = {}
      for l in pairs(by) do lbs[#lbs + 1] = l end
      sort(lbs)
      for _, l in ipairs(lbs) do
        local v = by[l]
        if f.kind == "counter" then
          out[#out + 1] = series(name, l) .. " " .. num(v[""] or 0)
        else
          for i, le in ipairs(f.buckets) do
            out[#out + 1] = series(name .. "_bucket", l, format('le="%s"', num(le))) .. " " .. num(v[tostring(i)] or 0)
          end
          out[#out + 1] = series(name .. "_sum", l) .. " " .. num(v.sum or 0)
          out[#out + 1] = series(name .. "_count", l) .. " " .. num(v.count or 0)
        end
      end
    end
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

return _M
