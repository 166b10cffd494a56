/* avx512_x16.h: the AVX-512 kernels over x16 packed weights, included by avx512.c (F/BW/VL
 * only) and avx512vnni.c (with VNNI and BF16). The includer defines the dot steps first:
 *
 *   X16_VNNI                        1 if x16_dot4 is vpdpbusd (q8_0 then packs as w + 128)
 *   x16_dot4(acc, u8, s8)           acc.i32 += sum of 4 u8 x s8 products per lane
 *   x16_dot2w(acc, a16, b16)        acc.i32 += sum of 2 i16 x i16 products per lane
 *   x16_bf16(acc, w, abf, af)       acc += w.even * a[0] + w.odd * a[1] (w: 16 bf16 pairs;
 *                                   abf / af: the pair of activations as bf16 / as float)
 *
 * One zmm of weights is a k-group: 16 rows x 4 int8 (or 2 bf16) consecutive K values, so
 * every dot step updates the 16 outputs of a tile at once and no horizontal sums are
 * needed. A tile's blocks are first unpacked into `work` (unsigned int8 values, int32
 * scale vectors, float d vectors; layout below), then a register-blocked micro-kernel
 * runs MR activation rows over them:
 *   GEMV (few rows): unpack a few blocks (L1), run all M rows (<= 8 per pass), next blocks.
 *   GEMM (many rows): unpack the whole tile once (16 K bytes, L2), run M in blocks of MR.
 * Activation int8 values are broadcast 4 bytes at a time from the panel rows.
 *
 * Values are unsigned (vpdpbusd's u8 operand); the formats' offsets and mins come back as
 * integer corrections with the activation block sums (panel isum / bs16 / bs32):
 *   32-element formats: y += d_w d_a (sum v a - off sum a) [+ m_w s_a]
 *   K formats, per super-block: y += d_a (d_w sum_j sc_j (sum v a)_j - dmin_w sum_j mn_j (sum a)_j)
 */
#ifndef ML_AVX512_X16_H
#define ML_AVX512_X16_H

#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "x16.h"

#define X16_AI __attribute__((always_inline)) static inline

/* unpacked block layouts in work (bytes) */
enum {
  UB32_Q = 0, UB32_D = 512, UB32_M = 576, UB32_STRIDE = 640,           /* q[8][64] | d | m */
  UKQ_Q = 0, UKQ_D = 4096, UKQ_DMIN = 4160, UKQ_SC = 4224,               /* q[64][64] | d | dmin | sc[J] */
  UKQ_MN16 = UKQ_SC + 16 * 64, UKQ_STRIDE16 = UKQ_MN16 + 8 * 64,        /* | mn pairs[J/2] (J = 16) */
  UKQ_MN32 = UKQ_SC + 8 * 64, UKQ_STRIDE32 = UKQ_MN32 + 4 * 64          /* (J = 8) */
};

X16_AI __m512i bcast32(const void *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
X16_AI __m512 ld_f16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
X16_AI __m512i ld(const void *p) { return _mm512_loadu_si512(p); }
X16_AI void st(void *p, __m512i v) { _mm512_storeu_si512(p, v); }
X16_AI __mmask64 ld_mask64(const void *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return _cvtu64_mask64(v);
}

/* ---- unpacking one packed block into work ---- */

X16_AI void unpack_b32(ml_type wt, const uint8_t *o, uint8_t *u) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F), b16 = _mm512_set1_epi8(16);
  _mm512_storeu_ps(u + UB32_D, ld_f16(o));
  if (wt == ML_TYPE_Q8_0) {
#if X16_VNNI
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int g = 0; g < 8; g++) st(u + 64 * g, _mm512_xor_si512(ld(o + X16_Q8_0_Q + 64 * g), flip));
#endif
    return;
  }
  int qoff = wt == ML_TYPE_Q4_0 ? X16_Q4_0_Q : wt == ML_TYPE_Q4_1 ? X16_Q4_1_Q : wt == ML_TYPE_Q5_0 ? X16_Q5_0_Q : X16_Q5_1_Q;
  int hoff = wt == ML_TYPE_Q5_0 ? X16_Q5_0_HB : X16_Q5_1_HB;
  int has_hb = wt == ML_TYPE_Q5_0 || wt == ML_TYPE_Q5_1;
  if (wt == ML_TYPE_Q4_1 || wt == ML_TYPE_Q5_1) _mm512_storeu_ps(u + UB32_M, ld_f16(o + 32));
  for (int g = 0; g < 4; g++) {
    __m512i x = ld(o + qoff + 64 * g);
    __m512i l = _mm512_and_si512(x, lo4), h = _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
    if (has_hb) {
      l = _mm512_mask_add_epi8(l, ld_mask64(o + hoff + 8 * g), l, b16);
      h = _mm512_mask_add_epi8(h, ld_mask64(o + hoff + 8 * (g + 4)), h, b16);
    }
    st(u + 64 * g, l);
    st(u + 64 * (g + 4), h);
  }
}

