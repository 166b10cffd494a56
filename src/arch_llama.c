/* arch_llama.c: Llama 1/2/3, TinyLlama, Mistral, SmolLM and everything else converted as
 * "llama": RMSNorm, RoPE on adjacent pairs, SwiGLU, no biases. Llama 3.1-style frequency
 * scaling arrives as the rope_freqs.weight tensor, which the loader applies for any arch. */
#include "arch.h"

#include <string.h>

const ml_arch ml_arch_llama = {"llama", ML_ROPE_NORM, 0, 0, NULL};

static const ml_arch *const all[] = {&ml_arch_llama, &ml_arch_qwen2, &ml_arch_qwen3};

const ml_arch *ml_arch_find(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strlen(all[i]->name) == len && memcmp(all[i]->name, name, len) == 0) return all[i];
  return NULL;
}
