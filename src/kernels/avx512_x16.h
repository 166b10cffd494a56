/* avx512_x16.h: the AVX-512 kernels over x16 packed weights, included by avx512.c (F/BW/VL
 * only) and avx512vnni.c (with VNNI and BF16). The includer defines the dot steps first:
 *
 *   X16_VNNI                        1 if x16_dot4 is vpdpbusd (q8_0 then packs as w + 128)
 *   X16_BF16_F32                    1 if x16_bf16 takes float activations, 0 for bf16
 *   x16_dot4(acc, u8, s8)           acc.i32 += sum of 4 u8 x s8 products per lane
 *   x16_dot2w(acc, a16, b16)        acc.i32 += sum of 2 i16 x i16 products per lane
 *   x16_bf16(acc, w, pair)          acc += w.even * a[0] + w.odd * a[1] (w: 16 bf16 pairs;
 *                                   pair: the two activations, 2 bf16 or 2 floats)
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
#include "x16_drv.h"


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

/* ---- reading packed blocks: values of one k-group, scales ----
 * These produce the unsigned values and scale vectors in registers; the GEMV consumes
 * them directly, the GEMM stores them once per tile chunk (unpack_*) and reuses them. */

/* 32-element formats: the 8 k-groups of block o (q4 / q5: one load gives g and g + 4) */
X16_AI void b32_vals(ml_type wt, const uint8_t *o, __m512i w[8]) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F), b16 = _mm512_set1_epi8(16);
  if (wt == ML_TYPE_Q8_0) {
    for (int g = 0; g < 8; g++) w[g] = _mm512_xor_si512(ld(o + X16_Q8_0_Q + 64 * g), _mm512_set1_epi8((char)0x80));
    return;
  }
  int qoff = wt == ML_TYPE_Q4_0 ? X16_Q4_0_Q : wt == ML_TYPE_Q4_1 ? X16_Q4_1_Q : wt == ML_TYPE_Q5_0 ? X16_Q5_0_Q : X16_Q5_1_Q;
  int hoff = wt == ML_TYPE_Q5_0 ? X16_Q5_0_HB : X16_Q5_1_HB;
  int has_hb = wt == ML_TYPE_Q5_0 || wt == ML_TYPE_Q5_1;
  for (int g = 0; g < 4; g++) {
    __m512i x = ld(o + qoff + 64 * g);
    __m512i l = _mm512_and_si512(x, lo4), h = _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
    if (has_hb) {
      l = _mm512_mask_add_epi8(l, ld_mask64(o + hoff + 8 * g), l, b16);
      h = _mm512_mask_add_epi8(h, ld_mask64(o + hoff + 8 * (g + 4)), h, b16);
    }
    w[g] = l, w[g + 4] = h;
  }
}

X16_AI void unpack_b32(ml_type wt, const uint8_t *o, uint8_t *u) {
  __m512i w[8];
  _mm512_storeu_ps(u + UB32_D, ld_f16(o));
  if (wt == ML_TYPE_Q4_1 || wt == ML_TYPE_Q5_1) _mm512_storeu_ps(u + UB32_M, ld_f16(o + 32));
  b32_vals(wt, o, w);
  for (int g = 0; g < 8; g++) st(u + 64 * g, w[g]);
}

/* byte j of every 32-bit lane, zero-extended (j < 4) */
X16_AI __m512i byte_lane(__m512i v, int j) { return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xFF)); }
/* int16 pair (lo, hi) per lane from two int32 vectors of small values */
X16_AI __m512i pair16(__m512i lo, __m512i hi) {
  return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(hi, 16));
}

/* K formats: the scale of each sub-block (int32 per row) and the mins as int16 pairs
 * (mn_2p, mn_2p+1) per row, with w = d sc v - dmin mn in sub-block j */
