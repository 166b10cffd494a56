/* quant_check.c: checks the type table, the f16/bf16 conversions, the reference quantizers
 * and the ref kernel level against ggml's own output in ../shared/ref: the quant-blocks
 * matrix in 13 types (bytes, dequantized values, mul_mat results) and the mini models that
 * llama-quantize wrote from mini-f32.gguf (bytes of every matrix).
 *
 *   quant_check [REF_DIR] [--full]     (REF_DIR defaults to /work/shared/ref)
 *
 * Prints one line per check ("ok" or "FAIL", the check's name, what was measured) and
 * exits 1 if any check failed. --full also compares f32->f16 against F16C for all 2^32
 * floats (about 15 s). The per-type expectations are one table (`cases`), so each line
 * maps to one spec.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common.h"
#include "../src/dtype.h"
#include "../src/gguf.h"
#include "../src/kernels/kernels.h"
#include "../src/matmul.h"
#include "../src/quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_F16C_TEST 1
#endif

/* ---- per-type expectations ---- */

enum { QUANT_NONE, QUANT_EXACT };

typedef struct tcase {
  const char *name;   /* tensor w.<name>, files quant-blocks.<name>.* */
  ml_type type;
  int blck, bytes;    /* block geometry from quant-blocks.json */
  int quant;          /* QUANT_EXACT: our quantizer must give ggml's bytes */
  double rmse_max;    /* bound on quantize->dequantize rms error, N(0,1) data */
  double mm_rel;      /* bound on max |y - y_ggml| / max |y_ggml| */
} tcase;

static const tcase cases[] = {
  { "f32", ML_TYPE_F32, 1, 4, QUANT_EXACT, 0.0, 1e-5 },
  { "f16", ML_TYPE_F16, 1, 2, QUANT_EXACT, 2.3e-4, 1e-5 },
  { "bf16", ML_TYPE_BF16, 1, 2, QUANT_EXACT, 1.9e-3, 1e-5 },
  { "q8_0", ML_TYPE_Q8_0, 32, 34, QUANT_EXACT, 6.0e-3, 1e-5 },
  { "q4_0", ML_TYPE_Q4_0, 32, 18, QUANT_EXACT, 9.5e-2, 1e-5 },
  { "q4_1", ML_TYPE_Q4_1, 32, 20, QUANT_EXACT, 8.7e-2, 1e-5 },
  { "q5_0", ML_TYPE_Q5_0, 32, 22, QUANT_EXACT, 4.8e-2, 1e-5 },
  { "q5_1", ML_TYPE_Q5_1, 32, 24, QUANT_EXACT, 4.3e-2, 1e-5 },
  { "q2_k", ML_TYPE_Q2_K, 256, 84, QUANT_EXACT, 3.3e-1, 1e-5 },
  { "q3_k", ML_TYPE_Q3_K, 256, 110, QUANT_EXACT, 1.7e-1, 1e-5 },
  { "q4_k", ML_TYPE_Q4_K, 256, 144, QUANT_EXACT, 8.0e-2, 1e-5 },
  { "q5_k", ML_TYPE_Q5_K, 256, 176, QUANT_EXACT, 4.1e-2, 1e-5 },
  { "q6_k", ML_TYPE_Q6_K, 256, 210, QUANT_EXACT, 2.0e-2, 1e-5 },
};
#define NCASES (int)(sizeof cases / sizeof cases[0])

enum { W_ROWS = 64, W_COLS = 256, X_ROWS = 8 };

/* ---- reporting ---- */

static int n_fail, n_ok;

static void report(int ok, const char *check, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(int ok, const char *check, const char *fmt, ...) {
  va_list ap;
  printf("%-4s %-28s ", ok ? "ok" : "FAIL", check);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  if (ok) n_ok++;
  else n_fail++;
}

/* ---- files ---- */

static unsigned char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char *buf = NULL;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
  if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
      free(buf);
      buf = NULL;
    }
  }
  fclose(f);
  if (buf) *size = (size_t)n;
  return buf;
}

