-- moonlm.template.compiler: parse tree -> Lua closures, once per template. An expression
-- becomes f(ctx, scope) -> value; a statement becomes f(ctx, scope) -> nil | BREAK |
-- CONTINUE, writing to ctx.out[1..ctx.n]. Scopes are tables chained by __index: the root
-- reads the render vars, then GLOBALS; a for-loop iteration, a macro call and a with-block
-- each get a child scope (if does not). The closures call runtime.lua's operations, cached
-- here as upvalues.

local json = require "moonlm.json"
local value = require "moonlm.template.value"
local R = require "moonlm.template.runtime"
local perr = require("moonlm.template.parser").perr
local methods = require "moonlm.template.methods"
local filter_mod = require "moonlm.template.filters"
local test_mod = require "moonlm.template.tests"

local _M = {}

local type, ipairs, pairs, tostring = type, ipairs, pairs, tostring
local floor = math.floor
local setmetatable, getmetatable, pcall, error = setmetatable, getmetatable, pcall, error
local format = string.format
local concat = table.concat
local unpack = table.unpack or unpack

local null, jkeys, jset = json.null, json.keys, json.set
local LIMITS, grow = value.LIMITS, value.grow
local loop_mt, macro_mt, markup_mt, BUILTIN = value.loop_mt, value.macro_mt, value.markup_mt, value.BUILTIN
local kind, pytype, fail, undef, fail_undef = value.kind, value.pytype, value.fail, value.undef, value.fail_undef
local list, tuple, dict, numval, unmark, tostr =
  value.list, value.tuple, value.dict, value.numval, value.unmark, value.tostr
local spend, check_len, EMPTY, truthy, COMPARE = R.spend, R.check_len, R.EMPTY, R.truthy, R.COMPARE
local keyof, contains, iter_items = R.keyof, R.contains, R.iter_items
local getattr, getitem, slice, binop, negate = R.getattr, R.getitem, R.slice, R.binop, R.negate
local STR_METHODS, LIST_METHODS = methods.STR_METHODS, methods.LIST_METHODS
local DICT_METHODS, TUPLE_METHODS = methods.DICT_METHODS, methods.TUPLE_METHODS
local FILTERS, MARKUP_FILTERS = filter_mod.FILTERS, filter_mod.MARKUP_FILTERS
local TESTS, TEST_ARITY = test_mod.TESTS, test_mod.TEST_ARITY

local cbody, reset_compiler

local BREAK, CONTINUE = 1, 2
local soft = 0 -- > 0 while compiling an if body (see cfilter)
function reset_compiler() soft = 0 end
local CX, SX = {}, {}

local function cexpr(n) return CX[n.k](n) end

