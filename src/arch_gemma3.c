/* arch_gemma3.c: Gemma 3 (text): the gemma2 block (ml_forward_gemma) with per-head RMSNorms
 * of q and k (attn_q_norm / attn_k_norm) before RoPE, five local layers to one global
 * (pattern 6), local layers on their own RoPE base (rope.freq_base_swa, 10000 when absent)
 * without scaling, global ones on rope.freq_base with the file's scaling, and no soft-caps
 * unless the file gives them. No sliding_window key (or 0) means no local layers. */
#include "arch.h"

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_rms_epsilon", ML_KEY_FLOAT, norm_eps, 1, 1e-6, 0, 1),
  ML_KEY("attn_logit_softcapping", ML_KEY_FLOAT, attn_softcap, 0, 0, 0, 1e30),
  ML_KEY("final_logit_softcapping", ML_KEY_FLOAT, final_softcap, 0, 0, 0, 1e30),
  ML_KEY("attention.sliding_window", ML_KEY_INT, n_swa, 0, 0, 0, INT32_MAX),
  ML_KEY("attention.sliding_window_pattern", ML_KEY_INT, swa_pattern, 0, 6, 0, 4096),
  ML_KEY("rope.freq_base_swa", ML_KEY_FLOAT, rope_base_swa, 0, 10000.0, 1e-6, 1e30),
  {0},
};

static const ml_tensor_decl tensors[] = {
  ML_GLOBAL("token_embd.weight", tok_embd, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("output_norm.weight", output_norm, E, 0, REQ),
  ML_GLOBAL("output.weight", output, ML_DIM_VOCAB, E, 0), /* absent: tied */
  ML_LAYER("attn_norm.weight", attn_norm, E, 0, REQ),
  ML_LAYER("attn_q.weight", wq, ML_DIM_Q, E, REQ),
  ML_LAYER("attn_k.weight", wk, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_v.weight", wv, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_q_norm.weight", q_norm, ML_DIM_HEAD, 0, REQ),
  ML_LAYER("attn_k_norm.weight", k_norm, ML_DIM_HEAD, 0, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("post_attention_norm.weight", attn_post_norm, E, 0, REQ),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_gate.weight", w_gate, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  ML_LAYER("post_ffw_norm.weight", ffn_post_norm, E, 0, REQ),
  {0},
};

const ml_arch ml_arch_gemma3 = {"gemma3", keys, tensors, ml_gemma_hparams, ml_forward_gemma};
