/* forward.c: the llama-family forward pass over one chunk of tokens.
 *
 *   x = token_embd[ids]
 *   per layer:  h = rmsnorm(x) * attn_norm
 *               q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)
 *               q, k = per-head rmsnorm (qwen3), then RoPE at each token's position
 *               cache k, v;  a = causal softmax(q·kᵀ / √hd)·v over the token's sequence
 *               x += a·Woᵀ
 *               h = rmsnorm(x) * ffn_norm
 *               x += (silu(h·Wgateᵀ) * h·Wupᵀ)·Wdownᵀ
 *   logits = (rmsnorm(x) * output_norm)·Woutputᵀ, for the rows that want them
 *
 * The whole chunk runs in one OpenMP parallel region: every thread walks the layers, takes
 * its slice of each step (rows, output columns of a product, attention tiles), and meets
 * the others at a barrier where a step needs the previous one's result. A decode step of a
 * small model is then a few dozen barriers, not hundreds of thread launches. Products use
 * the prepared weights (matmul.h): the GEMV kernels for one row, GEMM for many. Attention
 * is tiled with an online softmax, so memory stays O(block), never O(n²).
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "ops.h"
#include "rowops.h"
#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Everything a thread needs in the region; read-only after setup except the buffers. */
typedef struct fwd {
  const ml_rowops *ro;
  ml_context *c;
  const ml_model *m;
  int64_t n;              /* tokens in the chunk */
  const int32_t *tokens;
  const uint8_t *want;
  float *logits, *hidden;
  int64_t n_out;          /* rows that want outputs */
  int64_t out_row[ML_MAX_BATCH]; /* their rows */
  int64_t n_tiles;
  struct { int64_t r0, n; } tiles[ML_MAX_BATCH];
  int failed;             /* a kernel refused (atomic) */
} fwd;

static void slice(int64_t n, int ith, int nth, int64_t *a, int64_t *b) {
  int64_t per = n / nth, extra = n % nth;
  *a = ith * per + ML_MIN(ith, extra);
  *b = *a + per + (ith < extra);
}

/* Rows [r0, r1): y = rmsnorm(x) * w */
static void rmsnorm_rows(const fwd *f, float *y, const float *x, int64_t r0, int64_t r1, int64_t dim, const ml_tensor *w,
                         double eps) {
  const float *pw = ml_tensor_data(w);
  for (int64_t r = r0; r < r1; r++) f->ro->rmsnorm(y + r * dim, x + r * dim, pw, dim, (float)eps);
}

static void rope_row(const ml_model *m, float *x, int64_t n_heads, int64_t pos) {
  const ml_hparams *hp = &m->hp;
  int64_t hd = hp->head_dim, half = hp->n_rot / 2;
  int neox = hp->rope_type == ML_ROPE_NEOX;
  for (int64_t k = 0; k < half; k++) {
    double th = (double)pos * (double)m->rope_inv_freq[k];
    float c = (float)cos(th), s = (float)sin(th);
    int64_t i0 = neox ? k : 2 * k, i1 = neox ? k + half : 2 * k + 1;
    for (int64_t h = 0; h < n_heads; h++) {
      float *v = x + h * hd;
      float a = v[i0], b = v[i1];
      v[i0] = a * c - b * s;
      v[i1] = a * s + b * c;
    }
  }
}

