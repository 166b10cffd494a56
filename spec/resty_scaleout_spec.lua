-- Two moonlm nodes behind examples/openresty/balancer.conf on loopback, as in a rolling
-- restart: a node killed mid-stream is taken out and brought back, a node is reloaded and
-- drained while streams run through it, and no request the balancer accepted is lost: each
-- ends with a complete answer or a clean error (an HTTP error, or a stream cut short that the
-- client sees as a failed transfer, never a truncated stream that looks complete).
-- Tagged #once, and run under LuaJIT only: what it tests is nginx and the server, whatever
-- interpreter drives them.
local H = require "resty_helpers"
local lm = require "moonlm"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local sh, http, events = H.sh, H.http, H.events

if not jit then
  describe("moonlm nodes behind balancer.conf #once", function()
    pending("runs under LuaJIT only")
  end)
  return
end

local model = assert(lm.load(H.stories))
-- tokens per stream: long enough to still run when the node goes, a few seconds of the
-- nodes' one-thread decoding on this machine (a token's attention costs more the longer the
-- stream, so the time grows faster than the count): 1,200 streamed for under a second on
-- the 2026-12-07 Xeon and the drain test found its node idle. At least 1,200, at most
-- 12,000 in the nodes' 16,384-token context.
local N_CTX = 16384
local LONG = (function()
  local saved = lm.threads()
  lm.threads(1)
  local t0 = lm.clock()
  model:generate("Once upon a time", { temperature = 0, max_tokens = 1000, ignore_eos = true, n_ctx = N_CTX })
  local rate = 1000 / (lm.clock() - t0)
  lm.threads(saved)
  return math.max(1200, math.min(12000, math.floor(rate * 2)))
end)()

-- every answer the balancer gave: complete ("ok") or a clean error; nothing else
local tally = { ok = 0, error = 0 }

