/* rope.c: RoPE and ALiBi (rope.h). */
#include "rope.h"

#include <math.h>

#include "common.h"
#include "tensor_rows.h"
#include "threads.h"

void ml_rope_freqs(float *inv_freq, int64_t n_rot, double base, double scale, const float *factors) {
  for (int64_t i = 0; i < n_rot / 2; i++) {
    double f = pow(base, -2.0 * (double)i / (double)n_rot) * scale;
    if (factors) f /= factors[i];
    inv_freq[i] = (float)f;
  }
}

void ml_rope_llama3_factors(float *factors, int64_t n_rot, double base, double factor, double low_freq_factor,
                            double high_freq_factor, double original_context) {
  double low_wavelen = original_context / low_freq_factor, high_wavelen = original_context / high_freq_factor;
  for (int64_t i = 0; i < n_rot / 2; i++) {
    double wavelen = 2.0 * M_PI / pow(base, -2.0 * (double)i / (double)n_rot);
    if (wavelen < high_wavelen) factors[i] = 1.0f;
    else if (wavelen > low_wavelen) factors[i] = (float)factor;
    else {
      double smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      factors[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
    }
  }
}

void ml_rope_angles(float *cs, float *sn, int64_t half, const float *inv_freq, float mscale, int64_t pos) {
  for (int64_t k = 0; k < half; k++) {
    double th = (double)pos * (double)inv_freq[k];
    cs[k] = (float)cos(th) * mscale;
    sn[k] = (float)sin(th) * mscale;
  }
}

static void rotate(float *v, int64_t half, int neox, const float *cs, const float *sn) {
  for (int64_t k = 0; k < half; k++) {
    int64_t i0 = neox ? k : 2 * k, i1 = neox ? k + half : 2 * k + 1;
    float a = v[i0], b = v[i1];
    v[i0] = a * cs[k] - b * sn[k];
    v[i1] = a * sn[k] + b * cs[k];
  }
}

void ml_rope_apply(float *x, int64_t n_heads, int64_t head_stride, int64_t n_rot, int neox, const float *cs,
                   const float *sn) {
  for (int64_t h = 0; h < n_heads; h++) rotate(x + h * head_stride, n_rot / 2, neox, cs, sn);
}

void ml_rope_row(float *x, int64_t n_heads, int64_t head_stride, int64_t n_rot, int neox, const float *inv_freq,
                 float mscale, int64_t pos) {
  int64_t half = n_rot / 2;
  for (int64_t k = 0; k < half; k++) {
    double th = (double)pos * (double)inv_freq[k];
    float cs = (float)cos(th) * mscale, sn = (float)sin(th) * mscale;
    int64_t i0 = neox ? k : 2 * k, i1 = neox ? k + half : 2 * k + 1;
    for (int64_t h = 0; h < n_heads; h++) {
      float *v = x + h * head_stride;
      float a = v[i0], b = v[i1];
      v[i0] = a * cs - b * sn;
      v[i1] = a * sn + b * cs;
    }
  }
}

int ml_rope_tensor(const ml_tensor *x, const int64_t *pos, int64_t n_pos, const float *inv_freq, int64_t n_rot,
                   int neox, float mscale) {
  if (x->type != ML_TYPE_F32 || x->ndim < 1) {
    ml_misuse(1, "rope needs an f32 tensor (..., tokens, head_dim), got %s with %d dimensions",
              ml_type_traits_get(x->type)->name, x->ndim);
    return -1;
  }
  int64_t hd = x->shape[x->ndim - 1], n = x->ndim >= 2 ? x->shape[x->ndim - 2] : 1;
  if (x->stride[x->ndim - 1] != 1 && hd > 1) {
    ml_misuse(1, "rope needs contiguous head vectors (the last dimension's stride is %lld)",
              (long long)x->stride[x->ndim - 1]);
    return -1;
  }
  for (int i = 0; i < x->ndim; i++)
    if (x->stride[i] == 0 && x->shape[i] > 1) {
      ml_misuse(1, "cannot rotate in place an expanded (broadcast) view");
      return -1;
    }
  if (n_rot < 0 || n_rot % 2 || n_rot > hd) {
    ml_misuse(1, "cannot rotate %lld dimensions of heads of %lld (an even count up to the head size)",
              (long long)n_rot, (long long)hd);
    return -1;
  }
  if (n_pos != n) {
    ml_misuse(2, "%lld positions for %lld tokens", (long long)n_pos, (long long)n);
    return -1;
  }
  int64_t half = n_rot / 2, groups = n ? ml_tensor_numel(x) / (hd ? hd : 1) / n : 0;
  if (half == 0 || n == 0 || groups == 0) return 0;
  float *buf = ml_alloc(sizeof(float) * (size_t)(2 * half) * (size_t)ml_get_threads());
  if (!buf) return -1;
  float *base = ml_tensor_data(x);
  /* a token's angles (n_rot/2 sin and cos) cost about what rotating its heads does */
  int nth = n == 1 ? 1 : ml_threads_for(ML_WORK_ROWS, (double)ml_tensor_numel(x) * 4);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < n; t++) {
    float *cs = buf + (size_t)(2 * half) * (size_t)ml_thread_id(), *sn = cs + half;
    ml_rope_angles(cs, sn, half, inv_freq, mscale, pos[t]);
    for (int64_t g = 0; g < groups; g++) rotate(base + row_elems(x, g * n + t), half, neox, cs, sn);
  }
  ml_free(buf);
  return 0;
}

int ml_alibi_bias(ml_tensor *out, const float *slopes, int64_t n_head, int64_t n_q, int64_t n_kv) {
  if (n_q < 0 || n_kv < 0 || n_q > n_kv) {
    ml_misuse(n_q < 0 || n_q > n_kv ? 2 : 3, "%lld query rows cannot be the last of %lld keys", (long long)n_q,
              (long long)n_kv);
    return -1;
  }
  int64_t shape[3] = {n_head, n_q, n_kv};
  if (ml_tensor_init(out, ML_TYPE_F32, 3, shape) < 0) return -1;
  float *o = ml_tensor_data(out);
  for (int64_t h = 0; h < n_head; h++)
    for (int64_t i = 0; i < n_q; i++) {
      int64_t p = n_kv - n_q + i;
      for (int64_t j = 0; j < n_kv; j++) o[(h * n_q + i) * n_kv + j] = -slopes[h] * (float)(p > j ? p - j : j - p);
    }
  return 0;
}

void ml_alibi_slopes(float *slopes, int64_t n_head, double max_bias) {
  int64_t n2 = 1;
  while (n2 * 2 <= n_head) n2 *= 2;
  float mb = (float)max_bias;
  float m0 = powf(2.0f, -mb / (float)n2), m1 = powf(2.0f, -(mb / 2.0f) / (float)n2);
  for (int64_t h = 0; h < n_head; h++) slopes[h] = h < n2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n2) + 1));
}
