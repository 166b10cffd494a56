/* quant.c: reference quantize and dequantize for every GGUF block format we read.
 *
 * The byte layouts are llama.cpp's (see the block structs in dtype.h). The quantizers
 * reproduce ggml's reference ones without an importance matrix, so a file quantized here
 * is byte-identical to one made by llama-quantize: the same search for block scales, the
 * same float operations in the same order, the same rounding. That is why the arithmetic
 * below is written out operation by operation; "simplifying" an expression changes bytes.
 * ggml's quantizers run without fused multiply-adds, so this file forbids contraction
 * (pragma below); only an explicit clang -ffp-contract=fast or -ffast-math overrides it.
 *
 * Rounding helpers: nearest() rounds half to even (what ggml's K-quant code uses),
 * away() rounds half away from zero (roundf, used by the q8_0/q8_1 weight quantizers),
 * and the *_0 and *_1 formats truncate x + 0.5 or x + 8.5.
 */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* No fused multiply-add here, whatever -march or -std: a fused a*b+c rounds once instead
 * of twice and changes quantized bytes (q4_K, q6_K) and dequantized values. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

_Static_assert(sizeof(ml_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(ml_block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(ml_block_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(ml_block_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(ml_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(ml_block_q8_1) == 36, "q8_1 block");
_Static_assert(sizeof(ml_block_q2_K) == 84, "q2_K block");
_Static_assert(sizeof(ml_block_q3_K) == 110, "q3_K block");
_Static_assert(sizeof(ml_block_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(ml_block_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(ml_block_q6_K) == 210, "q6_K block");
_Static_assert(sizeof(ml_block_q8_K) == 292, "q8_K block");

#define GROUP_EPS 1e-15f /* a group whose largest |x| is below this is all zero */

/* ---- rounding and small helpers ---- */

/* Nearest integer, ties to even. Adding 1.5 * 2^23 leaves no fraction bits, so the float
 * add itself rounds (to even); exact for |v| < 2^22. Out of range and NaN are clamped. */
static int nearest(float v) {
  if (!(v > -4194304.0f && v < 4194304.0f)) return v > 0 ? 4194304 : v < 0 ? -4194304 : 0;
  float t = v + 12582912.0f;
  return (int)(t - 12582912.0f);
}

/* Nearest integer, ties away from zero; clamped to [-1024, 1024], NaN to 0. */
static int away(float v) {
  if (!(v > -1024.0f && v < 1024.0f)) return v > 0 ? 1024 : v < 0 ? -1024 : 0;
  return (int)roundf(v);
}

/* (int)v for v in [0, hi], else the nearer bound (NaN: 0). */
static int trunc_clamp(float v, int hi) {
  if (!(v >= 0.0f)) return 0;
  if (v >= (float)hi) return hi;
  return (int)v;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static float h2f(ml_fp16 h) { return ml_fp16_to_f32(h); }
static ml_fp16 f2h(float f) { return ml_f32_to_fp16(f); }

/* The element of largest magnitude, with its sign; the first one wins a tie. */
static float signed_absmax(const float *x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (a > amax) {
      amax = a;
      max = x[i];
    }
  }
  return max;
}

static void min_max(const float *x, int n, float *mn, float *mx) {
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int i = 0; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
  }
  *mn = lo;
  *mx = hi;
}

/* ---- scale searches of the K formats ---- */

/* Symmetric fit x ~ scale * (L - nmax), L in [0, 2 nmax - 1], minimizing the error
 * weighted by x^2. Starts from scale = max/-nmax, then tries 18 nearby scales
 * -(nmax + 0.1 k)/max, k = -9..9, keeping the best least-squares one. Returns scale. */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L) {
  float max = signed_absmax(x, n);
  if (fabsf(max) < GROUP_EPS) {
    memset(L, 0, (size_t)n);
    return 0.0f;
  }
  float iscale = (float)-nmax / max;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; i++) {
    int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
    L[i] = (int8_t)(l + nmax);
    float w = x[i] * x[i];
    sumlx += w * x[i] * (float)l;
    suml2 += w * (float)l * (float)l;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int k = -9; k <= 9; k++) {
    if (k == 0) continue;
    iscale = -((float)nmax + 0.1f * (float)k) / max;
    sumlx = suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
      int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
      float w = x[i] * x[i];
      sumlx += w * x[i] * (float)l;
      suml2 += w * (float)l * (float)l;
    }
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; i++)
        L[i] = (int8_t)(nmax + clampi(nearest(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

/* The q3_K group fit: start like fit_symmetric, then up to 5 passes of coordinate
 * descent, moving one L at a time to the level the other levels' fit suggests, if that
 * improves the x^2-weighted least-squares score sumlx^2 / suml2. L ends in [0, 2 nmax). */
static float fit_q3(int n, int nmax, const float *x, int8_t *L) {
  float max = signed_absmax(x, n);
  if (fabsf(max) < GROUP_EPS) {
    memset(L, 0, (size_t)n);
    return 0.0f;
  }
  float iscale = (float)-nmax / max;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; i++) {
    int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
    L[i] = (int8_t)l;
    float w = x[i] * x[i];
    sumlx += w * x[i] * (float)l;
    suml2 += w * (float)l * (float)l;
  }
  for (int pass = 0; pass < 5; pass++) {
    int changed = 0;
    for (int i = 0; i < n; i++) {
      float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * (float)L[i];
      if (!(slx > 0.0f)) continue;
      float sl2 = suml2 - w * (float)L[i] * (float)L[i];
      int l = clampi(nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (l == L[i]) continue;
      slx += w * x[i] * (float)l;
      sl2 += w * (float)l * (float)l;
      if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = (int8_t)l;
        sumlx = slx;
        suml2 = sl2;
        changed++;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine fit x ~ scale * L - min with L in [0, nmax] and min >= 0 (the group's min is
 * clamped to at most 0), minimizing sum w |err| (mad) or sum w err^2. Starts from the
 * min/max grid, then for nstep + 1 trial grids iscale = (nmax + rmin + rdelta k)/(max-min)
 * solves the weighted least squares for (scale, min) given those L and keeps the best.
 * Returns scale; *neg_min receives the offset to subtract (>= 0). Laux: n bytes scratch. */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L,
                        float *neg_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                        int mad) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    memset(L, 0, (size_t)n);
    *neg_min = -min;
    return 0.0f;
  }
  float iscale = (float)nmax / (max - min);
  float scale = 1.0f / iscale;
  float best = 0.0f;
  for (int i = 0; i < n; i++) {
    L[i] = (uint8_t)clampi(nearest(iscale * (x[i] - min)), 0, nmax);
    float diff = scale * (float)L[i] + min - x[i];
    diff = mad ? fabsf(diff) : diff * diff;
    best += w[i] * diff;
  }
  for (int k = 0; k <= nstep; k++) {
    iscale = (rmin + rdelta * (float)k + (float)nmax) / (max - min);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; i++) {
      int l = clampi(nearest(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = (uint8_t)l;
      sum_l += w[i] * (float)l;
      sum_l2 += w[i] * (float)l * (float)l;
      sum_xl += w[i] * (float)l * x[i];
    }
    float D = sum_w * sum_l2 - sum_l * sum_l;
    if (!(D > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0.0f) {
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0.0f;
    for (int i = 0; i < n; i++) {
      float diff = this_scale * (float)Laux[i] + this_min - x[i];
      diff = mad ? fabsf(diff) : diff * diff;
      err += w[i] * diff;
    }
    if (err < best) {
      memcpy(L, Laux, (size_t)n);
      best = err;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

/* Pack 256 2-bit values: byte 32 h + l holds L[128 h + l + 32 k] in bits 2k..2k+1. */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
  for (int h = 0; h < 2; h++)
    for (int l = 0; l < 32; l++) {
      const uint8_t *p = L + 128 * h + l;
      qs[32 * h + l] = (uint8_t)(p[0] | (p[32] << 2) | (p[64] << 4) | (p[96] << 6));
    }
}

/* q4_K / q5_K: 8 (scale, min) pairs of 6 bits in 12 bytes. Bytes 0-3: scales 0-3 (low 6
 * bits) and the high 2 bits of scales 4-7; bytes 4-7: mins 0-3 and the high bits of mins
 * 4-7; bytes 8-11: the low nibbles of scale (low) and min (high) 4-7. */
void ml_q4k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

static void pack_q4k_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t s[12]) {
  for (int j = 0; j < 4; j++) {
    s[j] = ls[j];
    s[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; j++) {
    s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
    s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
    s[j] |= (uint8_t)((lm[j] >> 4) << 6);
  }
}

/* q3_K: 16 6-bit scales (stored +32) in 12 bytes: the low nibble of scale j in byte j
 * (j < 8) or the high nibble of byte j - 8; its top 2 bits in byte 8 + j%4, bits 2(j/4). */
void ml_q3k_scales(const uint8_t *s, int8_t out[16]) {
  for (int j = 0; j < 16; j++) {
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = (int8_t)((lo | (hi << 4)) - 32);
  }
}

/* ---- q4_0, q4_1, q5_0, q5_1: blocks of 32, element j and j + 16 share a byte ---- */

void ml_quantize_q4_0(const float *x, void *vy, int64_t n) {
  ml_block_q4_0 *y = vy;
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float d = signed_absmax(x, ML_QK) / -8;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f2h(d);
    for (int j = 0; j < ML_QK / 2; j++) {
      int lo = trunc_clamp(x[j] * id + 8.5f, 15);
      int hi = trunc_clamp(x[j + ML_QK / 2] * id + 8.5f, 15);
      y[b].qs[j] = (uint8_t)(lo | (hi << 4));
    }
  }
}

void ml_dequantize_q4_0(const void *vx, float *y, int64_t n) {
  const ml_block_q4_0 *x = vx;
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d);
    for (int j = 0; j < ML_QK / 2; j++) {
      y[j] = (float)((x[b].qs[j] & 0xF) - 8) * d;
      y[j + ML_QK / 2] = (float)((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

void ml_quantize_q4_1(const float *x, void *vy, int64_t n) {
  ml_block_q4_1 *y = vy;
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float min, max;
    min_max(x, ML_QK, &min, &max);
    float d = (max - min) / 15;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f2h(d);
    y[b].m = f2h(min);
    for (int j = 0; j < ML_QK / 2; j++) {
      int lo = trunc_clamp((x[j] - min) * id + 0.5f, 15);
      int hi = trunc_clamp((x[j + ML_QK / 2] - min) * id + 0.5f, 15);
      y[b].qs[j] = (uint8_t)(lo | (hi << 4));
    }
  }
}

void ml_dequantize_q4_1(const void *vx, float *y, int64_t n) {
  const ml_block_q4_1 *x = vx;
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d), m = h2f(x[b].m);
    for (int j = 0; j < ML_QK / 2; j++) {
      y[j] = (float)(x[b].qs[j] & 0xF) * d + m;
      y[j + ML_QK / 2] = (float)(x[b].qs[j] >> 4) * d + m;
    }
  }
}

/* q5: the fifth bit of element j is bit j of the little-endian word qh. */
static void put_q5(const int *q, uint8_t *qs, uint8_t *qh) {
  uint32_t h = 0;
  for (int j = 0; j < ML_QK / 2; j++) {
    int lo = q[j], hi = q[j + ML_QK / 2];
    qs[j] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
    h |= (uint32_t)((lo >> 4) & 1) << j;
    h |= (uint32_t)((hi >> 4) & 1) << (j + ML_QK / 2);
  }
  for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(h >> (8 * k));
}

static void get_q5(const uint8_t *qs, const uint8_t *qh, int *q) {
  uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
  for (int j = 0; j < ML_QK / 2; j++) {
    q[j] = (qs[j] & 0xF) | (int)(((h >> j) & 1) << 4);
    q[j + ML_QK / 2] = (qs[j] >> 4) | (int)(((h >> (j + ML_QK / 2)) & 1) << 4);
  }
}

void ml_quantize_q5_0(const float *x, void *vy, int64_t n) {
  ml_block_q5_0 *y = vy;
  int q[ML_QK];
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float d = signed_absmax(x, ML_QK) / -16;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f2h(d);
    for (int j = 0; j < ML_QK; j++) q[j] = trunc_clamp(x[j] * id + 16.5f, 31);
    put_q5(q, y[b].qs, y[b].qh);
  }
}

void ml_dequantize_q5_0(const void *vx, float *y, int64_t n) {
  const ml_block_q5_0 *x = vx;
  int q[ML_QK];
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d);
    get_q5(x[b].qs, x[b].qh, q);
    for (int j = 0; j < ML_QK; j++) y[j] = (float)(q[j] - 16) * d;
  }
}

void ml_quantize_q5_1(const float *x, void *vy, int64_t n) {
  ml_block_q5_1 *y = vy;
  int q[ML_QK];
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float min, max;
    min_max(x, ML_QK, &min, &max);
    float d = (max - min) / 31;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f2h(d);
    y[b].m = f2h(min);
    for (int j = 0; j < ML_QK; j++) q[j] = trunc_clamp((x[j] - min) * id + 0.5f, 31);
    put_q5(q, y[b].qs, y[b].qh);
  }
}

void ml_dequantize_q5_1(const void *vx, float *y, int64_t n) {
  const ml_block_q5_1 *x = vx;
  int q[ML_QK];
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d), m = h2f(x[b].m);
    get_q5(x[b].qs, x[b].qh, q);
    for (int j = 0; j < ML_QK; j++) y[j] = (float)q[j] * d + m;
  }
}

/* ---- q8_0, q8_1: blocks of 32 int8 with d = amax / 127 (weight quantizers) ---- */

static float absmax(const float *x, int n) {
  float amax = 0.0f;
  for (int i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    amax = amax > a ? amax : a;
  }
  return amax;
}

void ml_quantize_q8_0(const float *x, void *vy, int64_t n) {
  ml_block_q8_0 *y = vy;
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float d = absmax(x, ML_QK) / 127;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f2h(d);
    for (int j = 0; j < ML_QK; j++) y[b].qs[j] = (int8_t)clampi(away(x[j] * id), -128, 127);
  }
}

void ml_dequantize_q8_0(const void *vx, float *y, int64_t n) {
  const ml_block_q8_0 *x = vx;
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d);
    for (int j = 0; j < ML_QK; j++) y[j] = (float)x[b].qs[j] * d;
  }
}

void ml_quantize_q8_1(const float *x, void *vy, int64_t n) {
  ml_block_q8_1 *y = vy;
  for (int64_t b = 0; b < n / ML_QK; b++, x += ML_QK) {
    float d = absmax(x, ML_QK) / 127;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    y[b].d = f2h(d);
    for (int j = 0; j < ML_QK; j++) {
      y[b].qs[j] = (int8_t)clampi(away(x[j] * id), -128, 127);
      sum += y[b].qs[j];
    }
    y[b].s = f2h((float)sum * d);
  }
}

void ml_dequantize_q8_1(const void *vx, float *y, int64_t n) {
  const ml_block_q8_1 *x = vx;
  for (int64_t b = 0; b < n / ML_QK; b++, y += ML_QK) {
    float d = h2f(x[b].d);
    for (int j = 0; j < ML_QK; j++) y[j] = (float)x[b].qs[j] * d;
  }
}

/* ---- q2_K: 16 groups of 16, 2-bit values, 4-bit scale and min per group ---- */

void ml_quantize_q2_K(const float *x, void *vy, int64_t n) {
  ml_block_q2_K *y = vy;
  uint8_t L[ML_QK_K], Laux[16];
  float w[16], scales[16], mins[16];
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; j++) {
      for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
      scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0.0f) {
      float iscale = 15.0f / max_scale;
      for (int j = 0; j < 16; j++) y[b].scales[j] = (uint8_t)nearest(iscale * scales[j]);
      y[b].d = f2h(max_scale / 15.0f);
    } else {
      memset(y[b].scales, 0, sizeof y[b].scales);
      y[b].d = f2h(0.0f);
    }
    if (max_min > 0.0f) {
      float iscale = 15.0f / max_min;
      for (int j = 0; j < 16; j++) y[b].scales[j] |= (uint8_t)((unsigned)nearest(iscale * mins[j]) << 4);
      y[b].dmin = f2h(max_min / 15.0f);
    } else {
      y[b].dmin = f2h(0.0f);
    }
    /* requantize against the scales as stored */
    for (int j = 0; j < 16; j++) {
      float d = h2f(y[b].d) * (float)(y[b].scales[j] & 0xF);
      if (d == 0.0f) continue;
      float dm = h2f(y[b].dmin) * (float)(y[b].scales[j] >> 4);
      for (int l = 0; l < 16; l++)
        L[16 * j + l] = (uint8_t)clampi(nearest((x[16 * j + l] + dm) / d), 0, 3);
    }
    pack_2bit(L, y[b].qs);
  }
}

