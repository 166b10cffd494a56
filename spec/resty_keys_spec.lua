-- moonlm.resty.access without nginx: every form of the `keys` option (a Lua list, a map
-- with limits, MOONLM_API_KEYS as keys separated by commas, a keys file) and its errors,
-- the Bearer check, the per-key limits on a clock the spec moves, and CORS. The nginx
-- functions it uses are given here: SHA-1 is coreutils' sha1sum (so key ids are the real
-- key-<8 hex digits of SHA-1>), the HMAC a keyed SHA-1 of the same, the clock a variable.
-- resty_access_spec.lua runs the same module inside nginx with a keys file.
local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function sha1_hex(s) return (sh("printf %s " .. q(s) .. " | sha1sum"):match("^%x+")) end
local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

local clock = 1000
local headers = {}
local fake_ngx = {
  sha1_bin = function(s) return unhex(sha1_hex(s)) end,
  hmac_sha1 = function(secret, s) -- keyed: the secret's bytes as hex (a shell argument holds no NUL)
    return unhex(sha1_hex(secret:gsub(".", function(c) return ("%02x"):format(c:byte()) end) .. ":" .. s))
  end,
  now = function() return clock end,
  worker = { pid = function() return 1 end },
  header = headers,
}

local function by_id(list)
  local t = {}
  for _, e in ipairs(list) do t[e.id] = e end
  return t
end

local access