/* Rows [r0, r1): biases, per-head norms, RoPE, then the new keys and values into the cache. */
static void qkv_finish(fwd *f, const ml_layer *L, int64_t layer, int64_t r0, int64_t r1) {
  ml_context *c = f->c;
  const ml_model *m = f->m;
  const ml_hparams *hp = &m->hp;
  int64_t hd = hp->head_dim, nq = hp->n_head * hd, nkv = hp->n_head_kv * hd;
  const ml_kvcache *kv = &c->kv;
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  for (int64_t r = r0; r < r1; r++) {
    float *q = c->q + r * nq, *k = c->k + r * nkv, *v = c->v + r * nkv;
    if (L->bq.storage) {
      const float *bq = ml_tensor_data(&L->bq), *bk = ml_tensor_data(&L->bk), *bv = ml_tensor_data(&L->bv);
      for (int64_t i = 0; i < nq; i++) q[i] += bq[i];
      for (int64_t i = 0; i < nkv; i++) k[i] += bk[i], v[i] += bv[i];
    }
    if (L->q_norm.storage) {
      const float *wq = ml_tensor_data(&L->q_norm), *wk = ml_tensor_data(&L->k_norm);
      for (int64_t h = 0; h < hp->n_head; h++) f->ro->rmsnorm(q + h * hd, q + h * hd, wq, hd, (float)hp->norm_eps);
      for (int64_t h = 0; h < hp->n_head_kv; h++) f->ro->rmsnorm(k + h * hd, k + h * hd, wk, hd, (float)hp->norm_eps);
    }
    rope_row(m, q, hp->n_head, c->pos[r]);
    rope_row(m, k, hp->n_head_kv, c->pos[r]);
    /* scores are q·k / √hd: scale q once here */
    f->ro->scale(1.0f / sqrtf((float)hd), q, nq);
    uint8_t *kd = ml_kvcache_k(kv, layer, c->cell[r]), *vd = ml_kvcache_v(kv, layer, c->cell[r]);
    if (kv->type == ML_TYPE_F32) {
      memcpy(kd, k, sizeof(float) * (size_t)nkv);
      memcpy(vd, v, sizeof(float) * (size_t)nkv);
    } else if (kv->type == ML_TYPE_F16) {
      f->ro->f32_to_f16(k, (ml_fp16 *)kd, nkv);
      f->ro->f32_to_f16(v, (ml_fp16 *)vd, nkv);
    } else {
      tr->from_float(k, kd, nkv);
      tr->from_float(v, vd, nkv);
    }
  }
}

/* ---- attention ---- */

/* One tile of query rows (consecutive positions of one sequence) against one KV head, for
 * the g query heads that read it. s: this thread's scratch (att_per_thread floats). */
static void attend_tile(fwd *f, int64_t layer, int64_t t, int64_t kvh, float *s) {
  ml_context *c = f->c;
  const ml_hparams *hp = &f->m->hp;
  const ml_kvcache *kv = &c->kv;
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  int64_t hd = hp->head_dim, g = hp->n_head / hp->n_head_kv, nq = hp->n_head * hd;
  int64_t r0 = f->tiles[t].r0, nr = f->tiles[t].n;
  float *acc = s, *mx = acc + ML_ATT_TILE * g * hd, *sum = mx + ML_ATT_TILE * g, *kb = sum + ML_ATT_TILE * g,
        *vb = kb + ML_ATT_BLOCK * hd, *sc = vb + ML_ATT_BLOCK * hd;
  const int32_t *cells = kv->cells[c->seq[r0]];
  int64_t last = c->pos[r0 + nr - 1]; /* rows are in position order */
  size_t head_off = ml_type_nbytes(kv->type, kvh * hd);
  for (int64_t i = 0; i < nr * g; i++) {
    mx[i] = -INFINITY;
    sum[i] = 0;
  }
  memset(acc, 0, sizeof(float) * (size_t)(nr * g * hd));
  for (int64_t j0 = 0; j0 <= last; j0 += ML_ATT_BLOCK) {
    int64_t j1 = ML_MIN(j0 + ML_ATT_BLOCK, last + 1);
    const float *K[ML_ATT_BLOCK], *V[ML_ATT_BLOCK];
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t *kp = ml_kvcache_k(kv, layer, cells[j]) + head_off, *vp = ml_kvcache_v(kv, layer, cells[j]) + head_off;
      if (kv->type == ML_TYPE_F32) {
        K[j - j0] = (const float *)kp;
        V[j - j0] = (const float *)vp;
      } else {
        float *kd = kb + (j - j0) * hd, *vd = vb + (j - j0) * hd;
        if (kv->type == ML_TYPE_F16) {
          f->ro->f16_to_f32((const ml_fp16 *)kp, kd, hd);
          f->ro->f16_to_f32((const ml_fp16 *)vp, vd, hd);
        } else {
          tr->to_float(kp, kd, hd);
          tr->to_float(vp, vd, hd);
        }
        K[j - j0] = kd;
        V[j - j0] = vd;
      }
    }
    for (int64_t r = 0; r < nr; r++) {
      int64_t row = r0 + r, jend = ML_MIN(j1, c->pos[row] + 1);
      if (jend <= j0) continue;
      for (int64_t qh = 0; qh < g; qh++) {
        const float *qv = c->q + row * nq + (kvh * g + qh) * hd;
        float *a = acc + (r * g + qh) * hd, bmax = -INFINITY;
        for (int64_t j = j0; j < jend; j++) {
          float d = f->ro->dot(qv, K[j - j0], hd);
          sc[j - j0] = d;
          bmax = d > bmax ? d : bmax;
        }
        float *pm = &mx[r * g + qh], *ps = &sum[r * g + qh];
        float mnew = bmax > *pm ? bmax : *pm;
        float corr = expf(*pm - mnew);
        if (corr != 1.0f) {
          *ps *= corr;
          f->ro->scale(corr, a, hd);
        }
        for (int64_t j = j0; j < jend; j++) {
          float p = expf(sc[j - j0] - mnew);
          *ps += p;
          f->ro->axpy(p, V[j - j0], a, hd);
        }
        *pm = mnew;
      }
    }
  }
  for (int64_t r = 0; r < nr; r++)
    for (int64_t qh = 0; qh < g; qh++) {
      float *o = c->att + (r0 + r) * nq + (kvh * g + qh) * hd, inv = 1.0f / sum[r * g + qh];
      const float *a = acc + (r * g + qh) * hd;
      for (int64_t i = 0; i < hd; i++) o[i] = a[i] * inv;
    }
}

