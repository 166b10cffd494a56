/* pack.c: the x16 packed weight layout (kernels.h, x16.h) and the activation panels, in
 * portable C, for every level. Packing rearranges bytes and never rounds, so a packed
 * weight computes exactly what the original does; ml_x16_unpack is the plain reading of
 * the layout that the AMX kernels (real and emulated) and the tests use.
 */
#include <math.h>
#include <string.h>

#include "../common.h"
#include "../quant.h"
#include "kernels.h"
#include "x16.h"

int ml_x16_info_get(ml_type wt, ml_x16_info *in) {
  ml_x16_info z = {ML_X16_NONE, 0, 0, 0, 0};
  *in = z;
  switch (wt) {
  case ML_TYPE_Q8_0: in->kind = ML_X16_B32, in->off = 128; break;
  case ML_TYPE_Q4_0: in->kind = ML_X16_B32, in->off = 8; break;
  case ML_TYPE_Q5_0: in->kind = ML_X16_B32, in->off = 16; break;
  case ML_TYPE_Q4_1: case ML_TYPE_Q5_1: in->kind = ML_X16_B32, in->has_min = 1; break;
  case ML_TYPE_Q2_K: case ML_TYPE_Q3_K: case ML_TYPE_Q6_K: in->kind = ML_X16_KQ, in->sub = 16; break;
  case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: in->kind = ML_X16_KQ, in->sub = 32; break;
  case ML_TYPE_BF16: in->kind = ML_X16_BF16; break;
  case ML_TYPE_F16: in->kind = ML_X16_F16; break;
  default: return -1;
  }
  in->blck = in->kind == ML_X16_KQ ? ML_QK_K : 32;
  return 0;
}

/* bytes of one packed block (16 rows x one block of blck elements) */
static size_t block_bytes(ml_type wt, int blck) {
  if (wt == ML_TYPE_Q6_K) return X16_Q6_K_BYTES;
  if (wt == ML_TYPE_Q3_K) return X16_Q3_K_BYTES;
  return ML_X16 * ml_type_nbytes(wt, blck);
}

size_t ml_x16_tile_bytes(ml_type wt, int64_t K) {
  ml_x16_info in;
  if (ml_x16_info_get(wt, &in) < 0 || K <= 0 || K % in.blck) return 0;
  return (size_t)(K / in.blck) * block_bytes(wt, in.blck);
}

/* ---- packing ---- */

static const uint8_t zero_block[512]; /* stands in for the rows past N */

static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* 16 bytes of nibbles (or any 16 bytes) as q[4 g][16 r][4 i] */
static void put_q16(uint8_t *q, int r, const uint8_t *qs) {
  for (int g = 0; g < 4; g++) memcpy(q + 64 * g + 4 * r, qs + 4 * g, 4);
}
/* 32 bytes as q[8 g][16 r][4 i] */
static void put_q32(uint8_t *q, int r, const uint8_t *qs) {
  for (int g = 0; g < 8; g++) memcpy(q + 64 * g + 4 * r, qs + 4 * g, 4);
}
/* the 32 high bits of a q5 block (bit e = element e) as hb[8 g] bit 4r+i */
static void put_hb(uint8_t *hb, int r, const uint8_t qh[4]) {
  uint32_t bits = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
  for (int g = 0; g < 8; g++) {
    uint64_t v = get_u64(hb + 8 * g);
    v |= (uint64_t)((bits >> (4 * g)) & 0xF) << (4 * r);
    put_u64(hb + 8 * g, v);
  }
}

