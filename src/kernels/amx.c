/* amx.c: GEMM kernels with AMX tiles over x16 packed weights, for the K formats and the
 * 32-element formats (tdpbusd: unsigned weight values x signed int8 activations) and bf16
 * (tdpbf16ps). Decode (few rows) stays on the avx512 level's GEMV: a tile product needs 16
 * rows to pay off.
 *
 * Built twice: with the AMX flags into ml_kernels_amx, used only where the dispatcher finds
 * AMX granted by CPU and OS; and with -DML_AMX_EMULATE against the plain C tiles of
 * amx_emu.h into ml_kernels_amx_emu, the test-only table "amx-emu" (ml_kernels_named), so
 * the same code is tested on every machine.
 *
 * int8: per 16-row weight tile and 16-row activation tile, per scale block of S elements
 * (the block of 32, or the sub-block of 16 / 32 of the K formats):
 *   A = weights, 16 rows x S bytes (unsigned values, row-major: ml_x16_unpack)
 *   B = activations in k-groups, S / 4 rows x (4 x mr) bytes (repacked from the panel)
 *   C = A B, 16 x mr int32, stored and scaled into float accumulators like the other levels.
 * bf16: A = activations (mr rows x 32 bf16, the panel rows as they are), B = the packed
 * weight block (16 k-pairs x 16 rows, an AMX B tile as stored), C accumulates over all K.
 * The last activation tile has mr < 16 rows: its config has fewer rows / columns.
 */
#include <stdio.h>
#include <string.h>

#include "dispatch.h"
#include "kernels.h"
#include "x16.h"

#ifdef ML_AMX_EMULATE
#include "amx_emu.h"
#define TILE_CONFIG(c) emu_ldtilecfg(c)
#define TILE_RELEASE() emu_tilerelease()
#define TILE_LOAD(t, p, s) emu_tileloadd(t, p, s)
#define TILE_STORE(t, p, s) emu_tilestored(t, p, s)
#define TILE_ZERO(t) emu_tilezero(t)
#define TILE_DPBUSD(c, a, b) emu_tdpbusd(c, a, b)
#define TILE_DPBF16PS(c, a, b) emu_tdpbf16ps(c, a, b)
#define AMX_TABLE ml_kernels_amx_emu
#define AMX_NAME "amx-emu"
#else
#include <immintrin.h>
#define TILE_CONFIG(c) _tile_loadconfig(c)
#define TILE_RELEASE() _tile_release()
#define TILE_LOAD(t, p, s) _tile_loadd(t, p, s)
#define TILE_STORE(t, p, s) _tile_stored(t, p, s)
#define TILE_ZERO(t) _tile_zero(t)
#define TILE_DPBUSD(c, a, b) _tile_dpbusd(c, a, b)
#define TILE_DPBF16PS(c, a, b) _tile_dpbf16ps(c, a, b)
#define AMX_TABLE ml_kernels_amx
#define AMX_NAME "amx"
#endif

/* tiles: accumulator, first and second operand (literal numbers: the intrinsics paste them) */
#define TC 0
#define TA 1
#define TB 2

/* palette 1 config: tiles TC, TA, TB as (rows, bytes per row) */
static void config(int rc, int cc, int ra, int ca, int rb, int cb) {
  uint8_t cfg[64];
  memset(cfg, 0, sizeof cfg);
  cfg[0] = 1;
  int rows[3] = {rc, ra, rb}, cols[3] = {cc, ca, cb};
  for (int t = 0; t < 3; t++) {
    cfg[16 + 2 * t] = (uint8_t)cols[t];
    cfg[48 + t] = (uint8_t)rows[t];
  }
  TILE_CONFIG(cfg);
}

/* ---- int8 formats ---- */

/* Work buffer: the unpacked block, the activation k-groups of one scale block, C. */
typedef struct amx_work {
  ml_x16_block u;
  uint8_t b[64 * 16];        /* B: up to 16 k-groups x 16 rows x 4 */
  int32_t c[16][16];         /* C: [weight row][activation row] */
  float acc[16][16];         /* [weight row][activation row] over K */
  int32_t it[16][16], im[16][16];
} amx_work;

