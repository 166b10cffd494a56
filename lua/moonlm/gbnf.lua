-- moonlm.gbnf: writing GBNF text for the grammars generation builds itself (tool calls,
-- JSON Schemas): literals, rule-name prefixes so that several grammars can live in one
-- text, the rules of "any text that does not contain P", and JSON Schemas as grammars with
-- the whitespace a model writes.
local _M = {}

local byte, sub, find, gsub, format, char = string.byte, string.sub, string.find, string.gsub, string.format, string.char
local concat = table.concat

local ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

-- literal(s) -> "s" as a GBNF string
function _M.literal(s)
  return '"' .. gsub(s, '[\\"\n\r\t]', ESC) .. '"'
end

-- a byte inside [...]
local function class_char(c)
  if c == "\n" then return "\\n" end
  if c == "\r" then return "\\r" end
  if c == "\t" then return "\\t" end
  if find(c, "[%]%[\\%^%-]") then return "\\" .. c end
  return c
end

-- prefix(text, p) -> text with every rule name prefixed by p (string literals, character
-- classes, repetition counts and comments untouched), so grammars can be put together.
function _M.prefix(text, p)
  local out, i, n = {}, 1, #text
  while i <= n do
    local c = sub(text, i, i)
    local j
    if c == '"' or c == "[" then -- up to the closing quote or bracket, past escapes
      local close = c == '"' and '"' or "]"
      j = i + 1
      while j <= n do
        local d = sub(text, j, j)
        if d == "\\" then j = j + 2
        elseif d == close then break
        else j = j + 1 end
      end
    elseif c == "{" then
      j = find(text, "}", i, true) or n
    elseif c == "#" then
      j = (find(text, "\n", i, true) or n + 1) - 1
    elseif find(c, "[%w_]") then
      local _, e = find(text, "^[%w_%-]+", i)
      out[#out + 1] = p .. sub(text, i, e)
      i = e + 1
      goto continue
    else
      j = i
    end
    out[#out + 1] = sub(text, i, j)
    i = j + 1
    ::continue::
  end
  return concat(out)
end

-- without(name, pat) -> rules: `name` is any text that does not contain pat (a KMP
-- automaton over pat's bytes, one rule per matched-prefix length; pat is ASCII or UTF-8,
-- the automaton is byte-level as the grammar engine is).
function _M.without(name, pat)
  local m = #pat
  local fail = { [0] = 0, [1] = 0 }
  local k = 0
  for i = 2, m do
    while k > 0 and byte(pat, k + 1) ~= byte(pat, i) do k = fail[k] end
    if byte(pat, k + 1) == byte(pat, i) then k = k + 1 end
    fail[i] = k
  end
  local function step(i, c) -- matched prefix length after reading byte c in state i
    while true do
      if byte(pat, i + 1) == c then return i + 1 end
      if i == 0 then return 0 end
      i = fail[i]
    end
  end
  local bytes, seen = {}, {}
  for i = 1, m do
    local c = byte(pat, i)
    if not seen[c] then seen[c] = true bytes[#bytes + 1] = c end
  end
  local others = {}
  for _, c in ipairs(bytes) do others[#others + 1] = class_char(char(c)) end
  local rules = {}
  for i = 0, m - 1 do
    local alts = { format("[^%s] %s-0", concat(others), name) }
    for _, c in ipairs(bytes) do
      local j = step(i, c)
      if j < m then alts[#alts + 1] = format("%s %s-%d", _M.literal(char(c)), name, j) end
    end
    rules[#rules + 1] = format("%s-%d ::= ( %s )?", name, i, concat(alts, " | "))
  end
  rules[#rules + 1] = format("%s ::= %s-0", name, name)
  return concat(rules, "\n")
end

-- JSON's whitespace rule as the schema compiler writes it, and what generation uses
-- instead: one space, or a line break and some indentation (a model can write JSON the
-- usual ways, and never whitespace forever).
local JSON_WS = "ws ::= [ \\t\\n\\r]*"
local GEN_WS = 'ws ::= ( " " | "\\n" [ \\t]{0,20} )?'

-- schema(schema, p) -> GBNF text whose rules are prefixed by p (root: p .. "root"), or nil,
-- err. schema: a Lua table or JSON text, as lm.grammar.schema_to_gbnf takes it.
function _M.schema(schema, p)
  local G = require("moonlm").grammar
  local text, err = G.schema_to_gbnf(schema)
  if not text then return nil, err end
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    lines[#lines + 1] = line == JSON_WS and GEN_WS or line
  end
  return _M.prefix(concat(lines, "\n"), p or "")
end

-- json_schema(schema) -> a grammar for generation (as lm.grammar.json_schema, with the
-- whitespace above), or nil, err
function _M.json_schema(schema)
  local text, err = _M.schema(schema)
  if not text then return nil, err end
  return require("moonlm").grammar.gbnf(text)
end

return _M
