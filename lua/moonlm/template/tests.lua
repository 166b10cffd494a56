-- moonlm.template.tests: Jinja's tests (`x is defined`, `n is divisibleby 3`, ...),
-- fn(value, args) -> boolean. Loading this fills runtime.lua's TESTS; TEST_ARITY tells the
-- compiler which tests take an argument.

local json = require "moonlm.json"
local value = require "moonlm.template.value"
local R = require "moonlm.template.runtime"
local methods = require "moonlm.template.methods"

local _M = {}

local type, next, select, getmetatable = type, next, select, getmetatable
local gmatch = string.gmatch

local null = json.null
local markup_mt, kind, pytype, fail, fail_undef = value.markup_mt, value.kind, value.pytype, value.fail, value.fail_undef
local numval, is_int, tostr = value.numval, value.is_int, value.tostr
local TESTS, FILTERS, COMPARE, contains = R.TESTS, R.FILTERS, R.COMPARE, R.contains
local STR_METHODS = methods.STR_METHODS

-- tests that take an argument (the rest take none)
local TEST_ARITY = { divisibleby = 1, eq = 1, equalto = 1, ["=="] = 1, ne = 1, ["!="] = 1, lt = 1,
  lessthan = 1, ["<"] = 1, gt = 1, greaterthan = 1, [">"] = 1, le = 1, ["<="] = 1, ge = 1,
  [">="] = 1, ["in"] = 1, sameas = 1 }

local function is_kind(...)
  local set = {}
  for i = 1, select("#", ...) do set[select(i, ...)] = true end
  return function(v) return set[kind(v)] == true end
end

TESTS.defined = function(v) return kind(v) ~= "undef" end
TESTS.undefined = function(v) return kind(v) == "undef" end
TESTS.none = function(v) return v == null end
TESTS.string = function(v) return type(v) == "string" or getmetatable(v) == markup_mt end
TESTS.number = function(v) return numval(v) ~= nil end
TESTS.integer = function(v) return is_int(v) end
TESTS.float = function(v) local x, fl = numval(v); return x ~= nil and fl end
TESTS.boolean = function(v) return type(v) == "boolean" end
TESTS.mapping = is_kind("dict")
TESTS.sequence = is_kind("str", "markup", "list", "tuple", "dict", "undef")
TESTS.iterable = is_kind("str", "markup", "list", "tuple", "dict", "undef", "iter")
TESTS.callable = is_kind("func", "macro", "bound")
TESTS["true"] = function(v) return v == true end
TESTS["false"] = function(v) return v == false end
TESTS.escaped = function() return false end

local function num_arg(v, what)
  local x = numval(v)
  if x == nil then
    if kind(v) == "undef" then fail_undef(v) end
    fail("TypeError: %s needs a number, got %s", what, pytype(v))
  end
  return x
end
TESTS.odd = function(v) return num_arg(v, "odd") % 2 == 1 end
TESTS.even = function(v) return num_arg(v, "even") % 2 == 0 end
TESTS.divisibleby = function(v, args)
  local d = num_arg(args[1], "divisibleby")
  if d == 0 then fail("ZeroDivisionError: integer modulo by zero") end
  return num_arg(v, "divisibleby") % d == 0
end

for names, f in next, {
  ["eq equalto =="] = COMPARE.eq, ["ne !="] = COMPARE.ne, ["lt lessthan <"] = COMPARE.lt,
  ["gt greaterthan >"] = COMPARE.gt, ["le <="] = COMPARE.le, ["ge >="] = COMPARE.ge,
} do
  for name in gmatch(names, "%S+") do TESTS[name] = function(v, args) return f(v, args[1]) end end
end
TESTS["in"] = function(v, args) return contains(args[1], v) end
TESTS.sameas = function(v, args) return v == args[1] end
TESTS.lower = function(v) return STR_METHODS.islower(nil, tostr(v)) end
TESTS.upper = function(v) return STR_METHODS.isupper(nil, tostr(v)) end
TESTS.filter = function(v) return FILTERS[v] ~= nil end
TESTS.test = function(v) return TESTS[v] ~= nil end

_M.TESTS, _M.TEST_ARITY = TESTS, TEST_ARITY

return _M