/* The tensor's data if it has this name, type and 2-D shape (ne0 innermost). */
static const void *tensor_data(const ml_gguf *g, const char *name, ml_type type, int64_t ne0, int64_t ne1) {
  int64_t i = g ? ml_gguf_find_tensor(g, name) : -1;
  if (i < 0) return NULL;
  const ml_gguf_tensor *t = &g->tensors[i];
  if (t->type != type || t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) return NULL;
  return t->data;
}

static ml_gguf *open_ref(const char *dir, const char *file) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  return ml_gguf_open(path, 0);
}

static float *read_floats(const char *dir, const char *name, const char *suffix, size_t count) {
  char path[512];
  size_t size = 0;
  snprintf(path, sizeof path, "%s/quant-blocks.%s.%s", dir, name, suffix);
  unsigned char *b = read_file(path, &size);
  if (b && size != count * sizeof(float)) {
    free(b);
    b = NULL;
  }
  return (float *)b; /* malloc'd, so aligned for float */
}

/* ---- random numbers: splitmix64 and Box-Muller ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_u64(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static double rng_normal(void) {
  double u1 = ((double)(rng_u64() >> 11) + 1.0) / 9007199254740993.0;
  double u2 = (double)(rng_u64() >> 11) / 9007199254740992.0;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint32_t f_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* ---- checks ---- */

static void check_traits(void) {
  int bad = 0;
  for (int i = 0; i < NCASES; i++) {
    const ml_type_traits *t = ml_type_traits_get(cases[i].type);
    if (!t || t->blck != cases[i].blck || (int)t->size != cases[i].bytes || !t->to_float || !t->from_float ||
        ml_type_from_name(cases[i].name) != (int)cases[i].type) {
      printf("     traits mismatch for %s\n", cases[i].name);
      bad++;
    }
  }
  static const struct { const char *name; int type; } names[] = {
    { "F32", ML_TYPE_F32 },      { "float", ML_TYPE_F32 },   { "Float32", ML_TYPE_F32 },
    { "half", ML_TYPE_F16 },     { "float16", ML_TYPE_F16 }, { "BFloat16", ML_TYPE_BF16 },
    { "bf16", ML_TYPE_BF16 },    { "int32", ML_TYPE_I32 },   { "i64", ML_TYPE_I64 },
    { "Q4_K", ML_TYPE_Q4_K },    { "q8_k", ML_TYPE_Q8_K },   { "f64", ML_TYPE_F64 },
    { "q4_k_m", -1 },            { "", -1 },                 { "f3", -1 },
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (ml_type_from_name(names[i].name) != names[i].type) {
      printf("     ml_type_from_name(\"%s\") = %d\n", names[i].name, ml_type_from_name(names[i].name));
      bad++;
    }
  /* vec_dot types as ggml's CPU backend */
  static const int vdt[][2] = {
    { ML_TYPE_F32, ML_TYPE_F32 },   { ML_TYPE_F16, ML_TYPE_F16 },   { ML_TYPE_BF16, ML_TYPE_BF16 },
    { ML_TYPE_Q4_0, ML_TYPE_Q8_0 }, { ML_TYPE_Q5_0, ML_TYPE_Q8_0 }, { ML_TYPE_Q8_0, ML_TYPE_Q8_0 },
    { ML_TYPE_Q4_1, ML_TYPE_Q8_1 }, { ML_TYPE_Q5_1, ML_TYPE_Q8_1 }, { ML_TYPE_Q2_K, ML_TYPE_Q8_K },
    { ML_TYPE_Q3_K, ML_TYPE_Q8_K }, { ML_TYPE_Q4_K, ML_TYPE_Q8_K }, { ML_TYPE_Q5_K, ML_TYPE_Q8_K },
    { ML_TYPE_Q6_K, ML_TYPE_Q8_K },
  };
  for (size_t i = 0; i < sizeof vdt / sizeof vdt[0]; i++)
    if ((int)ml_type_traits_get(vdt[i][0])->vec_dot_type != vdt[i][1]) {
      printf("     vec_dot_type of %s\n", ml_type_traits_get(vdt[i][0])->name);
      bad++;
    }
  if (ml_type_traits_get(5) || ml_type_traits_get(-1) || ml_type_traits_get(ML_TYPE_COUNT)) bad++;
  if (ml_type_nbytes(ML_TYPE_Q4_K, 512) != 288 || ml_type_nbytes(ML_TYPE_Q4_K, 100) != 0 ||
      ml_type_nbytes(ML_TYPE_F16, 3) != 6 || ml_type_nbytes(ML_TYPE_Q8_0, -32) != 0 ||
      ml_type_nbytes(ML_TYPE_F64, INT64_MAX) != 0)
    bad++;
  report(!bad, "traits", "%d mismatches (sizes, names, aliases, vec_dot types)", bad);
}

static void check_fp16(void) {
  int bad = 0;
  /* every half -> float -> half is the identity; NaNs stay NaN, made quiet */
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ml_fp16_to_f32((ml_fp16)h);
    ml_fp16 back = ml_f32_to_fp16(f);
    int nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    if (nan ? (!isnan(f) || back != (h | 0x200)) : back != h) bad++;
    /* and against the value computed in double */
    if (!nan && (h & 0x7c00) != 0x7c00) {
      int e = (h >> 10) & 31, m = h & 0x3ff;
      double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
      if (h & 0x8000) v = -v;
      if ((double)f != v || !!signbit(f) != !!(h & 0x8000)) bad++;
    }
  }
  report(!bad, "fp16 all halves", "%d of 65536 halves fail the round trip or value", bad);
}

