/* x16_drv.h: the ISA-independent parts of the x16 kernel drivers (avx2.c, avx512_x16.h):
 * the layout of unpacked weight blocks in the work buffer, the per-call context, and the
 * activations packed per register block. The includer defines X16_BF16_F32 (1 if its bf16
 * micro-kernel takes activations as floats) and may define X16_Q8_OFF (the offset of q8_0
 * values as its kernels read them: 128 for unsigned w + 128, the default; 0 for the signed
 * values as they are). Internal to src/kernels. */
#ifndef ML_X16_DRV_H
#define ML_X16_DRV_H

#include <string.h>

#include "kernels.h"

#define X16_AI __attribute__((always_inline)) static inline

#ifndef X16_Q8_OFF
#define X16_Q8_OFF 128
#endif

/* unpacked block layouts in work (bytes): q the unsigned values as k-groups of 64 bytes
 * (16 rows x 4), d / m / dmin 16 floats, sc[j] and the pairs of mn as 16 lanes of 32 bits */
enum {
  UB32_Q = 0, UB32_D = 512, UB32_M = 576, UB32_STRIDE = 640,           /* q[8][64] | d | m */
  UKQ_Q = 0, UKQ_D = 4096, UKQ_DMIN = 4160, UKQ_SC = 4224,               /* q[64][64] | d | dmin | sc[J] */
  UKQ_MN16 = UKQ_SC + 16 * 64, UKQ_STRIDE16 = UKQ_MN16 + 8 * 64,        /* | mn pairs[J/2] (J = 16) */
  UKQ_MN32 = UKQ_SC + 8 * 64, UKQ_STRIDE32 = UKQ_MN32 + 4 * 64          /* (J = 8) */
};

/* ---- context of one call ---- */

typedef struct x16_ctx {
  ml_type wt;
  ml_x16_info in;
  ml_panel pl;
  int64_t nb;         /* packed blocks per tile */
  size_t bb, ustride; /* packed / unpacked block bytes */
} x16_ctx;

/* ml_x16_info_get, inlined so that the kind and constants fold per type */
X16_AI void x16_info(ml_type wt, ml_x16_info *in) {
  in->kind = wt == ML_TYPE_BF16 ? ML_X16_BF16 : wt == ML_TYPE_F16 ? ML_X16_F16
           : wt == ML_TYPE_Q2_K || wt == ML_TYPE_Q3_K || wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K || wt == ML_TYPE_Q6_K
               ? ML_X16_KQ : ML_X16_B32;
  in->blck = in->kind == ML_X16_KQ ? 256 : 32;
  in->off = wt == ML_TYPE_Q8_0 ? X16_Q8_OFF : wt == ML_TYPE_Q4_0 ? 8 : wt == ML_TYPE_Q5_0 ? 16 : 0;
  in->has_min = wt == ML_TYPE_Q4_1 || wt == ML_TYPE_Q5_1;
  in->sub = wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K ? 32 : 16;
}

X16_AI void ctx_init(x16_ctx *c, const ml_packed_args *p, ml_type wt) {
  c->wt = wt;
  x16_info(wt, &c->in);
  ml_panel_layout(wt, p->K, &c->pl);
  c->nb = p->K / c->in.blck;
  c->bb = p->tile_bytes / (size_t)c->nb;
  c->ustride = c->in.kind == ML_X16_B32 ? UB32_STRIDE : c->in.sub == 16 ? UKQ_STRIDE16 : UKQ_STRIDE32;
}

/* ---- activations, packed per register block ----
 * The R rows of a register block are interleaved so that one pointer reaches them all
 * with constant offsets: per block, k-group g of row m at 4 (g R + m), then per-row
 * scalars (32-element formats: d, isum [, fsum]; K formats: d, then the J/2 pairs of
 * activation sums as int16 pairs at 4 (p R + m)). bf16: k-pair kp of row m at
 * 4 (kp R + m) (X16_BF16_F32: the pair as two floats at 8 (kp R + m)); f16: float k of
 * row m at 4 (k R + m). */
X16_AI size_t ablock_bytes(const x16_ctx *c, int R) {
  switch (c->in.kind) {
  case ML_X16_B32: return (size_t)(c->in.has_min ? 44 : 40) * (size_t)R;
  case ML_X16_KQ: return (size_t)(260 + 2 * (256 / c->in.sub)) * (size_t)R;
  case ML_X16_BF16: return (size_t)(X16_BF16_F32 ? 128 : 64) * (size_t)R;
  default: return (size_t)128 * (size_t)R;
  }
}

/* rows m0 .. m0 + r - 1 into a register block of R >= r rows (the others zero) */
X16_AI void apack(const x16_ctx *c, const ml_packed_args *p, int64_t m0, int R, int r, int64_t b0, int64_t b1,
                  uint8_t *ap) {
  const ml_panel *pl = &c->pl;
  size_t abb = ablock_bytes(c, R);
  int J = 256 / c->in.sub;
  if (r < R) memset(ap, 0, abb * (size_t)(b1 - b0));
  for (int m = 0; m < r; m++) {
    const uint8_t *row = (const uint8_t *)p->a + (size_t)(m0 + m) * p->a_row_bytes;
    uint8_t *o = ap;
    for (int64_t b = b0; b < b1; b++, o += abb) {
      switch (c->in.kind) {
      case ML_X16_B32: {
        const uint8_t *q = row + pl->qs + 32 * b;
        for (int g = 0; g < 8; g++) memcpy(o + 4 * (g * R + m), q + 4 * g, 4);
        memcpy(o + 32 * R + 4 * m, row + pl->d + 4 * b, 4);
        int32_t is;
        memcpy(&is, row + pl->isum + 4 * b, 4);
        is *= -c->in.off; /* the offset correction, the initial integer sum */
        memcpy(o + 36 * R + 4 * m, &is, 4);
        if (c->in.has_min) memcpy(o + 40 * R + 4 * m, row + pl->fsum + 4 * b, 4);
      } break;
      case ML_X16_KQ: {
        const uint8_t *q = row + pl->qs + 256 * b;
        for (int g = 0; g < 64; g++) memcpy(o + 4 * (g * R + m), q + 4 * g, 4);
        memcpy(o + 256 * R + 4 * m, row + pl->d + 4 * b, 4);
        const uint8_t *bs = row + (c->in.sub == 32 ? pl->bs32 : pl->bs16) + 2 * J * b;
        for (int q2 = 0; q2 < J / 2; q2++) memcpy(o + 260 * R + 4 * (q2 * R + m), bs + 4 * q2, 4);
      } break;
      case ML_X16_BF16:
        if (X16_BF16_F32) { /* the pair widened to floats (bf16 is the top half of an f32) */
          const uint16_t *h = (const uint16_t *)(row + pl->bf16) + 32 * b;
          for (int k = 0; k < 32; k++) {
            uint32_t v = (uint32_t)h[k] << 16;
            memcpy(o + 8 * ((k / 2) * R + m) + 4 * (k % 2), &v, 4);
          }
        } else
          for (int kp = 0; kp < 16; kp++) memcpy(o + 4 * (kp * R + m), row + pl->bf16 + 2 * (32 * b + 2 * kp), 4);
        break;
      default:
        for (int k = 0; k < 32; k++) memcpy(o + 4 * (k * R + m), row + pl->f32 + 4 * (32 * b + k), 4);
        break;
      }
    }
  }
}

#endif
