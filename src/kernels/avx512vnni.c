/* avx512vnni.c: the AVX-512 level's kernels that need VNNI (vpdpbusd / vpdpwssd for the
 * int8 formats) or AVX512-BF16 (vdpbf16ps), over x16 packed weights. Two tables, merged
 * by the dispatcher over ml_kernels_avx512 when the CPU has the feature; the int8 table
 * contains no BF16 instruction, so a VNNI-only CPU can use it. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define X16_VNNI 1
#define X16_BF16_F32 0 /* activations of bf16 weights as bf16 pairs */

static inline __m512i x16_dot4(__m512i acc, __m512i u, __m512i s) { return _mm512_dpbusd_epi32(acc, u, s); }
static inline __m512i x16_dot2w(__m512i acc, __m512i a, __m512i b) { return _mm512_dpwssd_epi32(acc, a, b); }
/* the pair broadcast from memory inside vdpbf16ps ({1to16}): the GEMM uses each pair for
 * two tiles, so the compiler kept a vpbroadcastd per pair; folded, a 512 x 576 x 576 GEMM
 * ran 2-4% faster on Zen 4 (A/B in one run) */
static inline __m512 x16_bf16(__m512 acc, __m512i w, const uint8_t *pair) {
  __asm__("vdpbf16ps %[a]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [a] "m"(*(const int32_t *)pair));
  return acc;
}

#include "avx512_x16.h"

const ml_kernels ml_kernels_avx512_vnni = {
  .name = "avx512-vnni",
  .gemv = {
    [ML_TYPE_Q8_0] = gemv_q8_0, [ML_TYPE_Q4_0] = gemv_q4_0, [ML_TYPE_Q4_1] = gemv_q4_1,
    [ML_TYPE_Q5_0] = gemv_q5_0, [ML_TYPE_Q5_1] = gemv_q5_1, [ML_TYPE_Q2_K] = gemv_q2_K,
    [ML_TYPE_Q3_K] = gemv_q3_K, [ML_TYPE_Q4_K] = gemv_q4_K, [ML_TYPE_Q5_K] = gemv_q5_K,
    [ML_TYPE_Q6_K] = gemv_q6_K,
  },
  .gemm = {
    [ML_TYPE_Q8_0] = gemm_q8_0, [ML_TYPE_Q4_0] = gemm_q4_0, [ML_TYPE_Q4_1] = gemm_q4_1,
    [ML_TYPE_Q5_0] = gemm_q5_0, [ML_TYPE_Q5_1] = gemm_q5_1, [ML_TYPE_Q2_K] = gemm_q2_K,
    [ML_TYPE_Q3_K] = gemm_q3_K, [ML_TYPE_Q4_K] = gemm_q4_K, [ML_TYPE_Q5_K] = gemm_q5_K,
    [ML_TYPE_Q6_K] = gemm_q6_K,
  },
};

const ml_kernels ml_kernels_avx512_bf16 = {
  .name = "avx512-bf16",
  .gemv = {[ML_TYPE_BF16] = gemv_bf16},
  .gemm = {[ML_TYPE_BF16] = gemm_bf16},
};
