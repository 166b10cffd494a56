-- moonlm.resty.launch: start and stop a real nginx running moonlm.resty, from plain Lua
-- (Lua 5.1 to 5.4, no OpenResty needed): what `make serve`, the specs and bench/serve.lua
-- use. Each server gets a temporary prefix (config, logs, temp files), a copy of a config
-- file with its ports replaced, and links to moonlm's Lua files and LuaJIT module, so the
-- config's "$prefix/lua" and "$prefix/lib" paths work from anywhere.
--
--   local launch = require "moonlm.resty.launch"
--   local srv = assert(launch.start { conf = "examples/openresty/nginx.conf",
--                                     env = { MOONLM_MODEL = "/path/model.gguf" } })
--   print(srv.url)   -- http://127.0.0.1:<free port>
--   srv:stop()       -- kill -QUIT by pid, wait for exit, remove the prefix
local _M = {}

local Server = {}
Server.__index = Server

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- run(cmd) -> ok, output, exit status (read from the shell: LuaJIT's pipe close does not
-- report it)
local function run(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("rc=(%d+)%s*$"))
  out = out:gsub("rc=%d+%s*$", "")
  return code == 0, out, code
end

local function sleep(s) os.execute("sleep " .. s) end

local function abspath(p)
  if p:sub(1, 1) == "/" then return p end
  local _, cwd = run("pwd")
  return cwd:gsub("%s+$", "") .. "/" .. p
end

-- The loopback TCP ports something listens on now.
local function used_ports()
  local used = {}
  local _, out = run("ss -Htln 2>/dev/null || netstat -tln 2>/dev/null")
  for port in out:gmatch(":(%d+)%s") do used[tonumber(port)] = true end
  return used
end

local seeded = false
-- free_port([avoid]) -> a port in 20000..59999 nothing listens on (and not in avoid)
function _M.free_port(avoid)
  if not seeded then
    math.randomseed(os.time() + math.floor((os.clock() * 1e6) % 1e6) + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0) % 100000)
    seeded = true
  end
  local used = used_ports()
  for _ = 1, 200 do
    local p = math.random(20000, 59999)
    if not used[p] and not (avoid and avoid[p]) then return p end
  end
  error("no free port found")
end

-- The directory holding ndk_http_module.so and ngx_http_lua_module.so.
function _M.module_dir()
  for _, d in ipairs { "/usr/share/nginx/modules", "/usr/lib/nginx/modules" } do
    if read(d .. "/ngx_http_lua_module.so") then return d end
  end
  return nil, "lua-nginx-module not found (apt-get install nginx libnginx-mod-http-lua)"
end