static void make_tiles(fwd *f) {
  ml_context *c = f->c;
  f->n_tiles = 0;
  for (int64_t r = 0; r < f->n;) {
    int64_t e = r + 1;
    while (e < f->n && e - r < ML_ATT_TILE && c->seq[e] == c->seq[r] && c->pos[e] == c->pos[e - 1] + 1) e++;
    f->tiles[f->n_tiles].r0 = r;
    f->tiles[f->n_tiles].n = e - r;
    f->n_tiles++;
    r = e;
  }
}

/* ---- products inside the region ---- */

/* Do two prepared weights read the same activation format? Then it is converted once. */
static int same_act(const ml_weight *a, const ml_weight *b) {
  return a->type == b->type && a->K == b->K && (a->packed != NULL) == (b->packed != NULL);
}

static void fail(fwd *f) { __atomic_store_n(&f->failed, 1, __ATOMIC_RELAXED); }

/* y_i = x · w_iᵀ for up to three weights sharing the input x (n rows, ldx apart). */
static void products(fwd *f, int ith, int nth, const float *x, int64_t ldx, int nw, const ml_weight *const *w,
                     float *const *y) {
  ml_context *c = f->c;
  int buf[3];
  for (int i = 0; i < nw; i++) {
    buf[i] = i;
    for (int j = 0; j < i; j++)
      if (same_act(w[i], w[j])) {
        buf[i] = buf[j];
        break;
      }
    if (buf[i] == i && ml_mm_w_quantize(w[i], x, ldx, f->n, c->act[i], ith, nth) < 0) fail(f);
  }
#pragma omp barrier
  for (int i = 0; i < nw; i++)
    if (ml_mm_w_compute(w[i], c->act[buf[i]], f->n, y[i], w[i]->N, ith, nth) < 0) fail(f);
#pragma omp barrier
}

