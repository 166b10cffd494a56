/* sample.c: whole-vocabulary sampling (sample.h): the token mask, logit bias and penalties
 * over one row of logits, the top-k selection, and the top_p -> min_p -> temperature -> draw
 * chain, for the Lua sampler's binding (lua_sample.c) and any C caller. */
#include "sample.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels/dispatch.h"

/* ---- top-k ---- */

static inline int better(ml_cand a, ml_cand b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

static void sift(ml_cand *h, int64_t n, int64_t i) { /* min-heap on `better`: the root is the worst kept */
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && better(h[w], h[l])) w = l;
    if (r < n && better(h[w], h[r])) w = r;
    if (w == i) return;
    ml_cand t = h[i];
    h[i] = h[w];
    h[w] = t;
    i = w;
  }
}

/* The k best of n keys (NaN as -inf) into h, sorted best first; returns how many. */
static int64_t heap_top(ml_cand *h, const float *x, int64_t st, int64_t n, int64_t k, float sign) {
  int64_t m = 0;
  for (int64_t i = 0; i < n && k > 0; i++) {
    ml_cand c;
    c.id = (int32_t)i;
    c.v = sign * x[i * st];
    if (c.v != c.v) c.v = -INFINITY;
    if (m < k) {
      h[m++] = c;
      if (m == k)
        for (int64_t j = k / 2; j >= 0; j--) sift(h, k, j);
    } else if (better(c, h[0])) {
      h[0] = c;
      sift(h, k, 0);
    }
  }
  if (m < k)
    for (int64_t j = m / 2; j >= 0; j--) sift(h, m, j);
  for (int64_t end = m - 1; end > 0; end--) { /* heap sort: best first */
    ml_cand t = h[0];
    h[0] = h[end];
    h[end] = t;
    sift(h, end, 0);
  }
  return m;
}

int64_t ml_top_k(const float *x, int64_t st, int64_t n, int64_t k, int largest, ml_cand *out) {
  /* the smallest are the largest of -x (negation keeps every order and tie exact) */
  int64_t m = heap_top(out, x, st, n, k, largest ? 1.0f : -1.0f);
  if (!largest)
    for (int64_t i = 0; i < m; i++) out[i].v = -out[i].v;
  return m;
}

/* ---- the adjusted row ---- */

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* the penalty window: history[h0 .. n_history) */
static int64_t window_start(const ml_sample_adjust *a) {
  int penal = (a->repeat != 0 && a->repeat != 1) || a->frequency != 0 || a->presence != 0;
  if (!penal) return a->n_history;
  return a->last_n < 0 || a->n_history <= a->last_n ? 0 : a->n_history - a->last_n;
}

static int64_t adjust_cap(const ml_sample_adjust *a) {
  return a ? a->n_bias + (a->n_history - window_start(a)) + 1 : 1;
}

size_t ml_sample_work_bytes(int64_t n, const ml_sample_adjust *a) {
  size_t cap = (size_t)adjust_cap(a), un = (size_t)(n > 0 ? n : 0);
  return up64(cap * sizeof(int32_t)) + up64(cap * sizeof(float)) + up64(cap * sizeof(int64_t)) + up64(un) +
         up64(un * sizeof(float)) /* v */ +
         up64(un * (sizeof(float) + sizeof(ml_cand) + sizeof(uint16_t))); /* draw: e, cs, bins */
}

static inline int allowed(const uint32_t *allow, int64_t i) {
  return !allow || (allow[i >> 5] >> (i & 31) & 1);
}

float ml_sample_value(const ml_sample_row *r, int64_t i) {
  if (!allowed(r->allow, i)) return -INFINITY;
  if (r->touched && r->touched[i])
    for (int64_t j = 0; j < r->nadj; j++)
      if (r->ids[j] == i) return r->adj[j];
  return r->x[i];
}