void ml_dequantize_q2_K(const void *vx, float *y, int64_t n) {
  const ml_block_q2_K *x = vx;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
    for (int h = 0; h < 2; h++) {
      const uint8_t *q = x[b].qs + 32 * h;
      for (int k = 0; k < 4; k++) /* two groups of 16 per 2-bit plane */
        for (int g = 0; g < 2; g++) {
          uint8_t sc = x[b].scales[8 * h + 2 * k + g];
          float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
          for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[16 * g + l] >> (2 * k)) & 3) - ml;
        }
    }
  }
}

/* ---- q3_K: 16 groups of 16, 3-bit values (2 low bits + hmask), 6-bit signed scales ---- */

void ml_quantize_q3_K(const float *x, void *vy, int64_t n) {
  ml_block_q3_K *y = vy;
  int8_t L[ML_QK_K], sc[16];
  float scales[16];
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    float amax = 0.0f, max_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
      scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
      if (fabsf(scales[j]) > amax) {
        amax = fabsf(scales[j]);
        max_scale = scales[j];
      }
    }
    memset(y[b].scales, 0, sizeof y[b].scales);
    if (max_scale != 0.0f) {
      float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; j++) {
        int l = clampi((int8_t)nearest(iscale * scales[j]), -32, 31) + 32;
        if (j < 8) y[b].scales[j] = (uint8_t)(l & 0xF);
        else y[b].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
        y[b].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
      }
      y[b].d = f2h(1.0f / iscale);
    } else {
      y[b].d = f2h(0.0f);
    }
    ml_q3k_scales(y[b].scales, sc);
    for (int j = 0; j < 16; j++) {
      float d = h2f(y[b].d) * (float)sc[j];
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(clampi(nearest(x[16 * j + l] / d), -4, 3) + 4);
    }
    /* the high bit of element e goes to hmask[e % 32], bit e / 32 */
    memset(y[b].hmask, 0, sizeof y[b].hmask);
    uint8_t low[ML_QK_K];
    for (int e = 0; e < ML_QK_K; e++) {
      low[e] = (uint8_t)(L[e] & 3);
      if (L[e] > 3) y[b].hmask[e % 32] |= (uint8_t)(1u << (e / 32));
    }
    pack_2bit(low, y[b].qs);
  }
}

