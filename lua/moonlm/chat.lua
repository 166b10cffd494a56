-- Chat sessions: a conversation rendered with the model's own chat template, kept in a
-- context so that each turn only prefills the tokens that are new since the last one.
--
--   local chat = model:chat { system = "You are a helpful assistant." }
--   local reply, info = chat:say("What is Lua?")     -- info.prompt_tokens: prefilled now
--   for piece in chat:stream("And LuaJIT?") do io.write(piece) end
--   chat:save("chat.bin")  ...  chat = moonlm.chat_load(model, "chat.bin")
--
-- Options of model:chat (defaults in brackets), besides generation and sampler options
-- used as defaults for every turn:
--   system         the system prompt (kept when old turns are dropped)
--   template       a built-in name (chatml, llama2, llama3, mistral, phi3, gemma, zephyr) or
--                  Jinja source [the model's tokenizer.chat_template, else chatml]
--   n_ctx          context size [min(n_ctx_train, 4096)]; context, seq: run in a given one
--   max_tokens     per reply [512]
--   tools          the functions the model may call, OpenAI's list (a Lua array or JSON text):
--                  { { type = "function", ["function"] = { name = ..., description = ...,
--                  parameters = <JSON Schema> } } }; also per turn
--   tool_choice    "auto" [default with tools]: the reply is text or tool calls (once the
--                  format's marker appears, a grammar built from the tools' schemas keeps the
--                  calls well-formed); "required": tool calls only; {type = "function",
--                  function = {name = ...}}: a call of that function; "none": text only
--                  (the tools are still shown to the model)
--   parallel_tool_calls [true] false: at most one call per reply
--   tool_format    the tool-call markup to parse (see moonlm.tools) [detected from the
--                  template and the vocabulary]
--   reasoning      [true] take <think>...</think> out of the reply into info.reasoning_content
--                  (models that reason first: DeepSeek R1, Qwen 3, ...); false keeps it in
--   stream_reasoning [false] stream() also yields the reasoning, as (piece, info, "reasoning")
--   vars           extra template variables (e.g. { enable_thinking = false } for Qwen 3)
--   context_shift  [false] when old turns are dropped, the turns that stay are shifted down
--                  in the cache (their keys rotated by RoPE) instead of being prefilled
--                  again, and a reply that reaches the end of the context goes on past it
--                  (generate's context_shift, keeping the system prompt)
-- When the conversation outgrows the context, the oldest turns (never the system prompt)
-- are dropped and the reply's info says truncated = true (and shifted = the tokens shifted
-- out, with context_shift).
-- Leaving `for piece in chat:stream(...)` early (break) keeps the reply so far in the
-- history, as on_token returning false does (stop_reason "abort"): at once in Lua 5.4 (the
-- loop closes the iterator's fourth value), at the chat's next call under LuaJIT.
-- chat:save(path) writes every option that is plain data (stop, tools, vars, logit_bias
-- ...); it refuses one it cannot write (on_token, steps, a grammar) by name, unless
-- save(path, { drop = { names } }) leaves it out; chat_load(model, path, opts) takes it again.
--
-- Tool calls:
--   local reply, info = chat:say("Weather in Paris?", { tools = my_tools })
--   for _, call in ipairs(info.tool_calls or {}) do     -- OpenAI-shaped: call.id,
--     local args = json.decode(call["function"].arguments)  -- call["function"].name
--     chat:tool_result(call.id, run(call["function"].name, args))
--   end
--   reply, info = chat:say()   -- no new user text: the model answers from the results
-- info.reasoning_content holds the reasoning of models that think first. The chat template
-- renders the tools; what it cannot render (many templates know no tools) is written in
-- the model's own format by moonlm.tools.
local template = require "moonlm.template"
local generate = require "moonlm.generate"
local json = require "moonlm.json"
local tools = require "moonlm.tools"
local core = require "moonlm.core"
local options = require "moonlm.options"

local function lm_grammar() return require("moonlm").grammar end

local type, error, ipairs, pairs, setmetatable = type, error, ipairs, pairs, setmetatable

local _M = {}
local Chat = {}
Chat.__index = Chat

local function token_text(model, id)
  if not id then return "" end
  local text = model:token(id)
  return text or ""
end

-- The Jinja source for a model and an optional template option.
local function template_source(model, opt)
  if opt ~= nil then
    if type(opt) ~= "string" then error("bad option 'template' (string expected)", 4) end
    if opt:find("{[%%{]") then return opt end
    local src = template.builtin(opt)
    if not src then error(("bad option 'template' (no built-in template '%s')"):format(opt), 4) end
    return src
  end
  local src = model.meta["tokenizer.chat_template"]
  if type(src) == "string" and src ~= "" then return src end
  return template.builtin("chatml")
end

local function has_token(model)
  return function(text) return model:find_token(text) ~= nil end
end

-- The tool-call format of a model and template (option tool_format overrides detection).
local function tool_format(model, src, opts)
  local f
  if opts.tool_format ~= nil then
    local err
    f, err = tools.format(opts.tool_format)
    if not f then error("bad option 'tool_format' (" .. err .. ")", 4) end
    local d = tools.detect(src, has_token(model), model.meta)
    if f.think == nil then f.think = d.think end
  else
    f = tools.detect(src, has_token(model), model.meta)
  end
  if opts.reasoning == false then f.think = false end
  return f
end

local function base_vars(model)
  local v = model.vocab or {} -- a weights-only model renders with empty bos/eos texts
  return {
    bos_token = token_text(model, v.bos),
    eos_token = token_text(model, v.eos),
    tools = json.null,
    documents = json.null,
  }
end

local function has_tool_turns(messages)
  for _, m in ipairs(messages) do
    if m.role == "tool" or (m.role == "assistant" and type(m.tool_calls) == "table" and #m.tool_calls > 0) then
      return true
    end
  end
  return false
end

-- model:apply_template(messages, { add_generation_prompt = true, template = ..., tools = ...,
-- vars = {...} }) -> text | nil, err. Messages may hold tool calls and tool results (OpenAI
-- shape); what the template cannot render is written in the model's format (moonlm.tools).
function _M.apply_template(model, messages, opts)
  opts = options.check("apply_template", opts, 2) or {}
  local src = template_source(model, opts.template)
  local tmpl, err = template.compile(src)
  if not tmpl then return nil, err end
  local vars = base_vars(model)
  vars.add_generation_prompt = opts.add_generation_prompt ~= false
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  local list, terr = tools.check(opts.tools)
  if terr then return nil, terr end
  if list or has_tool_turns(messages) then
    local caps = tools.caps(tmpl, vars)
    messages, vars.tools = tools.prepare(messages, list, caps, tool_format(model, src, opts))
  end
  vars.messages = messages
  return tmpl:render(vars)
end

function _M.new(model, opts)
  opts = options.check("chat", opts, 1) or {}
  if model.vocab == false then error("bad argument #1 to 'chat' (this model has no tokenizer)", 3) end
  local src = template_source(model, opts.template)
  local tmpl, err = template.compile(src)
  if not tmpl then error("chat template: " .. err, 3) end
  local self = setmetatable({ model = model, opts = opts, tmpl = tmpl, history = {}, tokens = {} }, Chat)
  self.system = opts.system
  self.fmt = tool_format(model, src, opts)
  self.rng = core.rng(opts.seed and math.floor(opts.seed) + 7919 or os.time())
  if opts.context then
    self.ctx, self.own_ctx = opts.context, false
  else
    local n_ctx = opts.n_ctx or math.min(model.n_ctx_train or 4096, 4096)
    local ctx, cerr = model:context { n_ctx = n_ctx, kv_type = opts.kv_type }
    if not ctx then error(cerr, 3) end
    self.ctx, self.own_ctx = ctx, true
  end
  self.seq = opts.seq or 0
  self.ctx:clear(self.seq)
  self.bos_text = token_text(model, model.vocab.bos)
  return self
end

function Chat:messages(extra)
  self:settle()
  local msgs = {}
  if self.system then msgs[1] = { role = "system", content = self.system } end
  for _, m in ipairs(self.history) do msgs[#msgs + 1] = m end
  if extra then msgs[#msgs + 1] = extra end
  return msgs
end

-- The prompt text for the next reply: the conversation, the new user turn (extra) and the
-- tools of this turn (list).
function Chat:render(extra, list, opts)
  local vars = base_vars(self.model)
  for k, v in pairs(opts and opts.vars or self.opts.vars or {}) do vars[k] = v end
  vars.add_generation_prompt = true
  vars.bos_token = self.bos_text
  local msgs = self:messages(extra)
  if list or has_tool_turns(msgs) then
    msgs, vars.tools = tools.prepare(msgs, list, tools.caps(self.tmpl, vars), self.fmt)
  end
  vars.messages = msgs
  local text, err = self.tmpl:render(vars)
  if not text then error("chat template: " .. err, 4) end
  return text
end

function Chat:tokenize(text)
  local v = self.model.vocab
  -- templates that write the BOS text themselves get it as a special token; others get
  -- the model's default BOS in front
  local bos = v.add_bos and self.bos_text ~= "" and text:sub(1, #self.bos_text) ~= self.bos_text
  return self.model:tokenize(text, { bos = bos and true or false, special = true })
end

-- Prepare the prompt for a user turn (text nil: a reply to tool results): drop old turns
-- while it does not fit, then keep the cached prefix and return the tokens still to prefill.
function Chat:prepare(text, opts, list)
  local user = text and { role = "user", content = text } or nil
  local n_ctx = self.ctx.n_ctx
  -- room kept for the reply: max_tokens, but never more than a quarter of the context
  local max_tokens = math.min(opts.max_tokens or self.opts.max_tokens or 512, math.floor(n_ctx / 4))
  local truncated = false
  local prompt = self:render(user, list, opts)
  local ids = self:tokenize(prompt)
  while #ids + max_tokens > n_ctx do
    -- drop the oldest exchange: a user turn and everything up to the next one (replies,
    -- tool calls and their results); a reply to tool results keeps the exchange it is in
    local n = #self.history > 0 and 1 or nil
    while n and self.history[n + 1] and self.history[n + 1].role ~= "user" do n = n + 1 end
    if not n or (text == nil and n >= #self.history) then break end
    for _ = 1, n do table.remove(self.history, 1) end
    truncated = true
    prompt = self:render(user, list, opts)
    ids = self:tokenize(prompt)
  end
  if #ids >= n_ctx then return nil, ("the message does not fit in the context (%d tokens, n_ctx = %d)"):format(#ids, n_ctx) end
  -- keep the longest prefix already in the cache (at least one token is decoded again,
  -- so there are logits to sample from)
  local keep = 0
  local cached = self.tokens
  while keep < #cached and keep < #ids - 1 and cached[keep + 1] == ids[keep + 1] do keep = keep + 1 end
  local shifted = 0
  if truncated and opts.context_shift then
    -- old turns went: the cache still holds the turns that stay, after the dropped ones.
    -- Shift them down over the gap (their keys rotated) instead of prefilling them again.
    shifted, keep = self:reuse_after_gap(cached, ids, keep)
  end
  -- (fewer when a sliding-window cache cannot resume there: then it says how many)
  keep = self.ctx:truncate(self.seq, keep)
  local rest = {}
  for i = keep + 1, #ids do rest[#rest + 1] = ids[i] end
  self.pending_user = user
  self.prompt_ids = ids
  self.prompt_text = prompt
  return rest, truncated, keep, shifted
end

-- The cache holds cached; the new prompt ids share its first `keep` tokens, then go on with
-- what the cache holds from some later j (turns dropped in between). Finds the first j
-- whose run matches up to the end of the cache, shifts the cache over the gap, and returns
-- the gap and how many tokens of the prompt the cache now holds.
function Chat:reuse_after_gap(cached, ids, keep)
  local first = ids[keep + 1]
  for j = keep + 2, #cached do
    local len = #cached - j + 1
    if cached[j] == first and keep + len < #ids then
      local same = true
      for t = 1, len - 1 do
        if cached[j + t] ~= ids[keep + 1 + t] then same = false break end
      end
      if same then
        if self.ctx:truncate(self.seq, #cached) == #cached and self.ctx:shift(self.seq, keep, j - keep - 1) then
          return j - keep - 1, keep + len
        end
        return 0, keep
      end
    end
  end
  return 0, keep
end

-- Tokens of the rendered system prompt (what a context shift keeps): the prefix the
-- conversation shares with the system message rendered alone.
function Chat:system_tokens()
  if not self.system then return 0 end
  if not self.n_system then
    local vars = base_vars(self.model)
    vars.bos_token, vars.add_generation_prompt = self.bos_text, false
    vars.messages = { { role = "system", content = self.system } }
    local text = self.tmpl:render(vars)
    local sys, all, n = text and self:tokenize(text) or {}, self.prompt_ids or {}, 0
    while n < #sys and n < #all and sys[n + 1] == all[n + 1] do n = n + 1 end
    self.n_system = n
  end
  return self.n_system
end

local function merged(defaults, opts)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

-- Every tool call of the conversation must have its result before the model goes on.
function Chat:check_results(what)
  local open, order = {}, {}
  for _, m in ipairs(self.history) do
    if m.role == "assistant" and m.tool_calls then
      for _, c in ipairs(m.tool_calls) do
        open[c.id] = c["function"].name
        order[#order + 1] = c.id
      end
    elseif m.role == "tool" then
      open[m.tool_call_id] = nil
    end
  end
  for _, id in ipairs(order) do
    if open[id] then
      error(("bad argument #1 to '%s' (tool call '%s' (%s) has no result yet: chat:tool_result(id, content))")
        :format(what, id, open[id]), 4)
    end
  end
end

-- tool_choice -> "auto" | "none" | "required" | the name of the one function to call
local function check_choice(choice, list)
  if choice == nil or choice == "auto" or choice == "none" then return choice or "auto" end
  if choice == "required" or type(choice) == "table" then
    if not list then error("bad option 'tool_choice' (no tools given)", 4) end
    if choice == "required" then return choice end
    local f = choice["function"]
    if choice.type ~= "function" or type(f) ~= "table" or type(f.name) ~= "string" then
      error("bad option 'tool_choice' ({type = \"function\", function = {name = ...}} expected)", 4)
    end
    for _, t in ipairs(list) do
      if t["function"].name == f.name then return f.name end
    end
    error(("bad option 'tool_choice' (no tool named '%s')"):format(f.name), 4)
  end
  error(("bad option 'tool_choice' (\"auto\", \"none\", \"required\" or {type = \"function\", ...} expected, got %s)")
    :format(type(choice) == "string" and ("%q"):format(choice) or type(choice)), 4)
end

-- The matcher that keeps a reply to the tool-call format: lazy for "auto" (it wakes up at
-- the format's marker), from the start otherwise. Grammars are compiled once per chat and
-- tools/choice. Returns the matcher, or nil, err when the tools' schemas cannot be
-- compiled.
function Chat:tool_matcher(list, choice, parallel, open_think)
  local key = table.concat({ json.encode(list) or "", choice, tostring(parallel), tostring(open_think) }, "\0")
  self.tool_grammars = self.tool_grammars or {}
  local entry = self.tool_grammars[key]
  if not entry then
    local text, lazy = tools.grammar(self.fmt, list, { choice = choice, parallel = parallel, open_think = open_think })
    local g, err
    if text then
      g, err = lm_grammar().gbnf(text)
    else
      err = lazy
    end
    entry = { g = g, err = err, lazy = lazy }
    self.tool_grammars[key] = entry
  end
  if not entry.g then return nil, entry.err end
  local mopts
  if entry.lazy then
    mopts = { lazy = true, triggers = entry.lazy.triggers, trigger_tokens = {} }
    for _, w in ipairs(entry.lazy.triggers) do
      local id = self.model:find_token(w)
      if id then mopts.trigger_tokens[#mopts.trigger_tokens + 1] = id end
    end
  end
  return entry.g:matcher(self.model, mopts)
end

-- Options of the chat, not of generate.
local CHAT_ONLY = { "system", "template", "n_ctx", "kv_type", "tools", "tool_choice", "tool_format", "reasoning",
                    "stream_reasoning", "vars", "parallel_tool_calls" }

-- The generation for one turn (a generate.lua state machine), and the parser of its reply
-- (nil when there is nothing to take out of the text).
function Chat:turn(text, opts, what)
  self:check_results(what)
  if text == nil then
    local last = self.history[#self.history]
    if not (last and last.role == "tool") then
      error(("bad argument #1 to '%s' (string expected, got nil; only a reply to tool results needs no text)"):format(what), 3)
    end
  elseif type(text) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(what, type(text)), 3)
  end
  options.check("say", opts, 2, 3, what)
  opts = merged(self.opts, opts)
  local list, terr = tools.check(opts.tools)
  if terr then error("bad option 'tools' (" .. terr .. ")", 3) end
  local choice = check_choice(opts.tool_choice, list)
  local rest, truncated, kept, shifted = self:prepare(text, opts, list)
  if not rest then return nil, truncated end
  if opts.context_shift and opts.n_keep == nil then opts.n_keep = self:system_tokens() end
  local parse_tools = list ~= nil and choice ~= "none"
  local open_think = tools.open_think(self.prompt_text, self.fmt)
  local grammar_error
  if parse_tools then
    if opts.grammar ~= nil or opts.json_schema ~= nil then
      error("bad option 'grammar' (a reply with tools follows the tool-call grammar; use tool_choice = \"none\" for your own)", 3)
    end
    local m, err = self:tool_matcher(list, choice, opts.parallel_tool_calls ~= false, open_think)
    if not m and choice ~= "auto" then error("bad option 'tools' (" .. err .. ")", 3) end
    opts.grammar, grammar_error = m, err -- "auto" without a grammar: the reply is parsed all the same
  end
  local parser
  if parse_tools or self.fmt.think then
    parser = tools.parser(self.fmt, { tools = list, tools_off = not parse_tools, open_think = open_think })
    local keep = {}
    for _, t in ipairs(tools.preserved(self.fmt)) do keep[#keep + 1] = self.model:find_token(t) end
    opts.preserved_tokens = keep
  end
  local stream_reasoning = opts.stream_reasoning
  for _, k in ipairs(CHAT_ONLY) do opts[k] = nil end
  opts.context, opts.seq, opts.keep = self.ctx, self.seq, true
  opts.max_tokens = opts.max_tokens or 512
  local g = generate.start(self.model, rest, opts, nil, what, 6) -- ids errors blame say/stream's caller
  g.info.prompt_tokens = #rest
  g.info.cached_tokens = kept
  g.info.truncated = truncated
  if shifted > 0 then g.info.shifted = shifted end
  g.parser, g.stream_reasoning = parser, stream_reasoning
  g.info.tool_grammar_error = grammar_error
  return g
end

-- The reply as a message, once generation is over; info gets tool_calls, reasoning_content.
function Chat:reply(g, text)
  local msg = { role = "assistant", content = text }
  if g.parser then
    local _, _, m, err = g.parser:finish()
    msg.content, msg.reasoning_content = m.content, m.reasoning_content
    if m.tool_calls then
      msg.tool_calls = tools.assign_ids(m.tool_calls, self.fmt, self.rng)
      g.info.tool_calls = msg.tool_calls
    end
    g.info.reasoning_content = m.reasoning_content
    g.info.tool_parse_error = err
  end
  return msg
end

-- After a turn: record the reply and what the cache now holds.
function Chat:commit(g, msg)
  if self.pending_user then self.history[#self.history + 1] = self.pending_user end
  self.history[#self.history + 1] = msg
  local toks = {}
  for i, id in ipairs(self.prompt_ids) do toks[i] = id end
  local n = self.ctx:pos(self.seq)
  for _, id in ipairs(g.info.ids) do
    if #toks >= n then break end
    toks[#toks + 1] = id
  end
  self.tokens = toks
end

-- say(text, opts) -> reply, info | nil, err. text nil: the reply to the tool results just
-- added. info.tool_calls: the calls the model made (OpenAI shape, with ids), if any;
-- info.reasoning_content: its reasoning, if it gave any.
function Chat:say(text, opts)
  self:settle()
  local g, err = self:turn(text, opts, "say")
  if not g then return nil, err end
  local parts = {}
  while true do
    local piece = g:next()
    if not piece then break end
    parts[#parts + 1] = piece
    if g.parser then g.parser:push(piece) end
  end
  if g.failed then return nil, g.failed, g.info end
  local msg = self:reply(g, table.concat(parts))
  self:commit(g, msg)
  return msg.content, g.info
end

-- stream(text, opts) -> iterator of pieces (piece, info, kind); the turn is recorded at the
-- end. Pieces are the reply's text; tool-call markup and reasoning are held back (kind
-- "reasoning" pieces come too with stream_reasoning = true). When the iterator ends,
-- info.tool_calls and info.reasoning_content are set as with say().
function Chat:stream(text, opts)
  self:settle()
  local g, err = self:turn(text, opts, "stream")
  if not g then error(err, 2) end
  local parts, queue = {}, {}
  self.open = { g = g, parts = parts } -- settled by the next call if the loop breaks early
  local function enqueue(content, reasoning)
    if reasoning ~= "" and g.stream_reasoning then queue[#queue + 1] = { reasoning, "reasoning" } end
    if content ~= "" then queue[#queue + 1] = { content, "content" } end
  end
  -- Lua 5.4 closes the fourth value when the loop ends, break included: the turn is kept
  -- at once (elsewhere at the chat's next call)
  local closer = setmetatable({}, { __close = function() self:settle() end })
  return function()
    while true do
      local q = table.remove(queue, 1)
      if q then return q[1], g.info, q[2] end
      if g.committed then return nil end
      local piece = g:next()
      if piece then
        parts[#parts + 1] = piece
        if g.parser then
          enqueue(g.parser:push(piece))
        else
          return piece, g.info, "content"
        end
      else
        if g.failed then
          g.committed, self.open = true, nil
          error(g.failed, 2)
        end
        if g.parser then enqueue(g.parser:finish()) end
        g.committed, self.open = true, nil
        self:commit(g, self:reply(g, table.concat(parts)))
      end
    end
  end, nil, nil, closer
end

-- settle(): a stream left before its end (break out of the for loop) keeps its turn: the
-- reply so far goes into the history, as when on_token returns false. Called by every
-- method that reads or extends the history.
function Chat:settle()
  local o = self.open
  if not o then return end
  self.open = nil
  local g = o.g
  if g.committed then return end
  g.committed = true
  if g.failed then return end
  if not g.done then
    g.done = true
    g.info.stop_reason = "abort"
    g:finish("abort")
  end
  self:commit(g, self:reply(g, table.concat(o.parts)))
end

-- tool_result(id, content): the result of the tool call `id` of the last reply, as the
-- next turn of the conversation. content: text, or a table sent as JSON.
function Chat:tool_result(id, content)
  self:settle()
  if type(id) ~= "string" then error("bad argument #1 to 'tool_result' (tool call id expected, got " .. type(id) .. ")", 2) end
  if type(content) == "table" then
    local text, err = json.encode(content)
    if not text then error("bad argument #2 to 'tool_result' (" .. err .. ")", 2) end
    content = text
  elseif type(content) ~= "string" then
    error("bad argument #2 to 'tool_result' (string or table expected, got " .. type(content) .. ")", 2)
  end
  -- the call must be one of the latest assistant turn's, not answered yet
  local call
  for i = #self.history, 1, -1 do
    local m = self.history[i]
    if m.role == "tool" and m.tool_call_id == id then
      error(("bad argument #1 to 'tool_result' (tool call '%s' already has a result)"):format(id), 2)
    end
    if m.role == "assistant" then
      for _, c in ipairs(m.tool_calls or {}) do
        if c.id == id then call = c end
      end
      break
    end
  end
  if not call then error(("bad argument #1 to 'tool_result' (no tool call '%s' in the last reply)"):format(id), 2) end
  self.history[#self.history + 1] = { role = "tool", tool_call_id = id, name = call["function"].name, content = content }
end

function Chat:reset(system)
  if self.open then self.open.g.committed, self.open = true, nil end
  if system ~= nil then self.system = system end
  self.history, self.tokens = {}, {}
  self.ctx:clear(self.seq)
end

function Chat:close()
  if self.own_ctx and self.ctx then self.ctx:close() end
  self.ctx = nil
end

-- File: a magic line, a JSON header line, then the cache of the sequence.
local MAGIC = "moonlm-chat 1\n"

local function identity(model)
  return { arch = model.arch, n_params = model.n_params, n_vocab = model.n_vocab, n_layer = model.n_layer,
           n_embd = model.n_embd, name = model.meta["general.name"] }
end

-- Options are saved as JSON: plain values and tables of them (stop, tools, vars,
-- logit_bias ...). Where the chat runs (context, seq) is not saved: chat_load makes a
-- context unless given one. Functions and objects (on_token, steps, grammar, sampler,
-- draft) cannot be written: save refuses them by name unless opts.drop lists them.
local PLACE = { context = true, seq = true, system = true }

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- save(path [, { drop = { names } }]) -> true | nil, err
function Chat:save(path, sopts)
  self:settle()
  local drop = {}
  for _, k in ipairs(sopts and sopts.drop or {}) do drop[k] = true end
  local options, codecs = {}, {}
  local names = {}
  for k in pairs(self.opts) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = self.opts[k]
    local t = type(v)
    if PLACE[k] or drop[k] then -- not saved
    elseif t == "number" or t == "string" or t == "boolean" then
      options[k] = v
    else
      local ok = false
      if t == "table" then
        if k == "logit_bias" then -- { [id] = bias }: JSON keys are strings, so as pairs
          local pairs_ = {}
          for id, b in pairs(v) do
            pairs_[#pairs_ + 1] = { id, b == -math.huge and "-inf" or b == math.huge and "inf" or b }
          end
          table.sort(pairs_, function(x, y) return x[1] < y[1] end)
          v, codecs[k] = pairs_, "id_map"
        end
        local text = json.encode(v)
        ok = text ~= nil and same(json.decode(text), v)
      end
      if not ok then
        return nil, ("chat:save cannot keep option '%s' (a %s); chat:save(path, { drop = { \"%s\" } }) saves without it and lm.chat_load(model, path, { %s = ... }) gives it back")
          :format(k, t == "table" and "table that is not plain JSON" or t, k, k)
      end
      options[k] = v
    end
  end
  local state = self.ctx:state_save(self.seq)
  local header = json.encode({ model = identity(self.model), system = self.system or json.null, options = options,
                               codecs = next(codecs) and codecs or nil,
                               history = self.history, tokens = self.tokens, kv_type = self.ctx.kv_type,
                               n_ctx = self.ctx.n_ctx, state_bytes = #state }, { compact = true })
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(MAGIC, header, "\n", state)
  f:close()
  if not ok then return nil, werr end
  return true
end

-- chat_load(model, path, opts) -> chat | nil, err
function _M.load(model, path, opts)
  options.check("chat", opts, 3, 2, "chat_load")
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("*a")
  f:close()
  if data:sub(1, #MAGIC) ~= MAGIC then return nil, path .. ": not a moonlm chat file" end
  local nl = data:find("\n", #MAGIC + 1, true)
  if not nl then return nil, path .. ": damaged chat file (no header)" end
  local header, jerr = json.decode(data:sub(#MAGIC + 1, nl - 1))
  if type(header) ~= "table" or type(header.model) ~= "table" then
    return nil, path .. ": damaged chat file (" .. tostring(jerr or "bad header") .. ")"
  end
  local want, have = identity(model), header.model
  for _, k in ipairs { "arch", "n_params", "n_vocab", "n_layer", "n_embd", "name" } do
    if want[k] ~= have[k] and not (want[k] == nil and have[k] == json.null) then
      return nil, ("%s: saved with another model (%s: %s, this model has %s)"):format(path, k, tostring(have[k]), tostring(want[k]))
    end
  end
  local state = data:sub(nl + 1)
  if #state ~= header.state_bytes then return nil, path .. ": damaged chat file (cache truncated)" end
  local o = {}
  if type(header.options) == "table" then
    for k, v in pairs(header.options) do o[k] = v end
  end
  for k, codec in pairs(type(header.codecs) == "table" and header.codecs or {}) do
    if codec == "id_map" and type(o[k]) == "table" then
      local m = {}
      for _, p in ipairs(o[k]) do m[p[1]] = p[2] == "-inf" and -math.huge or p[2] == "inf" and math.huge or p[2] end
      o[k] = m
    end
  end
  for k, v in pairs(opts or {}) do o[k] = v end
  o.system = header.system ~= json.null and header.system or nil
  o.n_ctx = o.n_ctx or header.n_ctx
  o.kv_type = o.kv_type or header.kv_type
  local chat = _M.new(model, o)
  local ok, lerr = chat.ctx:state_load(chat.seq, state)
  if not ok then
    chat:close()
    return nil, path .. ": " .. lerr
  end
  chat.history = header.history or {}
  chat.tokens = header.tokens or {}
  return chat
end

return _M
