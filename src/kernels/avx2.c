/* avx2.c: the AVX2 level (AVX2 + FMA + F16C): activation quantizers that write the same
 * bytes as ref, dot products over rows as stored (every weight type), and kernels over
 * x16 packed weights. Without VNNI the int8 dot is vpmaddubsw (u8 x s8 -> pairs summed in
 * int16, saturating) + vpmaddwd: the unsigned weight values (<= 63) keep the int16 sums of
 * a few k-groups exact; q8_0 keeps its signed values and uses the sign trick
 * (|w| x sign(a, w)). A ymm holds half a k-group (8 rows x 4 bytes), so a tile is two
 * vectors wide. Also the row operations (ml_rowops) at this level and above. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../quant.h"
#include "kernels.h"
#include "x16.h"

#define X16_BF16_F32 1 /* bf16 weights are widened to f32, activations as floats */
#define X16_Q8_OFF 0   /* q8_0 values stay signed */
#include "x16_drv.h"

/* ---- helpers ---- */

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
static inline __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void st(void *p, __m256i v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline __m256i bcast32(const void *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
static inline __m256i mask8(int v) { return _mm256_set1_epi8((char)v); }
/* byte j = 0xFF if bit j of x is set */
static inline __m256i bits_to_bytes(uint32_t x) {
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3,
                                        3, 3, 3, 3, 3);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFELL));
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}
/* sum of 4 u8 x s8 products per 32-bit lane, for u <= 127 */
static inline __m256i dot4(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
/* the same for signed w: |w| x sign(a, w) */
static inline __m256i dot4s(__m256i w, __m256i a) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)), _mm256_set1_epi16(1));
}

/* ---- activation quantizers (bytes identical to ref.c's) ---- */

static inline __m256 abs_nonan(__m256 x) {
  __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  return _mm256_and_ps(a, _mm256_cmp_ps(x, x, _CMP_ORD_Q));
}
/* round half to even, saturate to [-128, 127], NaN to 0 (as ref's round_i8) */
static inline __m256i round_i32(__m256 v) {
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(v);
}
/* 32 int32 (in order, values in int8 range) to 32 int8 */
static inline __m256i pack_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i x = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline int q8_block(const float *x, ml_fp16 *dh, int8_t *qs, float *d_out) {
  __m256 v[4], mx = _mm256_setzero_ps();
  for (int i = 0; i < 4; i++) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    mx = _mm256_max_ps(abs_nonan(v[i]), mx);
  }
  float amax = hmax8(mx);
  float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
  *dh = (ml_fp16)_cvtss_sh(d, 0);
  __m256i q[4];
  for (int i = 0; i < 4; i++) q[i] = round_i32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
  st(qs, pack_i8(q[0], q[1], q[2], q[3]));
  *d_out = d;
  return hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
}

static void quant_q8_0(const float *x, void *dst, int64_t n) {
  ml_block_q8_0 *y = dst;
  float d;
  for (int64_t b = 0; b < n / ML_QK; b++) q8_block(x + b * ML_QK, &y[b].d, y[b].qs, &d);
}

static void quant_q8_1(const float *x, void *dst, int64_t n) {
  ml_block_q8_1 *y = dst;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    float d;
    int sum = q8_block(x + b * ML_QK, &y[b].d, y[b].qs, &d);
    y[b].s = (ml_fp16)_cvtss_sh(d * (float)sum, 0);
  }
}

static void quant_q8_K(const float *x, void *dst, int64_t n) {
  ml_block_q8_K *y = dst;
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) mx = _mm256_max_ps(abs_nonan(_mm256_loadu_ps(x + 8 * i)), mx);
    float amax = hmax8(mx);
    if (amax == 0.0f) {
      memset(&y[b], 0, sizeof y[b]);
      continue;
    }
    float max = 0.0f; /* the first element of largest magnitude, with its sign */
    for (int i = 0; i < 32; i++) {
      int k = _mm256_movemask_ps(_mm256_cmp_ps(abs_nonan(_mm256_loadu_ps(x + 8 * i)), _mm256_set1_ps(amax), _CMP_EQ_OQ));
      if (k) {
        max = x[8 * i + __builtin_ctz((unsigned)k)];
        break;
      }
    }
    float iscale = -127.0f / max;
    for (int i = 0; i < 8; i++) {
      __m256i q[4];
      for (int j = 0; j < 4; j++) q[j] = round_i32(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * i + 8 * j), _mm256_set1_ps(iscale)));
      st(y[b].qs + 32 * i, pack_i8(q[0], q[1], q[2], q[3]));
      y[b].bsums[2 * i] = (int16_t)hsum_i32(_mm256_add_epi32(q[0], q[1]));
      y[b].bsums[2 * i + 1] = (int16_t)hsum_i32(_mm256_add_epi32(q[2], q[3]));
    }
    y[b].d = 1.0f / iscale;
  }
}

static void quant_f16(const float *x, void *dst, int64_t n) {
  ml_fp16 *y = dst;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) y[i] = ml_f32_to_fp16(x[i]);
}

static inline __m256i bf16_round(__m256i v) {
  __m256i r = _mm256_srli_epi32(
    _mm256_add_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(0x7FFF)), _mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(1))),
    16);
  __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
  __m256i q = _mm256_or_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(r, q, nan);
}

static void quant_bf16(const float *x, void *dst, int64_t n) {
  ml_bf16 *y = dst;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i a = bf16_round(ld(x + i)), b = bf16_round(ld(x + i + 8));
    st(y + i, _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
  }
  for (; i < n; i++) y[i] = ml_f32_to_bf16(x[i]);
}

/* ---- dot products over rows as stored ---- */

static float dot_f32(int64_t n, const void *w, const void *a) {
  const float *x = w, *y = a;
  __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; j++) s[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * j), _mm256_loadu_ps(y + i + 8 * j), s[j]);
  for (; i + 8 <= n; i += 8) s[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s[0]);
  float r = hsum8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
  for (; i < n; i++) r += x[i] * y[i];
  return r;
}

static inline __m256 ld_f16x8(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256 ld_bf16x8(const void *p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static float dot_f16(int64_t n, const void *w, const void *a) {
  const ml_fp16 *x = w, *y = a;
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(ld_f16x8(x + i), ld_f16x8(y + i), s0);
    s1 = _mm256_fmadd_ps(ld_f16x8(x + i + 8), ld_f16x8(y + i + 8), s1);
  }
  float r = hsum8(_mm256_add_ps(s0, s1));
  for (; i < n; i++) r += ml_fp16_to_f32(x[i]) * ml_fp16_to_f32(y[i]);
  return r;
}

static float dot_bf16(int64_t n, const void *w, const void *a) {
  const ml_bf16 *x = w, *y = a;
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(ld_bf16x8(x + i), ld_bf16x8(y + i), s0);
    s1 = _mm256_fmadd_ps(ld_bf16x8(x + i + 8), ld_bf16x8(y + i + 8), s1);
  }
  float r = hsum8(_mm256_add_ps(s0, s1));
  for (; i < n; i++) r += ml_bf16_to_f32(x[i]) * ml_bf16_to_f32(y[i]);
  return r;
}

static float h2f(ml_fp16 h) { return ml_fp16_to_f32(h); }

