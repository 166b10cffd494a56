/* matmul.c: drives the kernel level's matmul for one weight matrix. Activations are
 * converted once per call to the weight type's dot format (each thread its own rows), the
 * threads meet at a barrier, then each computes its slice of output columns. Large f32
 * products go to OpenBLAS sgemm instead. */
#include "matmul.h"

#include <cblas.h>

#include "common.h"
#include "kernels/dispatch.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

extern void openblas_set_num_threads(int);

/* below this many multiply-adds one thread is faster than waking the others */
#define MM_PAR_MIN (1 << 16)

int ml_mm_raw(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, const float *x, int64_t ldx,
              int64_t M, float *y, int64_t ldy) {
  const ml_kernels *k = ml_kernels_active();
  const ml_type_traits *tr = ml_type_traits_get(wt);
  if (!tr || !k->vec_dot[wt]) {
    ml_seterr_arg(2, "no matmul kernel for %s weights", tr ? tr->name : "unknown");
    return -1;
  }
  if (K % tr->blck) {
    ml_seterr_arg(2, "%s rows need a multiple of %d elements, got %lld", tr->name, tr->blck, (long long)K);
    return -1;
  }
  if (M == 0 || N == 0) return 0;
  if (wt == ML_TYPE_F32 && M >= 16 && N >= 16 && K >= 16 && w_row_bytes % 4 == 0) {
    openblas_set_num_threads(ml_get_threads());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x, (int)ldx, (const float *)w,
                (int)(w_row_bytes / 4), 0.0f, y, (int)ldy);
    return 0;
  }
  size_t arb = ml_matmul_act_row_bytes(wt, K), sb = ml_matmul_scratch_bytes(wt, K, M);
  void *scratch = sb ? ml_alloc(sb) : NULL;
  if (sb && !scratch) return -1;
  ml_matmul_args p = {wt, w, w_row_bytes, N, K, wt == ML_TYPE_F32 ? (const void *)x : scratch,
                      wt == ML_TYPE_F32 ? (size_t)ldx * 4 : arb, M, y, ldy};
  int ok = 1;
  int nth = (double)M * (double)N * (double)K < MM_PAR_MIN ? 1 : ml_get_threads();
#pragma omp parallel num_threads(nth) reduction(&& : ok)
  {
#ifdef _OPENMP
    int ith = omp_get_thread_num(), n = omp_get_num_threads();
#else
    int ith = 0, n = 1;
#endif
    if (wt != ML_TYPE_F32) ok = ml_matmul_quantize_acts(k, wt, x, ldx, M, K, scratch, arb, ith, n);
#pragma omp barrier
    ok = ml_matmul_run(k, &p, ith, n) && ok;
  }
  ml_free(scratch);
  if (!ok) {
    ml_seterr("matmul kernel refused the case (%s, N=%lld, K=%lld, M=%lld)", tr->name, (long long)N, (long long)K,
              (long long)M);
    return -1;
  }
  return 0;
}

int ml_mm(const ml_tensor *w, int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  ml_tensor c;
  const ml_type_traits *tr = ml_type_traits_get(w->type);
  if (w->ndim != 2 || w->shape[0] != N || w->shape[1] != K) {
    ml_seterr_arg(2, "weight shape mismatch");
    return -1;
  }
  if (w->stride[1] == 1 || K <= 1) {
    size_t rb = (size_t)(w->stride[0] / tr->blck) * tr->size;
    if (N == 1) rb = ml_type_nbytes(w->type, K);
    return ml_mm_raw(w->type, ml_tensor_data(w), rb, N, K, x, ldx, M, y, ldy);
  }
  if (ml_tensor_contiguous(&c, w) < 0) return -1;
  int rc = ml_mm_raw(c.type, ml_tensor_data(&c), ml_type_nbytes(c.type, K), N, K, x, ldx, M, y, ldy);
  ml_tensor_release(&c);
  return rc;
}
