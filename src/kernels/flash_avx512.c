/* flash_avx512.c: the attention block kernels of kernels/flash.h with AVX-512 F (and F16C's
 * conversions in 512-bit form), for head sizes that are a multiple of 16. Products are in
 * f32 with FMA, register-blocked: for many query vectors, scores for 4 of them x 64 keys and
 * values for 4 x 64 output dims, so each converted key/value block is read from L1 once per
 * 4 query vectors; for few (decode), up to 8 query vectors against the rows as they are in
 * the cache, each row converted in registers once (qk_kv, pv_kv). Used where the dispatcher
 * found AVX-512 (flash.c chooses). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common.h"
#include "flash.h"

#define BLK ML_FLASH_BLOCK
#define INLINE static inline __attribute__((always_inline))

/* ---- loading keys / values as f32 rows ---- */

static void load_avx512(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                        int64_t hd, float *dst) {
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *p = base + (size_t)(rows ? rows[j] : j) * row_bytes;
    float *d = dst + j * hd;
    if (t == ML_TYPE_F16) {
      for (int64_t i = 0; i < hd; i += 16)
        _mm512_store_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i))));
    } else if (t == ML_TYPE_Q8_0) {
      const ml_block_q8_0 *b = (const ml_block_q8_0 *)p;
      for (int64_t i = 0; i < hd; i += ML_QK, b++) {
        __m512 s = _mm512_set1_ps(_cvtsh_ss(b->d));
        __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
        __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
        _mm512_store_ps(d + i, _mm512_mul_ps(s, _mm512_cvtepi32_ps(lo)));
        _mm512_store_ps(d + i + 16, _mm512_mul_ps(s, _mm512_cvtepi32_ps(hi)));
      }
    } else {
      for (int64_t i = 0; i < hd; i += 16) _mm512_store_ps(d + i, _mm512_loadu_ps((const float *)p + i));
    }
  }
}

/* ---- keys straight to kt[d][j] in 16 x 16 blocks ---- */

INLINE void transpose16(__m512 r[16]) {
  __m512 t[16];
  #pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  #pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  /* r[4a + b] now holds, in 128-bit lane L, element b of rows 4a..4a+3 at columns 4L..4L+3 */
  #pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);       /* lanes 0,2 of each */
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);   /* lanes 1,3 */
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  #pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

/* ---- scores ---- */

/* 16 vectors to one: lane i = the sum of the 16 lanes of a[i] */
INLINE __m512 reduce16(__m512 a[16]) {
  __m512 b[8], c[4];
  #pragma GCC unroll 8
  for (int i = 0; i < 8; i++)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  #pragma GCC unroll 4
  for (int i = 0; i < 4; i++)
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
  __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xdd));
}

/* 16 values of a row of type T (a constant where inlined) from element i, as f32 */
INLINE __m512 row16(ml_type T, const uint8_t *p, int64_t i) {
  if (T == ML_TYPE_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i)));
  if (T == ML_TYPE_Q8_0) {
    const ml_block_q8_0 *b = (const ml_block_q8_0 *)p + i / ML_QK;
    __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + i % ML_QK))));
    return _mm512_mul_ps(x, _mm512_set1_ps(_cvtsh_ss(b->d)));
  }
  return _mm512_loadu_ps((const float *)p + i);
}

/* One level s of the butterfly that transposes an NR x NR matrix of units of KP lanes
 * held one row per vector (NR = 16 / KP): for the rows i with bit s clear, the units of
 * row i whose column has bit s set trade places with the units of row i + s whose
 * column has it clear. */
INLINE void swap_units(__m512 *a, __m512 *b, int KP, int s) {
  int ia[16], ib[16];
  for (int l = 0; l < 16; l++) {
    int hi = (l / KP) & s;
    ia[l] = hi ? 16 + l - s * KP : l;
    ib[l] = hi ? 16 + l : l + s * KP;
  }
  __m512i xa = _mm512_loadu_si512(ia), xb = _mm512_loadu_si512(ib);
  __m512 na = _mm512_permutex2var_ps(*a, xa, *b), nb = _mm512_permutex2var_ps(*a, xb, *b);
  *a = na;
  *b = nb;
}

/* 16 keys x 16 dims at a time: each key's 16 values converted in a register, the 16
 * registers transposed and stored as 16 rows of kt; keys past nj are zeros */