/* byte j of every 32-bit lane, zero-extended (j < 4) */
X16_AI __m512i byte_lane(__m512i v, int j) { return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xFF)); }
/* int16 pair (lo, hi) per lane from two int32 vectors of small values */
X16_AI __m512i pair16(__m512i lo, __m512i hi) {
  return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(hi, 16));
}

/* q4_K / q5_K scales: 12 bytes per row as 3 u32 planes -> sc[8], mn pairs[4] */
X16_AI void unpack_sc_q4k(const uint8_t *sc3, uint8_t *u) {
  const __m512i m6 = _mm512_set1_epi32(0x3F3F3F3F), m4 = _mm512_set1_epi32(0x0F0F0F0F), m2 = _mm512_set1_epi32(0x03030303);
  __m512i u0 = ld(sc3), u1 = ld(sc3 + 64), u2 = ld(sc3 + 128);
  __m512i s03 = _mm512_and_si512(u0, m6), n03 = _mm512_and_si512(u1, m6);
  __m512i s47 = _mm512_or_si512(_mm512_and_si512(u2, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), m2), 4));
  __m512i n47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), m4),
                                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), m2), 4));
  __m512i mn[8];
  for (int j = 0; j < 4; j++) {
    st(u + UKQ_SC + 64 * j, byte_lane(s03, j));
    st(u + UKQ_SC + 64 * (j + 4), byte_lane(s47, j));
    mn[j] = byte_lane(n03, j);
    mn[j + 4] = byte_lane(n47, j);
  }
  for (int p = 0; p < 4; p++) st(u + UKQ_MN32 + 64 * p, pair16(mn[2 * p], mn[2 * p + 1]));
}

/* q3_K scales: 12 bytes per row -> 16 signed 6-bit scales (ggml's aux[] decoding) */
X16_AI void unpack_sc_q3k(const uint8_t *sc3, uint8_t *u) {
  const __m512i k1 = _mm512_set1_epi32(0x03030303), k2 = _mm512_set1_epi32(0x0F0F0F0F), b32 = _mm512_set1_epi32(32);
  __m512i a0 = ld(sc3), a1 = ld(sc3 + 64), t = ld(sc3 + 128);
  __m512i w[4];
  w[0] = _mm512_or_si512(_mm512_and_si512(a0, k2), _mm512_slli_epi32(_mm512_and_si512(t, k1), 4));
  w[1] = _mm512_or_si512(_mm512_and_si512(a1, k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 2), k1), 4));
  w[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a0, 4), k2),
                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 4), k1), 4));
  w[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a1, 4), k2),
                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 6), k1), 4));
  __m512i sc[16];
  for (int j = 0; j < 16; j++) {
    sc[j] = _mm512_sub_epi32(byte_lane(w[j / 4], j % 4), b32);
    st(u + UKQ_SC + 64 * j, sc[j]);
  }
  for (int p = 0; p < 8; p++) st(u + UKQ_MN16 + 64 * p, _mm512_slli_epi16(pair16(sc[2 * p], sc[2 * p + 1]), 2));
}

