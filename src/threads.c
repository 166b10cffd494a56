/* threads.c: the process-wide thread count and the "worth threading" thresholds (threads.h). */
#include "threads.h"

/* OpenBLAS keeps its own thread pool; we size it to ours (declared here so any cblas.h works). */
extern void openblas_set_num_threads(int);

static int n_threads = 0;     /* 0: not set yet (the default is every processor) */
static int blas_threads = 0;  /* what OpenBLAS was last told */

int ml_max_threads(void) {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

int ml_get_threads(void) {
  if (n_threads <= 0) n_threads = ml_max_threads();
  return n_threads;
}

int ml_set_threads(int n) {
  int max = ml_max_threads();
  n_threads = n < 1 ? 1 : n > max ? max : n;
  ml_blas_threads();
  return n_threads;
}

void ml_blas_threads(void) {
  int n = ml_get_threads();
  if (__atomic_load_n(&blas_threads, __ATOMIC_RELAXED) == n) return;
  openblas_set_num_threads(n);
  __atomic_store_n(&blas_threads, n, __ATOMIC_RELAXED);
}

int ml_threads_for(ml_work kind, double amount) {
  static const double min[] = {[ML_WORK_ELEMS] = ML_PAR_MIN_ELEMS, [ML_WORK_ROWS] = ML_PAR_MIN_ROWS,
                               [ML_WORK_BYTES] = ML_PAR_MIN_BYTES,
                               [ML_WORK_MACS] = ML_PAR_MIN_MACS, [ML_WORK_CHUNK] = ML_PAR_MIN_CHUNK};
  return amount < min[kind] ? 1 : ml_get_threads();
}

int ml_threads_for_product(double bytes, double macs) {
  return bytes < ML_PAR_MIN_BYTES && macs < ML_PAR_MIN_MACS ? 1 : ml_get_threads();
}
