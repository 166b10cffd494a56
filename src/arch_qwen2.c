/* arch_qwen2.c: Qwen2 / Qwen2.5: the llama block with biases on the q, k and v projections,
 * and RoPE on the two halves of each head (NeoX style). */
#include "arch.h"

const ml_arch ml_arch_qwen2 = {"qwen2", ML_ROPE_NEOX, 1, 0, NULL};
