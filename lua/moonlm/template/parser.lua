-- moonlm.template.parser: tokens -> tree. Expression grammar and precedence follow Jinja's
-- parser:
--   condexpr: or ('if' or ('else' condexpr)?)*     or: and ('or' and)*
--   and: not ('and' not)*    not: 'not' not | compare    compare: math1 (cmpop math1)*
--   math1: concat (('+'|'-') concat)*    concat: math2 ('~' math2)*
--   math2: pow (('*'|'/'|'//'|'%') pow)*    pow: unary ('**' unary)*
--   unary: ('-'|'+') unary | primary postfix*, then filters/tests ('|' f, 'is' t)
-- Nodes are tables { k = kind, line = n, ... }. perr(tok, msg, ...) raises a syntax error
-- at a token's line; the compiler uses it too.

local json = require "moonlm.json"
local value = require "moonlm.template.value"
local lex = require("moonlm.template.lexer").lex

local _M = {}

local next, ipairs, tostring, select = next, ipairs, tostring, select
local setmetatable, error = setmetatable, error
local format, match = string.format, string.match
local concat, sort = table.concat, table.sort
local null = json.null
local MAX_DEPTH, tostr, repr_str = value.MAX_DEPTH, value.tostr, value.repr_str

local parse, perr

local P = {}
P.__index = P

function perr(tok, msg, ...)
  if select("#", ...) > 0 then msg = format(msg, ...) end
  error({ tmsg = msg, line = tok.line }, 0)
end

local function describe(tok)
  if tok.t == "eof" then return "end of template" end
  if tok.t == "block_end" or tok.t == "var_end" then return "end of tag" end
  if tok.t == "block_begin" or tok.t == "var_begin" then return "start of tag" end
  if tok.t == "data" then return "template data" end
  if tok.t == "float" or tok.t == "int" then return "'" .. tostr(tok.v) .. "'" end
  if tok.t == "string" then return repr_str(tok.v) end
  return "'" .. tostring(tok.v) .. "'"
end

function P:peek(k) return self.toks[self.i + (k or 0)] end
function P:next() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function P:is_op(v, k) local t = self.toks[self.i + (k or 0)]; return t.t == "op" and t.v == v end
function P:is_name(v, k) local t = self.toks[self.i + (k or 0)]; return t.t == "name" and t.v == v end
function P:skip_op(v) if self:is_op(v) then self.i = self.i + 1; return true end return false end
function P:skip_name(v) if self:is_name(v) then self.i = self.i + 1; return true end return false end

function P:expect_op(v)
  local t = self:next()
  if t.t ~= "op" or t.v ~= v then perr(t, "expected '%s', got %s", v, describe(t)) end
  return t
end

function P:expect_name(v)
  local t = self:next()
  if t.t ~= "name" or (v and t.v ~= v) then perr(t, "expected %s, got %s", v and ("'" .. v .. "'") or "a name", describe(t)) end
  return t
end

function P:expect_end()
  local t = self:next()
  if t.t ~= "block_end" then perr(t, "expected end of tag, got %s", describe(t)) end
end

function P:enter(tok)
  self.depth = self.depth + 1
  if self.depth > MAX_DEPTH then perr(tok, "expression nested too deeply") end
end

local CONSTS = { ["true"] = true, ["false"] = false, ["True"] = true, ["False"] = false,
  none = null, None = null }
local CMP = { ["=="] = "eq", ["!="] = "ne", ["<"] = "lt", [">"] = "gt", ["<="] = "le", [">="] = "ge" }
local MATH2 = { ["*"] = true, ["/"] = true, ["//"] = true, ["%"] = true }

function P:expr(with_cond)
  if with_cond == false then return self:p_or() end
  local e = self:p_or()
  while self:is_name("if") do
    local line = self:next().line
    local test = self:p_or()
    local other
    if self:skip_name("else") then other = self:expr() end
    e = { k = "cond", line = line, test = test, a = e, b = other }
  end
  return e
end

function P:p_or()
  local e = self:p_and()
  while self:is_name("or") do
    local line = self:next().line
    e = { k = "or", line = line, a = e, b = self:p_and() }
  end
  return e
end

function P:p_and()
  local e = self:p_not()
  while self:is_name("and") do
    local line = self:next().line
    e = { k = "and", line = line, a = e, b = self:p_not() }
  end
  return e
