/* rope.h: rotary position embeddings and ALiBi slopes, the position schemes of the forward
 * pass (forward.c) and of tensor:rope / tensor.alibi_slopes, from one implementation.
 *
 * RoPE rotates pairs of the first n_rot values of every head by angle pos · inv_freq[i]:
 *   normal (llama): pairs (2i, 2i + 1)       neox (gpt-neox, qwen, phi3): pairs (i, i + n_rot/2)
 * with inv_freq[i] = base^(-2i / n_rot) · scale / factor[i] (factors: Llama 3.1's
 * rope_freqs, LongRoPE's short and long factors; none: 1), and the rotated values times
 * mscale (LongRoPE's attention factor; 1). cos and sin are computed in double. */
#ifndef ML_ROPE_H
#define ML_ROPE_H

#include <stdint.h>

#include "tensor.h"

/* inv_freq[0, n_rot/2) for the given base, scale and optional factors (n_rot/2 of them). */
void ml_rope_freqs(float *inv_freq, int64_t n_rot, double base, double scale, const float *factors);

/* Llama 3's frequency factors (what a converter writes as rope_freqs.weight), for the
 * unscaled inverse frequencies of base and n_rot. */
void ml_rope_llama3_factors(float *factors, int64_t n_rot, double base, double factor, double low_freq_factor,
                            double high_freq_factor, double original_context);

/* The angles of position pos: cs[k] = cos(pos · inv_freq[k]) · mscale and sn[k] the sine,
 * for the half = n_rot / 2 pairs; ml_rope_apply rotates by them. ml_rope_row does both, with
 * the same values. */
void ml_rope_angles(float *cs, float *sn, int64_t half, const float *inv_freq, float mscale, int64_t pos);
void ml_rope_apply(float *x, int64_t n_heads, int64_t head_stride, int64_t n_rot, int neox, const float *cs,
                   const float *sn);

/* Rotate the n_heads heads of one token (head h at x + h * head_stride) at position pos. */
void ml_rope_row(float *x, int64_t n_heads, int64_t head_stride, int64_t n_rot, int neox, const float *inv_freq,
                 float mscale, int64_t pos);

/* ALiBi slopes as ggml computes them for n_head heads and max_bias: n2 = 2^floor(log2 H)
 * heads get m0^(h+1), the rest m1^(2(h - n2) + 1), m0 = 2^(-max_bias / n2),
 * m1 = 2^(-max_bias / 2 / n2). */
void ml_alibi_slopes(float *slopes, int64_t n_head, double max_bias);

/* x (..., n, head_dim) f32 with contiguous heads, in place: the head vectors of token t
 * (every index of the leading dimensions) rotated at position pos[t]. n_rot even, at most
 * head_dim. -1 with a misuse of x (input 1) or pos (2). */
int ml_rope_tensor(const ml_tensor *x, const int64_t *pos, int64_t n_pos, const float *inv_freq, int64_t n_rot,
                   int neox, float mscale);

/* out (H, n_q, n_kv) = -slopes[h] · |qpos_i - j| with qpos_i = n_kv - n_q + i: the bias
 * ALiBi adds to the scores of query row i and key j (what attention's alibi option adds). */
int ml_alibi_bias(ml_tensor *out, const float *slopes, int64_t n_head, int64_t n_q, int64_t n_kv);

#endif