X16_AI void unpack_kq(ml_type wt, const uint8_t *o, uint8_t *u) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F), b16 = _mm512_set1_epi8(16), c3 = _mm512_set1_epi8(3);
  __m512 d = ld_f16(o);
  _mm512_storeu_ps(u + UKQ_D, d);
  switch (wt) {
  case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: {
    _mm512_storeu_ps(u + UKQ_DMIN, ld_f16(o + X16_Q4_K_DMIN));
    unpack_sc_q4k(o + X16_Q4_K_SC, u);
    const uint8_t *q = o + (wt == ML_TYPE_Q5_K ? X16_Q5_K_Q : X16_Q4_K_Q);
    for (int c = 0; c < 4; c++)
      for (int g = 0; g < 8; g++) {
        __m512i x = ld(q + 512 * c + 64 * g);
        __m512i l = _mm512_and_si512(x, lo4), h = _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
        if (wt == ML_TYPE_Q5_K) {
          l = _mm512_mask_add_epi8(l, ld_mask64(o + X16_Q5_K_HB + 64 * (2 * c) + 8 * g), l, b16);
          h = _mm512_mask_add_epi8(h, ld_mask64(o + X16_Q5_K_HB + 64 * (2 * c + 1) + 8 * g), h, b16);
        }
        st(u + 64 * (16 * c + g), l);     /* sub-block 2c, k-group g */
        st(u + 64 * (16 * c + 8 + g), h); /* sub-block 2c + 1 */
      }
  } break;
  case ML_TYPE_Q6_K: {
    _mm512_storeu_ps(u + UKQ_DMIN, d);
    __m512i sc[16];
    for (int j = 0; j < 16; j++) {
      sc[j] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(o + X16_Q6_K_SC + 16 * j)));
      st(u + UKQ_SC + 64 * j, sc[j]);
    }
    for (int p = 0; p < 8; p++) st(u + UKQ_MN16 + 64 * p, _mm512_slli_epi16(pair16(sc[2 * p], sc[2 * p + 1]), 5));
    const __m512i m30 = _mm512_set1_epi8(0x30);
    for (int h = 0; h < 2; h++)
      for (int g = 0; g < 8; g++) {
        __m512i qh = ld(o + X16_Q6_K_QH + 512 * h + 64 * g);
        /* the high 2 bits of k = 0..3, moved to bits 4..5 */
        __m512i hk[4] = {_mm512_and_si512(_mm512_slli_epi16(qh, 4), m30), _mm512_and_si512(_mm512_slli_epi16(qh, 2), m30),
                         _mm512_and_si512(qh, m30), _mm512_and_si512(_mm512_srli_epi16(qh, 2), m30)};
        for (int kk = 0; kk < 2; kk++) {
          __m512i x = ld(o + X16_Q6_K_QL + 1024 * h + 512 * kk + 64 * g);
          __m512i l = _mm512_or_si512(_mm512_and_si512(x, lo4), hk[kk]);
          __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x, 4), lo4), hk[kk + 2]);
          st(u + 64 * (32 * h + 8 * kk + g), l);
          st(u + 64 * (32 * h + 8 * (kk + 2) + g), hi);
        }
      }
  } break;
  case ML_TYPE_Q3_K: {
    _mm512_storeu_ps(u + UKQ_DMIN, d);
    unpack_sc_q3k(o + X16_Q3_K_SC, u);
    const __m512i c4 = _mm512_set1_epi8(4);
    for (int g = 0; g < 8; g++) {
      __m512i hm = ld(o + X16_Q3_K_HM + 64 * g);
      for (int h = 0; h < 2; h++) {
        __m512i x = ld(o + X16_Q3_K_Q + 512 * h + 64 * g);
        for (int k = 0; k < 4; k++) {
          int s = 4 * h + k; /* hmask bit, to move to bit 2 */
          __m512i hb = s <= 2 ? _mm512_slli_epi16(hm, 2 - s) : _mm512_srli_epi16(hm, s - 2);
          __m512i v = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x, 2 * k), c3), _mm512_and_si512(hb, c4));
          st(u + 64 * (32 * h + 8 * k + g), v);
        }
      }
    }
  } break;
  case ML_TYPE_Q2_K: {
    _mm512_storeu_ps(u + UKQ_DMIN, ld_f16(o + X16_Q2_K_DMIN));
    __m512i mn[16];
    for (int j = 0; j < 16; j++) {
      __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(o + X16_Q2_K_SC + 16 * j)));
      st(u + UKQ_SC + 64 * j, _mm512_and_si512(s, _mm512_set1_epi32(0xF)));
      mn[j] = _mm512_srli_epi32(s, 4);
    }
    for (int p = 0; p < 8; p++) st(u + UKQ_MN16 + 64 * p, pair16(mn[2 * p], mn[2 * p + 1]));
    for (int h = 0; h < 2; h++)
      for (int g = 0; g < 8; g++) {
        __m512i x = ld(o + X16_Q2_K_Q + 512 * h + 64 * g);
        for (int k = 0; k < 4; k++) st(u + 64 * (32 * h + 8 * k + g), _mm512_and_si512(_mm512_srli_epi16(x, 2 * k), c3));
      }
  } break;
  default: break;
  }
}