/* 16 bytes of nibbles -> 32 values in element order (low nibbles first) */
static inline __m256i nib32(const uint8_t *qs) {
  __m128i x = _mm_loadu_si128((const __m128i *)qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), mask8(0x0F));
}
static inline uint32_t qh32(const uint8_t *qh) {
  uint32_t v;
  memcpy(&v, qh, 4);
  return v;
}

static float dot_q8_0(int64_t n, const void *w, const void *a) {
  const ml_block_q8_0 *x = w;
  const ml_block_q8_0 *y = a;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / ML_QK; b++)
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4s(ld(x[b].qs), ld(y[b].qs))), _mm256_set1_ps(h2f(x[b].d) * h2f(y[b].d)), acc);
  return hsum8(acc);
}

static float dot_q4_0(int64_t n, const void *w, const void *a) {
  const ml_block_q4_0 *x = w;
  const ml_block_q8_0 *y = a;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / ML_QK; b++) {
    __m256i q = _mm256_sub_epi8(nib32(x[b].qs), mask8(8));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4s(q, ld(y[b].qs))), _mm256_set1_ps(h2f(x[b].d) * h2f(y[b].d)), acc);
  }
  return hsum8(acc);
}

static float dot_q4_1(int64_t n, const void *w, const void *a) {
  const ml_block_q4_1 *x = w;
  const ml_block_q8_1 *y = a;
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(nib32(x[b].qs), ld(y[b].qs))), _mm256_set1_ps(h2f(x[b].d) * h2f(y[b].d)), acc);
    mins += h2f(x[b].m) * h2f(y[b].s);
  }
  return hsum8(acc) + mins;
}

static float dot_q5_0(int64_t n, const void *w, const void *a) {
  const ml_block_q5_0 *x = w;
  const ml_block_q8_0 *y = a;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / ML_QK; b++) {
    __m256i q = _mm256_or_si256(nib32(x[b].qs), _mm256_and_si256(bits_to_bytes(qh32(x[b].qh)), mask8(16)));
    q = _mm256_sub_epi8(q, mask8(16));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4s(q, ld(y[b].qs))), _mm256_set1_ps(h2f(x[b].d) * h2f(y[b].d)), acc);
  }
  return hsum8(acc);
}

static float dot_q5_1(int64_t n, const void *w, const void *a) {
  const ml_block_q5_1 *x = w;
  const ml_block_q8_1 *y = a;
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    __m256i q = _mm256_or_si256(nib32(x[b].qs), _mm256_and_si256(bits_to_bytes(qh32(x[b].qh)), mask8(16)));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot4(q, ld(y[b].qs))), _mm256_set1_ps(h2f(x[b].d) * h2f(y[b].d)), acc);
    mins += h2f(x[b].m) * h2f(y[b].s);
  }
  return hsum8(acc) + mins;
}

/* K formats: v[i] holds the unsigned values of elements 32 i .. 32 i + 31; sc the scale of
 * each sub-block of `sub` elements. Returns sum_j sc_j sum_{e in j} v_e q8_e. */
static inline int kq_isum(const __m256i v[8], const int8_t *q8, const int16_t *sc, int sub) {
  __m256i acc = _mm256_setzero_si256();
  for (int i = 0; i < 8; i++) {
    __m256i p = _mm256_maddubs_epi16(v[i], ld(q8 + 32 * i));
    __m256i s = sub == 32 ? _mm256_set1_epi16(sc[i])
                          : _mm256_set_m128i(_mm_set1_epi16(sc[2 * i + 1]), _mm_set1_epi16(sc[2 * i]));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
  }
  return hsum_i32(acc);
}

/* element 128 h + 32 k + l of the 2-bit formats: bits 2k of byte 32 h + l */
static inline void unpack_2bit(const uint8_t *qs, __m256i v[8]) {
  for (int h = 0; h < 2; h++) {
    __m256i x = ld(qs + 32 * h);
    for (int k = 0; k < 4; k++) v[4 * h + k] = _mm256_and_si256(_mm256_srli_epi16(x, 2 * k), mask8(3));
  }
}

static float dot_q2_K(int64_t n, const void *w, const void *a) {
  const ml_block_q2_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    __m256i v[8];
    int16_t sc[16];
    int mins = 0;
    unpack_2bit(x[b].qs, v);
    for (int j = 0; j < 16; j++) {
      sc[j] = x[b].scales[j] & 0xF;
      mins += (x[b].scales[j] >> 4) * y[b].bsums[j];
    }
    int sum = kq_isum(v, y[b].qs, sc, 16);
    s += y[b].d * h2f(x[b].d) * (float)sum - y[b].d * h2f(x[b].dmin) * (float)mins;
  }
  return s;
}

static float dot_q3_K(int64_t n, const void *w, const void *a) {
  const ml_block_q3_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    __m256i v[8];
    int8_t s8[16];
    int16_t sc[16];
    int offs = 0;
    unpack_2bit(x[b].qs, v);
    __m256i hm = ld(x[b].hmask);
    for (int i = 0; i < 8; i++) { /* bit i of hmask[l] is the high bit of element 32 i + l */
      __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, i), mask8(1));
      v[i] = _mm256_or_si256(v[i], _mm256_slli_epi16(hb, 2));
    }
    ml_q3k_scales(x[b].scales, s8);
    for (int j = 0; j < 16; j++) {
      sc[j] = s8[j];
      offs += 4 * s8[j] * y[b].bsums[j];
    }
    int sum = kq_isum(v, y[b].qs, sc, 16) - offs;
    s += h2f(x[b].d) * y[b].d * (float)sum;
  }
  return s;
}

static float dot_q45_K(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, ml_fp16 dw, ml_fp16 dminw,
                       const ml_block_q8_K *y) {
  __m256i v[8];
  int16_t sc[8];
  int mins = 0;
  for (int c = 0; c < 4; c++) {
    __m256i x = ld(qs + 32 * c);
    v[2 * c] = _mm256_and_si256(x, mask8(0x0F));
    v[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask8(0x0F));
  }
  if (qh) {
    __m256i h = ld(qh);
    for (int j = 0; j < 8; j++)
      v[j] = _mm256_or_si256(v[j], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, j), mask8(1)), 4));
  }
  for (int j = 0; j < 8; j++) {
    uint8_t s, m;
    ml_q4k_scale_min(scales, j, &s, &m);
    sc[j] = s;
    mins += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
  }
  int sum = kq_isum(v, y->qs, sc, 32);
  return y->d * h2f(dw) * (float)sum - y->d * h2f(dminw) * (float)mins;
}

static float dot_q4_K(int64_t n, const void *w, const void *a) {
  const ml_block_q4_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) s += dot_q45_K(x[b].qs, NULL, x[b].scales, x[b].d, x[b].dmin, &y[b]);
  return s;
}

static float dot_q5_K(int64_t n, const void *w, const void *a) {
  const ml_block_q5_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) s += dot_q45_K(x[b].qs, x[b].qh, x[b].scales, x[b].d, x[b].dmin, &y[b]);
  return s;
}

