/* kernels.h: the dot-product kernel levels and the matmul drivers built on them.
 *
 * A level (ref here; avx2, avx512, amx later, one file each, each compiled with its own
 * -m flags) is a table of three kinds of kernels, indexed by ml_type id:
 *
 *   quantize[vt]  activations f32 -> vec_dot type vt (f32, f16, bf16, q8_0, q8_1, q8_K),
 *                 rounding exactly as ggml's x86 CPU backend does (q8_0/q8_1 round half to
 *                 even with id = 127/amax; q8_1 stores s = half(d * sum q); q8_K keeps
 *                 bsums). Every level must produce the same bytes as ref, so activations
 *                 quantized by one level are valid input to any level's dot products.
 *   vec_dot[wt]   s = sum_i w[i] * a[i] over n elements: w one weight row of type wt, a one
 *                 activation row already in ml_type_traits_get(wt)->vec_dot_type.
 *   matmul[wt]    a 2-D kernel over a thread slice of the N weight rows (see ml_matmul_args);
 *                 returns 1 if it computed its slice, 0 if it declines (shape, alignment),
 *                 and the caller falls back to the vec_dot loop.
 *
 * NULL means "not provided by this level". Kernels never allocate and never read past n
 * elements; n (K) must be a multiple of the weight type's block (32 or 256), which the
 * drivers check and the bare kernels assume. Rows must be aligned to their block struct
 * (2 bytes for the f16/quant blocks, 4 for f32 and q8_K), which GGUF data always is; the
 * drivers decline (return 0) misaligned pointers or strides.
 *
 * The ref level is the oracle for the SIMD levels: they are tested against it on random
 * shapes with a tolerance (accumulation order differs), not for identical bits. Ref
 * accumulates like ggml's generic code: an int32 sum inside each block, one float product
 * per block with the block scales; f32/f16/bf16 rows sum in double.
 *
 * Dispatch: a dispatcher copies ml_kernels_ref, then ml_kernels_merge()s each level the
 * CPU and OS support, lowest first, so every entry is the best available.
 */
#ifndef ML_KERNELS_H
#define ML_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../dtype.h"

typedef float (*ml_vec_dot_fn)(int64_t n, const void *w, const void *a);
typedef void (*ml_act_quantize_fn)(const float *x, void *dst, int64_t n);

/* y = x w^T for one weight matrix: y[m][n] = sum_k a[m][k] * w[n][k]. */
typedef struct ml_matmul_args {
  ml_type wt;          /* weight type */
  const void *w;       /* (N, K) weights: N rows of K elements of wt */
  size_t w_row_bytes;  /* bytes between weight rows (>= ml_type_nbytes(wt, K)) */
  int64_t N, K;
  const void *a;       /* (M, K) activations in wt's vec_dot_type */
  size_t a_row_bytes;  /* bytes between activation rows */
  int64_t M;
  float *y;            /* (M, N) output, y[m * ldy + n] */
  int64_t ldy;         /* floats between output rows (>= N) */
} ml_matmul_args;

/* Computes output columns n in the slice ith of nth (ml_slice) for all M rows. */
typedef int (*ml_matmul_fn)(const ml_matmul_args *p, int ith, int nth);

typedef struct ml_kernels {
  const char *name;                           /* "ref", "avx2", "avx512", "amx" */
  ml_vec_dot_fn vec_dot[ML_TYPE_COUNT];       /* by weight type */
  ml_act_quantize_fn quantize[ML_TYPE_COUNT]; /* by vec_dot type */
  ml_matmul_fn matmul[ML_TYPE_COUNT];         /* by weight type */
} ml_kernels;

/* The portable C level: every weight type f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0,
 * q2_K..q6_K, and every vec_dot type. Its matmul entries are NULL: its 2-D kernel is the
 * generic vec_dot loop of ml_matmul_run. */
extern const ml_kernels ml_kernels_ref;

/* Overlay src's non-NULL entries on dst (dst->name becomes src->name). A type whose
 * vec_dot src provides but whose matmul it does not gets matmul NULL, so the generic loop
 * runs over src's better vec_dot rather than a lower level's 2-D kernel. */
void ml_kernels_merge(ml_kernels *dst, const ml_kernels *src);

/* Rows [*i0, *i1) of `count` for thread ith of nth: contiguous, sizes differing by <= 1. */
void ml_slice(int64_t count, int ith, int nth, int64_t *i0, int64_t *i1);

/* ---- matmul drivers, for any level ---- */

/* Bytes of one activation row of K elements in wt's vec_dot type, rounded up to 64 so
 * every row starts cache-line aligned in the scratch; 0 if wt has no dot product or K is
 * not a multiple of its block. */
size_t ml_matmul_act_row_bytes(ml_type wt, int64_t K);

/* Scratch for ml_kernels_matmul: M activation rows (0 for f32 weights, which use x as
 * is). 0 also when the case is unsupported; ml_kernels_matmul then returns 0. */
size_t ml_matmul_scratch_bytes(ml_type wt, int64_t K, int64_t M);

/* Phase 1: convert activation rows [slice ith of nth over M] of x (row stride ldx floats)
 * to wt's vec_dot type at a + m * a_row_bytes. Returns 1, or 0 if unsupported/invalid. */
int ml_matmul_quantize_acts(const ml_kernels *k, ml_type wt, const float *x, int64_t ldx,
                            int64_t M, int64_t K, void *a, size_t a_row_bytes, int ith, int nth);

/* Phase 2: the slice ith of nth over N, through k->matmul[wt] if it accepts the case, else
 * the vec_dot loop over k->vec_dot[wt]. Returns 1, or 0 if unsupported/invalid. Threads
 * run phase 1 on their own slices, meet at a barrier, then run phase 2. */
int ml_matmul_run(const ml_kernels *k, const ml_matmul_args *p, int ith, int nth);

/* Both phases on one thread: y (M x N, row stride ldy floats) = x (M x K, row stride ldx
 * floats) times w^T (N rows of K elements of type wt, w_row_bytes apart). scratch holds
 * ml_matmul_scratch_bytes(wt, K, M) bytes, 64-byte aligned (may be NULL for f32). Returns
 * 1 when computed, 0 when wt has no kernel or a size or stride is invalid. */
int ml_kernels_matmul(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes,
                      int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y,
                      int64_t ldy, void *scratch);

/* ml_kernels_matmul with the ref level: the oracle for every faster path. */
int ml_ref_matmul(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
                  const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy, void *scratch);

/* The ref activation quantizers, for tests of other levels (same as ml_kernels_ref.quantize). */
void ml_ref_quantize_act_q8_0(const float *x, void *dst, int64_t n);
void ml_ref_quantize_act_q8_1(const float *x, void *dst, int64_t n);

#endif
