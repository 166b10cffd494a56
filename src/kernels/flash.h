/* flash.h: the block kernels of flash.c, one table per level (the portable one in flash.c
 * is the oracle; flash_avx512.c the fast one). Shapes, for one (tile, KV head):
 *
 *   M query vectors of hd floats (the g heads of each tile row, already scaled), rows hd apart
 *   a block of nj <= ML_FLASH_BLOCK keys and values, either read where they are in the store
 *   (few query vectors, M < 16: qk_kv and pv_kv convert each row in registers, once for all
 *   M) or, for many query vectors, converted once to f32:
 *     kt[d][j]  (rows ML_FLASH_BLOCK apart)   keys, transposed as they are converted
 *     vb[j][d]  (rows hd apart)          values
 *   s[m][j]  scores, rows ML_FLASH_BLOCK apart; then probabilities
 *   o[m][d]  the running (unnormalised) output, rows hd apart
 *
 * hd is a multiple of 16 for the SIMD tables (the driver uses the portable one otherwise).
 */
#ifndef ML_KERNELS_FLASH_H
#define ML_KERNELS_FLASH_H

#include <stddef.h>
#include <stdint.h>

#include "../flash.h"

typedef struct ml_flash_kernels {
  const char *name;
  /* nj rows of one head (type t, row j at base + rows[j] * row_bytes, or row j when rows is
   * NULL) to f32 rows dst[j * hd + d]. */
  void (*load)(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
               float *dst);
  /* the same rows straight into the transposed layout: kt[d][j] = K[j][d] as f32, j < nj
   * (columns nj..ML_FLASH_BLOCK-1 may be overwritten, with zeros in the SIMD tables) */
  void (*load_t)(ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows, int64_t nj, int64_t hd,
                 float *kt);
  /* s[m][j] = q[m] · K[j] for few query vectors (M < 16), the keys read from the store as
   * load reads them: each key row is loaded and converted once for all M vectors (decode:
   * the g query heads that share a KV head) and no f32 copy of the block is made */
  void (*qk_kv)(const float *q, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                int64_t nj, int64_t hd, float *s);
  /* s[m][j] = q[m] · kt[.][j], from the transposed keys (many query vectors) */
  void (*qk_t)(const float *q, int64_t M, const float *kt, int64_t nj, int64_t hd, float *s);
  /* Online softmax over one block: for each row m with a finite score, mx[m] becomes the
   * running max, s[m][j] = exp(s[m][j] - mx[m]), sum[m] = sum[m] · c + Σ_j s[m][j] and
   * o[m] *= c with c = exp(old max - new max). Rows whose scores are all -inf get s = 0 and
   * keep their state. */
  void (*softmax)(float *s, int64_t M, int64_t nj, float *mx, float *sum, float *o, int64_t hd);
  /* o[m] += Σ_j s[m][j] · vb[j] */
  void (*pv)(const float *s, int64_t M, const float *vb, int64_t nj, int64_t hd, float *o);
  /* the same with the values read from the store (qk_kv's partner, M < 16): each value row
   * loaded and converted once for all M vectors */
  void (*pv_kv)(const float *s, int64_t M, ml_type t, const uint8_t *base, size_t row_bytes, const int32_t *rows,
                int64_t nj, int64_t hd, float *o);
  /* One row of n visible scores: s[j] = softcap · tanh(s[j] / softcap) when softcap > 0, then
   * s[j] -= slope · |d0 - j| (ALiBi; slope 0 for none) */
  void (*bias)(float *s, int64_t n, float softcap, float slope, int64_t d0);
  /* y[i] = c · x[i], i < n, n a multiple of the table's vector width (the query vectors'
   * scale on the way in, the softmax's 1 / sum on the way out); y need not be aligned */
  void (*scale)(const float *x, float c, int64_t n, float *y);
} ml_flash_kernels;

/* flash_avx2.c's bias, which the AVX-512 table shares */
void ml_flash_bias_avx2(float *s, int64_t n, float softcap, float slope, int64_t d0);

/* ---- shared by the SIMD tables' qk_kv and pv_kv ---- */

/* row j of a block read where it is in the store (rows NULL: row j) */
static inline __attribute__((always_inline)) const uint8_t *ml_flash_row_at(const uint8_t *base, size_t row_bytes,
                                                                            const int32_t *rows, int64_t j) {
  return base + (size_t)(rows ? rows[j] : j) * row_bytes;
}

/* F(args..., M) with M a constant 1..8 (8 for more) */
#define ML_KV_BY_M(F, M, ...)              \
  switch (M) {                          \
    case 1: F(__VA_ARGS__, 1); break;   \
    case 2: F(__VA_ARGS__, 2); break;   \
    case 3: F(__VA_ARGS__, 3); break;   \
    case 4: F(__VA_ARGS__, 4); break;   \
    case 5: F(__VA_ARGS__, 5); break;   \
    case 6: F(__VA_ARGS__, 6); break;   \
    case 7: F(__VA_ARGS__, 7); break;   \
    default: F(__VA_ARGS__, 8); break;  \
  }

/* the type leaves the loops: one copy of F per cache type and M */
#define ML_KV_BY_TYPE(F, t, M, q, ...)                                                \
  if ((t) == ML_TYPE_F16) { ML_KV_BY_M(F, M, q, ML_TYPE_F16, __VA_ARGS__) }           \
  else if ((t) == ML_TYPE_Q8_0) { ML_KV_BY_M(F, M, q, ML_TYPE_Q8_0, __VA_ARGS__) }    \
  else { ML_KV_BY_M(F, M, q, ML_TYPE_F32, __VA_ARGS__) }

#endif
