/* matmul.c: drives the kernel level for one weight matrix. Phase 1 converts the activation
 * rows once per call to the weight type's dot format (each thread its own rows); phase 2,
 * after a barrier, computes each thread's slice of output rows of w: 16-row tiles of the
 * packed copy (kernels gemv / gemm), or rows of the original (vec_dot / matmul). Large f32
 * products go to OpenBLAS sgemm. Scratch is per thread and grows, so steady-state calls do
 * not allocate. */
#include "matmul.h"

#include <cblas.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common.h"
#include "kernels/dispatch.h"
#include "threads.h"

/* ---- per-thread scratch ---- */

typedef struct scratch {
  void *p[2];
  size_t n[2];
} scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
  scratch *s = v;
  ml_free(s->p[0]);
  ml_free(s->p[1]);
  ml_free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

/* Buffer `which` (0: kernel work, 1: activations) of this thread, at least n bytes. */
static void *thread_buf(int which, size_t n) {
  pthread_once(&scratch_once, scratch_init);
  scratch *s = pthread_getspecific(scratch_key);
  if (!s) {
    s = ml_calloc(sizeof *s);
    if (!s) return NULL;
    pthread_setspecific(scratch_key, s);
  }
  if (n > s->n[which]) {
    ml_free(s->p[which]);
    s->n[which] = 0;
    s->p[which] = ml_alloc(n);
    if (!s->p[which]) return NULL;
    s->n[which] = n;
  }
  return s->p[which];
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- plain weights ---- */

static int check_type(ml_type wt, int64_t K) {
  const ml_type_traits *tr = ml_type_traits_get(wt);
  if (!tr || !ml_kernels_ref.vec_dot[wt]) {
    ml_misuse(1, "no matmul kernel for %s weights", tr ? tr->name : "unknown");
    return -1;
  }
  if (K % tr->blck) {
    ml_misuse(1, "%s rows need a multiple of %d elements, got %lld", tr->name, tr->blck, (long long)K);
    return -1;
  }
  return 0;
}

static int threads_for(ml_type wt, int64_t N, int64_t K, int64_t M) {
  return ml_threads_for_product((double)N * (double)ml_type_nbytes(wt, K), (double)N * (double)K * (double)M);
}

static int refused(ml_type wt, int64_t N, int64_t K, int64_t M) {
  ml_seterr("matmul kernel refused the case (%s, N=%lld, K=%lld, M=%lld)", ml_type_traits_get(wt)->name,
            (long long)N, (long long)K, (long long)M);
  return -1;
}

/* f32 through sgemm; 1 if it took the case */
static int f32_blas(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, const float *x, int64_t ldx,
                    int64_t M, float *y, int64_t ldy) {
  if (wt != ML_TYPE_F32 || M < 16 || N < 16 || K < 16 || w_row_bytes % 4) return 0;
  ml_blas_threads();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x, (int)ldx, (const float *)w,
              (int)(w_row_bytes / 4), 0.0f, y, (int)ldy);
  return 1;
}

static int mm_plain(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
                    const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  if (f32_blas(wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy)) return 0;
  size_t arb = ml_matmul_act_row_bytes(wt, K), sb = ml_matmul_scratch_bytes(wt, K, M);
  void *act = sb ? thread_buf(1, sb) : NULL;
  if (sb && !act) return -1;
  ml_matmul_args p = {wt, w, w_row_bytes, N, K, wt == ML_TYPE_F32 ? (const void *)x : act,
                      wt == ML_TYPE_F32 ? (size_t)ldx * 4 : arb, M, y, ldy};
  int ok = 1;
  int nth = threads_for(wt, N, K, M);
  if (nth == 1) {
    ok = (wt == ML_TYPE_F32 || ml_matmul_quantize_acts(k, wt, x, ldx, M, K, act, arb, 0, 1)) &&
         ml_matmul_run(k, &p, 0, 1);
  } else {
#pragma omp parallel num_threads(nth) reduction(&& : ok)
    {
      int ith = ml_thread_id(), n = ml_thread_count();
      if (wt != ML_TYPE_F32) ok = ml_matmul_quantize_acts(k, wt, x, ldx, M, K, act, arb, ith, n);
#pragma omp barrier
      ok = ml_matmul_run(k, &p, ith, n) && ok;
    }
  }
  return ok ? 0 : refused(wt, N, K, M);
}

