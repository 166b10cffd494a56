-- moonlm.resty.balancer: spreads requests over moonlm nodes from an nginx in front of them
-- (examples/openresty/balancer.conf): nginx proxies, this module only picks the node, in
-- balancer_by_lua, and knows which nodes are healthy.
--
--   * Choice: a request with an X-Conversation-Id header goes to the node that the id hashes
--     to (rendezvous hashing over the healthy nodes: a conversation keeps its node, and so
--     its KV cache, as long as that node is up); others go to the node with the fewest
--     requests in flight from this balancer.
--   * Passive health, as nginx's max_fails / fail_timeout: `max_fails` failed attempts
--     (connection refused or reset, timeout) within `fail_timeout` seconds take a node out
--     for `fail_timeout` seconds; the request is retried on another node (nginx's
--     proxy_next_upstream decides which failures are retried).
--   * Active health: a timer asks every node's GET /health each `interval` seconds; `fall`
--     failed checks in a row take a node out (a draining node answers 503 "draining"), `rise`
--     passed ones bring it back.
--   * A node that is out gets no new request; requests already there run to their end.
--     When no node is left, the request ends with 502, which balancer.conf's error_page
--     turns into an OpenAI-style 503.
--
-- State is per balancer worker (run the balancer with worker_processes 1, or accept that
-- each worker learns the nodes' health on its own).
local ngx = ngx
local balancer = require "ngx.balancer"

local pairs, ipairs, tostring, tonumber, type = pairs, ipairs, tostring, tonumber, type
local crc32 = ngx.crc32_long
local now = ngx.now

local _M = {}

local defaults = { interval = 1, timeout = 1, fall = 1, rise = 2, max_fails = 2, fail_timeout = 5, health = "/health" }
local known = { nodes = true, interval = true, timeout = true, fall = true, rise = true, max_fails = true,
                fail_timeout = true, health = true }

local B -- { o, nodes = { { addr, host, port, healthy, passes, failures, fails = {times}, down_until, conns } }, rr }

-- init{ nodes = { "host:port", ... } or "host:port,host:port", interval [1], timeout [1],
--       fall [1], rise [2], max_fails [2], fail_timeout [5], health ["/health"] }
-- in init_worker_by_lua. Returns true | nil, err (also logged).
function _M.init(opts)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if not known[k] then
      local err = ("moonlm balancer: unknown option '%s'"):format(tostring(k))
      ngx.log(ngx.ERR, err)
      return nil, err
    end
    o[k] = v
  end
  local list = o.nodes
  if type(list) == "string" then
    local t = {}
    for a in list:gmatch("[^,%s]+") do t[#t + 1] = a end
    list = t
  end
  local nodes = {}
  for _, addr in ipairs(type(list) == "table" and list or {}) do
    local host, port = tostring(addr):match("^([^:]+):(%d+)$")
    if not host then
      local err = ("moonlm balancer: '%s' is not host:port"):format(tostring(addr))
      ngx.log(ngx.ERR, err)
      return nil, err
    end
    nodes[#nodes + 1] = { addr = addr, host = host, port = tonumber(port), healthy = true, passes = 0, failures = 0,
                          fails = {}, down_until = 0, conns = 0, checks = 0 }
  end
  if #nodes == 0 then
    ngx.log(ngx.ERR, "moonlm balancer: no nodes")
    return nil, "no nodes"
  end
  B = { o = o, nodes = nodes, rr = 0 }
  local ok, err = ngx.timer.every(o.interval, _M.check)
  if not ok then ngx.log(ngx.ERR, "moonlm balancer: cannot start the health checks: ", err) end
  ngx.timer.at(0, _M.check)
  return true
end

local function available(n, t) return n.healthy and t >= n.down_until end

---------------------------------------------------------------------------------------
-- Active checks

local function probe(n)
  local sock = ngx.socket.tcp()
  sock:settimeout(B.o.timeout * 1000)
  local ok, err = sock:connect(n.host, n.port)
  if not ok then return false, "connect: " .. tostring(err) end
  ok, err = sock:send(("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: moonlm-balancer\r\n\r\n"):format(B.o.health, n.addr))
  if not ok then
    sock:close()
    return false, "send: " .. tostring(err)
  end
  local line
  line, err = sock:receive("*l")
  sock:close()
  if not line then return false, "receive: " .. tostring(err) end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if status ~= 200 then return false, "status " .. tostring(status) end
  return true
end

local function mark(n, ok, why)
  n.checks = n.checks + 1
  if ok then
    n.passes, n.failures = n.passes + 1, 0
    if not n.healthy and n.passes >= B.o.rise then
      n.healthy = true
      n.fails, n.down_until = {}, 0 -- a passed check also clears the passive state
      ngx.log(ngx.NOTICE, "moonlm balancer: ", n.addr, " is back")
    end
  else
    n.failures, n.passes = n.failures + 1, 0
    if n.healthy and n.failures >= B.o.fall then
      n.healthy = false
      ngx.log(ngx.WARN, "moonlm balancer: ", n.addr, " is out (", why, ")")
    end
  end
end

-- check(): one round of health checks, all nodes at once (a timer callback)
function _M.check(premature)
  if premature or not B then return end
  local threads = {}
  for i, n in ipairs(B.nodes) do threads[i] = ngx.thread.spawn(probe, n) end
  for i, th in ipairs(threads) do
    local done, ok, why = ngx.thread.wait(th)
    mark(B.nodes[i], done and ok, done and why or "check failed")
  end
end

---------------------------------------------------------------------------------------
-- Passive checks and the choice

local function passive_failure(n, t)
  local fails, keep = n.fails, {}
  for _, at in ipairs(fails) do
    if t - at < B.o.fail_timeout then keep[#keep + 1] = at end
  end
  keep[#keep + 1] = t
  n.fails = keep
  if #keep >= B.o.max_fails then
    n.down_until = t + B.o.fail_timeout
    n.fails = {}
    ngx.log(ngx.WARN, "moonlm balancer: ", n.addr, " failed ", #keep, " times in ", B.o.fail_timeout,
            " s: out for ", B.o.fail_timeout, " s")
  end
end

local function pick(tried, conv, t)
  local best, best_key
  for i, n in ipairs(B.nodes) do
    if not tried[i] and available(n, t) then
      local key
      if conv then
        key = crc32(conv .. "\0" .. n.addr)
      else
        -- fewest requests in flight; ties go round robin
        key = -n.conns * 65536 - ((i - B.rr - 1) % #B.nodes)
      end
      if not best or key > best_key then best, best_key = i, key end
    end
  end
  return best
end

-- balance(): in balancer_by_lua
function _M.balance()
  local ctx = ngx.ctx
  local t = now()
  local st = ctx.moonlm_balancer
  if not st then
    st = { tried = {}, tries = 0 }
    ctx.moonlm_balancer = st
  else
    -- a retry: the last node failed ("failed": no connection or no answer) or answered
    -- with a status proxy_next_upstream retries ("next", e.g. 503)
    local kind = balancer.get_last_failure()
    local last = B.nodes[st.current]
    if last then
      last.conns = last.conns - 1
      if kind == "failed" then passive_failure(last, t) end
    end
  end
  local conv = ngx.var.http_x_conversation_id
  if conv == "" then conv = nil end
  local i = pick(st.tried, conv, t)
  if not i then
    -- no peer set: nginx falls back to the placeholder server, which cannot be reached, and
    -- ends the request with 502 (the error_page of balancer.conf turns it into a JSON 503)
    st.current = nil
    ngx.log(ngx.ERR, "moonlm balancer: no node available")
    return
  end
  local n = B.nodes[i]
  st.tried[i], st.current, st.tries = true, i, st.tries + 1
  B.rr = i
  n.conns = n.conns + 1
  if st.tries == 1 then
    local left = 0
    for k, m in ipairs(B.nodes) do
      if k ~= i and available(m, t) then left = left + 1 end
    end
    if left > 0 then balancer.set_more_tries(left) end
  end
  local ok, err = balancer.set_current_peer(n.host, n.port)
  if not ok then
    ngx.log(ngx.ERR, "moonlm balancer: ", n.addr, ": ", err)
    return ngx.exit(500)
  end
end

-- log(): in log_by_lua of the proxying location: the request no longer counts for its node.
function _M.log()
  local st = ngx.ctx.moonlm_balancer
  local n = st and st.current and B.nodes[st.current]
  if n then
    n.conns = n.conns - 1
    st.current = nil
  end
end

-- status(): GET handler: the nodes as this worker sees them, as JSON.
function _M.status()
  local json = require "moonlm.json"
  local t = now()
  local list = {}
  for i, n in ipairs(B and B.nodes or {}) do
    list[i] = json.object({ node = n.addr, up = available(n, t), healthy = n.healthy,
                            passive_down_s = math.max(0, n.down_until - t), in_flight = n.conns, checks = n.checks },
                          { "node", "up", "healthy", "passive_down_s", "in_flight", "checks" })
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(json.encode(json.object({ nodes = json.array(list) }), { compact = true }))
end

return _M
