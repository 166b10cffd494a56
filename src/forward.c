/* forward.c: the chunk driver and the shared blocks of forward.h.
 *
 * ml_forward runs a chunk of tokens in one OpenMP parallel region: every thread calls the
 * family's forward function (arch_<name>.c), which walks the layers as the model reads,
 * block by block; each block takes the thread's slice of its work and the threads meet at
 * a barrier only where a block reads what others wrote. A decode step of a small model is
 * then a few dozen barriers, not hundreds of thread launches. Products use the prepared
 * weights (matmul.h): the GEMV kernels for one row, GEMM for many. Attention is
 * attention.c's kernel.
 */
#include "forward.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "arch.h"
#include "common.h"
#include "ops.h"
#include "rope.h"
#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static void slice(int64_t n, int ith, int nth, int64_t *a, int64_t *b) {
  int64_t per = n / nth, extra = n % nth;
  *a = ith * per + ML_MIN(ith, extra);
  *b = *a + per + (ith < extra);
}

static void fail(ml_fwd *f) { __atomic_store_n(&f->failed, 1, __ATOMIC_RELAXED); }

static void barrier(ml_thr *t) {
#pragma omp barrier
  t->dirty = 0;
}

void ml_sync(ml_thr *t) {
  if (t->dirty) barrier(t);
}

const ml_layer_w *ml_layer_weights(const ml_thr *t, int64_t il) { return &t->m->lw[il]; }
const float *ml_rope_table(const ml_thr *t) { return t->c->rope; }

static const float *vec(const ml_tensor *w) { return w->storage ? ml_tensor_data(w) : NULL; }

/* ---- embeddings ---- */

void ml_blk_embed(ml_thr *t, float scale) {
  const ml_tensor *e = &t->m->tok_embd;
  const ml_type_traits *tr = ml_type_traits_get(e->type);
  size_t rb = (size_t)(e->stride[0] / tr->blck) * tr->size;
  int64_t E = t->hp->n_embd;
  for (int64_t i = t->r0; i < t->r1; i++) {
    float *x = t->c->x + i * E;
    tr->to_float((const char *)ml_tensor_data(e) + (size_t)t->f->tokens[i] * rb, x, E);
    if (scale != 1.0f) t->ro->scale(scale, x, E);
  }
  t->dirty = 1;
}

void ml_blk_embed_add(ml_thr *t, const ml_tensor *tab, int by_position) {
  const ml_type_traits *tr = ml_type_traits_get(tab->type);
  size_t rb = (size_t)(tab->stride[0] / tr->blck) * tr->size;
  int64_t E = t->hp->n_embd;
  float *row = t->scratch; /* at least E floats (context.c) */
  for (int64_t i = t->r0; i < t->r1; i++) {
    int64_t r = by_position ? t->c->pos[i] : 0;
    tr->to_float((const char *)ml_tensor_data(tab) + (size_t)r * rb, row, E);
    t->ro->add(t->c->x + i * E, row, E);
  }
  t->dirty = 1;
}

/* ---- norms and row arithmetic ---- */

static void norm_row(const ml_thr *t, float *y, const float *x, int64_t dim, ml_norm_kind kind, const float *w,
                     const float *b) {
  float eps = (float)t->hp->norm_eps;
  switch (kind) {
  case ML_NORM_NONE:
    if (y != x) memcpy(y, x, sizeof(float) * (size_t)dim);
    break;
  case ML_NORM_RMS:
    t->ro->rmsnorm(y, x, w, dim, eps);
    break;
  case ML_NORM_LAYER:
    t->ro->layernorm(y, x, w, b, dim, eps);
    break;
  }
}

void ml_blk_norm(ml_thr *t, float *y, const float *x, int64_t dim, ml_norm_kind kind, const ml_tensor *w,
                 const ml_tensor *b) {
  const float *pw = w ? vec(w) : NULL, *pb = b ? vec(b) : NULL;
  for (int64_t r = t->r0; r < t->r1; r++) norm_row(t, y + r * dim, x + r * dim, dim, kind, pw, pb);
  t->dirty = 1;
}

void ml_blk_add(ml_thr *t, float *y, const float *x, int64_t dim) {
  t->ro->add(y + t->r0 * dim, x + t->r0 * dim, (t->r1 - t->r0) * dim);
  t->dirty = 1;
}

