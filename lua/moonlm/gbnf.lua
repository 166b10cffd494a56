-- moonlm.gbnf: writing GBNF text for the grammars generation builds itself (tool calls,
-- JSON Schemas): literals, rule-name prefixes so that several grammars can live in one
-- text, and JSON Schemas as grammars with the whitespace a model writes.
local _M = {}

local sub, find, gsub = string.sub, string.find, string.gsub
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

-- without(p) -> a GBNF expression for any text that does not contain p, with repetitions
-- only (no recursion), so the engine follows it as one automaton. p's first byte must not
-- occur again in p (true of the closing tags it is used for); nil otherwise. The text is a
-- run of items: a byte other than p's first, or blocks that each start with it and hold a
-- proper prefix of p, the last block of a run broken by a byte that does not continue p;
-- a run of unbroken blocks may end the text.
function _M.without(p)
  local c1 = sub(p, 1, 1)
  if #p < 2 or find(p, c1, 2, true) then return nil end
  local m = #p
  -- the proper prefixes of p after c1: ( c2 ( c3 ( ... )? )? )?
  local pre = ""
  for k = m - 1, 2, -1 do pre = "( " .. _M.literal(sub(p, k, k)) .. (pre ~= "" and " " .. pre or "") .. " )?" end
  -- after c1 c2..ck, a byte that is neither c(k+1) nor c1 breaks the block
  local brk = nil
  for k = m - 1, 1, -1 do
    local x = "[^" .. class_char(sub(p, k + 1, k + 1)) .. class_char(c1) .. "]"
    if brk then x = "( " .. x .. " | " .. _M.literal(sub(p, k + 1, k + 1)) .. " " .. brk .. " )" end
    brk = x
  end
  local block = "( " .. _M.literal(c1) .. (pre ~= "" and " " .. pre or "") .. " )"
  return "( [^" .. class_char(c1) .. "] | " .. block .. "* " .. _M.literal(c1) .. " " .. brk .. " )* " .. block .. "*"
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
