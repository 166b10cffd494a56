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
 * Matrix products go through ml_mm (GEMV for one row, GEMM for many: the kernel level
 * decides). Attention is tiled with an online softmax: memory stays O(block), never O(n²).
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "matmul.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define ATT_TILE 16  /* query rows of one sequence handled together (they share key blocks) */
#define ATT_BLOCK 64 /* keys converted and scored at a time */

static void rmsnorm_rows(float *out, const float *in, int64_t n, int64_t dim, const ml_tensor *w, double eps) {
  const float *pw = ml_tensor_data(w);
  for (int64_t r = 0; r < n; r++) {
    const float *x = in + r * dim;
    float *y = out + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)dim + eps));
    for (int64_t i = 0; i < dim; i++) y[i] = (x[i] * scale) * pw[i];
  }
}

static void add_bias(float *y, int64_t n, int64_t dim, const ml_tensor *b) {
  if (!b->storage) return;
  const float *pb = ml_tensor_data(b);
  for (int64_t r = 0; r < n; r++)
    for (int64_t i = 0; i < dim; i++) y[r * dim + i] += pb[i];
}

/* y (n, N) = x (n, K) · wᵀ */
static int mm(const ml_tensor *w, const float *x, int64_t n, float *y) {
  return ml_mm(w, w->shape[0], w->shape[1], x, w->shape[1], n, y, w->shape[0]);
}

static void rope_rows(const ml_model *m, float *x, int64_t n, int64_t n_heads, const int64_t *pos) {
  const ml_hparams *hp = &m->hp;
  int64_t hd = hp->head_dim, half = hp->n_rot / 2;
  float cs[2 * 4096];
  for (int64_t r = 0; r < n; r++) {
    for (int64_t k = 0; k < half; k++) {
      double th = (double)pos[r] * (double)m->rope_inv_freq[k];
      cs[2 * k] = (float)cos(th);
      cs[2 * k + 1] = (float)sin(th);
    }
    for (int64_t h = 0; h < n_heads; h++) {
      float *v = x + (r * n_heads + h) * hd;
      for (int64_t k = 0; k < half; k++) {
        int64_t i0 = hp->rope_type == ML_ROPE_NEOX ? k : 2 * k, i1 = hp->rope_type == ML_ROPE_NEOX ? k + half : 2 * k + 1;
        float a = v[i0], b = v[i1], c = cs[2 * k], s = cs[2 * k + 1];
        v[i0] = a * c - b * s;
        v[i1] = a * s + b * c;
      }
    }
  }
}

/* per-head RMSNorm (qwen3): each head_dim slice normalised, times w */
static void head_norm(float *x, int64_t n, int64_t n_heads, int64_t hd, const ml_tensor *w, double eps) {
  rmsnorm_rows(x, x, n * n_heads, hd, w, eps);
}

static void embed(ml_context *c, int64_t n, const int32_t *tokens) {
  const ml_model *m = c->m;
  const ml_tensor *e = &m->tok_embd;
  const ml_type_traits *tr = ml_type_traits_get(e->type);
  int64_t E = m->hp.n_embd;
  size_t rb = (size_t)(e->stride[0] / tr->blck) * tr->size;
  for (int64_t i = 0; i < n; i++) tr->to_float((const char *)ml_tensor_data(e) + (size_t)tokens[i] * rb, c->x + i * E, E);
}

static void kv_store(ml_context *c, int64_t layer, int64_t n) {
  ml_kvcache *kv = &c->kv;
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  for (int64_t i = 0; i < n; i++) {
    uint8_t *kd = ml_kvcache_k(kv, layer, c->cell[i]), *vd = ml_kvcache_v(kv, layer, c->cell[i]);
    if (kv->type == ML_TYPE_F32) {
      memcpy(kd, c->k + i * kv->row, sizeof(float) * (size_t)kv->row);
      memcpy(vd, c->v + i * kv->row, sizeof(float) * (size_t)kv->row);
    } else {
      tr->from_float(c->k + i * kv->row, kd, kv->row);
      tr->from_float(c->v + i * kv->row, vd, kv->row);
    }
  }
}

/* ---- attention ---- */

typedef struct att_tile { int64_t r0, n; } att_tile;