X16_AI void kq_scales(ml_type wt, const uint8_t *o, __m512i sc[16], __m512i mnp[8]) {
  __m512i mn[16];
  switch (wt) {
  case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: { /* 12 bytes per row as 3 u32 planes, ggml's 6-bit packing */
    const __m512i m6 = _mm512_set1_epi32(0x3F3F3F3F), m4 = _mm512_set1_epi32(0x0F0F0F0F), m2 = _mm512_set1_epi32(0x03030303);
    const uint8_t *s3 = o + X16_Q4_K_SC;
    __m512i u0 = ld(s3), u1 = ld(s3 + 64), u2 = ld(s3 + 128);
    __m512i s03 = _mm512_and_si512(u0, m6), n03 = _mm512_and_si512(u1, m6);
    __m512i s47 = _mm512_or_si512(_mm512_and_si512(u2, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), m2), 4));
    __m512i n47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), m4),
                                  _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), m2), 4));
    for (int j = 0; j < 4; j++) {
      sc[j] = byte_lane(s03, j), sc[j + 4] = byte_lane(s47, j);
      mn[j] = byte_lane(n03, j), mn[j + 4] = byte_lane(n47, j);
    }
    for (int q = 0; q < 4; q++) mnp[q] = pair16(mn[2 * q], mn[2 * q + 1]);
  } break;
  case ML_TYPE_Q3_K: { /* 16 signed 6-bit scales, ggml's aux[] decoding */
    const __m512i k1 = _mm512_set1_epi32(0x03030303), k2 = _mm512_set1_epi32(0x0F0F0F0F), b32 = _mm512_set1_epi32(32);
    const uint8_t *s3 = o + X16_Q3_K_SC;
    __m512i a0 = ld(s3), a1 = ld(s3 + 64), t = ld(s3 + 128), w4[4];
    w4[0] = _mm512_or_si512(_mm512_and_si512(a0, k2), _mm512_slli_epi32(_mm512_and_si512(t, k1), 4));
    w4[1] = _mm512_or_si512(_mm512_and_si512(a1, k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 2), k1), 4));
    w4[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a0, 4), k2),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 4), k1), 4));
    w4[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a1, 4), k2),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(t, 6), k1), 4));
    for (int j = 0; j < 16; j++) sc[j] = _mm512_sub_epi32(byte_lane(w4[j / 4], j % 4), b32);
    for (int q = 0; q < 8; q++) mnp[q] = _mm512_slli_epi16(pair16(sc[2 * q], sc[2 * q + 1]), 2); /* 4 sc */
  } break;
  case ML_TYPE_Q6_K:
    for (int j = 0; j < 16; j++) sc[j] = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(o + X16_Q6_K_SC + 16 * j)));
    for (int q = 0; q < 8; q++) mnp[q] = _mm512_slli_epi16(pair16(sc[2 * q], sc[2 * q + 1]), 5); /* 32 sc */
    break;
  default: /* q2_K: 4-bit scale | 4-bit min */
    for (int j = 0; j < 16; j++) {
      __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(o + X16_Q2_K_SC + 16 * j)));
      sc[j] = _mm512_and_si512(b, _mm512_set1_epi32(0xF));
      mn[j] = _mm512_srli_epi32(b, 4);
    }
    for (int q = 0; q < 8; q++) mnp[q] = pair16(mn[2 * q], mn[2 * q + 1]);
    break;
  }
}

/* K formats: the values of k-group g (< sub / 4) of sub-block j */
X16_AI __m512i kq_val(ml_type wt, const uint8_t *o, int j, int g) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  switch (wt) {
  case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: { /* sub-block 2c: low nibbles of chunk c, 2c + 1: high */
    __m512i x = ld(o + X16_QK_CHUNK(wt == ML_TYPE_Q5_K, j / 2) + 64 * g);
    __m512i v = j % 2 ? _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4) : _mm512_and_si512(x, lo4);
    if (wt == ML_TYPE_Q5_K) v = _mm512_mask_add_epi8(v, ld_mask64(o + X16_Q5_K_HB(j, g)), v, _mm512_set1_epi8(16));
    return v;
  }
  case ML_TYPE_Q6_K: { /* sub-block j = 8h + 2k + j', element 128h + 32k + 16j' + 4g + i */
    int h = j / 8, k = (j % 8) / 2, gg = 4 * (j % 2) + g;
    __m512i x = ld(o + X16_Q6_K_QL(h, k & 1, gg));
    __m512i qh = ld(o + X16_Q6_K_QH(h, gg));
    __m512i lo = k < 2 ? _mm512_and_si512(x, lo4) : _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
    /* bits 2k, 2k + 1 of qh to bits 4, 5 */
    __m512i hi = k <= 2 ? _mm512_slli_epi16(qh, 4 - 2 * k) : _mm512_srli_epi16(qh, 2 * k - 4);
    return _mm512_or_si512(lo, _mm512_and_si512(hi, _mm512_set1_epi8(0x30)));
  }
  case ML_TYPE_Q3_K: {
    int h = j / 8, k = (j % 8) / 2, gg = 4 * (j % 2) + g, sb = 4 * h + k; /* hmask bit, to bit 2 */
    __m512i x = ld(o + X16_Q3_K_Q(h, gg)), hm = ld(o + X16_Q3_K_HM(gg));
    __m512i hb = sb <= 2 ? _mm512_slli_epi16(hm, 2 - sb) : _mm512_srli_epi16(hm, sb - 2);
    return _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(x, 2 * k), _mm512_set1_epi8(3)),
                           _mm512_and_si512(hb, _mm512_set1_epi8(4)));
  }
  default: { /* q2_K */
    int h = j / 8, k = (j % 8) / 2, gg = 4 * (j % 2) + g;
    return _mm512_and_si512(_mm512_srli_epi16(ld(o + X16_Q2_K_Q + 512 * h + 64 * gg), 2 * k), _mm512_set1_epi8(3));
  }
  }
}

X16_AI int kq_sub(ml_type wt) { return wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K ? 32 : 16; }
X16_AI int kq_has_dmin(ml_type wt) { return wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K || wt == ML_TYPE_Q2_K; }