int ml_sample_prepare(ml_sample_row *r, const float *x, int64_t n, const ml_sample_adjust *a, void *work) {
  ml_sample_adjust none;
  memset(&none, 0, sizeof none);
  if (!a) a = &none;
  size_t cap = (size_t)adjust_cap(a);
  uint8_t *p = work;
  int32_t *ids = (int32_t *)p;
  p += up64(cap * sizeof(int32_t));
  float *adj = (float *)p;
  p += up64(cap * sizeof(float));
  int64_t *cnt = (int64_t *)p;
  p += up64(cap * sizeof(int64_t));
  uint8_t *touched = p;
  p += up64((size_t)n);
  memset(r, 0, sizeof *r);
  r->x = x;
  r->n = n;
  r->allow = a->allow;
  r->v = (float *)p;
  r->draw_work = p + up64((size_t)n * sizeof(float));
  /* The few tokens whose logit changes: biased ones and those in the penalty window;
   * adj[j] is the final value of token ids[j]. */
  int64_t nadj = 0, j;
#define FIND(id) for (j = 0; j < nadj && ids[j] != (id); j++)
  for (int64_t b = 0; b < a->n_bias; b++) {
    int32_t id = a->bias_id[b];
    if (id < 0 || id >= n) {
      ml_misuse(2, "bias keys must be token ids in range");
      return -1;
    }
    FIND(id);
    if (j == nadj) {
      ids[nadj] = id;
      adj[nadj] = x[id];
      cnt[nadj++] = 0;
    }
    adj[j] += a->bias[b];
  }
  for (int64_t i = a->history ? window_start(a) : a->n_history; i < a->n_history; i++) {
    int32_t id = a->history[i];
    if (id < 0 || id >= n) continue;
    FIND(id);
    if (j == nadj) {
      ids[nadj] = id;
      adj[nadj] = x[id];
      cnt[nadj++] = 0;
    }
    cnt[j]++;
  }
#undef FIND
  double rep = a->repeat != 0 ? a->repeat : 1;
  for (j = 0; j < nadj; j++)
    if (cnt[j]) { /* as llama.cpp: divide positive logits, multiply negative ones */
      float v = adj[j];
      v = v > 0 ? (float)(v / rep) : (float)(v * rep);
      adj[j] = v - (float)((double)cnt[j] * a->frequency + a->presence);
    }
  if (nadj) {
    memset(touched, 0, (size_t)n);
    for (j = 0; j < nadj; j++) touched[ids[j]] = 1;
    r->touched = touched;
  }
  r->nadj = nadj;
  r->ids = ids;
  r->adj = adj;
  return 0;
}

/* The adjusted row with NaN as -inf: x itself when nothing changes it (the top-k ranks NaN
 * as -inf anyway), else r->v filled: a copy, then the few adjusted tokens, then the mask. */
static const float *adjusted_row(const ml_sample_row *r, int copy_nan) {
  int64_t n = r->n;
  if (!r->nadj && !r->allow && !copy_nan) return r->x;
  float *v = r->v;
  for (int64_t i = 0; i < n; i++) v[i] = r->x[i] == r->x[i] ? r->x[i] : -INFINITY;
  for (int64_t j = 0; j < r->nadj; j++) v[r->ids[j]] = r->adj[j] == r->adj[j] ? r->adj[j] : -INFINITY;
  if (r->allow)
    for (int64_t w = 0; w < (n + 31) / 32; w++) {
      uint32_t banned = ~r->allow[w];
      while (banned) {
        int64_t i = 32 * w + __builtin_ctz(banned);
        banned &= banned - 1;
        if (i < n) v[i] = -INFINITY;
      }
    }
  return v;
}

int64_t ml_sample_top(const ml_sample_row *r, int64_t k, double top_p_hint, ml_cand *out, double *z) {
  int64_t n = r->n;
  if (k <= 0 || k > n) k = n;
  const float *v = adjusted_row(r, 0);
  /* Without a top_k cut, a top_p hint lets us return only the head of the distribution:
   * the smallest prefix (in logit order) whose probability mass reaches top_p. The Lua side
   * passes the hint only when no later step (user steps, typical_p) needs the whole set. */
  int64_t want = k;
  double mmax = -INFINITY, zs = 0;
  if (k == n && top_p_hint < 1 && n > 64) {
    for (int64_t i = 0; i < n; i++)
      if (v[i] > mmax) mmax = v[i];
    for (int64_t i = 0; i < n; i++)
      if (v[i] == v[i]) zs += exp((double)v[i] - mmax);
    want = 64;
  }
  int64_t m;
  for (;;) {
    m = ml_top_k(v, 1, n, want, 1, out);
    if (want >= k) break;
    double mass = 0;
    for (int64_t i = 0; i < m; i++) mass += exp((double)out[i].v - mmax);
    if (mass >= top_p_hint * zs) break;
    want = want * 4 < k ? want * 4 : k;
  }
  *z = m < n && zs > 0 ? zs * exp(mmax - (double)out[0].v) : 0;
  return m;
}

/* ---- the whole-vocabulary draw ----
 * The chain top_p -> min_p -> temperature -> draw, for top_k = 0 without user steps: what
 * would otherwise hand tens of thousands of candidates to Lua when the distribution is flat.
 * No sort of the vocabulary: a histogram of the probability mass by distance below the best
 * logit finds the bin where the top_p head ends, and only that bin's tokens are sorted. The
 * head is then the tokens better than the last one it needs (higher logit, or equal with a
 * lower id), and the draw goes through it in id order, a fixed function of the logits, so a
 * seed still gives the same text. The exponentials are a row op (vectorised at the AVX2
 * level and above). */
enum { DRAW_BINS = 4096 };
#define DRAW_BIN_SCALE 128.0f /* bins per unit of logit below the best: 32 logits in all */

static int draw_bin(float best, float v) {
  float x = (best - v) * DRAW_BIN_SCALE;
  return x < (float)(DRAW_BINS - 1) ? (int)x : DRAW_BINS - 1;
}

static int cand_cmp(const void *pa, const void *pb) {
  const ml_cand *a = pa, *b = pb;
  return better(*a, *b) ? -1 : better(*b, *a) ? 1 : 0;
}