/* Nearest-even float -> bf16 decided in double, independent of the bit trick. */
static uint16_t bf16_oracle(float f) {
  uint32_t u = f_bits(f);
  if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
  uint16_t lo = (uint16_t)(u >> 16);
  if ((u & 0xffff) == 0) return lo;
  uint16_t hi = (uint16_t)(lo + 1); /* next magnitude (may be inf) */
  double dl = fabs((double)f - (double)bits_f((uint32_t)lo << 16));
  double dh = fabs((double)bits_f((uint32_t)hi << 16) - (double)f);
  if ((lo & 0x7f80) == 0x7f00 && (lo & 0x7f) == 0x7f) /* hi is inf: compare with 2^128 */
    dh = fabs(ldexp(1.0, 128) - fabs((double)f));
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

static void check_bf16(void) {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ml_bf16_to_f32((ml_bf16)h);
    int nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
    ml_bf16 back = ml_f32_to_bf16(f);
    if (nan ? (!isnan(f) || back != (h | 0x40)) : back != h) bad++;
  }
  report(!bad, "bf16 all bf16s", "%d of 65536 fail the round trip", bad);
  bad = 0;
  int n = 0;
  for (uint32_t i = 0; i < (1u << 22); i++, n++) {
    uint32_t u = (uint32_t)rng_u64();
    if (i < 65536) u = (i << 16) | 0x8000; /* every exact tie */
    else if (i < 131072) u = ((i - 65536) << 16) | 0x7fff;
    if (ml_f32_to_bf16(bits_f(u)) != bf16_oracle(bits_f(u))) bad++;
  }
  report(!bad, "bf16 rounding", "%d of %d floats differ from a double-precision nearest-even oracle", bad, n);
}

#ifdef HAVE_F16C_TEST
__attribute__((target("f16c"))) static uint16_t hw_f2h(float f) { return (uint16_t)_cvtss_sh(f, 0); }
__attribute__((target("f16c"))) static float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }

/* F16C (CPUID.1:ECX bit 29) is VEX-encoded, so the OS must also save the YMM state. */
static int have_f16c(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 29)) || !(c & (1u << 27))) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6) == 6;
}

