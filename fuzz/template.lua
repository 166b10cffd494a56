-- fuzz/template.lua: a random-template fuzzer for the Jinja renderer (moonlm.template), which
-- renders chat templates read from untrusted GGUF files.
--
--   lua5.4 fuzz/template.lua [seconds [seed [failures_dir]]]     (make fuzz-template)
--   luajit fuzz/template.lua ...
--
-- Cases are generated from the template grammar (statements, expressions, every filter,
-- test, method and global, whitespace control) with random variables, or are real chat
-- templates (MOONLM_SHARED/chat_templates) mutated byte by byte and by splicing fragments.
-- Each is compiled and rendered; a case fails when:
--   - compile or render raises instead of returning nil, err (nothing may raise)
--   - the error is an internal one (a Lua error inside the renderer: a bug)
--   - compile and render together take more than 3 s of CPU (the budget is 1 s)
--   - the Lua heap passes 1.5 GB (the budget is 256 MB built)
-- Failing sources are written to failures_dir (default /tmp/moonlm-template-fuzz) and the
-- run exits 1. The last line is "N cases, N failures".
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local T = require "moonlm.template"
local json = require "moonlm.json"

local seconds = tonumber(arg[1]) or 60
local seed = tonumber(arg[2]) or os.time()
local outdir = arg[3] or "/tmp/moonlm-template-fuzz"
math.randomseed(seed)
local random = math.random

