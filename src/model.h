/* model.h: a GGUF language model (llama family) and the contexts that run it.
 *
 * A model is the mapped file, its hyper-parameters, its weights (tensor views into the
 * mapping: zero copy) and its vocabulary. It is immutable after loading and refcounted, so
 * any number of contexts and Lua states share one. A context owns a KV cache and the
 * scratch memory of the forward pass; it serves one thread at a time (a second caller gets
 * an error, not a race).
 */
#ifndef ML_MODEL_H
#define ML_MODEL_H

#include <stdint.h>

#include <pthread.h>

#include "gguf.h"
#include "matmul.h"
#include "tensor.h"
#include "tokenizer.h"

typedef enum ml_rope_type { ML_ROPE_NORM = 0, ML_ROPE_NEOX = 2 } ml_rope_type;

/* Pooling of an embedding model's hidden states (llama.cpp's pooling_type values). */
typedef enum ml_pooling {
  ML_POOL_NONE = 0, ML_POOL_MEAN = 1, ML_POOL_CLS = 2, ML_POOL_LAST = 3, ML_POOL_RANK = 4
} ml_pooling;

typedef struct ml_hparams {
  int64_t n_vocab;
  int64_t n_ctx_train;
  int64_t n_embd;      /* residual stream width */
  int64_t n_layer;
  int64_t n_head;      /* query heads */
  int64_t n_head_kv;   /* key/value heads (GQA: n_head is a multiple) */
  int64_t head_dim;    /* per head, for q, k and v */
  int64_t n_ff;        /* feed-forward hidden width */
  int64_t n_rot;       /* leading dims of each head that RoPE rotates */
  double norm_eps;     /* RMSNorm or LayerNorm epsilon, as the family reads it */
  double rope_base;    /* rope.freq_base */
  double rope_scale;   /* 1 / linear scaling factor */
  ml_rope_type rope_type;
  /* set by the families that use them (arch_<name>.c reads their keys) */
  int causal;             /* 0: every token attends to its whole sequence (encoders) */
  double attn_scale;      /* multiplies q·k: 1/sqrt(head_dim) unless the family says */
  double embd_scale;      /* multiplies the token embeddings (gemma: sqrt(n_embd)); 1 */
  double alibi_bias;      /* ALiBi's max bias (mpt): slopes when > 0 */
  double clamp_kqv;       /* q, k and v clamped to [-c, c] when > 0 (mpt) */
  double attn_softcap;    /* scores become cap * tanh(s / cap) when > 0 (gemma2) */
  double final_softcap;   /* the same on the logits */
  int64_t n_swa;          /* sliding window: keys a local layer's query sees, itself included; 0 none */
  int64_t swa_pattern;    /* layers il with il % pattern < pattern - 1 are local */
  double rope_base_swa;   /* RoPE base of the local layers (gemma3) */
  double rope_attn_factor;/* multiplies the rotated q and k (LongRoPE's attention factor); 1 */
  int64_t n_ctx_orig;     /* rope.scaling.original_context_length (LongRoPE picks its factors by it) */
  ml_pooling pooling;     /* embedding models: what model:embed returns by default */
  int64_t n_token_types;  /* rows of token_types (BERT) */
  int64_t n_classes;      /* outputs of a reranker's classifier (cls.output) */
} ml_hparams;

/* Is layer il a sliding-window (local) layer? */
static inline int ml_layer_is_swa(const ml_hparams *hp, int64_t il) {
  return hp->n_swa > 0 && hp->swa_pattern > 0 && il % hp->swa_pattern < hp->swa_pattern - 1;
}

/* Every tensor a layer of any family may have; a family binds the ones it declares (the
 * others stay empty, storage NULL). Shapes are (out, in) for matrices. E = n_embd,
 * Q = n_head*hd, KV = n_head_kv*hd, F = n_ff. */
typedef struct ml_layer {
  ml_tensor attn_norm, attn_norm_b;     /* (E) pre-attention norm, and its bias (LayerNorm) */
  ml_tensor wq, wk, wv, wo;             /* (Q, E), (KV, E) x2, (E, Q) */
  ml_tensor wqkv;                       /* (Q + 2 KV, E): q, k, v fused, in that order */
  ml_tensor bq, bk, bv, bqkv, bo;       /* optional biases */
  ml_tensor q_norm, k_norm;             /* (hd) per-head RMSNorm of q and k (qwen3, gemma3) */
  ml_tensor attn_post_norm;             /* (E) norm of the attention output (gemma) */
  ml_tensor attn_out_norm, attn_out_norm_b; /* (E) post-LN after the attention residual (bert) */
  ml_tensor ffn_norm, ffn_norm_b;       /* (E) pre-FFN norm */
  ml_tensor w_gate, w_up, w_down;       /* (F, E) x2, (E, F); w_up is (2F, E) [gate; up] when fused */
  ml_tensor b_up, b_down;               /* optional biases */
  ml_tensor ffn_post_norm;              /* (E) norm of the FFN output (gemma) */
  ml_tensor out_norm, out_norm_b;       /* (E) post-LN after the FFN residual (bert) */
} ml_layer;

