/* rowops.c: the portable row operations (the oracle for kernels/rowops_avx2.c) and the
 * choice between the two. */
#include "rowops.h"

#include <math.h>

#include "kernels/dispatch.h"

static float dot_ref(const float *a, const float *b, int64_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

static void axpy_ref(float a, const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void scale_ref(float a, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] *= a;
}

static void add_ref(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

static void f16_to_f32_ref(const ml_fp16 *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = ml_fp16_to_f32(x[i]);
}

static void f32_to_f16_ref(const float *x, ml_fp16 *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = ml_f32_to_fp16(x[i]);
}

static void rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
  for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

static void silu_mul_ref(float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static double exp_shift_ref(float *y, const float *x, int64_t n, float shift, float scale, float cut) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += y[i] = x[i] >= cut ? expf((x[i] - shift) * scale) : 0.0f;
  return s;
}

const ml_rowops ml_rowops_ref = {"ref", dot_ref, axpy_ref, scale_ref, add_ref, f16_to_f32_ref, f32_to_f16_ref,
                                 rmsnorm_ref, silu_mul_ref, exp_shift_ref};

extern const ml_rowops ml_rowops_avx2 __attribute__((weak));

const ml_rowops *ml_rowops_get(void) {
  if (ml_level_active() >= ML_LEVEL_AVX2 && &ml_rowops_avx2) return &ml_rowops_avx2;
  return &ml_rowops_ref;
}
