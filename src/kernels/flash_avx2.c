/* flash_avx2.c: the attention block kernels of kernels/flash.h with AVX2, FMA and F16C, for
 * head sizes that are a multiple of 8 (the CPUs without AVX-512, and this table's 8-wide
 * twin of flash_avx512.c). Products are in f32 with FMA, register-blocked within AVX2's 16
 * registers: scores for 4 query vectors x 16 keys from the transposed keys, values for
 * 4 query vectors x 16 output dims, so each converted key/value block is read from L1
 * once per 4 query vectors; few query vectors (decode) read the key and value rows as they
 * are in the cache, converting each in registers once for up to 8 query vectors, and reduce
 * 8 sums of scores in one pass. Used where the dispatcher found AVX2
 * and no AVX-512 (flash.c chooses). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common.h"
#include "flash.h"

#define BLK ML_FLASH_BLOCK
#define INLINE static inline __attribute__((always_inline))

/* ---- loading keys / values as f32 rows ---- */

/* One row of hd values to f32; HD is the head size when it is a compile-time constant (the
 * loops unroll), 0 for any multiple of 8 */
INLINE void load_row(ml_type t, const uint8_t *p, float *d, int64_t hd, const int64_t HD) {
  if (HD) hd = HD;
  if (t == ML_TYPE_F16) {
    #pragma GCC unroll 16
    for (int64_t i = 0; i < hd; i += 8)
      _mm256_store_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
  } else if (t == ML_TYPE_Q8_0) {
    const ml_block_q8_0 *b = (const ml_block_q8_0 *)p;
    #pragma GCC unroll 4
    for (int64_t i = 0; i < hd; i += ML_QK, b++) {
      __m256 s = _mm256_set1_ps(_cvtsh_ss(b->d));
      #pragma GCC unroll 4
      for (int k = 0; k < ML_QK; k += 8) {
        __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + k)));
        _mm256_store_ps(d + i + k, _mm256_mul_ps(s, _mm256_cvtepi32_ps(x)));
      }
    }
  } else {
    #pragma GCC unroll 16
    for (int64_t i = 0; i < hd; i += 8) _mm256_store_ps(d + i, _mm256_loadu_ps((const float *)p + i));
  }
}

INLINE void load_rows(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                      float *dst, const int64_t HD) {
  if (rows)
    for (int64_t j = 0; j < nj; j++) load_row(t, base + (size_t)rows[j] * row_bytes, dst + j * hd, hd, HD);
  else
    for (int64_t j = 0; j < nj; j++) load_row(t, base + (size_t)j * row_bytes, dst + j * hd, hd, HD);
}

static void load_avx2(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                      float *dst) {
  /* the type test and the head size leave the row loop */
  if (hd == 64 && t == ML_TYPE_F16) load_rows(ML_TYPE_F16, base, row_bytes, rows, nj, hd, dst, 64);
  else if (hd == 64 && t == ML_TYPE_Q8_0) load_rows(ML_TYPE_Q8_0, base, row_bytes, rows, nj, hd, dst, 64);
  else if (hd == 128 && t == ML_TYPE_F16) load_rows(ML_TYPE_F16, base, row_bytes, rows, nj, hd, dst, 128);
  else if (hd == 128 && t == ML_TYPE_Q8_0) load_rows(ML_TYPE_Q8_0, base, row_bytes, rows, nj, hd, dst, 128);
  else if (t == ML_TYPE_F16) load_rows(ML_TYPE_F16, base, row_bytes, rows, nj, hd, dst, 0);
  else if (t == ML_TYPE_Q8_0) load_rows(ML_TYPE_Q8_0, base, row_bytes, rows, nj, hd, dst, 0);
  else load_rows(t, base, row_bytes, rows, nj, hd, dst, 0);
}

/* ---- keys straight to kt[d][j] in 8 x 8 blocks ---- */

INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  #pragma GCC unroll 8
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  #pragma GCC unroll 8
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  /* u[4a + b] holds, in 128-bit lane L, element 4L + b of rows 4a..4a+3 */
  #pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

/* ---- scores ---- */

/* 8 vectors to one: lane i = the sum of the 8 lanes of a[i] */
INLINE __m256 reduce8(const __m256 a[8]) {
  __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* 8 values of a row of type T (a constant where inlined) from element i, as f32 */
INLINE __m256 row8(ml_type T, const uint8_t *p, int64_t i) {
  if (T == ML_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
  if (T == ML_TYPE_Q8_0) {
    const ml_block_q8_0 *b = (const ml_block_q8_0 *)p + i / ML_QK;
    __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + i % ML_QK))));
    return _mm256_mul_ps(x, _mm256_set1_ps(_cvtsh_ss(b->d)));
  }
  return _mm256_loadu_ps((const float *)p + i);
}

