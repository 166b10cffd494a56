/* kernels.h: the kernel levels: leaf kernels, one table per level, and the x16 packed layout.
 *
 * A level (ref, avx2, avx512, amx; one file each, compiled with its own -m flags) is a
 * table of kernels, indexed by ml_type id where they are per type:
 *
 *   quantize[vt]  activations f32 -> vec_dot type vt (f32, f16, bf16, q8_0, q8_1, q8_K),
 *                 rounding exactly as ggml's x86 CPU backend does (q8_0/q8_1 round half to
 *                 even with id = 127/amax; q8_1 stores s = half(d * sum q); q8_K keeps
 *                 bsums). Every level must produce the same bytes as ref, so activations
 *                 quantized by one level are valid input to any level's dot products.
 *   vec_dot[wt]   s = sum_i w[i] * a[i] over n elements: w one weight row of type wt, a one
 *                 activation row already in ml_type_traits_get(wt)->vec_dot_type.
 *   gemv[wt], gemm[wt]   products over x16 packed weights (below), for few and many
 *                 activation rows.
 *   row           the row operations of the forward pass and the sampler (ml_rowops).
 *
 * NULL means "not provided by this level". Kernels never allocate and never read past n
 * elements; n (K) must be a multiple of the weight type's block (32 or 256), which the
 * driver (src/matmul.c) checks and the kernels assume. Rows are aligned to their block
 * struct (2 bytes for the f16/quant blocks, 4 for f32 and q8_K), as GGUF data always is.
 * The driver owns everything around the kernels: activation quantization, sizes, scratch,
 * threads and the choice of path.
 *
 * The ref level (ref.c) is the oracle for the SIMD levels: they are tested against it on
 * random shapes with a tolerance (accumulation order differs), not for identical bits. Ref
 * accumulates like ggml's generic code: an int32 sum inside each block, one float product
 * per block with the block scales; f32/f16/bf16 rows sum in double.
 *
 * Packed weights: a level may provide kernels over the "x16" layout, in which the rows of a
 * weight matrix are interleaved 16 at a time so that one SIMD register holds 4 (int8) or 2
 * (bf16) consecutive K values of 16 rows, the operand layout of vpdpbusd, vdpbf16ps and of
 * AMX B tiles. Packing is a pure rearrangement (a tile of 16 rows has the bytes of its 16
 * rows, no more), done once per weight by ml_x16_pack (pack.c, level independent). gemv[wt]
 * streams every weight byte once for a few activation rows (decode); gemm[wt] unpacks one
 * tile of 16 rows at a time into `work` and reuses it over all M rows (prefill). Both read
 * activations from a "panel" (ml_panel below): the vec_dot-type bytes of each row
 * rearranged (int8 values contiguous, scales and block sums as arrays) by ml_panel_fill.
 *
 * Dispatch (dispatch.c): a table copies ml_kernels_ref, then ml_kernels_merge()s each level
 * the CPU and OS support, lowest first, so every entry is the best available.
 */
#ifndef ML_KERNELS_H
#define ML_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../dtype.h"

typedef float (*ml_vec_dot_fn)(int64_t n, const void *w, const void *a);
typedef void (*ml_act_quantize_fn)(const float *x, void *dst, int64_t n);

/* y = x w^T with w in the x16 layout. The kernel computes the 16-row tiles of slice ith of
 * nth (ml_slice over ceil(N / 16) tiles) for all M rows, writes only rows n < N of y, and
 * uses `work`: ML_X16_WORK_BYTES(K) bytes, 64-byte aligned, private to the thread (the
 * unpacked weight blocks of one tile in the first ML_X16_WORK_U bytes, then activations
 * packed for the micro-kernel). */
typedef struct ml_packed_args {
  ml_type wt;
  const void *w;       /* ceil(N / 16) tiles of tile_bytes, 64-byte aligned */
  size_t tile_bytes;   /* ml_x16_tile_bytes(wt, K) */
  int64_t N, K;
  const void *a;       /* M panel rows (ml_panel_layout(wt, K)), a_row_bytes apart, 64-aligned */
  size_t a_row_bytes;
  int64_t M;
  float *y;            /* y[m * ldy + n] */
  int64_t ldy;
} ml_packed_args;

typedef void (*ml_packed_fn)(const ml_packed_args *p, void *work, int ith, int nth);

#define ML_X16_WORK_U ((size_t)32 << 10)
#define ML_X16_WORK_BYTES(K) (ML_X16_WORK_U + ((size_t)(K) * 32 + 4096 > ((size_t)512 << 10) \
                                               ? (size_t)(K) * 32 + 4096 : ((size_t)512 << 10)))

