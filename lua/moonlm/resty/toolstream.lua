-- moonlm.resty.toolstream: a reply's tool calls streamed as OpenAI's deltas while they are
-- generated: a call's first delta (index, id, type, function.name) as soon as its name and
-- the start of its arguments are known, then function.arguments in pieces as the model
-- writes them. Pure Lua (no ngx): the server's chat handler uses one per choice.
--
--   local ts = toolstream.new(fmt, { tools = list, open_think = ... }, rng)
--   content, reasoning, deltas = ts:push(piece)      -- deltas: a list of tool_call deltas
--   content, reasoning, deltas, msg, calls = ts:finish()
--
-- Text and reasoning come from moonlm.tools' streaming parser as before; once the reply
-- reaches its tool-call region, the region's text goes through an incremental JSON scanner
-- that knows where the format puts its calls: JSON call objects ({"name": ..., "arguments":
-- {...}}, alone or in a list, with the format's markers between them) for hermes, llama3,
-- mistral, granite, command_r and generic), and a name in the format's markup followed by
-- the arguments object for DeepSeek R1, Functionary and Mistral's name[ARGS]{...}. Other
-- call markup (GLM's key/value pairs, Llama's and Functionary's python code) is sent whole
-- at the end, as are calls after anything the scanner does not follow.
--
-- The streamed arguments are the model's JSON written compactly (no whitespace outside
-- strings, strings and numbers as moonlm.json writes them), so their concatenation is the
-- `arguments` text of the reply without streaming (tools.parse re-encodes the same way).
-- finish() reconciles with the whole reply parsed by tools.parse, which decides: calls the
-- scanner did not stream are sent whole, the rest of each streamed call's arguments is
-- sent, ids are the streamed ones. A reply whose markup turns out broken (cut by
-- max_tokens, or not a call after all) keeps the deltas already sent and ends with its
-- text as content, the reply's text without streaming.
local json = require "moonlm.json"
local tools = require "moonlm.tools"

local byte, sub, find = string.byte, string.sub, string.find
local concat = table.concat
local type, ipairs = type, ipairs

local _M = {}

-- Where each format writes its calls: the literals allowed between JSON values, the keys
-- of a call object, the keys whose value holds calls (generic), names that are no call.
local function trim(x) return (x:gsub("^%s+", ""):gsub("%s+$", "")) end

-- the text before a call's arguments, for the formats that write the name outside JSON:
-- head(s, pos, last literal) -> "wait" | "stop" | the position of the arguments object and
-- the call { name, id }
local LONG = 200 -- a name this long without its end is not one

local DS_CALL, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"

