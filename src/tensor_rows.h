/* tensor_rows.h: how the f32 ops (ops.c, ops_ext.c, rope.c) walk a tensor: as rows of its
 * innermost dimension, each reached through the strides of the others. Internal to the core. */
#ifndef ML_TENSOR_ROWS_H
#define ML_TENSOR_ROWS_H

#include "tensor.h"

/* dst: a view of src if it is f32, else an f32 copy. */
static inline int as_f32(ml_tensor *dst, const ml_tensor *src) {
  if (src->type == ML_TYPE_F32) {
    ml_tensor_view_of(dst, src);
    return 0;
  }
  return ml_tensor_to(dst, src, ML_TYPE_F32);
}

/* The number of rows: the product of every dimension but the last. */
static inline int64_t rows_of(const ml_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim - 1; i++) n *= t->shape[i];
  return n;
}

static inline int64_t last_dim(const ml_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
static inline int64_t last_stride(const ml_tensor *t) { return t->ndim ? t->stride[t->ndim - 1] : 1; }

/* Element offset of row r (logical order over every dimension but the last). */
static inline int64_t row_elems(const ml_tensor *t, int64_t r) {
  int64_t e = 0;
  for (int d = t->ndim - 2; d >= 0; d--) {
    e += (r % t->shape[d]) * t->stride[d];
    r /= t->shape[d];
  }
  return e;
}

static inline float *f32p(const ml_tensor *t) { return (float *)ml_tensor_data(t); }

#endif