static void gemm_int8(const ml_packed_args *p, void *work, int ith, int nth) {
  ml_x16_info in;
  ml_panel pl;
  amx_work *w = work;
  if (ml_x16_info_get(p->wt, &in) < 0 || ml_panel_layout(p->wt, p->K, &pl) < 0) return;
  int S = in.kind == ML_X16_B32 ? 32 : in.sub, J = in.blck / S;
  int64_t nb = p->K / in.blck, t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  int cur_mr = -1;
  for (int64_t m0 = 0; m0 < p->M && t0 < t1; m0 += 16) {
    int mr = p->M - m0 < 16 ? (int)(p->M - m0) : 16;
    if (mr != cur_mr) config(16, 4 * mr, 16, S, S / 4, 4 * mr), cur_mr = mr;
    const uint8_t *rows[16];
    for (int m = 0; m < mr; m++) rows[m] = (const uint8_t *)p->a + (size_t)(m0 + m) * p->a_row_bytes;
    for (int64_t t = t0; t < t1; t++) {
      const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
      memset(w->acc, 0, sizeof w->acc);
      for (int64_t b = 0; b < nb; b++) {
        ml_x16_unpack(p->wt, tile, b, &w->u);
        memset(w->it, 0, sizeof w->it);
        memset(w->im, 0, sizeof w->im);
        for (int j = 0; j < J; j++) {
          int64_t e0 = b * in.blck + (int64_t)j * S; /* first element of the scale block */
          for (int g = 0; g < S / 4; g++)
            for (int m = 0; m < mr; m++) memcpy(w->b + 4 * (g * mr + m), rows[m] + pl.qs + e0 + 4 * g, 4);
          TILE_ZERO(TC);
          TILE_LOAD(TA, &w->u.v[0][j * S], sizeof w->u.v[0]);
          TILE_LOAD(TB, w->b, (size_t)(4 * mr));
          TILE_DPBUSD(TC, TA, TB);
          TILE_STORE(TC, w->c, sizeof w->c[0]);
          for (int n = 0; n < 16; n++)
            for (int m = 0; m < mr; m++) {
              if (in.kind == ML_X16_B32) {
                const float *da = (const float *)(rows[m] + pl.d);
                const int32_t *is = (const int32_t *)(rows[m] + pl.isum);
                float v = (float)(w->c[n][m] - in.off * is[b]) * (w->u.d[n] * da[b]);
                if (in.has_min) v += w->u.m[n] * ((const float *)(rows[m] + pl.fsum))[b];
                w->acc[n][m] += v;
              } else {
                const int16_t *bs = (const int16_t *)(rows[m] + (S == 32 ? pl.bs32 : pl.bs16));
                w->it[n][m] += w->u.sc[j][n] * w->c[n][m];
                w->im[n][m] += w->u.mn[j][n] * bs[b * J + j];
              }
            }
        }
        if (in.kind == ML_X16_KQ)
          for (int n = 0; n < 16; n++)
            for (int m = 0; m < mr; m++) {
              float da = ((const float *)(rows[m] + pl.d))[b];
              w->acc[n][m] += da * (w->u.d[n] * (float)w->it[n][m] - w->u.m[n] * (float)w->im[n][m]);
            }
      }
      int64_t nn = p->N - t * ML_X16 < 16 ? p->N - t * ML_X16 : 16;
      for (int m = 0; m < mr; m++)
        for (int64_t n = 0; n < nn; n++) p->y[(m0 + m) * p->ldy + t * ML_X16 + n] = w->acc[n][m];
    }
  }
  TILE_RELEASE();
}

/* ---- bf16 ---- */

static void gemm_bf16(const ml_packed_args *p, void *work, int ith, int nth) {
  ml_panel pl;
  float *c = work; /* [mr][16] */
  if (ml_panel_layout(p->wt, p->K, &pl) < 0) return;
  int64_t nb = p->K / 32, t0, t1;
  ml_slice((p->N + ML_X16 - 1) / ML_X16, ith, nth, &t0, &t1);
  int cur_mr = -1;
  for (int64_t m0 = 0; m0 < p->M && t0 < t1; m0 += 16) {
    int mr = p->M - m0 < 16 ? (int)(p->M - m0) : 16;
    if (mr != cur_mr) config(mr, 64, mr, 64, 16, 64), cur_mr = mr;
    const uint8_t *a = (const uint8_t *)p->a + (size_t)m0 * p->a_row_bytes + pl.bf16;
    for (int64_t t = t0; t < t1; t++) {
      const uint8_t *tile = (const uint8_t *)p->w + (size_t)t * p->tile_bytes;
      TILE_ZERO(TC);
      for (int64_t b = 0; b < nb; b++) {
        TILE_LOAD(TA, a + 64 * b, p->a_row_bytes);
        TILE_LOAD(TB, tile + (size_t)b * X16_BF16_BYTES, 64);
        TILE_DPBF16PS(TC, TA, TB);
      }
      TILE_STORE(TC, c, 64);
      int64_t nn = p->N - t * ML_X16 < 16 ? p->N - t * ML_X16 : 16;
      for (int m = 0; m < mr; m++) memcpy(p->y + (m0 + m) * p->ldy + t * ML_X16, c + 16 * m, (size_t)nn * sizeof(float));
    }
  }
  TILE_RELEASE();
}

const ml_kernels AMX_TABLE = {
  .name = AMX_NAME,
  .gemm = {
    [ML_TYPE_Q8_0] = gemm_int8, [ML_TYPE_Q4_0] = gemm_int8, [ML_TYPE_Q4_1] = gemm_int8,
    [ML_TYPE_Q5_0] = gemm_int8, [ML_TYPE_Q5_1] = gemm_int8, [ML_TYPE_Q2_K] = gemm_int8,
    [ML_TYPE_Q3_K] = gemm_int8, [ML_TYPE_Q4_K] = gemm_int8, [ML_TYPE_Q5_K] = gemm_int8,
    [ML_TYPE_Q6_K] = gemm_int8, [ML_TYPE_BF16] = gemm_bf16,
  },
};