/* The matrices of a layer prepared for the kernel level (packed copies; see matmul.h).
 * Those the family does not have stay empty. */
typedef struct ml_layer_w {
  ml_weight wq, wk, wv, wqkv, wo, w_gate, w_up, w_down;
} ml_layer_w;

typedef struct ml_arch ml_arch;

typedef struct ml_model {
  int refcount; /* atomic */
  char *path;
  char *arch_name;
  const ml_arch *arch;
  ml_gguf *gguf;
  ml_storage *storage;  /* the whole mapping, for the tensor views */
  ml_vocab *vocab;      /* NULL if the file has no tokenizer */
  int vocab_only;
  ml_hparams hp;
  ml_tensor tok_embd;   /* (n_vocab, n_embd) */
  ml_tensor pos_embd;   /* (n_ctx_train, n_embd) learned positions (bert) */
  ml_tensor tok_types;  /* (n_token_types, n_embd) (bert) */
  ml_tensor tok_norm, tok_norm_b; /* (n_embd) LayerNorm of the embeddings (bert) */
  ml_tensor output_norm, output_norm_b; /* (n_embd) */
  ml_tensor output;     /* (n_vocab, n_embd); a view of tok_embd when tied; empty for encoders */
  ml_tensor rope_freqs; /* (n_rot/2) frequency factors (Llama 3.1) */
  ml_tensor rope_long, rope_short; /* (n_rot/2) LongRoPE factors (phi3 128k) */
  ml_tensor cls, cls_b;         /* (n_embd, n_embd) classifier head of a reranker (bert) */
  ml_tensor cls_out, cls_out_b; /* (n_classes, n_embd) */
  int tied_output;
  ml_layer *layers;     /* n_layer */
  /* RoPE inverse frequencies per pair (n_rot/2): base^(-2i/n_rot) * scale / factor[i]; the
   * long table exists with LongRoPE factors, the swa table for families whose local layers
   * have their own base */
  float *rope_inv_freq, *rope_inv_freq_long, *rope_inv_freq_swa;
  float *alibi_slopes;  /* (n_head) when hp.alibi_bias > 0 */
  ml_type main_type;    /* type of the first layer's attention matrix, for info */
  int64_t n_params;
  size_t weight_bytes;  /* bytes of the matrices read per token */
  /* prepared weights, made on first use (not at load: loading stays a mapping) */
  pthread_mutex_t prep_mu;
  int prepared;         /* atomic: 1 once lw/output_w are ready */
  ml_layer_w *lw;       /* n_layer */
  ml_weight output_w;
  double prepare_seconds;
  int64_t handle;       /* registry handle (0: not registered) */
  struct ml_gvocab *gvocab; /* the vocabulary's index for grammars, made on first use */
  uint64_t dev, ino;    /* file identity, for sharing one load ... */
  uint64_t size;        /* ... while the file is unchanged: a file rewritten in place (cp, */
  int64_t mtime_ns;     /* an editor) is a new load, not the old mapping of other bytes */
} ml_model;

/* Options of ml_model_load. */
typedef struct ml_model_opts {
  int vocab_only; /* tokenizer and metadata only; no weights are checked or touched */
  int no_mmap;    /* read the file into memory instead of mapping it */
} ml_model_opts;

/* Load a GGUF file. NULL + ml_errmsg on failure ("unsupported architecture 'x'", a tensor
 * with the wrong shape, a truncated file ...). refcount starts at 1. */
ml_model *ml_model_load(const char *path, const ml_model_opts *opts);
void ml_model_retain(ml_model *m);
void ml_model_release(ml_model *m);
/* Prepare the weights for the active kernel level, once (thread-safe). 0 or -1. */
int ml_model_prepare(ml_model *m);
/* The same, calling progress(ud, done, total) after each matrix with the bytes of weights
 * prepared so far and in all (not at all when they already are). progress returning 0
 * cancels: what was prepared is released, the model stays as loaded, and -1 comes back with
 * "preparing the weights was cancelled". progress runs on the calling thread; it must not
 * use the model (a decode from inside it fails with an error). */