/* ---- activation rows of one register block ---- */

typedef struct arows {
  const int8_t *q[16];
  const float *d[16], *fs[16], *f[16];
  const int32_t *is[16];
  const int16_t *bs[16];
  const uint16_t *bf[16];
} arows;

X16_AI void arows_at(arows *r, const ml_packed_args *p, const ml_panel *pl, int64_t m0, int mr, int bs32) {
  for (int m = 0; m < mr; m++) {
    const uint8_t *row = (const uint8_t *)p->a + (size_t)(m0 + m) * p->a_row_bytes;
    r->q[m] = (const int8_t *)(row + pl->qs);
    r->d[m] = (const float *)(row + pl->d);
    r->is[m] = (const int32_t *)(row + pl->isum);
    r->fs[m] = (const float *)(row + pl->fsum);
    r->bs[m] = (const int16_t *)(row + (bs32 ? pl->bs32 : pl->bs16));
    r->bf[m] = (const uint16_t *)(row + pl->bf16);
    r->f[m] = (const float *)(row + pl->f32);
  }
}

/* ---- micro-kernels: MR rows x 16 outputs over unpacked blocks [0, nb) of u, whose
 * activation blocks start at ab0 ---- */

X16_AI void micro_b32(const uint8_t *u, int64_t nb, int64_t ab0, const arows *a, int off, int has_min, __m512 *acc,
                      const int MR) {
  for (int64_t b = 0; b < nb; b++, u += UB32_STRIDE) {
    int64_t ab = ab0 + b;
    __m512i ia[16]; /* MR <= 16 used */
    for (int m = 0; m < MR; m++) ia[m] = off ? _mm512_set1_epi32(-off * a->is[m][ab]) : _mm512_setzero_si512();
    for (int g = 0; g < 8; g++) {
      __m512i w = ld(u + 64 * g);
      for (int m = 0; m < MR; m++) ia[m] = x16_dot4(ia[m], w, bcast32(a->q[m] + 32 * ab + 4 * g));
    }
    __m512 dw = _mm512_loadu_ps(u + UB32_D);
    for (int m = 0; m < MR; m++)
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m]), _mm512_mul_ps(dw, _mm512_set1_ps(a->d[m][ab])), acc[m]);
    if (has_min) {
      __m512 mw = _mm512_loadu_ps(u + UB32_M);
      for (int m = 0; m < MR; m++) acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(a->fs[m][ab]), acc[m]);
    }
  }
}

X16_AI void micro_kq(const uint8_t *u, int64_t nb, int64_t ab0, const arows *a, int sub, __m512 *acc, const int MR) {
  const int J = 256 / sub, G = sub / 4, stride = sub == 16 ? UKQ_STRIDE16 : UKQ_STRIDE32;
  const int mnoff = sub == 16 ? UKQ_MN16 : UKQ_MN32;
  for (int64_t b = 0; b < nb; b++, u += stride) {
    int64_t ab = ab0 + b;
    __m512i it[16];
    for (int m = 0; m < MR; m++) it[m] = _mm512_setzero_si512();
    for (int j = 0; j < J; j++) {
      __m512i t[16];
      for (int m = 0; m < MR; m++) t[m] = _mm512_setzero_si512();
      for (int g = 0; g < G; g++) {
        __m512i w = ld(u + 64 * (G * j + g));
        for (int m = 0; m < MR; m++) t[m] = x16_dot4(t[m], w, bcast32(a->q[m] + 256 * ab + sub * j + 4 * g));
      }
      __m512i sc = ld(u + UKQ_SC + 64 * j);
      for (int m = 0; m < MR; m++) it[m] = _mm512_add_epi32(it[m], _mm512_mullo_epi32(t[m], sc));
    }
    __m512 dw = _mm512_loadu_ps(u + UKQ_D), dm = _mm512_loadu_ps(u + UKQ_DMIN);
    for (int m = 0; m < MR; m++) {
      __m512i im = _mm512_setzero_si512();
      for (int p = 0; p < J / 2; p++) im = x16_dot2w(im, ld(u + mnoff + 64 * p), bcast32(a->bs[m] + J * ab + 2 * p));
      __m512 da = _mm512_set1_ps(a->d[m][ab]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(it[m]), _mm512_mul_ps(dw, da), acc[m]);
      acc[m] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dm, da), acc[m]);
    }
  }
}