-- A finished stream through the balancer: complete (its full text), or cut (every event
-- before the cut whole, and the transfer reported as failed).
local full = model:generate("Once upon a time", { temperature = 0, max_tokens = LONG, ignore_eos = true, n_ctx = N_CTX })
local function check_stream(r, what)
  local chunks, done = events(r.text)
  local text = H.content(chunks)
  if r.status == 200 and r.exit == 0 and done then
    assert.are.equal(LONG, chunks[#chunks].usage.completion_tokens, what)
    assert.are.equal(full, text, what)
    tally.ok = tally.ok + 1
    return "complete"
  end
  assert.is_false(done, what .. ": [DONE] in a failed transfer")
  assert.are_not.equal(0, r.exit, what .. ": a cut stream must fail the transfer")
  assert.are.equal(full:sub(1, #text), text, what)
  tally.error = tally.error + 1
  return "cut"
end

local function check_answer(r, what)
  if r.status == 200 then
    assert.are.equal("text_completion", r.json.object, what)
    tally.ok = tally.ok + 1
  else
    assert.are.equal(503, r.status, what .. ": " .. r.text)
    assert.are.equal("string", type(r.json.error.message), what)
    tally.error = tally.error + 1
  end
  return r.status
end

local function stream_body()
  return { prompt = "Once upon a time", max_tokens = LONG, ignore_eos = true, temperature = 0, stream = true,
           stream_options = { include_usage = true } }
end

local function busy(node) -- slots decoding on a node (nil when it does not answer)
  local h = http("GET", node.url .. "/health").json
  return h and h.busy and h.tokens > 0 and h.busy or nil
end

local function status(bal, field)
  local s = {}
  for _, n in ipairs(http("GET", bal.url .. "/balancer/status").json.nodes) do s[n.node] = n[field or "up"] end
  return s
end

local function alive(pid) return select(2, sh("kill -0 " .. pid)) == 0 end
local function workers(pid) return sh("ps -o pid= --ppid " .. pid):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "") end

describe("moonlm nodes behind balancer.conf #once", function()
  local a, b, bal, addr

  setup(function()
    H.tmpdir()
    local env = { MOONLM_SLOTS = "2", MOONLM_N_CTX = tostring(N_CTX) }
    a = H.start(env)
    -- b runs as nginx's unprivileged user, master included, so that its drain can end it
    b = H.start(env, nil, nil, { user = "nobody" })
    bal = assert(launch.start { conf = "examples/openresty/balancer.conf", wait = "/balancer/status",
                                ports = { [8080] = false, [8081] = a.port, [8082] = b.port } })
    addr = { a = "127.0.0.1:" .. a.port, b = "127.0.0.1:" .. b.port }
  end)

  teardown(function()
    for _, s in ipairs { bal, a, b } do
      if s then s:stop() end
    end
    H.cleanup()
  end)

  it("takes a node that dies mid-stream out: its streams fail cleanly, the others and new requests are served", function()
    local streams = {}
    for i = 1, 4 do
      streams[i] = H.background("POST", bal.url .. "/v1/completions", stream_body())
      sh("sleep 0.05")
    end
    assert.truthy(H.until_true(20, function() return busy(a) == 2 and busy(b) == 2 end),
                  "the streams did not spread: " .. http("GET", bal.url .. "/balancer/status").text)
    local pids = a.pid .. " " .. workers(a.pid)
    sh("kill -KILL " .. pids)
    -- requests right after: refused connections are retried on b (passive health)
    local list = {}
    for i = 1, 6 do list[i] = { "POST", bal.url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 8 } } end
    for i, r in ipairs(H.parallel(list)) do
      assert.are.equal(200, check_answer(r, "request " .. i))
      assert.are.equal(addr.b, r.node)
    end
    local kinds = { complete = 0, cut = 0 }
    for i, s in ipairs(streams) do
      local r = s.wait(60)
      local kind = check_stream(r, "stream " .. i)
      kinds[kind] = kinds[kind] + 1
      if kind == "complete" then assert.are.equal(addr.b, r.node) end
    end
    assert.are.same({ complete = 2, cut = 2 }, kinds)
    assert.truthy(H.until_true(5, function() return status(bal)[addr.a] == false end), "a is still in")
    a.pid = nil -- gone; its prefix is removed in teardown
  end)

  it("passive health: a node that refuses connections max_fails times is out for fail_timeout, before any active check", function()
    -- a stand-in node that passes the first active check, then goes away; the next check
    -- is a minute later, so only the failed attempts (max_fails = 2 in 5 s) can take it out
    local port = launch.free_port()
    local node = sh(("setsid node -e \"require('http').createServer((q, r) => r.end('ok')).listen(%d, '127.0.0.1')\" >/dev/null 2>&1 & echo $!")
                    :format(port)):match("%d+")
    local gone = "127.0.0.1:" .. port
    -- listening before the balancer starts, whose first check comes at once
    assert.truthy(H.until_true(20, function() return select(2, sh("curl -s -m 1 http://" .. gone .. "/health")) == 0 end),
                  "the stand-in node did not start")
    local b2 = assert(launch.start { conf = "examples/openresty/balancer.conf", wait = "/balancer/status",
                                     ports = { [8080] = false },
                                     env = { MOONLM_NODES = gone .. "," .. addr.b, MOONLM_CHECK_INTERVAL = "60" } })
    local ok, err = pcall(function()
      local function nodes()
        local s = {}
        for _, n in ipairs(http("GET", b2.url .. "/balancer/status").json.nodes) do s[n.node] = n end
        return s
      end
      assert.truthy(H.until_true(10, function()
        local s = nodes()
        return s[gone].checks >= 1 and s[gone].up and s[addr.b].checks >= 1 and s[addr.b].up
      end), "the first checks did not pass")
      sh("kill -KILL " .. node)
      assert.truthy(H.until_true(5, function() return select(2, sh("curl -s -m 1 http://" .. gone .. "/")) ~= 0 end))
      -- one after the other: each tries the stand-in (its turn), fails over to b, and counts
      local out
      for i = 1, 4 do
        local r = http("POST", b2.url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 4 })
        assert.are.equal(200, check_answer(r, "request " .. i))
        assert.are.equal(addr.b, r.node)
        local s = nodes()[gone]
        if not s.up then out = out or s end
      end
      -- out, and not by an active check: the only one passed
      assert.truthy(out, "the stand-in node was never taken out")
      assert.are.same({ true, false, 1 }, { out.healthy, out.up, out.checks })
      assert.is_true(out.passive_down_s > 0 and out.passive_down_s <= 5, tostring(out.passive_down_s))
    end)
    b2:stop()
    sh("kill -KILL " .. node .. " 2>/dev/null")
    assert(ok, err)
  end)

  it("brings the node back once its /health answers again", function()
    local prefix = a.prefix
    a = H.start({ MOONLM_SLOTS = "2", MOONLM_N_CTX = tostring(N_CTX) }, nil, { [8080] = a.port })
    sh("rm -rf " .. H.q(prefix))
    assert.truthy(H.until_true(10, function() return status(bal)[addr.a] == true end), "a did not come back")
    local long = { prompt = "Once upon a time", max_tokens = 400, ignore_eos = true }
    local rs = H.parallel { { "POST", bal.url .. "/v1/completions", long },
                            { "POST", bal.url .. "/v1/completions", long, delay = 0.1 } }
    local nodes = {}
    for i, r in ipairs(rs) do
      assert.are.equal(200, check_answer(r, "request " .. i))
      nodes[r.node] = true
    end
    assert.are.same({ [addr.a] = true, [addr.b] = true }, nodes)
  end)

  it("nginx -s reload keeps the streams in flight", function()
    local s = H.background("POST", b.url .. "/v1/completions", stream_body())
    assert.truthy(H.until_true(20, function() return busy(b) == 1 end))
    local old = workers(b.pid)
    sh("kill -HUP " .. b.pid)
    local r = s.wait(60)
    assert.are.equal("complete", check_stream(r, "the stream across the reload"))
    assert.truthy(H.until_true(20, function()
      return workers(b.pid) ~= old and busy(b) == nil and http("GET", b.url .. "/health").status == 200
    end), "no new worker")
    assert.are.equal(200, http("POST", b.url .. "/v1/completions", { prompt = "Once", max_tokens = 4 }).status)
  end)

  it("drains a node: new requests go elsewhere, its streams finish, then it exits; SIGQUIT does the same", function()
    -- the balancer has both nodes in (after b's reload its checks may have seen "loading"
    -- and want `rise` passes before taking b back)
    assert.truthy(H.until_true(20, function()
      local s = status(bal)
      return s[addr.a] and s[addr.b]
    end), "the balancer does not have both nodes in")
    local streams = {}
    for i = 1, 4 do
      streams[i] = H.background("POST", bal.url .. "/v1/completions", stream_body())
      sh("sleep 0.05")
    end
    assert.truthy(H.until_true(20, function() return busy(a) == 2 and busy(b) == 2 end),
                  "the streams did not spread: " .. http("GET", bal.url .. "/balancer/status").text)
    local d = http("POST", b.url .. "/admin/drain")
    assert.are.equal(202, d.status, d.text)
    assert.are.same({ "draining", 2 }, { d.json.status, d.json.running })
    assert.are.equal("draining", http("GET", b.url .. "/health").json.status)
    local direct = http("POST", b.url .. "/v1/completions", { prompt = "Once", max_tokens = 4 })
    assert.are.equal(503, direct.status)
    assert.are.equal("draining", direct.json.error.code)
    assert.are.equal("1", direct.header("retry-after"))
    -- the active check (its /health answers 503 "draining") takes b out while b is alive and
    -- still runs its two streams: out by the timer, not by refused connections
    assert.truthy(H.until_true(5, function() return status(bal, "healthy")[addr.b] == false end),
                  "the active check did not take the draining node out: " .. http("GET", bal.url .. "/balancer/status").text)
    assert.is_true(alive(b.pid))
    assert.are.equal(2, http("GET", b.url .. "/health").json.busy)
    assert.is_true(status(bal, "healthy")[addr.a])
    -- through the balancer: every new request is served by a
    local list = {}
    for i = 1, 6 do list[i] = { "POST", bal.url .. "/v1/completions", { prompt = "Once upon a time", max_tokens = 8 } } end
    for i, r in ipairs(H.parallel(list)) do
      assert.are.equal(200, check_answer(r, "request " .. i))
      assert.are.equal(addr.a, r.node)
    end
    for i, s in ipairs(streams) do
      assert.are.equal("complete", check_stream(s.wait(60), "stream " .. i))
    end
    assert.truthy(H.until_true(15, function() return not alive(b.pid) end), "b did not exit")
    b.pid = nil
    assert.truthy(H.until_true(5, function() return status(bal)[addr.b] == false end))
    -- the signal: nginx's graceful quit finishes a's running stream too
    local s = H.background("POST", a.url .. "/v1/completions", stream_body())
    assert.truthy(H.until_true(20, function() return busy(a) == 1 end))
    sh("kill -QUIT " .. a.pid)
    assert.are.equal("complete", check_stream(s.wait(60), "the stream across SIGQUIT"))
    assert.truthy(H.until_true(10, function() return not alive(a.pid) end), "a did not exit")
    a.pid = nil
    -- with no node left, the balancer answers a clean 503
    local none = http("POST", bal.url .. "/v1/completions", { prompt = "Once", max_tokens = 4 })
    assert.are.equal(503, check_answer(none, "no node"))
    assert.are.equal("no_node_available", none.json.error.code)
    assert.are.equal(2, tally.error - 1) -- the two streams of the killed node, and the last one
    assert.is_true(tally.ok >= 20, json.encode(tally))
  end)
end)
