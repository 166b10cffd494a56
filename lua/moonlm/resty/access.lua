-- moonlm.resty.access: who may call the server, from where, and how much (used by
-- moonlm.resty in the nginx worker).
--
--   * API keys: `Authorization: Bearer <key>`, checked in constant time (an HMAC of the
--     presented key under a per-worker secret, compared byte by byte against every key's
--     without stopping early, so the time depends on the number of keys only). A key is
--     never logged: requests are known by the key's id.
--   * CORS: allowed origins; preflight (OPTIONS) answered with the methods of the route.
--   * Per-key limits: requests running at once, and tokens per minute (a token bucket that
--     refills continuously: prompt tokens are charged when a request is admitted, the
--     generated ones when it ends, so a key that overdrew waits its debt out).
--
-- Keys (the `keys` option of moonlm.resty.init, else the MOONLM_API_KEYS environment variable):
--   a list       { "sk-one", "sk-two" }, or entries { id = "alice", key = "sk-...",
--                concurrent = 2, tokens_per_minute = 20000, admin = true }
--   a map        { alice = "sk-...", bob = { key = "sk-...", concurrent = 1 } }
--   a string     a file path (starting with "/" or "."), else keys separated by commas
-- A keys file has one key per line: `KEY`, or `ID KEY [concurrent=N] [tokens_per_minute=N]
-- [admin]`; blank lines and lines starting with # are skipped. It is read when the worker
-- starts, so `nginx -s reload` re-reads it. A key without an id is known as key-<8 hex digits
-- of its SHA-1>.
local ngx = ngx
local bit = require "bit"
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local byte, format, concat = string.byte, string.format, table.concat
local bxor, bor = bit.bxor, bit.bor
local ceil, max, min = math.ceil, math.max, math.min

local _M = {}

---------------------------------------------------------------------------------------
-- Keys

local function hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

local function worker_secret()
  local f = io.open("/dev/urandom", "rb")
  local s = f and f:read(32)
  if f then f:close() end
  if not s or #s < 32 then s = tostring(ngx.now()) .. tostring(ngx.worker.pid()) .. tostring({}) end
  return s
end

local limit_fields = { concurrent = true, tokens_per_minute = true }