X16_AI void unpack_kq(ml_type wt, const uint8_t *o, uint8_t *u) {
  const int S = kq_sub(wt), J = 256 / S, G = S / 4;
  __m512i sc[16], mnp[8];
  __m512 d = ld_f16(o);
  _mm512_storeu_ps(u + UKQ_D, d);
  _mm512_storeu_ps(u + UKQ_DMIN, kq_has_dmin(wt) ? ld_f16(o + 32) : d);
  kq_scales(wt, o, sc, mnp);
  for (int j = 0; j < J; j++) st(u + UKQ_SC + 64 * j, sc[j]);
  for (int q = 0; q < J / 2; q++) st(u + (S == 16 ? UKQ_MN16 : UKQ_MN32) + 64 * q, mnp[q]);
  for (int j = 0; j < J; j++)
    for (int g = 0; g < G; g++) st(u + 64 * (G * j + g), kq_val(wt, o, j, g));
}

/* ---- micro-kernels: MR rows x NV tiles of 16 outputs over nb blocks; acc[m * NV + v].
 * u: unpacked weights of tile v at u + v us (bf16 / f16: the packed tiles); ap: the rows'
 * packed activations for the same blocks. Register budget (32 zmm): the 32-element
 * formats hold 2 MR NV accumulators, the K formats 3 MR NV, the float formats MR NV. */

X16_AI void micro_b32(const uint8_t *u, size_t us, int64_t nb, const uint8_t *ap, int off, int has_min, __m512 *acc,
                      const int MR, const int NV) {
  const size_t abb = (size_t)(has_min ? 44 : 40) * MR;
  for (int64_t b = 0; b < nb; b++, u += UB32_STRIDE, ap += abb) {
    const float *d = (const float *)(ap + 32 * MR), *fs = (const float *)(ap + 40 * MR);
    __m512i ia[24]; /* MR NV <= 24 used */
#pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
      __m512i init = off ? bcast32(ap + 36 * MR + 4 * m) : _mm512_setzero_si512();
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) ia[m * NV + v] = init;
    }
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++) {
      __m512i w[2];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) w[v] = ld(u + v * us + 64 * g);
#pragma GCC unroll 16
      for (int m = 0; m < MR; m++) {
        __m512i x = bcast32(ap + 4 * (g * MR + m));
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) ia[m * NV + v] = x16_dot4(ia[m * NV + v], w[v], x);
      }
    }
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      __m512 dw = _mm512_loadu_ps(u + v * us + UB32_D);
#pragma GCC unroll 16
      for (int m = 0; m < MR; m++)
        acc[m * NV + v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m * NV + v]), _mm512_mul_ps(dw, _mm512_set1_ps(d[m])),
                                          acc[m * NV + v]);
      if (has_min) {
        __m512 mw = _mm512_loadu_ps(u + v * us + UB32_M);
#pragma GCC unroll 16
        for (int m = 0; m < MR; m++) acc[m * NV + v] = _mm512_fmadd_ps(mw, _mm512_set1_ps(fs[m]), acc[m * NV + v]);
      }
    }
  }
}

X16_AI void micro_kq(const uint8_t *u, size_t us, int64_t nb, const uint8_t *ap, int sub, __m512 *acc, const int MR,
                     const int NV) {
  const int J = 256 / sub, G = sub / 4, stride = sub == 16 ? UKQ_STRIDE16 : UKQ_STRIDE32;
  const int mnoff = sub == 16 ? UKQ_MN16 : UKQ_MN32;
  const size_t abb = (size_t)(260 + 2 * J) * MR;
  for (int64_t b = 0; b < nb; b++, u += stride, ap += abb) {
    __m512i it[24];
#pragma GCC unroll 16
    for (int i = 0; i < MR * NV; i++) it[i] = _mm512_setzero_si512();
    for (int j = 0; j < J; j++) {
      __m512i t[24];
#pragma GCC unroll 16
      for (int i = 0; i < MR * NV; i++) t[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int g = 0; g < G; g++) {
        __m512i w[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) w[v] = ld(u + v * us + 64 * (G * j + g));
#pragma GCC unroll 16
        for (int m = 0; m < MR; m++) {
          __m512i x = bcast32(ap + 4 * ((G * j + g) * MR + m));
#pragma GCC unroll 2
          for (int v = 0; v < NV; v++) t[m * NV + v] = x16_dot4(t[m * NV + v], w[v], x);
        }
      }
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) {
        __m512i sc = ld(u + v * us + UKQ_SC + 64 * j);
#pragma GCC unroll 16
        for (int m = 0; m < MR; m++) it[m * NV + v] = _mm512_add_epi32(it[m * NV + v], _mm512_mullo_epi32(t[m * NV + v], sc));
      }
    }
    const float *da = (const float *)(ap + 256 * MR);
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      __m512 dw = _mm512_loadu_ps(u + v * us + UKQ_D), dm = _mm512_loadu_ps(u + v * us + UKQ_DMIN);
#pragma GCC unroll 16
      for (int m = 0; m < MR; m++) {
        __m512i im = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int q = 0; q < J / 2; q++)
          im = x16_dot2w(im, ld(u + v * us + mnoff + 64 * q), bcast32(ap + 260 * MR + 4 * (q * MR + m)));
        __m512 s = _mm512_set1_ps(da[m]);
        acc[m * NV + v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(it[m * NV + v]), _mm512_mul_ps(dw, s), acc[m * NV + v]);
        acc[m * NV + v] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dm, s), acc[m * NV + v]);
      }
    }
  }
}

