/* avx512.c: the AVX-512 level for CPUs with F/BW/VL/DQ (compiled with only those flags):
 * activation quantizers that write the same bytes as ref, and the x16 packed kernels with
 * the int8 dot emulated by vpmaddubsw + vpmaddwd and bf16 widened to f32. avx512vnni.c
 * overlays the int8 and bf16 kernels where the CPU has VNNI / BF16. q8_0 has no packed
 * kernel here: its unsigned offset form (w + 128) would saturate vpmaddubsw. The dot
 * products over unpacked rows come from the avx2 level. */
#include <immintrin.h>
#include <string.h>

#include "../quant.h"
#include "kernels.h"

#define X16_VNNI 0
#define X16_BF16_F32 1 /* activations of bf16 weights as float pairs */

static inline __m512i x16_dot4(__m512i acc, __m512i u, __m512i s) {
  /* pairs of u8 x s8 products fit int16 for u <= 127 (the formats here use <= 63) */
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}
static inline __m512i x16_dot2w(__m512i acc, __m512i a, __m512i b) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}
static inline __m512 x16_bf16(__m512 acc, __m512i w, const uint8_t *pair) {
  float a[2];
  memcpy(a, pair, 8);
  __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u)));
  acc = _mm512_fmadd_ps(we, _mm512_set1_ps(a[0]), acc);
  return _mm512_fmadd_ps(wo, _mm512_set1_ps(a[1]), acc);
}

#include "avx512_x16.h"

/* ---- activation quantizers (bytes identical to ref.c's) ---- */

/* |x| with NaN lanes as 0: ref's running "a > amax" never picks a NaN */
static inline __m512 abs_nonan(__m512 x) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), _mm512_abs_ps(x));
}

/* round half to even and saturate to int8 as ref's round_i8 (NaN: 0) */
static inline __m128i round_i8x16(__m512 v) {
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
}

/* one block of 32: d = amax / 127 (as half), q = rne(x * 127 / amax); returns sum q */
static inline int q8_block(const float *x, ml_fp16 *dh, int8_t *qs, float *d_out) {
  __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs_nonan(a), abs_nonan(b)));
  float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
  *dh = (ml_fp16)_cvtss_sh(d, 0);
  __m128i qa = round_i8x16(_mm512_mul_ps(a, _mm512_set1_ps(id)));
  __m128i qb = round_i8x16(_mm512_mul_ps(b, _mm512_set1_ps(id)));
  _mm_storeu_si128((__m128i *)qs, qa);
  _mm_storeu_si128((__m128i *)(qs + 16), qb);
  *d_out = d;
  __m512i s = _mm512_add_epi32(_mm512_cvtepi8_epi32(qa), _mm512_cvtepi8_epi32(qb));
  return _mm512_reduce_add_epi32(s);
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

/* q8_K as ml_quantize_q8_K: scale from the first element of largest magnitude */
static void quant_q8_K(const float *x, void *dst, int64_t n) {
  ml_block_q8_K *y = dst;
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    __m512 mx = _mm512_setzero_ps();
    for (int i = 0; i < 16; i++) mx = _mm512_max_ps(mx, abs_nonan(_mm512_loadu_ps(x + 16 * i)));
    float amax = _mm512_reduce_max_ps(mx);
    if (amax == 0.0f) {
      memset(&y[b], 0, sizeof y[b]);
      continue;
    }
    float max = 0.0f;
    for (int i = 0; i < 16; i++) {
      __mmask16 k = _mm512_cmp_ps_mask(abs_nonan(_mm512_loadu_ps(x + 16 * i)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
      if (k) {
        max = x[16 * i + __builtin_ctz(k)];
        break;
      }
    }
    float iscale = -127.0f / max;
    for (int i = 0; i < 16; i++) {
      __m128i q = round_i8x16(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * i), _mm512_set1_ps(iscale)));
      _mm_storeu_si128((__m128i *)(y[b].qs + 16 * i), q);
      y[b].bsums[i] = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q));
    }
    y[b].d = 1.0f / iscale;
  }
}

static void quant_f16(const float *x, void *dst, int64_t n) {
  ml_fp16 *y = dst;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) y[i] = ml_f32_to_fp16(x[i]);
}

static void quant_bf16(const float *x, void *dst, int64_t n) {
  ml_bf16 *y = dst;
  int64_t i = 0;
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), q = _mm512_set1_epi32(0x40);
  const __m512i abs = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_loadu_si512(x + i);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(v, bias), _mm512_and_si512(_mm512_srli_epi32(v, 16), one)), 16);
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(v, abs), inf);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(v, 16), q);
    _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(r));
  }
  for (; i < n; i++) y[i] = ml_f32_to_bf16(x[i]);
}

const ml_kernels ml_kernels_avx512 = {
  .name = "avx512",
  .quantize = {
    [ML_TYPE_Q8_0] = quant_q8_0, [ML_TYPE_Q8_1] = quant_q8_1, [ML_TYPE_Q8_K] = quant_q8_K,
    [ML_TYPE_F16] = quant_f16, [ML_TYPE_BF16] = quant_bf16,
  },
  .gemv = {
    [ML_TYPE_Q4_0] = gemv_q4_0, [ML_TYPE_Q4_1] = gemv_q4_1, [ML_TYPE_Q5_0] = gemv_q5_0,
    [ML_TYPE_Q5_1] = gemv_q5_1, [ML_TYPE_Q2_K] = gemv_q2_K, [ML_TYPE_Q3_K] = gemv_q3_K,
    [ML_TYPE_Q4_K] = gemv_q4_K, [ML_TYPE_Q5_K] = gemv_q5_K, [ML_TYPE_Q6_K] = gemv_q6_K,
    [ML_TYPE_BF16] = gemv_bf16, [ML_TYPE_F16] = gemv_f16,
  },
  .gemm = {
    [ML_TYPE_Q4_0] = gemm_q4_0, [ML_TYPE_Q4_1] = gemm_q4_1, [ML_TYPE_Q5_0] = gemm_q5_0,
    [ML_TYPE_Q5_1] = gemm_q5_1, [ML_TYPE_Q2_K] = gemm_q2_K, [ML_TYPE_Q3_K] = gemm_q3_K,
    [ML_TYPE_Q4_K] = gemm_q4_K, [ML_TYPE_Q5_K] = gemm_q5_K, [ML_TYPE_Q6_K] = gemm_q6_K,
    [ML_TYPE_BF16] = gemm_bf16, [ML_TYPE_F16] = gemm_f16,
  },
};
