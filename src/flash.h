/* flash.h: scaled dot-product attention over a key/value store, flash-style: the one kernel
 * the forward pass (attention.c) and the tensor API (tensor.attention) use.
 *
 *   out[r, h] = Σ_j softmax_j(s[r, h, j]) · V[j, h / g]          g = n_head / n_head_kv (GQA)
 *   s[r, h, j] = cap(scale · q[r, h] · K[j, h / g]) + mask[r, j] - slope_h · |qpos_r - j|
 *
 * over the keys j a query row may see: j < n_kv; with causal, pos_j <= qpos_r; with a window
 * w, also pos_j > qpos_r - w, where pos_j = kpos0 + j is the key's position (segments below). cap(x) is
 * softcap · tanh(x / softcap) when softcap > 0. A row that sees no key gets zeros.
 *
 * Keys and values are rows of a store in f32, f16 or q8_0 (the KV cache types): key j of
 * KV head h is at k + cells[j] · row_bytes + h · head_bytes (cells NULL: row j). Queries
 * and the output are f32 (strides below).
 *
 * How it runs: flash-style. Query rows are cut into tiles of up to ML_FLASH_TILE rows that
 * share one segment of keys; for each (tile, KV head) the g query heads of every row form one
 * small matrix of M query vectors, walked over key blocks of ML_FLASH_BLOCK keys (scores,
 * then an online softmax, then the value product), so memory stays O(block). How a block is
 * read depends on M:
 *   M < 16 (decode: one row's g heads; short tails of a prefill): the K and V rows are read
 *     where they are in the store, in its type, and converted in registers, each row once for
 *     all M vectors (scores of up to 8 vectors against a few keys at a time, then one
 *     horizontal reduction; the value product M vectors x a slice of the head at a time).
 *     Decode streams the whole cache once per token, so this path is bound by the cache's
 *     bytes and the FMAs and makes no f32 copy of the block.
 *   M >= 16 (prefill): the block is converted to f32 once, the keys straight into the
 *     transposed layout (16 keys at a time converted in registers and transposed there),
 *     and both products are register-blocked over 4 query vectors.
 * The next block's rows are prefetched into L2 while a block is worked on. Work items are
 * (tile, KV head, key chunk), the last tiles first (causal: the longest items, so the
 * short ones even out the threads at the end): a long key list is cut into chunks when there
 * are too few tiles and heads to keep the threads busy (decode: one query row, a long cache),
 * and the chunks' partial results (M x (head_dim + 2) floats each) are merged after a barrier.
 */
#ifndef ML_FLASH_H
#define ML_FLASH_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ML_FLASH_TILE 16  /* query rows per tile */
#define ML_FLASH_BLOCK 64 /* keys converted and scored at a time */

/* Query rows [r0, r0 + n) read keys [0, n_kv) of the store through cells; key j sits at
 * position kpos0 + j. */
typedef struct ml_flash_seg {
  int64_t r0, n;
  const int32_t *cells; /* row of key j in the store, or NULL: row j */
  int64_t n_kv;
  int64_t kpos0;
} ml_flash_seg;

typedef struct ml_flash_args {
  int64_t n_head, n_head_kv, head_dim;
  /* queries and output: n_q rows; head h of row r at q + r * ldq + h * q_hs (q_hs 0:
   * head_dim, heads side by side in a row), the same for out */
  int64_t n_q;
  const float *q;
  int64_t ldq, q_hs;
  float *out;
  int64_t ldo, o_hs;
  const int64_t *qpos; /* position of each query row; NULL: row r of a segment is at
                          kpos0 + n_kv - n + r (the last rows of the keys) */
  /* keys and values */
  ml_type kv_type;   /* ML_TYPE_F32, ML_TYPE_F16 or ML_TYPE_Q8_0 */
  const uint8_t *k, *v;
  size_t row_bytes;  /* bytes between key rows */
  size_t head_bytes; /* bytes between KV heads (0: ml_type_nbytes(kv_type, head_dim), heads
                        side by side in a row) */
  int n_seg;
  const ml_flash_seg *seg;
  /* scores */
  float scale;
  float softcap;       /* 0: none */
  int causal;
  int64_t window;      /* 0: none */
  const float *mask;   /* additive, mask[r * ldmask + j], or NULL */
  int64_t ldmask;
  const float *slopes; /* ALiBi slope per query head, or NULL */
} ml_flash_args;

/* Checks an ml_flash_args (types, sizes, head counts): 0, or -1 with an error. */
int ml_flash_check(const ml_flash_args *a);

/* Scratch bytes for ml_flash with up to nth threads (independent of n_q and n_kv). */
size_t ml_flash_work_bytes(const ml_flash_args *a, int nth);

/* Called by every thread of the current OpenMP parallel region (or outside any region, by
 * one thread), with the same arguments; work: ml_flash_work_bytes(a, nth) bytes,
 * 64-byte aligned, shared. Contains worksharing loops and barriers: every thread of the
 * region must call it. */
void ml_flash(const ml_flash_args *a, void *work);

/* The same in a parallel region of its own on ml_get_threads() threads, allocating its
 * scratch. 0, or -1 with an error. */
int ml_flash_run(const ml_flash_args *a);

/* Name of the block kernels in use for head size 64 ("ref", "avx2", "avx512"). */
const char *ml_flash_kernels_name(void);

#endif