/* block b of the 16 rows (bsz bytes per source block) into the bb bytes at o */
static void pack_block(ml_type wt, const uint8_t *const rows[ML_X16], size_t bsz, size_t bb, int64_t b, uint8_t *o) {
  memset(o, 0, bb);
  for (int r = 0; r < ML_X16; r++) {
    const uint8_t *x = rows[r] ? rows[r] + (size_t)b * bsz : zero_block;
    switch (wt) {
    case ML_TYPE_Q8_0: {
      const ml_block_q8_0 *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      put_q32(o + X16_Q8_0_Q, r, (const uint8_t *)s->qs);
    } break;
    case ML_TYPE_Q4_0: {
      const ml_block_q4_0 *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      put_q16(o + X16_Q4_0_Q, r, s->qs);
    } break;
    case ML_TYPE_Q4_1: {
      const ml_block_q4_1 *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      memcpy(o + X16_Q4_1_M + 2 * r, &s->m, 2);
      put_q16(o + X16_Q4_1_Q, r, s->qs);
    } break;
    case ML_TYPE_Q5_0: {
      const ml_block_q5_0 *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      put_hb(o + X16_Q5_0_HB, r, s->qh);
      put_q16(o + X16_Q5_0_Q, r, s->qs);
    } break;
    case ML_TYPE_Q5_1: {
      const ml_block_q5_1 *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      memcpy(o + X16_Q5_1_M + 2 * r, &s->m, 2);
      put_hb(o + X16_Q5_1_HB, r, s->qh);
      put_q16(o + X16_Q5_1_Q, r, s->qs);
    } break;
    case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: {
      const ml_block_q4_K *s4 = (const void *)x;
      const ml_block_q5_K *s5 = (const void *)x;
      int is5 = wt == ML_TYPE_Q5_K;
      memcpy(o + 2 * r, is5 ? &s5->d : &s4->d, 2);
      memcpy(o + X16_Q4_K_DMIN + 2 * r, is5 ? &s5->dmin : &s4->dmin, 2);
      const uint8_t *sc = is5 ? s5->scales : s4->scales, *qs = is5 ? s5->qs : s4->qs;
      for (int j = 0; j < 3; j++) memcpy(o + X16_Q4_K_SC + 64 * j + 4 * r, sc + 4 * j, 4);
      for (int c = 0; c < 4; c++) put_q32(o + X16_QK_CHUNK(is5, c), r, qs + 32 * c);
      if (is5)
        for (int j = 0; j < 8; j++)
          for (int g = 0; g < 8; g++) {
            uint8_t *hb = o + X16_Q5_K_HB(j, g);
            uint64_t v = get_u64(hb);
            for (int i = 0; i < 4; i++) v |= (uint64_t)((s5->qh[4 * g + i] >> j) & 1) << (4 * r + i);
            put_u64(hb, v);
          }
    } break;
    case ML_TYPE_Q6_K: {
      const ml_block_q6_K *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      for (int j = 0; j < 16; j++) o[X16_Q6_K_SC + 16 * j + r] = (uint8_t)s->scales[j];
      for (int h = 0; h < 2; h++) {
        for (int s4 = 0; s4 < 2; s4++) {
          for (int kk = 0; kk < 2; kk++) put_q16(o + X16_Q6_K_QL(h, kk, 4 * s4), r, s->ql + 64 * h + 32 * kk + 16 * s4);
          put_q16(o + X16_Q6_K_QH(h, 4 * s4), r, s->qh + 32 * h + 16 * s4);
        }
      }
    } break;
    case ML_TYPE_Q3_K: {
      const ml_block_q3_K *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      for (int j = 0; j < 3; j++) memcpy(o + X16_Q3_K_SC + 64 * j + 4 * r, s->scales + 4 * j, 4);
      for (int s4 = 0; s4 < 2; s4++) {
        for (int h = 0; h < 2; h++) put_q16(o + X16_Q3_K_Q(h, 4 * s4), r, s->qs + 32 * h + 16 * s4);
        put_q16(o + X16_Q3_K_HM(4 * s4), r, s->hmask + 16 * s4);
      }
    } break;
    case ML_TYPE_Q2_K: {
      const ml_block_q2_K *s = (const void *)x;
      memcpy(o + 2 * r, &s->d, 2);
      memcpy(o + X16_Q2_K_DMIN + 2 * r, &s->dmin, 2);
      for (int j = 0; j < 16; j++) o[X16_Q2_K_SC + 16 * j + r] = s->scales[j];
      for (int h = 0; h < 2; h++) put_q32(o + X16_Q2_K_Q + 512 * h, r, s->qs + 32 * h);
    } break;
    case ML_TYPE_BF16:
      for (int kp = 0; kp < 16; kp++) memcpy(o + 64 * kp + 4 * r, x + 4 * kp, 4);
      break;
    case ML_TYPE_F16:
      for (int k = 0; k < 32; k++) memcpy(o + 32 * k + 2 * r, x + 2 * k, 2);
      break;
    default: break;
    }
  }
}