static void add_bias_rows(ml_thr *t, float *y, int64_t ld, const float *b, int64_t n) {
  for (int64_t r = t->r0; r < t->r1; r++) t->ro->add(y + r * ld, b, n);
  t->dirty = 1;
}

/* ---- products ---- */

/* Do two prepared weights read the same activation format? Then it is converted once. */
static int same_act(const ml_weight *a, const ml_weight *b) {
  return a->type == b->type && a->K == b->K && (a->packed != NULL) == (b->packed != NULL);
}

void ml_blk_products(ml_thr *t, const float *x, int64_t ldx, int nw, const ml_weight *const *w, float *const *y) {
  ml_context *c = t->c;
  int buf[3];
  ml_sync(t);
  for (int i = 0; i < nw; i++) {
    buf[i] = i;
    for (int j = 0; j < i; j++)
      if (same_act(w[i], w[j])) {
        buf[i] = buf[j];
        break;
      }
    if (buf[i] == i && ml_mm_w_quantize(w[i], x, ldx, t->n, c->act[i], t->ith, t->nth) < 0) fail(t->f);
  }
  barrier(t);
  for (int i = 0; i < nw; i++)
    if (ml_mm_w_compute(w[i], c->act[buf[i]], t->n, y[i], w[i]->N, t->ith, t->nth) < 0) fail(t->f);
  barrier(t);
}

void ml_blk_linear(ml_thr *t, const ml_weight *w, const ml_tensor *b, const float *x, int64_t ldx, float *y) {
  const ml_weight *ws[1] = {w};
  float *ys[1] = {y};
  ml_blk_products(t, x, ldx, 1, ws, ys);
  if (b && b->storage) add_bias_rows(t, y, w->N, ml_tensor_data(b), w->N);
}

void ml_blk_qkv(ml_thr *t, const ml_layer *L, const ml_layer_w *W) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  int64_t E = hp->n_embd, nq = hp->n_head * hp->head_dim, nkv = hp->n_head_kv * hp->head_dim;
  float lim = (float)hp->clamp_kqv;
  if (L->wqkv.storage) { /* one product [q; k; v], split into the three buffers with bias and clamp */
    int64_t w3 = nq + 2 * nkv;
    const ml_weight *ws[1] = {&W->wqkv};
    float *ys[1] = {c->tmp};
    ml_blk_products(t, c->h, E, 1, ws, ys);
    const float *b = L->bqkv.storage ? ml_tensor_data(&L->bqkv) : NULL;
    for (int64_t r = t->r0; r < t->r1; r++) {
      const float *s = c->tmp + r * w3;
      t->ro->add_clamp(c->q + r * nq, s, b, nq, lim);
      t->ro->add_clamp(c->k + r * nkv, s + nq, b ? b + nq : NULL, nkv, lim);
      t->ro->add_clamp(c->v + r * nkv, s + nq + nkv, b ? b + nq + nkv : NULL, nkv, lim);
    }
    t->dirty = 1;
    return;
  }
  const ml_weight *w[3] = {&W->wq, &W->wk, &W->wv};
  float *y[3] = {c->q, c->k, c->v};
  ml_blk_products(t, c->h, E, 3, w, y);
  const ml_tensor *bs[3] = {&L->bq, &L->bk, &L->bv};
  int64_t ns[3] = {nq, nkv, nkv};
  for (int j = 0; j < 3; j++)
    if (bs[j]->storage || lim > 0) {
      for (int64_t r = t->r0; r < t->r1; r++)
        t->ro->add_clamp(y[j] + r * ns[j], y[j] + r * ns[j], bs[j]->storage ? ml_tensor_data(bs[j]) : NULL, ns[j], lim);
      t->dirty = 1;
    }
}

void ml_blk_qk_norm(ml_thr *t, const ml_tensor *qn, const ml_tensor *kn) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  int64_t hd = hp->head_dim, nq = hp->n_head * hd, nkv = hp->n_head_kv * hd;
  const float *wq = ml_tensor_data(qn), *wk = ml_tensor_data(kn);
  float eps = (float)hp->norm_eps;
  for (int64_t r = t->r0; r < t->r1; r++) {
    float *q = c->q + r * nq, *k = c->k + r * nkv;
    for (int64_t h = 0; h < hp->n_head; h++) t->ro->rmsnorm(q + h * hd, q + h * hd, wq, hd, eps);
    for (int64_t h = 0; h < hp->n_head_kv; h++) t->ro->rmsnorm(k + h * hd, k + h * hd, wk, hd, eps);
  }
  t->dirty = 1;
}

