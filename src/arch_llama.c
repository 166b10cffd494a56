/* arch_llama.c: Llama 1/2/3, TinyLlama, Mistral, SmolLM and everything else converted as
 * "llama": RMSNorm, RoPE on adjacent pairs, SwiGLU, optional q/k/v/o biases. Llama
 * 3.1-style frequency scaling arrives as the rope_freqs.weight tensor. The same block
 * serves qwen2 (biases) and qwen3 (per-head q/k norms): ml_forward_llama. */
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
  ML_GLOBAL("output.weight", output, ML_DIM_VOCAB, E, 0), /* absent: tied to token_embd */
  ML_GLOBAL("rope_freqs.weight", rope_freqs, ML_DIM_ROT2, 0, 0),
  ML_LAYER("attn_norm.weight", attn_norm, E, 0, REQ),
  ML_LAYER("attn_q.weight", wq, ML_DIM_Q, E, REQ),
  ML_LAYER("attn_k.weight", wk, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_v.weight", wv, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("attn_q.bias", bq, ML_DIM_Q, 0, 0),
  ML_LAYER("attn_k.bias", bk, ML_DIM_KV, 0, 0),
  ML_LAYER("attn_v.bias", bv, ML_DIM_KV, 0, 0),
  ML_LAYER("attn_output.bias", bo, E, 0, 0),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_gate.weight", w_gate, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  {0},
};

/*   x = token_embd[ids]
 *   per layer:  h = rmsnorm(x) * attn_norm
 *               q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)
 *               q, k = per-head rmsnorm (qwen3), then RoPE at each token's position
 *               x += (causal softmax(q·kᵀ / √hd)·v)·Woᵀ
 *               x += (silu(h·Wgateᵀ) * h·Wupᵀ)·Wdownᵀ with h = rmsnorm(x) * ffn_norm
 *   logits = (rmsnorm(x) * output_norm)·Woutputᵀ, for the rows that want them */
void ml_forward_llama(ml_thr *t) {
  const ml_model *m = t->m;
  const ml_hparams *hp = t->hp;
  ml_context *c = t->c;
  int64_t nq = hp->n_head * hp->head_dim;
  ml_blk_embed(t, 1.0f);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    const ml_layer *L = &m->layers[il];
    const ml_layer_w *W = ml_layer_weights(t, il);
    ml_attn a = {.il = il, .inv_freq = ml_rope_table(t), .rope_mscale = (float)hp->rope_attn_factor,
                 .scale = (float)hp->attn_scale, .causal = 1};
    ml_blk_norm(t, c->h, c->x, hp->n_embd, ML_NORM_RMS, &L->attn_norm, NULL);
    ml_blk_qkv(t, L, W);
    if (L->q_norm.storage) ml_blk_qk_norm(t, &L->q_norm, &L->k_norm);
    ml_blk_attention(t, &a);
    ml_blk_linear(t, &W->wo, &L->bo, c->att, nq, c->h);
    ml_blk_add(t, c->x, c->h, hp->n_embd);
    ml_blk_norm(t, c->h, c->x, hp->n_embd, ML_NORM_RMS, &L->ffn_norm, NULL);
    ml_blk_ffn(t, L, W, ML_FFN_SWIGLU);
    ml_blk_add(t, c->x, c->h, hp->n_embd);
  }
  ml_blk_output(t, ML_NORM_RMS, &m->output_norm, NULL);
}

const ml_arch ml_arch_llama = {"llama", keys, tensors, NULL, ml_forward_llama};