/* GEMV micro-kernels: MR rows x one tile over nb packed blocks from o (bb bytes each), the
 * values unpacked in registers as they stream in (no store and reload through work). The
 * tiles are read in order. Whether software prefetch helps that stream depends on the CPU,
 * so the quantized streams prefetch ml_x16_prefetch bytes ahead into L2, a distance the
 * dispatcher sets per vendor (kernels.h): on the Xeon (model 207) the hardware prefetchers
 * alone kept one thread's stream at 64-80% of its read bandwidth and 4 KiB ahead brought it
 * to 91-98% (q4_0, q8_0, q4_K, q6_K); on Zen 4 4 KiB ahead cut one thread from 28-29 GB/s
 * (no prefetch, ~the thread's read bandwidth) to 18-21 GB/s (q8_0, q4_0, q4_K; 1 KiB about
 * even, 2-16 KiB and into L1 all slower). The bf16 / f16 streams keep a fixed 4 KiB (93-97%
 * of the read bandwidth on both). A prefetch never faults: past the end of a slice it only
 * touches bytes beyond. */
X16_AI void prefetch_at(const uint8_t *o, size_t bb, size_t ahead) {
  for (size_t i = 0; i < bb; i += 64) _mm_prefetch((const char *)o + ahead + i, _MM_HINT_T1);
}
X16_AI void prefetch_block(const uint8_t *o, size_t bb) { prefetch_at(o, bb, 4096); }
X16_AI void prefetch_quant(const uint8_t *o, size_t bb) {
  size_t ahead = (size_t)ml_x16_prefetch;
  if (ahead) prefetch_at(o, bb, ahead);
}

X16_AI void stream_b32(ml_type wt, const uint8_t *o, size_t bb, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR) {
  ml_x16_info in;
  x16_info(wt, &in);
  const size_t abb = (size_t)(in.has_min ? 44 : 40) * MR;
  for (int64_t b = 0; b < nb; b++, o += bb, ap += abb) {
    const float *d = (const float *)(ap + 32 * MR), *fs = (const float *)(ap + 40 * MR);
    __m512i w[8], ia[8];
    prefetch_quant(o, bb);
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) ia[m] = in.off ? bcast32(ap + 36 * MR + 4 * m) : _mm512_setzero_si512();
    if (X16_VNNI && (wt == ML_TYPE_Q4_0 || wt == ML_TYPE_Q4_1)) { /* (16 v x s8 pairs would saturate vpmaddubsw) */
      /* high nibbles kept in place (16 v): one op per vector, a second chain, >> 4 at the end */
      __m512i ih[8];
      const uint8_t *q = o + (wt == ML_TYPE_Q4_0 ? X16_Q4_0_Q : X16_Q4_1_Q);
#pragma GCC unroll 8
      for (int m = 0; m < MR; m++) ih[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int g = 0; g < 4; g++) {
        __m512i x = ld(q + 64 * g);
        __m512i lo = _mm512_and_si512(x, _mm512_set1_epi8(0x0F)), hi = _mm512_and_si512(x, _mm512_set1_epi8((char)0xF0));
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
          ia[m] = x16_dot4(ia[m], lo, bcast32(ap + 4 * (g * MR + m)));
          ih[m] = x16_dot4(ih[m], hi, bcast32(ap + 4 * ((g + 4) * MR + m)));
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; m++) ia[m] = _mm512_add_epi32(ia[m], _mm512_srai_epi32(ih[m], 4));
    } else {
      b32_vals(wt, o, w);
#pragma GCC unroll 8
      for (int g = 0; g < 8; g++)
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) ia[m] = x16_dot4(ia[m], w[g], bcast32(ap + 4 * (g * MR + m)));
    }
    __m512 dw = ld_f16(o), mw = in.has_min ? ld_f16(o + 32) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) {
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m]), _mm512_mul_ps(dw, _mm512_set1_ps(d[m])), acc[m]);
      if (in.has_min) acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(fs[m]), acc[m]);
    }
  }
}