/* ---- attention: the position scheme, then the kernel ---- */

/* A row's angles are the same in every layer that uses the same frequencies: computed once
 * per chunk (a sine and cosine in double per pair, which every layer did for q and again
 * for k), recomputed where a layer's frequencies differ (gemma's local layers). */
void ml_blk_attention(ml_thr *t, const ml_attn *a) {
  ml_context *c = t->c;
  const ml_hparams *hp = t->hp;
  if (a->inv_freq) {
    int64_t nq = hp->n_head * hp->head_dim, nkv = hp->n_head_kv * hp->head_dim, nr = hp->n_rot, half = nr / 2;
    int neox = hp->rope_type == ML_ROPE_NEOX;
    float *rope = t->f->rope;
    if (t->rope_freq != a->inv_freq || t->rope_mscale != a->rope_mscale) {
      for (int64_t r = t->r0; r < t->r1; r++)
        ml_rope_angles(rope + r * nr, rope + r * nr + half, half, a->inv_freq, a->rope_mscale, c->pos[r]);
      t->rope_freq = a->inv_freq;
      t->rope_mscale = a->rope_mscale;
    }
    for (int64_t r = t->r0; r < t->r1; r++) {
      const float *cs = rope + r * nr, *sn = cs + half;
      ml_rope_apply(c->q + r * nq, hp->n_head, hp->head_dim, nr, neox, cs, sn);
      ml_rope_apply(c->k + r * nkv, hp->n_head_kv, hp->head_dim, nr, neox, cs, sn);
    }
    t->dirty = 1;
  }
  ml_attention(t, a);
}

/* ---- feed-forward ---- */

void ml_blk_ffn(ml_thr *t, const ml_layer *L, const ml_layer_w *W, ml_ffn_kind kind) {
  ml_context *c = t->c;
  int64_t E = t->hp->n_embd, F = t->hp->n_ff, e0, e1;
  if (kind == ML_FFN_GELU) {
    ml_blk_linear(t, &W->w_up, &L->b_up, c->h, E, c->g);
    ml_sync(t);
    slice(t->n * F, t->ith, t->nth, &e0, &e1);
    t->ro->gelu_mul(c->g + e0, NULL, e1 - e0, ml_gelu_f16_table());
    t->dirty = 1;
  } else if (L->w_gate.storage) {
    const ml_weight *w[2] = {&W->w_gate, &W->w_up};
    float *y[2] = {c->g, c->u};
    ml_blk_products(t, c->h, E, 2, w, y);
    slice(t->n * F, t->ith, t->nth, &e0, &e1);
    if (kind == ML_FFN_SWIGLU) t->ro->silu_mul(c->g + e0, c->u + e0, e1 - e0);
    else t->ro->gelu_mul(c->g + e0, c->u + e0, e1 - e0, ml_gelu_f16_table());
    t->dirty = 1;
  } else { /* up is [gate; up] (phi3) */
    ml_blk_linear(t, &W->w_up, NULL, c->h, E, c->tmp);
    for (int64_t r = t->r0; r < t->r1; r++) {
      const float *gu = c->tmp + r * 2 * F;
      float *g = c->g + r * F;
      memcpy(g, gu, sizeof(float) * (size_t)F);
      if (kind == ML_FFN_SWIGLU) t->ro->silu_mul(g, gu + F, F);
      else t->ro->gelu_mul(g, gu + F, F, ml_gelu_f16_table());
    }
    t->dirty = 1;
  }
  ml_blk_linear(t, &W->w_down, &L->b_down, c->g, F, c->h);
}

/* ---- output ---- */