void ml_x16_pack(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, void *dst,
                 int64_t t0, int64_t t1) {
  ml_x16_info in;
  if (ml_x16_info_get(wt, &in) < 0) return;
  int64_t nb = K / in.blck;
  size_t bb = block_bytes(wt, in.blck), bsz = ml_type_nbytes(wt, in.blck);
  size_t tile = (size_t)nb * bb;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *rows[ML_X16];
    for (int r = 0; r < ML_X16; r++) {
      int64_t n = t * ML_X16 + r;
      rows[r] = n < N ? (const uint8_t *)w + (size_t)n * w_row_bytes : NULL;
    }
    uint8_t *o = (uint8_t *)dst + (size_t)t * tile;
    for (int64_t b = 0; b < nb; b++) pack_block(wt, rows, bsz, bb, b, o + (size_t)b * bb);
  }
}

/* ---- unpacking (plain C) ---- */

static float h16(const uint8_t *p) {
  ml_fp16 h;
  memcpy(&h, p, 2);
  return ml_fp16_to_f32(h);
}

/* the low (hi = 0) or high nibble of byte (g, r, i) of a q[.][16][4] array */
static int nib(const uint8_t *q, int g, int r, int i, int hi) {
  uint8_t v = q[64 * g + 4 * r + i];
  return hi ? v >> 4 : v & 0xF;
}

/* the 12 scale bytes of row r from sc[3][16] u32 */
static void scales12(const uint8_t *sc, int r, uint8_t out[12]) {
  for (int j = 0; j < 3; j++) memcpy(out + 4 * j, sc + 64 * j + 4 * r, 4);
}

static void unpack_b32(ml_type wt, const uint8_t *o, ml_x16_block *u) {
  const uint8_t *q = o + X16_Q4_0_Q, *hb = NULL, *m = NULL;
  if (wt == ML_TYPE_Q4_1) m = o + X16_Q4_1_M, q = o + X16_Q4_1_Q;
  if (wt == ML_TYPE_Q5_0) hb = o + X16_Q5_0_HB, q = o + X16_Q5_0_Q;
  if (wt == ML_TYPE_Q5_1) m = o + X16_Q5_1_M, hb = o + X16_Q5_1_HB, q = o + X16_Q5_1_Q;
  for (int r = 0; r < ML_X16; r++) {
    u->d[r] = h16(o + 2 * r);
    u->m[r] = m ? h16(m + 2 * r) : 0.0f;
    for (int e = 0; e < 32; e++) {
      int g = e / 4, i = e % 4, v;
      if (wt == ML_TYPE_Q8_0) {
        v = (int)(int8_t)o[X16_Q8_0_Q + 64 * g + 4 * r + i] + 128;
      } else {
        v = nib(q, g % 4, r, i, g >= 4);
        if (hb) v |= (int)((get_u64(hb + 8 * g) >> (4 * r + i)) & 1) << 4;
      }
      u->v[r][e] = (uint8_t)v;
    }
  }
}