X16_AI void stream_kq(ml_type wt, const uint8_t *o, size_t bb, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR) {
  const int S = kq_sub(wt), J = 256 / S, G = S / 4;
  const size_t abb = (size_t)(260 + 2 * J) * MR;
  for (int64_t b = 0; b < nb; b++, o += bb, ap += abb) {
    __m512i sc[16], mnp[8], it[8];
    prefetch_quant(o, bb);
    kq_scales(wt, o, sc, mnp);
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) it[m] = _mm512_setzero_si512();
    if (X16_VNNI && (wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K)) {
      /* sub-blocks 2c and 2c + 1 share their bytes: q4_K keeps the high nibbles in place
       * (16 v, >> 4 at the end); q5_K shifts them down to add the fifth bits */
      const int is5 = wt == ML_TYPE_Q5_K;
      for (int c = 0; c < 4; c++) {
        __m512i tl[8], th[8];
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) tl[m] = th[m] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
          __m512i x = ld(o + X16_QK_CHUNK(is5, c) + 64 * g);
          __m512i lo = _mm512_and_si512(x, _mm512_set1_epi8(0x0F)), hi = _mm512_and_si512(x, _mm512_set1_epi8((char)0xF0));
          if (is5) {
            const __m512i b16 = _mm512_set1_epi8(16);
            lo = _mm512_mask_add_epi8(lo, ld_mask64(o + X16_Q5_K_HB(2 * c, g)), lo, b16);
            hi = _mm512_srli_epi16(hi, 4);
            hi = _mm512_mask_add_epi8(hi, ld_mask64(o + X16_Q5_K_HB(2 * c + 1, g)), hi, b16);
          }
#pragma GCC unroll 8
          for (int m = 0; m < MR; m++) {
            tl[m] = x16_dot4(tl[m], lo, bcast32(ap + 4 * ((16 * c + g) * MR + m)));
            th[m] = x16_dot4(th[m], hi, bcast32(ap + 4 * ((16 * c + 8 + g) * MR + m)));
          }
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
          it[m] = _mm512_add_epi32(it[m], _mm512_add_epi32(_mm512_mullo_epi32(tl[m], sc[2 * c]),
                                                           _mm512_mullo_epi32(is5 ? th[m] : _mm512_srai_epi32(th[m], 4), sc[2 * c + 1])));
      }
    } else if (wt == ML_TYPE_Q3_K) {
      /* in storage order (half s, then h): sub-blocks j = 8h + 2k + s, k-groups 4s..4s+3;
       * unrolled, so the bit positions are constants: the generic loop below visiting j in
       * this order measured 12 GB/s against 17 (one thread) */
      for (int half = 0; half < 2; half++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
          for (int k = 0; k < 4; k++) {
            const int j = 8 * h + 2 * k + half;
            __m512i t[8];
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) t[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
              __m512i v = kq_val(wt, o, j, g);
#pragma GCC unroll 8
              for (int m = 0; m < MR; m++) t[m] = x16_dot4(t[m], v, bcast32(ap + 4 * ((4 * j + g) * MR + m)));
            }
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) it[m] = _mm512_add_epi32(it[m], _mm512_mullo_epi32(t[m], sc[j]));
          }
    } else if (wt == ML_TYPE_Q6_K) {
      /* in storage order: one 64-byte vector of low bits holds k-group g of sub-blocks ja
       * (low nibbles) and jb = ja + 4 (high nibbles); a high-bit vector serves four */
      for (int h = 0; h < 2; h++)
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++)
#pragma GCC unroll 2
          for (int kk = 0; kk < 2; kk++) {
            const int ja = 8 * h + 2 * kk + half, jb = ja + 4;
            __m512i ta[8], tb[8];
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) ta[m] = tb[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
              const int gg = 4 * half + g;
              __m512i x = ld(o + X16_Q6_K_QL(h, kk, gg));
              __m512i qh = ld(o + X16_Q6_K_QH(h, gg));
              const __m512i lo4 = _mm512_set1_epi8(0x0F), b45 = _mm512_set1_epi8(0x30);
              /* bits 2kk, 2kk + 1 of qh (sub-block ja) and 2kk + 4, 2kk + 5 (jb) to bits 4, 5 */
              __m512i va = _mm512_ternarylogic_epi32(_mm512_and_si512(x, lo4), _mm512_slli_epi16(qh, 4 - 2 * kk), b45, 0xF8);
              __m512i vb = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(x, 4), lo4),
                                                     _mm512_srli_epi16(qh, 2 * kk), b45, 0xF8);
#pragma GCC unroll 8
              for (int m = 0; m < MR; m++) {
                ta[m] = x16_dot4(ta[m], va, bcast32(ap + 4 * ((4 * ja + g) * MR + m)));
                tb[m] = x16_dot4(tb[m], vb, bcast32(ap + 4 * ((4 * jb + g) * MR + m)));
              }
            }
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++)
              it[m] = _mm512_add_epi32(it[m], _mm512_add_epi32(_mm512_mullo_epi32(ta[m], sc[ja]), _mm512_mullo_epi32(tb[m], sc[jb])));
          }
    } else {
      for (int j = 0; j < J; j++) {
        __m512i t[8];
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) t[m] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < G; g++) {
          __m512i v = kq_val(wt, o, j, g);
#pragma GCC unroll 8
          for (int m = 0; m < MR; m++) t[m] = x16_dot4(t[m], v, bcast32(ap + 4 * ((G * j + g) * MR + m)));
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) it[m] = _mm512_add_epi32(it[m], _mm512_mullo_epi32(t[m], sc[j]));
      }
    }
    const float *da = (const float *)(ap + 256 * MR);
    __m512 dw = ld_f16(o), dm = kq_has_dmin(wt) ? ld_f16(o + 32) : dw;
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) {
      __m512i im = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int q = 0; q < J / 2; q++) im = x16_dot2w(im, mnp[q], bcast32(ap + 260 * MR + 4 * (q * MR + m)));
      __m512 s = _mm512_set1_ps(da[m]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(it[m]), _mm512_mul_ps(dw, s), acc[m]);
      acc[m] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(im), _mm512_mul_ps(dm, s), acc[m]);
    }
  }
}

