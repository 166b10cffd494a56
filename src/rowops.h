/* rowops.h: the small vector operations of the forward pass outside the matrix products
 * (attention's dot products and accumulations, f16 key/value rows to f32, RMSNorm, SwiGLU,
 * residual adds), with a portable version and an AVX2+FMA+F16C one chosen at run time by
 * the same kernel level as the matrix products. */
#ifndef ML_ROWOPS_H
#define ML_ROWOPS_H

#include <stdint.h>

#include "dtype.h"

typedef struct ml_rowops {
  const char *name;
  float (*dot)(const float *a, const float *b, int64_t n);
  void (*axpy)(float a, const float *x, float *y, int64_t n); /* y += a x */
  void (*scale)(float a, float *y, int64_t n);                /* y *= a */
  void (*add)(float *y, const float *x, int64_t n);           /* y += x */
  void (*f16_to_f32)(const ml_fp16 *x, float *y, int64_t n);
  void (*f32_to_f16)(const float *x, ml_fp16 *y, int64_t n);
  /* y = x / sqrt(mean(x²) + eps) * w */
  void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
  void (*silu_mul)(float *g, const float *u, int64_t n);      /* g = silu(g) * u */
  /* y = x >= cut ? exp((x - shift) * scale) : 0, returning the sum of y (in double) */
  double (*exp_shift)(float *y, const float *x, int64_t n, float shift, float scale, float cut);
} ml_rowops;

extern const ml_rowops ml_rowops_ref;
/* The best set for the active kernel level. */
const ml_rowops *ml_rowops_get(void);

#endif