void ml_dequantize_q3_K(const void *vx, float *y, int64_t n) {
  const ml_block_q3_K *x = vx;
  int8_t sc[16];
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    float d = h2f(x[b].d);
    ml_q3k_scales(x[b].scales, sc);
    for (int h = 0; h < 2; h++) {
      const uint8_t *q = x[b].qs + 32 * h;
      for (int k = 0; k < 4; k++) {
        uint8_t bit = (uint8_t)(1u << (4 * h + k));
        for (int g = 0; g < 2; g++) {
          float dl = d * (float)sc[8 * h + 2 * k + g];
          for (int l = 16 * g; l < 16 * g + 16; l++) {
            int v = ((q[l] >> (2 * k)) & 3) - ((x[b].hmask[l] & bit) ? 0 : 4);
            *y++ = dl * (float)v;
          }
        }
      }
    }
  }
}

/* ---- q4_K, q5_K: 8 groups of 32, 4/5-bit values, 6-bit scale and min per group ---- */

/* The shared scale search of q4_K and q5_K: per group of 32 an affine fit weighted by
 * rms(group) + |x|, then the 8 scales and mins quantized to 6 bits against their maxima.
 * Fills the block's d, dmin, scales; L receives the final levels in [0, nmax]. */
static void quantize_k_affine(const float *x, int nmax, float rmin, int nstep, ml_fp16 *d,
                              ml_fp16 *dmin, uint8_t scales12[12], uint8_t L[ML_QK_K]) {
  uint8_t Laux[32], ls[8], lm[8];
  float w[32], scales[8], mins[8];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; j++) {
    const float *g = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; l++) sum_x2 += g[l] * g[l];
    float av_x = sqrtf(sum_x2 / 32);
    for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(g[l]);
    scales[j] = fit_affine(32, nmax, g, w, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; j++) {
    ls[j] = (uint8_t)nearest(inv_scale * scales[j]); /* wraps like ggml's uint8_t store */
    lm[j] = (uint8_t)nearest(inv_min * mins[j]);
    if (ls[j] > 63) ls[j] = 63;
    if (lm[j] > 63) lm[j] = 63;
  }
  pack_q4k_scales(ls, lm, scales12);
  *d = f2h(max_scale / 63.0f);
  *dmin = f2h(max_min / 63.0f);
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    ml_q4k_scale_min(scales12, j, &sc, &m);
    float dl = h2f(*d) * (float)sc;
    if (dl == 0.0f) continue;
    float dm = h2f(*dmin) * (float)m;
    for (int l = 0; l < 32; l++)
      L[32 * j + l] = (uint8_t)clampi(nearest((x[32 * j + l] + dm) / dl), 0, nmax);
  }
}

