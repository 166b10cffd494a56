/* matmul.h: y = x · wᵀ for a weight tensor of any type, on the active kernel level, split
 * across the OpenMP threads. The one entry point the ops and the model use for weights. */
#ifndef ML_MATMUL_H
#define ML_MATMUL_H

#include "tensor.h"

/* w: (N, K) tensor whose rows are contiguous (any type); x: M rows of K floats, ldx apart;
 * y: M rows of N floats, ldy apart. Returns 0, or -1 with an error. */
int ml_mm(const ml_tensor *w, int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y,
          int64_t ldy);
/* The same on raw weights: N rows of K elements of wt, w_row_bytes apart. */
int ml_mm_raw(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, const float *x, int64_t ldx,
              int64_t M, float *y, int64_t ldy);

#endif
