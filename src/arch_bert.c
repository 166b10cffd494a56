/* arch_bert.c: BERT encoders (BGE, MiniLM, all-MiniLM, e5 ... converted as "bert"):
 * token + learned position + token-type embeddings under a LayerNorm, post-LN layers,
 * attention over the whole sequence (no mask, no cache kept between calls), GELU
 * feed-forward, no output head: the final hidden states are the result, pooled as the
 * file's pooling_type says (model:embed). Token types are all 0, as in llama.cpp. A
 * reranker (cross-encoder) carries a classifier head cls / cls.output, read by rank
 * pooling. */
#include "arch.h"

#include "common.h"

#define E ML_DIM_EMBD
#define REQ ML_T_REQUIRED

static const ml_key_decl keys[] = {
  ML_KEY("attention.layer_norm_epsilon", ML_KEY_FLOAT, norm_eps, 1, 1e-12, 0, 1),
  ML_KEY("attention.causal", ML_KEY_BOOL, causal, 0, 0, 0, 1),
  ML_KEY("pooling_type", ML_KEY_UINT_ENUM, pooling, 0, ML_POOL_NONE, ML_POOL_NONE, ML_POOL_RANK),
  {0},
};

static const ml_tensor_decl tensors[] = {
  ML_GLOBAL("token_embd.weight", tok_embd, ML_DIM_VOCAB, E, REQ),
  ML_GLOBAL("token_types.weight", tok_types, ML_DIM_TYPES, E, REQ),
  ML_GLOBAL("position_embd.weight", pos_embd, ML_DIM_POS, E, REQ),
  ML_GLOBAL("token_embd_norm.weight", tok_norm, E, 0, REQ),
  ML_GLOBAL("token_embd_norm.bias", tok_norm_b, E, 0, REQ),
  ML_GLOBAL("cls.weight", cls, E, E, 0),
  ML_GLOBAL("cls.bias", cls_b, E, 0, 0),
  ML_GLOBAL("cls.output.weight", cls_out, ML_DIM_CLASSES, E, 0),
  ML_GLOBAL("cls.output.bias", cls_out_b, ML_DIM_CLASSES, 0, 0),
  ML_LAYER("attn_q.weight", wq, ML_DIM_Q, E, REQ),
  ML_LAYER("attn_q.bias", bq, ML_DIM_Q, 0, REQ),
  ML_LAYER("attn_k.weight", wk, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_k.bias", bk, ML_DIM_KV, 0, REQ),
  ML_LAYER("attn_v.weight", wv, ML_DIM_KV, E, REQ),
  ML_LAYER("attn_v.bias", bv, ML_DIM_KV, 0, REQ),
  ML_LAYER("attn_output.weight", wo, E, ML_DIM_Q, REQ),
  ML_LAYER("attn_output.bias", bo, E, 0, REQ),
  ML_LAYER("attn_output_norm.weight", attn_out_norm, E, 0, REQ),
  ML_LAYER("attn_output_norm.bias", attn_out_norm_b, E, 0, REQ),
  ML_LAYER("ffn_up.weight", w_up, ML_DIM_FF, E, REQ),
  ML_LAYER("ffn_up.bias", b_up, ML_DIM_FF, 0, REQ),
  ML_LAYER("ffn_down.weight", w_down, E, ML_DIM_FF, REQ),
  ML_LAYER("ffn_down.bias", b_down, E, 0, REQ),
  ML_LAYER("layer_output_norm.weight", out_norm, E, 0, REQ),
  ML_LAYER("layer_output_norm.bias", out_norm_b, E, 0, REQ),
  {0},
};

static int hparams(ml_hparams *hp, const ml_gguf *g, const char *path) {
  int64_t i = ml_gguf_find_tensor(g, "cls.output.weight");
  hp->n_classes = i < 0 ? 0 : g->tensors[i].n_dims >= 2 ? g->tensors[i].ne[1] : 1;
  hp->n_token_types = ml_gguf_get_int(g, "tokenizer.ggml.token_type_count", 2);
  if (hp->n_token_types < 1 || hp->n_token_types > 1024) {
    ml_seterr("%s: tokenizer.ggml.token_type_count = %lld is out of range [1, 1024]", path,
              (long long)hp->n_token_types);
    return -1;
  }
  if (hp->causal) {
    ml_seterr("%s: bert.attention.causal is true: moonlm runs bert as an encoder only", path);
    return -1;
  }
  return 0;
}

/*   x = layernorm(token_embd[ids] + token_types[0] + position_embd[pos]) * w + b
 *   per layer:  x = layernorm(x + attention(x)·Woᵀ + bo) * attn_output_norm + b
 *                   (q, k, v = x·Wᵀ + b; every token sees its whole sequence)
 *               x = layernorm(x + gelu(x·Wupᵀ + bu)·Wdownᵀ + bd) * layer_output_norm + b
 *   hidden states = x (no output head) */
static void forward(ml_thr *t) {
  const ml_model *m = t->m;
  const ml_hparams *hp = t->hp;
  ml_context *c = t->c;
  int64_t E_ = hp->n_embd, nq = hp->n_head * hp->head_dim;
  ml_blk_embed(t, 1.0f);
  ml_blk_embed_add(t, &m->tok_types, 0);
  ml_blk_embed_add(t, &m->pos_embd, 1);
  ml_blk_norm(t, c->x, c->x, E_, ML_NORM_LAYER, &m->tok_norm, &m->tok_norm_b);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    const ml_layer *L = &m->layers[il];
    const ml_layer_w *W = ml_layer_weights(t, il);
    ml_attn a = {.il = il, .scale = (float)hp->attn_scale, .causal = 0};
    ml_blk_norm(t, c->h, c->x, E_, ML_NORM_NONE, NULL, NULL);
    ml_blk_qkv(t, L, W);
    ml_blk_attention(t, &a);
    ml_blk_linear(t, &W->wo, &L->bo, c->att, nq, c->h);
    ml_blk_add(t, c->x, c->h, E_);
    ml_blk_norm(t, c->x, c->x, E_, ML_NORM_LAYER, &L->attn_out_norm, &L->attn_out_norm_b);
    ml_blk_norm(t, c->h, c->x, E_, ML_NORM_NONE, NULL, NULL);
    ml_blk_ffn(t, L, W, ML_FFN_GELU);
    ml_blk_add(t, c->x, c->h, E_);
    ml_blk_norm(t, c->x, c->x, E_, ML_NORM_LAYER, &L->out_norm, &L->out_norm_b);
  }
  ml_blk_output(t, ML_NORM_NONE, NULL, NULL);
}

const ml_arch ml_arch_bert = {"bert", keys, tensors, hparams, forward};
