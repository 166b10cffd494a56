/* flash.c: the attention kernel's driver (work items, tiles, masks, the merge of split key
 * ranges) and the portable block kernels, which are the oracle for kernels/flash_avx512.c.
 * See flash.h for what is computed and kernels/flash.h for the block kernels. */
#include "flash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels/flash.h"
#include "kernels/dispatch.h"
#include "threads.h"

/* ---- portable block kernels ---- */

/* element i of a row of n values of type t at p, as f32 */
static float kv_at(ml_type t, const uint8_t *p, int64_t i) {
  if (t == ML_TYPE_F32) return ((const float *)p)[i];
  if (t == ML_TYPE_F16) return ml_fp16_to_f32(((const ml_fp16 *)p)[i]);
  const ml_block_q8_0 *b = (const ml_block_q8_0 *)p + i / ML_QK; /* q8_0 */
  return ml_fp16_to_f32(b->d) * (float)b->qs[i % ML_QK];
}

static void load_ref(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                     float *dst) {
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    for (int64_t i = 0; i < hd; i++) dst[j * hd + i] = kv_at(t, p, i);
  }
}

static void load_t_ref(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                       float *kt) {
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    for (int64_t d = 0; d < hd; d++) kt[d * ML_FLASH_BLOCK + j] = kv_at(t, p, d);
  }
}

static void scale_ref(const float *x, float c, int64_t n, float *y) {
  for (int64_t i = 0; i < n; i++) y[i] = c * x[i];
}

static void qk_kv_ref(const float *q, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                      int64_t nj, int64_t hd, float *s) {
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    for (int64_t m = 0; m < M; m++) {
      float acc = 0;
      for (int64_t d = 0; d < hd; d++) acc += q[m * hd + d] * kv_at(t, p, d);
      s[m * ML_FLASH_BLOCK + j] = acc;
    }
  }
}

static void qk_t_ref(const float *q, int64_t M, const float *kt, int64_t nj, int64_t hd, float *s) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < nj; j++) {
      float acc = 0;
      for (int64_t d = 0; d < hd; d++) acc += q[m * hd + d] * kt[d * ML_FLASH_BLOCK + j];
      s[m * ML_FLASH_BLOCK + j] = acc;
    }
}

static void softmax_ref(float *s, int64_t M, int64_t nj, float *mx, float *sum, float *o, int64_t hd) {
  for (int64_t m = 0; m < M; m++) {
    float *row = s + m * ML_FLASH_BLOCK, bmax = -INFINITY;
    for (int64_t j = 0; j < nj; j++) bmax = row[j] > bmax ? row[j] : bmax;
    if (bmax == -INFINITY) {
      for (int64_t j = 0; j < nj; j++) row[j] = 0;
      continue;
    }
    float mnew = bmax > mx[m] ? bmax : mx[m], c = expf(mx[m] - mnew), add = 0;
    for (int64_t j = 0; j < nj; j++) add += row[j] = expf(row[j] - mnew);
    if (c != 1.0f)
      for (int64_t d = 0; d < hd; d++) o[m * hd + d] *= c;
    sum[m] = sum[m] * c + add;
    mx[m] = mnew;
  }
}

static void pv_ref(const float *s, int64_t M, const float *vb, int64_t nj, int64_t hd, float *o) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < nj; j++) {
      float p = s[m * ML_FLASH_BLOCK + j];
      if (p == 0) continue;
      for (int64_t d = 0; d < hd; d++) o[m * hd + d] += p * vb[j * hd + d];
    }
}

static void pv_kv_ref(const float *s, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                      int64_t nj, int64_t hd, float *o) {
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    for (int64_t m = 0; m < M; m++) {
      float pr = s[m * ML_FLASH_BLOCK + j];
      if (pr == 0) continue;
      for (int64_t d = 0; d < hd; d++) o[m * hd + d] += pr * kv_at(t, p, d);
    }
  }
}

static void bias_ref(float *s, int64_t n, float softcap, float slope, int64_t d0) {
  for (int64_t j = 0; j < n; j++) {
    float v = s[j];
    if (softcap > 0) v = softcap * tanhf(v / softcap);
    if (slope != 0) v -= slope * (float)llabs(d0 - j);
    s[j] = v;
  }
}

static const ml_flash_kernels flash_ref = {"ref",  load_ref,  load_t_ref, qk_kv_ref, qk_t_ref,
                                           softmax_ref, pv_ref, pv_kv_ref,  bias_ref, scale_ref};

