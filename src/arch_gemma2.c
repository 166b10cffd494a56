/* arch_gemma2.c: Gemma 2 (and Gemma 3, arch_gemma3.c, which adds per-head q/k norms and a
 * RoPE base of its own for the local layers): token embeddings scaled by sqrt(n_embd),
 * RMSNorm before and after both the attention and the FFN, GeGLU, scores soft-capped
 * (cap · tanh(s / cap)) and the logits too, sliding-window attention on the local layers
 * (il % pattern < pattern - 1: every other layer), NeoX RoPE over the whole head, an
 * explicit head size (key_length) which also sets the q scale, and the output tied to the
 * embeddings. The converter stores each norm weight as the full multiplier (1 + w). */
#include "arch.h"

#include <math.h>

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_rms_epsilon", ML_KEY_FLOAT, norm_eps, 1, 1e-6, 0, 1),
  ML_KEY("attn_logit_softcapping", ML_KEY_FLOAT, attn_softcap, 0, 50.0, 0, 1e30),
  ML_KEY("final_logit_softcapping", ML_KEY_FLOAT, final_softcap, 0, 30.0, 0, 1e30),
  ML_KEY("attention.sliding_window", ML_KEY_INT, n_swa, 0, 4096, 0, INT32_MAX),
  ML_KEY("attention.sliding_window_pattern", ML_KEY_INT, swa_pattern, 0, 2, 0, 4096),
  {0},
};

/* gemma2 and gemma3 (which adds attn_q_norm / attn_k_norm) */
static const ml_tensor_decl tensors[] = {
  ML_GLOBAL("token_embd.weight", tok_embd, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("output_norm.weight", output_norm, E, 0, REQ),
  ML_GLOBAL("output.weight", output, ML_DIM_VOCAB, E, 0), /* absent: tied */
  ML_LAYER("attn_norm.weight", attn_norm, E, 0, REQ),
  ML_LAYER("attn_q.weight", wq, ML_DIM_Q, E, REQ),
  ML_LAYER("attn_k.weight", wk, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_v.weight", wv, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("post_attention_norm.weight", attn_post_norm, E, 0, REQ),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_gate.weight", w_gate, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  ML_LAYER("post_ffw_norm.weight", ffn_post_norm, E, 0, REQ),
  {0},
};

int ml_gemma_hparams(ml_hparams *hp, const ml_gguf *g, const char *path) {
  hp->rope_type = ML_ROPE_NEOX;
  hp->embd_scale = sqrtf((float)hp->n_embd);
  /* q is scaled by 1/sqrt(key_length), except in the 27B models (46 and 62 layers), whose
   * query_pre_attn_scalar llama.cpp hard-codes as n_embd / n_head */
  if (hp->n_layer == 46 || hp->n_layer == 62) hp->attn_scale = 1.0 / sqrt((double)(hp->n_embd / hp->n_head));
  else hp->attn_scale = 1.0 / sqrt((double)hp->head_dim);
  return 0;
}

/*   x = token_embd[ids] * sqrt(n_embd)
 *   per layer:  h = rmsnorm(x) * attn_norm
 *               q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ; q, k = rmsnorm per head * q/k_norm (gemma3)
 *               a = softmax(cap · tanh(q·kᵀ / √hd / cap) masked: causal, local layers
 *                   only the last n_swa positions)·v, RoPE NeoX on q, k first
 *               x += rmsnorm(a·Woᵀ) * post_attention_norm
 *               x += rmsnorm(down(gelu(h·Wgateᵀ) * h·Wupᵀ)) * post_ffw_norm, h = rmsnorm(x) * ffn_norm
 *   logits = cap · tanh((rmsnorm(x) * output_norm)·token_embdᵀ / cap) */
void ml_forward_gemma(ml_thr *t) {
  const ml_model *m = t->m;
  const ml_hparams *hp = t->hp;
  ml_context *c = t->c;
  int64_t E_ = hp->n_embd, nq = hp->n_head * hp->head_dim;
  ml_blk_embed(t, (float)hp->embd_scale);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    const ml_layer *L = &m->layers[il];
    const ml_layer_w *W = ml_layer_weights(t, il);
    int local = ml_layer_is_swa(hp, il);
    ml_attn a = {.il = il, .inv_freq = local && m->rope_inv_freq_swa ? m->rope_inv_freq_swa : ml_rope_table(t),
                 .rope_mscale = 1.0f, .scale = (float)hp->attn_scale, .softcap = (float)hp->attn_softcap,
                 .window = local ? hp->n_swa : 0, .causal = 1};
    ml_blk_norm(t, c->h, c->x, E_, ML_NORM_RMS, &L->attn_norm, NULL);
    ml_blk_qkv(t, L, W);
    if (L->q_norm.storage) ml_blk_qk_norm(t, &L->q_norm, &L->k_norm);
    ml_blk_attention(t, &a);
    ml_blk_linear(t, &W->wo, NULL, c->att, nq, c->h);
    ml_blk_norm(t, c->h, c->h, E_, ML_NORM_RMS, &L->attn_post_norm, NULL);
    ml_blk_add(t, c->x, c->h, E_);
    ml_blk_norm(t, c->h, c->x, E_, ML_NORM_RMS, &L->ffn_norm, NULL);
    ml_blk_ffn(t, L, W, ML_FFN_GEGLU);
    ml_blk_norm(t, c->h, c->h, E_, ML_NORM_RMS, &L->ffn_post_norm, NULL);
    ml_blk_add(t, c->x, c->h, E_);
  }
  ml_blk_output(t, ML_NORM_RMS, &m->output_norm, NULL);
}

const ml_arch ml_arch_gemma2 = {"gemma2", keys, tensors, ml_gemma_hparams, ml_forward_gemma};