/* bf16: the packed tile read as is; k-pairs [kp0, kp1) */
X16_AI void micro_bf16(const uint8_t *tile, int64_t kp0, int64_t kp1, const arows *a, __m512 *acc, const int MR) {
  for (int64_t kp = kp0; kp < kp1; kp++) {
    __m512i w = ld(tile + 64 * kp);
    for (int m = 0; m < MR; m++) acc[m] = x16_bf16(acc[m], w, a->bf[m] + 2 * kp, a->f[m] + 2 * kp);
  }
}

X16_AI void micro_f16(const uint8_t *tile, int64_t k0, int64_t k1, const arows *a, __m512 *acc, const int MR) {
  for (int64_t k = k0; k < k1; k++) {
    __m512 w = ld_f16(tile + 32 * k);
    for (int m = 0; m < MR; m++) acc[m] = _mm512_fmadd_ps(w, _mm512_set1_ps(a->f[m][k]), acc[m]);
  }
}

/* ---- drivers ---- */

typedef struct x16_ctx {
  ml_type wt;
  ml_x16_info in;
  ml_panel pl;
  int64_t nb;         /* packed blocks per tile */
  size_t bb, ustride; /* packed / unpacked block bytes */
} x16_ctx;

X16_AI void ctx_init(x16_ctx *c, const ml_packed_args *p, ml_type wt) {
  c->wt = wt;
  ml_x16_info_get(wt, &c->in);
  ml_panel_layout(wt, p->K, &c->pl);
  c->nb = p->K / c->in.blck;
  c->bb = p->tile_bytes / (size_t)c->nb;
  c->ustride = c->in.kind == ML_X16_B32 ? UB32_STRIDE : c->in.sub == 16 ? UKQ_STRIDE16 : UKQ_STRIDE32;
}

X16_AI void unpack_blocks(const x16_ctx *c, const uint8_t *tile, int64_t b0, int64_t b1, uint8_t *u) {
  for (int64_t b = b0; b < b1; b++, u += c->ustride) {
    const uint8_t *o = tile + (size_t)b * c->bb;
    _mm_prefetch((const char *)o + 4096, _MM_HINT_T0);
    if (c->in.kind == ML_X16_B32) unpack_b32(c->wt, o, u);
    else unpack_kq(c->wt, o, u);
  }
}

X16_AI void store_rows(const ml_packed_args *p, int64_t t, int64_t m0, const __m512 *acc, int mr) {
  int64_t left = p->N - t * ML_X16;
  __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
  for (int m = 0; m < mr; m++) _mm512_mask_storeu_ps(p->y + (m0 + m) * p->ldy + t * ML_X16, k, acc[m]);
}

/* MR rows from m0 over the blocks [b0, b1) of a tile, unpacked at u (block b0 first). */
X16_AI void run_rows(const x16_ctx *c, const uint8_t *tile, const uint8_t *u, int64_t b0, int64_t b1, const arows *a,
                     __m512 *acc, const int MR) {
  switch (c->in.kind) {
  case ML_X16_B32: micro_b32(u, b1 - b0, b0, a, c->in.off, c->in.has_min, acc, MR); break;
  case ML_X16_KQ: micro_kq(u, b1 - b0, b0, a, c->in.sub, acc, MR); break;
  case ML_X16_BF16: micro_bf16(tile, 16 * b0, 16 * b1, a, acc, MR); break;
  default: micro_f16(tile, 32 * b0, 32 * b1, a, acc, MR); break;
  }
}

/* GEMV: per tile, per pass of up to 8 rows, stream the blocks in chunks through L1. */
X16_AI void gemv_rows(const x16_ctx *c, const ml_packed_args *p, const uint8_t *tile, int64_t t, uint8_t *u,
                      int64_t m0, const int MR) {
  arows a;
  arows_at(&a, p, &c->pl, m0, MR, c->in.sub == 32);
  __m512 acc[16];
  for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
  int packed_only = c->in.kind == ML_X16_BF16 || c->in.kind == ML_X16_F16;
  int64_t chunk = c->in.kind == ML_X16_KQ ? 1 : 8;
  for (int64_t b0 = 0; b0 < c->nb; b0 += chunk) {
    int64_t b1 = b0 + chunk < c->nb ? b0 + chunk : c->nb;
    if (!packed_only) unpack_blocks(c, tile, b0, b1, u);
    run_rows(c, tile, u, b0, b1, &a, acc, MR);
  }
  store_rows(p, t, m0, acc, MR);
}

