/* attention.c: the attention kernel the blocks call (ml_attention in forward.h).
 *
 * For one layer of one chunk: cache the chunk's keys and values, then for every query row
 *   att = softmax(mask(cap(q·kᵀ · scale) - slope · (i - j)))·v
 * over the keys of its own sequence that the mask lets it see: causal (j <= i), a sliding
 * window (i - window < j <= i) or the whole sequence (encoders). Work is tiled: up to
 * ML_ATT_TILE query rows of consecutive positions of one sequence share each block of
 * ML_ATT_BLOCK keys, converted to f32 once, per KV head for the query heads that read it
 * (GQA), with an online softmax, so memory stays O(block), never O(n²).
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "forward.h"

/* The cache, layer index in it and cell column of layer il. */
static const ml_kvcache *cache_of(const ml_context *c, int64_t il, const int32_t **cells) {
  int swa = ml_layer_is_swa(&c->m->hp, il);
  *cells = swa ? c->cell_swa : c->cell;
  return swa ? &c->kv_swa : &c->kv;
}

/* Rows [r0, r1): q scaled (scores are q·k · scale), the new keys and values into the cache. */
static void store(ml_thr *t, const ml_attn *a, int64_t r0, int64_t r1) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  int64_t nq = hp->n_head * hp->head_dim, nkv = hp->n_head_kv * hp->head_dim, layer = c->kv_layer[a->il];
  const int32_t *cells;
  const ml_kvcache *kv = cache_of(c, a->il, &cells);
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  for (int64_t r = r0; r < r1; r++) {
    float *q = c->q + r * nq, *k = c->k + r * nkv, *v = c->v + r * nkv;
    t->ro->scale(a->scale, q, nq);
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

/* The keys row `row` sees: [*lo, *hi). */
static void key_range(const ml_context *c, const ml_attn *a, const ml_kvcache *kv, int64_t row, int64_t *lo,
                      int64_t *hi) {
  int64_t p = c->pos[row];
  if (!a->causal) {
    *lo = 0;
    *hi = kv->len[c->seq[row]];
    return;
  }
  *hi = p + 1;
  *lo = a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
}

/* One tile of query rows against one KV head, for the g query heads that read it.
 * s: this thread's scratch (att_per_thread floats). */
static void attend_tile(ml_thr *t, const ml_attn *a, int64_t tile, int64_t kvh, float *s) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  const ml_rowops *ro = t->ro;
  const int32_t *cells_col;
  const ml_kvcache *kv = cache_of(c, a->il, &cells_col);
  int64_t layer = c->kv_layer[a->il];
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  int64_t hd = hp->head_dim, g = hp->n_head / hp->n_head_kv, nq = hp->n_head * hd;
  int64_t r0 = t->f->tiles[tile].r0, nr = t->f->tiles[tile].n;
  float *acc = s, *mx = acc + ML_ATT_TILE * g * hd, *sum = mx + ML_ATT_TILE * g, *kb = sum + ML_ATT_TILE * g,
        *vb = kb + ML_ATT_BLOCK * hd, *sc = vb + ML_ATT_BLOCK * hd;
  int sq = c->seq[r0];
  const int32_t *cells = kv->cells[sq];
  int64_t off = kv->off[sq];
  /* rows are in position order: the first row's range starts the tile's, the last ends it */
  int64_t jlo, jhi, lo_last, hi_first;
  key_range(c, a, kv, r0, &jlo, &hi_first);
  key_range(c, a, kv, r0 + nr - 1, &lo_last, &jhi);
  size_t head_off = ml_type_nbytes(kv->type, kvh * hd);
  float cap = a->softcap;
  for (int64_t i = 0; i < nr * g; i++) {
    mx[i] = -INFINITY;
    sum[i] = 0;
  }
  memset(acc, 0, sizeof(float) * (size_t)(nr * g * hd));
  for (int64_t j0 = jlo; j0 < jhi; j0 += ML_ATT_BLOCK) {
    int64_t j1 = ML_MIN(j0 + ML_ATT_BLOCK, jhi);
    const float *K[ML_ATT_BLOCK], *V[ML_ATT_BLOCK];
    for (int64_t j = j0; j < j1; j++) {
      int32_t cell = cells[j - off];
      const uint8_t *kp = ml_kvcache_k(kv, layer, cell) + head_off, *vp = ml_kvcache_v(kv, layer, cell) + head_off;
      if (kv->type == ML_TYPE_F32) {
        K[j - j0] = (const float *)kp;
        V[j - j0] = (const float *)vp;
      } else {
        float *kd = kb + (j - j0) * hd, *vd = vb + (j - j0) * hd;
        if (kv->type == ML_TYPE_F16) {
          ro->f16_to_f32((const ml_fp16 *)kp, kd, hd);
          ro->f16_to_f32((const ml_fp16 *)vp, vd, hd);
        } else {
          tr->to_float(kp, kd, hd);
          tr->to_float(vp, vd, hd);
        }
        K[j - j0] = kd;
        V[j - j0] = vd;
      }
    }
    for (int64_t r = 0; r < nr; r++) {
      int64_t row = r0 + r, lo, hi;
      key_range(c, a, kv, row, &lo, &hi);
      int64_t ja = ML_MAX(j0, lo), jb = ML_MIN(j1, hi);
      if (jb <= ja) continue;
      for (int64_t qh = 0; qh < g; qh++) {
        const float *qv = c->q + row * nq + (kvh * g + qh) * hd;
        float *acc_r = acc + (r * g + qh) * hd, bmax = -INFINITY;
        for (int64_t j = ja; j < jb; j++) sc[j - j0] = ro->dot(qv, K[j - j0], hd);
        if (cap > 0)
          for (int64_t j = ja; j < jb; j++) sc[j - j0] = cap * tanhf(sc[j - j0] / cap);
        if (a->alibi) {
          float slope = a->alibi[kvh * g + qh];
          int64_t p = c->pos[row];
          for (int64_t j = ja; j < jb; j++) sc[j - j0] -= slope * (float)(p > j ? p - j : j - p);
        }
        for (int64_t j = ja; j < jb; j++) bmax = sc[j - j0] > bmax ? sc[j - j0] : bmax;
        float *pm = &mx[r * g + qh], *ps = &sum[r * g + qh];
        float mnew = bmax > *pm ? bmax : *pm;
        float corr = expf(*pm - mnew);
        if (corr != 1.0f) {
          *ps *= corr;
          ro->scale(corr, acc_r, hd);
        }
        for (int64_t j = ja; j < jb; j++) {
          float p = expf(sc[j - j0] - mnew);
          *ps += p;
          ro->axpy(p, V[j - j0], acc_r, hd);
        }
        *pm = mnew;
      }
    }
  }
  for (int64_t r = 0; r < nr; r++)
    for (int64_t qh = 0; qh < g; qh++) {
      float *o = c->att + (r0 + r) * nq + (kvh * g + qh) * hd, inv = 1.0f / sum[r * g + qh];
      const float *acc_r = acc + (r * g + qh) * hd;
      for (int64_t i = 0; i < hd; i++) o[i] = acc_r[i] * inv;
    }
}

void ml_attention(ml_thr *t, const ml_attn *a) {
  const ml_hparams *hp = t->hp;
  store(t, a, t->r0, t->r1);
  t->dirty = 1;
  ml_sync(t);
  int64_t items = t->f->n_tiles * hp->n_head_kv;
#pragma omp for schedule(dynamic, 1)
  for (int64_t it = 0; it < items; it++) attend_tile(t, a, it / hp->n_head_kv, it % hp->n_head_kv, t->scratch);
  t->dirty = 0; /* the loop ends with a barrier */
}