static void unpack_kq(ml_type wt, const uint8_t *o, ml_x16_block *u) {
  for (int r = 0; r < ML_X16; r++) {
    u->d[r] = h16(o + 2 * r);
    u->m[r] = wt == ML_TYPE_Q4_K || wt == ML_TYPE_Q5_K || wt == ML_TYPE_Q2_K ? h16(o + 32 + 2 * r) : u->d[r];
    uint8_t s12[12];
    int8_t s3[16];
    switch (wt) {
    case ML_TYPE_Q4_K: case ML_TYPE_Q5_K: {
      scales12(o + X16_Q4_K_SC, r, s12);
      for (int j = 0; j < 8; j++) {
        uint8_t sc, mn;
        ml_q4k_scale_min(s12, j, &sc, &mn);
        u->sc[j][r] = sc;
        u->mn[j][r] = mn;
        for (int l = 0; l < 32; l++) {
          int v = nib(o + X16_QK_CHUNK(wt == ML_TYPE_Q5_K, j / 2), l / 4, r, l % 4, j % 2);
          if (wt == ML_TYPE_Q5_K) v |= (int)((get_u64(o + X16_Q5_K_HB(j, l / 4)) >> (4 * r + l % 4)) & 1) << 4;
          u->v[r][32 * j + l] = (uint8_t)v;
        }
      }
    } break;
    case ML_TYPE_Q6_K:
      for (int j = 0; j < 16; j++) {
        u->sc[j][r] = (int8_t)o[X16_Q6_K_SC + 16 * j + r];
        u->mn[j][r] = 32 * u->sc[j][r];
      }
      for (int e = 0; e < 256; e++) {
        int h = e / 128, k = (e / 32) % 4, l = e % 32, g = l / 4, i = l % 4;
        int lo = nib(o + X16_Q6_K_QL(h, k & 1, g), 0, r, i, k >= 2);
        int hi = (o[X16_Q6_K_QH(h, g) + 4 * r + i] >> (2 * k)) & 3;
        u->v[r][e] = (uint8_t)(lo | hi << 4);
      }
      break;
    case ML_TYPE_Q3_K:
      scales12(o + X16_Q3_K_SC, r, s12);
      ml_q3k_scales(s12, s3);
      for (int j = 0; j < 16; j++) {
        u->sc[j][r] = s3[j];
        u->mn[j][r] = 4 * s3[j];
      }
      for (int e = 0; e < 256; e++) {
        int h = e / 128, k = (e / 32) % 4, l = e % 32, g = l / 4, i = l % 4;
        int q2 = (o[X16_Q3_K_Q(h, g) + 4 * r + i] >> (2 * k)) & 3;
        int hb = (o[X16_Q3_K_HM(g) + 4 * r + i] >> (4 * h + k)) & 1;
        u->v[r][e] = (uint8_t)(q2 | hb << 2);
      }
      break;
    case ML_TYPE_Q2_K:
      for (int j = 0; j < 16; j++) {
        uint8_t s = o[X16_Q2_K_SC + 16 * j + r];
        u->sc[j][r] = s & 0xF;
        u->mn[j][r] = s >> 4;
      }
      for (int e = 0; e < 256; e++) {
        int h = e / 128, k = (e / 32) % 4, l = e % 32, g = l / 4, i = l % 4;
        u->v[r][e] = (uint8_t)((o[X16_Q2_K_Q + 512 * h + 64 * g + 4 * r + i] >> (2 * k)) & 3);
      }
      break;
    default: break;
    }
  }
}

void ml_x16_unpack(ml_type wt, const void *tile, int64_t b, ml_x16_block *u) {
  ml_x16_info in;
  if (ml_x16_info_get(wt, &in) < 0) return;
  const uint8_t *o = (const uint8_t *)tile + (size_t)b * block_bytes(wt, in.blck);
  switch (in.kind) {
  case ML_X16_B32: unpack_b32(wt, o, u); break;
  case ML_X16_KQ: unpack_kq(wt, o, u); break;
  case ML_X16_BF16:
    for (int r = 0; r < ML_X16; r++)
      for (int k = 0; k < 32; k++) {
        ml_bf16 h;
        memcpy(&h, o + 64 * (k / 2) + 4 * r + 2 * (k % 2), 2);
        u->f[r][k] = ml_bf16_to_f32(h);
      }
    break;
  case ML_X16_F16:
    for (int r = 0; r < ML_X16; r++)
      for (int k = 0; k < 32; k++) u->f[r][k] = h16(o + 32 * k + 2 * r);
    break;
  default: break;
  }
}

/* the value of row r, element e of an unpacked block (double: exact for every format) */
static double unpacked_value(const ml_x16_info *in, const ml_x16_block *u, int r, int e) {
  switch (in->kind) {
  case ML_X16_B32: return (double)u->d[r] * (u->v[r][e] - in->off) + u->m[r];
  case ML_X16_KQ: {
    int j = e / in->sub;
    return (double)u->d[r] * u->sc[j][r] * u->v[r][e] - (double)u->m[r] * u->mn[j][r];
  }
  default: return u->f[r][e];
  }
}

int ml_x16_selfcheck(ml_type wt, const void *w, int64_t N, int64_t K, double *maxdiff) {
  ml_x16_info in;
  size_t tb = ml_x16_tile_bytes(wt, K), rb = ml_type_nbytes(wt, K);
  if (!tb || N <= 0 || ml_x16_info_get(wt, &in) < 0) return 0;
  int64_t tiles = (N + ML_X16 - 1) / ML_X16;
  uint8_t *packed = ml_alloc(tb * (size_t)tiles);
  float *row = ml_alloc((size_t)K * sizeof(float));
  ml_x16_block *u = ml_alloc(sizeof *u);
  if (!packed || !row || !u) {
    ml_free(packed), ml_free(row), ml_free(u);
    return -1;
  }
  ml_x16_pack(wt, w, rb, N, K, packed, 0, tiles);
  double md = 0.0;
  for (int64_t n = 0; n < N; n++) {
    ml_type_traits_get(wt)->to_float((const uint8_t *)w + (size_t)n * rb, row, K);
    for (int64_t b = 0; b < K / in.blck; b++) {
      ml_x16_unpack(wt, packed + (size_t)(n / ML_X16) * tb, b, u);
      for (int e = 0; e < in.blck; e++) {
        double d = fabs(unpacked_value(&in, u, (int)(n % ML_X16), e) - row[b * in.blck + e]);
        if (!(d <= md)) md = d; /* NaN stays */
      }
    }
  }
  ml_free(packed), ml_free(row), ml_free(u);
  *maxdiff = md;
  return 1;
}