/* ---- packed weights ---- */

static int pack_into(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, void *dst) {
  int64_t tiles = (N + ML_X16 - 1) / ML_X16;
  int nth = threads_for(wt, N, K, 1);
  if (nth == 1) {
    ml_x16_pack(wt, w, w_row_bytes, N, K, dst, 0, tiles);
    return 0;
  }
#pragma omp parallel num_threads(nth)
  {
    int64_t t0, t1;
    ml_slice(tiles, ml_thread_id(), ml_thread_count(), &t0, &t1);
    ml_x16_pack(wt, w, w_row_bytes, N, K, dst, t0, t1);
  }
  return 0;
}

/* Phase 1 for packed weights: rows [slice ith of nth] of x to panel rows. */
static int quantize_panel(const ml_kernels *k, ml_type wt, int64_t K, const float *x, int64_t ldx, int64_t M,
                          uint8_t *act, size_t arb, int ith, int nth) {
  ml_type vt = ml_type_traits_get(wt)->vec_dot_type;
  void *raw = thread_buf(0, ml_x16_work_bytes(wt, K));
  if (!raw || !k->quantize[vt]) return 0;
  int64_t m0, m1;
  ml_slice(M, ith, nth, &m0, &m1);
  for (int64_t m = m0; m < m1; m++) {
    k->quantize[vt](x + m * ldx, raw, K);
    ml_panel_fill(wt, raw, K, act + (size_t)m * arb);
  }
  return 1;
}

static ml_packed_fn choose(const ml_kernels *k, ml_type wt, int64_t M, ml_mm_path path) {
  ml_packed_fn v = k->gemv[wt], m = k->gemm[wt];
  if (path == ML_MM_GEMV) return v ? v : m;
  if (path == ML_MM_GEMM) return m ? m : v;
  return (M >= ML_GEMM_MIN_M && m) || !v ? m : v;
}

static int run_packed(ml_packed_fn fn, ml_type wt, const void *packed, size_t tile_bytes, int64_t N, int64_t K,
                      const void *act, size_t arb, int64_t M, float *y, int64_t ldy, int ith, int nth) {
  void *work = thread_buf(0, ml_x16_work_bytes(wt, K));
  if (!work || !fn) return 0;
  ml_packed_args p = {wt, packed, tile_bytes, N, K, act, arb, M, y, ldy};
  fn(&p, work, ith, nth);
  return 1;
}

static int mm_packed(const ml_kernels *k, ml_type wt, const void *packed, size_t tile_bytes, int64_t N, int64_t K,
                     const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy, ml_mm_path path) {
  ml_panel pl;
  ml_packed_fn fn = choose(k, wt, M, path);
  if (!fn || ml_panel_layout(wt, K, &pl) < 0) return refused(wt, N, K, M);
  uint8_t *act = thread_buf(1, pl.row_bytes * (size_t)M);
  if (!act) return -1;
  int ok = 1, nth = threads_for(wt, N, K, M);
  if (nth == 1) {
    ok = quantize_panel(k, wt, K, x, ldx, M, act, pl.row_bytes, 0, 1) &&
         run_packed(fn, wt, packed, tile_bytes, N, K, act, pl.row_bytes, M, y, ldy, 0, 1);
  } else {
#pragma omp parallel num_threads(nth) reduction(&& : ok)
    {
      int ith = ml_thread_id(), n = ml_thread_count();
      ok = quantize_panel(k, wt, K, x, ldx, M, act, pl.row_bytes, ith, n);
#pragma omp barrier
      ok = run_packed(fn, wt, packed, tile_bytes, N, K, act, pl.row_bytes, M, y, ldy, ith, n) && ok;
    }
  }
  return ok ? 0 : refused(wt, N, K, M);
}

/* ---- ml_mm ---- */

static int has_packed(const ml_kernels *k, ml_type wt, int64_t K) {
  return (k->gemv[wt] || k->gemm[wt]) && ml_x16_tile_bytes(wt, K) > 0;
}