-- A filter or method is charged the size of its input (it may read all of it) and of what
-- it returns (it built that)
local function charge(v)
  local t = type(v)
  if t == "table" then spend(#v + 1)
  elseif t == "string" then check_len(#v) end -- string operations build about as much
  return v
end

local function charged(r, ...)
  local t = type(r)
  if t == "table" then grow(#r) elseif t == "string" then check_len(#r) end
  return r, ...
end

local function cexprs(list_)
  local out = {}
  for i = 1, #list_ do out[i] = cexpr(list_[i]) end
  return out
end

local function write(ctx, s)
  local n = ctx.n + 1
  ctx.n = n
  ctx.out[n] = s
  local size = ctx.size + #s
  ctx.size = size
  if size > LIMITS.str then fail("MemoryError: output longer than %d bytes", LIMITS.str) end
end

-- compiled call arguments -> function(ctx, sc) -> args, kwargs (kwargs nil when none)
local function cargs(args, kwargs)
  local ac = cexprs(args)
  local na, nk = #ac, #kwargs
  local knames, kc = {}, {}
  for i = 1, nk do knames[i] = kwargs[i].name; kc[i] = cexpr(kwargs[i].e) end
  if na == 0 and nk == 0 then return function() return {}, nil end end
  return function(ctx, sc)
    local a = {}
    for i = 1, na do a[i] = ac[i](ctx, sc) end
    if nk == 0 then return a, nil end
    local kw, ks = {}, {}
    for i = 1, nk do ks[i] = knames[i]; kw[knames[i]] = kc[i](ctx, sc) end
    return a, json.object(kw, ks)
  end
end

local call_macro -- forward

local function call_value(ctx, f, args, kw)
  if type(f) == "function" then
    if BUILTIN[f] then return charged(f(ctx, args, kw)) end
    local n = #args
    if kw then n = n + 1; args[n] = kw end
    local ok, r = pcall(f, unpack(args, 1, n))
    if not ok then
      if type(r) == "table" and r.tmsg then error(r, 0) end
      fail("error in function call: %s", tostring(r))
    end
    if r == nil then return null end
    return r
  end
  local k = kind(f)
  if k == "macro" then return call_macro(ctx, f, args, kw) end
  if k == "bound" then return charged(f.fn(ctx, charge(f.self), args, kw)) end
  if k == "undef" then fail_undef(f) end
  fail("TypeError: '%s' object is not callable", pytype(f))
end

CX.const = function(n)
  local v = n.v
  return function() return v end
end

CX.name = function(n)
  local name = n.name
  return function(_, sc)
    local v = sc[name]
    if v == nil then return undef(name) end
    return v
  end
end

CX.getattr = function(n)
  local o, name = cexpr(n.obj), n.name
  return function(ctx, sc) return getattr(o(ctx, sc), name) end
end

CX.getitem = function(n)
  local o, key = cexpr(n.obj), cexpr(n.key)
  return function(ctx, sc) return getitem(o(ctx, sc), key(ctx, sc)) end
end

CX.slice = function(n)
  local o = cexpr(n.obj)
  local a, b, c = n.a and cexpr(n.a), n.b and cexpr(n.b), n.c and cexpr(n.c)
  return function(ctx, sc)
    return slice(o(ctx, sc), a and a(ctx, sc), b and b(ctx, sc), c and c(ctx, sc))
  end
end

CX.list = function(n)
  local items = cexprs(n.items)
  return function(ctx, sc)
    local t = {}
    for i = 1, #items do t[i] = items[i](ctx, sc) end
    return list(t)
  end
end

CX.tuple = function(n)
  local items = cexprs(n.items)
  return function(ctx, sc)
    local t = {}
    for i = 1, #items do t[i] = items[i](ctx, sc) end
    return tuple(t)
  end
end

CX.dict = function(n)
  local keys, vals = cexprs(n.keys), cexprs(n.vals)
  return function(ctx, sc)
    local d = dict()
    for i = 1, #keys do jset(d, keyof(keys[i](ctx, sc)), vals[i](ctx, sc)) end
    return d
  end
end

CX.bin = function(n)
  local a, b, op = cexpr(n.a), cexpr(n.b), n.op
  if op == "+" then
    return function(ctx, sc)
      local x, y = a(ctx, sc), b(ctx, sc)
      if type(x) == "string" and type(y) == "string" then
        check_len(#x + #y)
        return x .. y
      end
      return binop("+", x, y)
    end
  end
  return function(ctx, sc) return binop(op, a(ctx, sc), b(ctx, sc)) end
end

CX.concat = function(n)
  local parts = cexprs(n.parts)
  return function(ctx, sc)
    local t, len = {}, 0
    for i = 1, #parts do
      local s = tostr(parts[i](ctx, sc))
      len = len + #s
      t[i] = s
    end
    check_len(len)
    return concat(t)
  end
end

CX.neg = function(n)
  local a = cexpr(n.a)
  return function(ctx, sc) return negate(a(ctx, sc)) end
end

CX.pos = function(n)
  local a = cexpr(n.a)
  return function(ctx, sc)
    local v = a(ctx, sc)
    if numval(v) == nil then negate(v) end -- same errors as unary minus
    return v
  end
end

CX["not"] = function(n)
  local a = cexpr(n.a)
  return function(ctx, sc) return not truthy(a(ctx, sc)) end
end

CX["and"] = function(n)
  local a, b = cexpr(n.a), cexpr(n.b)
  return function(ctx, sc)
    local x = a(ctx, sc)
    if not truthy(x) then return x end
    return b(ctx, sc)
  end
end

CX["or"] = function(n)
  local a, b = cexpr(n.a), cexpr(n.b)
  return function(ctx, sc)
    local x = a(ctx, sc)
    if truthy(x) then return x end
    return b(ctx, sc)
  end
end

CX.cond = function(n)
  local test, a, b = cexpr(n.test), cexpr(n.a), n.b and cexpr(n.b)
  local hint = format("the inline if-expression on line %d evaluated to false and no else section was defined.", n.line)
  return function(ctx, sc)
    if truthy(test(ctx, sc)) then return a(ctx, sc) end
    if b then return b(ctx, sc) end
    local u = undef("<inline if>")
    u.hint = hint
    return u
  end
end

local function cmp_fn(op)
  if op == "in" then return contains end
  if op == "notin" then return function(a, b) return not contains(b, a) end end
  return COMPARE[op]
end

CX.compare = function(n)
  local a = cexpr(n.a)
  local ops, es = {}, {}
  for i, o in ipairs(n.ops) do ops[i] = cmp_fn(o.op); es[i] = cexpr(o.e) end
  if #ops == 1 then
    local f, b = ops[1], es[1]
    if n.ops[1].op == "in" then return function(ctx, sc) local x = a(ctx, sc); return contains(b(ctx, sc), x) end end
    return function(ctx, sc) local x = a(ctx, sc); return f(x, b(ctx, sc)) end
  end
  return function(ctx, sc)
    local x = a(ctx, sc)
    for i = 1, #ops do
      local y = es[i](ctx, sc)
      local ok
      if n.ops[i].op == "in" then ok = contains(y, x) else ok = ops[i](x, y) end
      if not ok then return false end
      x = y
    end
    return true
  end
end

CX.test = function(n)
  local f = TESTS[n.name]
  if not f then
    if soft == 0 then perr(n, "unknown test '%s'", n.name) end
    local name = n.name
    return function() fail("unknown test '%s'", name) end
  end
  local a, args, negate_ = cexpr(n.a), cexprs(n.args), n.negate
  if #n.kwargs > 0 then perr(n, "test '%s' takes no keyword arguments", n.name) end
  local arity = TEST_ARITY[n.name] or 0
  if #args ~= arity then -- a TypeError when it runs, as in Jinja
    local msg = format("TypeError: test '%s' takes %d argument%s, got %d", n.name, arity, arity == 1 and "" or "s", #args)
    return function() fail(msg) end
  end
  return function(ctx, sc)
    local v = a(ctx, sc)
    local av = EMPTY
    if #args > 0 then av = {}; for i = 1, #args do av[i] = args[i](ctx, sc) end end
    local r = f(v, av, ctx)
    if negate_ then return not r end
    return r and true or false
  end
end

-- filter node -> function(ctx, sc, input) -> value. Unknown filters and tests are
-- errors when compiled, except inside an if body, where Jinja reports them only when
-- that branch runs.
local function cfilter(n)
  local f = FILTERS[n.name]
  if not f then
    if soft == 0 then perr(n, "unknown filter '%s'", n.name) end
    local name = n.name
    return function() fail("unknown filter '%s'", name) end
  end
  local ev = cargs(n.args, n.kwargs)
  local keeps_markup = MARKUP_FILTERS[n.name]
  return function(ctx, sc, v)
    local args, kw = ev(ctx, sc)
    for i = 1, #args do args[i] = unmark(args[i]) end
    if type(v) == "table" and getmetatable(v) == markup_mt and not keeps_markup then v = v[1] end
    return charged(f(ctx, charge(v), args, kw))
  end
end

CX.filter = function(n)
  local a, f = cexpr(n.a), cfilter(n)
  return function(ctx, sc) return f(ctx, sc, a(ctx, sc)) end
end

CX.call = function(n)
  local ev = cargs(n.args, n.kwargs)
  if n.fn.k == "getattr" then
    local oc, name = cexpr(n.fn.obj), n.fn.name
    return function(ctx, sc)
      local o = unmark(oc(ctx, sc))
      local k = kind(o)
      local m = (k == "str" and STR_METHODS[name]) or (k == "dict" and DICT_METHODS[name])
        or (k == "list" and LIST_METHODS[name]) or (k == "tuple" and TUPLE_METHODS[name])
      local args, kw = ev(ctx, sc)
      if m then
        for i = 1, #args do args[i] = unmark(args[i]) end
        return charged(m(ctx, charge(o), args, kw))
      end
      return call_value(ctx, getattr(o, name), args, kw)
    end
  end
  local fc = cexpr(n.fn)
  return function(ctx, sc)
    local f = fc(ctx, sc)
    local args, kw = ev(ctx, sc)
    return call_value(ctx, f, args, kw)
  end
end

function cbody(stmts)
  local fs = {}
  for i = 1, #stmts do fs[i] = SX[stmts[i].k](stmts[i]) end
  local n = #fs
  if n == 0 then return function() end end
  if n == 1 then return fs[1] end
  return function(ctx, sc)
    for i = 1, n do
      local sig = fs[i](ctx, sc)
      if sig then return sig end
    end
  end
end

-- run body into a fresh buffer and return what it wrote
local function capture(ctx, body, sc)
  local out, n = ctx.out, ctx.n
  ctx.out, ctx.n = {}, 0
  body(ctx, sc)
  local s = concat(ctx.out, "", 1, ctx.n)
  ctx.out, ctx.n = out, n
  return s
end

local function unpack_into(v, want)
  local items, n = iter_items(v)
  if n ~= want then
    if n > want then fail("ValueError: too many values to unpack (expected %d)", want) end
    fail("ValueError: not enough values to unpack (expected %d, got %d)", want, n)
  end
  return items
end

-- assignment target -> function(scope, value)
local function binder(t)
  if t.k == "name" then
    local name = t.name
    return function(sc, v) sc[name] = v end
  end
  local subs = {}
  for i, x in ipairs(t.items) do subs[i] = binder(x) end
  local want = #subs
  return function(sc, v)
    local items = unpack_into(v, want)
    for i = 1, want do subs[i](sc, items[i]) end
  end
end

SX.data = function(n)
  local s = n.v
  return function(ctx) write(ctx, s) end
end

SX.output = function(n)
  local e, line = cexpr(n.e), n.line
  return function(ctx, sc)
    ctx.line = line
    local v = e(ctx, sc)
    write(ctx, type(v) == "string" and v or tostr(v))
  end
end

SX["if"] = function(n)
  local tests, bodies, lines = cexprs(n.tests), {}, {}
  soft = soft + 1
  for i, b in ipairs(n.bodies) do bodies[i] = cbody(b); lines[i] = n.tests[i].line or n.line end
  local else_body = n.else_body and cbody(n.else_body)
  soft = soft - 1
  local nt = #tests
  return function(ctx, sc)
    for i = 1, nt do
      ctx.line = lines[i]
      if truthy(tests[i](ctx, sc)) then return bodies[i](ctx, sc) end
    end
    if else_body then return else_body(ctx, sc) end
  end
end

-- weight(node): the nodes of a parse tree (what running it once costs at least)
local function weight(node)
  local w = 1
  for _, v in pairs(node) do
    if type(v) == "table" then w = w + weight(v) end
  end
  return w
end

-- an iteration runs the body once: charged its weight
local function count_iter(ctx, w)
  local it = ctx.iters + 1
  ctx.iters = it
  if it > LIMITS.iter then fail("loop iteration limit (%d) exceeded", LIMITS.iter) end
  spend(w)
end

SX["for"] = function(n)
  local iter, bind, body = cexpr(n.iter), binder(n.target), cbody(n.body)
  local filter = n.filter and cexpr(n.filter)
  local else_body = n.else_body and cbody(n.else_body)
  local line = n.line
  local w = weight(n.body) + (n.filter and weight(n.filter) or 0)
  return function(ctx, sc)
    ctx.line = line
    local items, cnt = iter_items(iter(ctx, sc))
    local mt = { __index = sc }
    if filter then
      local kept, m = {}, 0
      for i = 1, cnt do
        count_iter(ctx, w)
        local isc = setmetatable({}, mt)
        bind(isc, items[i])
        if truthy(filter(ctx, isc)) then m = m + 1; kept[m] = items[i] end
      end
      items, cnt = kept, m
    end
    if cnt == 0 then
      if else_body then return else_body(ctx, sc) end
      return
    end
    -- as in Jinja, else runs unless some iteration ran to its end (no break/continue)
    local L = setmetatable({ i = 0, n = cnt, items = items }, loop_mt)
    local completed = false
    for i = 1, cnt do
      count_iter(ctx, w)
      L.i = i - 1
      local isc = setmetatable({ loop = L }, mt)
      bind(isc, items[i])
      local sig = body(ctx, isc)
      if sig == BREAK then break end
      if not sig then completed = true end
    end
    if else_body and not completed then return else_body(ctx, sc) end
  end
end

SX["break"] = function() return function() return BREAK end end
SX["continue"] = function() return function() return CONTINUE end end

local function assigner(t)
  if t.k == "nsref" then
    local name, attr = t.name, t.attr
    return function(sc, v)
      local ns = sc[name]
      if kind(ns) ~= "ns" then
        if ns == nil or kind(ns) == "undef" then fail("'%s' is undefined", name) end
        fail("cannot assign attribute on non-namespace object")
      end
      jset(ns, attr, v)
    end
  end
  return binder(t)
end

SX.set = function(n)
  local e, assign, line = cexpr(n.e), assigner(n.target), n.line
  return function(ctx, sc)
    ctx.line = line
    assign(sc, e(ctx, sc))
  end
end

local function cfilters(list_)
  local fs = {}
  for i = 1, #list_ do fs[i] = cfilter(list_[i]) end
  return function(ctx, sc, v)
    for i = 1, #fs do v = fs[i](ctx, sc, v) end
    return v
  end
end

SX.setblock = function(n)
  local body, assign, filters, line = cbody(n.body), assigner(n.target), cfilters(n.filters), n.line
  return function(ctx, sc)
    local v = capture(ctx, body, sc)
    ctx.line = line
    assign(sc, filters(ctx, sc, v))
  end
end

SX.filterblock = function(n)
  local body, filters, line = cbody(n.body), cfilters(n.filters), n.line
  return function(ctx, sc)
    local v = capture(ctx, body, sc)
    ctx.line = line
    write(ctx, tostr(filters(ctx, sc, v)))
  end
end

SX.with = function(n)
  local body, values, binds, noscope = cbody(n.body), cexprs(n.values), {}, n.noscope
  for i, t in ipairs(n.targets) do binds[i] = binder(t) end
  return function(ctx, sc)
    if noscope then return body(ctx, sc) end
    local vals = {}
    for i = 1, #values do vals[i] = values[i](ctx, sc) end
    local wsc = setmetatable({}, { __index = sc })
    for i = 1, #binds do binds[i](wsc, vals[i]) end
    return body(ctx, wsc)
  end
end

SX["do"] = function(n)
  local e, line = cexpr(n.e), n.line
  return function(ctx, sc) ctx.line = line; e(ctx, sc) end
end

local function make_macro(n, body, defaults, sc, name)
  n.weight = n.weight or weight(n.body) + 1
  return setmetatable({ name = name or n.name, params = n.params, defaults = defaults, body = body,
    scope = sc, varargs = n.refs.varargs, kwargs = n.refs.kwargs, weight = n.weight }, macro_mt)
end

local function cdefaults(n)
  local d = {}
  for i = 1, #n.params do if n.defaults[i] then d[i] = cexpr(n.defaults[i]) end end
  return d
end

SX.macro = function(n)
  local body, defaults, name = cbody(n.body), cdefaults(n), n.name
  return function(_, sc) sc[name] = make_macro(n, body, defaults, sc) end
end

call_macro = function(ctx, m, args, kw, caller)
  local depth = ctx.depth + 1
  if depth > LIMITS.depth then fail("maximum recursion depth exceeded calling macro '%s'", m.name) end
  spend(m.weight) -- a call runs the body: two calls of itself per call must not be free
  ctx.depth = depth
  local msc = setmetatable({}, { __index = m.scope })
  local params = m.params
  local np, na = #params, #args
  if na > np and not m.varargs then
    fail("TypeError: macro '%s' takes not more than %d argument(s)", m.name, np)
  end
  for i = 1, np do
    local p = params[i]
    local v = args[i]
    if kw and kw[p] ~= nil then
      if v ~= nil then fail("TypeError: macro '%s' got multiple values for argument '%s'", m.name, p) end
      v = kw[p]
    end
    if v == nil then
      local d = m.defaults[i]
      if d then v = d(ctx, msc)
      else
        v = undef(p)
        v.hint = format("parameter '%s' was not provided", p)
      end
    end
    msc[p] = v
  end
  if m.varargs then
    local extra = {}
    for i = np + 1, na do extra[i - np] = args[i] end
    msc.varargs = tuple(extra)
  end
  if kw then
    local extra = dict()
    local seen = {}
    for i = 1, np do seen[params[i]] = true end
    for _, k in ipairs(jkeys(kw)) do
      if not seen[k] then
        if not m.kwargs then fail("TypeError: macro '%s' takes no keyword argument '%s'", m.name, k) end
        jset(extra, k, kw[k])
      end
    end
    if m.kwargs then msc.kwargs = extra end
  elseif m.kwargs then
    msc.kwargs = dict()
  end
  if caller then msc.caller = caller end
  local s = capture(ctx, m.body, msc)
  ctx.depth = depth - 1
  return s
end

SX.callblock = function(n)
  local call = n.call
  local body, defaults, line = cbody(n.body), cdefaults(n), n.line
  local fc, ev = cexpr(call.fn), cargs(call.args, call.kwargs)
  return function(ctx, sc)
    ctx.line = line
    local caller = make_macro(n, body, defaults, sc, "caller")
    local f = fc(ctx, sc)
    local args, kw = ev(ctx, sc)
    if kind(f) ~= "macro" then fail("TypeError: {%% call %%} needs a macro, got '%s'", pytype(f)) end
    write(ctx, call_macro(ctx, f, args, kw, caller))
  end
end

_M.cbody, _M.reset_compiler = cbody, reset_compiler

return _M