/* The small vector operations of the forward pass outside the matrix products (attention's
 * dot products and accumulations, f16 key/value rows to f32, RMSNorm, LayerNorm, SwiGLU,
 * GELU, residual adds) and the sampler's exponentials. */
typedef struct ml_rowops {
  float (*dot)(const float *a, const float *b, int64_t n);
  void (*axpy)(float a, const float *x, float *y, int64_t n); /* y += a x */
  void (*scale)(float a, float *y, int64_t n);                /* y *= a */
  void (*add)(float *y, const float *x, int64_t n);           /* y += x */
  void (*f16_to_f32)(const ml_fp16 *x, float *y, int64_t n);
  void (*f32_to_f16)(const float *x, ml_fp16 *y, int64_t n);
  /* y = x / sqrt(mean(x²) + eps) * w */
  void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
  void (*silu_mul)(float *g, const float *u, int64_t n);      /* g = silu(g) * u */
  /* y = x >= cut ? exp((x - shift) * scale) : 0, returning the sum of y (in double) */
  double (*exp_shift)(float *y, const float *x, int64_t n, float shift, float scale, float cut);
  /* g = gelu(g) * u (u NULL: gelu(g)) as ggml computes it: 0 at or below -10, g at or above
   * 10, else table[f16(g)] (ml_gelu_f16_table) to f32; bit-identical at every level */
  void (*gelu_mul)(float *g, const float *u, int64_t n, const ml_fp16 *table);
  /* LayerNorm as ggml_norm then ggml_mul and ggml_add: the mean and the variance (of the
   * float differences' float squares) summed in double, then y = ((x - mean) * s) * w + b
   * rounded at each step (no fused multiply-add); w or b NULL: that step is skipped. y may be x. */
  void (*layernorm)(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);
  /* y = x + b (b NULL: x) clamped to [-lim, lim] when lim > 0, NaN kept; one rounding, so
   * bit-identical at every level. y may be x. (MPT's clamp_kqv with its q, k, v biases.) */
  void (*add_clamp)(float *y, const float *x, const float *b, int64_t n, float lim);
} ml_rowops;

/* ggml's GELU table: gelu (tanh form) of every f16 value, rounded to f16, and one entry of
 * padding (a 32-bit gather may read it). Built on first use, thread-safe. */
const ml_fp16 *ml_gelu_f16_table(void);

typedef struct ml_kernels {
  const char *name;                           /* "ref", "avx2", "avx512", "avx512-vnni", ... */
  ml_vec_dot_fn vec_dot[ML_TYPE_COUNT];       /* by weight type */
  ml_act_quantize_fn quantize[ML_TYPE_COUNT]; /* by vec_dot type */
  ml_packed_fn gemv[ML_TYPE_COUNT];           /* by weight type, x16 weights, few rows */
  ml_packed_fn gemm[ML_TYPE_COUNT];           /* by weight type, x16 weights, many rows */
  ml_rowops row;
  /* Which table provided each entry (set by ml_kernels_merge; NULL = the first table). */
  const char *by_dot[ML_TYPE_COUNT], *by_gemv[ML_TYPE_COUNT], *by_gemm[ML_TYPE_COUNT], *by_row;
} ml_kernels;

/* Bytes ahead of the packed quantized GEMVs' read position that they prefetch into L2, 0 for
 * none: set once by the dispatcher for the CPU's vendor (4096 on Intel, 0 on AMD, where
 * software prefetch slowed the stream), read by the kernels. */
extern int ml_x16_prefetch;

/* The portable C level: every weight type f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0,
 * q2_K..q6_K, every vec_dot type, and every row op. No packed kernels. */
extern const ml_kernels ml_kernels_ref;

/* Overlay src's non-NULL entries on dst (dst->name becomes src->name). */
void ml_kernels_merge(ml_kernels *dst, const ml_kernels *src);

/* Items [*i0, *i1) of `count` for thread ith of nth: contiguous, sizes differing by <= 1. */
static inline void ml_slice(int64_t count, int ith, int nth, int64_t *i0, int64_t *i1) {
  if (count <= 0 || nth <= 0 || ith < 0 || ith >= nth) {
    *i0 = *i1 = 0;
    return;
  }
  int64_t per = count / nth, extra = count % nth;
  *i0 = per * ith + (ith < extra ? ith : extra);
  *i1 = *i0 + per + (ith < extra ? 1 : 0);
}

/* The ref activation quantizers, for tests of other levels (same as ml_kernels_ref.quantize). */
void ml_ref_quantize_act_q8_0(const float *x, void *dst, int64_t n);
void ml_ref_quantize_act_q8_1(const float *x, void *dst, int64_t n);