end

function P:p_not()
  if self:is_name("not") and not self:is_name("in", 1) then
    local t = self:next()
    self:enter(t)
    local e = { k = "not", line = t.line, a = self:p_not() }
    self.depth = self.depth - 1
    return e
  end
  return self:p_compare()
end

function P:p_compare()
  local e = self:p_math1()
  local ops
  while true do
    local t = self:peek()
    local op
    if t.t == "op" and CMP[t.v] then op = CMP[t.v]; self.i = self.i + 1
    elseif self:is_name("in") then op = "in"; self.i = self.i + 1
    elseif self:is_name("not") and self:is_name("in", 1) then op = "notin"; self.i = self.i + 2
    else break end
    ops = ops or {}
    ops[#ops + 1] = { op = op, e = self:p_math1() }
  end
  if not ops then return e end
  return { k = "compare", line = e.line, a = e, ops = ops }
end

function P:p_math1()
  local e = self:p_concat()
  while self:is_op("+") or self:is_op("-") do
    local t = self:next()
    e = { k = "bin", op = t.v, line = t.line, a = e, b = self:p_concat() }
  end
  return e
end

function P:p_concat()
  local e = self:p_math2()
  if not self:is_op("~") then return e end
  local parts = { e }
  while self:skip_op("~") do parts[#parts + 1] = self:p_math2() end
  return { k = "concat", line = e.line, parts = parts }
end

function P:p_math2()
  local e = self:p_pow()
  while self:peek().t == "op" and MATH2[self:peek().v] do
    local t = self:next()
    e = { k = "bin", op = t.v, line = t.line, a = e, b = self:p_pow() }
  end
  return e
end

function P:p_pow()
  local e = self:p_unary(true)
  while self:is_op("**") do
    local t = self:next()
    e = { k = "bin", op = "**", line = t.line, a = e, b = self:p_unary(true) }
  end
  return e
end

function P:p_unary(with_filter)
  local t = self:peek()
  local e
  if t.t == "op" and (t.v == "-" or t.v == "+") then
    self.i = self.i + 1
    self:enter(t)
    e = { k = t.v == "-" and "neg" or "pos", line = t.line, a = self:p_unary(false) }
    self.depth = self.depth - 1
  else
    e = self:p_primary()
  end
  e = self:p_postfix(e)
  if with_filter then e = self:p_filter_expr(e) end
  return e
end

function P:p_primary()
  local t = self:next()
  if t.t == "name" then
    local c = CONSTS[t.v]
    if c ~= nil then return { k = "const", line = t.line, v = c } end
    if self.refs then self.refs[t.v] = true end
    return { k = "name", line = t.line, name = t.v }
  elseif t.t == "string" then
    local v = t.v
    if self:peek().t == "string" then
      local parts = { v }
      while self:peek().t == "string" do parts[#parts + 1] = self:next().v end
      v = concat(parts)
    end
    return { k = "const", line = t.line, v = v }
  elseif t.t == "int" or t.t == "float" then
    return { k = "const", line = t.line, v = t.v }
  elseif t.t == "op" and t.v == "(" then
    self:enter(t)
    local e = self:tuple(false, true, nil, true)
    self:expect_op(")")
    self.depth = self.depth - 1
    return e
  elseif t.t == "op" and t.v == "[" then
    self:enter(t)
    local items = {}
    while not self:is_op("]") do
      if #items > 0 then self:expect_op(","); if self:is_op("]") then break end end
      items[#items + 1] = self:expr()
    end
    self:expect_op("]")
    self.depth = self.depth - 1
    return { k = "list", line = t.line, items = items }
  elseif t.t == "op" and t.v == "{" then
    self:enter(t)
    local keys, vals = {}, {}
    while not self:is_op("}") do
      if #keys > 0 then self:expect_op(","); if self:is_op("}") then break end end
      keys[#keys + 1] = self:expr()
      self:expect_op(":")
      vals[#vals + 1] = self:expr()
    end
    self:expect_op("}")
    self.depth = self.depth - 1
    return { k = "dict", line = t.line, keys = keys, vals = vals }
  end
  perr(t, "unexpected %s", describe(t))
end

-- tuple: a, b, ... (a lone item without comma is returned as is).
-- simplified: items are primaries (assignment targets); with_cond: allow 'x if c else y'.
function P:tuple(simplified, with_cond, extra_end, explicit)
  local line = self:peek().line
  local items, is_tuple = {}, false
  while true do
    if #items > 0 then self:expect_op(",") end
    local t = self:peek()
    if t.t == "block_end" or t.t == "var_end" or (t.t == "op" and t.v == ")")
        or (extra_end and t.t == "name" and extra_end[t.v]) then
      break
    end
    if simplified then items[#items + 1] = self:p_primary()
    else items[#items + 1] = self:expr(with_cond) end
    if self:is_op(",") then is_tuple = true else break end
  end
  if not is_tuple then
    if items[1] then return items[1] end
    if not explicit then perr(self:peek(), "expected an expression, got %s", describe(self:peek())) end
  end
  return { k = "tuple", line = line, items = items }
end

function P:call_args()
  local args, kwargs = {}, {}
  self:expect_op("(")
  while not self:is_op(")") do
    if #args + #kwargs > 0 then self:expect_op(","); if self:is_op(")") then break end end
    local t = self:peek()
    if t.t == "op" and (t.v == "*" or t.v == "**") then perr(t, "unsupported: *args / **kwargs in calls") end
    if t.t == "name" and self:is_op("=", 1) then
      self.i = self.i + 2
      kwargs[#kwargs + 1] = { name = t.v, e = self:expr() }
    else
      if #kwargs > 0 then perr(t, "positional argument follows keyword argument") end
      args[#args + 1] = self:expr()
    end
  end
  self:expect_op(")")
  return args, kwargs
end

function P:subscript()
  local t = self:peek()
  local a, b, c
  if not self:is_op(":") then
    a = self:expr()
    if not self:is_op(":") then return a, false end
  end
  self:expect_op(":")
  if not self:is_op("]") and not self:is_op(":") then b = self:expr() end
  if self:skip_op(":") then
    if not self:is_op("]") then c = self:expr() end
  end
  return { k = "slice", line = t.line, a = a, b = b, c = c }, true
end

function P:p_postfix(e)
  while true do
    local t = self:peek()
    if t.t ~= "op" then return e end
    if t.v == "." then
      self.i = self.i + 1
      local nt = self:next()
      if nt.t == "name" then e = { k = "getattr", line = nt.line, obj = e, name = nt.v }
      elseif nt.t == "int" then e = { k = "getitem", line = nt.line, obj = e, key = { k = "const", v = nt.v } }
      else perr(nt, "expected an attribute name after '.', got %s", describe(nt)) end
    elseif t.v == "[" then
      self.i = self.i + 1
      self:enter(t)
      local subs = {}
      while not self:is_op("]") do
        if #subs > 0 then self:expect_op(",") end
        local sub_e, is_slice = self:subscript()
        subs[#subs + 1] = sub_e
        if is_slice then subs.slice = true end
      end
      self:expect_op("]")
      self.depth = self.depth - 1
      if #subs == 1 and subs.slice then subs[1].obj = e; e = subs[1]
      elseif subs.slice then perr(t, "unsupported: slices in a subscript tuple")
      else
        local key = subs[1]
        if #subs ~= 1 then key = { k = "tuple", line = t.line, items = subs } end
        e = { k = "getitem", line = t.line, obj = e, key = key }
      end
    elseif t.v == "(" then
      self:enter(t)
      local args, kwargs = self:call_args()
      self.depth = self.depth - 1
      e = { k = "call", line = t.line, fn = e, args = args, kwargs = kwargs }
    else
      return e
    end
  end
end

function P:filter(e)
  local t = self:expect_name()
  local args, kwargs = {}, {}
  if self:is_op("(") then args, kwargs = self:call_args() end
  return { k = "filter", line = t.line, name = t.v, a = e, args = args, kwargs = kwargs }
end

local TEST_ARG_START = { name = true, string = true, int = true, float = true }

function P:p_filter_expr(e)
  while true do
    if self:is_op("|") then
      self.i = self.i + 1
      e = self:filter(e)
    elseif self:is_name("is") then
      local line = self:next().line
      local negate = self:skip_name("not")
      local t = self:expect_name()
      local args, kwargs = {}, {}
      local nt = self:peek()
      if self:is_op("(") then
        args, kwargs = self:call_args()
      elseif (TEST_ARG_START[nt.t] or (nt.t == "op" and (nt.v == "[" or nt.v == "{")))
          and not (nt.t == "name" and (nt.v == "else" or nt.v == "or" or nt.v == "and")) then
        if nt.t == "name" and nt.v == "is" then perr(nt, "you cannot chain multiple tests with is") end
        args = { self:p_postfix(self:p_primary()) }
      end
      e = { k = "test", line = line, name = t.v, a = e, args = args, kwargs = kwargs, negate = negate }
    elseif self:is_op("(") then
      e = self:p_postfix(e)
    else
      return e
    end
  end
end

-- Statements. body(ends) parses until a block tag named in ends and returns the statement
-- list, the end tag's name and token (the tag's remaining tokens are left to the caller).

local STMT = {}
local UNSUPPORTED = { include = true, import = true, from = true, extends = true, block = true,
  autoescape = true, trans = true }

function P:body(ends)
  local out = {}
  while true do
    local t = self:next()
    if t.t == "data" then
      out[#out + 1] = { k = "data", line = t.line, v = t.v }
    elseif t.t == "var_begin" then
      local e = self:tuple(false, true)
      local et = self:next()
      if et.t ~= "var_end" then perr(et, "expected end of print statement, got %s", describe(et)) end
      out[#out + 1] = { k = "output", line = t.line, e = e }
    elseif t.t == "block_begin" then
      local nt = self:next()
      if nt.t ~= "name" then perr(nt, "expected a tag name, got %s", describe(nt)) end
      if ends and ends[nt.v] then return out, nt.v, nt end
      local f = STMT[nt.v]
      if not f then
        if UNSUPPORTED[nt.v] then perr(nt, "unsupported tag '%s'", nt.v) end
        if match(nt.v, "^end") or nt.v == "else" or nt.v == "elif" then
          perr(nt, "unexpected '%s'%s", nt.v, self.open and (" (innermost open block is '" .. self.open .. "')") or "")
        end
        perr(nt, "unknown tag '%s'", nt.v)
      end
      self.depth = self.depth + 1
      if self.depth > MAX_DEPTH then perr(nt, "blocks nested too deeply") end
      local saved = self.open
      self.open = nt.v
      out[#out + 1] = f(self, nt)
      self.open = saved
      self.depth = self.depth - 1
    elseif t.t == "eof" then
      if ends then
        local names = {}
        for k in next, ends do names[#names + 1] = "'" .. k .. "'" end
        sort(names)
        perr(t, "unexpected end of template, expected %s (to close '%s')", concat(names, " or "), self.open or "?")
      end
      return out
    else
      perr(t, "unexpected %s", describe(t))
    end
  end
end

-- assignment target: name, or names separated by commas (optionally in parentheses)
function P:target(extra_end)
  local e = self:tuple(true, false, extra_end)
  local function check(n)
    if n.k == "name" then return end
    if n.k == "tuple" then for _, x in ipairs(n.items) do check(x) end return end
    perr(self:peek(), "cannot assign to %s", n.k == "const" and "a constant" or "an expression")
  end
  check(e)
  return e
end

STMT["for"] = function(self, tok)
  local target = self:target({ ["in"] = true })
  self:expect_name("in")
  local iter = self:tuple(false, false, { recursive = true })
  local filter
  if self:skip_name("if") then filter = self:expr() end
  if self:is_name("recursive") then perr(self:peek(), "unsupported: recursive loops") end
  self:expect_end()
  self.loops = self.loops + 1
  local body, ended = self:body({ endfor = true, ["else"] = true })
  self.loops = self.loops - 1
  self:expect_end()
  local else_body
  if ended == "else" then
    else_body = self:body({ endfor = true })
    self:expect_end()
  end
  return { k = "for", line = tok.line, target = target, iter = iter, filter = filter, body = body,
    else_body = else_body }
end

STMT["if"] = function(self, tok)
  local node = { k = "if", line = tok.line, tests = {}, bodies = {} }
  local test = self:tuple(false, false)
  while true do
    self:expect_end()
    local body, ended = self:body({ elif = true, ["else"] = true, endif = true })
    node.tests[#node.tests + 1] = test
    node.bodies[#node.bodies + 1] = body
    if ended == "elif" then
      test = self:tuple(false, false)
    elseif ended == "else" then
      self:expect_end()
      node.else_body = self:body({ endif = true })
      self:expect_end()
      return node
    else
      self:expect_end()
      return node
    end
  end
end

STMT.set = function(self, tok)
  local target
  local t = self:peek()
  if t.t == "name" and self:is_op(".", 1) then
    self.i = self.i + 2
    local attr = self:expect_name()
    target = { k = "nsref", line = t.line, name = t.v, attr = attr.v }
  else
    target = self:target()
  end
  if self:skip_op("=") then
    local e = self:tuple(false, true)
    self:expect_end()
    return { k = "set", line = tok.line, target = target, e = e }
  end
  local filters = {}
  while self:skip_op("|") do filters[#filters + 1] = self:filter(nil) end
  self:expect_end()
  local body = self:body({ endset = true })
  self:expect_end()
  return { k = "setblock", line = tok.line, target = target, body = body, filters = filters }
end

function P:params()
  local names, defaults = {}, {}
  self:expect_op("(")
  while not self:is_op(")") do
    if #names > 0 then self:expect_op(","); if self:is_op(")") then break end end
    local n = self:expect_name()
    names[#names + 1] = n.v
    if self:skip_op("=") then defaults[#names] = self:expr()
    elseif next(defaults) then perr(n, "non-default argument follows default argument") end
  end
  self:expect_op(")")
  return names, defaults
end

-- a macro body: its own loop depth, and which of varargs/kwargs/caller it reads
function P:macro_body(ends)
  local saved_refs, saved_loops = self.refs, self.loops
  local refs = {}
  self.refs, self.loops = refs, 0
  local body = self:body(ends)
  self.refs, self.loops = saved_refs, saved_loops
  if saved_refs then for k in next, refs do saved_refs[k] = true end end
  return body, refs
end

STMT.macro = function(self, tok)
  local name = self:expect_name().v
  local params, defaults = self:params()
  self:expect_end()
  local body, refs = self:macro_body({ endmacro = true })
  if self:peek().t == "name" then self.i = self.i + 1 end
  self:expect_end()
  return { k = "macro", line = tok.line, name = name, params = params, defaults = defaults,
    body = body, refs = refs }
end

STMT.call = function(self, tok)
  local params, defaults = {}, {}
  if self:is_op("(") then params, defaults = self:params() end
  local call = self:expr()
  if call.k ~= "call" then perr(tok, "expected a call after 'call'") end
  self:expect_end()
  local body, refs = self:macro_body({ endcall = true })
  self:expect_end()
  return { k = "callblock", line = tok.line, call = call, params = params, defaults = defaults,
    body = body, refs = refs }
end

STMT.filter = function(self, tok)
  local filters = { self:filter(nil) }
  while self:skip_op("|") do filters[#filters + 1] = self:filter(nil) end
  self:expect_end()
  local body = self:body({ endfilter = true })
  self:expect_end()
  return { k = "filterblock", line = tok.line, filters = filters, body = body }
end

STMT.with = function(self, tok)
  local targets, values = {}, {}
  while not (self:peek().t == "block_end") do
    if #targets > 0 then self:expect_op(",") end
    targets[#targets + 1] = self:target({ ["="] = true })
    self:expect_op("=")
    values[#values + 1] = self:expr()
  end
  self:expect_end()
  local body = self:body({ endwith = true })
  self:expect_end()
  return { k = "with", line = tok.line, targets = targets, values = values, body = body }
end

local function loopcontrol(self, tok)
  if self.loops == 0 then perr(tok, "'%s' outside of a loop", tok.v) end
  self:expect_end()
  return { k = tok.v, line = tok.line }
end
STMT["break"], STMT["continue"] = loopcontrol, loopcontrol

STMT.generation = function(self, tok)
  self:expect_end()
  local body = self:body({ endgeneration = true })
  self:expect_end()
  return { k = "with", line = tok.line, targets = {}, values = {}, body = body, noscope = true }
end

STMT["do"] = function(self, tok)
  local e = self:tuple(false, true)
  self:expect_end()
  return { k = "do", line = tok.line, e = e }
end

function parse(src)
  local p = setmetatable({ toks = lex(src), i = 1, depth = 0, loops = 0 }, P)
  return p:body(nil)
end

_M.parse, _M.perr = parse, perr

return _M