static void check_f16c(int full) {
  if (!have_f16c()) {
    report(1, "fp16 vs F16C", "skipped: this CPU has no F16C");
    return;
  }
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++)
    if (f_bits(ml_fp16_to_f32((ml_fp16)h)) != f_bits(hw_h2f((uint16_t)h))) bad++;
  report(!bad, "fp16->f32 vs F16C", "%d of 65536 halves differ from vcvtph2ps", bad);

  /* edges: around every half (exact, +-1 ulp, the midpoints) in both signs, plus random
   * bit patterns, plus (with --full) every float */
  uint64_t n = 0, diff = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    uint32_t c = f_bits(ml_fp16_to_f32((ml_fp16)h));
    for (int d = -2; d <= 2; d++) {
      uint32_t u = c + (uint32_t)d;
      diff += ml_f32_to_fp16(bits_f(u)) != hw_f2h(bits_f(u));
      uint32_t mid = c + 0x1000; /* the midpoint to the next half, for normal halves */
      diff += ml_f32_to_fp16(bits_f(mid + (uint32_t)d)) != hw_f2h(bits_f(mid + (uint32_t)d));
      n += 2;
    }
  }
  for (uint32_t i = 0; i < (1u << 24); i++, n++) {
    uint32_t u = (uint32_t)rng_u64();
    diff += ml_f32_to_fp16(bits_f(u)) != hw_f2h(bits_f(u));
  }
  if (full) {
    for (uint64_t u = 0; u <= 0xffffffffu; u++, n++)
      diff += ml_f32_to_fp16(bits_f((uint32_t)u)) != hw_f2h(bits_f((uint32_t)u));
  }
  report(!diff, "f32->fp16 vs F16C", "%llu of %llu floats differ from vcvtps2ph (RNE)%s", (unsigned long long)diff,
         (unsigned long long)n, full ? ", all 2^32 included" : "");
}
#else
static void check_f16c(int full) {
  (void)full;
  report(1, "fp16 vs F16C", "skipped: not an x86-64 build");
}
#endif

static double max_abs(const float *a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
  return m;
}

static void check_type(const tcase *c, const ml_gguf *g, const char *dir, const float *w32, const float *x) {
  enum { N = W_COLS * W_ROWS };
  const ml_type_traits *tr = ml_type_traits_get(c->type);
  char name[64];
  size_t nb = ml_type_nbytes(c->type, N);
  char tname[32];
  snprintf(tname, sizeof tname, "w.%s", c->name);
  const void *wq = tensor_data(g, tname, c->type, W_COLS, W_ROWS);
  if (!wq) {
    snprintf(name, sizeof name, "%s load", c->name);
    report(0, name, "tensor %s missing or malformed", tname);
    return;
  }

  /* dequantize: exactly ggml's values */
  float *ref = read_floats(dir, c->name, "f32", N), *deq = malloc(N * sizeof(float));
  snprintf(name, sizeof name, "%s dequantize", c->name);
  if (!ref || !deq) {
    report(0, name, "cannot read quant-blocks.%s.f32", c->name);
  } else {
    tr->to_float(wq, deq, N);
    size_t ndiff = 0;
    double md = 0;
    for (size_t i = 0; i < N; i++) {
      if (f_bits(deq[i]) != f_bits(ref[i])) ndiff++;
      md = fmax(md, fabs((double)deq[i] - ref[i]));
    }
    report(ndiff == 0, name, "max diff %.3g, %zu of %d values not bit-identical", md, ndiff, N);
  }

  /* quantize w.f32: ggml's bytes */
  unsigned char *q = malloc(nb);
  snprintf(name, sizeof name, "%s quantize", c->name);
  tr->from_float(w32, q, N);
  size_t bdiff = 0;
  for (size_t b = 0; b < nb / tr->size; b++)
    if (memcmp(q + b * tr->size, (const unsigned char *)wq + b * tr->size, tr->size)) bdiff++;
  report(c->quant != QUANT_EXACT || bdiff == 0, name, "%zu of %zu blocks differ from ggml's bytes%s", bdiff,
         nb / tr->size, c->quant == QUANT_EXACT ? "" : " (not required)");

  /* matmul against ggml's mul_mat (y[j][i] = W_i . x_j) */
  float *ymm = read_floats(dir, c->name, "matmul.f32", X_ROWS * W_ROWS);
  float y[X_ROWS * W_ROWS];
  snprintf(name, sizeof name, "%s matmul", c->name);
  if (!ymm) {
    report(0, name, "cannot read quant-blocks.%s.matmul.f32", c->name);
  } else if (ml_mm_rows(&ml_kernels_ref, c->type, wq, ml_type_nbytes(c->type, W_COLS), W_ROWS, W_COLS, x, W_COLS,
                        X_ROWS, y, W_ROWS) < 0) {
    report(0, name, "ml_mm_rows: %s", ml_errmsg());
  } else {
    double md = 0, mx = max_abs(ymm, X_ROWS * W_ROWS);
    for (int i = 0; i < X_ROWS * W_ROWS; i++) md = fmax(md, fabs((double)y[i] - ymm[i]));
    report(md <= c->mm_rel * mx, name, "max diff %.3g (%.3g of max |y| %.3g; bound %.0e)", md, md / mx, mx, c->mm_rel);
  }

  /* quantize -> dequantize error on fresh N(0,1) data */
  float *src = malloc(N * sizeof(float)), *rt = malloc(N * sizeof(float));
  for (int i = 0; i < N; i++) src[i] = (float)rng_normal();
  tr->from_float(src, q, N);
  tr->to_float(q, rt, N);
  double se = 0;
  for (int i = 0; i < N; i++) se += ((double)rt[i] - src[i]) * ((double)rt[i] - src[i]);
  double rmse = sqrt(se / N);
  snprintf(name, sizeof name, "%s rmse", c->name);
  report(rmse <= c->rmse_max, name, "rms error %.4g on N(0,1) (bound %.3g)", rmse, c->rmse_max);

  free(src);
  free(rt);
  free(ymm);
  free(q);
  free(ref);
  free(deq);
}