#ifdef ML_AMX_EMULATE
/* ---- the emulator against plain loops ---- */

static uint32_t rng_state = 12345;
static uint8_t rnd8(void) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (uint8_t)(rng_state >> 24);
}

static int fail(char *msg, size_t n, const char *what, int a, int b, int c) {
  snprintf(msg, n, "%s (case %d %d %d)", what, a, b, c);
  return 0;
}

int ml_amx_emu_selftest(char *msg, size_t n) {
  static uint8_t A[16][64], B[16][64], out[16][64], cfg0[64];
  snprintf(msg, n, "ok");
  for (int it = 0; it < 200; it++) {
    int M = 1 + rnd8() % 16, K4 = 1 + rnd8() % 16, N = 1 + rnd8() % 16, kind = it % 4;
    for (int r = 0; r < 16; r++)
      for (int c = 0; c < 64; c++) {
        A[r][c] = rnd8(), B[r][c] = rnd8();
        if (kind == 3 && c % 2 == 1) A[r][c] = (A[r][c] & 0x8F) | 0x30, B[r][c] = (B[r][c] & 0x8F) | 0x30; /* sane bf16 */
      }
    config(M, 4 * N, M, 4 * K4, K4, 4 * N);
    memset(out, 0xAA, sizeof out);
    TILE_ZERO(TC);
    TILE_LOAD(TA, A, 64);
    TILE_LOAD(TB, B, 64);
    if (kind == 0) emu_tdpbssd(TC, TA, TB);
    else if (kind == 1) emu_tdpbusd(TC, TA, TB);
    else if (kind == 2) emu_tdpbuud(TC, TA, TB);
    else emu_tdpbf16ps(TC, TA, TB);
    TILE_STORE(TC, out, 64);
    if (ml_amx_emu_error()) return fail(msg, n, ml_amx_emu_error(), M, K4, N);
    for (int m = 0; m < 16; m++)
      for (int c = 0; c < 64; c++) {
        int inside = m < M && c < 4 * N;
        if (!inside && out[m][c] != 0xAA) return fail(msg, n, "tilestored wrote outside rows x colsb", M, K4, N);
        if (!inside && amx_emu.t[TC][m][c] != 0) return fail(msg, n, "tile not zero outside rows x colsb", M, K4, N);
      }
    for (int m = 0; m < M; m++)
      for (int j = 0; j < N; j++) {
        int32_t want = 0;
        float wf = 0.0f;
        for (int k = 0; k < 4 * K4; k++) {
          int x = kind == 0 ? (int8_t)A[m][k] : A[m][k], y = kind == 1 || kind == 0 ? (int8_t)B[k / 4][4 * j + k % 4]
                                                                                      : B[k / 4][4 * j + k % 4];
          if (kind < 3) want += x * y;
        }
        if (kind == 3)
          for (int k = 0; k < 2 * K4; k++) {
            uint32_t ua = (uint32_t)(A[m][2 * k] | A[m][2 * k + 1] << 8) << 16;
            uint32_t ub = (uint32_t)(B[k / 2][4 * j + 2 * (k % 2)] | B[k / 2][4 * j + 2 * (k % 2) + 1] << 8) << 16;
            float fa, fb;
            memcpy(&fa, &ua, 4);
            memcpy(&fb, &ub, 4);
            wf += fa * fb;
          }
        if (kind < 3) {
          int32_t got;
          memcpy(&got, &out[m][4 * j], 4);
          if (got != want) return fail(msg, n, "integer tile product differs from the loop", M, K4, N);
        } else {
          float got;
          memcpy(&got, &out[m][4 * j], 4);
          if (fabsf(got - wf) > 1e-5f * (1.0f + fabsf(wf))) return fail(msg, n, "bf16 tile product differs", M, K4, N);
        }
      }
  }
  /* loads past colsb / rows read nothing and zero the rest */
  config(3, 8, 3, 8, 2, 8);
  memset(A, 0x5A, sizeof A);
  TILE_LOAD(TA, A, 64);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 64; c++)
      if (amx_emu.t[TA][r][c] != (r < 3 && c < 8 ? 0x5A : 0)) return fail(msg, n, "tileloadd edges", r, c, 0);
  /* a bad config faults and leaves no usable config */
  memset(cfg0, 0, sizeof cfg0);
  cfg0[0] = 1, cfg0[48] = 17, cfg0[16] = 64;
  amx_emu.error = NULL;
  emu_ldtilecfg(cfg0);
  if (!ml_amx_emu_error()) return fail(msg, n, "17-row config accepted", 17, 0, 0);
  amx_emu.error = NULL;
  TILE_RELEASE();
  return 1;
}
#endif
