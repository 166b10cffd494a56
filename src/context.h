/* context.h: the inside of a context, shared by context.c (life cycle, sequences, the
 * decode entry point), forward.c (the chunk driver and the shared blocks) and attention.c. */
#ifndef ML_CONTEXT_H
#define ML_CONTEXT_H

#include "kvcache.h"
#include "model.h"

#define ML_MAX_BATCH 1024 /* tokens per forward chunk, at most */
#define ML_SWA_SLACK 64    /* positions a sliding-window cache keeps beyond the window, so a
                              sequence can be rewound that far (truncate) */

struct ml_context {
  int refcount; /* atomic */
  int busy;     /* atomic: a decode or sequence operation is running */
  int64_t handle;
  ml_model *m;
  int64_t n_batch;
  int embeddings;
  ml_kvcache kv;       /* keys and values of the global layers */
  ml_kvcache kv_swa;   /* of the sliding-window layers (no layers when the family has none) */
  int64_t *kv_layer;   /* (n_layer) each layer's index in its cache */
  const float **layer_rope; /* (n_layer) the RoPE table each layer's keys are rotated with
                               (NULL: none), for context shifts */
  int64_t swa_keep;    /* positions a sequence keeps in kv_swa between chunks */
  const float *rope;   /* RoPE table of the global layers (LongRoPE: short or long by n_ctx) */
  /* scratch for one chunk of up to n_batch tokens, allocated once */
  float *x;       /* (n_batch, n_embd) residual stream */
  float *h;       /* (n_batch, max(n_embd, n_head*hd)) normalised input / projection out */
  float *q;       /* (n_batch, n_head*hd) */
  float *k, *v;   /* (n_batch, n_kv*hd) */
  float *att;     /* (n_batch, n_head*hd) attention output */
  float *g, *u;   /* (n_batch, n_ff) feed-forward */
  float *tmp;     /* (n_batch, max(n_head*hd + 2*n_kv*hd, 2*n_ff)) fused projection outputs */
  float *rows;    /* (n_batch, n_embd) final-norm rows whose logits are wanted */
  int32_t *cell;  /* (n_batch) cache cell of each token */
  int32_t *cell_swa; /* (n_batch) its cell in kv_swa */
  int64_t *pos;   /* (n_batch) position of each token */
  int32_t *seq;   /* (n_batch) sequence of each token */
  /* activations in the kernels' formats: one buffer per distinct format in flight */
  void *act[3];
  size_t act_bytes;
  float *att_scratch; /* per thread: a row of n_embd floats (ml_blk_embed_add) */
  size_t att_per_thread;
  void *flash_work;   /* ml_flash's work: per-thread tile state, split partial results */
  int max_threads;
};

/* Run rows [0, n) of a chunk whose tokens already have cells and positions; writes logits
 * (and hidden states) for rows with want[i]. Returns 0 or -1 (allocation failure inside a
 * kernel). */
int ml_forward(ml_context *c, int64_t n, const int32_t *tokens, const uint8_t *want, float *logits, float *hidden);

#endif
