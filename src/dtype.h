/* dtype.h: element and block types, and the per-type traits table.
 *
 * Type ids are GGUF's tensor type ids, so a GGUF tensor's type field is an ml_type as is.
 * Quantized types store blocks of `blck` elements in `size` bytes; their byte layout is
 * bit-compatible with GGUF files made by llama.cpp. Every type has a reference to_float;
 * types that can be produced have a reference from_float (quantize). The fast kernels live
 * in src/kernels/ and are chosen at run time; these reference routines are their oracle.
 */
#ifndef ML_DTYPE_H
#define ML_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum ml_type {
  ML_TYPE_F32 = 0,
  ML_TYPE_F16 = 1,
  ML_TYPE_Q4_0 = 2,
  ML_TYPE_Q4_1 = 3,
  ML_TYPE_Q5_0 = 6,
  ML_TYPE_Q5_1 = 7,
  ML_TYPE_Q8_0 = 8,
  ML_TYPE_Q8_1 = 9,
  ML_TYPE_Q2_K = 10,
  ML_TYPE_Q3_K = 11,
  ML_TYPE_Q4_K = 12,
  ML_TYPE_Q5_K = 13,
  ML_TYPE_Q6_K = 14,
  ML_TYPE_Q8_K = 15,
  ML_TYPE_I8 = 24,
  ML_TYPE_I16 = 25,
  ML_TYPE_I32 = 26,
  ML_TYPE_I64 = 27,
  ML_TYPE_F64 = 28,
  ML_TYPE_BF16 = 30,
  ML_TYPE_COUNT = 40 /* bound for tables indexed by type id */
} ml_type;

#define ML_QK 32   /* elements per block of the *_0 / *_1 formats */
#define ML_QK_K 256 /* elements per super-block of the K formats */

typedef void (*ml_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*ml_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct ml_type_traits {
  const char *name;          /* lower case, as users write it: "q4_k" */
  int blck;                  /* elements per block (1 for plain types) */
  size_t size;               /* bytes per block */
  int is_quant;              /* block-quantized */
  int is_float;              /* f32, f16, bf16, f64: element-wise floats */
  ml_to_float_fn to_float;   /* reference; n is a multiple of blck; NULL if none */
  ml_from_float_fn from_float; /* reference quantize; NULL if the type cannot be produced */
  ml_type vec_dot_type;      /* format activations are converted to for dot products */
} ml_type_traits;

/* NULL for ids that are not a type we know. */
const ml_type_traits *ml_type_traits_get(int type);
/* -1 if unknown. Accepts "q4_k", "Q4_K", "float32"/"float"/"half"/"bfloat16" aliases. */
int ml_type_from_name(const char *name);
/* Bytes for n elements of type t (n must be a multiple of the block size). */
size_t ml_type_nbytes(ml_type t, int64_t n);

/* ---- f16 / bf16 scalar conversions (portable, bit-exact) ---- */
typedef uint16_t ml_fp16;
typedef uint16_t ml_bf16;

float ml_fp16_to_f32(ml_fp16 h);
ml_fp16 ml_f32_to_fp16(float f); /* round to nearest even, overflow to inf, NaN kept */
float ml_bf16_to_f32(ml_bf16 h);
ml_bf16 ml_f32_to_bf16(float f); /* round to nearest even, NaN kept quiet */

/* ---- block layouts (little-endian, packed exactly as in GGUF) ---- */
typedef struct { ml_fp16 d; uint8_t qs[ML_QK / 2]; } ml_block_q4_0;              /* 18 B */
typedef struct { ml_fp16 d, m; uint8_t qs[ML_QK / 2]; } ml_block_q4_1;           /* 20 B */
typedef struct { ml_fp16 d; uint8_t qh[4]; uint8_t qs[ML_QK / 2]; } ml_block_q5_0; /* 22 B */
typedef struct { ml_fp16 d, m; uint8_t qh[4]; uint8_t qs[ML_QK / 2]; } ml_block_q5_1; /* 24 B */
typedef struct { ml_fp16 d; int8_t qs[ML_QK]; } ml_block_q8_0;                   /* 34 B */
typedef struct { ml_fp16 d, s; int8_t qs[ML_QK]; } ml_block_q8_1;                /* 36 B, s = d*sum(qs) */
typedef struct {
  uint8_t scales[ML_QK_K / 16]; /* 4-bit scale | 4-bit min per 16 */
  uint8_t qs[ML_QK_K / 4];
  ml_fp16 d, dmin;
} ml_block_q2_K; /* 84 B */
typedef struct {
  uint8_t hmask[ML_QK_K / 8];
  uint8_t qs[ML_QK_K / 4];
  uint8_t scales[12];
  ml_fp16 d;
} ml_block_q3_K; /* 110 B */
typedef struct {
  ml_fp16 d, dmin;
  uint8_t scales[12]; /* 6-bit scales and mins, packed */
  uint8_t qs[ML_QK_K / 2];
} ml_block_q4_K; /* 144 B */
typedef struct {
  ml_fp16 d, dmin;
  uint8_t scales[12];
  uint8_t qh[ML_QK_K / 8];
  uint8_t qs[ML_QK_K / 2];
} ml_block_q5_K; /* 176 B */
typedef struct {
  uint8_t ql[ML_QK_K / 2];
  uint8_t qh[ML_QK_K / 4];
  int8_t scales[ML_QK_K / 16];
  ml_fp16 d;
} ml_block_q6_K; /* 210 B */
typedef struct {
  float d;
  int8_t qs[ML_QK_K];
  int16_t bsums[ML_QK_K / 16]; /* sums of qs in groups of 16 */
} ml_block_q8_K; /* 292 B */

#endif