extern const ml_flash_kernels ml_flash_kernels_avx512 __attribute__((weak));
extern const ml_flash_kernels ml_flash_kernels_avx2 __attribute__((weak));

static const ml_flash_kernels *kernels_for(int64_t hd) {
  ml_level l = ml_level_active();
  if (hd % 16 == 0 && l >= ML_LEVEL_AVX512 && &ml_flash_kernels_avx512) return &ml_flash_kernels_avx512;
  if (hd % 8 == 0 && l >= ML_LEVEL_AVX2 && &ml_flash_kernels_avx2) return &ml_flash_kernels_avx2;
  return &flash_ref;
}

const char *ml_flash_kernels_name(void) { return kernels_for(64)->name; }

/* ---- checks and sizes ---- */

int ml_flash_check(const ml_flash_args *a) {
  if (a->n_head <= 0 || a->n_head_kv <= 0 || a->head_dim <= 0 || a->n_head % a->n_head_kv) {
    ml_misuse(1, "attention kernel: %lld query heads cannot share %lld key/value heads", (long long)a->n_head,
              (long long)a->n_head_kv);
    return -1;
  }
  if (a->kv_type != ML_TYPE_F32 && a->kv_type != ML_TYPE_F16 && a->kv_type != ML_TYPE_Q8_0) {
    ml_misuse(1, "attention kernel: keys and values must be f32, f16 or q8_0");
    return -1;
  }
  if (a->kv_type == ML_TYPE_Q8_0 && a->head_dim % ML_QK) {
    ml_misuse(1, "attention kernel: q8_0 keys need a head size that is a multiple of 32 (got %lld)", (long long)a->head_dim);
    return -1;
  }
  size_t hb = ml_type_nbytes(a->kv_type, a->head_dim);
  if (a->head_bytes == 0 && a->row_bytes < hb * (size_t)a->n_head_kv) {
    ml_misuse(1, "attention kernel: key/value rows of %zu bytes cannot hold %lld heads", a->row_bytes, (long long)a->n_head_kv);
    return -1;
  }
  if ((a->head_bytes && a->head_bytes < hb) || (a->q_hs && a->q_hs < a->head_dim) ||
      (a->o_hs && a->o_hs < a->head_dim)) {
    ml_misuse(1, "attention kernel: head strides smaller than a head");
    return -1;
  }
  for (int i = 0; i < a->n_seg; i++) {
    const ml_flash_seg *s = &a->seg[i];
    if (s->r0 < 0 || s->n < 0 || s->r0 + s->n > a->n_q || s->n_kv < 0) {
      ml_misuse(1, "attention kernel: segment %d (rows %lld..%lld, %lld keys) does not fit %lld query rows", i,
                (long long)s->r0, (long long)(s->r0 + s->n), (long long)s->n_kv, (long long)a->n_q);
      return -1;
    }
  }
  return 0;
}

#define CHUNK_TARGET(nth) (4 * (nth)) /* work items wanted before key ranges are split */

static int64_t al16(int64_t n) { return (n + 15) & ~(int64_t)15; }

static int64_t max_vectors(const ml_flash_args *a) { return ML_FLASH_TILE * (a->n_head / a->n_head_kv); }

/* floats of one thread's scratch */
static int64_t thread_floats(const ml_flash_args *a) {
  int64_t MT = max_vectors(a), hd = a->head_dim;
  return 2 * al16(MT * hd) + al16(MT * ML_FLASH_BLOCK) + 2 * al16(MT) + 2 * al16(ML_FLASH_BLOCK * hd);
}

/* floats of one split item's partial result: o, max and sum of each query vector */
static int64_t partial_floats(const ml_flash_args *a) { return al16(max_vectors(a) * (a->head_dim + 2)); }

size_t ml_flash_work_bytes(const ml_flash_args *a, int nth) {
  if (nth < 1) nth = 1;
  int64_t n = 2 * CHUNK_TARGET(nth) * partial_floats(a) + nth * thread_floats(a);
  return sizeof(float) * (size_t)n;
}

/* ---- the driver ---- */

typedef struct plan {
  int64_t n_tiles, chunks, chunk_len, g, MT;
} plan;