/* bf16 / f16: the packed tiles read as is, blocks of 32 elements */
X16_AI void micro_bf16(const uint8_t *tile, size_t us, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR,
                       const int NV) {
  const int ab = X16_BF16_F32 ? 8 : 4;
  for (int64_t kp = 0; kp < 16 * nb; kp++, tile += 64, ap += ab * MR) {
    __m512i w[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) w[v] = ld(tile + v * us);
#pragma GCC unroll 16
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[m * NV + v] = x16_bf16(acc[m * NV + v], w[v], ap + ab * m);
  }
}

/* The GEMVs' four accumulator chains per row: chain 0 starts from acc, the others from
 * zero, and their sum goes back to acc (four chains hide the FMA latency at M = 1). */
X16_AI void chains_open(__m512 a[4][8], const __m512 *acc, const int MR) {
#pragma GCC unroll 8
  for (int m = 0; m < MR; m++) a[0][m] = acc[m], a[1][m] = a[2][m] = a[3][m] = _mm512_setzero_ps();
}

X16_AI void chains_close(__m512 a[4][8], __m512 *acc, const int MR) {
#pragma GCC unroll 8
  for (int m = 0; m < MR; m++) acc[m] = _mm512_add_ps(_mm512_add_ps(a[0][m], a[1][m]), _mm512_add_ps(a[2][m], a[3][m]));
}

/* GEMV, bf16: MR rows x one tile, as micro_bf16 with NV = 1 but four accumulator chains
 * per row (one chain of vdpbf16ps held one thread at 78% of its read bandwidth, 100% with
 * these and the prefetch) */
X16_AI void stream_bf16(const uint8_t *tile, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR) {
  const int ab = X16_BF16_F32 ? 8 : 4;
  __m512 a[4][8];
  chains_open(a, acc, MR);
  for (int64_t kp = 0; kp < 16 * nb; kp += 4, tile += 256, ap += 4 * ab * MR) {
    prefetch_block(tile, 256);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
      __m512i w = ld(tile + 64 * i);
#pragma GCC unroll 8
      for (int m = 0; m < MR; m++) a[i][m] = x16_bf16(a[i][m], w, ap + ab * (i * MR + m));
    }
  }
  chains_close(a, acc, MR);
}

X16_AI void micro_f16(const uint8_t *tile, size_t us, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR,
                      const int NV) {
  for (int64_t k = 0; k < 32 * nb; k++, tile += 32, ap += 4 * MR) {
    __m512 w[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) w[v] = ld_f16(tile + v * us);
#pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
      __m512 x = _mm512_set1_ps(((const float *)ap)[m]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[m * NV + v] = _mm512_fmadd_ps(w[v], x, acc[m * NV + v]);
    }
  }
}

/* GEMV, f16: as micro_f16 with NV = 1, four accumulator chains per row, prefetching */
X16_AI void stream_f16(const uint8_t *tile, int64_t nb, const uint8_t *ap, __m512 *acc, const int MR) {
  __m512 a[4][8];
  chains_open(a, acc, MR);
  for (int64_t k = 0; k < 32 * nb; k += 8, tile += 256, ap += 32 * MR) {
    prefetch_block(tile, 256);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
      __m512 w = ld_f16(tile + 32 * i);
#pragma GCC unroll 8
      for (int m = 0; m < MR; m++)
        a[i % 4][m] = _mm512_fmadd_ps(w, _mm512_set1_ps(((const float *)ap)[i * MR + m]), a[i % 4][m]);
    }
  }
  chains_close(a, acc, MR);
}

/* ---- drivers ---- */

/* work: [0, X16_WORK_U) unpacked weights (two tiles' chunks), then packed activations */
#define X16_WORK_U ML_X16_WORK_U

X16_AI int packed_only(const x16_ctx *c) { return c->in.kind == ML_X16_BF16 || c->in.kind == ML_X16_F16; }

X16_AI void unpack_blocks(const x16_ctx *c, const uint8_t *tile, int64_t b0, int64_t b1, uint8_t *u) {
  for (int64_t b = b0; b < b1; b++, u += c->ustride) {
    const uint8_t *o = tile + (size_t)b * c->bb;
    if (c->in.kind == ML_X16_B32) unpack_b32(c->wt, o, u);
    else unpack_kq(c->wt, o, u);
  }
}

