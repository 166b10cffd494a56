/* ref.c: the reference kernel level (portable C, any x86-64 or other CPU): the oracle every
 * other level is tested against, and the fallback for what a level does not provide.
 *
 * The dot products follow ggml's generic kernels: inside a block the integer products are
 * summed in int32, then each block adds one float term built from its scales; so results
 * agree with ggml's mul_mat to float rounding of the accumulation order (about 1e-6
 * relative). The activation quantizers follow ggml's x86 path bit for bit.
 */
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "../quant.h"

static float h2f(ml_fp16 h) { return ml_fp16_to_f32(h); }

/* ---- activation quantizers (x86 rounding) ---- */

/* Round half to even, saturate to int8 (as vroundps + vcvtps2dq + the saturating packs). */
static int8_t round_i8(float v) {
  if (!(v > -128.0f)) return v < 0 ? -128 : 0; /* NaN: 0 */
  if (v >= 127.0f) return 127;
  float t = v + 12582912.0f; /* 1.5 * 2^23: the add rounds to an integer, ties to even */
  return (int8_t)(int)(t - 12582912.0f);
}

/* One q8_0/q8_1 block of 32: d = amax/127 (stored as half), q = rne(x * (127/amax)).
 * Returns the sum of q. */
static int quantize_block_q8(const float *x, ml_fp16 *dh, int8_t *qs, float *d_out) {
  float amax = 0.0f;
  for (int j = 0; j < ML_QK; j++) {
    float a = fabsf(x[j]);
    amax = a > amax ? a : amax;
  }
  float d = amax / 127.0f;
  float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  int sum = 0;
  *dh = ml_f32_to_fp16(d);
  for (int j = 0; j < ML_QK; j++) {
    qs[j] = round_i8(x[j] * id);
    sum += qs[j];
  }
  *d_out = d;
  return sum;
}

void ml_ref_quantize_act_q8_0(const float *x, void *dst, int64_t n) {
  ml_block_q8_0 *y = dst;
  float d;
  for (int64_t b = 0; b < n / ML_QK; b++) quantize_block_q8(x + b * ML_QK, &y[b].d, y[b].qs, &d);
}

void ml_ref_quantize_act_q8_1(const float *x, void *dst, int64_t n) {
  ml_block_q8_1 *y = dst;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    float d;
    int sum = quantize_block_q8(x + b * ML_QK, &y[b].d, y[b].qs, &d);
    y[b].s = ml_f32_to_fp16(d * (float)sum);
  }
}

static void act_f32(const float *x, void *dst, int64_t n) {
  if (n > 0) memcpy(dst, x, (size_t)n * sizeof(float));
}

static void act_f16(const float *x, void *dst, int64_t n) {
  ml_fp16 *y = dst;
  for (int64_t i = 0; i < n; i++) y[i] = ml_f32_to_fp16(x[i]);
}

static void act_bf16(const float *x, void *dst, int64_t n) {
  ml_bf16 *y = dst;
  for (int64_t i = 0; i < n; i++) y[i] = ml_f32_to_bf16(x[i]);
}

/* ---- float rows ---- */

static float dot_f32(int64_t n, const void *w, const void *a) {
  const float *x = w, *y = a;
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
  return (float)s;
}

static float dot_f16(int64_t n, const void *w, const void *a) {
  const ml_fp16 *x = w, *y = a;
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += (double)(h2f(x[i]) * h2f(y[i])); /* exact product */
  return (float)s;
}

static float dot_bf16(int64_t n, const void *w, const void *a) {
  const ml_bf16 *x = w, *y = a;
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += (double)(ml_bf16_to_f32(x[i]) * ml_bf16_to_f32(y[i]));
  return (float)s;
}

/* ---- 32-element formats against q8_0 / q8_1 ---- */