-- One entry from the `keys` option or a file line; the key checked for shape.
local function entry(e, where)
  if type(e.key) ~= "string" or e.key == "" then return nil, where .. ": a key must be a non-empty string" end
  if e.key:find("%s") then return nil, where .. ": a key must not contain white space" end
  if #e.key < 8 then return nil, where .. ": a key must have at least 8 characters" end
  if e.id ~= nil and (type(e.id) ~= "string" or e.id == "" or e.id:find("[%s\"\\]")) then
    return nil, where .. ": a key id must be a non-empty string without spaces or quotes"
  end
  for k in pairs(limit_fields) do
    local v = e[k]
    if v ~= nil and (type(v) ~= "number" or v < 0 or v ~= math.floor(v)) then
      return nil, ("%s: %s must be a whole number >= 0"):format(where, k)
    end
  end
  return { key = e.key, id = e.id or ("key-" .. hex(ngx.sha1_bin(e.key)):sub(1, 8)), concurrent = e.concurrent,
           tokens_per_minute = e.tokens_per_minute, admin = e.admin == true }
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read the keys file: " .. tostring(err) end
  local list, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub("^%s+", ""):gsub("%s+$", "")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local words = {}
      for w in line:gmatch("%S+") do words[#words + 1] = w end
      local e = #words == 1 and { key = words[1] } or { id = words[1], key = words[2] }
      for i = 3, #words do
        local k, v = words[i]:match("^([%w_]+)=(%d+)$")
        if k and limit_fields[k] then
          e[k] = tonumber(v)
        elseif words[i] == "admin" then
          e.admin = true
        else
          f:close()
          return nil, ("%s line %d: unknown field '%s' (concurrent=N, tokens_per_minute=N or admin)"):format(path, n, words[i])
        end
      end
      list[#list + 1] = { e, ("%s line %d"):format(path, n) }
    end
  end
  f:close()
  return list
end

-- load(spec) -> list of key entries (empty: no key needed) | nil, err
function _M.load(spec)
  if spec == nil or spec == false or spec == "" then return {} end
  local raw = {}
  if type(spec) == "string" then
    if spec:match("^[/.]") then
      local list, err = read_file(spec)
      if not list then return nil, err end
      raw = list
      if #raw == 0 then return nil, spec .. ": no key in the keys file" end
    else
      for k in spec:gmatch("[^,]+") do raw[#raw + 1] = { { key = k:gsub("^%s+", ""):gsub("%s+$", "") }, "MOONLM_API_KEYS" } end
    end
  elseif type(spec) == "table" then
    for i, v in ipairs(spec) do
      raw[#raw + 1] = { type(v) == "table" and v or { key = v }, ("keys[%d]"):format(i) }
    end
    for k, v in pairs(spec) do
      if type(k) == "string" then
        local e = {}
        if type(v) == "table" then for f, x in pairs(v) do e[f] = x end else e.key = v end
        e.id = k
        raw[#raw + 1] = { e, ("keys.%s"):format(k) }
      end
    end
  else
    return nil, "keys must be a list, a map or a string, got " .. type(spec)
  end
  local list, ids, seen = {}, {}, {}
  for _, r in ipairs(raw) do
    local e, err = entry(r[1], r[2])
    if not e then return nil, err end
    -- the key first: a key listed twice without ids would otherwise be reported as an id
    -- (key-<SHA-1>) the operator never wrote
    if seen[e.key] then return nil, ("%s: the same key is listed twice"):format(r[2]) end
    if ids[e.id] then return nil, ("%s: the key id '%s' is used twice"):format(r[2], e.id) end
    ids[e.id], seen[e.key] = true, true
    list[#list + 1] = e
  end
  return list
end

local Keys = {}
Keys.__index = Keys

-- new(list from load, { concurrent, tokens_per_minute } defaults) -> keys
function _M.new(list, defaults)
  local self = setmetatable({ list = {}, secret = worker_secret(), state = {} }, Keys)
  for _, e in ipairs(list) do
    self.list[#self.list + 1] = {
      id = e.id, admin = e.admin, mac = ngx.hmac_sha1(self.secret, e.key),
      concurrent = e.concurrent or defaults.concurrent or 0,
      tokens_per_minute = e.tokens_per_minute or defaults.tokens_per_minute or 0,
    }
  end
  self.enabled = #self.list > 0
  return self
end

-- The entry whose key is `token`, or nil: every key is compared, every byte of each.
function Keys:find(token)
  local mac = ngx.hmac_sha1(self.secret, token)
  local found
  for _, e in ipairs(self.list) do
    local diff, m = 0, e.mac
    for i = 1, #mac do diff = bor(diff, bxor(byte(mac, i), byte(m, i))) end
    if diff == 0 then found = e end
  end
  return found
end

-- check(authorization header) -> entry | nil, message
function Keys:check(header)
  if type(header) == "table" then return nil, "several Authorization headers were sent" end
  if not header or header == "" then
    return nil, "You didn't provide an API key. You need to provide your API key in an Authorization header"
                .. " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
  end
  local token = header:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
  if not token then return nil, "The Authorization header must be of the form: Bearer YOUR_KEY" end
  local e = self:find(token)
  if not e then return nil, "Incorrect API key provided." end
  return e
end

---------------------------------------------------------------------------------------
-- Per-key limits (this worker's requests)

local function state(self, e)
  local s = self.state[e.id]
  if not s then
    s = { running = 0, level = e.tokens_per_minute, at = ngx.now() }
    self.state[e.id] = s
  end
  return s
end

local function refill(e, s)
  local t = ngx.now()
  local cap = e.tokens_per_minute
  s.level = min(cap, s.level + (t - s.at) * cap / 60)
  s.at = t
end

-- acquire(entry, prompt tokens) -> true | nil, { message, type, retry_after (seconds or nil) }
-- On success the request counts as running for its key until release().
function Keys:acquire(e, tokens)
  if not e then return true end
  local s = state(self, e)
  if e.concurrent > 0 and s.running >= e.concurrent then
    return nil, { type = "requests", retry_after = 1,
                  message = ("Rate limit reached for key %s on requests running at once: limit %d. Retry when one of them ends.")
                            :format(e.id, e.concurrent) }
  end
  local tpm = e.tokens_per_minute
  if tpm > 0 then
    refill(e, s)
    if tokens > tpm then
      return nil, { type = "tokens",
                    message = ("Request too large for key %s on tokens per minute: limit %d, requested %d.")
                              :format(e.id, tpm, tokens) }
    end
    if s.level < tokens then
      local wait = max(1, ceil((tokens - s.level) * 60 / tpm))
      return nil, { type = "tokens", retry_after = wait,
                    message = ("Rate limit reached for key %s on tokens per minute: limit %d, available %d, requested %d."
                               .. " Please try again in %ds."):format(e.id, tpm, math.floor(max(0, s.level)), tokens, wait) }
    end
    s.level = s.level - tokens
  end
  s.running = s.running + 1
  return true
end

-- Tokens used by a running request beyond what acquire charged (the generated ones).
function Keys:charge(e, tokens)
  if not e or e.tokens_per_minute <= 0 or tokens <= 0 then return end
  local s = state(self, e)
  refill(e, s)
  s.level = s.level - tokens
end

function Keys:release(e)
  if not e then return end
  local s = state(self, e)
  s.running = max(0, s.running - 1)
end

-- The x-ratelimit-* headers for a key after a request was admitted.
function Keys:headers(e)
  if not e or e.tokens_per_minute <= 0 then return nil end
  local s = state(self, e)
  return { ["x-ratelimit-limit-tokens"] = tostring(e.tokens_per_minute),
           ["x-ratelimit-remaining-tokens"] = tostring(math.floor(max(0, s.level))) }
end

---------------------------------------------------------------------------------------
-- CORS

local Cors = {}
Cors.__index = Cors

-- cors(origins) -> cors | nil, err. origins: nil (no CORS headers), "*", a list of origins,
-- or a string of origins separated by commas.
function _M.cors(origins, max_age)
  if origins == nil or origins == "" or origins == false then return nil end
  local self = setmetatable({ any = false, set = {}, max_age = max_age or 600 }, Cors)
  local list = origins
  if type(origins) == "string" then
    list = {}
    for o in origins:gmatch("[^,%s]+") do list[#list + 1] = o end
  elseif type(origins) ~= "table" then
    return nil, "cors_origins must be \"*\", a list of origins or a comma-separated string"
  end
  for _, o in ipairs(list) do
    if o == "*" then
      self.any = true
    elseif type(o) ~= "string" or not o:match("^https?://[^/%s]+$") then
      return nil, ("cors_origins: '%s' is not an origin (scheme://host[:port], no path)"):format(tostring(o))
    else
      self.set[o:lower()] = true
    end
  end
  return self
end

function Cors:allowed(origin)
  return type(origin) == "string" and (self.any or self.set[origin:lower()] == true)
end

local EXPOSE = "Retry-After, X-Moonlm-Node, X-Request-Id, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens"

-- Headers on an actual request from an allowed origin.
function Cors:apply(origin)
  if not self:allowed(origin) then return end
  ngx.header["Access-Control-Allow-Origin"] = origin
  ngx.header["Access-Control-Expose-Headers"] = EXPOSE
  ngx.header["Vary"] = "Origin"
end

-- preflight(origin, requested method, requested headers, methods of the route) -> status
function Cors:preflight(origin, method, headers, methods)
  if not self:allowed(origin) then return 403, ("the origin %s is not allowed"):format(tostring(origin)) end
  local ok = false
  for _, m in ipairs(methods) do
    if m == method then ok = true end
  end
  if not ok then return 405, ("the method %s is not allowed here (use %s)"):format(tostring(method), concat(methods, ", ")) end
  ngx.header["Access-Control-Allow-Origin"] = origin
  ngx.header["Access-Control-Allow-Methods"] = concat(methods, ", ")
  -- the headers a client asks for (the openai client sends x-stainless-*): echoed, with the
  -- two every call needs
  local h = type(headers) == "string" and headers:gsub("[^%w%-_, ]", "") or ""
  ngx.header["Access-Control-Allow-Headers"] = h ~= "" and h or "Authorization, Content-Type"
  ngx.header["Access-Control-Max-Age"] = tostring(self.max_age)
  ngx.header["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
  return 204
end

return _M
