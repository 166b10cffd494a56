/* matmul.c: the one matmul driver: y = x · wᵀ for a weight matrix of any type, on a kernel
 * table (src/kernels/). Everything between a call and the leaf kernels lives here:
 *   the path        packed GEMV (few activation rows) or GEMM (many; the AMX kernels where
 *                   the table has them) over an x16 copy of the weight; the dot-product loop
 *                   over the rows as stored (vec_dot); OpenBLAS sgemm for large f32 products
 *   activations     each row of x converted once per call to the weight type's vec_dot
 *                   type (the table's quantize[]), as rows for the dot products or as panel
 *                   rows (kernels.h) for the packed kernels
 *   sizes           activation rows, panels, the packed kernels' work (ML_X16_WORK_BYTES)
 *   scratch         per thread, grown and kept, so steady-state calls do not allocate
 *   threads         one OpenMP region per call: every thread converts its slice of the
 *                   rows, a barrier, then computes its slice of the output columns; or none
 *                   when the product is too small to split (threads.h)
 */
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
enum { BUF_WORK, BUF_ACT };
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

static int threads_for(ml_type wt, int64_t N, int64_t K, int64_t M) {
  return ml_threads_for_product((double)N * (double)ml_type_nbytes(wt, K), (double)N * (double)K * (double)M);
}

static int refused(ml_type wt, int64_t N, int64_t K, int64_t M) {
  ml_seterr("matmul kernel refused the case (%s, N=%lld, K=%lld, M=%lld)", ml_type_traits_get(wt)->name,
            (long long)N, (long long)K, (long long)M);
  return -1;
}

/* ---- weights and activations as the kernels see them ---- */

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

/* The vec_dot type of wt if wt has a dot product and K fits both blocks, else -1. */
static int act_type(ml_type wt, int64_t K) {
  const ml_type_traits *tw = ml_type_traits_get((int)wt);
  if (!tw || !ml_kernels_ref.vec_dot[wt] || K < 0) return -1;
  const ml_type_traits *ta = ml_type_traits_get((int)tw->vec_dot_type);
  if (!ta || K % tw->blck || K % ta->blck) return -1;
  return (int)tw->vec_dot_type;
}

/* Alignment the typed access to rows needs: the f16 fields of every block type, the float
 * scale of q8_K, f32 elements. */
static size_t type_align(int t) { return t == ML_TYPE_F32 || t == ML_TYPE_Q8_K ? 4 : 2; }

static int aligned(const void *p, size_t stride, size_t align) {
  return ((uintptr_t)p % align) == 0 && stride % align == 0;
}

/* Bytes of one activation row of K elements in wt's vec_dot type, rounded up to 64 so every
 * row starts cache-line aligned; 0 if wt has no dot product or K does not fit its blocks. */
static size_t act_row_bytes(ml_type wt, int64_t K) {
  int at = act_type(wt, K);
  if (at < 0) return 0;
  size_t row = ml_type_nbytes((ml_type)at, K);
  if (row > SIZE_MAX - 63) return 0;
  return (row + 63) & ~(size_t)63;
}

/* Phase 1, rows: activation rows [slice ith of nth over M] of x to wt's vec_dot type at
 * a + m * arb. 1, or 0 if the table cannot or a size is invalid. */
static int quantize_rows(const ml_kernels *k, ml_type wt, const float *x, int64_t ldx, int64_t M, int64_t K, void *a,
                         size_t arb, int ith, int nth) {
  int at = act_type(wt, K);
  if (at < 0 || !k->quantize[at] || M < 0 || ldx < K) return 0;
  if (arb < ml_type_nbytes((ml_type)at, K) || !aligned(a, arb, type_align(at))) return 0;
  int64_t m0, m1;
  ml_slice(M, ith, nth, &m0, &m1);
  for (int64_t m = m0; m < m1; m++) k->quantize[at](x + m * ldx, (char *)a + (size_t)m * arb, K);
  return 1;
}

