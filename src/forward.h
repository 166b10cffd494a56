/* forward.h: the shared blocks a family's forward pass is composed of (arch_<name>.c).
 *
 * A chunk of tokens runs in one OpenMP parallel region (forward.c): every thread calls the
 * family's forward function with its own ml_thr, and so every block, in the same order.
 * A block takes its share of the work (rows of the chunk, output columns of a product,
 * attention items) and the threads meet at a barrier only where a block reads what another
 * thread wrote: row blocks (norms, adds, RoPE) work on the thread's own rows and leave
 * t->dirty set; blocks that read across rows (products, attention, the output) first sync.
 *
 * Buffers (the context's scratch, n rows each, n = tokens in the chunk):
 *   x (n, E) residual stream   h (n, max(E, Q)) block input / projection output
 *   q (n, Q)  k, v (n, KV)     att (n, Q) attention output
 *   g, u (n, F) feed-forward   tmp (n, max(Q + 2 KV, 2 F)) fused projection outputs
 * with E = n_embd, Q = n_head * head_dim, KV = n_head_kv * head_dim, F = n_ff.
 */
#ifndef ML_FORWARD_H
#define ML_FORWARD_H

#include "context.h"
#include "flash.h"
#include "kernels/dispatch.h"

/* The chunk: read-only for the blocks once the region starts, except `failed`. */
typedef struct ml_fwd {
  int64_t n;              /* tokens in the chunk */
  const int32_t *tokens;
  const uint8_t *want;
  float *logits, *hidden;
  int64_t n_out;          /* rows that want outputs */
  int64_t out_row[ML_MAX_BATCH]; /* their rows */
  int n_runs;             /* runs of consecutive rows of one sequence */
  struct { int64_t r0, n; } runs[ML_MAX_BATCH];
  ml_flash_seg seg[2][ML_MAX_BATCH]; /* the runs as attention segments: global, sliding-window cache */
  int failed;             /* a kernel refused (atomic) */
  float *rope;            /* n rows of n_rot floats: each row's RoPE cos, then sin (ml_blk_attention) */
} ml_fwd;

/* One thread's handle on the chunk. */
typedef struct ml_thr {
  ml_fwd *f;
  ml_context *c;
  const ml_model *m;
  const ml_hparams *hp;
  const ml_rowops *ro;
  int ith, nth;
  int64_t n;       /* rows in the chunk */
  int64_t r0, r1;  /* this thread's rows */
  int dirty;       /* rows written since the last barrier */
  float *scratch;  /* this thread's attention scratch */
  const float *rope_freq; /* the frequencies and scale f->rope holds for rows r0..r1 (NULL: none yet) */
  float rope_mscale;
} ml_thr;

typedef enum ml_norm_kind {
  ML_NORM_NONE,  /* y = x */
  ML_NORM_RMS,   /* x / sqrt(mean(x²) + eps) * w */
  ML_NORM_LAYER, /* (x - mean) / sqrt(var + eps) * w + b (w, b optional) */
} ml_norm_kind;

typedef enum ml_ffn_kind {
  ML_FFN_SWIGLU, /* down(silu(gate·x) * up·x); a (2F, E) up without gate holds [gate; up] */
  ML_FFN_GEGLU,  /* down(gelu(gate·x) * up·x) */
  ML_FFN_GELU,   /* down(gelu(up·x + b_up)) + b_down */
} ml_ffn_kind;

/* How a layer's attention is computed (attention.c). */
typedef struct ml_attn {
  int64_t il;            /* the layer */
  const float *inv_freq; /* RoPE inverse frequencies (n_rot/2), or NULL: no RoPE */
  float rope_mscale;     /* multiplies the rotated q and k (1) */
  float scale;           /* multiplies q·k */
  float softcap;         /* scores become cap * tanh(s / cap) when > 0 */
  const float *alibi;    /* per-head slopes: score -= slope * (i - j); NULL none */
  int64_t window;        /* a query sees the keys of the last `window` positions; 0 all */
  int causal;            /* 0: all of the sequence's keys (encoders) */
} ml_attn;

/* The prepared weights of layer il, and the context's rope table for global layers. */
const ml_layer_w *ml_layer_weights(const ml_thr *t, int64_t il);
const float *ml_rope_table(const ml_thr *t);

/* Wait for the other threads if this thread wrote rows since the last barrier. */
void ml_sync(ml_thr *t);

/* x = token_embd[ids] * scale, rows of any type. */
void ml_blk_embed(ml_thr *t, float scale);
/* x += rows of tab: its row `pos` of each token (positions) or row 0 (token type 0). */
void ml_blk_embed_add(ml_thr *t, const ml_tensor *tab, int by_position);
/* y = norm(x) over rows of width dim; w, b may be empty tensors (no multiply / no bias). */
void ml_blk_norm(ml_thr *t, float *y, const float *x, int64_t dim, ml_norm_kind kind, const ml_tensor *w,
                 const ml_tensor *b);
/* y += x over rows of width dim. */
void ml_blk_add(ml_thr *t, float *y, const float *x, int64_t dim);
/* y_i = x · w_iᵀ for up to three weights sharing x (rows ldx apart); y_i rows are w_i->N wide. */
void ml_blk_products(ml_thr *t, const float *x, int64_t ldx, int nw, const ml_weight *const *w, float *const *y);
/* y = x · wᵀ (+ b). */
void ml_blk_linear(ml_thr *t, const ml_weight *w, const ml_tensor *b, const float *x, int64_t ldx, float *y);
/* q, k, v from h: separate or fused projections, their biases, and the clamp (hp->clamp_kqv). */
void ml_blk_qkv(ml_thr *t, const ml_layer *L, const ml_layer_w *W);
/* Per-head RMSNorm of q and k with the weights (hd) qn, kn. */
void ml_blk_qk_norm(ml_thr *t, const ml_tensor *qn, const ml_tensor *kn);
/* att = attention over the cache after caching this chunk's k and v (RoPE, if any, is
 * applied to q and k first). */
void ml_blk_attention(ml_thr *t, const ml_attn *a);
/* h = FFN(h) of the given kind. */
void ml_blk_ffn(ml_thr *t, const ml_layer *L, const ml_layer_w *W, ml_ffn_kind kind);
/* Final norm of the rows that want outputs, their hidden states, logits (when the model has
 * an output matrix) soft-capped by hp->final_softcap. */
void ml_blk_output(ml_thr *t, ml_norm_kind kind, const ml_tensor *w, const ml_tensor *b);

/* The attention kernel (attention.c): cache the chunk's keys and values for layer a->il,
 * then att = softmax(mask(q·kᵀ))·v per query row. Called by every thread of the region. */
void ml_attention(ml_thr *t, const ml_attn *a);
/* The chunk's runs as segments of cache kv (seg: f->n_runs entries), before the region. */
void ml_attention_segments(const ml_context *c, const ml_kvcache *kv, const ml_fwd *f, ml_flash_seg *seg);

/* GELU as ggml computes it: tanh approximation read from a table indexed by the input
 * rounded to f16, the result rounded to f16; 0 below -10, x above 10. In place. */
void ml_gelu_rows(float *x, int64_t n);
/* g = gelu(g) * u. */
void ml_gelu_mul_rows(float *g, const float *u, int64_t n);

#endif
