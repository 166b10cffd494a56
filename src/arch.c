/* arch.c: the model families moonlm runs, by general.architecture. Adding a family is a
 * file arch_<name>.c, a line here and one in the Makefile (docs/DESIGN.md). */
#include "arch.h"

#include <stdio.h>
#include <string.h>

static const ml_arch *const all[] = {
  &ml_arch_llama, &ml_arch_qwen2, &ml_arch_qwen3, &ml_arch_phi3, &ml_arch_mpt,
  &ml_arch_gemma2, &ml_arch_gemma3, &ml_arch_bert,
};

const ml_arch *ml_arch_find(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strlen(all[i]->name) == len && memcmp(all[i]->name, name, len) == 0) return all[i];
  return NULL;
}

const ml_gguf_kv *ml_arch_key(const ml_gguf *g, const char *arch, const char *suffix) {
  char key[256];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  return ml_gguf_find(g, key);
}
