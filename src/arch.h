/* arch.h: what a model family declares, in its own file arch_<name>.c:
 *
 *   - its metadata keys beyond the common ones (model.c reads embedding_length,
 *     block_count, head_count(_kv), feed_forward_length, context_length, key/value_length
 *     and rope.* for every family), each into a field of ml_hparams with its default;
 *   - its tensors, each with the shape it must have and whether it is required; model.c
 *     binds them, checks presence, type and shape, and refuses a file with a tensor the
 *     family does not declare (a variant moonlm would otherwise silently ignore);
 *   - an optional hparams() hook for what a table cannot say (defaults that depend on
 *     other values);
 *   - forward(): the model, composed from the blocks of forward.h, run by every thread of
 *     a chunk's parallel region.
 *
 * "How to add a model family" in docs/DESIGN.md walks through one.
 */
#ifndef ML_ARCH_H
#define ML_ARCH_H

#include <stddef.h>

#include "forward.h"
#include "model.h"

/* Symbolic tensor dimensions, resolved from the hyper-parameters. */
typedef enum ml_dim {
  ML_DIM_NONE = 0, /* a vector: the tensor has one dimension */
  ML_DIM_EMBD,     /* n_embd */
  ML_DIM_VOCAB,    /* n_vocab */
  ML_DIM_Q,        /* n_head * head_dim */
  ML_DIM_KV,       /* n_head_kv * head_dim */
  ML_DIM_QKV,      /* Q + 2 KV */
  ML_DIM_FF,       /* n_ff */
  ML_DIM_FF2,      /* 2 n_ff */
  ML_DIM_HEAD,     /* head_dim */
  ML_DIM_ROT2,     /* n_rot / 2 */
  ML_DIM_POS,      /* n_ctx_train */
  ML_DIM_TYPES,    /* n_token_types */
  ML_DIM_CLASSES,  /* n_classes */
} ml_dim;

enum {
  ML_T_REQUIRED = 1,
  ML_T_LAYER = 2, /* per layer: the name follows "blk.<il>." */
};

typedef struct ml_tensor_decl {
  const char *name; /* GGUF name, without "blk.<il>." for per-layer tensors */
  size_t offset;    /* of the ml_tensor in ml_layer (per layer) or ml_model */
  unsigned char d0, d1, flags; /* shape outermost first (ml_dim); ML_T_* */
} ml_tensor_decl;

#define ML_GLOBAL(name, field, d0, d1, flags) {name, offsetof(ml_model, field), d0, d1, flags}
#define ML_LAYER(name, field, d0, d1, flags) {name, offsetof(ml_layer, field), d0, d1, (flags) | ML_T_LAYER}

typedef enum ml_key_kind { ML_KEY_INT, ML_KEY_FLOAT, ML_KEY_BOOL, ML_KEY_UINT_ENUM } ml_key_kind;

typedef struct ml_key_decl {
  const char *suffix;   /* after "<arch>." */
  ml_key_kind kind;     /* field: int64_t (INT), double (FLOAT), int (BOOL, UINT_ENUM) */
  size_t offset;        /* in ml_hparams */
  int required;
  double def, lo, hi;   /* default when absent; allowed range */
} ml_key_decl;

#define ML_KEY(suffix, kind, field, req, def, lo, hi) {suffix, kind, offsetof(ml_hparams, field), req, def, lo, hi}

struct ml_arch {
  const char *name;               /* general.architecture */
  const ml_key_decl *keys;        /* terminated by a NULL suffix */
  const ml_tensor_decl *tensors;  /* terminated by a NULL name */
  /* After the keys are read: defaults that depend on other values, checks. 0 or -1 with
   * an error. May be NULL. */
  int (*hparams)(ml_hparams *hp, const ml_gguf *g, const char *path);
  void (*forward)(ml_thr *t);
};

extern const ml_arch ml_arch_llama, ml_arch_qwen2, ml_arch_qwen3, ml_arch_phi3, ml_arch_mpt, ml_arch_gemma2,
    ml_arch_gemma3, ml_arch_bert;

/* Blocks shared by families: llama, qwen2, qwen3, phi3 (arch_llama.c); gemma2, gemma3
 * (arch_gemma2.c). */
void ml_forward_llama(ml_thr *t);
void ml_forward_gemma(ml_thr *t);
int ml_gemma_hparams(ml_hparams *hp, const ml_gguf *g, const char *path);

/* NULL for an architecture we do not run. */
const ml_arch *ml_arch_find(const char *name, size_t len);

/* Reading a GGUF key of the architecture inside an hparams() hook: "<arch>.<suffix>". */
const ml_gguf_kv *ml_arch_key(const ml_gguf *g, const char *arch, const char *suffix);

#endif