X16_AI void gemv_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    for (int64_t m0 = 0; m0 < p->M; m0 += 8) {
      int mr = p->M - m0 < 8 ? (int)(p->M - m0) : 8;
      switch (mr) {
      case 1: gemv_rows(&c, p, tile, t, work, m0, 1); break;
      case 2: gemv_rows(&c, p, tile, t, work, m0, 2); break;
      case 3: gemv_rows(&c, p, tile, t, work, m0, 3); break;
      case 4: gemv_rows(&c, p, tile, t, work, m0, 4); break;
      case 5: gemv_rows(&c, p, tile, t, work, m0, 5); break;
      case 6: gemv_rows(&c, p, tile, t, work, m0, 6); break;
      case 7: gemv_rows(&c, p, tile, t, work, m0, 7); break;
      default: gemv_rows(&c, p, tile, t, work, m0, 8); break;
      }
    }
  }
}

/* GEMM: per tile, unpack all of K once, then M in register blocks of MR rows. */
X16_AI void gemm_rows(const x16_ctx *c, const ml_packed_args *p, const uint8_t *tile, int64_t t, const uint8_t *u,
                      int64_t m0, const int MR) {
  arows a;
  arows_at(&a, p, &c->pl, m0, MR, c->in.sub == 32);
  __m512 acc[16];
  for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
  run_rows(c, tile, u, 0, c->nb, &a, acc, MR);
  store_rows(p, t, m0, acc, MR);
}

X16_AI void gemm_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt, const int MR) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  int packed_only = c.in.kind == ML_X16_BF16 || c.in.kind == ML_X16_F16;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    if (!packed_only) unpack_blocks(&c, tile, 0, c.nb, work);
    int64_t m0 = 0;
    for (; m0 + MR <= p->M; m0 += MR) gemm_rows(&c, p, tile, t, work, m0, MR);
    while (m0 < p->M) {
      int mr = p->M - m0 < 8 ? (int)(p->M - m0) : 8;
      switch (mr) {
      case 1: gemm_rows(&c, p, tile, t, work, m0, 1); break;
      case 2: gemm_rows(&c, p, tile, t, work, m0, 2); break;
      case 3: gemm_rows(&c, p, tile, t, work, m0, 3); break;
      case 4: gemm_rows(&c, p, tile, t, work, m0, 4); break;
      case 5: gemm_rows(&c, p, tile, t, work, m0, 5); break;
      case 6: gemm_rows(&c, p, tile, t, work, m0, 6); break;
      case 7: gemm_rows(&c, p, tile, t, work, m0, 7); break;
      default: gemm_rows(&c, p, tile, t, work, m0, 8); break;
      }
      m0 += mr;
    }
  }
}

/* One GEMV and one GEMM entry point per type; MR of the GEMM by register budget: the
 * 32-element formats hold 2 MR accumulators, the K formats 3 MR, the float ones MR. */
#define X16_ENTRY(name, type, mr)                                                              \
  __attribute__((unused)) static void gemv_##name(const ml_packed_args *p, void *w, int ith, int nth) { \
    gemv_x16(p, w, ith, nth, type);                                                              \
  }                                                                                              \
  __attribute__((unused)) static void gemm_##name(const ml_packed_args *p, void *w, int ith, int nth) { \
    gemm_x16(p, w, ith, nth, type, mr);                                                          \
  }

#if X16_VNNI
X16_ENTRY(q8_0, ML_TYPE_Q8_0, 12)
#endif
X16_ENTRY(q4_0, ML_TYPE_Q4_0, 12)
X16_ENTRY(q4_1, ML_TYPE_Q4_1, 12)
X16_ENTRY(q5_0, ML_TYPE_Q5_0, 12)
X16_ENTRY(q5_1, ML_TYPE_Q5_1, 12)
X16_ENTRY(q2_K, ML_TYPE_Q2_K, 8)
X16_ENTRY(q3_K, ML_TYPE_Q3_K, 8)
X16_ENTRY(q4_K, ML_TYPE_Q4_K, 8)
X16_ENTRY(q5_K, ML_TYPE_Q5_K, 8)
X16_ENTRY(q6_K, ML_TYPE_Q6_K, 8)
X16_ENTRY(bf16, ML_TYPE_BF16, 16)
X16_ENTRY(f16, ML_TYPE_F16, 16)

#undef X16_ENTRY

#endif