static float dot_q6_K(int64_t n, const void *w, const void *a) {
  const ml_block_q6_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    __m256i v[8];
    int16_t sc[16];
    int offs = 0;
    for (int h = 0; h < 2; h++) {
      __m256i l0 = ld(x[b].ql + 64 * h), l1 = ld(x[b].ql + 64 * h + 32), qh = ld(x[b].qh + 32 * h);
      __m256i lo[4] = {_mm256_and_si256(l0, mask8(0x0F)), _mm256_and_si256(l1, mask8(0x0F)),
                       _mm256_and_si256(_mm256_srli_epi16(l0, 4), mask8(0x0F)),
                       _mm256_and_si256(_mm256_srli_epi16(l1, 4), mask8(0x0F))};
      for (int k = 0; k < 4; k++) {
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), mask8(3));
        v[4 * h + k] = _mm256_or_si256(lo[k], _mm256_slli_epi16(hi, 4));
      }
    }
    for (int j = 0; j < 16; j++) {
      sc[j] = x[b].scales[j];
      offs += 32 * x[b].scales[j] * y[b].bsums[j];
    }
    int sum = kq_isum(v, y[b].qs, sc, 16) - offs;
    s += h2f(x[b].d) * y[b].d * (float)sum;
  }
  return s;
}

/* ---- x16 packed weights: unpacking (the layouts of x16_drv.h; for this level, the K
 * formats' sc[j] are int16 pairs (sc, sc) per row, for vpmaddwd) ---- */

/* the 64 bits at p as 64 bytes (two vectors) of 0x10 where set */
static inline void hb64(const uint8_t *p, __m256i out[2]) {
  uint32_t lo, hi;
  memcpy(&lo, p, 4);
  memcpy(&hi, p + 4, 4);
  out[0] = _mm256_and_si256(bits_to_bytes(lo), mask8(16));
  out[1] = _mm256_and_si256(bits_to_bytes(hi), mask8(16));
}

static inline void unpack_b32(ml_type wt, const uint8_t *o, uint8_t *u) {
  _mm256_storeu_ps((float *)(u + UB32_D), ld_f16x8(o));
  _mm256_storeu_ps((float *)(u + UB32_D + 32), ld_f16x8(o + 16));
  if (wt == ML_TYPE_Q8_0) {
    memcpy(u, o + X16_Q8_0_Q, 512);
    return;
  }
  int qoff = wt == ML_TYPE_Q4_0 ? X16_Q4_0_Q : wt == ML_TYPE_Q4_1 ? X16_Q4_1_Q : wt == ML_TYPE_Q5_0 ? X16_Q5_0_Q : X16_Q5_1_Q;
  int hoff = wt == ML_TYPE_Q5_0 ? X16_Q5_0_HB : X16_Q5_1_HB;
  int has_hb = wt == ML_TYPE_Q5_0 || wt == ML_TYPE_Q5_1;
  if (wt == ML_TYPE_Q4_1 || wt == ML_TYPE_Q5_1) {
    _mm256_storeu_ps((float *)(u + UB32_M), ld_f16x8(o + 32));
    _mm256_storeu_ps((float *)(u + UB32_M + 32), ld_f16x8(o + 48));
  }
  for (int g = 0; g < 4; g++) {
    __m256i hl[2], hh[2];
    if (has_hb) {
      hb64(o + hoff + 8 * g, hl);
      hb64(o + hoff + 8 * (g + 4), hh);
    }
    for (int h = 0; h < 2; h++) {
      __m256i x = ld(o + qoff + 64 * g + 32 * h);
      __m256i l = _mm256_and_si256(x, mask8(0x0F)), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask8(0x0F));
      if (has_hb) {
        l = _mm256_or_si256(l, hl[h]);
        hi = _mm256_or_si256(hi, hh[h]);
      }
      st(u + 64 * g + 32 * h, l);
      st(u + 64 * (g + 4) + 32 * h, hi);
    }
  }
}

/* per 32-bit lane: (v, v) as int16 pair, or (lo, hi) */
static inline __m256i pair16(__m256i lo, __m256i hi) {
  return _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(hi, 16));
}
static inline __m256i byte_lane(__m256i v, int j) {
  return _mm256_and_si256(_mm256_srli_epi32(v, 8 * j), _mm256_set1_epi32(0xFF));
}

static inline void unpack_kq(ml_type wt, const uint8_t *o, uint8_t *u) {
  for (int h = 0; h < 2; h++) _mm256_storeu_ps((float *)(u + UKQ_D + 32 * h), ld_f16x8(o + 16 * h));
  const int mn_off = wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K ? UKQ_MN32 : UKQ_MN16;
  for (int h = 0; h < 2; h++) { /* scales of rows 8 h .. 8 h + 7 */
    int base = 32 * h;
    __m256i sc[16], mn[16];
    int J = 16;
    if (wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K) {
      J = 8;
      __m256i u0 = ld(o + X16_Q4_K_SC + base), u1 = ld(o + X16_Q4_K_SC + 64 + base), u2 = ld(o + X16_Q4_K_SC + 128 + base);
      __m256i m6 = _mm256_set1_epi32(0x3F3F3F3F), m4 = _mm256_set1_epi32(0x0F0F0F0F), m2 = _mm256_set1_epi32(0x03030303);
      __m256i s03 = _mm256_and_si256(u0, m6), n03 = _mm256_and_si256(u1, m6);
      __m256i s47 = _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), m2), 4));
      __m256i n47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), m2), 4));
      for (int j = 0; j < 4; j++) {
        sc[j] = byte_lane(s03, j), sc[j + 4] = byte_lane(s47, j);
        mn[j] = byte_lane(n03, j), mn[j + 4] = byte_lane(n47, j);
      }
    } else if (wt == ML_TYPE_Q3_K) {
      const __m256i k1 = _mm256_set1_epi32(0x03030303), k2 = _mm256_set1_epi32(0x0F0F0F0F);
      __m256i a0 = ld(o + X16_Q3_K_SC + base), a1 = ld(o + X16_Q3_K_SC + 64 + base), t = ld(o + X16_Q3_K_SC + 128 + base);
      __m256i w4[4] = {
        _mm256_or_si256(_mm256_and_si256(a0, k2), _mm256_slli_epi32(_mm256_and_si256(t, k1), 4)),
        _mm256_or_si256(_mm256_and_si256(a1, k2), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(t, 2), k1), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(a0, 4), k2), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(t, 4), k1), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(a1, 4), k2), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(t, 6), k1), 4))};
      for (int j = 0; j < 16; j++) {
        sc[j] = _mm256_sub_epi32(byte_lane(w4[j / 4], j % 4), _mm256_set1_epi32(32));
        mn[j] = _mm256_slli_epi32(sc[j], 2);
      }
    } else {
      for (int j = 0; j < 16; j++) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(o + (wt == ML_TYPE_Q6_K ? X16_Q6_K_SC : X16_Q2_K_SC) + 16 * j + 8 * h));
        if (wt == ML_TYPE_Q6_K) {
          sc[j] = _mm256_cvtepi8_epi32(b);
          mn[j] = _mm256_slli_epi32(sc[j], 5);
        } else {
          __m256i s = _mm256_cvtepu8_epi32(b);
          sc[j] = _mm256_and_si256(s, _mm256_set1_epi32(0xF));
          mn[j] = _mm256_srli_epi32(s, 4);
        }
      }
    }
    for (int j = 0; j < J; j++) st(u + UKQ_SC + 64 * j + base, pair16(sc[j], sc[j]));
    for (int q = 0; q < J / 2; q++) st(u + mn_off + 64 * q + base, pair16(mn[2 * q], mn[2 * q + 1]));
  }
  if (wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K || wt == ML_TYPE_Q2_K)
    for (int h = 0; h < 2; h++) _mm256_storeu_ps((float *)(u + UKQ_DMIN + 32 * h), ld_f16x8(o + 32 + 16 * h));
  else
    memcpy(u + UKQ_DMIN, u + UKQ_D, 64);
  for (int h = 0; h < 2; h++) { /* values, half vector h of each k-group */
    int base = 32 * h;
    switch (wt) {
    case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: {
      for (int c = 0; c < 4; c++)
        for (int g = 0; g < 8; g++) {
          __m256i x = ld(o + X16_QK_CHUNK(wt == ML_TYPE_Q5_K, c) + 64 * g + base);
          __m256i l = _mm256_and_si256(x, mask8(0x0F)), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask8(0x0F));
          if (wt == ML_TYPE_Q5_K) {
            __m256i bl[2], bh[2];
            hb64(o + X16_Q5_K_HB(2 * c, g), bl);
            hb64(o + X16_Q5_K_HB(2 * c + 1, g), bh);
            l = _mm256_or_si256(l, bl[h]);
            hi = _mm256_or_si256(hi, bh[h]);
          }
          st(u + 64 * (16 * c + g) + base, l);
          st(u + 64 * (16 * c + 8 + g) + base, hi);
        }
    } break;
    case ML_TYPE_Q6_K:
      for (int hh = 0; hh < 2; hh++)
        for (int g = 0; g < 8; g++) {
          __m256i qh = ld(o + X16_Q6_K_QH(hh, g) + base);
          for (int kk = 0; kk < 2; kk++) {
            __m256i x = ld(o + X16_Q6_K_QL(hh, kk, g) + base);
            __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * kk), mask8(3)), 4);
            __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * kk + 4), mask8(3)), 4);
            st(u + 64 * (32 * hh + 8 * kk + g) + base, _mm256_or_si256(_mm256_and_si256(x, mask8(0x0F)), h0));
            st(u + 64 * (32 * hh + 8 * (kk + 2) + g) + base,
               _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), mask8(0x0F)), h2));
          }
        }
      break;
    case ML_TYPE_Q3_K:
      for (int g = 0; g < 8; g++) {
        __m256i hm = ld(o + X16_Q3_K_HM(g) + base);
        for (int hh = 0; hh < 2; hh++) {
          __m256i x = ld(o + X16_Q3_K_Q(hh, g) + base);
          for (int k = 0; k < 4; k++) {
            __m256i hb = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * hh + k), mask8(1)), 2);
            st(u + 64 * (32 * hh + 8 * k + g) + base, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 2 * k), mask8(3)), hb));
          }
        }
      }
      break;
    default: /* q2_K */
      for (int hh = 0; hh < 2; hh++)
        for (int g = 0; g < 8; g++) {
          __m256i x = ld(o + X16_Q2_K_Q + 512 * hh + 64 * g + base);
          for (int k = 0; k < 4; k++) st(u + 64 * (32 * hh + 8 * k + g) + base, _mm256_and_si256(_mm256_srli_epi16(x, 2 * k), mask8(3)));
        }
      break;
    }
  }
}