/* Phase 1, panels: rows [slice ith of nth] of x to panel rows for the packed kernels. */
static int quantize_panel(const ml_kernels *k, ml_type wt, int64_t K, const float *x, int64_t ldx, int64_t M,
                          uint8_t *act, size_t arb, int ith, int nth) {
  ml_type vt = ml_type_traits_get(wt)->vec_dot_type;
  void *raw = thread_buf(BUF_WORK, ML_X16_WORK_BYTES(K));
  if (!raw || !k->quantize[vt]) return 0;
  int64_t m0, m1;
  ml_slice(M, ith, nth, &m0, &m1);
  for (int64_t m = m0; m < m1; m++) {
    k->quantize[vt](x + m * ldx, raw, K);
    ml_panel_fill(wt, raw, K, act + (size_t)m * arb);
  }
  return 1;
}

/* ---- the dot-product loop over the rows as stored ---- */

typedef struct rows_args {
  ml_type wt;         /* weight type */
  const void *w;      /* (N, K) weights: N rows of K elements of wt */
  size_t w_row_bytes; /* bytes between weight rows (>= ml_type_nbytes(wt, K)) */
  int64_t N, K;
  const void *a;      /* (M, K) activations in wt's vec_dot_type */
  size_t a_row_bytes; /* bytes between activation rows */
  int64_t M;
  float *y;           /* (M, N) output, y[m * ldy + n] */
  int64_t ldy;        /* floats between output rows (>= N) */
} rows_args;

static int rows_valid(const rows_args *p) {
  int at = act_type(p->wt, p->K);
  if (at < 0 || p->N < 0 || p->M < 0) return 0;
  if (!aligned(p->w, p->w_row_bytes, type_align(p->wt)) || !aligned(p->a, p->a_row_bytes, type_align(at)) ||
      !aligned(p->y, 0, sizeof(float)))
    return 0;
  if (p->w_row_bytes < ml_type_nbytes(p->wt, p->K)) return 0;
  if (p->a_row_bytes < ml_type_nbytes((ml_type)at, p->K)) return 0;
  if (p->M > 1 && p->ldy < p->N) return 0;
  return 1;
}

/* Phase 2, rows: output columns [slice ith of nth over N] for all M rows. 1, or 0 if the
 * table has no dot product for wt or the arguments are invalid. */