static void make_plan(const ml_flash_args *a, int nth, plan *p) {
  int64_t tiles = 0, max_kv = 0;
  for (int i = 0; i < a->n_seg; i++) {
    tiles += (a->seg[i].n + ML_FLASH_TILE - 1) / ML_FLASH_TILE;
    max_kv = ML_MAX(max_kv, a->seg[i].n_kv);
  }
  p->n_tiles = tiles;
  p->g = a->n_head / a->n_head_kv;
  p->MT = max_vectors(a);
  p->chunks = 1;
  int64_t items = tiles * a->n_head_kv, target = CHUNK_TARGET(nth);
  if (items > 0 && items < target) {
    int64_t c = (target + items - 1) / items, most = max_kv / (2 * ML_FLASH_BLOCK);
    /* a whole number of items per thread: 3 KV heads in 3 chunks would leave one thread
       idle for a ninth of the time on two threads, in 4 chunks none */
    while (c < most && (items * c) % nth) c++;
    p->chunks = ML_MAX(1, ML_MIN(c, most));
  }
  int64_t len = (max_kv + p->chunks - 1) / p->chunks;
  p->chunk_len = (len + ML_FLASH_BLOCK - 1) / ML_FLASH_BLOCK * ML_FLASH_BLOCK;
}

/* tile t: its segment, first row and row count */
static const ml_flash_seg *find_tile(const ml_flash_args *a, int64_t t, int64_t *r0, int64_t *n) {
  for (int i = 0; i < a->n_seg; i++) {
    const ml_flash_seg *s = &a->seg[i];
    int64_t k = (s->n + ML_FLASH_TILE - 1) / ML_FLASH_TILE;
    if (t < k) {
      *r0 = s->r0 + t * ML_FLASH_TILE;
      *n = ML_MIN(ML_FLASH_TILE, s->r0 + s->n - *r0);
      return s;
    }
    t -= k;
  }
  return NULL;
}

static int64_t qpos_of(const ml_flash_args *a, const ml_flash_seg *s, int64_t r) {
  return a->qpos ? a->qpos[r] : s->kpos0 + s->n_kv - s->n + (r - s->r0);
}

/* keys row r may see: [*lo, *hi) (indices into the segment's keys) */
static void visible(const ml_flash_args *a, const ml_flash_seg *s, int64_t r, int64_t *lo, int64_t *hi) {
  int64_t pos = qpos_of(a, s, r) - s->kpos0;
  *hi = a->causal ? ML_MAX(0, ML_MIN(s->n_kv, pos + 1)) : s->n_kv;
  *lo = a->window > 0 ? ML_MAX(0, pos - a->window + 1) : 0;
  if (*lo > *hi) *lo = *hi;
}

typedef struct tstate {
  float *q, *o, *s, *mx, *sum, *kt, *vb;
} tstate;

static void thread_state(const ml_flash_args *a, float *base, tstate *t) {
  int64_t MT = max_vectors(a), hd = a->head_dim;
  t->q = base;
  t->o = t->q + al16(MT * hd);
  t->s = t->o + al16(MT * hd);
  t->mx = t->s + al16(MT * ML_FLASH_BLOCK);
  t->sum = t->mx + al16(MT);
  t->kt = t->sum + al16(MT);
  t->vb = t->kt + al16(ML_FLASH_BLOCK * hd);
}

/* Scores of block [j0, j0 + nj) beyond q·k: softcap, ALiBi, the additive mask, and -inf
 * where a row may not look. */
static void adjust(const ml_flash_args *a, const ml_flash_kernels *K, const ml_flash_seg *sg, int64_t r0, int64_t nr,
                   int64_t kh, int64_t g, int64_t j0, int64_t nj, float *s) {
  for (int64_t r = 0; r < nr; r++) {
    int64_t lo, hi, row = r0 + r, pos = qpos_of(a, sg, row) - sg->kpos0;
    visible(a, sg, row, &lo, &hi);
    int cut = j0 < lo || j0 + nj > hi;
    if (!cut && a->softcap <= 0 && !a->slopes && !a->mask) continue;
    /* the visible part of the block: [ja, jb) */
    int64_t ja = ML_MIN(ML_MAX(lo - j0, 0), nj), jb = ML_MAX(ML_MIN(hi - j0, nj), ja);
    for (int64_t qh = 0; qh < g; qh++) {
      float *sr = s + (r * g + qh) * ML_FLASH_BLOCK;
      float slope = a->slopes ? a->slopes[kh * g + qh] : 0;
      for (int64_t j = 0; j < ja; j++) sr[j] = -INFINITY;
      for (int64_t j = jb; j < nj; j++) sr[j] = -INFINITY;
      if (a->softcap > 0 || slope != 0) K->bias(sr + ja, jb - ja, a->softcap, slope, pos - j0 - ja);
      if (a->mask)
        for (int64_t j = ja; j < jb; j++) sr[j] += a->mask[row * a->ldmask + j0 + j];
    }
  }
}