static void attend_tile(ml_context *c, int64_t layer, const att_tile *t, int64_t kvh, float *acc, float *mx,
                        float *sum, float *kb, float *vb) {
  const ml_model *m = c->m;
  const ml_kvcache *kv = &c->kv;
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  int64_t hd = m->hp.head_dim, g = m->hp.n_head / m->hp.n_head_kv, nq = m->hp.n_head * hd;
  int seq = c->seq[t->r0];
  const int32_t *cells = kv->cells[seq];
  int64_t last = c->pos[t->r0 + t->n - 1]; /* rows are in position order */
  size_t head_off = ml_type_nbytes(kv->type, kvh * hd);
  for (int64_t i = 0; i < t->n * g; i++) {
    mx[i] = -INFINITY;
    sum[i] = 0;
  }
  memset(acc, 0, sizeof(float) * (size_t)(t->n * g * hd));
  for (int64_t j0 = 0; j0 <= last; j0 += ATT_BLOCK) {
    int64_t j1 = ML_MIN(j0 + ATT_BLOCK, last + 1);
    const float *K[ATT_BLOCK], *V[ATT_BLOCK];
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t *kp = ml_kvcache_k(kv, layer, cells[j]) + head_off, *vp = ml_kvcache_v(kv, layer, cells[j]) + head_off;
      if (kv->type == ML_TYPE_F32) {
        K[j - j0] = (const float *)kp;
        V[j - j0] = (const float *)vp;
      } else {
        float *kd = kb + (j - j0) * hd, *vd = vb + (j - j0) * hd;
        tr->to_float(kp, kd, hd);
        tr->to_float(vp, vd, hd);
        K[j - j0] = kd;
        V[j - j0] = vd;
      }
    }
    for (int64_t r = 0; r < t->n; r++) {
      int64_t row = t->r0 + r, jend = ML_MIN(j1, c->pos[row] + 1);
      if (jend <= j0) continue;
      for (int64_t qh = 0; qh < g; qh++) {
        const float *qv = c->q + row * nq + (kvh * g + qh) * hd;
        float *a = acc + (r * g + qh) * hd, s[ATT_BLOCK], bmax = -INFINITY;
        for (int64_t j = j0; j < jend; j++) {
          const float *kr = K[j - j0];
          float d = 0;
          for (int64_t i = 0; i < hd; i++) d += qv[i] * kr[i];
          s[j - j0] = d;
          bmax = d > bmax ? d : bmax;
        }
        float *pm = &mx[r * g + qh], *ps = &sum[r * g + qh];
        float mnew = bmax > *pm ? bmax : *pm;
        float corr = expf(*pm - mnew);
        if (corr != 1.0f) {
          *ps *= corr;
          for (int64_t i = 0; i < hd; i++) a[i] *= corr;
        }
        for (int64_t j = j0; j < jend; j++) {
          float p = expf(s[j - j0] - mnew);
          const float *vr = V[j - j0];
          *ps += p;
          for (int64_t i = 0; i < hd; i++) a[i] += p * vr[i];
        }
        *pm = mnew;
      }
    }
  }
  for (int64_t r = 0; r < t->n; r++)
    for (int64_t qh = 0; qh < g; qh++) {
      float *o = c->att + (t->r0 + r) * nq + (kvh * g + qh) * hd, inv = 1.0f / sum[r * g + qh];
      const float *a = acc + (r * g + qh) * hd;
      for (int64_t i = 0; i < hd; i++) o[i] = a[i] * inv;
    }
}

