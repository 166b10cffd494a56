-- Grammars (src/grammar*.c through lm.grammar): the GBNF parser and its errors, matchers
-- against hand-checked strings, masks against a per-token reference, every grammar of a
-- llama.cpp checkout (MOONLM_LLAMA_CPP, default /work/peers/llama.cpp), hostile grammars,
-- handles across Lua states, lazy triggers, rollback.
local lm = require "moonlm"
local S = require "support"
local G = lm.grammar

-- a vocabulary of every byte, then multi-byte tokens, duplicates, partial UTF-8, a token
-- that is never text, and an end-of-generation token (the last)
local function make_vocab(extra)
  local toks = {}
  for b = 0, 255 do toks[#toks + 1] = string.char(b) end
  local more = { "ab", "abc", "abcd", "ba", "\"", "\":", "\", ", "\"}", "},", "{\"", "  ", "\n", "\n  ", "12", "3.5",
                 "true", "null", "false", "e+", "\\u", "\\n", "\xC3", "\xC3\xA9", "\xE3\x81", "\xE3\x81\x82",
                 "\xF0\x9F", "-- ", "1. ", "O-O", "int ", "return", "(){", ";}", "caf\xC3\xA9", "ab", "hello",
                 " world", "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123", "\t", "x\"", "\xC3\xA9t\xC3\xA9" }
  for _, t in ipairs(more) do toks[#toks + 1] = t end
  for _, t in ipairs(extra or {}) do toks[#toks + 1] = t end
  toks[#toks + 1] = false
  toks[#toks + 1] = "<eos>" -- id #toks - 1: declared end of generation below
  return toks, G.vocab(toks, { eog = { #toks - 1 } })
end

local TOKS, VOCAB = make_vocab()

-- m:mask() against the reference: each token's bytes accepted from here (accept_text,
-- then rolled back), end-of-generation tokens exactly when the grammar can end
local function check_mask(m, toks)
  local mask = m:mask()
  local n_allowed = 0
  for id = 0, #toks - 1 do
    local want
    if id == #toks - 1 then
      want = m:can_end()
    elseif toks[id + 1] then
      want = m:accept_text(toks[id + 1])
      if want then m:rollback(1) end
    else
      want = false
    end
    local got = mask[id + 1] == 1
    if got ~= want then
      error(("token %d (%q): mask says %s, the reference %s"):format(id, tostring(toks[id + 1]), tostring(got), tostring(want)), 2)
    end
    assert.are.equal(want, m:allows(id))
    if got then n_allowed = n_allowed + 1 end
  end
  return n_allowed
end

-- does the grammar match s exactly?
local function matches(g, s)
  local m = g:matcher(VOCAB)
  return m:accept_text(s) and m:can_end()
end

local function check_cases(g, c, what)
  for _, s in ipairs(c.yes or {}) do
    if not matches(g, s) then error(("%s: %q should match"):format(what, s), 2) end
  end
  for _, s in ipairs(c.no or {}) do
    if matches(g, s) then error(("%s: %q should not match"):format(what, s), 2) end
  end
end

-- masks at every prefix of the given strings
local function check_prefix_masks(g, strings, toks, vocab)
  for _, s in ipairs(strings) do
    local m = g:matcher(vocab or VOCAB)
    for i = 0, #s do
      check_mask(m, toks or TOKS)
      if i < #s then assert.is_true(m:accept_text(s:sub(i + 1, i + 1))) end
    end
  end
end

describe("grammar: GBNF", function()
  local cases = {
    { 'root ::= "a" [b-d]* "e"', yes = { "ae", "abcde", "addde" }, no = { "a", "e", "abe0", "aee" } },
    { 'root ::= [^a-c]+', yes = { "d", "xyz", "\xC3\xA9", "\xF0\x9F\x98\x80" }, no = { "", "a", "xb" } },
    { 'root ::= "\\x41\\u00e9\\U0001F600\\t\\r\\n\\\\\\"\\[\\]"', yes = { "A\xC3\xA9\xF0\x9F\x98\x80\t\r\n\\\"[]" }, no = { "A" } },
    { 'root ::= . .', yes = { "ab", "\xC3\xA9\n", "\0\0" }, no = { "a", "abc", "\xC3", "\xED\xA0\x80a" } },
    { 'root ::= "x"{3}', yes = { "xxx" }, no = { "xx", "xxxx" } },
    { 'root ::= "x"{2,}', yes = { "xx", "xxxxxxx" }, no = { "x" } },
    { 'root ::= "x"{1,3} "y"{0,2}', yes = { "x", "xxxyy", "xy" }, no = { "", "xxxx", "xyyy" } },
    { 'root ::= ("ab" | "c")* "d"?', yes = { "", "ababcd", "d", "cc" }, no = { "a", "dd", "abd d" } },
    { 'root ::= ( "a" |\n  "b" # comment\n  "c" )', yes = { "a", "bc" }, no = { "ac", "b" } },
    { 'root ::= "a" |\n  "b"', yes = { "a", "b" } },
    { 'root ::= x\r\nx ::= "1" | "2"\r\n', yes = { "1", "2" }, no = { "12" } },
    { 'root ::= p\np ::= "(" p ")" | ""', yes = { "", "()", "((()))" }, no = { "(", "())", ")(" } },
    { 'root ::= e\ne ::= t ("+" t)*\nt ::= [0-9]+ | "(" e ")"', yes = { "1+2", "(1+(2+3))+4" }, no = { "1+", "(1" } },
    { 'root ::= a\na ::= "x"\na ::= "y"', yes = { "y" }, no = { "x" } }, -- the last definition counts, as in llama.cpp
    { 'root ::= "" ""', yes = { "" }, no = { "a" } },
    { 'root ::= [a-]* [-a]', yes = { "-", "a-a" }, no = { "b" } },
    { 'root ::= [\\]\\\\]', yes = { "]", "\\" }, no = { "[" } },
    { 'root ::= "é"+ [ぁ-ゟ]', yes = { "éé\xE3\x81\x82" }, no = { "é" } },
    -- nearly unconstrained states (masks from slices of the vocabulary), bounded and not
    { 'root ::= "\\"" [^"\\\\\\x00-\\x1F]{0,3} "\\"" [0-9]', yes = { '""1', '"ab"2', '"a\xC3\xA9c"3' }, no = { '"abcd"1', '"a\nb"1' } },
    { 'root ::= "\\"" [^"\\\\\\x7F\\x00-\\x1F]* "\\""', yes = { '"hello world"', '""' }, no = { '"\x7F"' } },
    -- a slice with exceptions (here ' ' to '/' leave the string body): they hold for every
    -- character of a token, not only its first ("3.5" is no member after '"a')
    { 'root ::= "\\"" [^"\\\\\\x7F\\x00-\\x2F]* "\\""', yes = { '"a3b"', '""', '"x0y"' }, no = { '"3.5"', '"a b"' } },
    { 'root ::= [^\\n]{2,20} "\\n"', yes = { "ab\n", "hello world\n" }, no = { "a\n", ("x"):rep(21) .. "\n" } },
    { 'root ::= "<" .{0,28} ">"', yes = { "<>", "<abcdefghijklmnopqrstuvwxyz>" }, no = { "<" .. ("a"):rep(29) .. ">" } },
  }
  for i, c in ipairs(cases) do
    it(("matches hand-checked strings (%d: %s)"):format(i, c[1]:gsub("\n", "\\n")), function()
      local g = assert(G.gbnf(c[1]))
      check_cases(g, c, c[1])
      if c.yes then check_prefix_masks(g, c.yes) end
    end)
  end

  it("takes another start rule", function()
    local g = assert(G.gbnf('root ::= "a"\nitem ::= "b"', { root = "item" }))
    assert.is_true(matches(g, "b"))
    assert.is_false(matches(g, "a"))
    local none, err = G.gbnf('root ::= "a"', { root = "item" })
    assert.is_nil(none)
    assert.are.equal("grammar has no rule named 'item'", err)
    assert.has_error(function() G.gbnf('root ::= "a"', { rot = "x" }) end, "bad argument #2 to 'grammar.gbnf' (unknown option 'rot')")
  end)

  local errors = {
    { 'root ::= x', "undefined rule 'x' at line 1, column 10" },
    { 'root ::= "a"\n\nb ::= c\n', "undefined rule 'c' at line 3, column 7" },
    { 'root ::= "a', "unexpected end of input at line 1, column 12" },
    { 'root ::= [a', "unexpected end of input at line 1, column 12" },
    { 'root ::= [z-a]', "invalid range (U+61 after U+7A) at line 1, column 11" },
    { 'root ::= []', "empty character class at line 1, column 10" },
    { 'root := "a"', "expecting '::=' at line 1, column 6" },
    { 'root ::= "a" )', "expecting newline or end at line 1, column 14" },
    { 'root ::= ("a"', "expecting ')' at line 1, column 14" },
    { 'root ::= *', "expecting an item before '*' at line 1, column 10" },
    { 'root ::= "a"{', "expecting an integer at line 1, column 14" },
    { 'root ::= "a"{2', "expecting ',' or '}' at line 1, column 15" },
    { 'root ::= "a"{2,x}', "expecting '}' at line 1, column 16" },
    { 'root ::= "a"{3,2}', "repetition {3,2}: maximum below minimum at line 1, column 13" },
    { 'root ::= "\\q"', "unknown escape '\\q' at line 1, column 11" },
    { 'root ::= "\\x4"', "expecting 2 hex digits after '\\x' at line 1, column 11" },
    { 'root ::= "\\U00110000"', "code point U+110000 is beyond U+10FFFF at line 1, column 11" },
    { 'root ::= "\\uD800"', "surrogate code point U+D800 at line 1, column 11" },
    { 'root ::= "\xE9t\xE9"', "invalid UTF-8 at line 1, column 11" },
    { 'root ::= "a"\0', "unexpected NUL byte at line 1, column 13" },
    { '= "a"', "expecting a rule name at line 1, column 1" },
    { 'root ::= ( "a" |\n  "b" ) # comment\n  "c"', "expecting a rule name at line 3, column 3" }, -- a newline ends a rule
    { '', "empty grammar" },
    { '# only a comment\n', "empty grammar" },
    { 'item ::= "a"', "grammar has no rule named 'root'" },
    { 'root ::= root "a"', "left recursion: rule 'root' can begin with itself at line 1, column 10" },
    { 'root ::= e\ne ::= f? "x"\nf ::= "y" | e', "left recursion: rule 'e' can begin with itself at line 2, column 7" },
    { 'root ::= "a" root', "the grammar matches no complete text (rule 'root' cannot finish)" },
    { 'root ::= "a" x\nx ::= "b" x', "the grammar matches no complete text (rule 'root' cannot finish)" },
  }
  for _, e in ipairs(errors) do
    it(("refuses %q"):format(e[1]), function()
      local g, err = G.gbnf(e[1])
      assert.is_nil(g)
      assert.are.equal(e[2], err)
    end)
  end

  it("drops alternatives that can never finish", function()
    local g = assert(G.gbnf('root ::= "a" | "b" loop\nloop ::= "c" loop'))
    assert.is_true(matches(g, "a"))
    local m = g:matcher(VOCAB)
    assert.is_false(m:accept_text("b"))
  end)
end)

describe("grammar: hostile input", function()
  local function refuses(text, msg, f)
    local g, err = (f or G.gbnf)(text)
    assert.is_nil(g)
    assert.are.equal(msg, err)
  end

  it("refuses deep nesting, huge repetitions and blow-ups with a message", function()
    refuses("root ::= " .. ("("):rep(100000) .. '"a"' .. (")"):rep(100000), "groups nested deeper than 400 at line 1, column 410")
    refuses('root ::= "x"{1000000}', "grammar too large: more than 3145728 automaton states after expanding repetitions and rules")
    refuses('root ::= "x"{1000000}{1000000}', "grammar too large: more than 3145728 automaton states after expanding repetitions and rules")
    refuses('root ::= "x"{10000000}', "repetition count above 1000000 at line 1, column 14")
    refuses('root ::= "x"' .. ("*"):rep(100000), "repetitions nested deeper than 400 at line 1, column 413")
    -- 2^40 copies of "ab" by doubling: rules that would be too large inlined stay automata of their own
    local exp = {}
    for i = 1, 40 do exp[#exp + 1] = ("r%d ::= r%d r%d"):format(i, i + 1, i + 1) end
    local g = assert(G.gbnf("root ::= r1\n" .. table.concat(exp, "\n") .. '\nr41 ::= "ab"'))
    local m = g:matcher(VOCAB)
    assert.is_true(m:accept_text(("ab"):rep(1000)))
    assert.is_false(m:can_end())
    assert.is_false(m:accept_text("b"))
  end)

  it("builds its automaton on demand, and says so when it would grow past its room", function()
    -- .*a.{24} has 2^25 DFA states in full: only those a text reaches are made
    local g = assert(G.regex(".*a.{24}"))
    local m = g:matcher(VOCAB)
    assert.is_true(m:accept_text(("ab"):rep(100)))
    check_mask(m, TOKS)
    -- 4,096 tokens of 12 random a/b each walk into distinct states of (a|b)*a(a|b){18}
    local toks = {}
    for i = 0, 4095 do
      local t = {}
      for k = 0, 11 do t[#t + 1] = math.floor(i / 2 ^ k) % 2 == 1 and "a" or "b" end
      toks[#toks + 1] = table.concat(t)
    end
    local g2 = assert(G.regex("(a|b)*a(a|b){18}"))
    local m2 = g2:matcher(G.vocab(toks))
    local ok, err = pcall(function()
      for _ = 1, 20 do
        m2:mask()
        assert(m2:accept_text("ab"))
      end
    end)
    assert.is_false(ok)
    assert.truthy(tostring(err):match("grammar too large: its automaton exceeds %d+ states"), err)
  end)

  it("stops a grammar whose stacks double with every byte at its limit, and stays usable", function()
    -- p p with an empty p: each byte about doubles the stacks (the 15th would make more
    -- than 65,536). Deduplicating them was a scan, quadratic in their number (1 s a byte
    -- near the limit); the step fails cleanly and leaves the matcher as it was.
    local g = assert(G.gbnf('root ::= p\np ::= "(" p p | [a-z] p p | [a-z]*'))
    local m = g:matcher(VOCAB)
    local feed, n = ("(hap(pbk"):rep(2), 0
    local ok, err
    for i = 1, #feed do
      ok, err = pcall(m.accept_text, m, feed:sub(i, i))
      if not ok then break end
      assert.is_true(err)
      n = n + 1
    end
    assert.are.equal(14, n)
    assert.are.equal("grammar too ambiguous (more than 65536 stacks)", (tostring(err):gsub("^[^:]*:%d+: ", "")))
    assert.are.equal(14, m:n_accepted())
    m:rollback(14)
    assert.is_true(m:accept_text("(ab(c"))
    assert.is_true(m:can_end())
    assert.is_false(m:accept_text(")"))
  end)

  it("compiles a 1 MB grammar, and a chain of 50,000 rules, or refuses it, within the budget", function()
    local parts, alts = {}, {}
    for i = 1, 40000 do
      parts[#parts + 1] = ('r%d ::= "word%d" [a-z]*'):format(i, i)
      alts[#alts + 1] = "r" .. i
    end
    local text = "root ::= " .. table.concat(alts, " | ") .. "\n" .. table.concat(parts, "\n")
    assert.is_true(#text > 1e6)
    local g = assert(G.gbnf(text))
    assert.is_true(matches(g, "word39999xyz"))
    assert.is_false(matches(g, "word40001"))
    local chain = {}
    for i = 1, 50000 do chain[#chain + 1] = ('r%d ::= "a" r%d'):format(i, i + 1) end
    chain[#chain + 1] = 'r50001 ::= "b"'
    local g2, err = G.gbnf("root ::= r1\n" .. table.concat(chain, "\n"))
    if g2 then
      assert.is_true(matches(g2, ("a"):rep(50000) .. "b"))
    else
      assert.are.equal("grammar too large: more than 3145728 automaton states after expanding repetitions and rules", err)
    end
  end)
end)

describe("grammar: regex and choice", function()
  local cases = {
    { "[0-9]{3}-[0-9]{4}", yes = { "555-1234" }, no = { "5551234", "555-123", "555-12345" } },
    { "^(foo|bar)+$", yes = { "foo", "barfoo" }, no = { "", "fo", "foo\n" } },
    { "a.c", yes = { "abc", "a\xC3\xA9c" }, no = { "a\nc", "ac" } },
    { "\\d+\\.\\d*", yes = { "1.", "12.50" }, no = { ".5", "1" } },
    { "[^\\s]+\\s\\w", yes = { "x\ty", "ab _" }, no = { "a b c", " a" } },
    { "x{2,}?y??", yes = { "xx", "xxxy" }, no = { "x" } },
    { "[\\u00e9\\x41-\\x43\\]-]", yes = { "\xC3\xA9", "B", "]", "-" }, no = { "D" } },
    { "\\uD83D\\uDE00|\\u{1F601}", yes = { "\xF0\x9F\x98\x80", "\xF0\x9F\x98\x81" } },
    { "a{,2}", yes = { "a{,2}" }, no = { "aa" } }, -- not a quantifier: literal braces
    { "(?:ab)+(?<name>c)", yes = { "ababc" } },
    { "[]|x", yes = { "x" }, no = { "" } },
  }
  for i, c in ipairs(cases) do
    it(("matches hand-checked strings (%d: %s)"):format(i, c[1]), function()
      local g = assert(G.regex(c[1]))
      check_cases(g, c, c[1])
      if c.yes then check_prefix_masks(g, c.yes) end
    end)
  end

  local errors = {
    { "(a", "missing ')' at position 1" },
    { "a)", "unmatched ')' at position 2" },
    { "*a", "nothing to repeat at position 1" },
    { "a**", "nothing to repeat at position 3" },
    { "(?=a)", "unsupported: look-around at position 1" },
    { "(a)\\1", "unsupported: back reference at position 4" },
    { "\\bx", "unsupported: word boundary \\b at position 1" },
    { "\\p{L}", "unsupported: Unicode property escape at position 1" },
    { "[z-a]", "range out of order in character class at position 2" },
    { "a{3,2}", "numbers out of order in {} quantifier at position 2" },
    { "[ab", "unterminated character class at position 1" },
    { "\\", "pattern ends with '\\' at position 1" },
  }
  for _, e in ipairs(errors) do
    it(("refuses %q"):format(e[1]), function()
      local g, err = G.regex(e[1])
      assert.is_nil(g)
      assert.are.equal(e[2], err)
    end)
  end

  it("choice: one of literal byte strings", function()
    local g = assert(G.choice { "yes", "no", "maybe", "" })
    for _, s in ipairs { "yes", "no", "maybe", "" } do assert.is_true(matches(g, s)) end
    assert.is_false(matches(g, "ye"))
    assert.is_false(matches(g, "yesno"))
    check_prefix_masks(g, { "maybe" }, nil)
    assert.has_error(function() G.choice {} end, "bad argument #1 to 'grammar.choice' (empty list of choices)")
    assert.has_error(function() G.choice { "a", 3 } end, "bad argument #1 to 'grammar.choice' (choice 2 is a number, not a string)")
  end)
end)

describe("grammar: matchers", function()
  it("masks, accept, can_end, is_done, reset", function()
    local g = assert(G.gbnf('root ::= "ab" ("c" | "d" "e"?)'))
    local m = g:matcher(VOCAB)
    local id = {}
    for i, t in ipairs(TOKS) do if t and not id[t] then id[t] = i - 1 end end
    local eos = #TOKS - 1
    assert.are.equal(4, check_mask(m, TOKS)) -- "a", "ab" (twice: two ids) and "abc"
    assert.is_false(m:accept(id.b))
    assert.are.equal(0, m:n_accepted())
    assert.is_true(m:accept(id.ab))
    assert.is_false(m:can_end())
    assert.is_false(m:accept(eos))
    assert.is_true(m:accept(id.d))
    assert.is_true(m:can_end())
    assert.is_false(m:is_done())
    check_mask(m, TOKS) -- "e" and the end
    assert.is_true(m:accept(id.e))
    assert.is_true(m:is_done())
    assert.are.equal(1, check_mask(m, TOKS)) -- only the end
    assert.is_true(m:accept(eos))
    assert.is_false(m:accept(id.a))
    m:reset()
    assert.are.equal(0, m:n_accepted())
    assert.are.equal(4, check_mask(m, TOKS))
    assert.has_error(function() m:accept(#TOKS) end,
      ("bad argument #2 to 'accept' (token id %d out of range (the vocabulary has %d: 0 to %d))"):format(#TOKS, #TOKS, #TOKS - 1))
  end)

  it("mask(out) fills a tensor, apply() bans tokens in logits", function()
    local g = assert(G.gbnf('root ::= [a-c]'))
    local m = g:matcher(VOCAB)
    local out = lm.tensor.zeros({ #TOKS }, "i8")
    assert.are.equal(out, m:mask(out))
    local logits = lm.tensor.zeros({ #TOKS })
    assert.are.equal(logits, m:apply(logits))
    for i = 0, #TOKS - 1 do
      local ok = TOKS[i + 1] == "a" or TOKS[i + 1] == "b" or TOKS[i + 1] == "c"
      assert.are.equal(ok and 1 or 0, out[i + 1])
      assert.are.equal(ok and 0 or -math.huge, logits[i + 1])
    end
    local l2 = lm.tensor.zeros({ #TOKS })
    G.apply(l2, out)
    assert.are.same(logits:totable(), l2:totable())
    assert.has_error(function() m:mask(lm.tensor.zeros({ 3 }, "i8")) end,
      ("bad argument #2 to 'mask' (contiguous i8 tensor of %d elements expected)"):format(#TOKS))
  end)

  it("rollback undoes accepts, masks as before", function()
    local g = assert(G.gbnf('root ::= p\np ::= "(" p ")" p | [a-z]*'))
    local m = g:matcher(VOCAB)
    local masks = {}
    local text = "((ab)c)(d)"
    for i = 1, #text do
      masks[i] = m:mask():totable()
      assert.is_true(m:accept_text(text:sub(i, i)))
    end
    assert.is_true(m:can_end())
    for i = #text, 1, -1 do
      m:rollback(1)
      assert.are.same(masks[i], m:mask():totable())
    end
    assert.is_true(m:accept_text("(("))
    assert.is_true(m:accept_text("a"))
    m:rollback(2)
    assert.are.equal(0, m:n_accepted())
    assert.has_error(function() m:rollback(1) end, "bad argument #2 to 'rollback' (cannot roll back 1 steps (0 accepted))")
  end)

  it("forced text: the only continuation", function()
    local g = assert(G.gbnf('root ::= "{\\"name\\": " ("\\"" [a-z]+ "\\"" | "null") "}"'))
    local m = g:matcher(VOCAB)
    assert.are.equal('{"name": ', m:forced())
    assert.is_true(m:accept_text('{"name": n'))
    assert.are.equal("ull}", m:forced())
    assert.are.equal("", assert(G.gbnf('root ::= "a"*')):matcher(VOCAB):forced())
  end)

  it("lazy: inactive until a trigger word, then the grammar from the trigger on", function()
    local g = assert(G.gbnf('root ::= "<call>" [0-9]+ "</call>"'))
    local m = g:matcher(VOCAB, { lazy = true, triggers = { "<call>" } })
    assert.is_false(m:is_active())
    assert.is_true(m:can_end())
    local mask = m:mask()
    for i = 1, #TOKS do assert.are.equal(1, mask[i]) end
    assert.is_true(m:accept_text("hello <ca"))
    assert.is_false(m:is_active())
    assert.is_true(m:accept_text("ll>1"))
    assert.is_true(m:is_active())
    assert.is_false(m:can_end())
    assert.is_true(m:accept_text("2</call>"))
    assert.is_true(m:is_done())
    m:rollback(2)
    assert.is_false(m:is_active())
    assert.is_false(m:accept_text("ll>x")) -- the grammar refuses what follows the trigger: unchanged
    assert.is_false(m:is_active())
    -- trigger tokens: the token's own text goes to the grammar
    local toks, vocab = make_vocab { "<call>" }
    local t = m and #toks - 3
    assert.are.equal("<call>", toks[t + 1])
    local m2 = g:matcher(vocab, { lazy = true, trigger_tokens = { t } })
    assert.is_true(m2:accept(0))
    assert.is_false(m2:is_active())
    assert.is_true(m2:accept(t))
    assert.is_true(m2:is_active())
    check_mask(m2, toks)
    assert.has_error(function() g:matcher(VOCAB, { lazy = true }) end,
      "bad argument #3 to 'matcher' (a lazy matcher needs trigger words or trigger tokens)")
    assert.has_error(function() g:matcher(VOCAB, { triggers = { "x" } }) end, "bad argument #3 to 'matcher' (triggers need lazy = true)")
    assert.has_error(function() g:matcher(VOCAB, { lazzy = true }) end, "bad argument #3 to 'matcher' (unknown option 'lazzy')")
  end)

  it("handles reach other Lua states and threads", function()
    local g = assert(G.gbnf('root ::= "x" [0-9]'))
    local h = g.handle
    assert.is_true(math.type == nil or math.type(h) == "integer")
    local g2 = assert(G.attach(h))
    assert.is_true(matches(g2, "x7"))
    assert.is_nil((G.attach(987654321)))
    local code = ([[
      local lm = require "moonlm"
      local g = assert(lm.grammar.attach(%d))
      local toks = {}
      for b = 0, 255 do toks[#toks + 1] = string.char(b) end
      local m = g:matcher(lm.grammar.vocab(toks))
      return tostring(m:accept_text("x5") and m:can_end()) .. " " .. tostring(m:accept_text("5"))
    ]]):format(h)
    assert.are.equal("true false", G._thread(code))
    g, g2 = nil, nil
    collectgarbage()
    collectgarbage()
    assert.is_nil((G.attach(h)))
  end)
end)

describe("grammar: llama.cpp's grammars", function()
  local dir = (os.getenv("MOONLM_LLAMA_CPP") or "/work/peers/llama.cpp") .. "/grammars"
  local files = {}
  local p = io.popen('ls "' .. dir .. '"/*.gbnf 2>/dev/null')
  for f in p:lines() do files[#files + 1] = f end
  p:close()
  if #files == 0 then
    it("(skipped: no llama.cpp checkout at " .. dir .. "; set MOONLM_LLAMA_CPP)", function() end)
    print("grammar_spec: skipping llama.cpp's grammars: none under " .. dir .. " (set MOONLM_LLAMA_CPP)")
    return
  end

  -- checked with llama.cpp's own llama-gbnf-validator
  local cases = {
    arithmetic = {
      yes = { "1+2= 3\n", "x*(y +2)= z\n", "a= b\n1=2\n", "(a)= 1\n", "1=2\n\n" },
      no = { "1+2=3", "+1=2\n", "x*(y + 2)= z\n", "A= 1\n", "1= 2\n3" },
    },
    c = {
      yes = { "int main(){return 0;}", "int f(int y){y = y+1;return y;}", "float f(){while(i<10){i = i+1;}}",
              "char c(){// hi\nreturn 1;}", "int a(){/* x * y */}int b(){}" },
      no = { "int main() {return 0;}", "int main(){return 0}", "intmain(){}", "int main(){/* x */" },
    },
    chess = {
      yes = { "1. e4 e5\n2. Nf3 Nc6\n", "1. O-O-O Qxd8#\n2. a8=Q+ Kb7\n12. exd5 Rxe1\n" },
      no = { "1. e4 e5\n", "1. e9 e5\n2. Nf3 Nc6\n", "2. e4 e5\n3. d4 d5\n", "1. e4 e5\n0. d4 d5\n" },
    },
    english = { yes = { "Hello, world!", "a b\tc\nd", "[x]{y}|z~" }, no = { "Hello  world", " hi", "h\195\169llo", "" } },
    japanese = { yes = { "こんにちは 世界", "カタカナ、ひらがな" }, no = { "hello", "こんにちは  世界", "" } },
    json = {
      yes = { '{"a": [1, 2.5e3, true, null, {"b": "x\\u00e9"}]}', '{}', '{"a": 1e19}', '{"s": "caf\195\169 \226\130\172"}',
              '{\n  "a": -0.5}' },
      no = { '{"a": 01}', '{"a":1,}', '[1]', '{"a": "\1"}', '{"a": 1e10}', '{"a": tru}', '{"a": "x\\q"}' },
    },
    json_arr = { yes = { '[\n{"a": 1},\n2]', '[\n]', '[\n"x",\n1e10]' }, no = { '[1]', '[\n1,2]', '[\n1]\n' } },
    list = { yes = { "- apple\n- pear\n", "- x y z\n" }, no = { "- \n", "- a\226\128\168b\n", "- a", "-a\n" } },
  }

  for _, f in ipairs(files) do
    local name = f:match("([^/]+)%.gbnf$")
    it("compiles and matches as llama.cpp does: " .. name, function()
      local g = assert(G.gbnf(S.read_file(f)))
      local c = cases[name]
      if c then
        check_cases(g, c, name)
        check_prefix_masks(g, { c.yes[1] })
      end
    end)
  end

  it("json.gbnf with the Llama 3 vocabulary: every position's mask against the reference", function()
    local model = assert(lm.load(S.path("tokenizer/ggml-vocab-llama-bpe.gguf"), { vocab_only = true }))
    local g = assert(G.gbnf(S.read_file(dir .. "/json.gbnf")))
    local m = g:matcher(model)
    local text = '{"id": 12, "tags": ["x", "y z"], "ok": true}'
    local ids = model:tokenize(text, { bos = false })
    local pieces = {}
    for i = 0, model.n_vocab - 1 do pieces[i] = model:piece(i) end
    for k, id in ipairs(ids) do
      if k == 1 or k == 5 or k == #ids then
        local mask = m:mask()
        for tok = 0, model.n_vocab - 1 do
          local want = m:allows(tok)
          if (mask[tok + 1] == 1) ~= want then error(("position %d, token %d %q: mask %d"):format(k, tok, pieces[tok], mask[tok + 1])) end
        end
      end
      assert.is_true(m:accept(id))
    end
    assert.is_true(m:can_end())
    local mask = m:mask()
    for _, eog in ipairs { 128001, 128009 } do assert.are.equal(1, mask[eog + 1]) end -- <|end_of_text|>, <|eot_id|>
    assert.are.equal(0, mask[128000 + 1]) -- <|begin_of_text|> is never text
  end)
end)