static float dot_q4_0(int64_t n, const void *w, const void *a) {
  const ml_block_q4_0 *x = w;
  const ml_block_q8_0 *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    int sum = 0;
    for (int j = 0; j < ML_QK / 2; j++)
      sum += ((x[b].qs[j] & 0xF) - 8) * y[b].qs[j] + ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
    s += h2f(x[b].d) * h2f(y[b].d) * (float)sum;
  }
  return s;
}

/* *_1 formats: w = d q + m, so the block is d dy sum(q qy) + m (dy sum(qy)), and the
 * last factor is the q8_1 block's stored s. */
static float dot_q4_1(int64_t n, const void *w, const void *a) {
  const ml_block_q4_1 *x = w;
  const ml_block_q8_1 *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    int sum = 0;
    for (int j = 0; j < ML_QK / 2; j++)
      sum += (x[b].qs[j] & 0xF) * y[b].qs[j] + (x[b].qs[j] >> 4) * y[b].qs[j + 16];
    s += h2f(x[b].d) * h2f(y[b].d) * (float)sum + h2f(x[b].m) * h2f(y[b].s);
  }
  return s;
}

static uint32_t load_qh(const uint8_t *qh) {
  return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

/* the 5-bit value of element j (j < 16) and j + 16 of a q5 block */
static int q5_lo(const uint8_t *qs, uint32_t qh, int j) { return (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4); }
static int q5_hi(const uint8_t *qs, uint32_t qh, int j) { return (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4); }

static float dot_q5_0(int64_t n, const void *w, const void *a) {
  const ml_block_q5_0 *x = w;
  const ml_block_q8_0 *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    uint32_t qh = load_qh(x[b].qh);
    int sum = 0;
    for (int j = 0; j < ML_QK / 2; j++)
      sum += (q5_lo(x[b].qs, qh, j) - 16) * y[b].qs[j] + (q5_hi(x[b].qs, qh, j) - 16) * y[b].qs[j + 16];
    s += h2f(x[b].d) * h2f(y[b].d) * (float)sum;
  }
  return s;
}

static float dot_q5_1(int64_t n, const void *w, const void *a) {
  const ml_block_q5_1 *x = w;
  const ml_block_q8_1 *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    uint32_t qh = load_qh(x[b].qh);
    int sum = 0;
    for (int j = 0; j < ML_QK / 2; j++)
      sum += q5_lo(x[b].qs, qh, j) * y[b].qs[j] + q5_hi(x[b].qs, qh, j) * y[b].qs[j + 16];
    s += h2f(x[b].d) * h2f(y[b].d) * (float)sum + h2f(x[b].m) * h2f(y[b].s);
  }
  return s;
}

static float dot_q8_0(int64_t n, const void *w, const void *a) {
  const ml_block_q8_0 *x = w;
  const ml_block_q8_0 *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK; b++) {
    int sum = 0;
    for (int j = 0; j < ML_QK; j++) sum += x[b].qs[j] * y[b].qs[j];
    s += h2f(x[b].d) * h2f(y[b].d) * (float)sum;
  }
  return s;
}

/* ---- K formats against q8_K (blocks of 256, activation scale a float) ----
 * Within a super-block, element e = 128 h + 32 k + l (h < 2, k < 4, l < 32) sits in the
 * 2-bit plane k of byte 32 h + l for q2_K/q3_K, and group e / 16 has its own scale. */

static float dot_q2_K(int64_t n, const void *w, const void *a) {
  const ml_block_q2_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    int mins = 0, sum = 0;
    for (int g = 0; g < 16; g++) mins += y[b].bsums[g] * (x[b].scales[g] >> 4);
    for (int h = 0; h < 2; h++)
      for (int k = 0; k < 4; k++)
        for (int g = 0; g < 2; g++) {
          int e0 = 128 * h + 32 * k + 16 * g, gsum = 0;
          for (int l = 0; l < 16; l++)
            gsum += ((x[b].qs[32 * h + 16 * g + l] >> (2 * k)) & 3) * y[b].qs[e0 + l];
          sum += (x[b].scales[e0 / 16] & 0xF) * gsum;
        }
    float d = y[b].d * h2f(x[b].d), dmin = y[b].d * h2f(x[b].dmin);
    s += d * (float)sum - dmin * (float)mins;
  }
  return s;
}

