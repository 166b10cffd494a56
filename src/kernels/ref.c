/* ref.c: the reference kernel level (portable C, any x86-64 or other CPU) and the matmul
 * drivers shared by all levels.
 *
 * The dot products follow ggml's generic kernels: inside a block the integer products are
 * summed in int32, then each block adds one float term built from its scales; so results
 * agree with ggml's mul_mat to float rounding of the accumulation order (about 1e-6
 * relative). The activation quantizers follow ggml's x86 path bit for bit.
 */
#include "kernels.h"

#include <math.h>
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
  .matmul = { 0 },
};

void ml_kernels_merge(ml_kernels *dst, const ml_kernels *src) {
  if (src->name) dst->name = src->name;
  for (int t = 0; t < ML_TYPE_COUNT; t++) {
    if (src->quantize[t]) dst->quantize[t] = src->quantize[t];
    if (src->vec_dot[t]) {
      dst->vec_dot[t] = src->vec_dot[t];
      dst->matmul[t] = NULL;
      dst->by_dot[t] = src->name;
    }
    if (src->matmul[t]) {
      dst->matmul[t] = src->matmul[t];
      dst->by_dot[t] = src->name;
    }
    if (src->gemv[t]) {
      dst->gemv[t] = src->gemv[t];
      dst->by_gemv[t] = src->name;
    }
    if (src->gemm[t]) {
      dst->gemm[t] = src->gemm[t];
      dst->by_gemm[t] = src->name;
    }
  }
}

void ml_slice(int64_t count, int ith, int nth, int64_t *i0, int64_t *i1) {
  if (count <= 0 || nth <= 0 || ith < 0 || ith >= nth) {
    *i0 = *i1 = 0;
    return;
  }
  int64_t per = count / nth, extra = count % nth;
  *i0 = per * ith + (ith < extra ? ith : extra);
  *i1 = *i0 + per + (ith < extra ? 1 : 0);
}

/* ---- drivers ---- */

/* The vec_dot type of wt if wt has a dot product and K fits both blocks, else -1. */
static int act_type(ml_type wt, int64_t K) {
  const ml_type_traits *tw = ml_type_traits_get((int)wt);
  if (!tw || !ml_kernels_ref.vec_dot[wt] || K < 0) return -1;
  const ml_type_traits *ta = ml_type_traits_get((int)tw->vec_dot_type);
  if (!ta || K % tw->blck || K % ta->blck) return -1;
  return (int)tw->vec_dot_type;
}

/* Alignment the typed access to rows needs: the f16 fields of every block type, the
 * float scale of q8_K, f32 elements. */
static size_t type_align(int t) { return t == ML_TYPE_F32 || t == ML_TYPE_Q8_K ? 4 : 2; }

static int aligned(const void *p, size_t stride, size_t align) {
  return ((uintptr_t)p % align) == 0 && stride % align == 0;
}

size_t ml_matmul_act_row_bytes(ml_type wt, int64_t K) {
  int at = act_type(wt, K);
  if (at < 0) return 0;
  size_t row = ml_type_nbytes((ml_type)at, K);
  if (row > SIZE_MAX - 63) return 0;
  return (row + 63) & ~(size_t)63;
}

size_t ml_matmul_scratch_bytes(ml_type wt, int64_t K, int64_t M) {
  size_t row = ml_matmul_act_row_bytes(wt, K);
  if (!row || M < 0 || wt == ML_TYPE_F32) return 0;
  if ((uint64_t)M > SIZE_MAX / row) return 0;
  return row * (size_t)M;
}

int ml_matmul_quantize_acts(const ml_kernels *k, ml_type wt, const float *x, int64_t ldx,
                            int64_t M, int64_t K, void *a, size_t a_row_bytes, int ith, int nth) {
  int at = act_type(wt, K);
  if (at < 0 || !k->quantize[at] || M < 0 || ldx < K) return 0;
  if (a_row_bytes < ml_type_nbytes((ml_type)at, K) || !aligned(a, a_row_bytes, type_align(at))) return 0;
  int64_t m0, m1;
  ml_slice(M, ith, nth, &m0, &m1);
  for (int64_t m = m0; m < m1; m++) k->quantize[at](x + m * ldx, (char *)a + (size_t)m * a_row_bytes, K);
  return 1;
}

static int args_valid(const ml_matmul_args *p) {
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

int ml_matmul_run(const ml_kernels *k, const ml_matmul_args *p, int ith, int nth) {
  if (!args_valid(p) || nth <= 0 || ith < 0 || ith >= nth) return 0;
  if (k->matmul[p->wt] && k->matmul[p->wt](p, ith, nth)) return 1;
  ml_vec_dot_fn dot = k->vec_dot[p->wt];
  if (!dot) return 0;
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

int ml_kernels_matmul(const ml_kernels *k, ml_type wt, const void *w, size_t w_row_bytes,
                      int64_t N, int64_t K, const float *x, int64_t ldx, int64_t M, float *y,
                      int64_t ldy, void *scratch) {
  ml_matmul_args p = { wt, w, w_row_bytes, N, K, NULL, 0, M, y, ldy };
  if (act_type(wt, K) < 0 || M < 0 || ldx < K) return 0;
  if (wt == ML_TYPE_F32) { /* f32 activations are used in place */
    p.a = x;
    p.a_row_bytes = (size_t)ldx * sizeof(float);
  } else {
    p.a = scratch;
    p.a_row_bytes = ml_matmul_act_row_bytes(wt, K);
    if (M > 0 && !scratch) return 0;
    if (!ml_matmul_quantize_acts(k, wt, x, ldx, M, K, scratch, p.a_row_bytes, 0, 1)) return 0;
  }
  return ml_matmul_run(k, &p, 0, 1);
}

int ml_ref_matmul(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K,
                  const float *x, int64_t ldx, int64_t M, float *y, int64_t ldy, void *scratch) {
  return ml_kernels_matmul(&ml_kernels_ref, wt, w, w_row_bytes, N, K, x, ldx, M, y, ldy, scratch);
}
