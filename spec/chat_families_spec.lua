-- Chat templates and end-of-turn tokens of the new families through model:chat: the gemma3,
-- gemma2, phi3 and mpt models of ../shared/ref-arch, their vocabulary given the family's special
-- tokens and chat template (../shared/chat_templates), render the shared cases and stop
-- on the family's end-of-turn token.
local lm = require "moonlm"
local S = require "support"
local json = require "moonlm.json"

local FLOAT_KEY = { "epsilon", "freq_base", "softcapping", "factor", "scale" }

-- the ref-arch model `arch`, its last tokens replaced by `specials` (control tokens)
local function with_chat(arch, template, specials, ids)
  local src = S.path("ref-arch/" .. arch .. "-f32.gguf")
  local m0 = assert(lm.load(src))
  local meta = m0.meta
  local out = {}
  for k, v in pairs(meta) do
    if type(v) == "number" then
      local f = false
      for _, s in ipairs(FLOAT_KEY) do f = f or k:find(s, 1, true) ~= nil end
      out[k] = lm.gguf_value(f and "f32" or "u32", v)
    elseif k ~= "tokenizer.ggml.scores" then
      out[k] = v
    end
  end
  local tokens, types = out["tokenizer.ggml.tokens"], out["tokenizer.ggml.token_type"]
  local n = #tokens
  local idof = {}
  for i, s in ipairs(specials) do
    local id = n - #specials + i - 1
    tokens[id + 1], types[id + 1], idof[s] = s, 3, id
  end
  out["tokenizer.ggml.scores"] = lm.gguf_value("f32", meta["tokenizer.ggml.scores"])
  for key, text in pairs(ids) do out["tokenizer.ggml." .. key] = lm.gguf_value("u32", idof[text]) end
  out["tokenizer.chat_template"] = S.read_file(S.path("chat_templates/" .. template .. ".jinja"))
  local t = {}
  for k, x in pairs(assert(lm.load_tensors(src))) do t[k] = x:clone() end
  local path = S.tmpname(".gguf")
  assert(lm.save(path, t, out))
  m0:close()
  return path, idof
end

-- { arch, template, special tokens, their ids' keys, end-of-turn token, a turn marker }
local families = {
  { "gemma3", "gemma-3-it", { "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>" },
    { bos_token_id = "<bos>", eos_token_id = "<eos>" }, "<end_of_turn>", "<start_of_turn>" },
  { "gemma2", "gemma-2-it", { "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>" },
    { bos_token_id = "<bos>", eos_token_id = "<eos>" }, "<end_of_turn>", "<start_of_turn>" },
  { "phi3", "phi-3.5-mini", { "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>" },
    { bos_token_id = "<s>", eos_token_id = "<|endoftext|>" }, "<|end|>", "<|user|>" },
  -- MPT-7B-chat (Q8-Chat's model) speaks ChatML, ending a turn with <|im_end|>
  -- (the shared ChatML template, Hermes 3's, writes its own BOS text)
  { "mpt", "hermes-3-chatml", { "<|begin_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>" },
    { bos_token_id = "<|begin_of_text|>", eos_token_id = "<|endoftext|>", eot_token_id = "<|im_end|>" }, "<|im_end|>",
    "<|im_start|>" },
  -- Phi-4 is a phi3 file with a ChatML-like template
  { "phi3", "phi-4", { "<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>" },
    { bos_token_id = "<|endoftext|>", eos_token_id = "<|im_end|>" }, "<|im_end|>", "<|im_start|>" },
}

describe("chat on the new families", function()
  for _, f in ipairs(families) do
    it(f[1] .. " (" .. f[2] .. "): the shared template's cases render, and a reply stops at " .. f[5], function()
      local path, idof = with_chat(f[1], f[2], f[3], f[4])
      local m = assert(lm.load(path))
      assert.is_true(m:is_eog(idof[f[5]]))
      for _, case in ipairs(json.decode(S.read_file(S.path("chat_templates/" .. f[2] .. ".cases.json")))) do
        if case.expected then
          local got = assert(m:apply_template(case.messages, { add_generation_prompt = case.add_generation_prompt }))
          assert.are.equal(case.expected, got, case.id)
        elseif case.error then -- raise_exception in the template: nil and its message
          local got, err = m:apply_template(case.messages, { add_generation_prompt = case.add_generation_prompt })
          assert.is_nil(got, case.id)
          assert.matches(case.error, err, 1, true)
        end
      end
      -- a turn: the prompt's special tokens are tokens, and the end-of-turn token ends the reply
      local chat = m:chat {}
      local reply, info = chat:say("Hello!", { max_tokens = 8, temperature = 0, logit_bias = { [idof[f[5]]] = 100 } })
      assert.are.equal("", reply)
      assert.are.equal("eos", info.stop_reason)
      local start = idof[f[6]]
      local seen = false
      for _, id in ipairs(chat.tokens) do seen = seen or id == start end
      assert.is_true(seen, "the template's turn marker was tokenized as its special token")
      m:close()
      os.remove(path)
    end)
  end
end)
