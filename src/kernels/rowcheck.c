/* rowcheck.c: a kernel table's row operations (ml_rowops) against ref's, the oracle. Every
 * op runs on sizes around the vector widths (0 to 1000: 7, 8, 9, 15, 16, 17, ...), on
 * pointers one float off alignment, and must not write outside its n outputs. What has one
 * rounding in both (scale, add, the f16 conversions, rmsnorm's products) must be
 * bit-identical; sums taken in another order, fused multiply-adds and the SIMD exp are held
 * to bounds relative to the magnitudes involved, tight enough that a dropped or repeated
 * element fails. Used by spec/kernels_spec.lua (core._rowops_check) under every level. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

#define GUARD 16
#define MAXN 1000
static const int64_t sizes[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 129, 1000};
#define N_SIZES ((int)(sizeof sizes / sizeof sizes[0]))

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* uniform in [lo, hi) */
static float uni(uint64_t *s, float lo, float hi) {
  return lo + (hi - lo) * (float)((double)(rng_next(s) >> 11) / 9007199254740992.0);
}

/* in [0.5, 1.5) with a random sign: every term of a sum matters */
static float term(uint64_t *s) {
  float v = uni(s, 0.5f, 1.5f);
  return rng_next(s) & 1 ? -v : v;
}

typedef struct check {
  const char *table;
  char *msg;
  size_t cap;
  int ok;
} check;

static int fail(check *c, const char *fmt, ...) {
  if (!c->ok) return 0;
  c->ok = 0;
  int k = snprintf(c->msg, c->cap, "%s: ", c->table);
  if (k < 0 || (size_t)k >= c->cap) return 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->msg + k, c->cap - (size_t)k, fmt, ap);
  va_end(ap);
  return 0;
}

static const float SENTINEL = 12345.5f;

/* buffers of MAXN + 2 GUARD floats; the data starts one float past an aligned GUARD */
typedef struct bufs {
  float x[MAXN + 2 * GUARD], y[MAXN + 2 * GUARD], yr[MAXN + 2 * GUARD], w[MAXN + 2 * GUARD], bb[MAXN + 2 * GUARD];
  ml_fp16 h[MAXN + 2 * GUARD], hr[MAXN + 2 * GUARD];
} bufs;
#define AT(a) ((a) + GUARD + 1)

static void guard_f(float *a, int64_t n) {
  for (int i = 0; i < GUARD + 1; i++) a[i] = SENTINEL;
  for (int64_t i = GUARD + 1 + n; i < MAXN + 2 * GUARD; i++) a[i] = SENTINEL;
}

static int guard_f_ok(const float *a, int64_t n) {
  for (int i = 0; i < GUARD + 1; i++)
    if (a[i] != SENTINEL) return 0;
  for (int64_t i = GUARD + 1 + n; i < MAXN + 2 * GUARD; i++)
    if (a[i] != SENTINEL) return 0;
  return 1;
}

static int same_bits(float a, float b) { return !memcmp(&a, &b, sizeof a); }

/* |got - want| <= rel * mag + abs_ */
static int near(double got, double want, double mag, double rel, double abs_) {
  return fabs(got - want) <= rel * mag + abs_;
}

