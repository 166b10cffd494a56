-- Generation under real-world JSON Schemas, checked by a validator that shares no code with
-- ours: stories260K samples (temperature 1, seeds 1..n) under 20 schemas of
-- ../shared/jsonschema (JSONSchemaBench), and ajv (npm) validates every output against its
-- schema. `make bench` runs 10 seeds per schema (200 generations) and prints the figures;
-- spec/schema_generation_spec.lua runs 2 per schema in `make test`.
--
-- The schemas: a fixed list from several sources of the set (function calling (BFCL),
-- GitHub, Kubernetes, Snowplow, JSON Schema Store), chosen among those whose sampled outputs
-- end within max_tokens with this tiny model (probes of 5 to 10 seeds over strides of the
-- set): a string is as long as the model makes it, and a reply cut by max_tokens is no JSON
-- at all, whatever the engine. Schemas whose outputs ran past 480 tokens (BFCL_parallel_99,
-- Github_easy---o5214, Github_hard---o91013, WashingtonPost---wp_120: 5 of 200 in one run)
-- were replaced. Many of the GitHub and Kubernetes ones require nothing, and the model
-- closes them at once ("{ }"); the BFCL ones make it write every argument. Every generation
-- must end by the grammar (stop_reason "grammar" or "eos").
local lm = require "moonlm"
local json = require "moonlm.json"
local gbnf = require "moonlm.gbnf"

local M = {}

M.SCHEMAS = {
  "BFCL_multiple_28.json", "BFCL_simple_158.json", "BFCL_multiple_2.json", "BFCL_parallel_2.json",
  "BFCL_parallel_multiple_81.json", "BFCL_parallel_multiple_131.json", "BFCL_parallel_multiple_50.json",
  "BFCL_simple_150.json", "BFCL_simple_3.json",
  "Github_easy---o41694.json", "Github_easy---o6321.json", "Github_hard---o30994.json", "Github_hard---o48241.json",
  "Github_medium---o68600.json", "Github_trivial---o20469.json", "Github_ultra---o18637.json",
  "JsonSchemaStore---typings.json", "Kubernetes---kb_874_Normalized.json", "Snowplow---sp_20_Normalized.json",
  "Snowplow---sp_78_Normalized.json",
}

M.MAX_TOKENS = 480 -- the context is 512

local function shared() return os.getenv("MOONLM_SHARED") or os.getenv("SHARED") or "../shared" end

