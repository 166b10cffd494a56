/* arch_qwen2.c: Qwen2 / Qwen2.5: the llama block (ml_forward_llama) with biases on the q, k
 * and v projections, and RoPE on the two halves of each head (NeoX style). */
#include "arch.h"

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_rms_epsilon", ML_KEY_FLOAT, norm_eps, 0, 1e-5, 0, 1),
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
  ML_LAYER("attn_q.bias", bq, ML_DIM_Q, 0, REQ),
  ML_LAYER("attn_k.bias", bk, ML_DIM_KV, 0, REQ),
  ML_LAYER("attn_v.bias", bv, ML_DIM_KV, 0, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_gate.weight", w_gate, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  {0},
};

static int hparams(ml_hparams *hp, const ml_gguf *g, const char *path) {
  hp->rope_type = ML_ROPE_NEOX;
  return 0;
}

const ml_arch ml_arch_qwen2 = {"qwen2", keys, tensors, hparams, ml_forward_llama};