local function pick(t) return t[random(#t)] end
local function chance(p) return random() < p end

local FILTERS = { "upper", "lower", "capitalize", "title", "trim", "string", "safe", "escape", "e", "forceescape",
  "replace('a', 'bb')", "replace('', '-')", "center(9)", "wordcount", "indent(2)", "indent(4, true)", "truncate(5)",
  "format(1, 2)", "length", "count", "default('d')", "d(none, true)", "join", "join(', ')", "join(attribute='a')",
  "list", "items", "first", "last", "reverse", "map('upper')", "map(attribute='role')", "select", "select('odd')",
  "reject('none')", "selectattr('role', 'equalto', 'user')", "rejectattr('content')", "sort", "sort(reverse=true)",
  "sort(attribute='a')", "dictsort", "unique", "max", "min", "sum", "batch(2)", "batch(3, 0)", "abs", "round",
  "round(2, 'floor')", "int", "float", "attr('a')", "tojson", "tojson(indent=2)", "tojson(sort_keys=true)",
  "tojson(ensure_ascii=true)", "string|length", "list|length", "unknownfilter" }
local METHODS = { "append(1)", "capitalize()", "center(7, '*')", "copy()", "count('a')", "endswith('x')",
  "extend([1, 2])", "find('a')", "format(1, x=2)", "get('a')", "get('a', 3)", "index(1)", "insert(0, 'q')",
  "isalnum()", "isalpha()", "isdigit()", "islower()", "isspace()", "items()", "join(['a', 'b'])", "keys()",
  "ljust(5)", "lower()", "lstrip()", "partition(':')", "pop()", "pop(0)", "remove(1)", "removeprefix('a')",
  "removesuffix('b')", "replace('a', 'c')", "reverse()", "rfind('a')", "rjust(4, '0')", "rsplit(',', 1)",
  "rstrip('x')", "setdefault('k', 1)", "split()", "split(',')", "splitlines()", "startswith('<')", "strip()",
  "swapcase()", "title()", "update({'z': 1})", "upper()", "values()", "zfill(5)" }
local TESTS = { "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "mapping",
  "sequence", "iterable", "callable", "escaped", "odd", "even", "divisibleby(3)", "sameas(none)", "lower", "upper",
  "in([1, 2])", "eq(1)", "equalto('a')", "ne 2", "gt(1)", "lt 3", "filter", "test" }
local NAMES = { "messages", "message", "m", "x", "y", "tools", "bos_token", "eos_token", "add_generation_prompt",
  "loop", "ns", "i", "item", "undefined_thing", "none", "None", "true", "false", "True", "range", "namespace", "dict",
  "raise_exception", "strftime_now", "joiner", "cycler", "loop.index", "loop.first", "loop.last", "loop.length",
  "loop.previtem", "loop.cycle('a', 'b')", "ns.a", "m.role", "m.content", "message['content']", "messages[0]",
  "messages[-1]", "messages[1:]", "messages[::-1]", "tools[0].function.name" }
local BINOPS = { "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "and", "or", "in",
  "not in" }
local STRINGS = { "''", "'a'", '"b c"', "'<|im_start|>'", "'\\n'", "'\\u00e9t\\u00e9'", "'x' * 3", "'%s-%d'",
  "'{}:{}'", "'\\x41'", "'\xc3\xa9'", "'[TOOL_CALLS]'", "'\\''" }

local expr

local function literal(d)
  local r = random(9)
  if r == 1 then return tostring(random(-5, 20)) end
  if r == 2 then return pick { "0.5", "1e3", "-2.25", "1_000", "3.0" } end
  if r == 3 then return pick(STRINGS) end
  if r == 4 then
    local parts = {}
    for i = 1, random(0, 4) do parts[i] = expr(d + 1) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  if r == 5 then
    local parts = {}
    for i = 1, random(0, 3) do parts[i] = pick(STRINGS) .. ": " .. expr(d + 1) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  if r == 6 then return "(" .. expr(d + 1) .. ", " .. expr(d + 1) .. ")" end
  if r == 7 then return pick { "none", "true", "false", "None", "True", "False" } end
  if r == 8 then return "range(" .. random(0, 12) .. ")" end
  return "namespace(a=" .. expr(d + 1) .. ")"
end

function expr(d)
  d = d or 0
  if d > 4 then return chance(0.5) and pick(NAMES) or literal(9) end
  local r = random(14)
  if r <= 3 then return pick(NAMES) end
  if r <= 5 then return literal(d) end
  if r == 6 then return "(" .. expr(d + 1) .. " " .. pick(BINOPS) .. " " .. expr(d + 1) .. ")" end
  if r == 7 then return expr(d + 1) .. "|" .. pick(FILTERS) end
  if r == 8 then return "(" .. expr(d + 1) .. ")." .. pick(METHODS) end
  if r == 9 then return "(" .. expr(d + 1) .. " is " .. (chance(0.3) and "not " or "") .. pick(TESTS) .. ")" end
  if r == 10 then return expr(d + 1) .. "[" .. expr(d + 1) .. "]" end
  if r == 11 then return expr(d + 1) .. "[" .. (chance(0.5) and random(-3, 3) or "") .. ":" .. (chance(0.5) and random(-3, 3) or "") .. "]" end
  if r == 12 then return "(" .. expr(d + 1) .. " if " .. expr(d + 1) .. " else " .. expr(d + 1) .. ")" end
  if r == 13 then return "(not " .. expr(d + 1) .. ")" end
  return pick { "m", "macro_a", "raise_exception", "range", "dict", "joiner", "cycler" } .. "(" .. expr(d + 1) .. ")"
end

local function ws() return chance(0.2) and pick { "-", "+", "" } or "" end

local body

local in_loop = 0

local function stmt(d)
  local r = random(16)
  if r <= 3 then return pick { "text ", "\n", "  ", "<|im_start|>user\n", "x\n  y", "\t" } end
  if r <= 6 then return "{{" .. ws() .. " " .. expr() .. " " .. ws() .. "}}" end
  if r == 7 then
    local s = "{%" .. ws() .. " if " .. expr() .. " " .. ws() .. "%}" .. body(d + 1)
    if chance(0.3) then s = s .. "{% elif " .. expr() .. " %}" .. body(d + 1) end
    if chance(0.3) then s = s .. "{% else %}" .. body(d + 1) end
    return s .. "{%" .. ws() .. " endif " .. ws() .. "%}"
  end
  if r == 8 then
    local s = "{% for " .. pick { "i", "item", "m", "k, v", "a, b" } .. " in " .. expr()
      .. (chance(0.2) and (" if " .. expr()) or "") .. (chance(0.02) and " recursive" or "") .. " %}"
    in_loop = in_loop + 1
    s = s .. body(d + 1)
    in_loop = in_loop - 1
    if chance(0.2) then s = s .. "{% else %}" .. body(d + 1) end
    return s .. "{% endfor %}"
  end
  if r == 9 then return "{% set " .. pick { "x", "y", "ns.a", "a, b" } .. " = " .. expr() .. " %}" end
  if r == 10 then return "{% set ns = namespace(a=" .. expr() .. ") %}" end
  if r == 11 then
    return "{% macro " .. pick { "m", "macro_a" } .. "(" .. pick { "", "a", "a, b=1", "a=none" } .. ") %}"
      .. body(d + 1) .. "{% endmacro %}"
  end
  if r == 12 then
    if in_loop > 0 and chance(0.5) then return pick { "{% break %}", "{% continue %}" } end
    return pick { "{# comment #}", "{#- c -#}", "{#\n#}" }
  end
  if r == 13 then return "{% raw %}" .. pick { "{{ x }}", "{%", "a" } .. "{% endraw %}" end
  if r == 14 then return "{% filter " .. pick { "upper", "trim", "indent(2)" } .. " %}" .. body(d + 1) .. "{% endfilter %}" end
  if r == 15 then return "{% set x %}" .. body(d + 1) .. "{% endset %}" end
  return "{% generation %}" .. body(d + 1) .. "{% endgeneration %}"
end

function body(d)
  if d > 4 then return "" end
  local parts = {}
  for i = 1, random(0, d == 0 and 8 or 3) do parts[i] = stmt(d) end
  return table.concat(parts)
end

-- real chat templates, mutated
local templates = {}
do
  local dir = (os.getenv("MOONLM_SHARED") or "../shared") .. "/chat_templates"
  local p = io.popen("ls " .. dir .. "/*.jinja 2>/dev/null")
  for f in p:lines() do
    local h = io.open(f, "rb")
    if h then
      templates[#templates + 1] = h:read("*a")
      h:close()
    end
  end
  p:close()
  for _, name in ipairs(T.builtin_names()) do templates[#templates + 1] = T.builtin(name) end
end

local FRAGMENTS = { "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "endfor", "endif", "for", "in", "if", "else",
  "(", ")", "[", "]", "|", ".", ",", "'", '"', "\\", "\0", "\n", "loop", "ns.a", " + ns.a", "* 1000", "|tojson",
  "{% for i in range(1000) %}", "{% endfor %}", "\xff", "\xc3", "messages" }

local function mutate(src)
  for _ = 1, random(1, 6) do
    local n = #src
    local a = random(1, math.max(n, 1))
    local b = math.min(n, a + random(0, 40))
    local r = random(5)
    if r == 1 then src = src:sub(1, a - 1) .. src:sub(b + 1)
    elseif r == 2 then src = src:sub(1, b) .. src:sub(a, b) .. src:sub(b + 1)
    elseif r == 3 then src = src:sub(1, a - 1) .. pick(FRAGMENTS) .. src:sub(a)
    elseif r == 4 then src = src:sub(1, a - 1) .. string.char(random(0, 255)) .. src:sub(a + 1)
    else
      local c = random(1, math.max(n, 1))
      src = src:sub(1, a - 1) .. src:sub(c, c + random(0, 60)) .. src:sub(a)
    end
  end
  return src
end

local function vars()
  local msgs = {}
  local roles = { "system", "user", "assistant", "tool", "weird" }
  for i = 1, random(0, 5) do
    local m = { role = pick(roles), content = pick { "hi", "", "a\nb", "<think>x</think>y", "é", json.null } }
    if chance(0.2) then
      m.tool_calls = { { id = "c1", type = "function", ["function"] = { name = "f", arguments = chance(0.5) and "{}" or { a = 1 } } } }
    end
    if chance(0.1) then m.content = { { type = "text", text = "part" } } end
    msgs[i] = m
  end
  return {
    messages = msgs,
    tools = chance(0.3) and { { type = "function", ["function"] = { name = "f", description = "d",
      parameters = { type = "object", properties = { a = { type = "string" } } } } } } or json.null,
    bos_token = "<s>", eos_token = "</s>", add_generation_prompt = chance(0.5),
    x = pick { 1, "s", { 1, 2 }, json.null, 2.5, true }, y = pick { 0, "", {}, { a = 1 } },
  }
end

os.execute("mkdir -p " .. outdir)
local cases, failures, errors, ok_renders = 0, 0, 0, 0
local start = os.clock()
local wall0 = os.time()
print(("template fuzz: %d s, seed %d, %d seed templates, %s"):format(seconds, seed, #templates,
  jit and jit.version or _VERSION))

local function report(src, why)
  failures = failures + 1
  local path = ("%s/fail-%d-%d.jinja"):format(outdir, seed, failures)
  local f = io.open(path, "wb")
  if f then
    f:write(src)
    f:close()
  end
  print(("FAIL %s: %s"):format(path, why))
end

while os.time() - wall0 < seconds do
  cases = cases + 1
  local src
  if #templates > 0 and chance(0.4) then src = mutate(pick(templates)) else src = body(0) end
  local t0 = os.clock()
  local ok, t, cerr, cinfo = pcall(T.compile, src)
  if not ok then
    report(src, "compile raised: " .. tostring(t))
  elseif not t then
    if type(cerr) ~= "string" then report(src, "compile gave no message")
    elseif cinfo and cinfo.kind == "internal" then report(src, "compile: " .. cerr) end
    errors = errors + 1
  else
    local rok, out, rerr, rinfo = pcall(t.render, t, vars())
    if not rok then
      report(src, "render raised: " .. tostring(out))
    elseif out == nil then
      errors = errors + 1
      if type(rerr) ~= "string" then report(src, "render gave no message")
      elseif rinfo and rinfo.kind == "internal" then report(src, "render: " .. rerr) end
    elseif type(out) ~= "string" then
      report(src, "render returned a " .. type(out))
    else
      ok_renders = ok_renders + 1
    end
  end
  local cpu = os.clock() - t0
  if cpu > 3 then report(src, ("took %.1f s of CPU"):format(cpu)) end
  local kb = collectgarbage("count")
  if kb > 1.5 * 1024 * 1024 then report(src, ("Lua heap at %.0f MB"):format(kb / 1024)) end
  if cases % 5000 == 0 then
    io.write(("%d cases (%d rendered, %d errors), %d failures, %.0f s CPU\n"):format(cases, ok_renders, errors,
      failures, os.clock() - start))
    io.flush()
  end
  if failures >= 20 then break end
end
print(("%d cases, %d failures (%d rendered, %d clean errors; seed %d)"):format(cases, failures, ok_renders, errors, seed))
os.exit(failures == 0 and 0 or 1)
