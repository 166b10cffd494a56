/* arch_qwen3.c: Qwen3: no q/k/v biases, but an RMSNorm over each head of q and k (weights
 * attn_q_norm / attn_k_norm of head_dim) before RoPE, which is NeoX style. The head size is
 * given by attention.key_length and is not n_embd / n_head. */
#include "arch.h"

const ml_arch ml_arch_qwen3 = {"qwen3", ML_ROPE_NEOX, 0, 1, NULL};