static float dot_q3_K(int64_t n, const void *w, const void *a) {
  const ml_block_q3_K *x = w;
  const ml_block_q8_K *y = a;
  int8_t sc[16];
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    ml_q3k_scales(x[b].scales, sc);
    int sum = 0;
    for (int h = 0; h < 2; h++)
      for (int k = 0; k < 4; k++)
        for (int g = 0; g < 2; g++) {
          int e0 = 128 * h + 32 * k + 16 * g, gsum = 0;
          for (int l = 16 * g; l < 16 * g + 16; l++) {
            int q = ((x[b].qs[32 * h + l] >> (2 * k)) & 3) - (((x[b].hmask[l] >> (4 * h + k)) & 1) ? 0 : 4);
            gsum += q * y[b].qs[e0 + l - 16 * g];
          }
          sum += sc[e0 / 16] * gsum;
        }
    s += h2f(x[b].d) * y[b].d * (float)sum;
  }
  return s;
}

/* q4_K / q5_K: 8 groups of 32; group 2c is the low nibbles of bytes 32 c.., 2c+1 the high
 * ones. The min term uses the activation's bsums (sums of 16). */
static float dot_q45_K(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, ml_fp16 dw,
                       ml_fp16 dminw, const ml_block_q8_K *y) {
  int mins = 0, sum = 0;
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    ml_q4k_scale_min(scales, j, &sc, &m);
    int c = j / 2, hi = j % 2, gsum = 0;
    mins += (y->bsums[2 * j] + y->bsums[2 * j + 1]) * m;
    for (int l = 0; l < 32; l++) {
      int q = hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 0xF;
      if (qh) q |= ((qh[l] >> j) & 1) << 4;
      gsum += q * y->qs[32 * j + l];
    }
    sum += sc * gsum;
  }
  float d = y->d * h2f(dw), dmin = y->d * h2f(dminw);
  return d * (float)sum - dmin * (float)mins;
}

static float dot_q4_K(int64_t n, const void *w, const void *a) {
  const ml_block_q4_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++)
    s += dot_q45_K(x[b].qs, NULL, x[b].scales, x[b].d, x[b].dmin, &y[b]);
  return s;
}

static float dot_q5_K(int64_t n, const void *w, const void *a) {
  const ml_block_q5_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++)
    s += dot_q45_K(x[b].qs, x[b].qh, x[b].scales, x[b].d, x[b].dmin, &y[b]);
  return s;
}

static float dot_q6_K(int64_t n, const void *w, const void *a) {
  const ml_block_q6_K *x = w;
  const ml_block_q8_K *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / ML_QK_K; b++) {
    int sum = 0;
    for (int h = 0; h < 2; h++) {
      const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
      const int8_t *q8 = y[b].qs + 128 * h;
      const int8_t *sc = x[b].scales + 8 * h;
      /* element 128 h + 32 k + l: low nibble of ql[l + 32 (k & 1)] (high nibble if k >= 2),
       * high 2 bits at qh[l] bits 2k */
      for (int k = 0; k < 4; k++)
        for (int g = 0; g < 2; g++) {
          int gsum = 0;
          for (int l = 16 * g; l < 16 * g + 16; l++) {
            uint8_t lo = ql[l + 32 * (k & 1)];
            int q = ((k < 2 ? lo & 0xF : lo >> 4) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
            gsum += q * q8[32 * k + l];
          }
          sum += sc[2 * k + g] * gsum;
        }
    }
    s += h2f(x[b].d) * y[b].d * (float)sum;
  }
  return s;
}

/* ---- row operations ---- */