typedef int (*ml_progress_fn)(void *ud, size_t done, size_t total);
int ml_model_prepare_progress(ml_model *m, ml_progress_fn progress, void *ud);
/* The prepared weight (packed for the kernel level) behind t when t is a view of one of the
 * model's matrices as mapped (model:tensor(name)), preparing the model first; else NULL
 * (also when preparing fails: the caller then reads t as it is). */
const ml_weight *ml_model_weight_of(ml_model *m, const ml_tensor *t);

/* ---- the process-wide registry: models and contexts by integer handle ----
 * Loading a file that is already loaded (same file, same vocab_only) returns the loaded
 * model. Handles let another Lua state (an OpenResty worker-thread VM, a love.thread)
 * attach to the same object. The registry holds no references: an object leaves it when
 * its last reference goes. */
ml_model *ml_registry_load(const char *path, const ml_model_opts *opts); /* retained */
int64_t ml_model_handle(const ml_model *m);
ml_model *ml_registry_model(int64_t handle); /* retained, or NULL if gone */

/* ---- contexts ---- */

typedef struct ml_context ml_context;

typedef struct ml_context_opts {
  int64_t n_ctx;     /* KV cells shared by all sequences (0: min(n_ctx_train, 4096)) */
  int64_t n_batch;   /* tokens per forward chunk (0: 512) */
  int kv_type;       /* ML_TYPE_F16, ML_TYPE_F32 or ML_TYPE_Q8_0; -1: the default (f16) */
  int n_seq;         /* sequences (1..64) */
  int embeddings;    /* keep the final hidden states (for embeddings) */
} ml_context_opts;

ml_context *ml_context_new(ml_model *m, const ml_context_opts *opts); /* retains m; opts may be NULL */
void ml_context_retain(ml_context *c);
int64_t ml_context_handle(const ml_context *c);
ml_context *ml_registry_context(int64_t handle); /* retained, or NULL if gone */
void ml_context_release(ml_context *c);
ml_model *ml_context_model(const ml_context *c);
int64_t ml_context_n_ctx(const ml_context *c);
int ml_context_n_seq(const ml_context *c);
ml_type ml_context_kv_type(const ml_context *c);
int64_t ml_context_used(const ml_context *c); /* cells in use */
size_t ml_context_kv_bytes(const ml_context *c); /* memory of the key/value caches */

/* One decode call: tokens[i] goes to sequence seq[i] at that sequence's next position, in
 * order. Rows with want[i] set get logits (n_vocab floats each, in order) in `logits`
 * (and the final hidden state in `hidden` if non-NULL, n_embd floats each). Returns 0, or
 * -1 with an error; a full context ("context full (n_ctx = N)") and bad ids are detected
 * before anything is written, so the context is unchanged and usable. */
int ml_context_decode(ml_context *c, int64_t n, const int32_t *tokens, const int32_t *seq,
                      const uint8_t *want, float *logits, float *hidden);

/* Sequences */
int64_t ml_context_pos(const ml_context *c, int seq);       /* tokens in seq */
int ml_context_clear(ml_context *c, int seq);               /* seq < 0: all */
/* Keep the first n tokens of seq; returns how many are kept (fewer when a sliding-window
 * cache no longer holds what position n needs: then 0), or -1. */
int64_t ml_context_truncate(ml_context *c, int seq, int64_t n);
int ml_context_copy(ml_context *c, int from, int to);       /* to becomes a copy of from (shares cells) */
/* Context shift: positions [n_keep, n_keep + n_discard) of seq go and the later ones move
 * down by n_discard, their cached keys rotated by RoPE (-n_discard) rather than computed
 * again, as llama.cpp's K-shift does. Cells the sequence shares with others are copied
 * first. 0, or -1 with an error (nothing changed): a range outside the sequence, a model
 * whose positions cannot move (learned position embeddings, encoders), or no free cells for
 * the copies ("context full"). */
int ml_context_shift(ml_context *c, int seq, int64_t n_keep, int64_t n_discard);

/* Serialise the cache of one sequence (and its tokens' cells) for sessions. */
size_t ml_context_state_size(const ml_context *c, int seq);
int ml_context_state_save(const ml_context *c, int seq, void *buf, size_t cap);
int ml_context_state_load(ml_context *c, int seq, const void *buf, size_t len);

#endif