/* Sizes that are not a multiple of the block: only whole blocks are touched. Buffers are
 * exactly sized so AddressSanitizer catches any overrun. */
static void check_partial_blocks(void) {
  int bad = 0;
  for (int i = 0; i < NCASES; i++) {
    const ml_type_traits *tr = ml_type_traits_get(cases[i].type);
    if (tr->blck == 1) continue;
    int64_t n = tr->blck + tr->blck / 2;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    unsigned char *q = malloc(tr->size);
    for (int64_t j = 0; j < n; j++) x[j] = (float)rng_normal();
    for (int64_t j = 0; j < n; j++) y[j] = -7.0f;
    tr->from_float(x, q, n);
    tr->to_float(q, y, n);
    for (int64_t j = tr->blck; j < n; j++) bad += y[j] != -7.0f;
    free(x);
    free(y);
    free(q);
  }
  report(!bad, "partial blocks", "%d values written past the last whole block", bad);
}

/* inf, NaN, zeros, huge and tiny values: defined behaviour (checked by UBSan), zeros stay
 * zeros, and finite inputs give finite outputs. */
static void check_hostile(void) {
  enum { N = 512 };
  int bad = 0;
  float x[N], y[N];
  unsigned char q[N * 4];
  for (int i = 0; i < NCASES; i++) {
    const ml_type_traits *tr = ml_type_traits_get(cases[i].type);
    for (int pat = 0; pat < 4; pat++) {
      for (int j = 0; j < N; j++) {
        float v = pat == 0 ? 0.0f : pat == 1 ? (j % 7 ? 1e-7f * (float)j : -6e4f) : (float)rng_normal();
        if (pat == 3 && j % 5 == 0) v = j % 10 ? INFINITY : NAN;
        x[j] = v;
      }
      tr->from_float(x, q, N);
      tr->to_float(q, y, N);
      for (int j = 0; j < N; j++) {
        if (pat == 0 && y[j] != 0.0f) bad++;
        if (pat == 1 && !isfinite(y[j])) bad++;
      }
    }
  }
  report(!bad, "zero and extreme inputs", "%d bad values (all-zero stays zero; finite stays finite)", bad);
}

/* Activation rounding of the ref level: q8_0/q8_1 round half to even (as ggml's x86
 * path), the weight quantizer rounds half away from zero; q8_1's s is half(d * sum q).
 * amax = 127 makes d = 1 and the scaling exact, so the halves below are true ties. */
