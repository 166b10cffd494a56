-- moonlm.template.builtins: Jinja sources of the common prompt formats, for models whose
-- GGUF has no chat template. Render variables: messages, add_generation_prompt, bos_token,
-- eos_token.

local _M = {}

local tostring, next = tostring, next
local format = string.format
local concat, sort = table.concat, table.sort

local BUILTIN_SRC = {
  chatml = [==[
{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\n' }}
{%- endif -%}
]==],

  llama2 = [==[
{%- if messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- set content = message['content'] -%}
    {%- if loop.first and system is defined -%}
      {%- set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content -%}
    {%- endif -%}
    {{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}
  {%- else -%}
    {{ ' ' + message['content'] | trim + ' ' + eos_token }}
  {%- endif -%}
{%- endfor -%}
]==],

  llama3 = [==[
{{- bos_token -}}
{%- for message in messages -%}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif -%}
]==],

  mistral = [==[
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}
  {%- else -%}
    {{ message['content'] + eos_token }}
  {%- endif -%}
{%- endfor -%}
]==],

  phi3 = [==[
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\n' }}
{%- else -%}
{{ eos_token }}
{%- endif -%}
]==],

  gemma = [==[
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
  {%- set prefix = messages[0]['content'] | trim + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set prefix = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}
]==],

  zephyr = [==[
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\n' }}
{%- endif -%}
]==],
}

-- builtin(name) -> Jinja source | nil, err
function _M.builtin(name)
  local src = BUILTIN_SRC[name]
  if src then return src end
  return nil, format("unknown builtin template '%s' (have: %s)", tostring(name), concat(_M.builtin_names(), ", "))
end

function _M.builtin_names()
  local names = {}
  for k in next, BUILTIN_SRC do names[#names + 1] = k end
  sort(names)
  return names
end

return _M