local function sh(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return (out:gsub("rc=%d+%s*$", "")), tonumber(out:match("rc=(%d+)%s*$"))
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- The npm folder with ajv (the specs' folder: $BUILD/npm-spec).
local function npm_dir()
  local dir = (os.getenv("BUILD") or "build") .. "/npm-spec"
  local f = io.open(dir .. "/node_modules/ajv-formats/package.json")
  if f then
    f:close()
  else
    local out, rc = sh(("mkdir -p %s && cd %s && npm install --no-audit --no-fund --loglevel=error openai "
                        .. "parse-prometheus-text-format ajv ajv-formats"):format(dir, dir))
    assert(rc == 0, "npm install failed: " .. out)
  end
  return dir
end

-- validate(items) -> per item { ok, why }: items = { { schema = JSON text, text = output } }
local AJV = [==[
import Ajv from "ajv";
import Ajv2019 from "ajv/dist/2019.js";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { readFileSync } from "node:fs";
const items = readFileSync(process.argv[2], "utf8").split("\n").filter(l => l !== "").map(l => JSON.parse(l));
const cache = new Map();
// draft-04's schema "id" (ajv 8 knows only "$id"): dropped from schemas, never from the maps
// of property names
const MAPS = new Set(["properties", "patternProperties", "definitions", "$defs", "dependentSchemas"]);
function dropIds(s) {
  if (Array.isArray(s)) { s.forEach(dropIds); return; }
  if (typeof s !== "object" || s === null) return;
  if (typeof s.id === "string") delete s.id;
  for (const [k, v] of Object.entries(s)) {
    if (MAPS.has(k) && typeof v === "object" && v !== null && !Array.isArray(v)) Object.values(v).forEach(dropIds);
    else if (k !== "enum" && k !== "const" && k !== "default" && k !== "examples") dropIds(v);
  }
}
function validator(text) {
  if (cache.has(text)) return cache.get(text);
  const schema = JSON.parse(text);
  const draft = typeof schema === "object" && schema !== null ? String(schema.$schema ?? "") : "";
  const Cls = draft.includes("2020-12") ? Ajv2020 : draft.includes("2019-09") ? Ajv2019 : Ajv;
  // draft-04/06 meta-schemas are not bundled: the keywords the set uses mean the same in draft-07
  if (typeof schema === "object" && schema !== null && !/2019-09|2020-12/.test(draft)) {
    delete schema.$schema;
    dropIds(schema);
  }
  const ajv = new Cls({ strict: false, validateSchema: false, allErrors: false });
  addFormats(ajv);
  const v = ajv.compile(schema);
  cache.set(text, v);
  return v;
}
const out = items.map(({ schema, text }) => {
  let value;
  try { value = JSON.parse(text); } catch (e) { return { ok: false, why: "not JSON: " + e.message }; }
  try {
    const v = validator(schema);
    return v(value) ? { ok: true } : { ok: false, why: JSON.stringify(v.errors) };
  } catch (e) { return { ok: false, why: "ajv: " + e.message }; }
});
console.log(JSON.stringify(out));
]==]

function M.validate(items, tmp)
  local dir = npm_dir()
  local lines = {}
  for i, it in ipairs(items) do lines[i] = assert(json.encode({ schema = it.schema, text = it.text }, { compact = true })) end
  local data = tmp .. "/outputs.jsonl"
  write(data, table.concat(lines, "\n") .. "\n")
  local script = ("%s/ajv-%d.mjs"):format(dir, os.time())
  write(script, AJV)
  local out, rc = sh(("node %s %s"):format(q(script), q(data)))
  os.remove(script)
  assert(rc == 0, out)
  return assert(json.decode(out:match("([^\n]+)\n*$")), out)
end

-- run{ model, seeds, tmp } -> results: per generation { schema (file name), seed, text,
-- stop_reason, tokens, ok, why }, and the totals { generations, tokens, seconds }
function M.run(o)
  local rows = {}
  local f = assert(io.open(shared() .. "/jsonschema/schemas.jsonl", "rb"))
  for line in f:lines() do
    local r = json.decode(line)
    rows[r.schema] = r.text
  end
  f:close()
  local model = o.model
  local ctx = model:context { n_ctx = 512 }
  local results, items, tokens = {}, {}, 0
  local t0 = os.clock()
  for _, name in ipairs(M.SCHEMAS) do
    local text = assert(rows[name], name .. " is not in schemas.jsonl")
    local g = assert(gbnf.json_schema(text))
    for seed = 1, o.seeds do
      local out, info = model:generate("", { grammar = g, temperature = 1, seed = seed, max_tokens = M.MAX_TOKENS, context = ctx })
      results[#results + 1] = { schema = name, seed = seed, text = out, stop_reason = info.stop_reason, tokens = info.tokens }
      items[#items + 1] = { schema = text, text = out }
      tokens = tokens + info.tokens
    end
  end
  local seconds = os.clock() - t0
  ctx:close()
  for i, v in ipairs(M.validate(items, o.tmp)) do
    results[i].ok, results[i].why = v.ok, v.why
  end
  return results, { generations = #results, tokens = tokens, seconds = seconds }
end

-- make bench: all 200
if arg and arg[0] and arg[0]:find("schema_generation%.lua$") then
  local model = assert(lm.load(shared() .. "/models/stories260K.gguf"))
  local tmp = sh("mktemp -d /tmp/moonlm-bench.XXXXXX"):gsub("%s+$", "")
  local results, t = M.run { model = model, seeds = 10, tmp = tmp }
  sh("rm -rf " .. q(tmp))
  local valid, ended, ended_valid = 0, 0, 0
  local bad = {}
  for _, r in ipairs(results) do
    local e = r.stop_reason == "grammar" or r.stop_reason == "eos"
    if r.ok then valid = valid + 1 else bad[#bad + 1] = ("%s seed %d (%s): %s"):format(r.schema, r.seed, r.stop_reason, r.why) end
    if e then ended = ended + 1 end
    if e and r.ok then ended_valid = ended_valid + 1 end
  end
  local load = sh("cut -d' ' -f1-3 /proc/loadavg"):gsub("%s+$", "")
  io.write(("### Generation under JSON Schemas (stories260K, temperature 1, %d schemas x 10 seeds, ajv)\n\n"):format(#M.SCHEMAS))
  io.write(("load average %s (CPU seconds below are this process's)\n\n"):format(load))
  io.write("| generations | valid (ajv) | ended by the grammar | of those, valid | tokens | CPU s | tokens/s |\n")
  io.write("|---:|---:|---:|---:|---:|---:|---:|\n")
  io.write(("| %d | %d | %d | %d | %d | %.1f | %.0f |\n"):format(t.generations, valid, ended, ended_valid, t.tokens, t.seconds,
                                                          t.tokens / t.seconds))
  io.write("(a generation cut by max_tokens is unfinished JSON, whatever the engine: the schemas are chosen so that\n")
  io.write("this tiny model's strings end; every output the grammar ended must validate)\n")
  for _, b in ipairs(bad) do io.write("- invalid: ", b, "\n") end
end

return M