static void check_act_rounding(void) {
  static const float ties[6] = { 2.5f, -3.5f, 0.5f, -0.5f, 1.5f, -126.5f };
  static const int even[6] = { 2, -4, 0, 0, 2, -126 }, away[6] = { 3, -4, 1, -1, 2, -127 };
  float x[32] = { 127.0f };
  for (int j = 0; j < 6; j++) x[1 + j] = ties[j];
  ml_block_q8_0 act, wq;
  ml_block_q8_1 act1;
  ml_ref_quantize_act_q8_0(x, &act, 32);
  ml_ref_quantize_act_q8_1(x, &act1, 32);
  ml_quantize_q8_0(x, &wq, 32);
  int bad = 0, sum = 0;
  for (int j = 0; j < 6; j++) bad += act.qs[1 + j] != even[j] || wq.qs[1 + j] != away[j];
  for (int j = 0; j < 32; j++) sum += act1.qs[j];
  bad += memcmp(act.qs, act1.qs, 32) != 0 || act.d != ml_f32_to_fp16(1.0f) || act1.s != ml_f32_to_fp16((float)sum);
  report(!bad, "activation rounding", "%d wrong (q8_0/q8_1 ties to even, weight q8_0 ties away, s = d*sum)", bad);
}

/* Random shapes and padded strides: the ref dot-product path of the driver against a double
 * dot of the dequantized weights and the dequantized (vec_dot type) activations; the
 * padding of y is never written. */
static void check_matmul_shapes(void) {
  enum { N = 13, M = 3, PADW = 8, PADX = 5, PADY = 3 };
  for (int c = 0; c < NCASES; c++) {
    ml_type wt = cases[c].type;
    const ml_type_traits *tr = ml_type_traits_get(wt);
    ml_type vt = tr->vec_dot_type;
    const ml_type_traits *ta = ml_type_traits_get(vt);
    int64_t Ks[3] = { tr->blck == 1 ? 37 : tr->blck, 3 * (int64_t)ML_QK_K, 5 * (int64_t)ML_QK_K };
    double worst = 0;
    int bad_pad = 0, declined = 0;
    for (int ki = 0; ki < 3; ki++) {
      int64_t K = Ks[ki];
      size_t wrb = ml_type_nbytes(wt, K) + PADW, arb = ml_type_nbytes(vt, K);
      int64_t ldx = K + PADX, ldy = N + PADY;
      unsigned char *w = calloc(N, wrb), *a = malloc(arb);
      float *x = malloc(sizeof(float) * (size_t)(M * ldx)), *wd = malloc(sizeof(float) * (size_t)K);
      float *ad = malloc(sizeof(float) * (size_t)K), y1[M * (N + PADY)];
      for (int n = 0; n < N; n++) {
        float row[5 * ML_QK_K];
        for (int64_t k = 0; k < K; k++) row[k] = (float)rng_normal();
        tr->from_float(row, w + (size_t)n * wrb, K);
      }
      for (int64_t i = 0; i < M * ldx; i++) x[i] = (float)rng_normal();
      for (int i = 0; i < M * ldy; i++) y1[i] = -1.0f;
      if (ml_mm_rows(&ml_kernels_ref, wt, w, wrb, N, K, x, ldx, M, y1, ldy) < 0) declined++;
      for (int m = 0; m < M; m++) {
        for (int pad = N; pad < ldy; pad++) bad_pad += y1[m * ldy + pad] != -1.0f;
        ml_kernels_ref.quantize[vt](x + m * ldx, a, K);
        ta->to_float(a, ad, K);
        for (int n = 0; n < N; n++) {
          const unsigned char *wr = w + (size_t)n * wrb;
          tr->to_float(wr, wd, K);
          double dot = 0, mag = 0;
          for (int64_t k = 0; k < K; k++) {
            dot += (double)wd[k] * ad[k];
            mag += fabs((double)wd[k] * ad[k]);
          }
          /* *_1 formats: the kernel uses the block's stored s = half(d * sum q) */
          for (int64_t b = 0; vt == ML_TYPE_Q8_1 && b < K / ML_QK; b++) {
            const ml_block_q8_1 *ab = (const ml_block_q8_1 *)a + b;
            float mw = ml_fp16_to_f32(wt == ML_TYPE_Q4_1 ? ((const ml_block_q4_1 *)wr)[b].m
                                                                : ((const ml_block_q5_1 *)wr)[b].m);
            int sq = 0;
            for (int j = 0; j < ML_QK; j++) sq += ab->qs[j];
            double corr = (double)mw * ((double)ml_fp16_to_f32(ab->s) - (double)ml_fp16_to_f32(ab->d) * sq);
            dot += corr;
            mag += fabs(corr);
          }
          worst = fmax(worst, fabs(y1[m * ldy + n] - dot) / (mag + 1e-30));
        }
      }
      free(w);
      free(a);
      free(x);
      free(wd);
      free(ad);
    }
    char name[64];
    snprintf(name, sizeof name, "%s matmul shapes", cases[c].name);
    report(worst <= 2e-6 && !bad_pad && !declined, name,
           "K=%d,768,1280 N=13 M=3: max err %.2g of sum|w a|; padding %s", tr->blck == 1 ? 37 : tr->blck, worst,
           bad_pad ? "WRITTEN" : "untouched");
  }
}