/* ---- micro-kernels: MR rows x one tile (two half vectors); acc[2 m + h] ---- */

/* k-groups whose maddubs pairs may be summed in int16 before vpmaddwd: 2 x vmax x 127 x n
 * must stay below 32768 */
X16_AI int groups16(ml_type wt) {
  switch (wt) {
  case ML_TYPE_Q4_0: case ML_TYPE_Q4_1: case ML_TYPE_Q4_K: case ML_TYPE_Q3_K: case ML_TYPE_Q2_K: return 8;
  case ML_TYPE_Q5_0: case ML_TYPE_Q5_1: case ML_TYPE_Q5_K: return 4;
  default: return 2; /* q6_K */
  }
}

X16_AI void micro_b32(ml_type wt, const uint8_t *u, int64_t nb, const uint8_t *ap, int off, int has_min, __m256 *acc,
                      const int MR) {
  const size_t abb = (size_t)(has_min ? 44 : 40) * MR;
  const int G16 = groups16(wt);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; b++, u += UB32_STRIDE, ap += abb) {
    const float *d = (const float *)(ap + 32 * MR), *fs = (const float *)(ap + 40 * MR);
    __m256i ia[8], s16[8];
#pragma GCC unroll 8
    for (int i = 0; i < 2 * MR; i++) {
      ia[i] = off ? bcast32(ap + 36 * MR + 4 * (i / 2)) : _mm256_setzero_si256();
      s16[i] = _mm256_setzero_si256();
    }
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++) {
      __m256i w0 = ld(u + 64 * g), w1 = ld(u + 64 * g + 32);
#pragma GCC unroll 4
      for (int m = 0; m < MR; m++) {
        __m256i x = bcast32(ap + 4 * (g * MR + m));
        if (wt == ML_TYPE_Q8_0) {
          ia[2 * m] = _mm256_add_epi32(ia[2 * m], dot4s(w0, x));
          ia[2 * m + 1] = _mm256_add_epi32(ia[2 * m + 1], dot4s(w1, x));
        } else {
          s16[2 * m] = _mm256_add_epi16(s16[2 * m], _mm256_maddubs_epi16(w0, x));
          s16[2 * m + 1] = _mm256_add_epi16(s16[2 * m + 1], _mm256_maddubs_epi16(w1, x));
          if ((g + 1) % G16 == 0) {
            ia[2 * m] = _mm256_add_epi32(ia[2 * m], _mm256_madd_epi16(s16[2 * m], ones));
            ia[2 * m + 1] = _mm256_add_epi32(ia[2 * m + 1], _mm256_madd_epi16(s16[2 * m + 1], ones));
            s16[2 * m] = s16[2 * m + 1] = _mm256_setzero_si256();
          }
        }
      }
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256 dw = _mm256_loadu_ps((const float *)(u + UB32_D) + 8 * h);
      __m256 mw = has_min ? _mm256_loadu_ps((const float *)(u + UB32_M) + 8 * h) : _mm256_setzero_ps();
#pragma GCC unroll 4
      for (int m = 0; m < MR; m++) {
        acc[2 * m + h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[2 * m + h]), _mm256_mul_ps(dw, _mm256_set1_ps(d[m])), acc[2 * m + h]);
        if (has_min) acc[2 * m + h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(fs[m]), acc[2 * m + h]);
      }
    }
  }
}

