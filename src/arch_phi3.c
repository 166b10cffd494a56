/* arch_phi3.c: Phi-3, Phi-3.5 and Phi-4 (converted as "phi3"): the llama block
 * (ml_forward_llama) with q, k and v in one matrix (attn_qkv, rows [q; k; v]) and gate and
 * up in one (ffn_up, rows [gate; up]), NeoX RoPE over rope.dimension_count dims, an untied
 * output. The 128k models carry LongRoPE factors (rope_factors_short / _long): a context
 * whose sequences may run past rope.scaling.original_context_length uses the long ones,
 * and rope.scaling.attn_factor multiplies the rotated q and k, as llama.cpp does.
 * A phi3.attention.sliding_window key (real Phi-3 files carry one) is not used: llama.cpp
 * runs phi3 without a window, and so does moonlm. */
#include "arch.h"

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_rms_epsilon", ML_KEY_FLOAT, norm_eps, 1, 1e-5, 0, 1),
  {0},
};

static const ml_tensor_decl tensors[] = {
  ML_GLOBAL("token_embd.weight", tok_embd, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("output_norm.weight", output_norm, E, 0, REQ),
  ML_GLOBAL("output.weight", output, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("rope_factors_short.weight", rope_short, ML_DIM_ROT2, 0, 0),
  ML_GLOBAL("rope_factors_long.weight", rope_long, ML_DIM_ROT2, 0, 0),
  ML_LAYER("attn_norm.weight", attn_norm, E, 0, REQ),
  ML_LAYER("attn_qkv.weight", wqkv, ML_DIM_QKV, E, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF2, E, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  {0},
};

static int hparams(ml_hparams *hp, const ml_gguf *g, const char *path) {
  hp->rope_type = ML_ROPE_NEOX;
  return 0;
}

const ml_arch ml_arch_phi3 = {"phi3", keys, tensors, hparams, ml_forward_llama};
