/* threads.h: the one place for how many threads the library uses and for when a piece of
 * work is worth waking them. Parallel work is OpenMP, sized by ml_get_threads() (default: the
 * cores OpenMP sees; lm.threads(n) sets it for the process), and OpenBLAS's own pool is kept
 * to the same count.
 *
 * A fork/join costs a few microseconds; in that time one core streams ~50 KB of weights,
 * does ~100k int8 multiply-adds or touches ~10k floats. So work below these sizes runs on
 * the calling thread (ml_threads_for), measured per kind:
 *   ML_WORK_ELEMS  floats read and written by a copy or a conversion
 *   ML_WORK_ROWS   floats of a row op or an element-wise op that splits by rows (norms,
 *                  activations, rotations, residual adds; each row is computed the same way
 *                  on any thread, so the result does not depend on the split): a batch's
 *                  rows (~10^5 floats at 128 tokens) must use every thread, as the forward
 *                  pass's blocks do
 *   ML_WORK_BYTES  weight bytes a matrix product streams once (decode GEMV, packing)
 *   ML_WORK_MACS   multiply-adds of a product that reuses its operands (GEMM, pairwise dots)
 *   ML_WORK_CHUNK  weight bytes times tokens of a forward chunk: one region with a barrier
 *                  per step (a few dozen per layer), so it needs more work to pay off
 */
#ifndef ML_THREADS_H
#define ML_THREADS_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

int ml_get_threads(void);
int ml_set_threads(int n); /* clamped to [1, ml_max_threads()]; returns the count set */
int ml_max_threads(void);  /* the processors OpenMP sees */

typedef enum ml_work { ML_WORK_ELEMS, ML_WORK_ROWS, ML_WORK_BYTES, ML_WORK_MACS, ML_WORK_CHUNK } ml_work;
#define ML_PAR_MIN_ELEMS ((double)(1 << 20))
#define ML_PAR_MIN_ROWS ((double)(1 << 15))
#define ML_PAR_MIN_BYTES ((double)(256 << 10))
#define ML_PAR_MIN_MACS ((double)(1 << 21))
#define ML_PAR_MIN_CHUNK ((double)(1 << 20))

/* 1 when `amount` of this kind of work is below its threshold, else ml_get_threads(). */
int ml_threads_for(ml_work kind, double amount);
/* The larger of the two for a product that streams `bytes` of weights over `macs`. */
int ml_threads_for_product(double bytes, double macs);

/* Before an OpenBLAS call: its pool sized to ml_get_threads(). */
void ml_blas_threads(void);

/* The calling thread's index and the size of its OpenMP team (0 and 1 outside a region). */
static inline int ml_thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
static inline int ml_thread_count(void) {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

#endif