X16_AI void micro_kq(ml_type wt, const uint8_t *u, int64_t nb, const uint8_t *ap, int sub, __m256 *acc, const int MR) {
  const int J = 256 / sub, G = sub / 4, stride = sub == 16 ? UKQ_STRIDE16 : UKQ_STRIDE32;
  const int mnoff = sub == 16 ? UKQ_MN16 : UKQ_MN32, G16 = groups16(wt);
  const size_t abb = (size_t)(260 + 2 * J) * MR;
  for (int64_t b = 0; b < nb; b++, u += stride, ap += abb) {
    __m256i it[8];
#pragma GCC unroll 8
    for (int i = 0; i < 2 * MR; i++) it[i] = _mm256_setzero_si256();
    for (int j = 0; j < J; j++) {
      __m256i s16[8];
#pragma GCC unroll 8
      for (int i = 0; i < 2 * MR; i++) s16[i] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int g = 0; g < G; g++) {
        __m256i w0 = ld(u + 64 * (G * j + g)), w1 = ld(u + 64 * (G * j + g) + 32);
#pragma GCC unroll 4
        for (int m = 0; m < MR; m++) {
          __m256i x = bcast32(ap + 4 * ((G * j + g) * MR + m));
          s16[2 * m] = _mm256_add_epi16(s16[2 * m], _mm256_maddubs_epi16(w0, x));
          s16[2 * m + 1] = _mm256_add_epi16(s16[2 * m + 1], _mm256_maddubs_epi16(w1, x));
          if ((g + 1) % G16 == 0 || g == G - 1) { /* apply the scale: vpmaddwd with (sc, sc) */
            it[2 * m] = _mm256_add_epi32(it[2 * m], _mm256_madd_epi16(s16[2 * m], ld(u + UKQ_SC + 64 * j)));
            it[2 * m + 1] = _mm256_add_epi32(it[2 * m + 1], _mm256_madd_epi16(s16[2 * m + 1], ld(u + UKQ_SC + 64 * j + 32)));
            s16[2 * m] = s16[2 * m + 1] = _mm256_setzero_si256();
          }
        }
      }
    }
    const float *da = (const float *)(ap + 256 * MR);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256 dw = _mm256_loadu_ps((const float *)(u + UKQ_D) + 8 * h), dm = _mm256_loadu_ps((const float *)(u + UKQ_DMIN) + 8 * h);
#pragma GCC unroll 4
      for (int m = 0; m < MR; m++) {
        __m256i im = _mm256_setzero_si256();
        for (int q = 0; q < J / 2; q++)
          im = _mm256_add_epi32(im, _mm256_madd_epi16(ld(u + mnoff + 64 * q + 32 * h), bcast32(ap + 260 * MR + 4 * (q * MR + m))));
        __m256 s = _mm256_set1_ps(da[m]);
        acc[2 * m + h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(it[2 * m + h]), _mm256_mul_ps(dw, s), acc[2 * m + h]);
        acc[2 * m + h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(im), _mm256_mul_ps(dm, s), acc[2 * m + h]);
      }
    }
  }
}

X16_AI void micro_bf16(const uint8_t *tile, int64_t nb, const uint8_t *ap, __m256 *acc, const int MR) {
  const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
  for (int64_t kp = 0; kp < 16 * nb; kp++, tile += 64, ap += 8 * MR) {
    __m256 we[2], wo[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i w = ld(tile + 32 * h);
      we[h] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      wo[h] = _mm256_castsi256_ps(_mm256_and_si256(w, hi));
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++) {
      const float *a = (const float *)(ap + 8 * m);
      __m256 x0 = _mm256_set1_ps(a[0]), x1 = _mm256_set1_ps(a[1]);
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) acc[2 * m + h] = _mm256_fmadd_ps(wo[h], x1, _mm256_fmadd_ps(we[h], x0, acc[2 * m + h]));
    }
  }
}

X16_AI void micro_f16(const uint8_t *tile, int64_t nb, const uint8_t *ap, __m256 *acc, const int MR) {
  for (int64_t k = 0; k < 32 * nb; k++, tile += 32, ap += 4 * MR) {
    __m256 w0 = ld_f16x8(tile), w1 = ld_f16x8(tile + 16);
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) {
      __m256 x = _mm256_set1_ps(((const float *)ap)[m]);
      acc[2 * m] = _mm256_fmadd_ps(w0, x, acc[2 * m]);
      acc[2 * m + 1] = _mm256_fmadd_ps(w1, x, acc[2 * m + 1]);
    }
  }
}

/* ---- drivers (as avx512_x16.h, one tile at a time) ---- */

#define X16_WORK_U ML_X16_WORK_U
#define X16_L2_ACT (192 << 10)

static inline int packed_only(const x16_ctx *c) { return c->in.kind == ML_X16_BF16 || c->in.kind == ML_X16_F16; }

X16_AI void unpack_blocks(const x16_ctx *c, const uint8_t *tile, int64_t b0, int64_t b1, uint8_t *u) {
  for (int64_t b = b0; b < b1; b++, u += c->ustride) {
    const uint8_t *o = tile + (size_t)b * c->bb;
    _mm_prefetch((const char *)o + 4096, _MM_HINT_T0);
    if (c->in.kind == ML_X16_B32) unpack_b32(c->wt, o, u);
    else unpack_kq(c->wt, o, u);
  }
}

/* A register block of MR rows (the first r real) over blocks [b0, b1) of tile t. */
X16_AI void run_rows(ml_type wt, const ml_packed_args *p, int64_t t, const uint8_t *u, int64_t b0, int64_t b1,
                     const uint8_t *ap, int64_t m0, int r, const int MR) {
  ml_x16_info in;
  x16_info(wt, &in);
  int64_t left = p->N - t * ML_X16;
  __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mk[2] = {_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 16 ? left : 16)), lanes),
                   _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 16 ? left : 16) - 8), lanes)};
  __m256 acc[12];
#pragma GCC unroll 12
  for (int i = 0; i < 2 * MR; i++)
    acc[i] = b0 > 0 && i / 2 < r ? _mm256_maskload_ps(p->y + (m0 + i / 2) * p->ldy + t * ML_X16 + 8 * (i % 2), mk[i % 2])
                                 : _mm256_setzero_ps();
  const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
  switch (in.kind) {
  case ML_X16_B32: micro_b32(wt, u, b1 - b0, ap, in.off, in.has_min, acc, MR); break;
  case ML_X16_KQ: micro_kq(wt, u, b1 - b0, ap, in.sub, acc, MR); break;
  case ML_X16_BF16: micro_bf16(tile + (size_t)b0 * X16_BF16_BYTES, b1 - b0, ap, acc, MR); break;
  default: micro_f16(tile + (size_t)b0 * X16_F16_BYTES, b1 - b0, ap, acc, MR); break;
  }
#pragma GCC unroll 12
  for (int i = 0; i < 2 * MR; i++)
    if (i / 2 < r) _mm256_maskstore_ps(p->y + (m0 + i / 2) * p->ldy + t * ML_X16 + 8 * (i % 2), mk[i % 2], acc[i]);
}

/* rows per register block by the micro-kernel's register budget (16 ymm) */
X16_AI int block_mr(ml_type wt) {
  return wt == ML_TYPE_F16 ? 6 : wt == ML_TYPE_BF16 ? 4 : 2;
}

/* The 16 outputs of one tile (two registers), the last tile's first `left` only */
X16_AI void store_x16(float *y, int64_t left, __m256 lo, __m256 hi) {
  if (left >= 16) {
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
    return;
  }
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lanes), lo);
  _mm256_maskstore_ps(y + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left - 8), lanes), hi);
}

/* One activation row against q4_0 / q8_0 tiles straight from the packed blocks: the nibbles
 * are split and the products taken in registers, so nothing goes through the work buffer
 * (unpacking to it and reading it back cost more than the products, where every weight is
 * used once). The same integer sums and the same float operations in the same order as
 * run_rows, so the results are identical. */
