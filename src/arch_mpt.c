/* arch_mpt.c: MPT (MPT-7B, Intel's Q8-Chat): LayerNorm (biases optional), q, k and v in one
 * matrix clamped to [-clamp_kqv, clamp_kqv], no RoPE but ALiBi (each head's scores lose
 * slope_h · distance), GELU feed-forward, output tied to the embeddings unless given. */
#include "arch.h"

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_epsilon", ML_KEY_FLOAT, norm_eps, 1, 1e-5, 0, 1),
  ML_KEY("attention.max_alibi_bias", ML_KEY_FLOAT, alibi_bias, 0, 0, 0, 1e6),
  ML_KEY("attention.clamp_kqv", ML_KEY_FLOAT, clamp_kqv, 0, 0, 0, 1e30),
  {0},
};

static const ml_tensor_decl tensors[] = {
  ML_GLOBAL("token_embd.weight", tok_embd, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("output_norm.weight", output_norm, E, 0, REQ),
  ML_GLOBAL("output_norm.bias", output_norm_b, E, 0, 0),
  ML_GLOBAL("output.weight", output, ML_DIM_VOCAB, E, 0), /* absent: tied */
  ML_LAYER("attn_norm.weight", attn_norm, E, 0, REQ),
  ML_LAYER("attn_norm.bias", attn_norm_b, E, 0, 0),
  ML_LAYER("attn_qkv.weight", wqkv, ML_DIM_QKV, E, REQ),
  ML_LAYER("attn_qkv.bias", bqkv, ML_DIM_QKV, 0, 0),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("attn_output.bias", bo, E, 0, 0),
  ML_LAYER("ffn_norm.weight", ffn_norm, E, 0, REQ),
  ML_LAYER("ffn_norm.bias", ffn_norm_b, E, 0, 0),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.bias", b_up, ML_DIM_FF, 0, 0),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  ML_LAYER("ffn_down.bias", b_down, E, 0, 0),
  {0},
};

/*   x = token_embd[ids]
 *   per layer:  q, k, v = clamp((layernorm(x) * attn_norm + b)·Wqkvᵀ + b)
 *               x += (causal softmax(q·kᵀ / √hd - slope_h · (i - j))·v)·Woᵀ + bo
 *               x += gelu(h·Wupᵀ + bu)·Wdownᵀ + bd with h = layernorm(x) * ffn_norm + b
 *   logits = (layernorm(x) * output_norm + b)·Woutputᵀ */
static void forward(ml_thr *t) {
  const ml_model *m = t->m;
  const ml_hparams *hp = t->hp;
  ml_context *c = t->c;
  int64_t nq = hp->n_head * hp->head_dim;
  ml_blk_embed(t, 1.0f);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    const ml_layer *L = &m->layers[il];
    const ml_layer_w *W = ml_layer_weights(t, il);
    ml_attn a = {.il = il, .scale = (float)hp->attn_scale, .alibi = m->alibi_slopes, .causal = 1};
    ml_blk_norm(t, c->h, c->x, hp->n_embd, ML_NORM_LAYER, &L->attn_norm, &L->attn_norm_b);
    ml_blk_qkv(t, L, W);
    ml_blk_attention(t, &a);
    ml_blk_linear(t, &W->wo, &L->bo, c->att, nq, c->h);
    ml_blk_add(t, c->x, c->h, hp->n_embd);
    ml_blk_norm(t, c->h, c->x, hp->n_embd, ML_NORM_LAYER, &L->ffn_norm, &L->ffn_norm_b);
    ml_blk_ffn(t, L, W, ML_FFN_GELU);
    ml_blk_add(t, c->x, c->h, hp->n_embd);
  }
  ml_blk_output(t, ML_NORM_LAYER, &m->output_norm, &m->output_norm_b);
}

const ml_arch ml_arch_mpt = {"mpt", keys, tensors, NULL, forward};