X16_AI __mmask16 tile_mask(const ml_packed_args *p, int64_t t) {
  int64_t left = p->N - t * ML_X16;
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* A register block of MR rows (the first r of them real) x NV tiles from t over blocks
 * [b0, b1): u holds them unpacked (tile v at u + v us), ap the rows' activations; y is
 * added to when b0 > 0. */
X16_AI void run_rows(ml_type wt, const ml_packed_args *p, int64_t t, const uint8_t *u, size_t us,
                     int64_t b0, int64_t b1, const uint8_t *ap, int64_t m0, int r, const int MR, const int NV) {
  x16_ctx cc, *c = &cc; /* the type's constants only (no panel layout needed here) */
  x16_info(wt, &cc.in);
  __m512 acc[24];
#pragma GCC unroll 16
  for (int m = 0; m < MR; m++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++)
      acc[m * NV + v] = b0 > 0 && m < r ? _mm512_maskz_loadu_ps(tile_mask(p, t + v), p->y + (m0 + m) * p->ldy + (t + v) * ML_X16)
                                        : _mm512_setzero_ps();
  const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
  switch (c->in.kind) {
  case ML_X16_B32: micro_b32(u, us, b1 - b0, ap, c->in.off, c->in.has_min, acc, MR, NV); break;
  case ML_X16_KQ: micro_kq(u, us, b1 - b0, ap, c->in.sub, acc, MR, NV); break;
  case ML_X16_BF16: micro_bf16(tile + (size_t)b0 * X16_BF16_BYTES, p->tile_bytes, b1 - b0, ap, acc, MR, NV); break;
  default: micro_f16(tile + (size_t)b0 * X16_F16_BYTES, p->tile_bytes, b1 - b0, ap, acc, MR, NV); break;
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; m++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++)
      if (m < r) _mm512_mask_storeu_ps(p->y + (m0 + m) * p->ldy + (t + v) * ML_X16, tile_mask(p, t + v), acc[m * NV + v]);
}

/* GEMV: passes of up to 8 rows (1, 2, 4 or 8 in registers), their activations packed
 * once; each tile streams once through the registers. */
X16_AI void gemv_pass(const x16_ctx *c, const ml_packed_args *p, int64_t t0, int64_t t1, uint8_t *work, int64_t m0,
                      int r, const int MR) {
  uint8_t *ap = work + X16_WORK_U;
  apack(c, p, m0, MR, r, 0, c->nb, ap);
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
    __m512 acc[8];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
    switch (c->in.kind) {
    case ML_X16_B32: stream_b32(c->wt, tile, c->bb, c->nb, ap, acc, MR); break;
    case ML_X16_KQ: stream_kq(c->wt, tile, c->bb, c->nb, ap, acc, MR); break;
    case ML_X16_BF16: stream_bf16(tile, c->nb, ap, acc, MR); break;
    default: stream_f16(tile, c->nb, ap, acc, MR); break;
    }
#pragma GCC unroll 8
    for (int m = 0; m < r; m++)
      _mm512_mask_storeu_ps(p->y + (m0 + m) * p->ldy + t * ML_X16, tile_mask(p, t), acc[m]);
  }
}

X16_AI void gemv_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  if (t0 >= t1) return;
  for (int64_t m0 = 0; m0 < p->M; m0 += 8) {
    int r = p->M - m0 < 8 ? (int)(p->M - m0) : 8;
    if (r == 1) gemv_pass(&c, p, t0, t1, work, m0, r, 1);
    else if (r == 2) gemv_pass(&c, p, t0, t1, work, m0, r, 2);
    else if (r <= 4) gemv_pass(&c, p, t0, t1, work, m0, r, 4);
    else gemv_pass(&c, p, t0, t1, work, m0, r, 8);
  }
}

/* GEMM: cache blocking. A chunk of K (kcb blocks) of two tiles, unpacked (<= 24 KB, L1),
 * runs over a chunk of activation rows packed for that K range (<= X16_L2_ACT, L2) in
 * register blocks of MR rows (the last one padded with zero rows); partial sums go through
 * y between K chunks (y stays in L3). The register block is a function of its own per type
 * (X16_ENTRY), so that its registers are allocated apart from the drivers'. */
#define X16_L2_ACT (384 << 10)

typedef void (*x16_rows_fn)(const ml_packed_args *p, int64_t t, const uint8_t *u, size_t us, int64_t b0, int64_t b1,
                            const uint8_t *ap, int64_t m0, int r);

X16_AI void gemm_tiles(const x16_ctx *c, const ml_packed_args *p, int64_t t, uint8_t *u, int64_t b0, int64_t b1,
                       const uint8_t *ap, int64_t mc0, int64_t mc1, x16_rows_fn rows, const int MR, const int NV) {
  size_t us = packed_only(c) ? 0 : c->ustride * (size_t)(b1 - b0);
  for (int v = 0; v < NV && !packed_only(c); v++)
    unpack_blocks(c, (const uint8_t *)p->w + (size_t)(t + v) * p->tile_bytes, b0, b1, u + v * us);
  size_t abb = ablock_bytes(c, MR) * (size_t)(b1 - b0);
  for (int64_t m0 = mc0; m0 < mc1; m0 += MR, ap += abb) rows(p, t, u, us, b0, b1, ap, m0, mc1 - m0 < MR ? (int)(mc1 - m0) : MR);
}