/* 8 keys x 8 dims at a time: each key's 8 values converted in a register, the 8 registers
 * transposed and stored as 8 rows of kt; keys past nj are zeros */
INLINE void load_t_type(ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                        float *kt) {
  for (int64_t j0 = 0; j0 < nj; j0 += 8) {
    const uint8_t *kr[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++) kr[i] = j0 + i < nj ? ml_flash_row_at(base, row_bytes, rows, j0 + i) : NULL;
    for (int64_t d0 = 0; d0 < hd; d0 += 8) {
      __m256 r[8];
      #pragma GCC unroll 8
      for (int i = 0; i < 8; i++) r[i] = kr[i] ? row8(T, kr[i], d0) : _mm256_setzero_ps();
      transpose8(r);
      #pragma GCC unroll 8
      for (int i = 0; i < 8; i++) _mm256_store_ps(kt + (d0 + i) * BLK + j0, r[i]);
    }
  }
}

static void load_t_avx2(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                        float *kt) {
  if (t == ML_TYPE_F16) load_t_type(ML_TYPE_F16, base, row_bytes, rows, nj, hd, kt);
  else if (t == ML_TYPE_Q8_0) load_t_type(ML_TYPE_Q8_0, base, row_bytes, rows, nj, hd, kt);
  else load_t_type(ML_TYPE_F32, base, row_bytes, rows, nj, hd, kt);
}

static void scale_avx2(const float *x, float c, int64_t n, float *y) {
  __m256 vc = _mm256_set1_ps(c);
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(vc, _mm256_loadu_ps(x + i)));
}

/* Scores of M <= 8 query vectors (M a constant), KP = 8 / MP keys at a time, MP being M
 * rounded up to a power of two: acc[m·KP + k] sums q[m] · key k lane by lane, each 8-value
 * piece of a key converted once for all M, and one reduce8 turns the 8 sums into scores,
 * lane m·KP + k. Key rows past nj repeat row nj - 1 (the scores past nj are don't-cares). */
INLINE void qk_kv_m(const float *q, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                    int64_t hd, float *s, const int M) {
  const int KP = M == 1 ? 8 : M == 2 ? 4 : M <= 4 ? 2 : 1;
  for (int64_t j0 = 0; j0 < nj; j0 += KP) {
    const uint8_t *kr[8];
    #pragma GCC unroll 8
    for (int k = 0; k < KP; k++) kr[k] = ml_flash_row_at(base, row_bytes, rows, ML_MIN(j0 + k, nj - 1));
    __m256 acc[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
      #pragma GCC unroll 8
      for (int k = 0; k < KP; k++) {
        __m256 kv = row8(T, kr[k], d);
        #pragma GCC unroll 8
        for (int m = 0; m < M; m++)
          acc[m * KP + k] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(q + m * hd + d), acc[m * KP + k]);
      }
    }
    float r[8] __attribute__((aligned(32)));
    _mm256_store_ps(r, reduce8(acc));
    #pragma GCC unroll 8
    for (int m = 0; m < M; m++)
      #pragma GCC unroll 8
      for (int k = 0; k < KP; k++) s[m * BLK + j0 + k] = r[m * KP + k];
  }
}

static void qk_kv_avx2(const float *q, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                       int64_t nj, int64_t hd, float *s) {
  /* groups of 8 query vectors; a second group (M 9..15) reads the block again from cache */
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    int mg = (int)ML_MIN(8, M - m0);
    ML_KV_BY_TYPE(qk_kv_m, t, mg, q + m0 * hd, base, row_bytes, rows, nj, hd, s + m0 * BLK)
  }
}

/* s[m][8 NV keys from kt] for MR query vectors */
INLINE void qk_t_tile(const float *q, int64_t hd, const float *kt, float *s, int MR, int NV) {
  __m256 acc[4][2];
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) acc[r][v] = _mm256_setzero_ps();
  for (int64_t d = 0; d < hd; d++) {
    __m256 k[2];
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) k[v] = _mm256_load_ps(kt + d * BLK + 8 * v);
    #pragma GCC unroll 4
    for (int r = 0; r < MR; r++) {
      __m256 qb = _mm256_broadcast_ss(q + r * hd + d);
      #pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(qb, k[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) _mm256_store_ps(s + r * BLK + 8 * v, acc[r][v]);
}

#define QK_T_NV(MR, nv, ...)                         \
  if ((nv) == 2) qk_t_tile(__VA_ARGS__, MR, 2);      \
  else qk_t_tile(__VA_ARGS__, MR, 1);