static void check_size(check *c, const ml_rowops *k, const ml_rowops *r, int64_t n, uint64_t *s, bufs *b) {
  float *x = AT(b->x), *y = AT(b->y), *yr = AT(b->yr), *w = AT(b->w);

  /* dot */
  for (int64_t i = 0; i < n; i++) x[i] = term(s), w[i] = term(s);
  double mag = 0;
  for (int64_t i = 0; i < n; i++) mag += fabs((double)x[i] * w[i]);
  float d = k->dot(x, w, n), dr = r->dot(x, w, n);
  if (!near(d, dr, mag, 4e-7 * sqrt((double)n + 1), 0))
    fail(c, "dot (n = %lld): %.9g, ref %.9g", (long long)n, d, dr);

  /* axpy: one rounding or two (fma), relative to |a x| + |y| */
  float a = uni(s, -2, 2);
  guard_f(b->y, n);
  guard_f(b->yr, n);
  for (int64_t i = 0; i < n; i++) y[i] = yr[i] = term(s);
  float y0[MAXN];
  memcpy(y0, y, (size_t)n * sizeof *y);
  k->axpy(a, x, y, n);
  r->axpy(a, x, yr, n);
  for (int64_t i = 0; i < n; i++)
    if (!near(y[i], yr[i], fabs(a * x[i]) + fabs(y0[i]), 2.5e-7, 0)) {
      fail(c, "axpy (n = %lld): element %lld is %.9g, ref %.9g", (long long)n, (long long)i, y[i], yr[i]);
      break;
    }
  if (!guard_f_ok(b->y, n)) fail(c, "axpy (n = %lld) writes outside its %lld elements", (long long)n, (long long)n);

  /* scale and add: one rounding each, bit-identical (from ref's axpy result) */
  memcpy(y, yr, (size_t)n * sizeof *y);
  k->scale(a, y, n);
  r->scale(a, yr, n);
  k->add(y, x, n);
  r->add(yr, x, n);
  for (int64_t i = 0; i < n; i++)
    if (!same_bits(y[i], yr[i])) {
      fail(c, "scale/add (n = %lld): element %lld is %.9g, ref %.9g", (long long)n, (long long)i, y[i], yr[i]);
      break;
    }
  if (!guard_f_ok(b->y, n)) fail(c, "scale/add (n = %lld) write outside their elements", (long long)n);

  /* f32 -> f16 -> f32: bit-identical, over normal, subnormal, overflowing and special values */
  static const float special[] = {0.0f, -0.0f, 65504.0f, 65520.0f, -1e6f, 6.1e-5f, 5.96e-8f, 2.98e-8f,
                                  -3.0e-6f, 1.0f / 0.0f, -1.0f / 0.0f, 1.0009765625f, 0.33325195f};
  for (int64_t i = 0; i < n; i++) {
    uint64_t kind = rng_next(s) % 4;
    x[i] = kind == 0   ? special[rng_next(s) % (sizeof special / sizeof special[0])]
           : kind == 1 ? uni(s, -1e-4f, 1e-4f)
                       : uni(s, -70000.0f, 70000.0f) * (kind == 2 ? 1.0f : 1e-3f);
  }
  ml_fp16 *h = AT(b->h), *hr = AT(b->hr);
  for (int i = 0; i < MAXN + 2 * GUARD; i++) b->h[i] = b->hr[i] = 0x7E01; /* a NaN no op writes */
  k->f32_to_f16(x, h, n);
  r->f32_to_f16(x, hr, n);
  for (int64_t i = 0; i < n; i++)
    if (h[i] != hr[i]) {
      fail(c, "f32_to_f16 (n = %lld): %.9g gives 0x%04x, ref 0x%04x", (long long)n, x[i], h[i], hr[i]);
      break;
    }
  for (int i = 0; i < MAXN + 2 * GUARD; i++)
    if ((i < GUARD + 1 || i >= GUARD + 1 + n) && b->h[i] != 0x7E01) {
      fail(c, "f32_to_f16 (n = %lld) writes outside its elements", (long long)n);
      break;
    }
  guard_f(b->y, n);
  guard_f(b->yr, n);
  k->f16_to_f32(hr, y, n);
  r->f16_to_f32(hr, yr, n);
  for (int64_t i = 0; i < n; i++)
    if (!same_bits(y[i], yr[i])) {
      fail(c, "f16_to_f32 (n = %lld): 0x%04x gives %.9g, ref %.9g", (long long)n, hr[i], y[i], yr[i]);
      break;
    }
  if (!guard_f_ok(b->y, n)) fail(c, "f16_to_f32 (n = %lld) writes outside its elements", (long long)n);

  /* rmsnorm: the sum of squares in double in both; the scale may differ in its last bit */
  if (n > 0) {
    for (int64_t i = 0; i < n; i++) x[i] = term(s) * 3, w[i] = uni(s, 0.5f, 2.0f);
    guard_f(b->y, n);
    guard_f(b->yr, n);
    k->rmsnorm(y, x, w, n, 1e-5f);
    r->rmsnorm(yr, x, w, n, 1e-5f);
    for (int64_t i = 0; i < n; i++)
      if (!near(y[i], yr[i], fabs(yr[i]), 3e-7, 0)) {
        fail(c, "rmsnorm (n = %lld): element %lld is %.9g, ref %.9g", (long long)n, (long long)i, y[i], yr[i]);
        break;
      }
    if (!guard_f_ok(b->y, n)) fail(c, "rmsnorm (n = %lld) writes outside its elements", (long long)n);
  }

  /* layernorm: the same roundings, the double sums in another order, so the mean and the
   * scale may differ in their last bit: each element relative to |b| + |w| s (|x - mean| +
   * |mean|). Rows off zero (a dropped or repeated element moves the mean), with and without
   * weight and bias, and in place. */
  if (n > 0) {
    float *bias = AT(b->bb);
    float off = uni(s, -3, 3);
    for (int64_t i = 0; i < n; i++) x[i] = off + term(s) * 3, w[i] = uni(s, 0.5f, 2.0f) * (i % 3 ? 1 : -1),
                                    bias[i] = term(s);
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    double sc = 1.0 / sqrt(var / (double)n + 1e-5);
    for (int form = 0; form < 4 && c->ok; form++) {
      const float *pw = form < 2 ? w : NULL, *pb = form == 0 || form == 3 ? bias : NULL;
      static const char *what[] = {"weight and bias", "weight", "neither", "bias, in place"};
      guard_f(b->y, n);
      guard_f(b->yr, n);
      if (form == 3) {
        memcpy(y, x, (size_t)n * sizeof *y);
        k->layernorm(y, y, pw, pb, n, 1e-5f);
      } else {
        k->layernorm(y, x, pw, pb, n, 1e-5f);
      }
      r->layernorm(yr, x, pw, pb, n, 1e-5f);
      for (int64_t i = 0; i < n; i++) {
        double emag = (pb ? fabs(pb[i]) : 0) + (pw ? fabs(pw[i]) : 1) * sc * (fabs(x[i] - mean) + fabs(mean));
        if (!near(y[i], yr[i], emag, 3e-7, 0)) {
          fail(c, "layernorm (n = %lld, %s): element %lld is %.9g, ref %.9g", (long long)n, what[form], (long long)i,
               y[i], yr[i]);
          break;
        }
      }
      if (!guard_f_ok(b->y, n)) fail(c, "layernorm (n = %lld, %s) writes outside its elements", (long long)n, what[form]);
    }
  }

  /* add_clamp: one rounding, then exact: bit-identical; values across the limits, at them,
   * NaN (kept) and infinities, with and without bias, no limit, in place */
  {
    float *bias = AT(b->bb), lim = uni(s, 1, 8);
    for (int form = 0; form < 4 && c->ok; form++) {
      const float *pb = form & 1 ? bias : NULL;
      float l = form == 2 ? 0 : lim;
      for (int64_t i = 0; i < n; i++) {
        uint64_t kind = rng_next(s) % 12;
        x[i] = kind == 0 ? nanf("") : kind == 1 ? 1.0f / 0.0f : kind == 2 ? -1.0f / 0.0f : kind == 3 ? lim
               : kind == 4 ? -lim : kind == 5 ? -0.0f : uni(s, -2 * lim, 2 * lim);
        bias[i] = kind == 5 ? 0.0f : term(s);
      }
      guard_f(b->y, n);
      guard_f(b->yr, n);
      if (form == 3) {
        memcpy(y, x, (size_t)n * sizeof *y);
        k->add_clamp(y, y, pb, n, l);
      } else {
        k->add_clamp(y, x, pb, n, l);
      }
      r->add_clamp(yr, x, pb, n, l);
      for (int64_t i = 0; i < n; i++)
        if (!same_bits(y[i], yr[i]) && !(y[i] != y[i] && yr[i] != yr[i])) {
          fail(c, "add_clamp (n = %lld, form %d): element %lld (x = %.9g) is %.9g, ref %.9g", (long long)n, form,
               (long long)i, x[i], y[i], yr[i]);
          break;
        }
      if (!guard_f_ok(b->y, n)) fail(c, "add_clamp (n = %lld) writes outside its elements", (long long)n);
    }
  }

  /* silu_mul: the SIMD exp is within a few units in the last place */
  guard_f(b->y, n);
  guard_f(b->yr, n);
  for (int64_t i = 0; i < n; i++) y[i] = yr[i] = uni(s, -20, 20), w[i] = term(s);
  k->silu_mul(y, w, n);
  r->silu_mul(yr, w, n);
  for (int64_t i = 0; i < n; i++)
    if (!near(y[i], yr[i], fabs(yr[i]), 2e-6, 1e-12)) {
      fail(c, "silu_mul (n = %lld): element %lld is %.9g, ref %.9g", (long long)n, (long long)i, y[i], yr[i]);
      break;
    }
  if (!guard_f_ok(b->y, n)) fail(c, "silu_mul (n = %lld) writes outside its elements", (long long)n);

  /* exp_shift: logits below the cut (and NaN, -inf) give exactly 0; the others exp within
   * a few ulp; the sum relative to itself */
  float shift = 5, scale = 1.25f, cut = -12;
  for (int64_t i = 0; i < n; i++) {
    uint64_t kind = rng_next(s) % 16;
    x[i] = kind == 0 ? -1.0f / 0.0f : kind == 1 ? nanf("") : uni(s, -30, 5);
  }
  guard_f(b->y, n);
  guard_f(b->yr, n);
  double sum = k->exp_shift(y, x, n, shift, scale, cut), sumr = r->exp_shift(yr, x, n, shift, scale, cut);
  for (int64_t i = 0; i < n; i++)
    if ((yr[i] == 0 && !same_bits(y[i], 0.0f)) || !near(y[i], yr[i], fabs(yr[i]), 2e-6, 0)) {
      fail(c, "exp_shift (n = %lld): element %lld (x = %.9g) is %.9g, ref %.9g", (long long)n, (long long)i, x[i], y[i],
           yr[i]);
      break;
    }
  if (!near(sum, sumr, sumr, 2e-6, 0)) fail(c, "exp_shift (n = %lld): sum %.9g, ref %.9g", (long long)n, sum, sumr);
  if (!guard_f_ok(b->y, n)) fail(c, "exp_shift (n = %lld) writes outside its elements", (long long)n);

  /* gelu_mul: the same table entry at every level, so bit-identical; both cut-offs, their
   * neighbours, f16 ties, NaN and infinities, with and without u */
  const ml_fp16 *table = ml_gelu_f16_table();
  for (int with_u = 0; with_u < 2; with_u++) {
    for (int64_t i = 0; i < n; i++) {
      uint64_t kind = rng_next(s) % 16;
      static const float edge[] = {-10.0f, 10.0f, -10.000001f, 9.999999f, 1.0f / 0.0f, -1.0f / 0.0f};
      x[i] = kind < 6 ? edge[kind] : kind == 6 ? nanf("") : kind == 7 ? 1.0f + (float)(rng_next(s) % 2048) / 2048.0f
                                                            : uni(s, -12, 12);
      y[i] = yr[i] = x[i];
      w[i] = term(s);
    }
    guard_f(b->y, n);
    guard_f(b->yr, n);
    k->gelu_mul(y, with_u ? w : NULL, n, table);
    r->gelu_mul(yr, with_u ? w : NULL, n, table);
    for (int64_t i = 0; i < n; i++)
      if (!same_bits(y[i], yr[i]) && !(y[i] != y[i] && yr[i] != yr[i])) {
        fail(c, "gelu_mul (n = %lld%s): element %lld (x = %.9g) is %.9g, ref %.9g", (long long)n, with_u ? ", u" : "",
             (long long)i, x[i], y[i], yr[i]);
        break;
      }
    if (!guard_f_ok(b->y, n)) fail(c, "gelu_mul (n = %lld) writes outside its elements", (long long)n);
  }
}

int ml_rowops_selfcheck(const ml_kernels *k, char *msg, size_t cap) {
  check c = {k->name, msg, cap, 1};
  const ml_rowops *r = &ml_kernels_ref.row, *t = &k->row;
  if (!t->dot || !t->axpy || !t->scale || !t->add || !t->f16_to_f32 || !t->f32_to_f16 || !t->rmsnorm || !t->silu_mul ||
      !t->exp_shift || !t->gelu_mul || !t->layernorm ||
      !t->add_clamp)
    return fail(&c, "a row op is missing");
  bufs *p = malloc(sizeof *p);
  if (!p) return fail(&c, "out of memory");
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < N_SIZES && c.ok; i++) check_size(&c, t, r, sizes[i], &s, p);
  free(p);
  if (c.ok) snprintf(msg, cap, "%s: every row op agrees with ref", k->name);
  return c.ok;
}
