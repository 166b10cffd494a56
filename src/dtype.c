/* dtype.c: the per-type traits table, type names, and the scalar and row conversions of
 * the element types (f32, f16, bf16, f64, i8..i64). Block formats live in quant.c.
 *
 * The f16/bf16 conversions are bit-exact with the x86 hardware ones (F16C vcvtps2ph with
 * round-to-nearest-even, vcvtph2ps) and need no instruction set extension: this file is
 * compiled for baseline x86-64 and for any other target.
 */
#include "dtype.h"

#include <math.h>
#include <string.h>

#include "quant.h"

/* ---- f16 / bf16 scalar conversions ---- */

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float ml_fp16_to_f32(ml_fp16 h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) /* inf, or NaN made quiet with its payload kept (as vcvtph2ps does) */
    return bits_f32(sign | 0x7f800000u | (man ? 0x400000u : 0) | (man << 13));
  if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
  if (man == 0) return bits_f32(sign);
  /* subnormal: man * 2^-24; shift the leading one up to bit 10, one exponent step each */
  uint32_t e = 113;
  while (!(man & 0x400u)) {
    man <<= 1;
    e--;
  }
  return bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

ml_fp16 ml_f32_to_fp16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) /* NaN: quiet, top 10 payload bits kept */
    return (ml_fp16)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) /* >= 65520 (halfway past 65504, ties to even = up): inf */
    return (ml_fp16)(sign | 0x7c00u);
  if (a >= 0x38800000u) { /* normal half: rebias the exponent, round the low 13 bits */
    uint32_t r = a - (112u << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return (ml_fp16)(sign | (r >> 13));
  }
  if (a <= 0x33000000u) /* <= 2^-25: half of the smallest subnormal, ties to even = 0 */
    return (ml_fp16)sign;
  /* subnormal half: value / 2^-24, rounded to nearest even (may carry into the normals) */
  uint32_t e = a >> 23;
  uint32_t m = (a & 0x7fffffu) | 0x800000u;
  uint32_t sh = 126 - e; /* 14..24 */
  uint32_t q = m >> sh;
  uint32_t rem = m & ((1u << sh) - 1);
  uint32_t half = 1u << (sh - 1);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (ml_fp16)(sign | q);
}

float ml_bf16_to_f32(ml_bf16 h) { return bits_f32((uint32_t)h << 16); }

ml_bf16 ml_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (ml_bf16)((x >> 16) | 0x40u); /* quiet NaN */
  return (ml_bf16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16); /* nearest even; overflow to inf */
}

/* ---- rows of element types ---- */

static void f32_to_float(const void *src, float *dst, int64_t n) {
  if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f32_from_float(const float *src, void *dst, int64_t n) {
  if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f16_to_float(const void *src, float *dst, int64_t n) {
  const ml_fp16 *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = ml_fp16_to_f32(s[i]);
}

static void f16_from_float(const float *src, void *dst, int64_t n) {
  ml_fp16 *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = ml_f32_to_fp16(src[i]);
}

static void bf16_to_float(const void *src, float *dst, int64_t n) {
  const ml_bf16 *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = ml_bf16_to_f32(s[i]);
}

static void bf16_from_float(const float *src, void *dst, int64_t n) {
  ml_bf16 *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = ml_f32_to_bf16(src[i]);
}

static void f64_to_float(const void *src, float *dst, int64_t n) {
  const double *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}

static void f64_from_float(const float *src, void *dst, int64_t n) {
  double *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = src[i];
}

/* Float to integer: round half to even, saturate to [lo, hi], NaN to 0. The range test
 * comes first so the conversion is always defined. */
static int64_t to_int_sat(float v, double lo, double hi) {
  double r = nearbyint((double)v);
  if (!(r == r)) return 0;
  if (r <= lo) return (int64_t)lo;
  if (r >= hi) return (int64_t)hi;
  return (int64_t)r;
}

static void i8_to_float(const void *src, float *dst, int64_t n) {
  const int8_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = s[i];
}

static void i8_from_float(const float *src, void *dst, int64_t n) {
  int8_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = (int8_t)to_int_sat(src[i], INT8_MIN, INT8_MAX);
}

static void i16_to_float(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src; /* GGUF data may be unaligned for wide integers */
  for (int64_t i = 0; i < n; i++) {
    int16_t v;
    memcpy(&v, s + i * 2, 2);
    dst[i] = v;
  }
}

static void i16_from_float(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++) {
    int16_t v = (int16_t)to_int_sat(src[i], INT16_MIN, INT16_MAX);
    memcpy(d + i * 2, &v, 2);
  }
}

static void i32_to_float(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++) {
    int32_t v;
    memcpy(&v, s + i * 4, 4);
    dst[i] = (float)v;
  }
}