static void qk_t_avx2(const float *q, int64_t M, const float *kt, int64_t nj, int64_t hd, float *s) {
  int nvec = (int)((nj + 7) / 8);
  for (int v0 = 0; v0 < nvec; v0 += 2) {
    int nv = nvec - v0 >= 2 ? 2 : 1;
    const float *k = kt + 8 * v0;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) { QK_T_NV(4, nv, q + m * hd, hd, k, s + m * BLK + 8 * v0) }
    switch (M - m) {
      case 3: QK_T_NV(3, nv, q + m * hd, hd, k, s + m * BLK + 8 * v0) break;
      case 2: QK_T_NV(2, nv, q + m * hd, hd, k, s + m * BLK + 8 * v0) break;
      case 1: QK_T_NV(1, nv, q + m * hd, hd, k, s + m * BLK + 8 * v0) break;
      default: break;
    }
  }
}

/* ---- online softmax ---- */

/* exp(x) for x <= 88; exactly 0 where x is -inf. Cody-Waite reduction to r in
 * [-ln2/2, ln2/2], the degree-6 polynomial of flash_avx512.c, then 2^n built in the
 * exponent bits (n clamped to [-126, 127]: below, e^x < 1.2e-38 is taken as 0). */
INLINE __m256 exp256(__m256 x) {
  __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.3981999507e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

INLINE float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

INLINE float hsum8(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

static void softmax_avx2(float *s, int64_t M, int64_t nj, float *mx, float *sum, float *o, int64_t hd) {
  int nv = (int)((nj + 7) / 8), tail = (int)(nj % 8);
  __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 in_tail = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(tail ? tail : 8), lane));
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int64_t m = 0; m < M; m++) {
    float *row = s + m * BLK;
    __m256 v[8] = {ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf}, vmax = ninf;
    #pragma GCC unroll 8
    for (int i = 0; i < nv; i++) {
      v[i] = _mm256_load_ps(row + 8 * i);
      if (i == nv - 1) v[i] = _mm256_blendv_ps(ninf, v[i], in_tail);
      vmax = _mm256_max_ps(vmax, v[i]);
    }
    float bmax = hmax8(vmax);
    if (bmax == -INFINITY) {
      #pragma GCC unroll 8
      for (int i = 0; i < nv; i++) _mm256_store_ps(row + 8 * i, _mm256_setzero_ps());
      continue;
    }
    float old = mx[m], mnew = bmax > old ? bmax : old;
    __m256 vm = _mm256_set1_ps(mnew), acc = _mm256_setzero_ps();
    #pragma GCC unroll 8
    for (int i = 0; i < nv; i++) {
      __m256 e = exp256(_mm256_sub_ps(v[i], vm));
      _mm256_store_ps(row + 8 * i, e);
      acc = _mm256_add_ps(acc, e);
    }
    float c = 1.0f;
    if (mnew > old) { /* the factor by exp256 (no libm call in the loop); old may be -inf */
      __m256 vc = exp256(_mm256_set1_ps(old - mnew));
      c = _mm256_cvtss_f32(vc);
      for (int64_t d = 0; d < hd; d += 8) _mm256_store_ps(o + m * hd + d, _mm256_mul_ps(vc, _mm256_load_ps(o + m * hd + d)));
    }
    sum[m] = sum[m] * c + hsum8(acc);
    mx[m] = mnew;
  }
}

/* ---- o += p · v ---- */

INLINE void pv_tile(const float *p, const float *vb, int64_t nj, int64_t hd, float *o, int MR, int NV) {
  __m256 acc[4][2];
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) acc[r][v] = _mm256_load_ps(o + r * hd + 8 * v);
  #pragma GCC unroll 4
  for (int64_t j = 0; j < nj; j++) {
    __m256 x[2];
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) x[v] = _mm256_load_ps(vb + j * hd + 8 * v);
    #pragma GCC unroll 4
    for (int r = 0; r < MR; r++) {
      __m256 pb = _mm256_broadcast_ss(p + r * BLK + j);
      #pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(pb, x[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 2
    for (int v = 0; v < NV; v++) _mm256_store_ps(o + r * hd + 8 * v, acc[r][v]);
}

#define PV_NV(MR, nv, ...)                        \
  if ((nv) == 2) pv_tile(__VA_ARGS__, MR, 2);     \
  else pv_tile(__VA_ARGS__, MR, 1);