INLINE void load_t_type(ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                        float *kt) {
  for (int64_t j0 = 0; j0 < nj; j0 += 16) {
    const uint8_t *kr[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; i++) kr[i] = j0 + i < nj ? ml_flash_row_at(base, row_bytes, rows, j0 + i) : NULL;
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      __m512 r[16];
      #pragma GCC unroll 16
      for (int i = 0; i < 16; i++) r[i] = kr[i] ? row16(T, kr[i], d0) : _mm512_setzero_ps();
      transpose16(r);
      #pragma GCC unroll 16
      for (int i = 0; i < 16; i++) _mm512_store_ps(kt + (d0 + i) * BLK + j0, r[i]);
    }
  }
}

static void load_t_avx512(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                          int64_t hd, float *kt) {
  if (t == ML_TYPE_F16) load_t_type(ML_TYPE_F16, base, row_bytes, rows, nj, hd, kt);
  else if (t == ML_TYPE_Q8_0) load_t_type(ML_TYPE_Q8_0, base, row_bytes, rows, nj, hd, kt);
  else load_t_type(ML_TYPE_F32, base, row_bytes, rows, nj, hd, kt);
}

static void scale_avx512(const float *x, float c, int64_t n, float *y) {
  __m512 vc = _mm512_set1_ps(c);
  for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(vc, _mm512_loadu_ps(x + i)));
}

/* Scores of M <= 8 query vectors (M a constant), KP = 16 / MP keys at a time, MP being M
 * rounded up to a power of two: acc[m·KP + k] sums q[m] · key k lane by lane, each 16-value
 * piece of a key converted once for all M, and one reduce16 turns the 16 sums into
 * scores, lane m·KP + k. The NR = 16 / KP such vectors of 16 keys are transposed (units
 * of KP lanes) into one vector of 16 scores per query vector, stored whole: masked
 * stores of each KP-lane run cost Zen 4 several times a plain store and took a third of
 * the time here. Key rows past nj repeat row nj - 1 (the scores past nj are don't-cares;
 * s rows hold ML_FLASH_BLOCK). */
INLINE void qk_kv_m(const float *q, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                    int64_t hd, float *s, const int M) {
  const int KP = M == 1 ? 16 : M == 2 ? 8 : M <= 4 ? 4 : 2, NR = 16 / KP;
  for (int64_t j16 = 0; j16 < nj; j16 += 16) {
    __m512 r[8];
    #pragma GCC unroll 8
    for (int t = 0; t < NR; t++) {
      int64_t j0 = j16 + t * KP;
      const uint8_t *kr[16];
      #pragma GCC unroll 16
      for (int k = 0; k < KP; k++) kr[k] = ml_flash_row_at(base, row_bytes, rows, ML_MIN(j0 + k, nj - 1));
      __m512 acc[16];
      #pragma GCC unroll 16
      for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
      for (int64_t d = 0; d < hd; d += 16) {
        __m512 qv[8];
        #pragma GCC unroll 8
        for (int m = 0; m < M; m++) qv[m] = _mm512_loadu_ps(q + m * hd + d);
        #pragma GCC unroll 16
        for (int k = 0; k < KP; k++) {
          __m512 kv = row16(T, kr[k], d);
          #pragma GCC unroll 8
          for (int m = 0; m < M; m++) acc[m * KP + k] = _mm512_fmadd_ps(kv, qv[m], acc[m * KP + k]);
        }
      }
      r[t] = reduce16(acc);
    }
    #pragma GCC unroll 4
    for (int sb = 1; sb < NR; sb *= 2)
      #pragma GCC unroll 8
      for (int i = 0; i < NR; i++)
        if (!(i & sb)) swap_units(&r[i], &r[i + sb], KP, sb);
    #pragma GCC unroll 8
    for (int m = 0; m < M; m++) _mm512_storeu_ps(s + m * BLK + j16, r[m]);
  }
}

static void qk_kv_avx512(const float *q, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes,
                         const int32_t *rows, int64_t nj, int64_t hd, float *s) {
  /* groups of 8 query vectors; a second group (M 9..15) reads the block again from cache */
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    int mg = (int)ML_MIN(8, M - m0);
    ML_KV_BY_TYPE(qk_kv_m, t, mg, q + m0 * hd, base, row_bytes, rows, nj, hd, s + m0 * BLK)
  }
}