static float dot_ref(const float *a, const float *b, int64_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

static void axpy_ref(float a, const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void scale_ref(float a, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] *= a;
}

static void add_ref(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

static void f16_to_f32_ref(const ml_fp16 *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = ml_fp16_to_f32(x[i]);
}

static void f32_to_f16_ref(const float *x, ml_fp16 *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = ml_f32_to_fp16(x[i]);
}

static void rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
  for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

/* ggml_norm: the mean and the variance summed in double, applied in float */
static void layernorm_ref(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (double)x[i];
  float mean = (float)(sum / (double)n);
  double sum2 = 0;
  for (int64_t i = 0; i < n; i++) {
    float d = x[i] - mean;
    y[i] = d;
    sum2 += (double)(d * d);
  }
  float s = 1.0f / sqrtf((float)(sum2 / (double)n) + eps);
  for (int64_t i = 0; i < n; i++) y[i] *= s;
  if (w)
    for (int64_t i = 0; i < n; i++) y[i] *= w[i];
  if (b)
    for (int64_t i = 0; i < n; i++) y[i] += b[i];
}

static void add_clamp_ref(float *y, const float *x, const float *b, int64_t n, float lim) {
  for (int64_t i = 0; i < n; i++) {
    float v = b ? x[i] + b[i] : x[i];
    y[i] = lim > 0 && v < -lim ? -lim : lim > 0 && v > lim ? lim : v;
  }
}

static void silu_mul_ref(float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static double exp_shift_ref(float *y, const float *x, int64_t n, float shift, float scale, float cut) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += y[i] = x[i] >= cut ? expf((x[i] - shift) * scale) : 0.0f;
  return s;
}

static ml_fp16 gelu_table[(1 << 16) + 2];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_init(void) {
  for (uint32_t i = 0; i < (1u << 16); i++) {
    float x = ml_fp16_to_f32((ml_fp16)i);
    float y = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
    gelu_table[i] = ml_f32_to_fp16(y);
  }
}

const ml_fp16 *ml_gelu_f16_table(void) {
  pthread_once(&gelu_once, gelu_init);
  return gelu_table;
}

static void gelu_mul_ref(float *g, const float *u, int64_t n, const ml_fp16 *table) {
  for (int64_t i = 0; i < n; i++) {
    float x = g[i], y = x >= 10.0f ? x : ml_fp16_to_f32(table[ml_f32_to_fp16(x)]);
    if (u) y *= u[i];
    g[i] = x <= -10.0f ? 0.0f : y;
  }
}

const ml_kernels ml_kernels_ref = {
  .name = "ref",
  .vec_dot = {
    [ML_TYPE_F32] = dot_f32,   [ML_TYPE_F16] = dot_f16,   [ML_TYPE_BF16] = dot_bf16,
    [ML_TYPE_Q4_0] = dot_q4_0, [ML_TYPE_Q4_1] = dot_q4_1, [ML_TYPE_Q5_0] = dot_q5_0,
    [ML_TYPE_Q5_1] = dot_q5_1, [ML_TYPE_Q8_0] = dot_q8_0, [ML_TYPE_Q2_K] = dot_q2_K,
    [ML_TYPE_Q3_K] = dot_q3_K, [ML_TYPE_Q4_K] = dot_q4_K, [ML_TYPE_Q5_K] = dot_q5_K,
    [ML_TYPE_Q6_K] = dot_q6_K,
  },
  .quantize = {
    [ML_TYPE_F32] = act_f32,
    [ML_TYPE_F16] = act_f16,
    [ML_TYPE_BF16] = act_bf16,
    [ML_TYPE_Q8_0] = ml_ref_quantize_act_q8_0,
    [ML_TYPE_Q8_1] = ml_ref_quantize_act_q8_1,
    [ML_TYPE_Q8_K] = ml_quantize_q8_K, /* ggml's x86 path uses the reference one */
  },
  .row = {dot_ref, axpy_ref, scale_ref, add_ref, f16_to_f32_ref, f32_to_f16_ref, rmsnorm_ref, silu_mul_ref,
          exp_shift_ref, gelu_mul_ref, layernorm_ref, add_clamp_ref},
};