static void i32_from_float(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++) {
    int32_t v = (int32_t)to_int_sat(src[i], INT32_MIN, INT32_MAX);
    memcpy(d + i * 4, &v, 4);
  }
}

static void i64_to_float(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++) {
    int64_t v;
    memcpy(&v, s + i * 8, 8);
    dst[i] = (float)v;
  }
}

static void i64_from_float(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  /* the bounds are the largest doubles inside int64's range, so the cast is defined */
  for (int64_t i = 0; i < n; i++) {
    int64_t v = to_int_sat(src[i], -9223372036854775808.0, 9223372036854774784.0);
    memcpy(d + i * 8, &v, 8);
  }
}

/* ---- the table ---- */

#define BLOCK(nm, bl, st, to, from, vdt) \
  { nm, bl, sizeof(st), 1, 0, to, from, vdt }

/* vec_dot_type follows ggml's CPU backend, so activations are rounded the same way as
 * there: f32/f16/bf16 keep their own type, *_0 weights take q8_0, *_1 take q8_1, K quants
 * take q8_K. The integer types and f64 have no dot product; they name themselves. */
static const ml_type_traits traits[ML_TYPE_COUNT] = {
  [ML_TYPE_F32] = { "f32", 1, 4, 0, 1, f32_to_float, f32_from_float, ML_TYPE_F32 },
  [ML_TYPE_F16] = { "f16", 1, 2, 0, 1, f16_to_float, f16_from_float, ML_TYPE_F16 },
  [ML_TYPE_BF16] = { "bf16", 1, 2, 0, 1, bf16_to_float, bf16_from_float, ML_TYPE_BF16 },
  [ML_TYPE_F64] = { "f64", 1, 8, 0, 1, f64_to_float, f64_from_float, ML_TYPE_F64 },
  [ML_TYPE_I8] = { "i8", 1, 1, 0, 0, i8_to_float, i8_from_float, ML_TYPE_I8 },
  [ML_TYPE_I16] = { "i16", 1, 2, 0, 0, i16_to_float, i16_from_float, ML_TYPE_I16 },
  [ML_TYPE_I32] = { "i32", 1, 4, 0, 0, i32_to_float, i32_from_float, ML_TYPE_I32 },
  [ML_TYPE_I64] = { "i64", 1, 8, 0, 0, i64_to_float, i64_from_float, ML_TYPE_I64 },
  [ML_TYPE_Q4_0] = BLOCK("q4_0", ML_QK, ml_block_q4_0, ml_dequantize_q4_0, ml_quantize_q4_0, ML_TYPE_Q8_0),
  [ML_TYPE_Q4_1] = BLOCK("q4_1", ML_QK, ml_block_q4_1, ml_dequantize_q4_1, ml_quantize_q4_1, ML_TYPE_Q8_1),
  [ML_TYPE_Q5_0] = BLOCK("q5_0", ML_QK, ml_block_q5_0, ml_dequantize_q5_0, ml_quantize_q5_0, ML_TYPE_Q8_0),
  [ML_TYPE_Q5_1] = BLOCK("q5_1", ML_QK, ml_block_q5_1, ml_dequantize_q5_1, ml_quantize_q5_1, ML_TYPE_Q8_1),
  [ML_TYPE_Q8_0] = BLOCK("q8_0", ML_QK, ml_block_q8_0, ml_dequantize_q8_0, ml_quantize_q8_0, ML_TYPE_Q8_0),
  [ML_TYPE_Q8_1] = BLOCK("q8_1", ML_QK, ml_block_q8_1, ml_dequantize_q8_1, ml_quantize_q8_1, ML_TYPE_Q8_1),
  [ML_TYPE_Q2_K] = BLOCK("q2_k", ML_QK_K, ml_block_q2_K, ml_dequantize_q2_K, ml_quantize_q2_K, ML_TYPE_Q8_K),
  [ML_TYPE_Q3_K] = BLOCK("q3_k", ML_QK_K, ml_block_q3_K, ml_dequantize_q3_K, ml_quantize_q3_K, ML_TYPE_Q8_K),
  [ML_TYPE_Q4_K] = BLOCK("q4_k", ML_QK_K, ml_block_q4_K, ml_dequantize_q4_K, ml_quantize_q4_K, ML_TYPE_Q8_K),
  [ML_TYPE_Q5_K] = BLOCK("q5_k", ML_QK_K, ml_block_q5_K, ml_dequantize_q5_K, ml_quantize_q5_K, ML_TYPE_Q8_K),
  [ML_TYPE_Q6_K] = BLOCK("q6_k", ML_QK_K, ml_block_q6_K, ml_dequantize_q6_K, ml_quantize_q6_K, ML_TYPE_Q8_K),
  [ML_TYPE_Q8_K] = BLOCK("q8_k", ML_QK_K, ml_block_q8_K, ml_dequantize_q8_K, ml_quantize_q8_K, ML_TYPE_Q8_K),
};