/* s[m][j0..j0+16 NV) for MR query vectors from kt */
INLINE void qk_t_tile(const float *q, int64_t hd, const float *kt, float *s, int MR, int NV) {
  __m512 acc[4][4];
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int64_t d = 0; d < hd; d++) {
    __m512 k[4];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) k[v] = _mm512_load_ps(kt + d * BLK + 16 * v);
    #pragma GCC unroll 4
    for (int r = 0; r < MR; r++) {
      __m512 qb = _mm512_set1_ps(q[r * hd + d]);
      #pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(qb, k[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) _mm512_store_ps(s + r * BLK + 16 * v, acc[r][v]);
}

#define QK_T_NV(MR, nv, ...)                                \
  switch (nv) {                                            \
    case 1: qk_t_tile(__VA_ARGS__, MR, 1); break;          \
    case 2: qk_t_tile(__VA_ARGS__, MR, 2); break;          \
    case 3: qk_t_tile(__VA_ARGS__, MR, 3); break;          \
    default: qk_t_tile(__VA_ARGS__, MR, 4); break;         \
  }

static void qk_t_avx512(const float *q, int64_t M, const float *kt, int64_t nj, int64_t hd, float *s) {
  int nv = (int)((nj + 15) / 16);
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) QK_T_NV(4, nv, q + m * hd, hd, kt, s + m * BLK)
  switch (M - m) {
    case 3: QK_T_NV(3, nv, q + m * hd, hd, kt, s + m * BLK) break;
    case 2: QK_T_NV(2, nv, q + m * hd, hd, kt, s + m * BLK) break;
    case 1: QK_T_NV(1, nv, q + m * hd, hd, kt, s + m * BLK) break;
    default: break;
  }
}

/* ---- online softmax ---- */

/* exp(x) for x <= 0 (the softmax's x - max, and old max - new max); 0 where x is -inf.
 * x is clamped to -104, whose result (below half the least denormal) rounds to 0; n =
 * round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] with ln 2 in one float (the error, n
 * times 2e-9, matters only for results far below the row's largest), a degree-6 polynomial
 * by Horner, then 2^n by vscalefps: 11 operations. */
INLINE __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945f), x);
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

/* rows of NV vectors (a constant where inlined: the row stays in registers), the last
 * one cut to the lanes in tail; the factor c of a new max by exp512 too, no libm call */
INLINE void softmax_nv(float *s, int64_t M, float *mx, float *sum, float *o, int64_t hd, const int NV, __mmask16 tail) {
  for (int64_t m = 0; m < M; m++) {
    float *row = s + m * BLK;
    __m512 v[4], vmax = _mm512_set1_ps(-INFINITY);
    #pragma GCC unroll 4
    for (int i = 0; i < NV; i++) {
      v[i] = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), i == NV - 1 ? tail : 0xffff, row + 16 * i);
      vmax = _mm512_max_ps(vmax, v[i]);
    }
    float bmax = _mm512_reduce_max_ps(vmax);
    if (bmax == -INFINITY) {
      #pragma GCC unroll 4
      for (int i = 0; i < NV; i++) _mm512_store_ps(row + 16 * i, _mm512_setzero_ps());
      continue;
    }
    float old = mx[m], mnew = bmax > old ? bmax : old;
    __m512 vm = _mm512_set1_ps(mnew), acc = _mm512_setzero_ps();
    #pragma GCC unroll 4
    for (int i = 0; i < NV; i++) {
      __m512 e = exp512(_mm512_sub_ps(v[i], vm));
      _mm512_store_ps(row + 16 * i, e);
      acc = _mm512_add_ps(acc, e);
    }
    float c = 1.0f;
    if (mnew > old) { /* old may be -inf (c = 0, and o is 0 then) */
      __m512 vc = exp512(_mm512_set1_ps(old - mnew));
      c = _mm512_cvtss_f32(vc);
      for (int64_t d = 0; d < hd; d += 16) _mm512_store_ps(o + m * hd + d, _mm512_mul_ps(vc, _mm512_load_ps(o + m * hd + d)));
    }
    sum[m] = sum[m] * c + _mm512_reduce_add_ps(acc);
    mx[m] = mnew;
  }
}