static void layer(fwd *f, int64_t il, int ith, int nth, float *scratch) {
  ml_context *c = f->c;
  const ml_model *m = f->m;
  const ml_hparams *hp = &m->hp;
  const ml_layer *L = &m->layers[il];
  const ml_layer_w *W = &m->lw[il];
  int64_t E = hp->n_embd, n = f->n, r0, r1;
  slice(n, ith, nth, &r0, &r1);
  rmsnorm_rows(f, c->h, c->x, r0, r1, E, &L->attn_norm, hp->norm_eps);
#pragma omp barrier
  {
    const ml_weight *w[3] = {&W->wq, &W->wk, &W->wv};
    float *y[3] = {c->q, c->k, c->v};
    products(f, ith, nth, c->h, E, 3, w, y);
  }
  qkv_finish(f, L, il, r0, r1);
#pragma omp barrier
  int64_t items = f->n_tiles * hp->n_head_kv;
#pragma omp for schedule(dynamic, 1)
  for (int64_t it = 0; it < items; it++) attend_tile(f, il, it / hp->n_head_kv, it % hp->n_head_kv, scratch);
  {
    const ml_weight *w[1] = {&W->wo};
    float *y[1] = {c->h};
    products(f, ith, nth, c->att, hp->n_head * hp->head_dim, 1, w, y);
  }
  f->ro->add(c->x + r0 * E, c->h + r0 * E, (r1 - r0) * E);
  rmsnorm_rows(f, c->h, c->x, r0, r1, E, &L->ffn_norm, hp->norm_eps);
#pragma omp barrier
  {
    const ml_weight *w[2] = {&W->w_gate, &W->w_up};
    float *y[2] = {c->g, c->u};
    products(f, ith, nth, c->h, E, 2, w, y);
  }
  int64_t F = hp->n_ff, e0, e1;
  slice(n * F, ith, nth, &e0, &e1);
  f->ro->silu_mul(c->g + e0, c->u + e0, e1 - e0);
#pragma omp barrier
  {
    const ml_weight *w[1] = {&W->w_down};
    float *y[1] = {c->h};
    products(f, ith, nth, c->g, F, 1, w, y);
  }
  f->ro->add(c->x + r0 * E, c->h + r0 * E, (r1 - r0) * E);
#pragma omp barrier
}

static void run(fwd *f, int ith, int nth) {
  ml_context *c = f->c;
  const ml_model *m = f->m;
  const ml_hparams *hp = &m->hp;
  int64_t E = hp->n_embd, r0, r1;
  float *scratch = c->att_scratch + c->att_per_thread * (size_t)ith;
  /* embeddings: rows of token_embd in any type */
  const ml_tensor *e = &m->tok_embd;
  const ml_type_traits *tr = ml_type_traits_get(e->type);
  size_t rb = (size_t)(e->stride[0] / tr->blck) * tr->size;
  slice(f->n, ith, nth, &r0, &r1);
  for (int64_t i = r0; i < r1; i++)
    tr->to_float((const char *)ml_tensor_data(e) + (size_t)f->tokens[i] * rb, c->x + i * E, E);
#pragma omp barrier
  for (int64_t il = 0; il < hp->n_layer; il++) layer(f, il, ith, nth, scratch);
  if (f->n_out == 0) return;
  int64_t o0, o1;
  slice(f->n_out, ith, nth, &o0, &o1);
  for (int64_t k = o0; k < o1; k++)
    rmsnorm_rows(f, c->rows + k * E, c->x + f->out_row[k] * E, 0, 1, E, &m->output_norm, hp->norm_eps);
#pragma omp barrier
  if (f->hidden && ith == 0) memcpy(f->hidden, c->rows, sizeof(float) * (size_t)(f->n_out * E));
  if (f->logits) { /* the output product runs over the n_out gathered rows */
    const ml_weight *w = &m->output_w;
    if (ml_mm_w_quantize(w, c->rows, E, f->n_out, c->act[0], ith, nth) < 0) fail(f);
#pragma omp barrier
    if (ml_mm_w_compute(w, c->act[0], f->n_out, f->logits, w->N, ith, nth) < 0) fail(f);
  }
}

/* Threads for a chunk: one when the work is too small to split (tiny models, one token). */
static int threads_for(const ml_model *m, int64_t n) {
  return ml_threads_for(ML_WORK_CHUNK, (double)m->weight_bytes * (double)n);
}

int ml_forward(ml_context *c, int64_t n, const int32_t *tokens, const uint8_t *want, float *logits, float *hidden) {
  fwd *f = ml_alloc(sizeof *f);
  if (!f) return -1;
  f->ro = ml_rowops_get();
  f->c = c;
  f->m = c->m;
  f->n = n;
  f->tokens = tokens;
  f->want = want;
  f->logits = logits;
  f->hidden = hidden;
  f->failed = 0;
  f->n_out = 0;
  for (int64_t i = 0; i < n; i++)
    if (want[i]) f->out_row[f->n_out++] = i;
  make_tiles(f);
  int nth = ML_MIN(threads_for(c->m, n), c->max_threads);
#pragma omp parallel num_threads(nth)
  {
#ifdef _OPENMP
    run(f, omp_get_thread_num(), omp_get_num_threads());
#else
    run(f, 0, 1);
#endif
  }
  int failed = f->failed;
  ml_free(f);
  return failed ? -1 : 0;
}
