/* amx_emu.h: the AMX tile registers and instructions in plain C, so that amx.c compiled
 * with -DML_AMX_EMULATE runs (slowly) on any CPU and its packing, tiling and edge handling
 * are tested everywhere. Semantics follow the Intel SDM pseudocode (palette 1):
 *
 *   ldtilecfg   64-byte config: palette, start_row, colsb[16] (bytes per row), rows[16];
 *               palette 1 allows 8 tiles of at most 16 rows x 64 bytes; tiles 8..15 and
 *               unused tiles must be 0 x 0; any load of a config zeroes every tile.
 *   tileloadd   rows[t] rows of colsb[t] bytes from base + r * stride; the rest of the tile
 *               (bytes past colsb, rows past rows[t]) becomes zero.
 *   tilestored  rows[t] rows of colsb[t] bytes to base + r * stride.
 *   tilezero    the whole tile to zero.
 *   tdpb[su][su]d dst[m][n] += sum_{i<4} a[m][4k+i] * b[k][4n+i] over k < colsb(a) / 4, int32
 *               wrapping; a and b bytes signed or unsigned as the name says (tdpbusd: a
 *               unsigned, b signed). Requires rows(dst) = rows(a), colsb(dst) = colsb(b),
 *               rows(b) = colsb(a) / 4; bytes past colsb(dst) and rows past rows(dst) zero.
 *   tdpbf16ps   dst.f32[m][n] += a.bf16[m][2k] b.bf16[k][2n], then += the odd pair, for
 *               k < colsb(a) / 4: each product exact, each sum rounded to nearest even,
 *               denormal inputs read as zero and denormal results flushed to zero.
 *
 * A use that would fault on hardware (#GP for a bad config, #UD for mismatched shapes or
 * a tile used without a config) records the first such error in the emulator state
 * instead; ml_amx_emu_error() returns it. The state is per thread, as tiles are per core.
 */
#ifndef ML_AMX_EMU_H
#define ML_AMX_EMU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct amx_emu_state {
  uint8_t cfg[64];
  int configured;
  const char *error;          /* first fault, or NULL */
  uint8_t t[8][16][64];
} amx_emu_state;

static _Thread_local amx_emu_state amx_emu;

static inline int emu_rows(int t) { return amx_emu.cfg[48 + t]; }
static inline int emu_colsb(int t) { return amx_emu.cfg[16 + 2 * t] | amx_emu.cfg[17 + 2 * t] << 8; }

static inline void emu_fault(const char *what) {
  if (!amx_emu.error) amx_emu.error = what;
}

static inline int emu_ok(int t) {
  if (t < 0 || t > 7 || !amx_emu.configured) {
    emu_fault("tile instruction without a valid tile config");
    return 0;
  }
  return 1;
}

static inline void emu_tilerelease(void) {
  memset(&amx_emu.cfg, 0, sizeof amx_emu.cfg);
  memset(amx_emu.t, 0, sizeof amx_emu.t);
  amx_emu.configured = 0;
}

static inline void emu_ldtilecfg(const void *config) {
  const uint8_t *c = config;
  memset(amx_emu.t, 0, sizeof amx_emu.t);
  if (c[0] == 0) { /* palette 0: the init state */
    emu_tilerelease();
    return;
  }
  int bad = c[0] != 1;
  for (int i = 2; i < 16; i++) bad |= c[i] != 0; /* reserved */
  for (int t = 0; t < 16; t++) {
    int colsb = c[16 + 2 * t] | c[17 + 2 * t] << 8, rows = c[48 + t];
    if (t >= 8) bad |= colsb != 0 || rows != 0;
    else bad |= colsb > 64 || rows > 16 || (colsb == 0) != (rows == 0);
  }
  if (bad) {
    emu_fault("ldtilecfg: invalid tile config (#GP)");
    amx_emu.configured = 0;
    return;
  }
  memcpy(amx_emu.cfg, c, 64);
  amx_emu.configured = 1;
}

static inline void emu_tileloadd(int t, const void *base, size_t stride) {
  if (!emu_ok(t)) return;
  int rows = emu_rows(t), colsb = emu_colsb(t);
  memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
  for (int r = 0; r < rows; r++) memcpy(amx_emu.t[t][r], (const uint8_t *)base + (size_t)r * stride, (size_t)colsb);
}