static void softmax_avx512(float *s, int64_t M, int64_t nj, float *mx, float *sum, float *o, int64_t hd) {
  int nv = (int)((nj + 15) / 16);
  __mmask16 tail = (__mmask16)((nj % 16) ? (1u << (nj % 16)) - 1 : 0xffff);
  switch (nv) {
    case 1: softmax_nv(s, M, mx, sum, o, hd, 1, tail); break;
    case 2: softmax_nv(s, M, mx, sum, o, hd, 2, tail); break;
    case 3: softmax_nv(s, M, mx, sum, o, hd, 3, tail); break;
    default: softmax_nv(s, M, mx, sum, o, hd, 4, tail); break;
  }
}

/* ---- o += p · v ---- */

INLINE void pv_tile(const float *p, const float *vb, int64_t nj, int64_t hd, float *o, int MR, int NV) {
  __m512 acc[4][4];
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_load_ps(o + r * hd + 16 * v);
  for (int64_t j = 0; j < nj; j++) {
    __m512 x[4];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) x[v] = _mm512_load_ps(vb + j * hd + 16 * v);
    #pragma GCC unroll 4
    for (int r = 0; r < MR; r++) {
      __m512 pb = _mm512_set1_ps(p[r * BLK + j]);
      #pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(pb, x[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < MR; r++)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; v++) _mm512_store_ps(o + r * hd + 16 * v, acc[r][v]);
}

#define PV_NV(MR, nv, ...)                          \
  switch (nv) {                                    \
    case 1: pv_tile(__VA_ARGS__, MR, 1); break;    \
    case 2: pv_tile(__VA_ARGS__, MR, 2); break;    \
    case 3: pv_tile(__VA_ARGS__, MR, 3); break;    \
    default: pv_tile(__VA_ARGS__, MR, 4); break;   \
  }

static void pv_avx512(const float *s, int64_t M, const float *vb, int64_t nj, int64_t hd, float *o) {
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {
    int nv = (int)ML_MIN(4, (hd - d0) / 16);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) PV_NV(4, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0)
    switch (M - m) {
      case 3: PV_NV(3, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      case 2: PV_NV(2, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      case 1: PV_NV(1, nv, s + m * BLK, vb + d0, nj, hd, o + m * hd + d0) break;
      default: break;
    }
  }
}

/* o[m][d0, d0 + 16 NC) += Σ_j p[m][j] · v[j][same] for M <= 8 query vectors: M x NC
 * accumulators, each piece of a value row converted once for all M */
INLINE void pv_kv_tile(const float *p, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                       int64_t nj, int64_t hd, int64_t d0, float *o, const int M, const int NC) {
  __m512 acc[8][4];
  #pragma GCC unroll 8
  for (int m = 0; m < M; m++)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) acc[m][c] = _mm512_loadu_ps(o + m * hd + d0 + 16 * c);
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *vr = ml_flash_row_at(base, row_bytes, rows, j);
    __m512 x[4];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) x[c] = row16(T, vr, d0 + 16 * c);
    #pragma GCC unroll 8
    for (int m = 0; m < M; m++) {
      __m512 pb = _mm512_set1_ps(p[m * BLK + j]);
      #pragma GCC unroll 4
      for (int c = 0; c < NC; c++) acc[m][c] = _mm512_fmadd_ps(pb, x[c], acc[m][c]);
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < M; m++)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) _mm512_storeu_ps(o + m * hd + d0 + 16 * c, acc[m][c]);
}

/* the head in passes of NC pieces (M x NC <= 16 accumulators), then single pieces */
INLINE void pv_kv_m(const float *p, ml_type T, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj,
                    int64_t hd, float *o, const int M) {
  const int NC = M <= 4 ? 4 : 2;
  int64_t d0 = 0;
  for (; d0 + 16 * NC <= hd; d0 += 16 * NC) pv_kv_tile(p, T, base, row_bytes, rows, nj, hd, d0, o, M, NC);
  for (; d0 < hd; d0 += 16) pv_kv_tile(p, T, base, row_bytes, rows, nj, hd, d0, o, M, 1);
}

static void pv_kv_avx512(const float *s, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes,
                         const int32_t *rows, int64_t nj, int64_t hd, float *o) {
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    int mg = (int)ML_MIN(8, M - m0);
    ML_KV_BY_TYPE(pv_kv_m, t, mg, s + m0 * BLK, base, row_bytes, rows, nj, hd, o + m0 * hd)
  }
}

const ml_flash_kernels ml_flash_kernels_avx512 = {"avx512", load_avx512, load_t_avx512, qk_kv_avx512, qk_t_avx512,
                                                softmax_avx512, pv_avx512, pv_kv_avx512, ml_flash_bias_avx2, scale_avx512};