static int rows_run(const ml_kernels *k, const rows_args *p, int ith, int nth) {
  ml_vec_dot_fn dot = k->vec_dot[p->wt];
  if (!dot || !rows_valid(p) || nth <= 0 || ith < 0 || ith >= nth) return 0;
  int64_t n0, n1;
  ml_slice(p->N, ith, nth, &n0, &n1);
  /* weight row outer: it stays in cache while every activation row passes over it */
  for (int64_t n = n0; n < n1; n++) {
    const void *wr = (const char *)p->w + (size_t)n * p->w_row_bytes;
    for (int64_t m = 0; m < p->M; m++)
      p->y[m * p->ldy + n] = dot(p->K, wr, (const char *)p->a + (size_t)m * p->a_row_bytes);
  }
  return 1;
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

/* The dot-product path on nth threads (1: no region). f32 activations are used in place. */
static int mm_rows(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
                   const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy, int nth) {
  int is_f32 = wt == ML_TYPE_F32;
  size_t arb = act_row_bytes(wt, K);
  void *act = NULL;
  if (!is_f32) {
    if (!arb || (uint64_t)M > SIZE_MAX / arb) return refused(wt, N, K, M);
    if (!(act = thread_buf(BUF_ACT, arb * (size_t)M))) return -1;
  }
  rows_args p = {wt, w, w_row_bytes, N, K, is_f32 ? (const void *)x : act, is_f32 ? (size_t)ldx * 4 : arb, M, y, ldy};
  int ok = 1;
  if (nth == 1) {
    ok = (is_f32 || quantize_rows(k, wt, x, ldx, M, K, act, arb, 0, 1)) && rows_run(k, &p, 0, 1);
  } else {
#pragma omp parallel num_threads(nth) reduction(&& : ok)
    {
      int ith = ml_thread_id(), n = ml_thread_count();
      if (!is_f32) ok = quantize_rows(k, wt, x, ldx, M, K, act, arb, ith, n);
#pragma omp barrier
      ok = rows_run(k, &p, ith, n) && ok;
    }
  }
  return ok ? 0 : refused(wt, N, K, M);
}

static int mm_plain(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
                    const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  if (f32_blas(wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy)) return 0;
  return mm_rows(k, wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy, threads_for(wt, N, K, M));
}

int ml_mm_rows(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
               const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy) {
  if (check_type(wt, K) < 0) return -1;
  if (M == 0 || N == 0) return 0;
  return mm_rows(k, wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy, 1);
}

/* ---- packed weights ---- */

static int has_packed(const ml_kernels *k, ml_type wt, int64_t K) {
  return (k->gemv[wt] || k->gemm[wt]) && ml_x16_tile_bytes(wt, K) > 0;
}

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

/* GEMV for few rows, GEMM for many (the AMX kernels, where the table has them, are its
 * GEMM), or what a test or benchmark forces. */
static ml_packed_fn choose(const ml_kernels *k, ml_type wt, int64_t M, ml_mm_path path) {
  ml_packed_fn v = k->gemv[wt], m = k->gemm[wt];
  if (path == ML_MM_GEMV) return v ? v : m;
  if (path == ML_MM_GEMM) return m ? m : v;
  return (M >= ML_GEMM_MIN_M && m) || !v ? m : v;
}

/* Phase 2, packed: the tiles of slice ith of nth. */
static int run_packed(ml_packed_fn fn, ml_type wt, const void *packed, size_t tile_bytes, int64_t N, int64_t K,
                      const void *act, size_t arb, int64_t M, float *y, int64_t ldy, int ith, int nth) {
  void *work = thread_buf(BUF_WORK, ML_X16_WORK_BYTES(K));
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
  uint8_t *act = thread_buf(BUF_ACT, pl.row_bytes * (size_t)M);
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
  if ((flags & ML_WEIGHT_NO_PACK) || !has_packed(k, w->type, K) || N == 0) {
    if (!(flags & ML_WEIGHT_COPY)) return 0;
    ml_tensor view = pw->w;
    int rc = ml_tensor_clone(&pw->w, &view);
    if (rc < 0) pw->w.storage = NULL; /* nothing to release then */
    ml_tensor_release(&view);
    return rc;
  }
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
  return act_row_bytes(pw->type, pw->K);
}

size_t ml_mm_w_act_bytes(const ml_weight *pw, int64_t M) { return act_row(pw) * (size_t)(M > 0 ? M : 0); }

int ml_mm_w_quantize(const ml_weight *pw, const float *x, int64_t ldx, int64_t M, void *act, int ith, int nth) {
  size_t arb = act_row(pw);
  int ok = pw->packed ? quantize_panel(pw->k, pw->type, pw->K, x, ldx, M, act, arb, ith, nth)
                      : quantize_rows(pw->k, pw->type, x, ldx, M, pw->K, act, arb, ith, nth);
  return ok ? 0 : refused(pw->type, pw->N, pw->K, M);
}

int ml_mm_w_compute(const ml_weight *pw, const void *act, int64_t M, float *y, int64_t ldy, int ith, int nth) {
  size_t arb = act_row(pw);
  int ok;
  if (pw->packed)
    ok = run_packed(choose(pw->k, pw->type, M, ML_MM_AUTO), pw->type, pw->packed, pw->tile_bytes, pw->N,
                    pw->K, act, arb, M, y, ldy, ith, nth);
  else {
    rows_args p = {pw->type, ml_tensor_data(&pw->w), row_bytes_of(&pw->w, pw->N, pw->K), pw->N, pw->K,
                   act, arb, M, y, ldy};
    ok = rows_run(pw->k, &p, ith, nth);
  }
  return ok ? 0 : refused(pw->type, pw->N, pw->K, M);
}
