-- Generation under real-world JSON Schemas validates with a real validator: stories260K
-- samples at temperature 1 under the 20 schemas of bench/schema_generation.lua (from
-- ../shared/jsonschema), and ajv (npm) checks every output against its schema. Two seeds per
-- schema here (40 generations); `make bench` runs ten (200). Tagged #once.
local S = require "support"
local lm = require "moonlm"

local G = dofile("bench/schema_generation.lua")

describe("generation under JSON Schemas #once", function()
  it("every sampled output ends by the grammar and validates with ajv", function()
    local model = assert(lm.load(S.path("models/stories260K.gguf")))
    local tmp = io.popen("mktemp -d /tmp/moonlm-spec.XXXXXX"):read("*l")
    local results = G.run { model = model, seeds = 2, tmp = tmp }
    os.execute("rm -rf '" .. tmp .. "'")
    assert.are.equal(40, #results)
    local schemas, longest = {}, 0
    for _, r in ipairs(results) do
      local what = ("%s seed %d: %s"):format(r.schema, r.seed, r.text)
      assert.truthy(r.stop_reason == "grammar" or r.stop_reason == "eos", what)
      assert.is_true(r.ok, what .. " -> " .. tostring(r.why))
      schemas[r.schema] = true
      longest = math.max(longest, r.tokens)
    end
    local n = 0
    for _ in pairs(schemas) do n = n + 1 end
    assert.are.equal(20, n)
    assert.is_true(longest > 40, "only trivial outputs")
  end)
end)
