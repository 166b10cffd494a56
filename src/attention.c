/* attention.c: the attention the blocks call (ml_attention in forward.h).
 *
 * For one layer of one chunk: cache the chunk's keys and values, then for every query row
 *   att = softmax(mask(cap(q·kᵀ · scale) - slope · |i - j|))·v
 * over the keys of its own sequence that the mask lets it see: causal (j <= i), a sliding
 * window (i - window < j <= i) or the whole sequence (encoders). The product is flash.c's
 * kernel over the cache (flash-style tiles, online softmax, key ranges split over threads
 * for decode); this file says which cells each run of rows reads.
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "flash.h"
#include "forward.h"

/* The cache, layer index in it and cell column of layer il. */
static const ml_kvcache *cache_of(const ml_context *c, int64_t il, const int32_t **cells) {
  int swa = ml_layer_is_swa(&c->m->hp, il);
  *cells = swa ? c->cell_swa : c->cell;
  return swa ? &c->kv_swa : &c->kv;
}

/* Rows [r0, r1): the new keys and values into the cache. */
static void store(ml_thr *t, const ml_attn *a, int64_t r0, int64_t r1) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  int64_t nkv = hp->n_head_kv * hp->head_dim, layer = c->kv_layer[a->il];
  const int32_t *cells;
  const ml_kvcache *kv = cache_of(c, a->il, &cells);
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  for (int64_t r = r0; r < r1; r++) {
    float *k = c->k + r * nkv, *v = c->v + r * nkv;
    uint8_t *kd = ml_kvcache_k(kv, layer, cells[r]), *vd = ml_kvcache_v(kv, layer, cells[r]);
    if (kv->type == ML_TYPE_F32) {
      memcpy(kd, k, sizeof(float) * (size_t)nkv);
      memcpy(vd, v, sizeof(float) * (size_t)nkv);
    } else if (kv->type == ML_TYPE_F16) {
      t->ro->f32_to_f16(k, (ml_fp16 *)kd, nkv);
      t->ro->f32_to_f16(v, (ml_fp16 *)vd, nkv);
    } else {
      tr->from_float(k, kd, nkv);
      tr->from_float(v, vd, nkv);
    }
  }
}

/* The segments of the chunk for one cache: each run of rows of one sequence reads that
 * sequence's cells, position off onwards. */
void ml_attention_segments(const ml_context *c, const ml_kvcache *kv, const ml_fwd *f, ml_flash_seg *seg) {
  for (int i = 0; i < f->n_runs; i++) {
    int sq = c->seq[f->runs[i].r0];
    seg[i] = (ml_flash_seg){f->runs[i].r0, f->runs[i].n, kv->cells[sq], kv->len[sq] - kv->off[sq], kv->off[sq]};
  }
}

void ml_attention(ml_thr *t, const ml_attn *a) {
  const ml_hparams *hp = t->hp;
  ml_context *c = t->c;
  store(t, a, t->r0, t->r1);
  if (t->ith == 0) c->layer_rope[a->il] = a->inv_freq; /* what a context shift must rotate by */
  t->dirty = 1;
  ml_sync(t);
  int swa = ml_layer_is_swa(hp, a->il);
  const ml_kvcache *kv = swa ? &c->kv_swa : &c->kv;
  int64_t layer = c->kv_layer[a->il], nq = hp->n_head * hp->head_dim;
  ml_flash_args fa = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim, .n_q = t->n,
                      .q = c->q, .ldq = nq, .out = c->att, .ldo = nq, .qpos = c->pos, .kv_type = kv->type,
                      .k = kv->k[layer], .v = kv->v[layer], .row_bytes = kv->row_bytes, .n_seg = t->f->n_runs,
                      .seg = t->f->seg[swa], .scale = a->scale, .softcap = a->softcap, .causal = a->causal,
                      .window = a->window, .slopes = a->alibi};
  ml_flash(&fa, c->flash_work);
  t->dirty = 0; /* ml_flash ends with a barrier */
}