static inline void emu_tilestored(int t, void *base, size_t stride) {
  if (!emu_ok(t)) return;
  int rows = emu_rows(t), colsb = emu_colsb(t);
  for (int r = 0; r < rows; r++) memcpy((uint8_t *)base + (size_t)r * stride, amx_emu.t[t][r], (size_t)colsb);
}

static inline void emu_tilezero(int t) {
  if (emu_ok(t)) memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
}

/* shapes of a dot product (the #UD checks); 1 if valid */
static inline int emu_shapes(int dst, int a, int b) {
  if (!emu_ok(dst) || !emu_ok(a) || !emu_ok(b)) return 0;
  if (dst == a || dst == b || a == b || emu_rows(dst) != emu_rows(a) || emu_colsb(dst) != emu_colsb(b) ||
      emu_rows(b) * 4 != emu_colsb(a) || emu_colsb(dst) % 4 || emu_colsb(a) % 4) {
    emu_fault("tile dot product with mismatched shapes (#UD)");
    return 0;
  }
  return 1;
}

/* zero the parts of dst outside rows x colsb after a write */
static inline void emu_zero_upper(int dst) {
  int rows = emu_rows(dst), colsb = emu_colsb(dst);
  for (int r = 0; r < 16; r++)
    for (int c = r < rows ? colsb : 0; c < 64; c++) amx_emu.t[dst][r][c] = 0;
}

static inline void emu_dpb(int dst, int a, int b, int a_signed, int b_signed) {
  if (!emu_shapes(dst, a, b)) return;
  int M = emu_rows(dst), K = emu_colsb(a) / 4, N = emu_colsb(dst) / 4;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      uint32_t acc;
      memcpy(&acc, &amx_emu.t[dst][m][4 * n], 4);
      for (int k = 0; k < K; k++)
        for (int i = 0; i < 4; i++) {
          uint8_t x = amx_emu.t[a][m][4 * k + i], y = amx_emu.t[b][k][4 * n + i];
          int32_t xv = a_signed ? (int8_t)x : (int32_t)x, yv = b_signed ? (int8_t)y : (int32_t)y;
          acc += (uint32_t)(xv * yv); /* wrapping */
        }
      memcpy(&amx_emu.t[dst][m][4 * n], &acc, 4);
    }
  emu_zero_upper(dst);
}

static inline void emu_tdpbssd(int dst, int a, int b) { emu_dpb(dst, a, b, 1, 1); }
static inline void emu_tdpbsud(int dst, int a, int b) { emu_dpb(dst, a, b, 1, 0); }
static inline void emu_tdpbusd(int dst, int a, int b) { emu_dpb(dst, a, b, 0, 1); }
static inline void emu_tdpbuud(int dst, int a, int b) { emu_dpb(dst, a, b, 0, 0); }

/* a bf16 as float, denormals as zero */
static inline float emu_bf16(const uint8_t *p) {
  uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
  if ((u & 0x7F800000u) == 0) u &= 0x80000000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline float emu_ftz(float f) { return fabsf(f) < 1.17549435e-38f ? copysignf(0.0f, f) : f; }

static inline void emu_tdpbf16ps(int dst, int a, int b) {
  if (!emu_shapes(dst, a, b)) return;
  int M = emu_rows(dst), K = emu_colsb(a) / 4, N = emu_colsb(dst) / 4;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      float acc;
      memcpy(&acc, &amx_emu.t[dst][m][4 * n], 4);
      for (int k = 0; k < K; k++)
        for (int i = 0; i < 2; i++) {
          /* the product of two bf16 is exact in double and in float unless it underflows */
          float p = emu_ftz((float)((double)emu_bf16(&amx_emu.t[a][m][4 * k + 2 * i]) *
                                    (double)emu_bf16(&amx_emu.t[b][k][4 * n + 2 * i])));
          acc = emu_ftz(acc + p);
        }
      memcpy(&amx_emu.t[dst][m][4 * n], &acc, 4);
    }
  emu_zero_upper(dst);
}

static inline const char *ml_amx_emu_error(void) { return amx_emu.error; }

#endif
