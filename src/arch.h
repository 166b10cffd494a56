/* arch.h: what distinguishes the architectures that share the llama forward pass. Each
 * lives in its own small file (arch_<name>.c); the forward pass reads these flags and the
 * presence of optional tensors, never the architecture's name. */
#ifndef ML_ARCH_H
#define ML_ARCH_H

#include "model.h"

struct ml_arch {
  const char *name;          /* general.architecture */
  ml_rope_type rope_type;    /* pairs (2i, 2i+1) or (i, i + n_rot/2) */
  int needs_qkv_bias;        /* attn_{q,k,v}.bias must be present (loaded when present anyway) */
  int needs_qk_norm;         /* attn_{q,k}_norm must be present (per-head RMSNorm of q and k) */
  /* Adjust hyper-parameters after the generic {arch}.* keys are read; may be NULL. */
  int (*fixup)(const ml_gguf *g, ml_hparams *hp);
};

extern const ml_arch ml_arch_llama;
extern const ml_arch ml_arch_qwen2;
extern const ml_arch ml_arch_qwen3;

/* NULL for an architecture we do not run. */
const ml_arch *ml_arch_find(const char *name, size_t len);

#endif
