/* matmul.h: y = x · wᵀ for a weight matrix of any type, on the active kernel level, split
 * across the OpenMP threads: the one driver (matmul.c) between the ops, the model and the
 * leaf kernels of src/kernels/. The entry points the ops and the model use for weights.
 *
 * Two ways in:
 *
 *   ml_mm(w, ...)       a plain (N, K) tensor. Few activation rows run the level's dot
 *                       products over w as it is; many rows (>= ML_MM_PACK_MIN_M) pack w
 *                       into a temporary x16 copy first and run the GEMM kernel.
 *
 *   ml_weight           a prepared weight, made once at load time:
 *
 *     ml_weight pw;
 *     if (ml_weight_prepare(&pw, &tensor, 0) < 0) ... ;     // error set
 *     ml_mm_w(&pw, x, ldx, M, y, ldy);                       // M = 1 decode, M = n prefill
 *     ml_weight_release(&pw);
 *
 *   Preparing keeps a view of the tensor (retaining its storage) and, when the active
 *   level has kernels over the x16 packed layout for the type (kernels.h: gemv / gemm),
 *   a packed copy: the same bytes rearranged 16 rows at a time, so it costs exactly the
 *   size of the weight. Both the decode GEMV and the prefill GEMM read only the packed
 *   copy, so the original (mmapped) pages are never touched again: the caller may drop
 *   them (madvise(MADV_DONTNEED) on a private read-only mapping) to hold one copy in
 *   memory. Types without a packed layout (f32), or flags ML_WEIGHT_NO_PACK, keep using
 *   the original; results are the same either way (tolerance of the accumulation order).
 *   Packing runs on the ml_get_threads() threads at about memory speed (pw.prepare_seconds).
 *
 * Threads: one OpenMP region per call, or none when the product is too small for two
 * threads to pay off. A caller that already runs a parallel region (one per layer) can
 * call the two phases itself, every thread of the region with its (ith, nth):
 *
 *     void *act = <ml_mm_w_act_bytes(&pw, M) bytes, 64-byte aligned, shared>;
 *     ml_mm_w_quantize(&pw, x, ldx, M, act, ith, nth);
 *     #pragma omp barrier
 *     ml_mm_w_compute(&pw, act, M, y, ldy, ith, nth);
 *
 * Nothing in the call path allocates once each thread's scratch has grown to the largest
 * K it has seen (it is kept per thread and freed when the thread exits).
 */
#ifndef ML_MATMUL_H
#define ML_MATMUL_H

#include "kernels/kernels.h"
#include "tensor.h"

/* w: (N, K) tensor whose rows are contiguous (any type); x: M rows of K floats, ldx apart;
 * y: M rows of N floats, ldy apart. Returns 0, or -1 with an error (a weight of a type with no
 * matmul kernel, or rows that are not whole blocks, is a misuse of input 1). */
int ml_mm(const ml_tensor *w, int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y,
          int64_t ldy);
/* The same on raw weights: N rows of K elements of wt, w_row_bytes apart. */
int ml_mm_raw(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, const float *x, int64_t ldx,
              int64_t M, float *y, int64_t ldy);

/* The dot-product path (no packing) on one thread, on a given kernel table: with
 * &ml_kernels_ref, the oracle every other path is tested against. Returns 0, or -1 with an
 * error (as ml_mm_raw). */
int ml_mm_rows(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
               const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy);

/* ml_mm packs plain weights on the fly from this many activation rows on. */
#define ML_MM_PACK_MIN_M 32

enum {
  ML_WEIGHT_NO_PACK = 1, /* never make a packed copy */
  ML_WEIGHT_COPY = 2,    /* without a packed copy, keep a copy of w rather than a view: either
                            way later writes to w are not seen */
};

typedef struct ml_weight {
  ml_tensor w;            /* (N, K) view of the original weights (holds a reference) */
  ml_type type;
  int64_t N, K;
  const ml_kernels *k;    /* the kernel table it was prepared for */
  void *packed;           /* x16 copy (ceil(N/16) tiles), or NULL: kernels read w */
  size_t packed_bytes, tile_bytes;
  size_t mapped_bytes;    /* > 0: packed is an anonymous mapping (huge pages) of this size */
  double prepare_seconds; /* wall time of the packing */
} ml_weight;

/* w: a 2-D tensor (N, K) of any type with contiguous rows (a view into a GGUF mapping is
 * typical). Returns 0, or -1 with an error (nothing to release then). */
int ml_weight_prepare(ml_weight *pw, const ml_tensor *w, int flags);
/* The same for a given kernel table (tests; ml_kernels_named in kernels/dispatch.h). */
int ml_weight_prepare_with(ml_weight *pw, const ml_tensor *w, const ml_kernels *k, int flags);
void ml_weight_release(ml_weight *pw); /* safe to call twice */

/* y (M x N, ldy) = x (M x K, ldx) · wᵀ. Returns 0, or -1 with an error. */
int ml_mm_w(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy);

/* The two phases, for a caller's own parallel region (see above). Both return 0 or -1. */
size_t ml_mm_w_act_bytes(const ml_weight *pw, int64_t M);
int ml_mm_w_quantize(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, void *act, int ith, int nth);
int ml_mm_w_compute(const ml_weight *pw, const void *act, int64_t M, float *y, int64_t ldy, int ith, int nth);

/* Which kernel ml_mm_w runs: auto (GEMM from ML_GEMM_MIN_M rows, else GEMV), or forced
 * (tests, benchmarks). PLAIN runs the dot products over the original weights; PHASES is
 * auto through ml_mm_w_quantize / ml_mm_w_compute in a region of ml_get_threads(). */
typedef enum ml_mm_path { ML_MM_AUTO, ML_MM_GEMV, ML_MM_GEMM, ML_MM_PLAIN, ML_MM_PHASES } ml_mm_path;
#define ML_GEMM_MIN_M 16
int ml_mm_w_path(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy,
                 ml_mm_path path);

#endif