/* ---- activation panels ---- */

static int64_t part(size_t *off, size_t bytes) {
  int64_t at = (int64_t)*off;
  *off += (bytes + 63) & ~(size_t)63;
  return at;
}

int ml_panel_layout(ml_type wt, int64_t K, ml_panel *pl) {
  ml_x16_info in;
  if (ml_x16_info_get(wt, &in) < 0 || K <= 0 || K % in.blck) return -1;
  ml_panel z = {-1, -1, -1, -1, -1, -1, -1, -1, 0};
  *pl = z;
  size_t off = 0, k = (size_t)K;
  switch (in.kind) {
  case ML_X16_B32:
    pl->qs = part(&off, k);
    pl->d = part(&off, k / 32 * 4);
    pl->isum = part(&off, k / 32 * 4);
    if (in.has_min) pl->fsum = part(&off, k / 32 * 4);
    break;
  case ML_X16_KQ:
    pl->qs = part(&off, k);
    pl->d = part(&off, k / 256 * 4);
    pl->bs16 = part(&off, k / 16 * 2);
    pl->bs32 = part(&off, k / 32 * 2);
    break;
  case ML_X16_BF16:
    pl->bf16 = part(&off, k * 2);
    break;
  default:
    pl->f32 = part(&off, k * 4);
    break;
  }
  pl->row_bytes = off;
  return 0;
}

void ml_panel_fill(ml_type wt, const void *raw, int64_t K, void *row) {
  ml_panel pl;
  if (ml_panel_layout(wt, K, &pl) < 0) return;
  uint8_t *o = row;
  if (pl.qs >= 0 && pl.isum >= 0) { /* q8_0 or q8_1 */
    int8_t *qs = (int8_t *)(o + pl.qs);
    float *d = (float *)(o + pl.d), *fs = pl.fsum >= 0 ? (float *)(o + pl.fsum) : NULL;
    int32_t *is = (int32_t *)(o + pl.isum);
    for (int64_t b = 0; b < K / 32; b++) {
      const int8_t *q;
      if (fs) {
        const ml_block_q8_1 *y = (const ml_block_q8_1 *)raw + b;
        q = y->qs, d[b] = ml_fp16_to_f32(y->d), fs[b] = ml_fp16_to_f32(y->s);
      } else {
        const ml_block_q8_0 *y = (const ml_block_q8_0 *)raw + b;
        q = y->qs, d[b] = ml_fp16_to_f32(y->d);
      }
      int sum = 0;
      for (int j = 0; j < 32; j++) sum += q[j];
      is[b] = sum;
      memcpy(qs + 32 * b, q, 32);
    }
  } else if (pl.qs >= 0) { /* q8_K */
    int8_t *qs = (int8_t *)(o + pl.qs);
    float *d = (float *)(o + pl.d);
    int16_t *b16 = (int16_t *)(o + pl.bs16), *b32 = (int16_t *)(o + pl.bs32);
    for (int64_t b = 0; b < K / 256; b++) {
      const ml_block_q8_K *y = (const ml_block_q8_K *)raw + b;
      memcpy(qs + 256 * b, y->qs, 256);
      d[b] = y->d;
      for (int j = 0; j < 16; j++) b16[16 * b + j] = y->bsums[j];
      for (int j = 0; j < 8; j++) b32[8 * b + j] = (int16_t)(y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
  } else if (pl.bf16 >= 0) {
    memcpy(o + pl.bf16, raw, (size_t)K * 2);
  } else {
    float *f = (float *)(o + pl.f32);
    const ml_fp16 *h = raw;
    for (int64_t k = 0; k < K; k++) f[k] = ml_fp16_to_f32(h[k]);
  }
}
