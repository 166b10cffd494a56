/* ops_ext.h: the torch7 essentials a model author reaches for beyond ops.h: comparisons,
 * where / masked_fill / clamp, sort, cumulative sums, gather / scatter, moments and norms,
 * constructors (eye, linspace), random draws (multinomial, randint) and conv1d.
 *
 * The conventions of ops.h hold: inputs of any type and strides, math in f32 (sums in
 * double), new contiguous f32 results (positions i32), in-place forms on f32 tensors only.
 * Dimensions and positions are 0-based here; index tensors hold positions offset by `base`
 * (the binding passes 1: Lua's indices), so an index tensor is never copied to rebase it.
 * A misuse names its input as common.h counts them. */
#ifndef ML_OPS_EXT_H
#define ML_OPS_EXT_H

#include "tensor.h"

typedef enum ml_cmpop { ML_CMP_EQ, ML_CMP_NE, ML_CMP_LT, ML_CMP_LE, ML_CMP_GT, ML_CMP_GE } ml_cmpop;

/* out = (a op b) ? 1 : 0, broadcast (numpy rules); NaN compares unequal to everything. */
int ml_compare(ml_tensor *out, const ml_tensor *a, const ml_tensor *b, ml_cmpop op);
/* *eq = 1 when a and b have the same shape and equal elements (compared as f32 for float
 * types, exactly for integer types; any NaN makes them differ), else 0. */
int ml_equal(const ml_tensor *a, const ml_tensor *b, int *eq);
/* out = cond != 0 ? a : b, the three broadcast together. */
int ml_where(ml_tensor *out, const ml_tensor *cond, const ml_tensor *a, const ml_tensor *b);
/* a = mask != 0 ? v : a, mask broadcast to a's shape (a f32). */
int ml_masked_fill_(const ml_tensor *a, const ml_tensor *mask, double v);
/* a = min(max(a, lo), hi); a NaN bound is no bound, NaN elements stay NaN (a f32). */
int ml_clamp_(const ml_tensor *a, double lo, double hi);

/* Stable sort along dim: values (f32) and their positions (i32, + base). NaN sorts above
 * every number (last ascending, first descending). */
int ml_sort(ml_tensor *values, ml_tensor *indices, const ml_tensor *a, int dim, int descending, int64_t base);
/* Running sum (or product) along dim, accumulated in double. */
int ml_cumulative(ml_tensor *out, const ml_tensor *a, int dim, int product);

/* out[..i_dim..] = a[..index[..i..] - base..] along dim (torch.gather): out has index's
 * shape; index has a's number of dimensions and no more than a's size in the others. */
int ml_gather(ml_tensor *out, const ml_tensor *a, int dim, const ml_tensor *index, int64_t base);
/* a[..index[..i..] - base..] = src[..i..] (or += with add) along dim (torch.scatter_);
 * src NULL writes v everywhere index points. index fits src's and a's shape as in gather. */
int ml_scatter_(const ml_tensor *a, int dim, const ml_tensor *index, const ml_tensor *src, double v, int64_t base,
                int add);

/* Variance along dim (-1: all elements, a 0-d result), divided by n - 1 when unbiased
 * (NaN when that is 0); the standard deviation with root. */
int ml_var(ml_tensor *out, const ml_tensor *a, int dim, int keepdim, int unbiased, int root);
/* p-norm along dim (-1: all): (Σ|x|^p)^(1/p); p = inf: max |x|; p = 0: nonzero count. */
int ml_norm(ml_tensor *out, const ml_tensor *a, double p, int dim, int keepdim);
/* Σ a_i b_i over tensors with the same number of elements (in double). */
int ml_dot(const ml_tensor *a, const ml_tensor *b, double *out);

/* n x m identity (f32). */
int ml_eye(ml_tensor *out, int64_t n, int64_t m);
/* n evenly spaced values from a to b, both included (n >= 1; n = 1 gives a). */
int ml_linspace(ml_tensor *out, double a, double b, int64_t n);
/* n draws per row of probs (K) or (R, K) with weights proportional to the entries
 * (non-negative, finite, not all 0), with or without replacement: positions + base, i32. */
int ml_multinomial(ml_tensor *out, const ml_tensor *probs, int64_t n, int replacement, ml_rng *r, int64_t base);
/* Integers drawn uniformly from [lo, hi] (both included), i32. */
int ml_randint(ml_tensor *out, int ndim, const int64_t *shape, int64_t lo, int64_t hi, ml_rng *r);

/* 1-D convolution (cross-correlation, as torch): x (C_in, L) or (N, C_in, L), w (C_out,
 * C_in / groups, K), b (C_out) or NULL -> (C_out, L_out) or (N, C_out, L_out) with
 * L_out = (L + 2 padding - dilation (K - 1) - 1) / stride + 1. */
int ml_conv1d(ml_tensor *out, const ml_tensor *x, const ml_tensor *w, const ml_tensor *b, int64_t stride,
              int64_t padding, int64_t dilation, int64_t groups);

#endif