int ml_mm_raw(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, const float *x, int64_t ldx,
              int64_t M, float *y, int64_t ldy) {
  const ml_kernels *k = ml_kernels_active();
  if (check_type(wt, K) < 0) return -1;
  if (M == 0 || N == 0) return 0;
  if (M >= ML_MM_PACK_MIN_M && k->gemm[wt] && has_packed(k, wt, K)) {
    size_t tb = ml_x16_tile_bytes(wt, K);
    int64_t tiles = (N + ML_X16 - 1) / ML_X16;
    void *packed = ml_alloc(tb * (size_t)tiles);
    if (!packed) return -1;
    pack_into(wt, w, w_row_bytes, N, K, packed);
    int rc = mm_packed(k, wt, packed, tb, N, K, x, ldx, M, y, ldy, ML_MM_GEMM);
    ml_free(packed);
    return rc;
  }
  return mm_plain(k, wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy);
}

/* Row bytes of a 2-D tensor with contiguous rows, or 0 if its rows are not contiguous. */
static size_t row_bytes_of(const ml_tensor *w, int64_t N, int64_t K) {
  const ml_type_traits *tr = ml_type_traits_get(w->type);
  if (w->stride[1] != 1 && K > 1) return 0;
  if (N == 1) return ml_type_nbytes(w->type, K);
  return (size_t)(w->stride[0] / tr->blck) * tr->size;
}

int ml_mm(const ml_tensor *w, int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  ml_tensor c;
  if (w->ndim != 2 || w->shape[0] != N || w->shape[1] != K) {
    ml_misuse(1, "weight shape mismatch");
    return -1;
  }
  size_t rb = row_bytes_of(w, N, K);
  if (rb) return ml_mm_raw(w->type, ml_tensor_data(w), rb, N, K, x, ldx, M, y, ldy);
  if (ml_tensor_contiguous(&c, w) < 0) return -1;
  int rc = ml_mm_raw(c.type, ml_tensor_data(&c), ml_type_nbytes(c.type, K), N, K, x, ldx, M, y, ldy);
  ml_tensor_release(&c);
  return rc;
}

/* ---- prepared weights ---- */

/* Packed copies of 2 MB and more are anonymous mappings advised to use huge pages: the
 * GEMV streams them once per token, and 4 KB pages would cost a TLB miss every 4 KB. */
#define HUGE_PAGE ((size_t)2 << 20)

static void *packed_alloc(ml_weight *pw, size_t n) {
  pw->mapped_bytes = 0;
#ifdef MADV_HUGEPAGE
  if (n >= HUGE_PAGE) {
    size_t len = (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    /* over-map by a huge page to align the start to one */
    uint8_t *p = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      uint8_t *a = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
      if (a > p) munmap(p, (size_t)(a - p));
      if (a + len < p + len + HUGE_PAGE) munmap(a + len, (size_t)(p + len + HUGE_PAGE - (a + len)));
      madvise(a, len, MADV_HUGEPAGE);
      pw->mapped_bytes = len;
      return a;
    }
  }
#endif
  return ml_alloc(n);
}

static void packed_free(ml_weight *pw) {
  if (pw->mapped_bytes) munmap(pw->packed, pw->mapped_bytes);
  else ml_free(pw->packed);
  pw->packed = NULL;
  pw->mapped_bytes = 0;
}

int ml_weight_prepare_with(ml_weight *pw, const ml_tensor *w, const ml_kernels *k, int flags) {
  memset(pw, 0, sizeof *pw);
  if (w->ndim != 2) {
    ml_misuse(1, "weight must be a matrix (out, in), got %d dimensions", w->ndim);
    return -1;
  }
  int64_t N = w->shape[0], K = w->shape[1];
  if (check_type(w->type, K) < 0) return -1;
  if (ml_tensor_contiguous(&pw->w, w) < 0) return -1; /* a view when rows already are */
  pw->type = w->type;
  pw->N = N;
  pw->K = K;
  pw->k = k;
  if ((flags & ML_WEIGHT_NO_PACK) || !has_packed(k, w->type, K) || N == 0) return 0;
  pw->tile_bytes = ml_x16_tile_bytes(w->type, K);
  pw->packed_bytes = pw->tile_bytes * (size_t)((N + ML_X16 - 1) / ML_X16);
  double t0 = now();
  pw->packed = packed_alloc(pw, pw->packed_bytes);
  if (!pw->packed) {
    ml_tensor_release(&pw->w);
    return -1;
  }
  pack_into(w->type, ml_tensor_data(&pw->w), row_bytes_of(&pw->w, N, K), N, K, pw->packed);
  pw->prepare_seconds = now() - t0;
  return 0;
}