static int attention(ml_context *c, int64_t layer, int64_t n) {
  const ml_hparams *hp = &c->m->hp;
  int64_t hd = hp->head_dim, nkv = hp->n_head_kv, g = hp->n_head / nkv;
  att_tile tiles[ML_MAX_BATCH];
  int64_t nt = 0;
  /* tiles: runs of consecutive positions of one sequence, at most ATT_TILE rows */
  for (int64_t r = 0; r < n;) {
    int64_t e = r + 1;
    while (e < n && e - r < ATT_TILE && c->seq[e] == c->seq[r] && c->pos[e] == c->pos[e - 1] + 1) e++;
    tiles[nt].r0 = r;
    tiles[nt].n = e - r;
    nt++;
    r = e;
  }
  /* scale q once: scores are q·k / √hd */
  float scale = 1.0f / sqrtf((float)hd);
  for (int64_t i = 0; i < n * hp->n_head * hd; i++) c->q[i] *= scale;
  int64_t items = nt * nkv;
  size_t per = (size_t)(ATT_TILE * g * hd + 2 * ATT_TILE * g + 2 * ATT_BLOCK * hd);
  /* fork/join costs more than small attention work: estimate multiply-adds */
  double work = 0;
  for (int64_t i = 0; i < nt; i++) work += (double)tiles[i].n * (double)(c->pos[tiles[i].r0 + tiles[i].n - 1] + 1);
  work *= (double)(hp->n_head * hd * 2);
  int nth = items > 1 && work > 262144 ? ml_get_threads() : 1;
  float *scratch = ml_alloc(sizeof(float) * per * (size_t)nth);
  if (!scratch) return -1;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t it = 0; it < items; it++) {
#ifdef _OPENMP
    float *s = scratch + per * (size_t)omp_get_thread_num();
#else
    float *s = scratch;
#endif
    float *acc = s, *mx = acc + ATT_TILE * g * hd, *sum = mx + ATT_TILE * g, *kb = sum + ATT_TILE * g,
          *vb = kb + ATT_BLOCK * hd;
    attend_tile(c, layer, &tiles[it / nkv], it % nkv, acc, mx, sum, kb, vb);
  }
  ml_free(scratch);
  return 0;
}

static void silu_mul(float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void add_rows(float *x, const float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

int ml_forward(ml_context *c, int64_t n, const int32_t *tokens, const uint8_t *want, float *logits, float *hidden) {
  const ml_model *m = c->m;
  const ml_hparams *hp = &m->hp;
  int64_t E = hp->n_embd, nq = hp->n_head * hp->head_dim, nkv = hp->n_head_kv * hp->head_dim;
  embed(c, n, tokens);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    const ml_layer *L = &m->layers[il];
    rmsnorm_rows(c->h, c->x, n, E, &L->attn_norm, hp->norm_eps);
    if (mm(&L->wq, c->h, n, c->q) < 0 || mm(&L->wk, c->h, n, c->k) < 0 || mm(&L->wv, c->h, n, c->v) < 0) return -1;
    add_bias(c->q, n, nq, &L->bq);
    add_bias(c->k, n, nkv, &L->bk);
    add_bias(c->v, n, nkv, &L->bv);
    if (L->q_norm.storage) head_norm(c->q, n, hp->n_head, hp->head_dim, &L->q_norm, hp->norm_eps);
    if (L->k_norm.storage) head_norm(c->k, n, hp->n_head_kv, hp->head_dim, &L->k_norm, hp->norm_eps);
    rope_rows(m, c->q, n, hp->n_head, c->pos);
    rope_rows(m, c->k, n, hp->n_head_kv, c->pos);
    kv_store(c, il, n);
    if (attention(c, il, n) < 0) return -1;
    if (mm(&L->wo, c->att, n, c->h) < 0) return -1;
    add_rows(c->x, c->h, n * E);
    rmsnorm_rows(c->h, c->x, n, E, &L->ffn_norm, hp->norm_eps);
    if (mm(&L->w_gate, c->h, n, c->g) < 0 || mm(&L->w_up, c->h, n, c->u) < 0) return -1;
    silu_mul(c->g, c->u, n * hp->n_ff);
    if (mm(&L->w_down, c->g, n, c->h) < 0) return -1;
    add_rows(c->x, c->h, n * E);
  }
  int64_t n_out = 0;
  for (int64_t i = 0; i < n; i++)
    if (want[i]) {
      rmsnorm_rows(c->rows + n_out * E, c->x + i * E, 1, E, &m->output_norm, hp->norm_eps);
      n_out++;
    }
  if (n_out == 0) return 0;
  if (hidden) memcpy(hidden, c->rows, sizeof(float) * (size_t)(n_out * E));
  if (logits && mm(&m->output, c->rows, n_out, logits) < 0) return -1;
  return 0;
}