#undef BLOCK

const ml_type_traits *ml_type_traits_get(int type) {
  if (type < 0 || type >= ML_TYPE_COUNT || !traits[type].name) return NULL;
  return &traits[type];
}

static int name_eq(const char *a, const char *b) {
  for (;; a++, b++) {
    unsigned char ca = (unsigned char)*a, cb = (unsigned char)*b;
    if (ca >= 'A' && ca <= 'Z') ca = (unsigned char)(ca - 'A' + 'a');
    if (ca != cb) return 0;
    if (!ca) return 1;
  }
}

static const struct { const char *name; ml_type type; } aliases[] = {
  { "float32", ML_TYPE_F32 }, { "float", ML_TYPE_F32 },    { "fp32", ML_TYPE_F32 },
  { "float16", ML_TYPE_F16 }, { "half", ML_TYPE_F16 },     { "fp16", ML_TYPE_F16 },
  { "bfloat16", ML_TYPE_BF16 }, { "float64", ML_TYPE_F64 }, { "double", ML_TYPE_F64 },
  { "fp64", ML_TYPE_F64 },    { "int8", ML_TYPE_I8 },      { "int16", ML_TYPE_I16 },
  { "int32", ML_TYPE_I32 },   { "int", ML_TYPE_I32 },      { "int64", ML_TYPE_I64 },
};

int ml_type_from_name(const char *name) {
  if (!name) return -1;
  for (int t = 0; t < ML_TYPE_COUNT; t++)
    if (traits[t].name && name_eq(name, traits[t].name)) return t;
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (name_eq(name, aliases[i].name)) return (int)aliases[i].type;
  return -1;
}

/* 0 also when t is unknown, n is negative or not a multiple of the block, or the size
 * would not fit in size_t: callers validate shapes before asking. */
size_t ml_type_nbytes(ml_type t, int64_t n) {
  const ml_type_traits *tr = ml_type_traits_get((int)t);
  if (!tr || n < 0 || n % tr->blck) return 0;
  uint64_t blocks = (uint64_t)(n / tr->blck);
  if (blocks > SIZE_MAX / tr->size) return 0;
  return (size_t)blocks * tr->size;
}