/* ---- the x16 packed weight layout (pack.c; byte layout per type in x16.h) ----
 * Rows are grouped in tiles of 16 (the last tile padded with zero rows). A tile is a
 * sequence of K / blck packed blocks; a packed block holds the same block of all 16 rows
 * (16 x the GGUF block bytes), rearranged so that the values of one "k-group" (4
 * consecutive K for the int8 formats, 2 for bf16) of the 16 rows are 64 contiguous bytes,
 * byte 4 r + i being row r, element 4 g + i of k-group g; scales become arrays over rows. */
#define ML_X16 16

/* Bytes of one tile of 16 rows of K elements; 0 if wt has no x16 layout or K does not
 * fit it (K a multiple of the type's block, and of 32 for f16 / bf16). */
size_t ml_x16_tile_bytes(ml_type wt, int64_t K);
/* Pack tiles [t0, t1) of the N rows (w_row_bytes apart, aligned to their block struct)
 * into dst (tile t at dst + t * tile_bytes). Rows past N are zeros. */
void ml_x16_pack(ml_type wt, const void *w, size_t w_row_bytes, int64_t N, int64_t K, void *dst,
                 int64_t t0, int64_t t1);

/* One x16 block of 16 rows in plain form (ml_x16_unpack): unsigned values v and scales,
 * with, for the 32-element formats (kind ML_X16_B32), w = d (v - off) + m, and for the K
 * formats (ML_X16_KQ) w = d sc[j] v - dmin mn[j] in sub-block j of S elements. */
enum { ML_X16_NONE, ML_X16_B32, ML_X16_KQ, ML_X16_BF16, ML_X16_F16 };
typedef struct ml_x16_info {
  int kind;
  int blck;      /* elements per packed block: 32 or 256 */
  int off;       /* ML_X16_B32: value offset (q8_0 128, q4_0 8, q5_0 16, else 0) */
  int has_min;   /* ML_X16_B32: the *_1 formats (m, activation sums from q8_1's s) */
  int sub;       /* ML_X16_KQ: elements per sub-block (16 or 32) */
} ml_x16_info;
int ml_x16_info_get(ml_type wt, ml_x16_info *info); /* 0, or -1 if wt has no x16 layout */

typedef struct ml_x16_block {
  uint8_t v[ML_X16][256];     /* [row][element of the block] */
  float d[ML_X16], m[ML_X16]; /* B32: d, m; KQ: d, dmin */
  int32_t sc[16][ML_X16];     /* KQ: [sub-block][row] */
  int32_t mn[16][ML_X16];
  float f[ML_X16][32];        /* BF16 / F16: the values */
} ml_x16_block;
/* Unpack packed block b of a tile (portable C: the AMX kernels and the tests use it). */
void ml_x16_unpack(ml_type wt, const void *tile, int64_t b, ml_x16_block *out);

/* Tests: pack N contiguous rows and compare the values ml_x16_unpack reads back with the
 * type's to_float. 1 with *maxdiff set, 0 if wt has no x16 layout for K, -1 (error set) if
 * out of memory. */
int ml_x16_selfcheck(ml_type wt, const void *w, int64_t N, int64_t K, double *maxdiff);

/* ---- activation panels (pack.c) ----
 * The activations of one row converted to wt's vec_dot type, laid out for the packed
 * kernels: byte offsets within a panel row of each part present (-1 if absent):
 *   qs    int8 [K]              q8_0 / q8_1 / q8_K values, contiguous
 *   d     float [K / blk]       the activation block scales (blk 32, or 256 for q8_K)
 *   isum  int32 [K / 32]        q8_0/q8_1: sum of qs per block
 *   fsum  float [K / 32]        q8_1: its stored s (half) as float
 *   bs16  int16 [K / 16]        q8_K: bsums
 *   bs32  int16 [K / 32]        q8_K: sums of 32
 *   bf16  uint16 [K]            bf16 rows as is (kernels that multiply in f32 widen them
 *                               while packing their register blocks: a shift)
 *   f32   float [K]             f16 rows as float (the rounded values)
 */
typedef struct ml_panel {
  int64_t qs, d, isum, fsum, bs16, bs32, bf16, f32;
  size_t row_bytes; /* multiple of 64 */
} ml_panel;
int ml_panel_layout(ml_type wt, int64_t K, ml_panel *pl); /* 0, or -1: no x16 layout */
/* raw: one row of K values in wt's vec_dot type (as quantize[] writes it). */
void ml_panel_fill(ml_type wt, const void *raw, int64_t K, void *row);

#endif
