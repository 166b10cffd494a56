/* quant.h: reference quantize / dequantize for the GGUF block formats.
 *
 * Every function converts n elements, n a multiple of the format's block (ML_QK = 32 for
 * the *_0 and *_1 formats, ML_QK_K = 256 for the K formats). The caller checks that; if n is
 * not a multiple, only the whole blocks are converted, so nothing past n elements (or
 * past n / blck blocks) is ever read or written.
 *
 * ml_quantize_* reproduce, byte for byte, what ggml's reference quantizers write without
 * an importance matrix (ggml_quantize_chunk, llama-quantize). ml_dequantize_* give exactly
 * ggml's to_float values. ml_quantize_q8_0/q8_1 are the *weight* quantizers (round half
 * away from zero); the activation quantizers used next to the dot products, which round
 * like ggml's x86 backend, are in kernels/kernels.h.
 *
 * Inputs may hold inf or NaN (a hostile file): the output is then meaningless but every
 * conversion is defined and in range.
 */
#ifndef ML_QUANT_H
#define ML_QUANT_H

#include <stdint.h>

#include "dtype.h"

void ml_quantize_q4_0(const float *x, void *y, int64_t n);
void ml_quantize_q4_1(const float *x, void *y, int64_t n);
void ml_quantize_q5_0(const float *x, void *y, int64_t n);
void ml_quantize_q5_1(const float *x, void *y, int64_t n);
void ml_quantize_q8_0(const float *x, void *y, int64_t n);
void ml_quantize_q8_1(const float *x, void *y, int64_t n);
void ml_quantize_q2_K(const float *x, void *y, int64_t n);
void ml_quantize_q3_K(const float *x, void *y, int64_t n);
void ml_quantize_q4_K(const float *x, void *y, int64_t n);
void ml_quantize_q5_K(const float *x, void *y, int64_t n);
void ml_quantize_q6_K(const float *x, void *y, int64_t n);
void ml_quantize_q8_K(const float *x, void *y, int64_t n);

void ml_dequantize_q4_0(const void *x, float *y, int64_t n);
void ml_dequantize_q4_1(const void *x, float *y, int64_t n);
void ml_dequantize_q5_0(const void *x, float *y, int64_t n);
void ml_dequantize_q5_1(const void *x, float *y, int64_t n);
void ml_dequantize_q8_0(const void *x, float *y, int64_t n);
void ml_dequantize_q8_1(const void *x, float *y, int64_t n);
void ml_dequantize_q2_K(const void *x, float *y, int64_t n);
void ml_dequantize_q3_K(const void *x, float *y, int64_t n);
void ml_dequantize_q4_K(const void *x, float *y, int64_t n);
void ml_dequantize_q5_K(const void *x, float *y, int64_t n);
void ml_dequantize_q6_K(const void *x, float *y, int64_t n);
void ml_dequantize_q8_K(const void *x, float *y, int64_t n);

/* Unpack sub-block j (0..7) of a q4_K / q5_K `scales` array: 6-bit scale and min. */
void ml_q4k_scale_min(const uint8_t *scales, int j, uint8_t *sc, uint8_t *m);
/* Unpack the 16 signed 6-bit scales of a q3_K block (already minus 32). */
void ml_q3k_scales(const uint8_t *packed, int8_t out[16]);

#endif