X16_AI void gemm_x16(const ml_packed_args *p, void *work, int ith, int nth, ml_type wt, x16_rows_fn rows2,
                     x16_rows_fn rows1, const int MR) {
  x16_ctx c;
  ctx_init(&c, p, wt);
  int64_t t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  if (t0 >= t1) return;
  uint8_t *u = work, *ap = (uint8_t *)work + X16_WORK_U;
  int64_t kcb = c.in.kind == ML_X16_KQ ? 2 : 16; /* blocks per K chunk: two tiles in L1 */
  /* chunks of even size: K = 576 (SmolLM) in 9 + 9 blocks, not 16 + 2, whose second pass
   * over the rows (activations packed again, y read and written) bought 2 blocks of work */
  kcb = (c.nb + (c.nb + kcb - 1) / kcb - 1) / ((c.nb + kcb - 1) / kcb);
  int64_t mc = X16_L2_ACT / ((int64_t)ablock_bytes(&c, 1) * kcb) / MR * MR;
  if (mc < MR) mc = MR;
  for (int64_t mc0 = 0; mc0 < p->M; mc0 += mc) {
    int64_t mc1 = mc0 + mc < p->M ? mc0 + mc : p->M;
    for (int64_t b0 = 0; b0 < c.nb; b0 += kcb) {
      int64_t b1 = b0 + kcb < c.nb ? b0 + kcb : c.nb;
      size_t abb = ablock_bytes(&c, MR) * (size_t)(b1 - b0);
      uint8_t *a = ap;
      for (int64_t m0 = mc0; m0 < mc1; m0 += MR, a += abb)
        apack(&c, p, m0, MR, mc1 - m0 < MR ? (int)(mc1 - m0) : MR, b0, b1, a);
      int64_t t = t0;
      for (; t + 2 <= t1; t += 2) gemm_tiles(&c, p, t, u, b0, b1, ap, mc0, mc1, rows2, MR, 2);
      if (t < t1) gemm_tiles(&c, p, t, u, b0, b1, ap, mc0, mc1, rows1, MR, 1);
    }
  }
}

/* One GEMV and one GEMM entry point per type; the GEMM's MR (rows per register block,
 * with two tiles) by the register budget of its micro-kernel. */
#define X16_ENTRY(name, type, mr)                                                                          \
  __attribute__((noinline, unused)) static void rows2_##name(const ml_packed_args *p, int64_t t, const uint8_t *u,  \
                                                             size_t us, int64_t b0, int64_t b1, const uint8_t *ap, \
                                                             int64_t m0, int r) {                                  \
    run_rows(type, p, t, u, us, b0, b1, ap, m0, r, mr, 2);                                                         \
  }                                                                                                                \
  __attribute__((noinline, unused)) static void rows1_##name(const ml_packed_args *p, int64_t t, const uint8_t *u,  \
                                                             size_t us, int64_t b0, int64_t b1, const uint8_t *ap, \
                                                             int64_t m0, int r) {                                  \
    run_rows(type, p, t, u, us, b0, b1, ap, m0, r, mr, 1);                                                         \
  }                                                                                                                \
  __attribute__((unused)) static void gemv_##name(const ml_packed_args *p, void *w, int ith, int nth) {            \
    gemv_x16(p, w, ith, nth, type);                                                                                \
  }                                                                                                                \
  __attribute__((unused)) static void gemm_##name(const ml_packed_args *p, void *w, int ith, int nth) {            \
    gemm_x16(p, w, ith, nth, type, rows2_##name, rows1_##name, mr);                                                \
  }

#if X16_VNNI
X16_ENTRY(q8_0, ML_TYPE_Q8_0, 6)
#endif
X16_ENTRY(q4_0, ML_TYPE_Q4_0, 6)
X16_ENTRY(q4_1, ML_TYPE_Q4_1, 6)
X16_ENTRY(q5_0, ML_TYPE_Q5_0, 6)
X16_ENTRY(q5_1, ML_TYPE_Q5_1, 6)
X16_ENTRY(q2_K, ML_TYPE_Q2_K, 4)
X16_ENTRY(q3_K, ML_TYPE_Q3_K, 4)
X16_ENTRY(q4_K, ML_TYPE_Q4_K, 4)
X16_ENTRY(q5_K, ML_TYPE_Q5_K, 4)
X16_ENTRY(q6_K, ML_TYPE_Q6_K, 4)
X16_ENTRY(bf16, ML_TYPE_BF16, 12)
X16_ENTRY(f16, ML_TYPE_F16, 12)

#undef X16_ENTRY

#endif