/* Asks for the head_bytes at [base + row · row_bytes] of keys [j0, j1) to come nearer (a
 * hint: no result depends on it). Decode reads each cached key and value once per token, a
 * stream the hardware prefetcher follows poorly at one head's slice of every row. Locality
 * 1 (prefetcht2) measured best on Zen 4: llbench TinyLlama tg64 at depth 4096, alternating
 * in one run, 40.2 / 38.1 t/s against 38.0 / 36.9 with prefetcht1, 25-26 with prefetcht0 or
 * prefetchnta, 24 with none; prefetching three blocks ahead instead of one, 35 / 33.
 * Inlined: GCC's IPA counts a function of prefetches alone as free of side effects and
 * drops its calls (so it did once the environment switch's store was gone). */
static inline __attribute__((always_inline)) void prefetch_rows(const uint8_t *base, size_t row_bytes,
                                                                const int32_t *rows, int64_t j0, int64_t j1,
                                                                size_t head_bytes) {
  for (int64_t j = j0; j < j1; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    for (size_t b = 0; b < head_bytes; b += 64) __builtin_prefetch(p + b, 0, 1);
  }
}

/* One work item: tile (r0, nr of segment sg) against KV head kh over keys [ja, jb). Leaves
 * the unnormalised output, the max and the sum of each query vector in t. */
static void run_item(const ml_flash_args *a, const ml_flash_kernels *K, const plan *p, const ml_flash_seg *sg, int64_t r0,
                     int64_t nr, int64_t kh, int64_t ja, int64_t jb, tstate *t) {
  int64_t g = p->g, hd = a->head_dim, M = nr * g;
  size_t hb = ml_type_nbytes(a->kv_type, hd), head_off = (a->head_bytes ? a->head_bytes : hb) * (size_t)kh;
  int64_t q_hs = a->q_hs ? a->q_hs : hd;
  for (int64_t r = 0; r < nr; r++)
    for (int64_t qh = 0; qh < g; qh++) {
      const float *src = a->q + (r0 + r) * a->ldq + (kh * g + qh) * q_hs;
      K->scale(src, a->scale, hd, t->q + (r * g + qh) * hd);
    }
  for (int64_t m = 0; m < M; m++) {
    t->mx[m] = -INFINITY;
    t->sum[m] = 0;
  }
  memset(t->o, 0, sizeof(float) * (size_t)(M * hd));
  /* the union of the rows' visible ranges, within the chunk */
  int64_t lo = INT64_MAX, hi = 0;
  for (int64_t r = 0; r < nr; r++) {
    int64_t l, h;
    visible(a, sg, r0 + r, &l, &h);
    if (l < h) {
      lo = ML_MIN(lo, l);
      hi = ML_MAX(hi, h);
    }
  }
  lo = ML_MAX(lo, ja);
  hi = ML_MIN(hi, jb);
  /* Few query vectors (decode: one row's g heads): keys and values are read where they are
   * in the store, each row once for all M vectors. Many: each block converted once to f32,
   * the keys transposed on the way, for the register-blocked products. */
  int transposed = M >= 16;
  for (int64_t j0 = lo; j0 < hi; j0 += ML_FLASH_BLOCK) {
    int64_t nj = ML_MIN(ML_FLASH_BLOCK, hi - j0);
    const int32_t *rows = sg->cells ? sg->cells + j0 : NULL;
    const uint8_t *kbase = a->k + head_off + (rows ? 0 : (size_t)j0 * a->row_bytes);
    const uint8_t *vbase = a->v + head_off + (rows ? 0 : (size_t)j0 * a->row_bytes);
    if (j0 + nj < hi) /* the next block's keys while this one is scored */
      prefetch_rows(a->k + head_off, a->row_bytes, sg->cells, j0 + nj, ML_MIN(hi, j0 + nj + ML_FLASH_BLOCK), hb);
    if (transposed) {
      K->load_t(a->kv_type, kbase, a->row_bytes, rows, nj, hd, t->kt);
      K->qk_t(t->q, M, t->kt, nj, hd, t->s);
    } else
      K->qk_kv(t->q, M, a->kv_type, kbase, a->row_bytes, rows, nj, hd, t->s);
    adjust(a, K, sg, r0, nr, kh, g, j0, nj, t->s);
    K->softmax(t->s, M, nj, t->mx, t->sum, t->o, hd);
    if (j0 + nj < hi)
      prefetch_rows(a->v + head_off, a->row_bytes, sg->cells, j0 + nj, ML_MIN(hi, j0 + nj + ML_FLASH_BLOCK), hb);
    if (transposed) {
      K->load(a->kv_type, vbase, a->row_bytes, rows, nj, hd, t->vb);
      K->pv(t->s, M, t->vb, nj, hd, t->o);
    } else
      K->pv_kv(t->s, M, a->kv_type, vbase, a->row_bytes, rows, nj, hd, t->o);
  }
}