void ml_blk_output(ml_thr *t, ml_norm_kind kind, const ml_tensor *w, const ml_tensor *b) {
  ml_fwd *f = t->f;
  ml_context *c = t->c;
  const ml_model *m = t->m;
  int64_t E = t->hp->n_embd, o0, o1;
  if (f->n_out == 0) return;
  ml_sync(t);
  slice(f->n_out, t->ith, t->nth, &o0, &o1);
  const float *pw = w ? vec(w) : NULL, *pb = b ? vec(b) : NULL;
  for (int64_t k = o0; k < o1; k++) norm_row(t, c->rows + k * E, c->x + f->out_row[k] * E, E, kind, pw, pb);
  barrier(t);
  if (f->hidden && t->ith == 0) memcpy(f->hidden, c->rows, sizeof(float) * (size_t)(f->n_out * E));
  if (!f->logits || !m->output.storage) return;
  const ml_weight *ow = &m->output_w;
  if (ml_mm_w_quantize(ow, c->rows, E, f->n_out, c->act[0], t->ith, t->nth) < 0) fail(f);
  barrier(t);
  if (ml_mm_w_compute(ow, c->act[0], f->n_out, f->logits, ow->N, t->ith, t->nth) < 0) fail(f);
  float cap = (float)t->hp->final_softcap;
  if (cap > 0) {
    barrier(t);
    int64_t V = ow->N, e0, e1;
    slice(f->n_out * V, t->ith, t->nth, &e0, &e1);
    for (int64_t i = e0; i < e1; i++) f->logits[i] = cap * tanhf(f->logits[i] / cap);
  }
}

/* ---- GELU (ggml's f16 table, a row op of the kernel level) ---- */

void ml_gelu_rows(float *x, int64_t n) { ml_rowops_get()->gelu_mul(x, NULL, n, ml_gelu_f16_table()); }

void ml_gelu_mul_rows(float *g, const float *u, int64_t n) { ml_rowops_get()->gelu_mul(g, u, n, ml_gelu_f16_table()); }

/* ---- the chunk driver ---- */

/* Runs of rows of one sequence, and the attention segments they make in each cache. */
static void make_runs(ml_fwd *f, const ml_context *c) {
  f->n_runs = 0;
  for (int64_t r = 0; r < f->n;) {
    int64_t e = r + 1;
    while (e < f->n && c->seq[e] == c->seq[r]) e++;
    f->runs[f->n_runs].r0 = r;
    f->runs[f->n_runs].n = e - r;
    f->n_runs++;
    r = e;
  }
  ml_attention_segments(c, &c->kv, f, f->seg[0]);
  if (c->kv_swa.n_layer) ml_attention_segments(c, &c->kv_swa, f, f->seg[1]);
}

static void run(ml_fwd *f, ml_context *c, int ith, int nth) {
  ml_thr t = {0};
  t.f = f;
  t.c = c;
  t.m = c->m;
  t.hp = &c->m->hp;
  t.ro = ml_rowops_get();
  t.ith = ith;
  t.nth = nth;
  t.n = f->n;
  slice(f->n, ith, nth, &t.r0, &t.r1);
  t.scratch = c->att_scratch + c->att_per_thread * (size_t)ith;
  c->m->arch->forward(&t);
}

/* Threads for a chunk: one when the work is too small to split (tiny models, one token). */
static int threads_for(const ml_model *m, int64_t n) {
  return ml_threads_for(ML_WORK_CHUNK, (double)m->weight_bytes * (double)n);
}

int ml_forward(ml_context *c, int64_t n, const int32_t *tokens, const uint8_t *want, float *logits, float *hidden) {
  ml_fwd *f = ml_alloc(sizeof *f);
  if (!f) return -1;
  f->n = n;
  f->tokens = tokens;
  f->want = want;
  f->logits = logits;
  f->hidden = hidden;
  f->failed = 0;
  f->n_out = 0;
  f->rope = NULL;
  if (c->m->hp.n_rot > 0 && !(f->rope = ml_alloc(sizeof(float) * (size_t)(n * c->m->hp.n_rot)))) {
    ml_free(f);
    return -1;
  }
  for (int64_t i = 0; i < n; i++)
    if (want[i]) f->out_row[f->n_out++] = i;
  make_runs(f, c);
  int nth = ML_MIN(threads_for(c->m, n), c->max_threads);
#pragma omp parallel num_threads(nth)
  {
#ifdef _OPENMP
    run(f, c, omp_get_thread_num(), omp_get_num_threads());
#else
    run(f, c, 0, 1);
#endif
  }
  int failed = f->failed;
  ml_free(f->rope);
  ml_free(f);
  return failed ? -1 : 0;
}