X16_AI void gemv1_b32(const ml_packed_args *p, const uint8_t *ap, int64_t nb, int64_t m0, int64_t t0, int64_t t1,
                      ml_type wt) {
  float *y = p->y + m0 * p->ldy;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *o = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    const uint8_t *a = ap;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, a += 40) {
      __m256i ia0 = bcast32(a + 36), ia1 = ia0;
      if (wt == ML_TYPE_Q8_0) {
        const uint8_t *q = o + X16_Q8_0_Q;
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
          __m256i x = bcast32(a + 4 * g);
          ia0 = _mm256_add_epi32(ia0, dot4s(ld(q + 64 * g), x));
          ia1 = _mm256_add_epi32(ia1, dot4s(ld(q + 64 * g + 32), x));
        }
        o += X16_Q8_0_BYTES;
      } else {
        const uint8_t *q = o + X16_Q4_0_Q;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
          __m256i x0 = ld(q + 64 * g), x1 = ld(q + 64 * g + 32);
          __m256i xl = bcast32(a + 4 * g), xh = bcast32(a + 4 * (g + 4));
          s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(x0, mask8(0x0F)), xl));
          s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(x1, mask8(0x0F)), xl));
          s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(x0, 4), mask8(0x0F)), xh));
          s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(x1, 4), mask8(0x0F)), xh));
        }
        ia0 = _mm256_add_epi32(ia0, _mm256_madd_epi16(s0, ones));
        ia1 = _mm256_add_epi32(ia1, _mm256_madd_epi16(s1, ones));
        o += X16_Q4_0_BYTES;
      }
      const uint8_t *blk = o - (wt == ML_TYPE_Q8_0 ? X16_Q8_0_BYTES : X16_Q4_0_BYTES);
      float d;
      memcpy(&d, a + 32, 4);
      __m256 da = _mm256_set1_ps(d);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia0), _mm256_mul_ps(ld_f16x8(blk), da), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia1), _mm256_mul_ps(ld_f16x8(blk + 16), da), acc1);
    }
    store_x16(y + t * ML_X16, p->N - t * ML_X16, acc0, acc1);
  }
}

/* One activation row against q4_K tiles straight from the packed blocks, as gemv1_b32: the
 * 6-bit scales and mins of 8 rows decoded in registers per half tile (as unpack_kq does),
 * the nibbles split in registers; the integer sums and the float operations of micro_kq in
 * its order, so the results are identical. */
X16_AI void gemv1_q4k(const ml_packed_args *p, const uint8_t *ap, int64_t nb, int64_t m0, int64_t t0, int64_t t1) {
  float *y = p->y + m0 * p->ldy;
  const __m256i m6 = _mm256_set1_epi32(0x3F3F3F3F), m4 = _mm256_set1_epi32(0x0F0F0F0F), m2 = _mm256_set1_epi32(0x03030303);
  const size_t abb = 260 + 2 * 8;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *o = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    const uint8_t *a = ap;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++, a += abb, o += X16_Q4_K_BYTES) {
      __m256i it[2], im[2], scp[2][8];
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) { /* rows 8 h .. 8 h + 7: scales as (sc, sc) pairs, mins as sums */
        int base = 32 * h;
        __m256i u0 = ld(o + X16_Q4_K_SC + base), u1 = ld(o + X16_Q4_K_SC + 64 + base), u2 = ld(o + X16_Q4_K_SC + 128 + base);
        __m256i s03 = _mm256_and_si256(u0, m6), n03 = _mm256_and_si256(u1, m6);
        __m256i s47 = _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), m2), 4));
        __m256i n47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                                      _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), m2), 4));
        __m256i mn[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
          __m256i a0 = byte_lane(s03, j), a1 = byte_lane(s47, j);
          scp[h][j] = pair16(a0, a0), scp[h][j + 4] = pair16(a1, a1);
          mn[j] = byte_lane(n03, j), mn[j + 4] = byte_lane(n47, j);
        }
        im[h] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
          im[h] = _mm256_add_epi32(im[h], _mm256_madd_epi16(pair16(mn[2 * q], mn[2 * q + 1]), bcast32(a + 260 + 4 * q)));
        it[h] = _mm256_setzero_si256();
      }
#pragma GCC unroll 1
      for (int c = 0; c < 4; c++) {
        const uint8_t *q = o + X16_Q4_K_Q + 512 * c, *x = a + 4 * 16 * c;
        __m256i sl0 = _mm256_setzero_si256(), sl1 = sl0, sh0 = sl0, sh1 = sl0;
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
          __m256i w0 = ld(q + 64 * g), w1 = ld(q + 64 * g + 32);
          __m256i xl = bcast32(x + 4 * g), xh = bcast32(x + 4 * (8 + g));
          sl0 = _mm256_add_epi16(sl0, _mm256_maddubs_epi16(_mm256_and_si256(w0, mask8(0x0F)), xl));
          sl1 = _mm256_add_epi16(sl1, _mm256_maddubs_epi16(_mm256_and_si256(w1, mask8(0x0F)), xl));
          sh0 = _mm256_add_epi16(sh0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w0, 4), mask8(0x0F)), xh));
          sh1 = _mm256_add_epi16(sh1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w1, 4), mask8(0x0F)), xh));
        }
        it[0] = _mm256_add_epi32(it[0], _mm256_add_epi32(_mm256_madd_epi16(sl0, scp[0][2 * c]), _mm256_madd_epi16(sh0, scp[0][2 * c + 1])));
        it[1] = _mm256_add_epi32(it[1], _mm256_add_epi32(_mm256_madd_epi16(sl1, scp[1][2 * c]), _mm256_madd_epi16(sh1, scp[1][2 * c + 1])));
      }
      float d;
      memcpy(&d, a + 256, 4);
      __m256 s = _mm256_set1_ps(d);
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) {
        __m256 dw = ld_f16x8(o + 16 * h), dm = ld_f16x8(o + X16_Q4_K_DMIN + 16 * h);
        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(it[h]), _mm256_mul_ps(dw, s), acc[h]);
        acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(im[h]), _mm256_mul_ps(dm, s), acc[h]);
      }
    }
    store_x16(y + t * ML_X16, p->N - t * ML_X16, acc[0], acc[1]);
  }
}

/* The same for q6_K: 6-bit values put together in registers, int16 sums over pairs of
 * k-groups of a sub-block (as micro_kq), scaled per sub-block with vpmaddwd. */
X16_AI __m256i q6_scale(const uint8_t *o, int j, int h) {
  __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(o + X16_Q6_K_SC + 16 * j + 8 * h)));
  return sc;
}

X16_AI void gemv1_q6k(const ml_packed_args *p, const uint8_t *ap, int64_t nb, int64_t m0, int64_t t0, int64_t t1) {
  float *y = p->y + m0 * p->ldy;
  const size_t abb = 260 + 2 * 16;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *o = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    const uint8_t *a = ap;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++, a += abb, o += X16_Q6_K_BYTES) {
      __m256i it[2], im[2];
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) {
        im[h] = _mm256_setzero_si256();
        it[h] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) {
          __m256i mn = pair16(_mm256_slli_epi32(q6_scale(o, 2 * q, h), 5), _mm256_slli_epi32(q6_scale(o, 2 * q + 1, h), 5));
          im[h] = _mm256_add_epi32(im[h], _mm256_madd_epi16(mn, bcast32(a + 260 + 4 * q)));
        }
      }
