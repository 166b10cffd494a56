-- Specs for moonlm.template.
--
-- 1. Every golden case in ../shared/chat_templates (what transformers' Jinja2 renders for 20
--    real chat templates) must come out byte for byte, or fail as the reference did.
-- 2. Unit cases of the Jinja semantics chat templates rely on. Their expected strings were
--    rendered by Jinja2 3.1.6 configured as transformers does (trim_blocks, lstrip_blocks,
--    loopcontrols, json.dumps as tojson, strftime_now on 2026-11-22).
-- 3. Error reporting, limits, the Lua value model and the API.
local T = require "moonlm.template"
local json = require "moonlm.json"

local SHARED = (os.getenv("MOONLM_SHARED") or "../shared") .. "/chat_templates"
local FIXED_TIME = os.time { year = 2026, month = 11, day = 22, hour = 0 }
local function strftime_fixed(fmt) return os.date(fmt, FIXED_TIME) end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function case_files()
  local names = {}
  local p = io.popen('ls "' .. SHARED .. '" 2>/dev/null')
  if p then
    for name in p:lines() do
      local base = name:match("^(.+)%.cases%.json$")
      if base then names[#names + 1] = base end
    end
    p:close()
  end
  table.sort(names)
  return names
end

describe("shared chat templates", function()
  local bases = case_files()

  it("finds the golden data in " .. SHARED, function()
    assert.is_true(#bases >= 20, "no *.cases.json under " .. SHARED .. " (set MOONLM_SHARED)")
  end)

  for _, base in ipairs(bases) do
    local src = read(SHARED .. "/" .. base .. ".jinja")
    local cases = json.decode(read(SHARED .. "/" .. base .. ".cases.json") or "")
    local tmpl, cerr = T.compile(src or "")
    for _, c in ipairs(cases or {}) do
      it(base .. " " .. c.id, function()
        assert(src, "missing " .. base .. ".jinja")
        assert(tmpl, cerr)
        local out, err, info = tmpl:render {
          messages = c.messages,
          add_generation_prompt = c.add_generation_prompt,
          bos_token = c.bos_token,
          eos_token = c.eos_token,
          tools = json.null, -- transformers always passes tools=None, documents=None
          documents = json.null,
          strftime_now = strftime_fixed,
        }
        if c.expected ~= nil then
          assert.are.equal(c.expected, out, err)
        else
          assert.is_nil(out)
          assert.is_string(err)
          if c.error_kind == "raise_exception" then
            assert.are.equal(c.error, err)
            assert.are.equal("raise_exception", info.kind)
          end
        end
      end)
    end
  end
end)

-- { name, t = template, vars = JSON text or nil, want = Jinja2's output }
local SEMANTICS = {
  -- whitespace
  { "whitespace: trim_blocks drops the newline after a block tag",
    t = "{% if true %}\nA\n{% endif %}\nB",
    want = "A\nB" },
  { "whitespace: no trim after an expression tag",
    t = "{{ 'A' }}\nB",
    want = "A\nB" },
  { "whitespace: lstrip_blocks strips blanks before a block tag",
    t = "x\n    {% if true %}y{% endif %}",
    want = "x\ny" },
  { "whitespace: lstrip_blocks keeps blanks before an expression",
    t = "x\n    {{ 'y' }}",
    want = "x\n    y" },
  { "whitespace: lstrip only at line start",
    t = "x  {% if true %}y{% endif %}",
    want = "x  y" },
  { "whitespace: plus disables lstrip for one tag",
    t = "x\n  {%+ if true %}y{% endif %}",
    want = "x\n  y" },
  { "whitespace: plus disables trim for one tag",
    t = "{% if true +%}\ny{% endif %}",
    want = "\ny" },
  { "whitespace: minus strips all whitespace before",
    t = "x \n\n  {%- if true %}y{% endif %}",
    want = "xy" },
  { "whitespace: minus strips all whitespace after",
    t = "{% if true -%} \n\n y{% endif %}",
    want = "y" },
  { "whitespace: expression minus forms",
    t = "a  {{- 'b' -}}  \n c",
    want = "abc" },
  { "whitespace: comment is removed and trimmed",
    t = "a\n  {# note #}\nb",
    want = "a\nb" },
  { "whitespace: comment minus forms",
    t = "a  {#- note -#}  b",
    want = "ab" },
  { "whitespace: raw block is copied verbatim",
    t = "{% raw %}{{ x }} {% if %}{% endraw %}",
    want = "{{ x }} {% if %}" },
  { "whitespace: raw with minus forms",
    t = "<{% raw -%}  x  {%- endraw %}>",
    want = "<x>" },
  { "whitespace: one trailing newline is dropped",
    t = "a\n",
    want = "a" },
  { "whitespace: only one trailing newline is dropped",
    t = "a\n\n",
    want = "a\n" },
  { "whitespace: CRLF is normalised",
    t = "a\r\nb\r\n{% if true %}\r\nc{% endif %}",
    want = "a\nb\nc" },
  { "whitespace: loop body per line",
    t = "{% for i in range(3) %}\n  {{ i }}\n{% endfor %}\n",
    want = "  0\n  1\n  2\n" },
  { "whitespace: zephyr-style one statement per line",
    t = "{% for m in ['a', 'b'] %}\n{% if m == 'a' %}\n{{ 'A:' + m }}\n{% else %}\n{{ 'B:' + m }}\n{% endif %}\n{% endfor %}",
    want = "A:a\nB:b\n" },
  -- loops
  { "loops: loop attributes",
    t = "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
    want = "1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;" },
  { "loops: previtem and nextitem",
    t = "{% for x in [1, 2, 3] %}{{ loop.previtem is defined and loop.previtem }}<{{ x }}>{{ loop.nextitem is defined and loop.nextitem }} {% endfor %}",
    want = "False<1>2 1<2>3 2<3>False " },
  { "loops: cycle",
    t = "{% for x in range(5) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}",
    want = "abcab" },
  { "loops: else on empty",
    t = "{% for x in [] %}{{ x }}{% else %}empty{% endfor %}",
    want = "empty" },
  { "loops: filtered loop counts kept items",
    t = "{% for x in range(10) if x is even %}{{ x }}/{{ loop.length }}{{ '' if loop.last else ',' }}{% endfor %}",
    want = "0/5,2/5,4/5,6/5,8/5" },
  { "loops: items unpacking keeps insertion order",
    t = "{% for k, v in {'z': 1, 'a': 2}.items() %}{{ k }}={{ v }} {% endfor %}",
    want = "z=1 a=2 " },
  { "loops: tuple unpacking",
    t = "{% for a, b in [(1, 'x'), (2, 'y')] %}{{ a }}{{ b }}{% endfor %}",
    want = "1x2y" },
  { "loops: break and continue",
    t = "{% for x in range(10) %}{% if x is odd %}{% continue %}{% endif %}{% if x > 6 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    want = "0246" },
  { "loops: nested loop variables",
    t = "{% for a in 'xy' %}{% for b in '12' %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %}",
    want = "x11 x22 1|y11 y22 2|" },
  { "loops: set in a loop does not leak",
    t = "{% set x = 'out' %}{% for i in [1] %}{% set x = 'in' %}{{ x }}{% endfor %} {{ x }}",
    want = "in out" },
  { "loops: namespace carries state out of a loop",
    t = "{% set ns = namespace(n=0, seen=[]) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.seen = ns.seen + [m.role] %}{% endfor %}{{ ns.n }} {{ ns.seen }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "4 ['system', 'user', 'assistant', 'user']" },
  { "loops: set in if does leak",
    t = "{% if true %}{% set x = 1 %}{% endif %}{{ x }}",
    want = "1" },
  { "loops: reverse iteration",
    t = "{% for m in messages[::-1] %}{{ m.role[0] }}{% endfor %}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "uaus" },
  { "loops: iterating a dict gives keys",
    t = "{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}",
    want = "ba" },
  { "loops: iterating a string gives code points",
    t = "{% for ch in '你好' %}[{{ ch }}]{% endfor %}",
    want = "[你][好]" },
  { "loops: range forms",
    t = "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -4)|list }}",
    want = "[0, 1, 2] [1, 2, 3] [10, 6, 2]" },
  -- statements
  { "statements: tuple set",
    t = "{% set a, b = 1, 2 %}{{ b }}{{ a }}",
    want = "21" },
  { "statements: block set",
    t = "{% set x %}  <{{ 1 + 1 }}>  {% endset %}[{{ x }}]",
    want = "[  <2>  ]" },
  { "statements: block set with filter",
    t = "{% set x | trim | upper %}  ab  {% endset %}[{{ x }}]",
    want = "[AB]" },
  { "statements: macro defaults and keywords",
    t = "{% macro m(a, b='B', c=none) %}[{{ a }} {{ b }} {{ c }}]{% endmacro %}{{ m(1) }}{{ m(1, 2, 3) }}{{ m(c=3, a=1) }}",
    want = "[1 B None][1 2 3][1 B 3]" },
  { "statements: macro varargs and kwargs",
    t = "{% macro m(a) %}{{ a }} {{ varargs }} {{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v') }}",
    want = "1 (2, 3) {'k': 'v'}" },
  { "statements: macro reads render variables",
    t = "{% macro last() %}{{ messages[-1].content }}{% endmacro %}{{ last() }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "你好👩‍💻" },
  { "statements: recursive macro",
    t = "{% macro f(n) %}{{ n }}{% if n > 0 %},{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}",
    want = "3,2,1,0" },
  { "statements: call block with caller arguments",
    t = "{% macro wrap(tag) %}<{{ tag }}>{{ caller(tag|upper) }}</{{ tag }}>{% endmacro %}{% call(t) wrap('b') %}[{{ t }}]{% endcall %}",
    want = "<b>[B]</b>" },
  { "statements: filter block",
    t = "{% filter upper %}abc {{ 'def' }}{% endfilter %}",
    want = "ABC DEF" },
  { "statements: with block scope",
    t = "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a is defined }}",
    want = "3False" },
  { "statements: generation block renders its body",
    t = "{% generation %}text {{ 1 }}{% endgeneration %}",
    want = "text 1" },
  { "statements: if elif else",
    t = "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %} {% endfor %}",
    want = "one two many " },
  -- expressions
  { "expressions: int and float arithmetic",
    t = "{{ 1 + 2 }} {{ 1 + 2.0 }} {{ 0.5 + 0.5 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7.0 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}",
    want = "3 3.0 1.0 3.5 2.0 3 -4 3.0 1 2 1024 0.5" },
  { "expressions: float printing",
    t = "{{ 1.0 }} {{ 1e3 }} {{ 1.5e-7 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ -0.0 }} {{ 2.50 }}",
    want = "1.0 1000.0 1.5e-07 1e+16 0.30000000000000004 0.3333333333333333 -0.0 2.5" },
  { "expressions: string and list operators",
    t = "{{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1, 2] + [3] }} {{ 'a' ~ 1 ~ none ~ true ~ 2.5 ~ [1] ~ undefined_var }}",
    want = "ababab [1, 1] [1, 2, 3] a1NoneTrue2.5[1]" },
  { "expressions: comparisons",
    t = "{{ 1 == 1.0 }} {{ '1' == 1 }} {{ [1, [2]] == [1, [2]] }} {{ {'a': 1} == {'a': 1} }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 != 2 }}",
    want = "True False True True True False True True True" },
  { "expressions: in and not in",
    t = "{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' in undefined_var }}",
    want = "True True True True False" },
  { "expressions: and or not return operands",
    t = "{{ 1 and 'x' }} {{ 0 and 'x' }} {{ '' or 'y' }} {{ not 0 }} {{ not [] }} {{ none or [] }}",
    want = "x 0 y True True []" },
  { "expressions: inline if with and without else",
    t = "{{ 'y' if 1 else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if 0 }}]",
    want = "y n []" },
  { "expressions: filters bind tighter than operators",
    t = "{{ '<' + '  x  ' | trim + '>' }} {{ 1 + 2 is odd }} {{ -3|abs }}",
    want = "<x> 1 3" },
  { "expressions: not binds looser than is",
    t = "{{ not x is defined }} {{ x is not defined }}",
    want = "True True" },
  { "expressions: string literal escapes",
    t = "{{ 'it\\'s' }}|{{ \"q\\\"q\" }}|{{ 'a\\tb\\nc' }}|{{ '\\u00e9\\x41' }}|{{ 'back\\\\slash' }}|{{ 'kept\\d' }}|{{ 'ab' 'cd' }}",
    want = "it's|q\"q|a\tb\nc|éA|back\\slash|kept\\d|abcd" },
  { "expressions: literals print as Python",
    t = "{{ [1, 'two', none, true, false, 2.0, (3,), {'k': 'v'}] }} {{ {} }} {{ [] }} {{ (1, 2) }}",
    want = "[1, 'two', None, True, False, 2.0, (3,), {'k': 'v'}] {} [] (1, 2)" },
  { "expressions: Python repr quoting",
    t = "{{ [\"it's\", 'say \"hi\"', 'a\\nb', 'é'] }}",
    want = "[\"it's\", 'say \"hi\"', 'a\\nb', 'é']" },
  -- access
  { "access: item and attribute fallback",
    t = "{{ m.role }} {{ m['role'] }} {{ m.nope is defined }} {{ m['nope'] is defined }}",
    vars = "{\"m\": {\"role\": \"user\"}}",
    want = "user user False False" },
  { "access: negative and out of range index",
    t = "{{ l[-1] }} {{ l[0] }} {{ l[10] is defined }} [{{ l[10] }}]",
    vars = "{\"l\": [1, 2, 3]}",
    want = "3 1 False []" },
  { "access: slices",
    t = "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ l[3:0:-1] }} {{ l[10:] }}",
    vars = "{\"l\": [1, 2, 3, 4]}",
    want = "[2, 3, 4] [1, 2, 3] [4, 3, 2, 1] [1, 3] [4, 3, 2] []" },
  { "access: string index and slice by code point",
    t = "{{ s[1] }} {{ s[-1] }} {{ s[1:3] }} {{ s[::-1] }} {{ s|length }}",
    vars = "{\"s\": \"a你好b\"}",
    want = "你 b 你好 b好你a 4" },
  { "access: attribute of none is undefined",
    t = "{{ none.x is defined }} {{ none['x'] is defined }}",
    want = "False False" },
  -- filters
  { "filters: trim",
    t = "[{{ '  a b \\n'|trim }}] [{{ 'xxaxx'|trim('x') }}] [{{ undefined_var|trim }}]",
    want = "[a b] [a] []" },
  { "filters: tojson",
    t = "{{ {'b': [1, 2.5, none, true], 'a': 'é\"<'}|tojson }}",
    want = "{\"b\": [1, 2.5, null, true], \"a\": \"é\\\"<\"}" },
  { "filters: tojson indent",
    t = "{{ {'a': [1, {}], 'b': []}|tojson(indent=2) }}",
    want = "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}" },
  { "filters: tojson options",
    t = "{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} {{ 'é'|tojson(ensure_ascii=true) }} {{ [1, 2]|tojson(separators=(',', ':')) }}",
    want = "{\"a\": 2, \"b\": 1} \"\\u00e9\" [1,2]" },
  { "filters: tojson of messages",
    t = "{{ messages[:2]|tojson }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}]" },
  { "filters: length and count",
    t = "{{ 'abc'|length }} {{ '你好'|length }} {{ [1, 2]|count }} {{ {'a': 1}|length }} {{ undefined_var|length }}",
    want = "3 2 2 1 0" },
  { "filters: join",
    t = "{{ [1, 2, 3]|join(', ') }} {{ ['a', 'b']|join }} {{ messages|join('|', attribute='role') }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "1, 2, 3 ab system|user|assistant|user" },
  { "filters: selectattr and rejectattr",
    t = "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|map('trim')|list }} {{ messages|rejectattr('role', 'in', ['user', 'system'])|map(attribute='role')|list }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "['Hi', '你好👩\\u200d💻'] ['assistant']" },
  { "filters: selectattr with defined",
    t = "{{ [{'type': 'a'}, {}, {'type': 'b'}]|selectattr('type', 'defined')|map(attribute='type')|list }}",
    want = "['a', 'b']" },
  { "filters: select and reject",
    t = "{{ range(6)|select('odd')|list }} {{ range(6)|reject('even')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ [1, 2, 3]|select('>', 1)|list }}",
    want = "[1, 3, 5] [1, 3, 5] [1, 'a'] [2, 3]" },
  { "filters: map by filter name and by attribute",
    t = "{{ ['a', 'b']|map('upper')|list }} {{ ['x-y']|map('replace', '-', '+')|list }} {{ [{'a': 1}, {}]|map(attribute='a', default=0)|list }}",
    want = "['A', 'B'] ['x+y'] [1, 0]" },
  { "filters: items list first last",
    t = "{{ {'b': 1, 'a': 2}|items|list }} {{ 'abc'|list }} {{ [3, 1, 2]|first }}{{ [3, 1, 2]|last }} {{ []|first is defined }}",
    want = "[('b', 1), ('a', 2)] ['a', 'b', 'c'] 32 False" },
  { "filters: default",
    t = "{{ undefined_var|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} {{ undefined_var|d('short') }} {{ 0|default(5, boolean=true) }}",
    want = "d  d None short 5" },
  { "filters: case filters",
    t = "{{ 'hello World'|upper }} {{ 'Hello'|lower }} {{ 'hELLO wORLD'|capitalize }} {{ \"hello wORLD it's (a) [test]\"|title }}",
    want = "HELLO WORLD hello Hello world Hello World It's (A) [Test]" },
  { "filters: replace",
    t = "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }}",
    want = "bbb bba" },
  { "filters: string",
    t = "{{ 42|string }} {{ [1, 'a']|string }} {{ none|string }} {{ {'a': true}|string|replace(\"'\", '\"') }}",
    want = "42 [1, 'a'] None {\"a\": True}" },
  { "filters: int and float",
    t = "{{ '42'|int }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '0x1A'|int(0, 16) }} {{ '2.5'|float }} {{ 3|float }} {{ 'x'|float }}",
    want = "42 3 0 7 3 26 2.5 3.0 0.0" },
  { "filters: abs and round",
    t = "{{ -3|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(method='ceil') }} {{ 2.9|round(0, 'floor') }} {{ 5|round }}",
    want = "3 2.5 2.0 4.0 2.67 3.0 2.0 5" },
  { "filters: unique",
    t = "{{ [1, 2, 2, 'a', 'A', 1]|unique|list }} {{ ['b', 'A', 'a']|unique(case_sensitive=true)|list }} {{ messages|unique(attribute='role')|map(attribute='role')|list }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "[1, 2, 'a'] ['b', 'A', 'a'] ['system', 'user', 'assistant']" },
  { "filters: sort",
    t = "{{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ messages|sort(attribute='role')|map(attribute='role')|list }}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "['A', 'b', 'c'] ['c', 'b', 'A'] ['A', 'b', 'c'] ['assistant', 'system', 'user', 'user']" },
  { "filters: dictsort",
    t = "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) }}",
    want = "[('a', 2), ('b', 1)] [('a', 2), ('b', 1)]" },
  { "filters: reverse",
    t = "{{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }}",
    want = "cba [3, 2, 1]" },
  { "filters: indent",
    t = "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width='>', blank=true) }}",
    want = "a\n    b\n\n    c|  a\n  b|a\n>\n>b" },
  { "filters: safe and escape",
    t = "{{ '<b>&</b>'|safe }} {{ '<a href=\"x\">\\'&</a>'|escape }} {{ '<i>'|e }}",
    want = "<b>&</b> &lt;a href=&#34;x&#34;&gt;&#39;&amp;&lt;/a&gt; &lt;i&gt;" },
  { "filters: batch",
    t = "{{ range(5)|batch(2)|list }} {{ [1, 2, 3]|batch(2, 'x')|list }}",
    want = "[[0, 1], [2, 3], [4]] [[1, 2], [3, 'x']]" },
  { "filters: sum min max",
    t = "{{ [1, 2, 3]|sum }} {{ [{'a': 1}, {'a': 2.5}]|sum(attribute='a') }} {{ [1, 2]|sum(start=10) }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ ['b', 'A']|min }}",
    want = "6 3.5 13 1 3 A" },
  { "filters: wordcount center truncate",
    t = "{{ 'one two  three'|wordcount }} [{{ 'ab'|center(6) }}] {{ 'hello world foo bar'|truncate(9) }} {{ 'hello world foo bar'|truncate(9, true) }} {{ 'short'|truncate(9) }}",
    want = "3 [  ab  ] hello... hello ... short" },
  { "filters: format",
    t = "{{ '%s-%d'|format('a', 3) }} {{ '%5.2f|%-4s|%04d'|format(3.14159, 'ab', 7) }}",
    want = "a-3  3.14|ab  |0007" },
  -- tests
  { "tests: type tests",
    t = "{{ 'a' is string }} {{ 1 is number }} {{ 1 is integer }} {{ 1.0 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ {} is mapping }} {{ [] is mapping }} {{ [] is sequence }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ range is callable }} {{ 'a' is callable }}",
    want = "True True True False True True True False True True False True False" },
  { "tests: value tests",
    t = "{{ none is none }} {{ undefined_var is none }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 'ab' is lower }} {{ 'AB' is upper }}",
    want = "True False True False True True True True False True True" },
  { "tests: comparison tests",
    t = "{{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is gt 2 }} {{ 2 is le 2 }} {{ 2 is ge 3 }} {{ 1 is in [1] }} {{ [1, 2, 3]|select('==', 2)|list }}",
    want = "True False True True False True False True [2]" },
  { "tests: defined and undefined",
    t = "{{ x is defined }} {{ x is undefined }} {{ x is not defined }} {{ m.content is defined }} {{ m.tool_calls is defined }}",
    vars = "{\"m\": {\"content\": \"\"}}",
    want = "False True True True False" },
  -- methods
  { "methods: strip family",
    t = "[{{ '  ab  '.strip() }}] [{{ 'xxabxx'.strip('x') }}] [{{ '  ab  '.lstrip() }}] [{{ '  ab  '.rstrip() }}] [{{ '\\n\\nab\\n'.lstrip('\\n') }}]",
    want = "[ab] [ab] [ab  ] [  ab] [ab\n]" },
  { "methods: split and rsplit",
    t = "{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ ' a b c '.split(none, 1) }} {{ ''.split() }}",
    want = "['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c'] ['a,b', 'c'] ['a', 'b c '] []" },
  { "methods: startswith and endswith",
    t = "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.endswith(('x', 'o')) }} {{ 'hello'.startswith(('x', 'y')) }}",
    want = "True True True False" },
  { "methods: case methods",
    t = "{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ \"hello wORLD it's\".title() }} {{ 'hELLO'.capitalize() }} {{ 'éa'.upper() }}",
    want = "AB ab Hello World It'S Hello ÉA" },
  { "methods: replace find count",
    t = "{{ 'aXbXc'.replace('X', '-') }} {{ 'aXbXc'.replace('X', '-', 1) }} {{ 'hello'.find('l') }} {{ 'hello'.find('z') }} {{ '你好你好'.find('好') }} {{ 'hello'.count('l') }}",
    want = "a-b-c a-bXc 2 -1 1 2" },
  { "methods: join format splitlines isdigit",
    t = "{{ ', '.join(['a', 'b']) }} {{ '{} and {}'.format(1, 'x') }} {{ '{name}!'.format(name='N') }} {{ 'a\\nb\\r\\nc'.splitlines() }} {{ '123'.isdigit() }} {{ '12a'.isdigit() }}",
    want = "a, b 1 and x N! ['a', 'b', 'c'] True False" },
  { "methods: reasoning split as Qwen does",
    t = "{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[-1].lstrip('\\n') }}",
    vars = "{\"c\": \"<think>\\nplan\\n</think>\\n\\nanswer\"}",
    want = "plan|answer" },
  { "methods: dict methods",
    t = "{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 5) }}",
    vars = "{\"d\": {\"b\": 1, \"a\": 2}}",
    want = "['b', 'a'] [1, 2] [('b', 1), ('a', 2)] 2 None 5" },
  { "methods: list methods",
    t = "{{ [1, 2, 3].index(2) }} {{ [1, 2, 2].count(2) }}",
    want = "1 2" },
  -- undefined
  { "undefined: lenient uses",
    t = "[{{ x }}] [{{ x ~ 'a' }}] [{{ x|string }}] {{ x|length }} {{ x|list }} {{ x is none }} {{ x is iterable }} {% if x %}t{% else %}f{% endif %} {% for i in x %}{{ i }}{% else %}empty{% endfor %} {{ x == y }} {{ x == none }}",
    want = "[] [a] [] 0 [] False True f empty True False" },
  { "undefined: missing key behaves like missing variable",
    t = "[{{ m.tool_calls }}] {{ m.tool_calls is defined }} {{ 'tool_calls' in m }}",
    vars = "{\"m\": {\"role\": \"user\"}}",
    want = "[] False False" },
  { "undefined: globals",
    t = "{{ dict(a=1, b='x') }} {{ namespace(a=1).a }} {{ strftime_now('%Y-%m-%d') }} {{ strftime_now('%d %b %Y') }}",
    want = "{'a': 1, 'b': 'x'} 1 2026-11-22 22 Nov 2026" },
  -- markup
  { "markup: plus escapes the plain side of a safe string",
    t = "{{ '<b>'|safe + '<i>' }} {{ '<'|e + '>' }} {{ 'a & b' + '<br>'|safe }}",
    want = "<b>&lt;i&gt; &lt;&gt; a &amp; b<br>" },
  { "markup: tilde joins without escaping",
    t = "{{ '<b>'|safe ~ '<i>' }}",
    want = "<b><i>" },
  { "markup: percent formatting escapes arguments",
    t = "{{ ('<%s>'|safe) % '&' }} {{ ('%s|%d'|safe)|format('<', 3) }}",
    want = "<&amp;> &lt;|3" },
  { "markup: string filters keep markup",
    t = "{{ ' <x> '|safe|trim + '<' }} {{ 'a'|safe|upper + '<' }} {{ 'x'|safe|replace('x', 'y') + '<' }}",
    want = "<x>&lt; A&lt; y<" },
  { "markup: escape and forceescape",
    t = "{{ '<b>'|escape }} {{ '<b>'|escape|escape }} {{ '<b>'|safe|forceescape }} {{ '<b>'|safe is string }}",
    want = "&lt;b&gt; &lt;b&gt; &lt;b&gt; True" },
  -- generators
  { "generators: filter results are always true",
    t = "{{ 'yes' if []|select else 'no' }} {{ 'yes' if []|select|list else 'no' }} {{ 'yes' if {}|items else 'no' }}",
    want = "yes no yes" },
  { "generators: a generator is used up by one pass",
    t = "{% set g = [1, 2, 3]|select('odd') %}{{ g|list }} {{ g|list }}{% set h = 'abc'|map('upper') %} {{ h|first }}{{ h|join }}",
    want = "[1, 3] [] ABC" },
  { "generators: select and map on none or undefined yield nothing",
    t = "{{ none|selectattr('x')|list }} {{ nothing|map('upper')|list }} {{ none|reject|list }}",
    want = "[] [] []" },
  { "generators: reverse of a list is an iterator",
    t = "{{ [3, 1, 2]|reverse|first }} {{ [1, 2]|reverse|join(',') }} {{ ([1]|reverse) is iterable }} {{ ([1]|reverse) is sequence }}",
    want = "2 2,1 True False" },
  { "generators: for loops over generators",
    t = "{% for m in messages|selectattr('role', 'eq', 'user') %}{{ loop.index }}/{{ loop.length }}:{{ m.content|trim }} {% endfor %}",
    vars = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \" Hi \\n\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"你好👩‍💻\"}]}",
    want = "1/2:Hi 2/2:你好👩‍💻 " },
  { "generators: unknown filter in an untaken branch",
    t = "{% if false %}{{ x|from_json }}{% elif 0 %}{{ x is frob }}{% endif %}ok",
    want = "ok" },
}

describe("Jinja semantics", function()
  for _, c in ipairs(SEMANTICS) do
    it(c[1], function()
      local vars = c.vars and assert(json.decode(c.vars, { exact_floats = true })) or {}
      vars.strftime_now = strftime_fixed
      local out, err = T.render(c.t, vars)
      assert.are.equal(c.want, out, err)
    end)
  end

  it("lets templates call mutating list methods (transformers' sandbox would refuse)", function()
    assert.are.equal("None[1, 2, 3]", T.render("{% set x = [1, 2] %}{{ x.append(3) }}{{ x }}"))
    assert.are.equal("3[1]", T.render("{% set x = [1, 3] %}{{ x.pop() }}{{ x }}"))
  end)

  it("runs the else of a loop whose iterations all ended in break or continue, as Jinja does", function()
    assert.are.equal("E", T.render("{% for x in [1, 2] %}{% continue %}{% else %}E{% endfor %}"))
    assert.are.equal("1E", T.render("{% for x in [1, 2] %}{{ x }}{% break %}{% else %}E{% endfor %}"))
    assert.are.equal("12", T.render("{% for x in [1, 2] %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% else %}E{% endfor %}"))
  end)
end)

-- { name, template, vars or nil, Lua pattern the error must match }
local ERRORS = {
  { "unknown filter: names it and the line", "a\n\n{{ x|foo }}", nil, "^line 3: unknown filter 'foo'$" },
  { "unknown test", "{{ x is frob }}", nil, "^line 1: unknown test 'frob'$" },
  { "unknown tag", "\n{% frob %}", nil, "^line 2: unknown tag 'frob'$" },
  { "unsupported tag", "{% include 'x.jinja' %}", nil, "^line 1: unsupported tag 'include'$" },
  { "unclosed block", "{% for x in y %}\n", nil, "^line 1: unexpected end of template, expected 'else' or 'endfor'" },
  { "mismatched end tag", "{% for x in y %}\n{% endif %}", nil, "^line 2: unexpected 'endif'" },
  { "unclosed string", "{{ 'abc }}", nil, "^line 1: .*string not closed" },
  { "unclosed tag", "{{ x ", nil, "^line 1: .*not closed" },
  { "bad expression", "{{ 1 + }}", nil, "^line 1: unexpected end of tag" },
  { "break outside a loop", "{% break %}", nil, "^line 1: 'break' outside of a loop$" },
  { "test with too many arguments", "{{ x is defined 1 }}", nil, "^line 1: TypeError: test 'defined' takes 0 arguments" },
  { "undefined + number", "{{ x + 1 }}", nil, "^line 1: 'x' is undefined$" },
  { "undefined < number", "{{ x < 1 }}", nil, "^line 1: 'x' is undefined$" },
  { "calling undefined", "{{ x() }}", nil, "^line 1: 'x' is undefined$" },
  { "attribute of undefined", "\n{{ x.y }}", nil, "^line 2: 'x' is undefined$" },
  { "item of undefined", "{{ x['y'] }}", nil, "^line 1: 'x' is undefined$" },
  { "attribute of a missing key", "{{ m.a.b }}", '{"m": {}}', "^line 1: 'dict object' has no attribute 'a'$" },
  { "str + int", "{% if true %}\n  {{ 'a' + 1 }}{% endif %}", nil, "^line 2: TypeError: " },
  { "division by zero", "{{ 1 / 0 }}", nil, "ZeroDivisionError" },
  { "iterating none", "{% for x in none %}{% endfor %}", nil, "'NoneType' object is not iterable" },
  { "tojson of undefined", "{{ x|tojson }}", nil, "is not JSON serializable" },
  { "slicing a number", "{{ n[1:] }}", '{"n": 5}', "'int' object is not subscriptable" },
  { "set attribute of a dict", "{% set d = {} %}{% set d.a = 1 %}", nil, "non%-namespace" },
  { "too many macro arguments", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", nil, "takes not more than 1 argument" },
  { "unknown macro keyword", "{% macro m(a) %}{% endmacro %}{{ m(b=2) }}", nil, "no keyword argument 'b'" },
  { "unknown string method", "{{ 'a'.frob() }}", nil, "'str object' has no attribute 'frob'" },
  { "runaway recursion", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", nil, "maximum recursion depth" },
  { "runaway loops", "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(2) %}{% endfor %}{% endfor %}{% endfor %}",
    nil, "exceeded" }, -- the loop iteration limit, or the CPU time limit before it
  { "huge range", "{{ range(100000000)|length }}", nil, "too large" },
  { "quadratic work", "{% set big = range(900000)|list %}{% for i in range(900000) %}{% if i in big %}{% endif %}{% endfor %}",
    nil, "work limit" },
  { "huge string", "{{ 'x' * 100000000 }}", nil, "MemoryError" },
  { "unknown filter in a taken branch", "{% if true %}\n{{ x|from_json }}{% endif %}", nil, "^line 2: unknown filter 'from_json'$" },
  { "length of a generator", "{{ [1, 2]|select|length }}", nil, "object of type 'generator' has no len%(%)" },
  { "tojson of a generator", "{{ [1, 2]|map('string')|tojson }}", nil, "Object of type generator is not JSON serializable" },
  { "markup plus a number", "{{ 'a'|safe + 1 }}", nil, "TypeError" },
}

describe("errors", function()
  for _, c in ipairs(ERRORS) do
    it(c[1], function()
      local vars = c[3] and assert(json.decode(c[3])) or {}
      local out, err, info = T.render(c[2], vars)
      assert.is_nil(out)
      assert.is_string(err)
      assert.matches(c[4], err)
      assert.is_table(info)
      assert.is_number(info.line)
    end)
  end

  it("gives raise_exception's message verbatim, with its kind and line", function()
    local out, err, info = T.render("x\n{{ raise_exception('Roles must alternate ' ~ 2) }}")
    assert.is_nil(out)
    assert.are.equal("Roles must alternate 2", err)
    assert.are.same({ kind = "raise_exception", line = 2 }, info)
  end)

  it("tells syntax errors from runtime errors", function()
    assert.are.equal("syntax", select(3, T.compile("{% for %}")).kind)
    assert.are.equal("runtime", select(3, T.render("{{ 1 / 0 }}")).kind)
  end)

  it("never raises and never hangs on malformed input", function()
    local frags = { "{{", "}}", "{%", "%}", "{#", "#}", "-", " ", "\n", "if", "for", "in", "endif",
      "endfor", "set", "=", "x", ".", "(", ")", "[", "]", "{", "}", ",", ":", "'s'", "1", "2.5",
      "|", "trim", "is", "defined", "not", "~", "*", "//", "**", "else", "macro", "endmacro",
      "raw", "endraw", "none", "namespace", "items", "loop", "break", "\\", "'", "\0" }
    math.randomseed(7)
    for _ = 1, 3000 do
      local parts = {}
      for j = 1, math.random(1, 20) do parts[j] = frags[math.random(#frags)] end
      local src = table.concat(parts, math.random() < 0.5 and " " or "")
      local ok, out, err = pcall(T.render, src, { x = { 1, 2 } })
      assert(ok, out)
      if out == nil then
        assert.is_string(err)
        assert.is_nil(err:find("internal error", 1, true), err)
      else
        assert.is_string(out)
      end
    end
  end)
end)

describe("values from Lua", function()
  local function r(t, vars) return (assert(T.render(t, vars))) end

  it("treats an empty plain table as a list, json.object() as a dict", function()
    assert.are.equal("[] {}", r("{{ a|tojson }} {{ d|tojson }}", { a = {}, d = json.object() }))
    assert.are.equal("False True", r("{{ a is mapping }} {{ d is mapping }}", { a = {}, d = json.object() }))
    assert.are.equal("[]", r("{{ a|tojson }}", { a = json.array() }))
  end)

  it("keeps insertion order of json.object and of decoded JSON, sorts plain tables", function()
    local ordered = json.object({ z = 1, a = 2 }, { "z", "a" })
    assert.are.equal('{"z": 1, "a": 2}', r("{{ d|tojson }}", { d = ordered }))
    assert.are.equal("z a ", r("{% for k in d %}{{ k }} {% endfor %}", { d = json.decode('{"z": 1, "a": 2}') }))
    assert.are.equal('{"a": 2, "z": 1}', r("{{ d|tojson }}", { d = { z = 1, a = 2 } }))
  end)

  it("keeps dict literals in source order", function()
    assert.are.equal('{"z": 1, "a": [], "m": {}}', r("{{ {'z': 1, 'a': [], 'm': {}}|tojson }}"))
  end)

  it("prints ints as ints and floats as floats", function()
    assert.are.equal("1 1.0 0.5 2.0 3", r("{{ i }} {{ f }} {{ h }} {{ i * 2.0 }} {{ 7 // 2 }}",
      { i = 1, f = json.float(1), h = 0.5 }))
    local d = json.decode('{"a": 1.0, "b": 2}', { exact_floats = true })
    assert.are.equal("1.0 2 " .. '{"a": 1.0, "b": 2}', r("{{ d.a }} {{ d.b }} {{ d|tojson }}", { d = d }))
  end)

  it("uses json.null for none", function()
    assert.are.equal("None True True", r("{{ n }} {{ n is none }} {{ n is defined }}", { n = json.null }))
  end)

  it("calls Lua functions with positional arguments and a keyword table", function()
    local function f(a, b, kw) return a .. b .. (kw and kw.sep or "") end
    assert.are.equal("xy xy!", r("{{ f('x', 'y') }} {{ f('x', 'y', sep='!') }}", { f = f }))
    assert.are.equal("None", r("{{ g() }}", { g = function() end }))
  end)

  it("reads strftime_now from the vars, else formats the current time", function()
    assert.are.equal(os.date("%Y"), r("{{ strftime_now('%Y') }}"))
    assert.are.equal("22 Nov 2026", r("{{ strftime_now('%d %b %Y') }}", { strftime_now = strftime_fixed }))
  end)

  it("does not modify the vars table", function()
    local vars = { messages = { 1, 2 } }
    r("{% set messages = messages[1:] %}{% set extra = 1 %}", vars)
    assert.are.same({ messages = { 1, 2 } }, vars)
  end)
end)

describe("API", function()
  it("compiles once and renders many times", function()
    local tmpl = assert(T.compile("{% for m in messages %}{{ m.content }};{% endfor %}"))
    assert.are.equal("a;", tmpl:render { messages = { { content = "a" } } })
    assert.are.equal("b;c;", tmpl:render { messages = { { content = "b" }, { content = "c" } } })
    assert.are.equal("", tmpl:render())
  end)

  it("rejects a non-string source and non-table vars", function()
    local t, err = T.compile(42)
    assert.is_nil(t)
    assert.matches("must be a string", err)
    local out, err2 = T.render("x", "vars")
    assert.is_nil(out)
    assert.matches("must be a table", err2)
  end)

  it("renders through the source cache consistently", function()
    for i = 1, 3 do assert.are.equal(tostring(i), T.render("{{ n }}", { n = i })) end
  end)
end)

describe("builtin templates", function()
  local conversation = {
    messages = {
      { role = "system", content = "You are helpful." },
      { role = "user", content = "Hi!" },
      { role = "assistant", content = "Hello." },
      { role = "user", content = "How are you?" },
    },
    add_generation_prompt = true,
    bos_token = "<s>",
    eos_token = "</s>",
  }
  local WANT = {
    chatml = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      .. "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
      .. "<|im_start|>assistant\n",
    gemma = "<s><start_of_turn>user\nYou are helpful.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
      .. "Hello.<end_of_turn>\n<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n",
    llama2 = "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi! [/INST] Hello. </s>"
      .. "<s>[INST] How are you? [/INST]",
    llama3 = "<s><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
      .. "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      .. "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
      .. "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
      .. "<|start_header_id|>assistant<|end_header_id|>\n\n",
    mistral = "<s>[INST] You are helpful.\n\nHi! [/INST]Hello.</s>[INST] How are you? [/INST]",
    phi3 = "<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
      .. "<|user|>\nHow are you?<|end|>\n<|assistant|>\n",
    zephyr = "<|system|>\nYou are helpful.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n"
      .. "<|user|>\nHow are you?</s>\n<|assistant|>\n",
  }

  it("lists its names", function()
    assert.are.same({ "chatml", "gemma", "llama2", "llama3", "mistral", "phi3", "zephyr" }, T.builtin_names())
  end)

  for name, want in pairs(WANT) do
    it(name .. " renders a two-turn conversation", function()
      local src = assert(T.builtin(name))
      assert.are.equal(want, T.render(src, conversation))
    end)
  end

  it("rejects roles out of order where the format requires alternation", function()
    local out, err, info = T.render(T.builtin("llama2"), { messages = { { role = "assistant", content = "x" } } })
    assert.is_nil(out)
    assert.are.equal("Conversation roles must alternate user/assistant/user/assistant/...", err)
    assert.are.equal("raise_exception", info.kind)
  end)

  it("reports an unknown name", function()
    local src, err = T.builtin("nope")
    assert.is_nil(src)
    assert.matches("unknown builtin template 'nope'", err)
  end)
end)