local function tail(path, n)
  local s = read(path) or ""
  local lines = {}
  for l in s:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return table.concat(lines, "\n", math.max(1, #lines - (n or 15) + 1))
end

-- Prepare a prefix: conf (ports replaced), logs/, tmp/, lua -> lua_dir, lib -> lib_dir.
local function prepare(o, ports)
  local conf = read(o.conf)
  if not conf then return nil, "cannot read " .. o.conf end
  local ok, prefix = run("mktemp -d /tmp/moonlm-nginx.XXXXXX")
  if not ok then return nil, "mktemp: " .. prefix end
  prefix = prefix:gsub("%s+$", "")
  conf = conf:gsub("(127%.0%.0%.1:)(%d+)", function(host, p)
    local new = ports[tonumber(p)]
    return host .. (new or p)
  end)
  local mdir = _M.module_dir()
  if mdir then conf = conf:gsub("/usr/share/nginx/modules/", mdir .. "/") end
  -- the workers run as an unprivileged user when nginx starts as root: they must be able to
  -- read the prefix
  local cmd = ("chmod 755 %s && mkdir -p %s/logs %s/tmp && ln -s %s %s/lua && ln -s %s %s/lib"):format(
    sh_quote(prefix), sh_quote(prefix), sh_quote(prefix), sh_quote(abspath(o.lua_dir or "lua")), sh_quote(prefix),
    sh_quote(abspath(o.lib_dir or "build/5.1")), sh_quote(prefix))
  local rok, out = run(cmd)
  if not rok then
    run("rm -rf " .. sh_quote(prefix))
    return nil, out
  end
  local f = assert(io.open(prefix .. "/nginx.conf", "wb"))
  f:write(conf)
  f:close()
  return prefix
end

local function env_prefix(env)
  local parts = {}
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. sh_quote(v) end
  table.sort(parts)
  return #parts > 0 and "env " .. table.concat(parts, " ") .. " " or ""
end

-- http_get(url) -> status, body
local function http_get(url)
  local _, out = run(("curl -s -m 2 -w '\n%%{http_code}' %s"):format(sh_quote(url)))
  return tonumber(out:match("(%d+)%s*$")), out:match("^(.*)\n%d+%s*$")
end

-- start{ conf, ports = { [port in conf] = port to use } (default: 8080 -> a free one),
--        env = { MOONLM_MODEL = ... }, lua_dir ["lua"], lib_dir ["build/5.1"],
--        wait ["/health": until it answers 200], timeout [60], watch [true]: stop the server when this process
--        ends without doing so, user: run nginx (master and workers) as this user (when root;
--        e.g. "nobody", so that a worker may signal its master) } -> server | nil, err
-- server: { prefix, port (what 8080 became), ports, url, pid, stop = function }
function _M.start(o)
  local last_err
  for _ = 1, 5 do
    local ports, fixed, taken = {}, true, {}
    for _, to in pairs(o.ports or {}) do
      if to then taken[to] = true end
    end
    for from, to in pairs(o.ports or { [8080] = false }) do
      if not to then to, fixed = _M.free_port(taken), false end
      ports[from], taken[to] = to, true
    end
    local prefix, err = prepare(o, ports)
    if not prefix then return nil, err end
    local as = ""
    if o.user and select(2, run("id -u")):match("^0") then
      run(("chown %s %s %s/logs %s/tmp %s/nginx.conf"):format(sh_quote(o.user), sh_quote(prefix), sh_quote(prefix),
                                                             sh_quote(prefix), sh_quote(prefix)))
      as = "runuser -u " .. sh_quote(o.user) .. " -- "
    end
    local ok, out = run(("%s%snginx -p %s/ -c %s/nginx.conf -e %s/logs/error.log"):format(as, env_prefix(o.env),
                        sh_quote(prefix), sh_quote(prefix), sh_quote(prefix)))
    local self = setmetatable({ prefix = prefix, ports = ports, port = ports[8080] or select(2, next(ports)) }, Server)
    self.url = "http://127.0.0.1:" .. self.port
    if ok then
      local deadline = os.time() + (o.timeout or 60)
      while os.time() <= deadline do
        self.pid = self.pid or tonumber(read(prefix .. "/logs/nginx.pid") or "")
        if self.pid then
          local status, body = 200, nil
          if o.wait ~= false then status, body = http_get(self.url .. (o.wait or "/health")) end
          if status == 200 then
            if o.watch ~= false then self:watch() end
            return self
          end
          if status == 503 and not (body or ""):find('"loading"', 1, true) then
            last_err = "the server did not start:\n" .. tail(prefix .. "/logs/error.log")
            break
          end
        end
        sleep(0.05)
      end
      last_err = last_err or ("no answer from %s:\n%s"):format(self.url, tail(prefix .. "/logs/error.log"))
      self:stop()
    else
      last_err = out
      run("rm -rf " .. sh_quote(prefix))
    end
    -- a port taken between the check and the bind: try others
    if fixed or not (last_err or ""):find("Address already in use", 1, true) then break end
  end
  return nil, last_err
end

-- A watchdog: when this Lua process ends without stopping the server (a test run that was
-- killed), stop it and remove its prefix. It acts only on a process whose command line still
-- names this prefix, so a recycled pid is never touched.
function Server:watch()
  local check = ("grep -q %s /proc/%d/cmdline 2>/dev/null"):format(sh_quote(self.prefix), self.pid)
  local _, out = run(("(while kill -0 $PPID 2>/dev/null && %s; do sleep 1; done; %s && kill -QUIT %d; sleep 3; rm -rf %s)"
                      .. " </dev/null >/dev/null 2>&1 & echo $!"):format(check, check, self.pid, sh_quote(self.prefix)))
  self.watchdog = tonumber(out:match("%d+"))
end

-- stop(): kill -QUIT (graceful), then -TERM and -KILL if it does not go; remove the prefix
-- unless keep is true.
function Server:stop(keep)
  if self.watchdog then
    run("kill " .. self.watchdog)
    self.watchdog = nil
  end
  if self.pid then
    local pid = tostring(self.pid)
    local function alive() return (run("kill -0 " .. pid)) end
    run("kill -QUIT " .. pid)
    for i = 1, 100 do
      if not alive() then break end
      if i == 60 then run("kill -TERM " .. pid) end
      if i == 90 then run("kill -KILL " .. pid) end
      sleep(0.05)
    end
    self.pid = nil
  end
  if not keep and self.prefix then
    run("rm -rf " .. sh_quote(self.prefix))
    self.prefix = nil
  end
end

function Server:error_log() return read(self.prefix .. "/logs/error.log") or "" end

-- serve{ model, port [8080], threads, conf [examples/openresty/nginx.conf], env, lua_dir,
-- lib_dir }: run nginx in the foreground until it is interrupted (Ctrl-C), then remove its
-- prefix. What `make serve` runs.
function _M.serve(o)
  local port = tonumber(o.port) or 8080
  o.conf = o.conf or "examples/openresty/nginx.conf"
  o.env = o.env or {}
  if o.model then o.env.MOONLM_MODEL = o.model end
  if o.threads and o.threads ~= "" then o.env.MOONLM_THREADS = tostring(o.threads) end
  local prefix, err = prepare(o, { [8080] = port })
  if not prefix then
    io.stderr:write("moonlm: ", err, "\n")
    return false
  end
  io.write(("moonlm: serving %s at http://127.0.0.1:%d/v1 (POST /v1/chat/completions, /v1/completions, /v1/embeddings,"
            .. " /tokenize, /detokenize; GET /v1/models, /props, /health, /metrics)\n"):format(
    o.env and o.env.MOONLM_MODEL or "", port))
  io.write(("moonlm: logs in %s/logs; Ctrl-C stops\n"):format(prefix))
  io.flush()
  -- errors also go to the terminal
  local cmd = ("%snginx -p %s/ -c %s/nginx.conf -g 'daemon off; error_log stderr error;'"):format(
    env_prefix(o.env), sh_quote(prefix), sh_quote(prefix))
  local ok = os.execute(cmd)
  run("rm -rf " .. sh_quote(prefix))
  return ok == true or ok == 0
end

return _M