#pragma GCC unroll 1
      for (int hh = 0; hh < 2; hh++)
#pragma GCC unroll 1
        for (int g0 = 0; g0 < 8; g0 += 2) {
          __m256i s16[4][2];
#pragma GCC unroll 4
          for (int k = 0; k < 4; k++) s16[k][0] = s16[k][1] = _mm256_setzero_si256();
#pragma GCC unroll 2
          for (int g = g0; g < g0 + 2; g++)
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
              int base = 32 * h;
              __m256i qh = ld(o + X16_Q6_K_QH(hh, g) + base);
#pragma GCC unroll 2
              for (int kk = 0; kk < 2; kk++) {
                __m256i x = ld(o + X16_Q6_K_QL(hh, kk, g) + base);
                __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * kk), mask8(3)), 4);
                __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * kk + 4), mask8(3)), 4);
                __m256i v0 = _mm256_or_si256(_mm256_and_si256(x, mask8(0x0F)), h0);
                __m256i v2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), mask8(0x0F)), h2);
                s16[kk][h] = _mm256_add_epi16(s16[kk][h], _mm256_maddubs_epi16(v0, bcast32(a + 4 * (32 * hh + 8 * kk + g))));
                s16[kk + 2][h] =
                  _mm256_add_epi16(s16[kk + 2][h], _mm256_maddubs_epi16(v2, bcast32(a + 4 * (32 * hh + 8 * (kk + 2) + g))));
              }
            }
          /* k-group 32 hh + 8 k + g is in sub-block 8 hh + 2 k + g / 4 */
#pragma GCC unroll 4
          for (int k = 0; k < 4; k++)
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
              __m256i sc = q6_scale(o, 8 * hh + 2 * k + g0 / 4, h);
              it[h] = _mm256_add_epi32(it[h], _mm256_madd_epi16(s16[k][h], pair16(sc, sc)));
            }
        }
      float d;
      memcpy(&d, a + 256, 4);
      __m256 s = _mm256_set1_ps(d);
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) {
        __m256 dw = _mm256_mul_ps(ld_f16x8(o + 16 * h), s);
        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(it[h]), dw, acc[h]);
        acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(im[h]), dw, acc[h]);
      }
    }
    store_x16(y + t * ML_X16, p->N - t * ML_X16, acc[0], acc[1]);
  }
}

X16_AI void gemv_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  uint8_t *u = work, *ap = (uint8_t *)work + X16_WORK_U;
  const int MR = block_mr(wt);
  int64_t chunk = c.in.kind == ML_X16_KQ ? 1 : 8;
  for (int64_t m0 = 0; m0 < p->M && t0 < t1; m0 += MR) {
    int r = p->M - m0 < MR ? (int)(p->M - m0) : MR;
    int R = r == 1 ? 1 : MR;
    apack(&c, p, m0, R, r, 0, c.nb, ap);
    if (R == 1 && (wt == ML_TYPE_Q4_0 || wt == ML_TYPE_Q8_0)) {
      gemv1_b32(p, ap, c.nb, m0, t0, t1, wt);
      continue;
    }
    if (R == 1 && wt == ML_TYPE_Q4_K) {
      gemv1_q4k(p, ap, c.nb, m0, t0, t1);
      continue;
    }
    if (R == 1 && wt == ML_TYPE_Q6_K) {
      gemv1_q6k(p, ap, c.nb, m0, t0, t1);
      continue;
    }
    size_t abb = ablock_bytes(&c, R);
    for (int64_t t = t0; t < t1; t++) {
      const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
      for (int64_t b0 = 0; b0 < c.nb; b0 += chunk) {
        int64_t b1 = b0 + chunk < c.nb ? b0 + chunk : c.nb;
        if (!packed_only(&c)) unpack_blocks(&c, tile, b0, b1, u);
        if (R == 1) run_rows(wt, p, t, u, b0, b1, ap + (size_t)b0 * abb, m0, r, 1);
        else run_rows(wt, p, t, u, b0, b1, ap + (size_t)b0 * abb, m0, r, MR);
      }
    }
  }
}

X16_AI void gemm_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  if (t0 >= t1) return;
  const int MR = block_mr(wt);
  uint8_t *u = work, *ap = (uint8_t *)work + X16_WORK_U;
  int64_t kcb = c.in.kind == ML_X16_KQ ? 4 : 32;
  if (kcb > c.nb) kcb = c.nb;
  int64_t mc = X16_L2_ACT / ((int64_t)ablock_bytes(&c, 1) * kcb) / MR * MR;
  if (mc < MR) mc = MR;
  for (int64_t mc0 = 0; mc0 < p->M; mc0 += mc) {
    int64_t mc1 = mc0 + mc < p->M ? mc0 + mc : p->M;
    for (int64_t b0 = 0; b0 < c.nb; b0 += kcb) {
      int64_t b1 = b0 + kcb < c.nb ? b0 + kcb : c.nb;
      size_t abb = ablock_bytes(&c, MR) * (size_t)(b1 - b0);
      uint8_t *a = ap;
      for (int64_t m0 = mc0; m0 < mc1; m0 += MR, a += abb) apack(&c, p, m0, MR, mc1 - m0 < MR ? (int)(mc1 - m0) : MR, b0, b1, a);
      for (int64_t t = t0; t < t1; t++) {
        if (!packed_only(&c)) unpack_blocks(&c, (const uint8_t *)p->w + (size_t)t * p->tile_bytes, b0, b1, u);
        a = ap;
        for (int64_t m0 = mc0; m0 < mc1; m0 += MR, a += abb)
          run_rows(wt, p, t, u, b0, b1, a, m0, mc1 - m0 < MR ? (int)(mc1 - m0) : MR, MR);
      }
    }
  }
}

#define X16_ENTRY(name, type)                                                                          \
  static void gemv_##name(const ml_packed_args *p, void *w, int ith, int nth) { gemv_x16(p, w, ith, nth, type); } \
  static void gemm_##name(const ml_packed_args *p, void *w, int ith, int nth) { gemm_x16(p, w, ith, nth, type); }
X16_ENTRY(q8_0, ML_TYPE_Q8_0)
X16_ENTRY(q4_0, ML_TYPE_Q4_0)
X16_ENTRY(q4_1, ML_TYPE_Q4_1)
X16_ENTRY(q5_0, ML_TYPE_Q5_0)
X16_ENTRY(q5_1, ML_TYPE_Q5_1)
X16_ENTRY(q2_K, ML_TYPE_Q2_K)
X16_ENTRY(q3_K, ML_TYPE_Q3_K)
X16_ENTRY(q4_K, ML_TYPE_Q4_K)
X16_ENTRY(q5_K, ML_TYPE_Q5_K)
X16_ENTRY(q6_K, ML_TYPE_Q6_K)
X16_ENTRY(bf16, ML_TYPE_BF16)
X16_ENTRY(f16, ML_TYPE_F16)
#undef X16_ENTRY

/* ---- row operations (RMSNorm accumulates its sum of squares in double like ref; SiLU and
 * the sampler's exponentials use an exp with 1-ulp-level error) ---- */