static void pv_avx2(const float *s, int64_t M, const float *vb, int64_t nj, int64_t hd, float *o) {
  for (int64_t d0 = 0; d0 < hd; d0 += 16) {
    int nv = hd - d0 >= 16 ? 2 : 1;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) { PV_NV(4, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) }
    switch (M - m) {
      case 3: PV_NV(3, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      case 2: PV_NV(2, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      case 1: PV_NV(1, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      default: break;
    }
  }
}

/* o[m][d0, d0 + 8 NC) += Σ_j p[m][j] · v[j][same] for M <= 8 query vectors: M x NC
 * accumulators, each piece of a value row converted once for all M */
INLINE void pv_kv_tile(const float *p, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                       int64_t nj, int64_t hd, int64_t d0, float *o, const int M, const int NC) {
  __m256 acc[8][4];
  #pragma GCC unroll 8
  for (int m = 0; m < M; m++)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) acc[m][c] = _mm256_loadu_ps(o + m * hd + d0 + 8 * c);
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *vr = ml_flash_row_at(base, row_bytes, rows, j);
    __m256 x[4];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) x[c] = row8(T, vr, d0 + 8 * c);
    #pragma GCC unroll 8
    for (int m = 0; m < M; m++) {
      __m256 pb = _mm256_broadcast_ss(p + m * BLK + j);
      #pragma GCC unroll 4
      for (int c = 0; c < NC; c++) acc[m][c] = _mm256_fmadd_ps(pb, x[c], acc[m][c]);
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < M; m++)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) _mm256_storeu_ps(o + m * hd + d0 + 8 * c, acc[m][c]);
}

/* the head in passes of NC pieces (M x NC <= 12 accumulators within AVX2's 16 registers),
 * then single pieces */
INLINE void pv_kv_m(const float *p, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                    int64_t hd, float *o, const int M) {
  const int NC = M <= 2 ? 4 : M <= 6 ? 2 : 1;
  int64_t d0 = 0;
  for (; d0 + 8 * NC <= hd; d0 += 8 * NC) pv_kv_tile(p, T, base, row_bytes, rows, nj, hd, d0, o, M, NC);
  for (; d0 < hd; d0 += 8) pv_kv_tile(p, T, base, row_bytes, rows, nj, hd, d0, o, M, 1);
}

static void pv_kv_avx2(const float *s, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                       int64_t nj, int64_t hd, float *o) {
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    int mg = (int)ML_MIN(8, M - m0);
    ML_KV_BY_TYPE(pv_kv_m, t, mg, s + m0 * BLK, base, row_bytes, rows, nj, hd, o + m0 * hd)
  }
}

/* ---- soft-cap and ALiBi ---- */

/* tanh(x) = sign(x) (1 - 2 / (e^2|x| + 1)), |x| clamped at 9 (tanh 9 rounds to 1); below
 * |x| = 1/16, where that form cancels, x (1 - x²/3 + 2x⁴/15 - 17x⁶/315). Within 2e-7 of
 * tanhf absolutely, and relatively near 0. */
INLINE __m256 tanh256(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 a = _mm256_min_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(9.0f));
  __m256 e = exp256(_mm256_add_ps(a, a));
  __m256 t = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                           _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
  __m256 x2 = _mm256_mul_ps(a, a);
  __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(-17.0f / 315.0f), _mm256_set1_ps(2.0f / 15.0f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.0f / 3.0f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, x2), a, a);
  t = _mm256_blendv_ps(t, p, _mm256_cmp_ps(a, _mm256_set1_ps(0.0625f), _CMP_LT_OQ));
  return _mm256_or_ps(t, _mm256_and_ps(x, sign));
}

void ml_flash_bias_avx2(float *s, int64_t n, float softcap, float slope, int64_t d0) {
  int64_t j = 0;
  if (softcap > 0) {
    const __m256 c = _mm256_set1_ps(softcap), ic = _mm256_set1_ps(1.0f / softcap);
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(s + j, _mm256_mul_ps(c, tanh256(_mm256_mul_ps(_mm256_loadu_ps(s + j), ic))));
    for (; j < n; j++) s[j] = softcap * tanhf(s[j] / softcap);
  }
  if (slope != 0) {
    const __m256 vs = _mm256_set1_ps(slope), sign = _mm256_set1_ps(-0.0f);
    const __m256 step = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    for (j = 0; j + 8 <= n; j += 8) {
      /* d0 - j exactly in float for the distances of any context (< 2^24) */
      __m256 d = _mm256_andnot_ps(sign, _mm256_sub_ps(_mm256_set1_ps((float)(d0 - j)), step));
      _mm256_storeu_ps(s + j, _mm256_fnmadd_ps(vs, d, _mm256_loadu_ps(s + j)));
    }
    for (; j < n; j++) s[j] -= slope * (float)llabs(d0 - j);
  }
}

const ml_flash_kernels ml_flash_kernels_avx2 = {"avx2",  load_avx2, load_t_avx2, qk_kv_avx2, qk_t_avx2,
                                              softmax_avx2, pv_avx2, pv_kv_avx2,  ml_flash_bias_avx2, scale_avx2};