static float dot_42(int64_t n, const void *w, const void *a) {
  (void)n, (void)w, (void)a;
  return 42.0f;
}

/* ml_kernels_merge: a level's entries replace ref's, the others stay; and the driver's dot
 * path declines (an error, never a wrong result) types, sizes and alignments it cannot take. */
static void check_merge(void) {
  ml_kernels lv = { .name = "test" };
  lv.vec_dot[ML_TYPE_Q4_0] = dot_42;
  ml_kernels t = ml_kernels_ref;
  ml_kernels_merge(&t, &lv);
  int bad = strcmp(t.name, "test") != 0 || t.vec_dot[ML_TYPE_Q4_0] != dot_42 ||
            t.vec_dot[ML_TYPE_Q4_1] != ml_kernels_ref.vec_dot[ML_TYPE_Q4_1] ||
            t.quantize[ML_TYPE_Q8_0] != ml_kernels_ref.quantize[ML_TYPE_Q8_0] || t.row.dot != ml_kernels_ref.row.dot;
  float x[256], y[2], yr[2];
  ml_block_q8_0 w[8];
  for (int i = 0; i < 256; i++) x[i] = (float)rng_normal();
  ml_quantize_q8_0(x, w, 256);
  bad += ml_mm_rows(&t, ML_TYPE_Q8_0, w, 2 * sizeof *w, 2, 64, x, 64, 1, y, 2) != 0;
  bad += ml_mm_rows(&ml_kernels_ref, ML_TYPE_Q8_0, w, 2 * sizeof *w, 2, 64, x, 64, 1, yr, 2) != 0;
  bad += memcmp(y, yr, sizeof y) != 0;
  bad += ml_mm_rows(&t, ML_TYPE_Q4_0, w, 2 * sizeof *w, 2, 64, x, 64, 1, y, 2) != 0 || y[0] != 42.0f;
  bad += ml_mm_rows(&ml_kernels_ref, ML_TYPE_Q8_K, w, 0, 1, 256, x, 256, 1, y, 1) != -1; /* no q8_K weights */
  bad += ml_mm_rows(&ml_kernels_ref, ML_TYPE_Q4_0, w, 18, 1, 48, x, 48, 1, y, 1) != -1;  /* K not a block multiple */
  bad += ml_mm_rows(&ml_kernels_ref, ML_TYPE_Q8_0, (char *)w + 1, 34, 1, 32, x, 32, 1, y, 1) != -1; /* misaligned */
  bad += ml_mm_rows(&ml_kernels_ref, ML_TYPE_Q8_0, w, 35, 2, 32, x, 32, 1, y, 1) != -1;           /* odd stride */
  report(!bad, "kernel table merge", "%d wrong (overlay, declined types, shapes and alignments)", bad);
}

