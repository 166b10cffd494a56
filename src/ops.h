/* ops.h: tensor arithmetic. Inputs may be any type and any strides; math runs in f32 and
 * results are new contiguous f32 tensors (indices are i32). In-place forms need an f32
 * target. Dimensions are 0-based here; `out` is initialised only on success. A misuse names
 * its input as common.h counts them (the first tensor is 1). */
#ifndef ML_OPS_H
#define ML_OPS_H

#include "matmul.h"
#include "tensor.h"

typedef enum ml_binop { ML_OP_ADD, ML_OP_SUB, ML_OP_MUL, ML_OP_DIV, ML_OP_POW, ML_OP_MAXIMUM, ML_OP_MINIMUM } ml_binop;
typedef enum ml_unop {
  ML_OP_NEG, ML_OP_EXP, ML_OP_LOG, ML_OP_SQRT, ML_OP_TANH, ML_OP_RELU, ML_OP_SILU, ML_OP_GELU,
  ML_OP_ABS, ML_OP_SIGMOID, ML_OP_RSQRT, ML_OP_SQUARE
} ml_unop;
typedef enum ml_redop { ML_RED_SUM, ML_RED_MEAN, ML_RED_MAX, ML_RED_MIN, ML_RED_ARGMAX, ML_RED_ARGMIN } ml_redop;

/* Broadcast shape of a and b (numpy rules); -1 with a misuse of input 2. */
int ml_broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim, int64_t *shape);

int ml_binary(ml_tensor *out, const ml_tensor *a, const ml_tensor *b, ml_binop op);
int ml_binary_scalar(ml_tensor *out, const ml_tensor *a, double s, ml_binop op, int scalar_first);
int ml_binary_(const ml_tensor *a, const ml_tensor *b, ml_binop op); /* a op= b */
int ml_binary_scalar_(const ml_tensor *a, double s, ml_binop op);
int ml_unary(ml_tensor *out, const ml_tensor *a, ml_unop op);
int ml_unary_(const ml_tensor *a, ml_unop op);

/* Reduce along dim (-1: all elements into a 0-d tensor). arg-reductions give i32 indices. */
int ml_reduce(ml_tensor *out, const ml_tensor *a, int dim, int keepdim, ml_redop op);
int ml_softmax(ml_tensor *out, const ml_tensor *a, int dim);
int ml_log_softmax(ml_tensor *out, const ml_tensor *a, int dim);
/* Over the last dimension; weight/bias may be NULL (shape {last}). */
int ml_rmsnorm(ml_tensor *out, const ml_tensor *a, const ml_tensor *weight, double eps);
int ml_layernorm(ml_tensor *out, const ml_tensor *a, const ml_tensor *weight, const ml_tensor *bias, double eps);

/* Batched matrix product with broadcasting of the leading dims (OpenBLAS sgemm). */
int ml_matmul(ml_tensor *out, const ml_tensor *a, const ml_tensor *b);
/* x (..., K) · wᵀ with w (N, K) of any type, + b (N). Quantized w runs the kernels: over
 * the rows as stored for fewer than ML_MM_PACK_MIN_M rows of x, packed on the fly for more. */
int ml_linear(ml_tensor *out, const ml_tensor *x, const ml_tensor *w, const ml_tensor *b);
/* The same with a prepared weight (matmul.h: packed once, as the model's weights are). */
int ml_linear_w(ml_tensor *out, const ml_tensor *x, const ml_weight *w, const ml_tensor *b);

/* k largest (or smallest) along dim: values (f32) and indices (i32, 0-based), sorted. */
int ml_topk(ml_tensor *values, ml_tensor *indices, const ml_tensor *a, int64_t k, int dim, int largest);
/* Concatenate along dim; all types equal keeps the type, otherwise f32. */
int ml_cat(ml_tensor *out, const ml_tensor *const *ts, int n, int dim);
int ml_stack(ml_tensor *out, const ml_tensor *const *ts, int n, int dim);
/* Rows of a (first dim) picked by 0-based ids (any integer or float tensor / array). */
int ml_index_select(ml_tensor *out, const ml_tensor *a, int dim, const int64_t *ids, int64_t n);
/* a (..., n, d) -> (..., n(n-1)/2): the dot products of every pair of rows i > j of each
 * (n, d) matrix, in the order (1,0), (2,0), (2,1), (3,0) ... (0-based); with diagonal, every
 * i >= j: (0,0), (1,0), (1,1) ... (n(n+1)/2 values). DLRM's feature interaction. */
int ml_pairwise_dot(ml_tensor *out, const ml_tensor *a, int diagonal);

#endif