/* v: every token's adjusted logit (NaN as -inf); e, cs, bins: scratch of n */
static int64_t draw_whole(const float *v, float *e, ml_cand *cs, uint16_t *bins, int64_t n, double top_p,
                          double min_p, double temp, double u, double *prob) {
  const ml_rowops *ro = ml_rowops_get();
  float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int64_t best = 0;
  for (; best + 8 <= n; best += 8) /* eight running maxima: no chain through one register */
    for (int j = 0; j < 8; j++) m8[j] = v[best + j] > m8[j] ? v[best + j] : m8[j];
  float mmax = -INFINITY;
  for (int j = 0; j < 8; j++) mmax = m8[j] > mmax ? m8[j] : mmax;
  for (; best < n; best++) mmax = v[best] > mmax ? v[best] : mmax;
  for (best = 0; best < n - 1 && !(v[best] == mmax); best++) {} /* the first of equals: the lowest id */
  *prob = 1;
  if (mmax == -INFINITY || mmax == INFINITY) return -1; /* everything banned (or NaN), or +inf: no distribution */
  if (temp <= 0) return best; /* greedy */
  /* top_p: the last token (v_last, id_last) of the shortest best-first prefix reaching it */
  float v_last = -FLT_MAX;
  int64_t id_last = n;
  if (top_p < 1) {
    double zs = ro->exp_shift(e, v, n, mmax, 1.0f, -FLT_MAX), need = top_p * zs, mass[DRAW_BINS] = {0}, cum = 0;
    for (int64_t i = 0; i < n; i++) {
      bins[i] = (uint16_t)draw_bin(mmax, v[i]); /* -inf: the last bin, with no mass */
      mass[bins[i]] += e[i];
    }
    int bin = 0;
    while (bin < DRAW_BINS && cum + mass[bin] < need) cum += mass[bin++];
    if (bin < DRAW_BINS) {
      int64_t m = 0;
      for (int64_t i = 0; i < n; i++)
        if (bins[i] == bin && v[i] > -INFINITY) cs[m].v = v[i], cs[m++].id = (int32_t)i;
      qsort(cs, (size_t)m, sizeof *cs, cand_cmp);
      int64_t j = 0;
      for (double acc = cum; j < m - 1; j++)
        if ((acc += e[cs[j].id]) >= need) break;
      v_last = cs[j].v, id_last = cs[j].id;
    }
  }
  /* min_p relative to the best, as a float bound equivalent to the double comparison */
  float cut = -FLT_MAX;
  if (min_p > 0) {
    double c = (double)mmax + log(min_p);
    cut = (float)c;
    if ((double)cut < c) cut = nextafterf(cut, INFINITY);
  }
  if (v_last > cut) cut = v_last;
  double s = ro->exp_shift(e, v, n, mmax, (float)(1 / temp), cut);
  if (v_last >= cut) /* ties with the last token of the head: only the lower ids are in */
    for (int64_t i = id_last + 1; i < n; i++)
      if (v[i] == v_last) s -= e[i], e[i] = 0;
  double target = u * s, acc = 0;
  int64_t pick = best;
  for (int64_t i = 0; i < n; i++) {
    if (e[i] == 0) continue;
    pick = i;
    if ((acc += e[i]) > target) break;
  }
  *prob = e[pick] / s;
  return pick;
}

int64_t ml_sample_draw(const ml_sample_row *r, const ml_sample_cuts *c, double u, double *prob) {
  int64_t n = r->n;
  const float *v = adjusted_row(r, 1);
  float *e = r->draw_work;
  ml_cand *cs = (ml_cand *)(e + n);
  uint16_t *bins = (uint16_t *)(cs + n);
  return draw_whole(v, e, cs, bins, n, c->top_p, c->min_p, c->temperature, u, prob);
}

/* ---- log-probabilities ---- */

int64_t ml_sample_logprobs(const ml_sample_row *r, int64_t id, int64_t k, double *lp, ml_cand *top) {
  int64_t n = r->n, i = 0;
  const float *v = adjusted_row(r, 1);
  float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  for (; i + 8 <= n; i += 8) /* eight running maxima: no chain through one register */
    for (int j = 0; j < 8; j++) m8[j] = v[i + j] > m8[j] ? v[i + j] : m8[j];
  float mmax = -INFINITY;
  for (int j = 0; j < 8; j++) mmax = m8[j] > mmax ? m8[j] : mmax;
  for (; i < n; i++) mmax = v[i] > mmax ? v[i] : mmax;
  *lp = -INFINITY;
  if (mmax == -INFINITY) return 0; /* every token banned */
  /* log-sum-exp, the exponentials as a row op (vectorised at the AVX2 level and above) */
  double s = ml_rowops_get()->exp_shift(r->draw_work, v, n, mmax, 1.0f, -FLT_MAX);
  double lse = (double)mmax + log(s);
  if (id >= 0 && id < n && v[id] > -INFINITY) *lp = (float)((double)v[id] - lse);
  int64_t m = k > 0 ? ml_top_k(v, 1, n, k, 1, top) : 0;
  while (m > 0 && top[m - 1].v == -INFINITY) m--;
  for (int64_t j = 0; j < m; j++) top[j].v = (float)((double)top[j].v - lse);
  return m;
}
