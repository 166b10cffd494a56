-- Specs for moonlm.tools and tool calls in chat sessions.
--
-- 1. Parsing: hand-written model outputs in every format, with the exact tool calls,
--    text and reasoning they must give; streaming them in any chunking gives the same text,
--    with no markup in the pieces.
-- 2. Templates: what each shared chat template can render (found by probing), the format
--    picked for it, and the tool conversation rendered exactly. The expected prompts were
--    rendered by Jinja2 3.1.6 configured as transformers does, from the messages as
--    moonlm.tools prepares them (arguments as object or JSON text, content "" or null, as
--    each template needs; tools, calls and results the template cannot render written in
--    the model's format).
-- 3. End to end with stories260K through model:chat, its output steered by a sampler step
--    that forces a script of tokens (the tiny model does not call tools by itself).
local lm = require "moonlm"
local json = require "moonlm.json"
local tools = require "moonlm.tools"
local T = require "moonlm.template"
local S = require "support"

local SHARED = S.path("chat_templates")
local function template_source(name) return S.read_file(SHARED .. "/" .. name .. ".jinja") end

-- { fmt, output, { content, reasoning, calls = { {name, arguments JSON, id} } }, opts, err }
local PARSE = {
  -- Hermes / Qwen 2.5 / Qwen 3
  { "hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    { "Let me check.", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "hermes", '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris", "h24": true}}\n</tool_call>',
    { "", "The user wants the weather.", { { "get_weather", '{"city":"Paris"}' }, { "get_time", '{"tz":"Europe/Paris","h24":true}' } } },
    { think = true } },
  { "hermes", '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": [1, 2.5, null]}"}\n</tool_call>',
    { "", nil, { { "f", '{"x":[1,2.5,null]}' } } } },
  { "hermes", '<tool_call>\n[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"k": "v"}}]\n</tool_call>', -- Falcon 3
    { "", nil, { { "a", "{}" }, { "b", '{"k":"v"}' } } } },
  { "hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', -- ended by EOS before </tool_call>
    { "", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "hermes", '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>code</arg_key>\n<arg_value>007</arg_value>\n</tool_call>', -- GLM 4.5/4.6
    { "", nil, { { "get_weather", '{"city":"Paris","days":3,"code":"007"}' } } },
    { tools = { { type = "function", ["function"] = { name = "get_weather", parameters = { type = "object",
      properties = { city = { type = "string" }, days = { type = "integer" }, code = { type = "string" } } } } } } } },
  { "hermes", "Hello there, <b>friend</b>! 2 < 3 and <tool>", { "Hello there, <b>friend</b>! 2 < 3 and <tool>" } },
  { "hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', -- cut off: text, and why
    { '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par' }, nil, "unterminated string" },
  { "hermes", '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',
    { '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>' }, nil, "the arguments of 'f' are not a JSON object" },
  -- Llama 3.x
  { "llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', { "", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "llama3", '\n{"type": "function", "name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1.5}}',
    { "", nil, { { "a", "{}" }, { "b", '{"x":1.5}' } } } },
  { "llama3", '<|python_tag|>brave_search.call(query="weather in Paris", count=3)',
    { "", nil, { { "brave_search", '{"query":"weather in Paris","count":3}' } } } },
  { "llama3", "<|python_tag|>print(6 * 7)", { "", nil, { { "python", '{"code":"print(6 * 7)"}' } } } },
  { "llama3", 'Looking it up.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    { "Looking it up.", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "llama3", '{"answer": 42}', { '{"answer": 42}' } }, -- JSON, but not a call
  { "llama3", "The answer is {42}.", { "The answer is {42}." } },
  -- Mistral
  { "mistral", 'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123DEF"}]',
    { "Sure.", nil, { { "get_weather", '{"city":"Paris"}', "abc123DEF" } } } },
  { "mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]k2J9xQ1aZ[ARGS]{"tz": "CET"}',
    { "", nil, { { "get_weather", '{"city":"Paris"}' }, { "get_time", '{"tz":"CET"}', "k2J9xQ1aZ" } } } },
  -- Functionary v3.2 (the prompt ends with ">>>")
  { "functionary", "all\nHello! How can I help?", { "Hello! How can I help?" } },
  { "functionary", 'get_weather\n{"city": "Paris"}\n>>>get_time\n{"tz": "CET"}',
    { "", nil, { { "get_weather", '{"city":"Paris"}' }, { "get_time", '{"tz":"CET"}' } } } },
  { "functionary", 'all\nLet me look.>>>get_weather\n{"city": "Paris"}',
    { "Let me look.", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "functionary", "python\nimport math\nprint(math.pi)", { "", nil, { { "python", '{"code":"import math\\nprint(math.pi)"}' } } } },
  -- Command R7B and Command R / R+
  { "command_r", '<|START_THINKING|>I need the weather.<|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n]<|END_ACTION|>',
    { "", "I need the weather.", { { "get_weather", '{"city":"Paris"}', "0" } } } },
  { "command_r", "<|START_RESPONSE|>It is sunny.<|END_RESPONSE|>", { "It is sunny." } },
  { "command_r", 'Plan: I will look it up.\nAction: ```json\n[\n    {\n        "tool_name": "get_weather",\n        "parameters": {"city": "Paris"}\n    }\n]\n```',
    { "Plan: I will look it up.", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "command_r", 'Action: ```json\n[{"tool_name": "directly_answer", "parameters": {}}]\n```', { "" } },
  -- Granite
  { "granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    { "", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "granite", "<think>Short question.</think><response>Hi!</response>", { "Hi!", "Short question." }, { think = true } },
  -- DeepSeek R1: the prompt ends with <think>, the reply opens with reasoning
  { "deepseek_r1", 'The user asks for weather.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    { "", "The user asks for weather.", { { "get_weather", '{"city":"Paris"}' } } }, { open_think = true } },
  { "deepseek_r1", "Thinking without end", { "", "Thinking without end" }, { open_think = true } },
  -- generic
  { "generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
    { "", nil, { { "get_weather", '{"city":"Paris"}' } } } },
  { "generic", '```json\n{"tool_call": {"name": "f", "arguments": {"a": 1}}}\n```', { "", nil, { { "f", '{"a":1}' } } } },
  { "generic", '{"response": "Hi"}', { "Hi" } },
  { "generic", "Just text.", { "Just text." } },
  -- tool_choice = "none": markup stays text, reasoning still goes out
  { "hermes", '<think>x</think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    { '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "x" }, { think = true, tools_off = true } },
}

local function fmt_for(name, o)
  local f = assert(tools.format(name))
  if o and o.think then f.think = { "<think>", "</think>" } end
  return f
end

local function check_msg(want, msg)
  assert.are.equal(want[1], msg.content)
  assert.are.equal(want[2], msg.reasoning_content)
  if not want[3] then
    assert.is_nil(msg.tool_calls)
    return
  end
  assert.are.equal(#want[3], #msg.tool_calls)
  for i, c in ipairs(want[3]) do
    local got = msg.tool_calls[i]
    assert.are.equal("function", got.type)
    assert.are.equal(c[1], got["function"].name)
    assert.are.equal(c[2], got["function"].arguments)
    assert.are.equal(c[3], got.id)
  end
end

describe("tool-call parsing", function()
  for i, c in ipairs(PARSE) do
    local name, text, want, o, err = c[1], c[2], c[3], c[4], c[5]
    it(("%s #%d: %s"):format(name, i, (text:gsub("\n", "\\n")):sub(1, 50)), function()
      local f = fmt_for(name, o)
      local msg, perr = tools.parse(text, f, o)
      check_msg(want, msg)
      if err then
        assert.truthy(perr and perr:find(err, 1, true), perr)
      else
        assert.is_nil(perr)
      end
      -- streamed byte by byte and in chunks of 3 and 7: the same text, shown as it comes,
      -- never a piece of markup
      for _, step in ipairs { 1, 3, 7 } do
        local p = tools.parser(f, o)
        local shown, thought = {}, {}
        for k = 1, #text, step do
          local dc, dr = p:push(text:sub(k, k + step - 1))
          shown[#shown + 1], thought[#thought + 1] = dc, dr
        end
        local dc, dr, m2 = p:finish()
        shown[#shown + 1], thought[#thought + 1] = dc, dr
        assert.are.equal(msg.content, table.concat(shown))
        assert.are.equal(msg.reasoning_content or "", table.concat(thought))
        assert.are.same(msg, m2)
        if want[3] and not (o and o.tools_off) then
          for _, s in ipairs(shown) do
            for _, mk in ipairs(tools.preserved(f)) do assert.is_nil(s:find(mk, 1, true)) end
          end
        end
      end
    end)
  end

  it("text is shown while it comes, markup never", function()
    local p = tools.parser(fmt_for("hermes"), {})
    assert.are.equal("Sure", p:push("Sure"))
    assert.are.equal(",", p:push(", <tool"))  -- "<tool" may start <tool_call>: held
    assert.are.equal(" <tools I", p:push("s I")) -- it did not ("<tools" is text)
    assert.are.equal(" will", p:push(" will"))
    assert.are.equal("", p:push(" \n"))         -- whitespace waits for what follows
    assert.are.equal(" \ncheck.", p:push("check.\n<tool_call>\n{\"name\""))
    assert.are.equal("", p:push(": \"f\", \"arguments\": {}}\n</tool_call>"))
    local _, _, msg = p:finish()
    assert.are.equal("Sure, <tools I will \ncheck.", msg.content)
    assert.are.equal("f", msg.tool_calls[1]["function"].name)
  end)

  it("ids: kept from the model, else new ones (9 letters and digits for Mistral)", function()
    local rng = lm.core and lm.core.rng or require("moonlm.core").rng
    local r = rng(1)
    local calls = tools.parse('[TOOL_CALLS][{"name": "a", "arguments": {}, "id": "keepMe123"}, {"name": "b", "arguments": {}}]',
                              assert(tools.format("mistral"))).tool_calls
    tools.assign_ids(calls, tools.format("mistral"), r)
    assert.are.equal("keepMe123", calls[1].id)
    assert.truthy(calls[2].id:match("^%w%w%w%w%w%w%w%w%w$"))
    local h = tools.parse('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "a", "arguments": {}}</tool_call>',
                          tools.format("hermes")).tool_calls
    tools.assign_ids(h, tools.format("hermes"), r)
    assert.truthy(h[1].id:match("^call_" .. ("%w"):rep(24) .. "$"))
    assert.are_not.equal(h[1].id, h[2].id)
  end)

  it("checks the tool list", function()
    local ok = { type = "function", ["function"] = { name = "f", parameters = { type = "object" } } }
    assert.are.equal(1, #assert(tools.check { ok }))
    assert.are.equal(1, #assert(tools.check('[{"type": "function", "function": {"name": "f"}}]')))
    assert.is_nil((tools.check {}))
    for _, c in ipairs {
      { { { type = "function" } }, "tools[1].function must be a table" },
      { { { ["function"] = { name = "f" } } }, 'tools[1].type must be "function" (got nil)' },
      { { ok, { type = "function", ["function"] = { name = "f" } } }, "tools[2]: function name 'f' is used twice" },
      { { { type = "function", ["function"] = { name = "a b" } } }, "tools[1].function.name must be 1 to 64 letters, digits, '_', '-' or '.'" },
      { { { type = "function", ["function"] = { name = "f", parameters = "x" } } }, "tools[1].function.parameters must be a JSON Schema object" },
      { "[1,", "tools: json: unexpected end of input" },
      { { a = 1 }, 'tools must be an array of {type = "function", function = {...}}' },
    } do
      local v, err = tools.check(c[1])
      assert.is_nil(v)
      assert.truthy(err:find(c[2], 1, true), err)
    end
  end)
end)

-- the tool conversation of the rendering cases
local TOOLS = json.decode [[ [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}] ]]
local MSGS = json.decode [[ [
 {"role": "system", "content": "Be brief."},
 {"role": "user", "content": "Weather in Paris?"},
 {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
 {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
 {"role": "assistant", "content": "It is 18C."},
 {"role": "user", "content": "Thanks"}] ]]

-- template -> format, does it reason, the capabilities it has
local TEMPLATES = {
  ["command-r"] = { "command_r", false, "system" },
  ["deepseek-r1-distill-qwen"] = { "deepseek_r1", true, "system tool_calls null_content parallel tool_results" },
  ["falcon-3"] = { "hermes", false, "system tools tool_calls object_args parallel tool_results" },
  ["functionary-v3.2"] = { "functionary", false, "system tools tool_calls parallel tool_results" },
  ["gemma-2-it"] = { "generic", false, "" },
  ["gemma-3-it"] = { "generic", false, "system" },
  ["glm-4.6"] = { "hermes", true, "system tools tool_calls object_args parallel tool_results" },
  ["granite-3.3"] = { "granite", true, "system tools tool_results" },
  ["hermes-3-chatml"] = { "hermes", false, "system tool_results" },
  ["llama-2-chat"] = { "generic", false, "system" },
  ["llama-3-instruct"] = { "llama3", false, "system tool_results" },
  ["llama-3.1-instruct"] = { "llama3", false, "system tools tool_calls object_args tool_results" },
  ["mistral-v1"] = { "generic", false, "system" },
  ["mistral-v7"] = { "mistral", false, "system" },
  ["phi-3.5-mini"] = { "generic", false, "system" },
  ["phi-4"] = { "hermes", false, "system" },
  ["qwen2.5-instruct"] = { "hermes", false, "system tools tool_calls object_args parallel tool_results" },
  ["qwen3"] = { "hermes", true, "system tools tool_calls parallel tool_results" },
  ["smollm3"] = { "hermes", true, "system tool_results" },
  ["zephyr"] = { "generic", false, "system" },
}

-- The tool conversation, rendered by Jinja2 (see the top of this file)
local RENDERED = {
  ["qwen2.5-instruct"] = [[
<|im_start|>system
Be brief.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
18C
</tool_response><|im_end|>
<|im_start|>assistant
It is 18C.<|im_end|>
<|im_start|>user
Thanks<|im_end|>
<|im_start|>assistant
]],
  ["qwen3"] = [[
<|im_start|>system
Be brief.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
18C
</tool_response><|im_end|>
<|im_start|>assistant
It is 18C.<|im_end|>
<|im_start|>user
Thanks<|im_end|>
<|im_start|>assistant
]],
  ["llama-3.1-instruct"] = [[
<|begin_of_text|><|start_header_id|>system<|end_header_id|>

Environment: ipython
Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.

{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ]
        }
    }
}

Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>

"18C"<|eot_id|><|start_header_id|>assistant<|end_header_id|>

It is 18C.<|eot_id|><|start_header_id|>user<|end_header_id|>

Thanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>

]],
  ["functionary-v3.2"] = [[
<|begin_of_text|><|start_header_id|>system<|end_header_id|>

You are capable of executing available function(s) if required.
Only execute function(s) when absolutely necessary.
Ask for the required input to:recipient==all
Use JSON for function arguments.
Respond in this format:
>>>${recipient}
${content}
Available functions:
// Supported function definitions that should be called when necessary.
namespace functions {

// Get the weather in a city
type get_weather = (_: {
city: string,
}) => any;

} // namespace functions<|eot_id|><|start_header_id|>system<|end_header_id|>

Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>

Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

>>>get_weather
{"city": "Paris"}<|eot_id|><|start_header_id|>tool<|end_header_id|>

18C<|eot_id|><|start_header_id|>assistant<|end_header_id|>

>>>all
It is 18C.<|eot_id|><|start_header_id|>user<|end_header_id|>

Thanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>

>>>]],
  ["granite-3.3"] = [[
<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>
<|start_of_role|>available_tools<|end_of_role|>[
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {
                        "type": "string"
                    }
                },
                "required": [
                    "city"
                ]
            }
        }
    }
]<|end_of_text|>
<|start_of_role|>user<|end_of_role|>Weather in Paris?<|end_of_text|>
<|start_of_role|>assistant<|end_of_role|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|end_of_text|>
<|start_of_role|>tool<|end_of_role|>18C<|end_of_text|>
<|start_of_role|>assistant<|end_of_role|>It is 18C.<|end_of_text|>
<|start_of_role|>user<|end_of_role|>Thanks<|end_of_text|>
<|start_of_role|>assistant<|end_of_role|>]],
  ["glm-4.6"] = [[
[gMASK]<sop><|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}
<arg_key>{arg-key-1}</arg_key>
<arg_value>{arg-value-1}</arg_value>
<arg_key>{arg-key-2}</arg_key>
<arg_value>{arg-value-2}</arg_value>
...
</tool_call><|system|>
Be brief.<|user|>
Weather in Paris?<|assistant|>
<think></think>
<tool_call>get_weather
<arg_key>city</arg_key>
<arg_value>Paris</arg_value>
</tool_call><|observation|>
<tool_response>
18C
</tool_response><|assistant|>
<think></think>
It is 18C.<|user|>
Thanks<|assistant|>]],
  ["falcon-3"] = [[
<|system|>
Be brief.You are a Falcon assistant skilled in function calling. You are helpful, respectful, and concise.

# Tools

You have access to the following functions. You MUST use them to answer questions when needed. For each function call, you MUST return a JSON object inside <tool_call></tool_call> tags.

<tools>[
  {
    "type": "function",
    "function": {
      "name": "get_weather",
      "description": "Get the weather in a city",
      "parameters": {
        "type": "object",
        "properties": {
          "city": {
            "type": "string"
          }
        },
        "required": [
          "city"
        ]
      }
    }
  }
]</tools>

# Output Format

Your response MUST follow this format when making function calls:
<tool_call>
[
  {"name": "function_name", "arguments": {"arg1": "value1", "arg2": "value2"}},
  {"name": "another_function", "arguments": {"arg": "value"}}
]
</tool_call>
If no function calls are needed, respond normally without the tool_call tags.
<|user|>
Weather in Paris?

<tool_call>
[
  {
    "id": "call_1",
    "type": "function",
    "function": {
      "name": "get_weather",
      "arguments": {
        "city": "Paris"
      }
    }
  }
]
</tool_call><|endoftext|>
<|assistant|>
<tool_response>
18C
</tool_response>
<|assistant|>
It is 18C.<|endoftext|>
<|user|>
Thanks
<|assistant|>
]],
  ["deepseek-r1-distill-qwen"] = [[
<｜begin▁of▁sentence｜>Be brief.

You can call the functions below (one JSON object per line). To call a function, reply with <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜><function name>
```json
<arguments object>
```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}<｜User｜>Weather in Paris?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is 18C.<｜end▁of▁sentence｜><｜User｜>Thanks<｜Assistant｜><think>
]],
  ["hermes-3-chatml"] = [[
<|begin_of_text|><|im_start|>system
Be brief.

# Tools

You can call the functions below. Their signatures, one JSON object per line, are inside <tools></tools>:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

To call a function, write its name and arguments as a JSON object between <tool_call></tool_call> tags, one call per pair of tags:
<tool_call>
{"name": <function name>, "arguments": <arguments object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>tool
<tool_response>
18C
</tool_response><|im_end|>
<|im_start|>assistant
It is 18C.<|im_end|>
<|im_start|>user
Thanks<|im_end|>
<|im_start|>assistant
]],
  ["mistral-v7"] = [=[
<s>[SYSTEM_PROMPT] Be brief.

You can call the functions below (one JSON object per line). To call functions, reply with [TOOL_CALLS] followed by a JSON list of calls: [TOOL_CALLS][{"name": <function name>, "arguments": <arguments object>}]

{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}[/SYSTEM_PROMPT][INST] Weather in Paris?[/INST] [TOOL_CALLS][{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]</s>[INST] {"tool_response": {"id": "call_1", "name": "get_weather", "content": "18C"}}[/INST] It is 18C.</s>[INST] Thanks[/INST]]=],
  ["command-r"] = [[
<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.

You can call the functions below (one JSON object per line). To call functions, reply with Action: and a JSON list of calls in a json code block:
Action: ```json
[{"tool_name": <function name>, "parameters": <arguments object>}]
```

{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Weather in Paris?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Action: ```json
[{"tool_name": "get_weather", "parameters": {"city": "Paris"}}]
```<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{"tool_response": {"id": "call_1", "name": "get_weather", "content": "18C"}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>It is 18C.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Thanks<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>]],
  ["gemma-2-it"] = [[
<bos><start_of_turn>user
Be brief.

You can call the functions below (one JSON object per line). To call functions, reply with nothing but a JSON object {"tool_calls": [{"name": <function name>, "arguments": <arguments object>}]}; otherwise reply normally.

{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

Weather in Paris?<end_of_turn>
<start_of_turn>model
{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}<end_of_turn>
<start_of_turn>user
{"tool_response": {"id": "call_1", "name": "get_weather", "content": "18C"}}<end_of_turn>
<start_of_turn>model
It is 18C.<end_of_turn>
<start_of_turn>user
Thanks<end_of_turn>
<start_of_turn>model
]],
}

local function template_vars(name)
  local cases = json.decode(S.read_file(SHARED .. "/" .. name .. ".cases.json"))
  local t0 = os.time { year = 2026, month = 11, day = 22, hour = 0 }
  return { bos_token = cases[1].bos_token, eos_token = cases[1].eos_token, documents = json.null,
           strftime_now = function(f) return os.date(f, t0) end }
end

describe("tools in the shared chat templates", function()
  local names = {}
  for name in pairs(TEMPLATES) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local want = TEMPLATES[name]
    it(name .. ": format, capabilities and the tool conversation", function()
      local src = template_source(name)
      local tmpl = assert(T.compile(src))
      local vars = template_vars(name)
      local f = tools.detect(src)
      assert.are.equal(want[1], f.name)
      assert.are.equal(want[2], f.think and true or false)
      local caps = tools.caps(tmpl, vars)
      local flags = {}
      for _, k in ipairs { "system", "tools", "tool_calls", "object_args", "null_content", "parallel", "tool_results" } do
        if caps[k] then flags[#flags + 1] = k end
      end
      assert.are.equal(want[3], table.concat(flags, " "))
      local msgs, tv = tools.prepare(MSGS, TOOLS, caps, f)
      vars.messages, vars.tools, vars.add_generation_prompt = msgs, tv, true
      local out, err = tmpl:render(vars)
      assert(out, err)
      if RENDERED[name] then
        assert.are.equal(RENDERED[name], out)
      end
      -- every template shows the tool, the call and the result somewhere
      assert.truthy(out:find("get_weather", 1, true))
      assert.truthy(out:find("Get the weather in a city", 1, true) or out:find("// Get the weather", 1, true))
      assert.truthy(out:find("Paris", 1, true))
      assert.truthy(out:find("18C", 1, true))
      -- and the messages given were not changed
      assert.are.equal(json.null, MSGS[3].content)
      assert.are.equal('{"city": "Paris"}', MSGS[3].tool_calls[1]["function"].arguments)
    end)
  end

  it("detects the format from the vocabulary when the template has no tool markup", function()
    local chatml = template_source("hermes-3-chatml")
    local function vocab(list)
      local set = {}
      for _, t in ipairs(list) do set[t] = true end
      return function(s) return set[s] end
    end
    assert.are.equal("mistral", tools.detect("{{ '[INST]' }}", vocab { "[TOOL_CALLS]" }).name)
    assert.are.equal("hermes", tools.detect(chatml, vocab { "<tool_call>", "<|python_tag|>" }).name)
    assert.are.equal("llama3", tools.detect("{{ '<|start_header_id|>' }}", vocab { "<|python_tag|>" }).name)
    assert.are.equal("granite", tools.detect("x", vocab { "<|tool_call|>" }).name)
    assert.are.equal("command_r", tools.detect("x", nil, { ["general.architecture"] = "command-r" }).name)
    assert.are.equal("generic", tools.detect("x").name)
    assert.is_true(tools.detect("x", vocab { "<think>" }).think ~= false)
  end)

  it("splits parallel calls for templates that render one call per message", function()
    local two = json.decode [[ [{"role": "user", "content": "Both?"},
      {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{\"x\": 1}"}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "name": "a", "content": "r1"},
      {"role": "tool", "tool_call_id": "call_2", "name": "b", "content": "r2"}] ]]
    local name = "llama-3.1-instruct"
    local tmpl = assert(T.compile(template_source(name)))
    local vars = template_vars(name)
    local caps = tools.caps(tmpl, vars)
    local msgs = tools.prepare(two, nil, caps, tools.format("llama3"))
    assert.are.equal(5, #msgs)
    vars.messages = msgs
    local out = assert(tmpl:render(vars))
    assert.truthy(out:find('{"name": "a", "parameters": {"x": 1}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{"name": "b", "parameters": {}}<|eot_id|>', 1, true))
    -- results become user turns where the template has no tool role, consecutive ones merged
    local mtmpl = assert(T.compile(template_source("mistral-v7")))
    local mcaps = tools.caps(mtmpl, template_vars("mistral-v7"))
    local m = tools.prepare(two, nil, mcaps, tools.format("mistral"))
    assert.are.equal(3, #m)
    assert.are.equal("user", m[3].role)
    assert.are.equal('{"tool_response": {"id": "call_1", "name": "a", "content": "r1"}}\n'
                     .. '{"tool_response": {"id": "call_2", "name": "b", "content": "r2"}}', m[3].content)
  end)
end)

-- A sampler step that makes the model write `text` (one byte token per byte, or more at a
-- time where a grammar fast-forwards), then end its turn: it writes the byte that follows
-- what the reply holds so far.
local function script(model, text, eos)
  local base
  return function(_, history)
    base = base or #history
    local done = {}
    for i = base + 1, #history do done[#done + 1] = history[i] end
    local n = #model:detokenize(done, { special = true, strip_space = false })
    if n >= #text then return { ids = { eos }, logits = { 0 } } end
    return { ids = { assert(model:find_token(("<0x%02X>"):format(text:byte(n + 1)))) }, logits = { 0 } }
  end
end

describe("tool calls in chat sessions (stories260K)", function()
  local model = assert(lm.load(S.path("models/stories260K.gguf")))
  local eos = model.vocab.eos
  local qwen3 = template_source("qwen3")

  it("say: the call comes back in info.tool_calls, the result goes in, the model answers", function()
    local chat = model:chat { template = qwen3, tools = TOOLS, temperature = 0, max_tokens = 4000, seed = 3 }
    local reply, info = chat:say("Weather in Paris?", {
      steps = { script(model, '<think>\nNeed the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', eos) } })
    assert.are.equal("", reply)
    assert.are.equal("Need the tool.", info.reasoning_content)
    assert.are.equal(1, #info.tool_calls)
    local call = info.tool_calls[1]
    assert.are.equal("get_weather", call["function"].name)
    assert.are.equal('{"city":"Paris"}', call["function"].arguments)
    assert.truthy(call.id:match("^call_%w+$"))
    assert.are.equal("eos", info.stop_reason)
    -- the conversation must get the result before going on
    assert.has_error(function() chat:say() end,
      ("bad argument #1 to 'say' (tool call '%s' (get_weather) has no result yet: chat:tool_result(id, content))"):format(call.id))
    assert.has_error(function() chat:tool_result("call_nope", "x") end,
      "bad argument #1 to 'tool_result' (no tool call 'call_nope' in the last reply)")
    chat:tool_result(call.id, { temperature = 18 })
    assert.has_error(function() chat:tool_result(call.id, "again") end,
      ("bad argument #1 to 'tool_result' (tool call '%s' already has a result)"):format(call.id))
    local r2, i2 = chat:say(nil, { steps = { script(model, "It is 18 degrees.", eos) } })
    assert.are.equal("It is 18 degrees.", r2)
    assert.is_nil(i2.tool_calls)
    assert.is_true(i2.cached_tokens > 0)
    -- the prompt of that turn is qwen3's own rendering of the whole exchange
    local want = table.concat {
      "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\n",
      '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call><|im_end|>\n',
      '<|im_start|>user\n<tool_response>\n{"temperature": 18}\n</tool_response><|im_end|>\n<|im_start|>assistant\n' }
    assert.truthy(chat.prompt_text:find(want, 1, true), chat.prompt_text)
    assert.are.same({ "user", "assistant", "tool", "assistant" },
                    { chat.history[1].role, chat.history[2].role, chat.history[3].role, chat.history[4].role })
    assert.are.equal("get_weather", chat.history[3].name)
    -- a saved session keeps the calls and results
    local path = S.tmpname(".chat")
    assert(chat:save(path))
    local back = assert(lm.chat_load(model, path, { template = qwen3 }))
    os.remove(path)
    assert.are.same(json.decode(json.encode(chat.history)), json.decode(json.encode(back.history)))
    assert.are.equal(call.id, back.history[2].tool_calls[1].id)
  end)

  it("stream: pieces are the text only; the calls arrive with the info at the end", function()
    local chat = model:chat { template = qwen3, tools = TOOLS, temperature = 0, max_tokens = 4000 }
    local out = 'I will check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    local pieces, last = {}, nil
    for piece, info, kind in chat:stream("Weather?", { steps = { script(model, out, eos) } }) do
      assert.are.equal("content", kind)
      assert.is_nil(piece:find("<", 1, true))
      pieces[#pieces + 1] = piece
      last = info
    end
    assert.are.equal("I will check.", table.concat(pieces))
    assert.are.equal("get_weather", last.tool_calls[1]["function"].name)
    assert.are.equal("I will check.", chat.history[2].content)
    -- with stream_reasoning, the reasoning comes as its own pieces
    local chat2 = model:chat { template = qwen3, temperature = 0, max_tokens = 400, stream_reasoning = true }
    local got = { content = {}, reasoning = {} }
    for piece, _, kind in chat2:stream("Hi", { steps = { script(model, "<think>\nHmm.\n</think>\n\nHello!", eos) } }) do
      table.insert(got[kind], piece)
    end
    assert.are.equal("Hmm.", table.concat(got.reasoning))
    assert.are.equal("Hello!", table.concat(got.content))
  end)

  it("tool_choice none, reasoning = false, and bad options", function()
    local out = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    local chat = model:chat { template = qwen3, tools = TOOLS, temperature = 0, max_tokens = 4000 }
    local r, info = chat:say("x", { tool_choice = "none", steps = { script(model, out, eos) } })
    assert.are.equal(out, r)
    assert.is_nil(info.tool_calls)
    local c2 = model:chat { template = qwen3, temperature = 0, max_tokens = 4000, reasoning = false }
    assert.are.equal("<think>a</think>b", (c2:say("x", { steps = { script(model, "<think>a</think>b", eos) } })))
    assert.has_error(function() chat:say("x", { tool_choice = "sometimes" }) end,
      [[bad option 'tool_choice' ("auto", "none", "required" or {type = "function", ...} expected, got "sometimes")]])
    assert.has_error(function() chat:say("x", { tools = { { type = "function" } } }) end,
      "bad option 'tools' (tools[1].function must be a table)")
    assert.has_error(function() model:chat { tool_format = "xml" } end, "bad option 'tool_format' (unknown tool-call format 'xml')")
    assert.has_error(function() chat:say() end,
      "bad argument #1 to 'say' (string expected, got nil; only a reply to tool results needs no text)")
  end)

  it("a template without tools: the model's format is written into the prompt", function()
    local chat = model:chat { template = template_source("hermes-3-chatml"), tools = TOOLS, temperature = 0, max_tokens = 4000,
                              system = "Be brief." }
    local _, info = chat:say("Weather?", { steps = { script(model, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', eos) } })
    assert.are.equal('{"city":"Oslo"}', info.tool_calls[1]["function"].arguments)
    assert.truthy(chat.prompt_text:find("<|im_start|>system\nBe brief.\n\n# Tools\n", 1, true))
    chat:tool_result(info.tool_calls[1].id, "-2C")
    chat:say(nil, { steps = { script(model, "Cold.", eos) } })
    assert.truthy(chat.prompt_text:find('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n<|im_start|>tool\n<tool_response>\n-2C\n</tool_response><|im_end|>\n<|im_start|>assistant\n', 1, true), chat.prompt_text)
  end)

  it("apply_template renders tools and tool turns", function()
    local out = assert(model:apply_template(MSGS, { template = template_source("qwen2.5-instruct"), tools = TOOLS }))
    assert.are.equal(RENDERED["qwen2.5-instruct"], out)
    local _, err = model:apply_template(MSGS, { template = "chatml", tools = { 1 } })
    assert.are.equal("tools[1] must be a table", err)
  end)
end)