void ml_quantize_q4_K(const float *x, void *vy, int64_t n) {
  ml_block_q4_K *y = vy;
  uint8_t L[ML_QK_K];
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    quantize_k_affine(x, 15, -1.0f, 20, &y[b].d, &y[b].dmin, y[b].scales, L);
    /* byte 32 c + l: element 64 c + l in the low nibble, 64 c + 32 + l in the high */
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++)
        y[b].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

void ml_dequantize_q4_K(const void *vx, float *y, int64_t n) {
  const ml_block_q4_K *x = vx;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
    for (int c = 0; c < 4; c++) {
      const uint8_t *q = x[b].qs + 32 * c;
      uint8_t sc, m;
      ml_q4k_scale_min(x[b].scales, 2 * c, &sc, &m);
      float d1 = d * (float)sc, m1 = dmin * (float)m;
      ml_q4k_scale_min(x[b].scales, 2 * c + 1, &sc, &m);
      float d2 = d * (float)sc, m2 = dmin * (float)m;
      for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
    }
  }
}

void ml_quantize_q5_K(const float *x, void *vy, int64_t n) {
  ml_block_q5_K *y = vy;
  uint8_t L[ML_QK_K];
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    quantize_k_affine(x, 31, -0.5f, 15, &y[b].d, &y[b].dmin, y[b].scales, L);
    /* low nibbles as q4_K; the fifth bit of element 64 c + l (+ 32) is qh[l] bit 2c (2c+1) */
    memset(y[b].qh, 0, sizeof y[b].qh);
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) {
        int lo = L[64 * c + l], hi = L[64 * c + 32 + l];
        y[b].qs[32 * c + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
        y[b].qh[l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
      }
  }
}