static void write_out(const ml_flash_args *a, const ml_flash_kernels *K, int64_t r0, int64_t nr, int64_t kh, int64_t g,
                      const float *o, const float *sum) {
  int64_t hd = a->head_dim, o_hs = a->o_hs ? a->o_hs : hd;
  for (int64_t r = 0; r < nr; r++)
    for (int64_t qh = 0; qh < g; qh++) {
      int64_t m = r * g + qh;
      float *dst = a->out + (r0 + r) * a->ldo + (kh * g + qh) * o_hs;
      K->scale(o + m * hd, sum[m] > 0 ? 1.0f / sum[m] : 0.0f, hd, dst);
    }
}

void ml_flash(const ml_flash_args *a, void *work) {
  const ml_flash_kernels *K = kernels_for(a->head_dim);
  plan p;
  int nth = ml_thread_count();
  make_plan(a, nth, &p);
  int64_t hd = a->head_dim, nkvh = a->n_head_kv, pf = partial_floats(a);
  float *partials = work;
  tstate t;
  thread_state(a, partials + 2 * CHUNK_TARGET(nth) * pf + ml_thread_id() * thread_floats(a), &t);
  int64_t items = p.n_tiles * nkvh * p.chunks;
#pragma omp for schedule(dynamic, 1)
  for (int64_t it = 0; it < items; it++) {
    /* the last tiles first: under a causal mask they see the most keys, and the short
       items left for the end even out the threads' shares */
    int64_t c = it % p.chunks, kh = (it / p.chunks) % nkvh, tile = p.n_tiles - 1 - it / p.chunks / nkvh, r0, nr;
    const ml_flash_seg *sg = find_tile(a, tile, &r0, &nr);
    run_item(a, K, &p, sg, r0, nr, kh, c * p.chunk_len, (c + 1) * p.chunk_len, &t);
    if (p.chunks == 1) {
      write_out(a, K, r0, nr, kh, p.g, t.o, t.sum);
    } else {
      float *dst = partials + ((tile * nkvh + kh) * p.chunks + c) * pf;
      int64_t M = nr * p.g;
      memcpy(dst, t.o, sizeof(float) * (size_t)(M * hd));
      memcpy(dst + M * hd, t.mx, sizeof(float) * (size_t)M);
      memcpy(dst + M * hd + M, t.sum, sizeof(float) * (size_t)M);
    }
  }
  if (p.chunks == 1) return;
  /* merge the chunks of each (tile, head): the implicit barrier above made them visible */
#pragma omp for schedule(static)
  for (int64_t th = 0; th < p.n_tiles * nkvh; th++) {
    int64_t kh = th % nkvh, r0, nr;
    find_tile(a, th / nkvh, &r0, &nr);
    int64_t M = nr * p.g;
    for (int64_t m = 0; m < M; m++) {
      float big = -INFINITY;
      for (int64_t c = 0; c < p.chunks; c++) {
        const float *src = partials + (th * p.chunks + c) * pf;
        big = ML_MAX(big, src[M * hd + m]);
      }
      float *o = t.o + m * hd, l = 0;
      memset(o, 0, sizeof(float) * (size_t)hd);
      if (big > -INFINITY)
        for (int64_t c = 0; c < p.chunks; c++) {
          const float *src = partials + (th * p.chunks + c) * pf;
          float cm = src[M * hd + m];
          if (cm == -INFINITY) continue;
          float w = expf(cm - big);
          l += w * src[M * hd + M + m];
          for (int64_t d = 0; d < hd; d++) o[d] += w * src[m * hd + d];
        }
      t.sum[m] = l;
    }
    write_out(a, K, r0, nr, kh, p.g, t.o, t.sum);
  }
}

int ml_flash_run(const ml_flash_args *a) {
  if (ml_flash_check(a) < 0) return -1;
  int nth = ml_get_threads();
  void *work = ml_alloc(ml_flash_work_bytes(a, nth));
  if (!work) return -1;
#pragma omp parallel num_threads(nth)
  ml_flash(a, work);
  ml_free(work);
  return 0;
}