local function deepseek_head(s, pos)
  local have = sub(s, pos, pos + #DS_CALL - 1)
  if have ~= DS_CALL then
    if #have < #DS_CALL and sub(DS_CALL, 1, #have) == have then return "wait" end
    return "stop"
  end
  local sp = find(s, DS_SEP, pos + #DS_CALL, true)
  if not sp then return #s - pos > LONG and "stop" or "wait" end
  local nl = find(s, "\n", sp, true)
  if not nl then return #s - sp > LONG and "stop" or "wait" end
  local b = find(s, "[^ \t\r\n]", nl + 1)
  if not b then return "wait" end
  if sub(s, b, b + 2) == "```" then -- the fence's line, then the arguments
    local e = find(s, "\n", b, true)
    if not e then return "wait" end
    b = e + 1
  elseif #s - b < 2 and sub("```", 1, #s - b + 1) == sub(s, b) then
    return "wait"
  end
  return b, { name = trim(sub(s, sp + #DS_SEP, nl - 1)) }
end

local function functionary_head(s, pos)
  local have = sub(s, pos, pos + 2)
  if have ~= ">>>" then
    if #have < 3 and sub(">>>", 1, #have) == have then return "wait" end
    return "stop"
  end
  local nl = find(s, "\n", pos + 3, true)
  if not nl then return #s - pos > LONG and "stop" or "wait" end
  local name = trim(sub(s, pos + 3, nl - 1))
  if name == "all" then return "stop" end -- text for the user: the rest comes at the end
  local b = find(s, "[^ \t\r\n]", nl + 1)
  if not b then return "wait" end
  if byte(s, b) ~= 123 then return "stop" end -- python code: whole at the end
  return b, { name = name }
end

-- [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}
local function mistral_head(s, pos, last)
  if last ~= "[TOOL_CALLS]" or byte(s, pos) == 91 then return "stop" end
  local a = find(s, "[ARGS]", pos, true)
  if not a then return #s - pos > LONG and "stop" or "wait" end
  local name, id = sub(s, pos, a - 1), nil
  local ci = find(name, "[CALL_ID]", 1, true)
  if ci then name, id = sub(name, 1, ci - 1), trim(sub(name, ci + #"[CALL_ID]")) end
  return a + #"[ARGS]", { name = trim(name), id = id }
end

-- object / list: whether a call may be a top-level object / an item of a top-level list.
local FORMATS = {
  hermes = { lits = { "<tool_call>", "</tool_call>" }, name = "name", args = { "arguments", "parameters" }, id = "id",
             object = true, list = true },
  llama3 = { lits = { "<|python_tag|>", ";" }, name = "name", args = { "parameters", "arguments" }, object = true },
  mistral = { lits = { "[TOOL_CALLS]" }, name = "name", args = { "arguments", "parameters" }, id = "id", list = true,
              head = mistral_head },
  granite = { lits = { "<|tool_call|>" }, name = "name", args = { "arguments", "parameters" }, id = "id",
              object = true, list = true },
  command_r = { lits = { "<|START_ACTION|>", "<|END_ACTION|>", "Action:", "```json", "```" }, name = "tool_name",
                args = { "parameters" }, id = "tool_call_id", skip = { directly_answer = true, ["directly-answer"] = true },
                object = true, list = true },
  generic = { lits = { "```json", "```" }, name = "name", args = { "arguments", "parameters" }, id = "id",
              nested = { tool_calls = true, tool_call = true }, object = true },
  deepseek_r1 = { lits = { "<｜tool▁calls▁begin｜>", "<｜tool_calls_begin｜>", "<｜tool calls begin｜>",
                           "<｜tool\\_calls\\_begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "```" },
                  head = deepseek_head },
  functionary = { lits = {}, head = functionary_head },
}
_M.formats = FORMATS

local function is_ws(c) return c == 32 or c == 9 or c == 10 or c == 13 end

-- the end of the longest prefix of s[i..] that holds whole UTF-8 characters
local function utf8_whole(s, i, j)
  local k = j
  while k >= i and k > j - 4 do
    local c = byte(s, k)
    if c < 0x80 then return j end
    if c >= 0xC0 then
      local need = c >= 0xF0 and 4 or c >= 0xE0 and 3 or 2
      if j - k + 1 >= need then return j end
      return k - 1
    end
    k = k - 1
  end
  return j
end

local Scan = {}
Scan.__index = Scan

local function new_scan(F)
  return setmetatable({ F = F, s = "", pos = 1, stack = {}, mode = "between", order = {}, stopped = false }, Scan)
end

-- text into the arguments being written (buffered until the call's header is out)
function Scan:out(t)
  local E = self.E
  if E then E.buf[#E.buf + 1] = t end
end

-- a call whose name is known and whose arguments have begun gets its index (its header
-- can go out)
function Scan:header(rec)
  if rec.index or rec.skip or not rec.name then return end
  local order = self.order
  order[#order + 1] = rec
  rec.index = #order
end

-- a value has just ended: the frame above it moves on
function Scan:value_done()
  local st = self.stack
  local f = st[#st]
  if not f then
    self.mode, self.last = "between", nil
    return
  end
  if f.t == "o" then f.st = ",}" else f.st = ",]" end
end

-- begin a value at self.pos (its first byte c); role: what the value is to its call
function Scan:start_value(c, role, named)
  local st, i = self.stack, self.pos
  local parent = st[#st]
  if c == 123 or c == 91 then -- { [
    local f = { t = c == 123 and "o" or "a", st = c == 123 and "k1" or "v1" }
    if role == "args" then
      if c ~= 123 then return "bad" end
      local rec = named or parent.cand
      rec.args_started = true
      self.E, self.E_depth = rec, #st + 1
      self:header(rec)
    elseif role == "name" or role == "id" then
      return "bad"
    elseif not self.E then
      -- a call object: a top-level object, an object in a top-level list, or (generic) in
      -- the value of tool_calls / tool_call of a top-level object
      local F = self.F
      local top = not parent and F.object
      local top_list = parent and parent.t == "a" and #st == 1 and F.list
      local nested_list = parent and parent.t == "a" and parent.nested
      if c == 123 and (top or top_list or nested_list or role == "nested") then
        f.cand = { buf = {}, sent = 0 }
      elseif c == 91 and role == "nested" then
        f.nested = true
      end
    end
    st[#st + 1] = f
    self:out(c == 123 and "{" or "[")
    self.pos = i + 1
    return "ok"
  end
  if c == 34 then -- a string
    self.tok = { k = "str", start = i, from = i + 1, role = role }
    if self.E and role ~= "key" then self:out('"') end
    self.pos = i + 1
    return "ok"
  end
  if role == "name" or role == "args" then return "bad" end
  if c == 45 or (c >= 48 and c <= 57) then
    self.tok = { k = "num", start = i }
    return "ok"
  end
  for _, w in ipairs { "true", "false", "null" } do
    if c == byte(w) then
      self.tok = { k = "lit", start = i, word = w }
      return "ok"
    end
  end
  return "bad"
end

-- continue the token in progress: "ok" (ended), "wait" (needs more text), "bad"
function Scan:token()
  local t, s = self.tok, self.s
  if t.k == "lit" then
    local w = t.word
    if #s - t.start + 1 < #w then
      if sub(s, t.start) ~= sub(w, 1, #s - t.start + 1) then return "bad" end
      return "wait"
    end
    if sub(s, t.start, t.start + #w - 1) ~= w then return "bad" end
    if t.role == "id" then return "bad" end
    self:out(w)
    self.pos, self.tok = t.start + #w, nil
    self:value_done()
    return "ok"
  end
  if t.k == "num" then
    local e = find(s, "[^0-9eE.+-]", t.start)
    if not e then return "wait" end
    local text = sub(s, t.start, e - 1)
    local v = json.decode(text, { exact_floats = true })
    if v == nil or t.role == "id" then return "bad" end
    self:out(assert(json.encode(v)))
    self.pos, self.tok = e, nil
    self:value_done()
    return "ok"
  end
  -- a string: plain runs are written as they come (as moonlm.json writes them: the same
  -- bytes), escapes once whole (a high surrogate once its pair is seen or cannot come)
  local emit = self.E and t.role ~= "key"
  local i = t.from
  while true do
    local j = find(s, '[%z\1-\31"\\]', i)
    if not j then
      if emit then
        local k = utf8_whole(s, i, #s)
        if k >= i then self:out(sub(s, i, k)) end
        t.from = k + 1
      else
        t.from = #s + 1
      end
      return "wait"
    end
    local c = byte(s, j)
    if c < 32 then return "bad" end
    if emit and j > i then self:out(sub(s, i, j - 1)) end
    if c == 34 then -- the end
      local v = json.decode(sub(s, t.start, j))
      if v == nil then return "bad" end
      if emit then self:out('"') end
      self.pos, self.tok = j + 1, nil
      return "ok", v
    end
    -- an escape
    local e = byte(s, j + 1)
    if not e then t.from = j return "wait" end
    local len = 2
    if e == 117 then
      if #s < j + 5 then t.from = j return "wait" end
      local hex = tonumber(sub(s, j + 2, j + 5), 16)
      if not hex or not find(sub(s, j + 2, j + 5), "^%x%x%x%x$") then return "bad" end
      len = 6
      if hex >= 0xD800 and hex <= 0xDBFF then
        -- a high surrogate: wait while what follows may still be its pair's escape
        local rest = sub(s, j + 6, j + 11)
        if #rest < 6 and (rest == "" or rest == "\\" or find(rest, "^\\u%x*$")) then
          t.from = j
          return "wait"
        end
        local lo = sub(s, j + 6, j + 11):match("^\\u(%x%x%x%x)$")
        local lcp = lo and tonumber(lo, 16)
        if lcp and lcp >= 0xDC00 and lcp <= 0xDFFF then len = 12 end
      end
    end
    local dec = json.decode('"' .. sub(s, j, j + len - 1) .. '"')
    if dec == nil then return "bad" end
    if emit then self:out(sub(json.quote(dec), 2, -2)) end
    i = j + len
    t.from = i
  end
end

-- key text known: what its value is to the call
function Scan:key_role(f, key)
  local F, rec = self.F, f.cand
  if rec and not self.E then
    rec.keys = rec.keys or {}
    if rec.keys[key] then return "bad" end
    rec.keys[key] = true
    if key == F.name then return "name" end
    if F.id and key == F.id then return "id" end
    for _, a in ipairs(F.args) do
      if key == a then
        if rec.args_key then return "bad" end -- both argument keys: the parser picks by rank
        rec.args_key = key
        return "args"
      end
    end
    if F.nested and F.nested[key] and #self.stack == 1 then return "nested" end
    return nil
  end
  return nil
end

-- run over the text that came: false when the scanner gave up for this reply
function Scan:run()
  if self.stopped then return end
  local s, F = self.s, self.F
  while true do
    local st = self.stack
    local f = st[#st]
    local status, v
    if self.tok then
      local tk = self.tok
      status, v = self:token()
      if status == "ok" and tk.k == "str" then
        local role = tk.role
        if role == "key" then
          local r = self:key_role(f, v)
          if r == "bad" then status = "bad" else
            f.role, f.st = r, ":"
            if self.E then self:out(json.quote(v) .. ":") end
          end
        else
          if role == "name" then
            local rec = f.cand
            if type(v) ~= "string" or v == "" then status = "bad" else
              rec.name = v
              if F.skip and F.skip[v] then rec.skip = true end
              if rec.args_started then self:header(rec) end
            end
          elseif role == "id" then
            if not f.cand.header_sent then f.cand.id = v end -- after the header: the streamed id stays
          end
          if status ~= "bad" then self:value_done() end
        end
      end
    else
      local c = byte(s, self.pos)
      if not c then return end
      if is_ws(c) then
        self.pos = self.pos + 1
        status = "ok"
      elseif self.named then -- a call's name was written: its arguments object
        local rec = self.named
        self.named = nil
        if c == 123 then
          self.mode = "value"
          status = self:start_value(c, "args", rec)
        else
          status = "end"
        end
      elseif self.mode == "between" then
        status = "bad"
        for _, w in ipairs(F.lits) do
          local have = sub(s, self.pos, self.pos + #w - 1)
          if have == w then
            self.pos, self.last = self.pos + #w, w
            status = "ok"
            break
          elseif #have < #w and sub(w, 1, #have) == have then
            return -- may still be that literal
          end
        end
        if status == "bad" and F.head then
          local at, rec = F.head(s, self.pos, self.last)
          if at == "wait" then return end
          if at ~= "stop" then
            self.pos, self.named, self.last = at, rec, nil
            rec.buf, rec.sent = {}, 0
            status = "ok"
          end
        end
        if status == "bad" and (c == 123 or c == 91) and (F.object or F.list) then
          self.mode = "value"
          status = self:start_value(c, nil)
        end
        if status == "bad" then status = "end" end
      elseif not f then
        status = "bad"
      elseif f.t == "o" then
        if f.st == "k1" or f.st == "k" then
          if c == 125 and f.st == "k1" then status = self:close() elseif c == 34 then
            status = self:start_value(c, "key")
          else
            status = "bad"
          end
        elseif f.st == ":" then
          if c == 58 then self.pos, f.st, status = self.pos + 1, "v", "ok" else status = "bad" end
        elseif f.st == "v" then
          status = self:start_value(c, f.role)
        else -- ",}"
          if c == 44 then
            self:out(",")
            self.pos, f.st, f.role, status = self.pos + 1, "k", nil, "ok"
          elseif c == 125 then
            status = self:close()
          else
            status = "bad"
          end
        end
      else -- an array
        if f.st == "v1" and c == 93 then
          status = self:close()
        elseif f.st == "v1" or f.st == "v" then
          status = self:start_value(c, nil)
        elseif c == 44 then
          self:out(",")
          self.pos, f.st, status = self.pos + 1, "v", "ok"
        elseif c == 93 then
          status = self:close()
        else
          status = "bad"
        end
      end
    end
    if status == "wait" then return end
    if status == "bad" or status == "end" then
      self.stopped = true
      self.E = nil
      return
    end
  end
end

-- close the frame on top ('}' or ']' at self.pos)
function Scan:close()
  local st = self.stack
  local f = st[#st]
  self:out(f.t == "o" and "}" or "]")
  self.pos = self.pos + 1
  st[#st] = nil
  if self.E and #st < self.E_depth then
    self.E.args_done = true
    self.E = nil
  end
  local rec = f.cand
  if rec then
    if not rec.name then
      if rec.args_started then return "bad" end -- arguments without a name: no call
    else
      if not rec.args_started then -- a call without arguments: {}
        rec.buf[#rec.buf + 1] = "{}"
        rec.args_started, rec.args_done = true, true
        self:header(rec)
      end
    end
  end
  self:value_done()
  return "ok"
end

---------------------------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- new(fmt, opts, rng): opts as tools.parser's; rng gives the ids of calls without one
function _M.new(fmt, opts, rng)
  return setmetatable({ fmt = fmt, opts = opts or {}, rng = rng, parser = tools.parser(fmt, opts), sent = {} }, Stream)
end

local function call_delta(rec, args, first)
  if first then
    return json.object({ index = rec.index - 1, id = rec.id, type = "function",
                         ["function"] = json.object({ name = rec.name, arguments = args }, { "name", "arguments" }) },
                       { "index", "id", "type", "function" })
  end
  return json.object({ index = rec.index - 1, ["function"] = json.object({ arguments = args }, { "arguments" }) },
                     { "index", "function" })
end

-- the deltas of what the scanner has for the calls since the last time
function Stream:deltas()
  local sc = self.scan
  if not sc then return nil end
  local out
  for _, rec in ipairs(sc.order) do
    local first = not rec.header_sent
    if first then
      rec.id = rec.id or tools.assign_ids({ { id = nil } }, self.fmt, self.rng)[1].id
      rec.header_sent = true
      self.sent[#self.sent + 1] = rec
    end
    local text = concat(rec.buf)
    if first or #text > rec.sent then
      out = out or {}
      out[#out + 1] = call_delta(rec, sub(text, rec.sent + 1), first)
      rec.sent = #text
    end
  end
  return out
end

-- push(piece) -> content, reasoning (safe to show, maybe ""), tool-call deltas or nil
function Stream:push(piece)
  local p = self.parser
  local content, reasoning = p:push(piece) -- in the region: keeps the piece, shows nothing
  if self.scan then
    local sc = self.scan
    sc.s = sc.s .. piece
    sc:run()
    return content, reasoning, self:deltas()
  end
  if type(p.region) == "string" and not self.scan then
    local F = FORMATS[self.fmt.name]
    if F and not self.opts.tools_off then
      self.scan = new_scan(F)
      self.scan.s = p.region
      self.scan:run()
      return content, reasoning, self:deltas()
    end
  end
  return content, reasoning, nil
end

-- finish() -> content, reasoning (what was held back), deltas (the rest of the calls, or
-- nil), msg (tools.parse's), calls (the reply's calls with their ids, or nil)
function Stream:finish()
  local content, reasoning, msg, err = self.parser:finish()
  local final = msg.tool_calls
  local deltas = {}
  local sent = self.sent
  if not final then
    -- broken markup, or no call after all: what was streamed stays; the rest is text
    return content, reasoning, #deltas > 0 and deltas or nil, msg, nil, err
  end
  local calls = {}
  for k, c in ipairs(final) do
    local f = c["function"]
    local rec = sent[k]
    if rec and rec.name == f.name then
      c.id = rec.id
      local args = f.arguments
      local have = concat(rec.buf, "", 1, #rec.buf)
      local streamed = sub(have, 1, rec.sent)
      if sub(args, 1, #streamed) == streamed then
        if #args > #streamed then deltas[#deltas + 1] = call_delta(rec, sub(args, #streamed + 1), false) end
      elseif rec.args_done and sub(have, 1, #streamed) == streamed then
        -- the same value written otherwise (a key given twice): the streamed writing ends
        if #have > #streamed then deltas[#deltas + 1] = call_delta(rec, sub(have, #streamed + 1), false) end
      end
    else
      if c.id == nil or c.id == "" then tools.assign_ids({ c }, self.fmt, self.rng) end
      local r = { index = k, id = c.id, name = f.name }
      local pieces = {}
      local s, i = f.arguments, 1
      while i <= #s do -- pieces of about a token's size, whole UTF-8 characters
        local j = math.min(#s, i + 7)
        while j < #s and (byte(s, j + 1) or 0) >= 0x80 and byte(s, j + 1) < 0xC0 do j = j + 1 end
        pieces[#pieces + 1] = sub(s, i, j)
        i = j + 1
      end
      deltas[#deltas + 1] = call_delta(r, pieces[1] or "", true)
      for j = 2, #pieces do deltas[#deltas + 1] = call_delta(r, pieces[j], false) end
    end
    calls[k] = c
  end
  return content, reasoning, #deltas > 0 and deltas or nil, msg, calls, err
end

return _M