void ml_dequantize_q5_K(const void *vx, float *y, int64_t n) {
  const ml_block_q5_K *x = vx;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
    const uint8_t *qh = x[b].qh;
    for (int c = 0; c < 4; c++) {
      const uint8_t *q = x[b].qs + 32 * c;
      uint8_t sc, m;
      ml_q4k_scale_min(x[b].scales, 2 * c, &sc, &m);
      float d1 = d * (float)sc, m1 = dmin * (float)m;
      ml_q4k_scale_min(x[b].scales, 2 * c + 1, &sc, &m);
      float d2 = d * (float)sc, m2 = dmin * (float)m;
      for (int l = 0; l < 32; l++)
        *y++ = d1 * (float)((q[l] & 0xF) + (((qh[l] >> (2 * c)) & 1) << 4)) - m1;
      for (int l = 0; l < 32; l++)
        *y++ = d2 * (float)((q[l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
    }
  }
}

/* ---- q6_K: 16 groups of 16, 6-bit values (4 low in ql, 2 high in qh), int8 scales ---- */

void ml_quantize_q6_K(const float *x, void *vy, int64_t n) {
  ml_block_q6_K *y = vy;
  int8_t L[ML_QK_K];
  float scales[16];
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    float max_abs = 0.0f, max_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
      scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
      if (fabsf(scales[j]) > max_abs) {
        max_abs = fabsf(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs < GROUP_EPS) {
      memset(&y[b], 0, sizeof y[b]);
      continue;
    }
    float iscale = -128.0f / max_scale;
    y[b].d = f2h(1.0f / iscale);
    for (int j = 0; j < 16; j++) y[b].scales[j] = (int8_t)clampi(nearest(iscale * scales[j]), -128, 127);
    for (int j = 0; j < 16; j++) {
      float d = h2f(y[b].d) * (float)y[b].scales[j];
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(clampi(nearest(x[16 * j + l] / d), -32, 31) + 32);
    }
    /* per half h of 128: ql[64 h + l] = lo(e) | lo(e + 64) << 4, ql[64 h + 32 + l] likewise
     * for e + 32 and e + 96, qh[32 h + l] = the four high 2-bit pairs, e = 128 h + l */
    for (int h = 0; h < 2; h++) {
      uint8_t *ql = y[b].ql + 64 * h, *qh = y[b].qh + 32 * h;
      const int8_t *p = L + 128 * h;
      for (int l = 0; l < 32; l++) {
        ql[l] = (uint8_t)((p[l] & 0xF) | ((p[l + 64] & 0xF) << 4));
        ql[l + 32] = (uint8_t)((p[l + 32] & 0xF) | ((p[l + 96] & 0xF) << 4));
        qh[l] = (uint8_t)((p[l] >> 4) | ((p[l + 32] >> 4) << 2) | ((p[l + 64] >> 4) << 4) |
                          ((p[l + 96] >> 4) << 6));
      }
    }
  }
}

void ml_dequantize_q6_K(const void *vx, float *y, int64_t n) {
  const ml_block_q6_K *x = vx;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    float d = h2f(x[b].d);
    for (int h = 0; h < 2; h++, y += 128) {
      const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
      const int8_t *sc = x[b].scales + 8 * h;
      for (int l = 0; l < 32; l++) {
        int g = l / 16;
        int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * (float)sc[g] * (float)q1;
        y[l + 32] = d * (float)sc[g + 2] * (float)q2;
        y[l + 64] = d * (float)sc[g + 4] * (float)q3;
        y[l + 96] = d * (float)sc[g + 6] * (float)q4;
      }
    }
  }
}

/* ---- q8_K: the activation format of the K quants (also ggml's x86 path) ---- */

void ml_quantize_q8_K(const float *x, void *vy, int64_t n) {
  ml_block_q8_K *y = vy;
  for (int64_t b = 0; b < n / ML_QK_K; b++, x += ML_QK_K) {
    float max = signed_absmax(x, ML_QK_K);
    if (max == 0.0f) {
      memset(&y[b], 0, sizeof y[b]);
      continue;
    }
    float iscale = -127.0f / max;
    for (int j = 0; j < ML_QK_K; j++) y[b].qs[j] = (int8_t)clampi(nearest(iscale * x[j]), -128, 127);
    for (int g = 0; g < ML_QK_K / 16; g++) {
      int sum = 0;
      for (int l = 0; l < 16; l++) sum += y[b].qs[16 * g + l];
      y[b].bsums[g] = (int16_t)sum;
    }
    y[b].d = 1.0f / iscale;
  }
}

void ml_dequantize_q8_K(const void *vx, float *y, int64_t n) {
  const ml_block_q8_K *x = vx;
  for (int64_t b = 0; b < n / ML_QK_K; b++, y += ML_QK_K)
    for (int j = 0; j < ML_QK_K; j++) y[j] = (float)x[b].qs[j] * x[b].d;
}