/* Every matrix llama-quantize wrote into the mini models, re-quantized from mini-f32. */
static const struct { const char *file; ml_type type; } minis[] = {
  { "mini-f16.gguf", ML_TYPE_F16 },   { "mini-bf16.gguf", ML_TYPE_BF16 },     { "mini-q8_0.gguf", ML_TYPE_Q8_0 },
  { "mini-q4_0.gguf", ML_TYPE_Q4_0 }, { "mini-q4_1.gguf", ML_TYPE_Q4_1 },     { "mini-q5_0.gguf", ML_TYPE_Q5_0 },
  { "mini-q5_1.gguf", ML_TYPE_Q5_1 }, { "mini-q2_k.gguf", ML_TYPE_Q2_K },     { "mini-q3_k_s.gguf", ML_TYPE_Q3_K },
  { "mini-q4_k_s.gguf", ML_TYPE_Q4_K }, { "mini-q5_k_s.gguf", ML_TYPE_Q5_K }, { "mini-q6_k.gguf", ML_TYPE_Q6_K },
};

static void check_mini_models(const char *dir) {
  ml_gguf *src = open_ref(dir, "mini-f32.gguf");
  for (size_t f = 0; f < sizeof minis / sizeof minis[0]; f++) {
    const ml_type_traits *tr = ml_type_traits_get(minis[f].type);
    char check[64];
    snprintf(check, sizeof check, "%s mini-model bytes", tr->name);
    ml_gguf *q = src ? open_ref(dir, minis[f].file) : NULL;
    if (!q) {
      report(0, check, "cannot open %s or mini-f32.gguf: %s", minis[f].file, ml_errmsg());
      continue;
    }
    size_t blocks = 0, diff = 0;
    int mats = 0, missing = 0;
    for (uint64_t i = 0; i < q->n_tensors; i++) {
      const ml_gguf_tensor *t = &q->tensors[i];
      char name[128];
      if (t->type != minis[f].type || t->name.len >= sizeof name) continue;
      memcpy(name, t->name.s, t->name.len);
      name[t->name.len] = 0;
      int64_t n = t->ne[0] * t->ne[1];
      const float *w = tensor_data(src, name, ML_TYPE_F32, t->ne[0], t->ne[1]);
      unsigned char *buf = malloc(t->nbytes);
      if (!w || !buf || ml_type_nbytes(t->type, n) != t->nbytes) {
        missing++;
        free(buf);
        continue;
      }
      tr->from_float(w, buf, n);
      for (size_t b = 0; b < t->nbytes / tr->size; b++, blocks++)
        diff += memcmp(buf + b * tr->size, (const unsigned char *)t->data + b * tr->size, tr->size) != 0;
      mats++;
      free(buf);
    }
    report(mats == 16 && !missing && !diff, check, "%zu of %zu blocks differ in %d matrices of %s", diff, blocks, mats,
           minis[f].file);
    ml_gguf_release(q);
  }
  ml_gguf_release(src);
}

int main(int argc, char **argv) {
  const char *dir = "/work/shared/ref";
  int full = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--full") == 0) full = 1;
    else dir = argv[i];
  }
  check_traits();
  check_fp16();
  check_f16c(full);
  check_bf16();
  check_partial_blocks();
  check_hostile();
  check_act_rounding();

  check_matmul_shapes();
  check_merge();

  ml_gguf *g = open_ref(dir, "quant-blocks.gguf");
  const float *w32 = tensor_data(g, "w.f32", ML_TYPE_F32, W_COLS, W_ROWS);
  const float *x = tensor_data(g, "x", ML_TYPE_F32, W_COLS, X_ROWS);
  report(w32 && x, "quant-blocks.gguf", "%s", w32 && x ? "w.f32 (64 x 256) and x (8 x 256) read" : ml_errmsg());
  if (w32 && x)
    for (int i = 0; i < NCASES; i++) check_type(&cases[i], g, dir, w32, x);
  ml_gguf_release(g);
  check_mini_models(dir);
  printf("%d checks, %d failed\n", n_ok + n_fail, n_fail);
  return n_fail ? 1 : 0;
}