int ml_weight_prepare(ml_weight *pw, const ml_tensor *w, int flags) {
  return ml_weight_prepare_with(pw, w, ml_kernels_active(), flags);
}

void ml_weight_release(ml_weight *pw) {
  packed_free(pw);
  if (pw->w.storage) ml_tensor_release(&pw->w);
}

static int mm_phases(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy);

int ml_mm_w_path(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy,
                 ml_mm_path path) {
  if (!pw->w.storage) {
    ml_misuse(1, "weight was released");
    return -1;
  }
  if (M == 0 || pw->N == 0) return 0;
  if (path == ML_MM_PHASES) return mm_phases(pw, x, ldx, M, y, ldy);
  if (pw->packed && path != ML_MM_PLAIN)
    return mm_packed(pw->k, pw->type, pw->packed, pw->tile_bytes, pw->N, pw->K, x, ldx, M, y, ldy, path);
  return mm_plain(pw->k, pw->type, ml_tensor_data(&pw->w), row_bytes_of(&pw->w, pw->N, pw->K), pw->N, pw->K, x, ldx,
                  M, y, ldy);
}

/* the two-phase API as a caller's own region would use it */
static int mm_phases(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  void *act = ml_alloc(ml_mm_w_act_bytes(pw, M) + 64);
  int ok = act != NULL;
#pragma omp parallel num_threads(ml_get_threads()) reduction(&& : ok)
  {
    int ith = ml_thread_id(), n = ml_thread_count();
    ok = act && ml_mm_w_quantize(pw, x, ldx, M, act, ith, n) == 0;
#pragma omp barrier
    ok = act && ml_mm_w_compute(pw, act, M, y, ldy, ith, n) == 0 && ok;
  }
  ml_free(act);
  return ok ? 0 : -1;
}

int ml_mm_w(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  return ml_mm_w_path(pw, x, ldx, M, y, ldy, ML_MM_AUTO);
}

/* the activation row bytes for the two-phase calls */
static size_t act_row(const ml_weight *pw) {
  ml_panel pl;
  if (pw->packed) return ml_panel_layout(pw->type, pw->K, &pl) < 0 ? 0 : pl.row_bytes;
  if (pw->type == ML_TYPE_F32) return ((size_t)pw->K * 4 + 63) & ~(size_t)63;
  return ml_matmul_act_row_bytes(pw->type, pw->K);
}

size_t ml_mm_w_act_bytes(const ml_weight *pw, int64_t M) { return act_row(pw) * (size_t)(M > 0 ? M : 0); }

int ml_mm_w_quantize(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, void *act, int ith, int nth) {
  size_t arb = act_row(pw);
  int ok;
  if (pw->packed) ok = quantize_panel(pw->k, pw->type, pw->K, x, ldx, M, act, arb, ith, nth);
  else if (pw->type == ML_TYPE_F32) {
    int64_t m0, m1;
    ml_slice(M, ith, nth, &m0, &m1);
    for (int64_t m = m0; m < m1; m++) memcpy((char *)act + (size_t)m * arb, x + m * ldx, (size_t)pw->K * 4);
    ok = 1;
  } else ok = ml_matmul_quantize_acts(pw->k, pw->type, x, ldx, M, pw->K, act, arb, ith, nth);
  return ok ? 0 : refused(pw->type, pw->N, pw->K, M);
}

int ml_mm_w_compute(const ml_weight *pw, const void *act, int64_t M, float *y, int64_t ldy, int ith, int nth) {
  size_t arb = act_row(pw);
  int ok;
  if (pw->packed)
    ok = run_packed(choose(pw->k, pw->type, M, ML_MM_AUTO), pw->type, pw->packed, pw->tile_bytes, pw->N,
                    pw->K, act, arb, M, y, ldy, ith, nth);
  else {
    ml_matmul_args p = {pw->type, ml_tensor_data(&pw->w), row_bytes_of(&pw->w, pw->N, pw->K), pw->N, pw->K,
                        act, arb, M, y, ldy};
    ok = ml_matmul_run(pw->k, &p, ith, nth);
  }
  return ok ? 0 : refused(pw->type, pw->N, pw->K, M);
}
