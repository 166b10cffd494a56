-- What the OpenResty specs share: running shell commands, HTTP with curl (one request, or
-- several at once), server-sent events, starting servers from examples/openresty/*.conf,
-- and Node scripts with npm packages (the official `openai` client, a Prometheus text parser).
local S = require "support"
local json = require "moonlm.json"
local launch = require "moonlm.resty.launch"

local H = {}

H.BUILD = os.getenv("BUILD") or "build"
H.stories = S.path("models/stories260K.gguf")

-- sh(cmd) -> output, exit status (from the shell: LuaJIT's pipe close does not report it)
function H.sh(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end
local sh = H.sh

function H.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local q = H.q

-- A scratch folder for request and response files: H.tmpdir() in setup, H.cleanup() in teardown.
local tmp
local nfile = 0
function H.tmpdir()
  tmp = sh("mktemp -d /tmp/moonlm-spec.XXXXXX"):gsub("%s+$", "")
  return tmp
end
function H.cleanup()
  if tmp and tmp:find("^/tmp/moonlm%-spec") then sh("rm -rf " .. q(tmp)) end
  tmp = nil
end

function H.tmpfile(content)
  nfile = nfile + 1
  local path = ("%s/f%d"):format(tmp, nfile)
  if content then
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
  end
  return path
end
local tmpfile = H.tmpfile

function H.enc(v) return type(v) == "string" and v or assert(json.encode(v, { compact = true })) end
local enc = H.enc

-- The curl command for one request; its output: "<status> <seconds>" (body and headers in files).
function H.curl_cmd(method, url, body, files, extra)
  local cmd = ("curl -s -N -m 60 -X %s -D %s -o %s -w '%%{http_code} %%{time_total}\\n' %s"):format(
    method, files.head, files.body, extra or "")
  if body then cmd = cmd .. (" -H 'Content-Type: application/json' --data-binary @%s"):format(tmpfile(enc(body))) end
  return cmd .. " " .. q(url)
end

function H.slurp(path) return S.exists(path) and S.read_file(path) or "" end
local slurp = H.slurp

local function result(files, meta)
  local status, secs = meta:match("(%d+) ([%d.]+)")
  local r = { status = tonumber(status), seconds = tonumber(secs), text = slurp(files.body), head = slurp(files.head) }
  r.json = json.decode(r.text)
  r.node = r.head:match("[Xx]%-[Mm]oonlm%-[Nn]ode: ([^\r\n]+)")
  r.header = function(name)
    for k, v in r.head:gmatch("\n([^:\r\n]+): ([^\r\n]*)") do
      if k:lower() == name:lower() then return v end
    end
  end
  return r
end

-- http(method, url, body (a table is JSON-encoded), extra curl arguments) -> { status, text,
-- json, head, header(name), node, seconds }
function H.http(method, url, body, extra)
  local files = { head = tmpfile(), body = tmpfile() }
  local meta = sh(H.curl_cmd(method, url, body, files, extra))
  return result(files, meta)
end

-- Requests at once: each { method, url, body, extra, delay (seconds before it starts) }.
function H.parallel(list)
  local lines, files = { "#!/bin/sh" }, {}
  for i, r in ipairs(list) do
    files[i] = { head = tmpfile(), body = tmpfile(), meta = tmpfile() }
    lines[#lines + 1] = ("(%s%s > %s) &"):format(r.delay and ("sleep %s; "):format(r.delay) or "",
      H.curl_cmd(r[1], r[2], r[3], files[i], r.extra), files[i].meta)
  end
  lines[#lines + 1] = "wait"
  local script = tmpfile(table.concat(lines, "\n") .. "\n")
  sh("sh " .. script)
  local out = {}
  for i, f in ipairs(files) do out[i] = result(f, slurp(f.meta)) end
  return out
end

-- A request in the background: returns a handle; handle.wait() -> the result (status 0 and
-- exit = curl's exit status when the transfer failed), handle.kill().
function H.background(method, url, body, extra)
  local files = { head = tmpfile(), body = tmpfile(), meta = tmpfile(), rc = tmpfile() }
  local cmd = H.curl_cmd(method, url, body, files, extra)
  local pid = tonumber(sh(("(%s > %s; echo $? > %s) >/dev/null 2>&1 & echo $!"):format(cmd, files.meta, files.rc)):match("%d+"))
  local h = {}
  function h.wait(timeout)
    for _ = 1, (timeout or 60) * 20 do
      if slurp(files.rc) ~= "" then break end
      sh("sleep 0.05")
    end
    local r = result(files, slurp(files.meta))
    r.exit = tonumber(slurp(files.rc):match("%d+"))
    return r
  end
  function h.kill() sh("pkill -P " .. pid .. " curl; kill " .. pid .. " 2>/dev/null") end
  return h
end

-- Server-sent events -> list of decoded chunks, and whether the stream ended with [DONE].
function H.events(text)
  local chunks, done = {}, false
  for data in text:gmatch("data: ([^\n]*)\n\n") do
    assert(not done, "data after [DONE]")
    if data == "[DONE]" then
      done = true
    else
      chunks[#chunks + 1] = assert(json.decode(data), data)
    end
  end
  return chunks, done
end

-- The content of a stream's chunks (chat deltas or completion texts), and the number of
-- chunks that carried some.
function H.content(chunks)
  local parts = {}
  for _, c in ipairs(chunks) do
    local ch = c.choices and c.choices[1]
    local t = ch and (ch.text or (type(ch.delta) == "table" and ch.delta.content))
    if type(t) == "string" and t ~= "" then parts[#parts + 1] = t end
  end
  return table.concat(parts), #parts
end

-- start(env, conf, ports, more launch options) -> a server on stories260K, one kernel thread
function H.start(env, conf, ports, more)
  local e = { MOONLM_MODEL = H.stories, MOONLM_THREADS = "1" }
  for k, v in pairs(env or {}) do e[k] = v end
  local o = { conf = conf or "examples/openresty/nginx.conf", env = e, ports = ports, lib_dir = H.BUILD .. "/5.1" }
  for k, v in pairs(more or {}) do o[k] = v end
  local srv, err = launch.start(o)
  assert(srv, err)
  return srv
end

-- Poll f() every 50 ms until it returns a true value (returned), or `secs` pass (nil).
function H.until_true(secs, f)
  for _ = 1, secs * 20 do
    local v = f()
    if v then return v end
    sh("sleep 0.05")
  end
  return nil
end

-- The folder with the npm packages the specs use, installed once into $BUILD/npm-spec: the
-- official openai client, a Prometheus text parser, and the ajv JSON Schema validator.
local PACKAGES = { "openai", "parse-prometheus-text-format", "ajv", "ajv-formats" }
function H.npm()
  local dir = H.BUILD .. "/npm-spec"
  local missing = false
  for _, p in ipairs(PACKAGES) do
    if not S.exists(dir .. "/node_modules/" .. p .. "/package.json") then missing = true end
  end
  if missing then
    local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error %s")
                       :format(dir, dir, table.concat(PACKAGES, " ")))
    assert(rc == 0, "npm install failed: " .. out)
  end
  return dir
end

-- node(script source, args...) -> the JSON its last output line prints (the script runs from
-- the npm folder, so it can import the packages)
function H.node(source, ...)
  local dir = H.npm()
  nfile = nfile + 1
  local script = ("%s/spec-%d-%d.mjs"):format(dir, nfile, os.time())
  local f = assert(io.open(script, "wb"))
  f:write(source)
  f:close()
  local args = {}
  for i, a in ipairs { ... } do args[i] = q(a) end
  local out, rc = sh(("node %s %s"):format(script, table.concat(args, " ")))
  os.remove(script)
  assert(rc == 0, out)
  local last = out:match("([^\n]+)\n*$")
  return assert(json.decode(last or ""), out)
end

-- Scrape GET /metrics and parse it with the parse-prometheus-text-format npm package ->
-- { [family name] = { type, help, metrics = { { labels, value | buckets } } } }, raw text
function H.scrape(url, extra)
  local r = H.http("GET", url .. "/metrics", nil, extra)
  assert(r.status == 200, r.text)
  assert(r.header("content-type"):find("text/plain; version=0.0.4", 1, true), r.head)
  local file = tmpfile(r.text)
  local fams = H.node([[
import parse from "parse-prometheus-text-format";
import { readFileSync } from "node:fs";
console.log(JSON.stringify(parse(readFileSync(process.argv[2], "utf8"))));
]], file)
  local by = {}
  for _, f in ipairs(fams) do by[f.name] = f end
  return by, r.text
end

-- The value of a counter or gauge series whose labels include `labels` (0 when absent).
function H.sample(fams, name, labels)
  local f = fams[name]
  if not f then return 0 end
  local total = 0
  for _, m in ipairs(f.metrics) do
    local ok = true
    for k, v in pairs(labels or {}) do
      if not m.labels or m.labels[k] ~= tostring(v) then ok = false end
    end
    if ok and m.value then total = total + tonumber(m.value) end
  end
  return total
end

return H