static float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static float dot_avx2(const float *a, const float *b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum_ps(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

static void axpy_avx2(float a, const float *x, float *y, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

static void scale_avx2(float a, float *y, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] *= a;
}

static void add_avx2(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] += x[i];
}

static void f16_to_f32_avx2(const ml_fp16 *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
  for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

static void f32_to_f16_avx2(const float *x, ml_fp16 *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

static void rmsnorm_avx2(float *y, const float *x, const float *w, int64_t n, float eps) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    s0 = _mm256_fmadd_pd(lo, lo, s0);
    s1 = _mm256_fmadd_pd(hi, hi, s1);
  }
  __m256d s = _mm256_add_pd(s0, s1);
  double t[4];
  _mm256_storeu_pd(t, s);
  double ss = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; i++) ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
  __m256 vs = _mm256_set1_ps(scale);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
  for (; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

/* ref's LayerNorm 8 at a time: the same float differences, squares, scale, weight and bias
 * roundings (no FMA); only the order of the double sums differs */
static void layernorm_avx2(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  double t[4];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
  double sum = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; i++) sum += (double)x[i];
  float mean = (float)(sum / (double)n);
  const __m256 vm = _mm256_set1_ps(mean);
  s0 = s1 = _mm256_setzero_pd();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    _mm256_storeu_ps(y + i, d);
    __m256 dd = _mm256_mul_ps(d, d);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(dd)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(dd, 1)));
  }
  _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
  double sum2 = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; i++) {
    float d = x[i] - mean;
    y[i] = d;
    sum2 += (double)(d * d);
  }
  float sc = 1.0f / sqrtf((float)(sum2 / (double)n) + eps);
  const __m256 vs = _mm256_set1_ps(sc);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(y + i), vs);
    if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
    if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
    _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; i++) {
    float v = y[i] * sc;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

/* max(-lim, v) then min(lim, .): vmaxps/vminps return their second operand, v, for NaN */
static void add_clamp_avx2(float *y, const float *x, const float *b, int64_t n, float lim) {
  const __m256 hi = _mm256_set1_ps(lim), lo = _mm256_set1_ps(-lim);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
    if (lim > 0) v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
    _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; i++) {
    float v = b ? x[i] + b[i] : x[i];
    y[i] = lim > 0 && v < -lim ? -lim : lim > 0 && v > lim ? lim : v;
  }
}

/* exp(x) for x in about [-88, 88]: 2^(x log2 e) split into integer and fraction, the
 * fraction by a degree-6 polynomial (relative error ~2e-7). */
static __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  __m256 fi = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_sub_ps(t, fi); /* in [-0.5, 0.5] */
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fi), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static void silu_mul_avx2(float *g, const float *u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(g + i);
    __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static double exp_shift_avx2(float *y, const float *x, int64_t n, float shift, float scale, float cut) {
  const __m256 vs = _mm256_set1_ps(shift), vk = _mm256_set1_ps(scale), vc = _mm256_set1_ps(cut);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 e = _mm256_and_ps(exp_avx2(_mm256_mul_ps(_mm256_sub_ps(v, vs), vk)), _mm256_cmp_ps(v, vc, _CMP_GE_OQ));
    _mm256_storeu_ps(y + i, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double t[4], s = 0;
  _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
  s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; i++) s += y[i] = x[i] >= cut ? expf((x[i] - shift) * scale) : 0.0f;
  return s;
}

/* ggml's table GELU, 8 at a time: F16C rounds to f16 (to nearest even, as ggml's
 * GGML_FP32_TO_FP16), a 32-bit gather reads each entry (the table has a padding entry for
 * the last index), F16C widens the low halves */
static void gelu_mul_avx2(float *g, const float *u, int64_t n, const ml_fp16 *table) {
  const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
  const __m256i low16 = _mm256_set1_epi32(0xffff);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(g + i);
    __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    __m256i e = _mm256_and_si256(_mm256_i32gather_epi32((const int *)(const void *)table, idx, 2), low16);
    __m256 y = _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1)));
    y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
    if (u) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
    _mm256_storeu_ps(g + i, _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), y));
  }
  for (; i < n; i++) {
    float x = g[i], y = x >= 10.0f ? x : _cvtsh_ss(table[_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)]);
    if (u) y *= u[i];
    g[i] = x <= -10.0f ? 0.0f : y;
  }
}

const ml_kernels ml_kernels_avx2 = {
  .name = "avx2",
  .vec_dot = {
    [ML_TYPE_F32] = dot_f32,   [ML_TYPE_F16] = dot_f16,   [ML_TYPE_BF16] = dot_bf16,
    [ML_TYPE_Q4_0] = dot_q4_0, [ML_TYPE_Q4_1] = dot_q4_1, [ML_TYPE_Q5_0] = dot_q5_0,
    [ML_TYPE_Q5_1] = dot_q5_1, [ML_TYPE_Q8_0] = dot_q8_0, [ML_TYPE_Q2_K] = dot_q2_K,
    [ML_TYPE_Q3_K] = dot_q3_K, [ML_TYPE_Q4_K] = dot_q4_K, [ML_TYPE_Q5_K] = dot_q5_K,
    [ML_TYPE_Q6_K] = dot_q6_K,
  },
  .quantize = {
    [ML_TYPE_Q8_0] = quant_q8_0, [ML_TYPE_Q8_1] = quant_q8_1, [ML_TYPE_Q8_K] = quant_q8_K,
    [ML_TYPE_F16] = quant_f16, [ML_TYPE_BF16] = quant_bf16,
  },
  .gemv = {
    [ML_TYPE_Q8_0] = gemv_q8_0, [ML_TYPE_Q4_0] = gemv_q4_0, [ML_TYPE_Q4_1] = gemv_q4_1,
    [ML_TYPE_Q5_0] = gemv_q5_0, [ML_TYPE_Q5_1] = gemv_q5_1, [ML_TYPE_Q2_K] = gemv_q2_K,
    [ML_TYPE_Q3_K] = gemv_q3_K, [ML_TYPE_Q4_K] = gemv_q4_K, [ML_TYPE_Q5_K] = gemv_q5_K,
    [ML_TYPE_Q6_K] = gemv_q6_K, [ML_TYPE_BF16] = gemv_bf16, [ML_TYPE_F16] = gemv_f16,
  },
  .gemm = {
    [ML_TYPE_Q8_0] = gemm_q8_0, [ML_TYPE_Q4_0] = gemm_q4_0, [ML_TYPE_Q4_1] = gemm_q4_1,
    [ML_TYPE_Q5_0] = gemm_q5_0, [ML_TYPE_Q5_1] = gemm_q5_1, [ML_TYPE_Q2_K] = gemm_q2_K,
    [ML_TYPE_Q3_K] = gemm_q3_K, [ML_TYPE_Q4_K] = gemm_q4_K, [ML_TYPE_Q5_K] = gemm_q5_K,
    [ML_TYPE_Q6_K] = gemm_q6_K, [ML_TYPE_BF16] = gemm_bf16, [ML_TYPE_F16] = gemm_f16,
  },
  .row = {dot_avx2, axpy_avx2, scale_avx2, add_avx2, f16_to_f32_avx2, f32_to_f16_avx2, rmsnorm_avx2, silu_mul_avx2,
          exp_shift_avx2, gelu_mul_avx2, layernorm_avx2, add_clamp_avx2},
};