describe("moonlm.resty.access keys", function()
  setup(function()
    _G.ngx = fake_ngx
    if not pcall(require, "bit") then -- Lua 5.4: its own operators (kept out of LuaJIT's parser)
      package.preload.bit = function()
        return assert(load("return { bxor = function(a, b) return a ~ b end, bor = function(a, b) return a | b end }"))()
      end
    end
    package.loaded["moonlm.resty.access"] = nil
    access = require "moonlm.resty.access"
  end)

  teardown(function()
    _G.ngx = nil
    package.loaded["moonlm.resty.access"] = nil
  end)

  it("takes a Lua list, a map with limits, keys separated by commas and a keys file", function()
    local a, b = "sk-one-0123456789", "sk-two-0123456789"
    local id_a, id_b = "key-" .. sha1_hex(a):sub(1, 8), "key-" .. sha1_hex(b):sub(1, 8)
    local l = assert(access.load { a, { id = "bee", key = b, concurrent = 2, admin = true } })
    assert.are.same({ { key = a, id = id_a, admin = false }, { key = b, id = "bee", concurrent = 2, admin = true } }, l)
    -- a map: the names are the ids
    local m = by_id(assert(access.load { alice = a, bob = { key = b, tokens_per_minute = 600 } }))
    assert.are.same({ key = a, id = "alice", admin = false }, m.alice)
    assert.are.same({ key = b, id = "bob", tokens_per_minute = 600, admin = false }, m.bob)
    -- MOONLM_API_KEYS: commas, spaces around them dropped
    local c = assert(access.load(" " .. a .. " , " .. b .. ","))
    assert.are.same({ { key = a, id = id_a, admin = false }, { key = b, id = id_b, admin = false } }, c)
    -- a file: "KEY" or "ID KEY [fields]", comments and blank lines skipped
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write("# keys\n\n", a, "\n  carol ", b, " concurrent=3 tokens_per_minute=100 admin  \n")
    f:close()
    local fl = assert(access.load(path))
    os.remove(path)
    assert.are.same({ { key = a, id = id_a, admin = false },
                      { key = b, id = "carol", concurrent = 3, tokens_per_minute = 100, admin = true } }, fl)
    -- no keys: an empty list (the server needs none)
    assert.are.same({}, access.load(nil))
    assert.are.same({}, access.load(false))
    assert.are.same({}, access.load(""))
  end)

  it("refuses bad keys with the reason and where", function()
    local paths = {}
    local function file(s)
      local path = os.tmpname()
      paths[#paths + 1] = path
      local f = assert(io.open(path, "wb"))
      f:write(s)
      f:close()
      return path
    end
    for _, c in ipairs {
      { { "short" }, "keys[1]: a key must have at least 8 characters" },
      { { "sk-0123456789", "" }, "keys[2]: a key must be a non-empty string" },
      { { 12345678 }, "keys[1]: a key must be a non-empty string" },
      { { "sk-0123 456789" }, "keys[1]: a key must not contain white space" },
      { { { id = "a b", key = "sk-0123456789" } }, "keys[1]: a key id must be a non-empty string without spaces or quotes" },
      { { { key = "sk-0123456789", concurrent = -1 } }, "keys[1]: concurrent must be a whole number >= 0" },
      { { { key = "sk-0123456789", tokens_per_minute = 1.5 } }, "keys[1]: tokens_per_minute must be a whole number >= 0" },
      { { { id = "x", key = "sk-0123456789" }, { id = "x", key = "sk-9876543210" } }, "keys[2]: the key id 'x' is used twice" },
      { { "sk-0123456789", "sk-0123456789" }, "keys[2]: the same key is listed twice" },
      { { bob = "tiny" }, "keys.bob: a key must have at least 8 characters" },
      { "sk-0123456789,short", "MOONLM_API_KEYS: a key must have at least 8 characters" },
      { "sk-0123456789, ,sk-9876543210", "MOONLM_API_KEYS: a key must be a non-empty string" },
      { 42, "keys must be a list, a map or a string, got number" },
      { file("# only a comment\n\n"), paths[1] .. ": no key in the keys file" },
      { file("alice sk-0123456789 concurrent=x\n"),
        paths[2] .. " line 1: unknown field 'concurrent=x' (concurrent=N, tokens_per_minute=N or admin)" },
      { file("sk-0123456789\nbob sk-0123456789\n"), paths[3] .. " line 2: the same key is listed twice" },
      { "./no/such/keys", "cannot read the keys file: ./no/such/keys: No such file or directory" },
    } do
      local l, err = access.load(c[1])
      assert.is_nil(l, c[2])
      assert.are.equal(c[2], err)
    end
    for _, p in ipairs(paths) do os.remove(p) end
  end)

  it("finds the key of a Bearer header and nothing else", function()
    local keys = access.new(assert(access.load { alice = "sk-alice-0123456789", bob = "sk-bob-0123456789" }), {})
    assert.is_true(keys.enabled)
    assert.are.equal("alice", keys:check("Bearer sk-alice-0123456789").id)
    assert.are.equal("bob", keys:check("bearer   sk-bob-0123456789 ").id)
    for _, c in ipairs {
      { nil, "You didn't provide an API key." },
      { "", "You didn't provide an API key." },
      { { "Bearer sk-alice-0123456789", "Bearer sk-bob-0123456789" }, "several Authorization headers were sent" },
      { "Basic sk-alice-0123456789", "The Authorization header must be of the form: Bearer YOUR_KEY" },
      { "Bearer sk-alice-0123456789 extra", "The Authorization header must be of the form: Bearer YOUR_KEY" },
      { "Bearer sk-alice-012345678", "Incorrect API key provided." }, -- a prefix
      { "Bearer sk-alice-0123456789x", "Incorrect API key provided." },
      { "Bearer SK-ALICE-0123456789", "Incorrect API key provided." },
    } do
      local e, msg = keys:check(c[1])
      assert.is_nil(e, c[2])
      assert.are.equal(c[2], msg:sub(1, #c[2]))
    end
    -- the keys themselves are not kept, only their HMAC under the worker's secret
    for _, e in ipairs(keys.list) do assert.is_nil(e.key) end
    assert.is_false(access.new({}, {}).enabled)
  end)

  it("limits requests at once and tokens per minute, with the wait in Retry-After", function()
    clock = 1000
    local keys = access.new(assert(access.load { a = { key = "sk-a-0123456789", concurrent = 1 },
                                                 t = { key = "sk-t-0123456789", tokens_per_minute = 120 },
                                                 d = "sk-d-0123456789" }), { concurrent = 2 })
    local a, t, d = keys:check("Bearer sk-a-0123456789"), keys:check("Bearer sk-t-0123456789"), keys:check("Bearer sk-d-0123456789")
    assert.are.same({ 1, 0 }, { a.concurrent, a.tokens_per_minute })
    assert.are.same({ 2, 120 }, { t.concurrent, t.tokens_per_minute }) -- the default concurrency
    assert.is_true(keys:acquire(a, 5))
    local ok, why = keys:acquire(a, 5)
    assert.is_nil(ok)
    assert.are.same({ "requests", 1 }, { why.type, why.retry_after })
    assert.are.equal("Rate limit reached for key a on requests running at once: limit 1. Retry when one of them ends.", why.message)
    keys:release(a)
    assert.is_true(keys:acquire(a, 5))
    -- the default (2 at once) for d, no token limit
    assert.is_true(keys:acquire(d, 1e6))
    assert.is_true(keys:acquire(d, 1e6))
    assert.is_nil(keys:acquire(d, 1))
    assert.is_nil(keys:headers(d))
    -- t: 120 tokens a minute = 2 a second; 100 now, 60 generated: 40 in debt
    assert.is_true(keys:acquire(t, 100))
    assert.are.same({ ["x-ratelimit-limit-tokens"] = "120", ["x-ratelimit-remaining-tokens"] = "20" }, keys:headers(t))
    keys:charge(t, 60)
    keys:release(t)
    ok, why = keys:acquire(t, 10)
    assert.is_nil(ok)
    assert.are.same({ "tokens", 25 }, { why.type, why.retry_after }) -- (10 + 40) tokens at 2 a second
    assert.are.equal("Rate limit reached for key t on tokens per minute: limit 120, available 0, requested 10."
                     .. " Please try again in 25s.", why.message)
    clock = clock + 24
    assert.is_nil(keys:acquire(t, 10))
    clock = clock + 1
    assert.is_true(keys:acquire(t, 10))
    keys:release(t)
    ok, why = keys:acquire(t, 121) -- more than a minute's worth: waiting would not help
    assert.is_nil(ok)
    assert.is_nil(why.retry_after)
    assert.are.equal("Request too large for key t on tokens per minute: limit 120, requested 121.", why.message)
    clock = clock + 600 -- the bucket holds one minute at most
    assert.is_true(keys:acquire(t, 120))
    assert.is_nil(keys:acquire(t, 1))
    assert.is_true(keys:acquire(nil, 1)) -- no key (a server without keys): no limit
  end)

  it("CORS: origins parsed and checked, preflight with the route's methods", function()
    assert.is_nil(access.cors(nil))
    assert.is_nil(access.cors(""))
    local c = assert(access.cors("https://app.example, http://localhost:3000"))
    assert.is_true(c:allowed("https://APP.example"))
    assert.is_true(c:allowed("http://localhost:3000"))
    assert.is_false(c:allowed("http://localhost:3001"))
    assert.is_false(c:allowed(nil))
    assert.is_true(assert(access.cors { "*" }):allowed("https://any.example"))
    for _, bad in ipairs { "https://app.example/path", "app.example", "ftp://x" } do
      local n, err = access.cors(bad)
      assert.is_nil(n)
      assert.are.equal(("cors_origins: '%s' is not an origin (scheme://host[:port], no path)"):format(bad), err)
    end
    assert.are.equal('cors_origins must be "*", a list of origins or a comma-separated string', select(2, access.cors(5)))
    local status, msg = c:preflight("https://evil.example", "POST", nil, { "POST" })
    assert.are.same({ 403, "the origin https://evil.example is not allowed" }, { status, msg })
    status, msg = c:preflight("https://app.example", "DELETE", nil, { "GET", "POST" })
    assert.are.same({ 405, "the method DELETE is not allowed here (use GET, POST)" }, { status, msg })
    for k in pairs(headers) do headers[k] = nil end
    assert.are.equal(204, c:preflight("https://app.example", "POST", "authorization, x-a\r\nSet-Cookie: 1", { "GET", "POST" }))
    assert.are.equal("https://app.example", headers["Access-Control-Allow-Origin"])
    assert.are.equal("GET, POST", headers["Access-Control-Allow-Methods"])
    assert.are.equal("authorization, x-aSet-Cookie 1", headers["Access-Control-Allow-Headers"]) -- no line breaks, no ':'
    assert.are.equal("600", headers["Access-Control-Max-Age"])
    for k in pairs(headers) do headers[k] = nil end
    assert.are.equal(204, c:preflight("https://app.example", "POST", nil, { "POST" }))
    assert.are.equal("Authorization, Content-Type", headers["Access-Control-Allow-Headers"])
  end)
end)
