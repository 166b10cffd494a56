/* ops.c: element-wise math with broadcasting, reductions, normalisations, matmul (OpenBLAS),
 * top-k, concatenation. Every op reads any type and stride layout by first viewing or
 * converting its inputs to f32, then walks rows (the innermost dimension) with the inner
 * loop on raw pointers; large ops split rows across OpenMP threads. */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "matmul.h"
#include "sample.h"
#include "threads.h"
#include "tensor_rows.h"
#include "kernels/dispatch.h"

/* ---- helpers ---- */

static int new_f32(ml_tensor *t, int ndim, const int64_t *shape) {
  return ml_tensor_init(t, ML_TYPE_F32, ndim, shape);
}

/* a result the op writes in full: not zero-filled first */
static int new_f32_result(ml_tensor *t, int ndim, const int64_t *shape) {
  return ml_tensor_init_uninit(t, ML_TYPE_F32, ndim, shape);
}

int ml_broadcast_shape(const ml_tensor *a, const ml_tensor *b, int *ndim, int64_t *shape) {
  int n = ML_MAX(a->ndim, b->ndim);
  for (int i = 0; i < n; i++) {
    int ia = a->ndim - n + i, ib = b->ndim - n + i;
    int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      ml_misuse(2, "shapes do not broadcast (size %lld and %lld in dimension %d)", (long long)sa,
                (long long)sb, i + 1);
      return -1;
    }
    shape[i] = sa == 1 ? sb : sa;
  }
  *ndim = n;
  return 0;
}

/* ---- element-wise ---- */

static inline float binop1(ml_binop op, float x, float y) {
  switch (op) {
  case ML_OP_ADD: return x + y;
  case ML_OP_SUB: return x - y;
  case ML_OP_MUL: return x * y;
  case ML_OP_DIV: return x / y;
  case ML_OP_POW: return powf(x, y);
  case ML_OP_MAXIMUM: return x > y || y != y ? x : y;
  case ML_OP_MINIMUM: return x < y || y != y ? x : y;
  }
  return 0;
}

static void binop_row(ml_binop op, float *o, int64_t so, const float *a, int64_t sa, const float *b,
                      int64_t sb, int64_t n) {
  if (so == 1 && sa == 1 && sb == 1) {
    switch (op) {
    case ML_OP_ADD: for (int64_t i = 0; i < n; i++) o[i] = a[i] + b[i]; return;
    case ML_OP_SUB: for (int64_t i = 0; i < n; i++) o[i] = a[i] - b[i]; return;
    case ML_OP_MUL: for (int64_t i = 0; i < n; i++) o[i] = a[i] * b[i]; return;
    case ML_OP_DIV: for (int64_t i = 0; i < n; i++) o[i] = a[i] / b[i]; return;
    default: break;
    }
  }
  if (so == 1 && sa == 1 && sb == 0) {
    float y = b[0];
    switch (op) {
    case ML_OP_ADD: for (int64_t i = 0; i < n; i++) o[i] = a[i] + y; return;
    case ML_OP_SUB: for (int64_t i = 0; i < n; i++) o[i] = a[i] - y; return;
    case ML_OP_MUL: for (int64_t i = 0; i < n; i++) o[i] = a[i] * y; return;
    case ML_OP_DIV: for (int64_t i = 0; i < n; i++) o[i] = a[i] / y; return;
    default: break;
    }
  }
  for (int64_t i = 0; i < n; i++) o[i * so] = binop1(op, a[i * sa], b[i * sb]);
}

/* Row r of o = a op b; o += b on contiguous rows (a residual add) with the level's add
 * kernel (one rounding per element, so the same sums as binop_row's), unless b overlaps
 * the row other than exactly (a shifted view of it, which binop_row reads in order). */
static void binary_row(const ml_rowops *ro, ml_binop op, const ml_tensor *o, const ml_tensor *a,
                       const ml_tensor *b, int64_t r) {
  int64_t n = last_dim(o), so = last_stride(o), sa = last_stride(a), sb = last_stride(b);
  float *po = f32p(o) + row_elems(o, r);
  const float *pa = f32p(a) + row_elems(a, r), *pb = f32p(b) + row_elems(b, r);
  if (ro && po == pa && so == 1 && sa == 1 && sb == 1 && (pb == po || pb + n <= po || pb >= po + n))
    ro->add(po, pb, n);
  else binop_row(op, po, so, pa, sa, pb, sb, n);
}

/* o = a op b, all f32 views with the same shape (a and b possibly expanded). */
static void binary_apply(const ml_tensor *o, const ml_tensor *a, const ml_tensor *b, ml_binop op) {
  int64_t rows = rows_of(o), n = last_dim(o);
  const ml_rowops *ro = op == ML_OP_ADD ? ml_rowops_get() : NULL;
  int nth = rows == 1 ? 1 : ml_threads_for(ML_WORK_ROWS, (double)n * (double)rows);
  if (nth == 1) {
    for (int64_t r = 0; r < rows; r++) binary_row(ro, op, o, a, b, r);
    return;
  }
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < rows; r++) binary_row(ro, op, o, a, b, r);
}

static int binary_into(const ml_tensor *o, const ml_tensor *a, const ml_tensor *b, ml_binop op) {
  ml_tensor fa, fb, ea, eb;
  if (as_f32(&fa, a) < 0) return -1;
  if (as_f32(&fb, b) < 0) goto fail_a;
  if (ml_tensor_expand(&ea, &fa, o->ndim, o->shape) < 0) goto fail_b;
  if (ml_tensor_expand(&eb, &fb, o->ndim, o->shape) < 0) {
    ml_tensor_release(&ea);
    goto fail_b;
  }
  binary_apply(o, &ea, &eb, op);
  ml_tensor_release(&ea);
  ml_tensor_release(&eb);
  ml_tensor_release(&fa);
  ml_tensor_release(&fb);
  return 0;
fail_b:
  ml_misuse_input(2);
  ml_tensor_release(&fb);
fail_a:
  ml_tensor_release(&fa);
  return -1;
}

int ml_binary(ml_tensor *out, const ml_tensor *a, const ml_tensor *b, ml_binop op) {
  int nd;
  int64_t shape[ML_MAX_DIMS];
  ml_tensor o;
  if (ml_broadcast_shape(a, b, &nd, shape) < 0 || new_f32_result(&o, nd, shape) < 0) return -1;
  if (binary_into(&o, a, b, op) < 0) {
    ml_tensor_release(&o);
    return -1;
  }
  *out = o;
  return 0;
}

static int scalar_tensor(ml_tensor *t, double s) {
  if (new_f32(t, 0, NULL) < 0) return -1;
  f32p(t)[0] = (float)s;
  return 0;
}

int ml_binary_scalar(ml_tensor *out, const ml_tensor *a, double s, ml_binop op, int scalar_first) {
  ml_tensor st;
  if (scalar_tensor(&st, s) < 0) return -1;
  int rc = scalar_first ? ml_binary(out, &st, a, op) : ml_binary(out, a, &st, op);
  ml_tensor_release(&st);
  return rc;
}

static int check_inplace(const ml_tensor *a) {
  if (a->type != ML_TYPE_F32) {
    ml_misuse(1, "in-place operations need an f32 tensor, got %s", ml_type_traits_get(a->type)->name);
    return -1;
  }
  for (int i = 0; i < a->ndim; i++)
    if (a->stride[i] == 0 && a->shape[i] > 1) {
      ml_misuse(1, "cannot write in place into an expanded (broadcast) view");
      return -1;
    }
  return 0;
}

int ml_binary_(const ml_tensor *a, const ml_tensor *b, ml_binop op) {
  int nd;
  int64_t shape[ML_MAX_DIMS];
  if (check_inplace(a) < 0 || ml_broadcast_shape(a, b, &nd, shape) < 0) return -1;
  if (nd != a->ndim || memcmp(shape, a->shape, sizeof(int64_t) * (size_t)nd)) {
    ml_misuse(2, "in-place result would change the shape of the tensor written into");
    return -1;
  }
  return binary_into(a, a, b, op);
}

int ml_binary_scalar_(const ml_tensor *a, double s, ml_binop op) {
  ml_tensor st;
  if (check_inplace(a) < 0 || scalar_tensor(&st, s) < 0) return -1;
  int rc = binary_into(a, a, &st, op);
  ml_tensor_release(&st);
  return rc;
}

static inline float gelu1(float x) {
  /* tanh approximation, as GGUF models' GELU layers use */
  const float c = 0.7978845608028654f;
  return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

static void unop_row(ml_unop op, float *o, int64_t so, const float *a, int64_t sa, int64_t n) {
  /* contiguous rows get loops the compiler can vectorise; strided ones the general form */
#define UNARY(expr) \
  if (so == 1 && sa == 1) \
    for (int64_t i = 0; i < n; i++) { float x = a[i]; o[i] = (expr); } \
  else \
    for (int64_t i = 0; i < n; i++) { float x = a[i * sa]; o[i * so] = (expr); } \
  break
  switch (op) {
  case ML_OP_NEG: UNARY(-x);
  case ML_OP_EXP: UNARY(expf(x));
  case ML_OP_LOG: UNARY(logf(x));
  case ML_OP_SQRT: UNARY(sqrtf(x));
  case ML_OP_RSQRT: UNARY(1.0f / sqrtf(x));
  case ML_OP_TANH: UNARY(tanhf(x));
  case ML_OP_RELU: UNARY(fmaxf(x, 0.0f));
  case ML_OP_SILU: UNARY(x / (1.0f + expf(-x)));
  case ML_OP_SIGMOID: UNARY(1.0f / (1.0f + expf(-x)));
  case ML_OP_GELU: UNARY(gelu1(x));
  case ML_OP_ABS: UNARY(fabsf(x));
  case ML_OP_SQUARE: UNARY(x * x);
  }
#undef UNARY
}

static void unary_apply(const ml_tensor *o, const ml_tensor *a, ml_unop op) {
  int64_t rows = rows_of(o), n = last_dim(o), so = last_stride(o), sa = last_stride(a);
  float *po = f32p(o);
  const float *pa = f32p(a);
  int nth = rows == 1 ? 1 : ml_threads_for(ML_WORK_ROWS, (double)n * (double)rows);
  if (nth == 1) {
    for (int64_t r = 0; r < rows; r++) unop_row(op, po + row_elems(o, r), so, pa + row_elems(a, r), sa, n);
    return;
  }
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < rows; r++) unop_row(op, po + row_elems(o, r), so, pa + row_elems(a, r), sa, n);
}

int ml_unary(ml_tensor *out, const ml_tensor *a, ml_unop op) {
  ml_tensor fa, o;
  if (as_f32(&fa, a) < 0) return -1;
  if (new_f32_result(&o, a->ndim, a->shape) < 0) {
    ml_tensor_release(&fa);
    return -1;
  }
  unary_apply(&o, &fa, op);
  ml_tensor_release(&fa);
  *out = o;
  return 0;
}

int ml_unary_(const ml_tensor *a, ml_unop op) {
  if (check_inplace(a) < 0) return -1;
  unary_apply(a, a, op);
  return 0;
}

/* ---- reductions ---- */

/* A view of a with `dim` moved last (f32, retained), and the shape without that dim. */
static int dim_last(ml_tensor *v, const ml_tensor *a, int dim) {
  ml_tensor fa;
  int perm[ML_MAX_DIMS], k = 0;
  if (dim < 0 || dim >= a->ndim) {
    ml_misuse(2, "dimension %d out of range (tensor has %d)", dim + 1, a->ndim);
    return -1;
  }
  if (as_f32(&fa, a) < 0) return -1;
  for (int i = 0; i < a->ndim; i++)
    if (i != dim) perm[k++] = i;
  perm[k] = dim;
  int rc = ml_tensor_permute(v, &fa, perm);
  ml_tensor_release(&fa);
  return rc;
}

static double reduce_row(ml_redop op, const float *p, int64_t st, int64_t n) {
  switch (op) {
  case ML_RED_SUM:
  case ML_RED_MEAN: {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += p[i * st];
    return op == ML_RED_MEAN ? (n ? s / (double)n : NAN) : s;
  }
  case ML_RED_MAX:
  case ML_RED_ARGMAX:
  case ML_RED_MIN:
  case ML_RED_ARGMIN: {
    int want_max = op == ML_RED_MAX || op == ML_RED_ARGMAX;
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++) {
      float x = p[i * st], b = p[best * st];
      if (b != b) break; /* NaN wins, as in torch */
      if (x != x || (want_max ? x > b : x < b)) best = i;
    }
    if (op == ML_RED_ARGMAX || op == ML_RED_ARGMIN) return (double)best;
    return n ? p[best * st] : NAN;
  }
  }
  return 0;
}

int ml_reduce(ml_tensor *out, const ml_tensor *a, int dim, int keepdim, ml_redop op) {
  int is_arg = op == ML_RED_ARGMAX || op == ML_RED_ARGMIN;
  ml_type ot = is_arg ? ML_TYPE_I32 : ML_TYPE_F32;
  ml_tensor v, o;
  int64_t shape[ML_MAX_DIMS];
  int nd = 0;
  if (dim < 0) { /* all elements */
    ml_tensor fa, flat;
    int64_t n = ml_tensor_numel(a);
    if ((op == ML_RED_MAX || op == ML_RED_MIN || is_arg) && n == 0) {
      ml_misuse(1, "cannot reduce an empty tensor");
      return -1;
    }
    if (ml_tensor_f32(&fa, a) < 0) return -1;
    if (ml_tensor_reshape_view(&flat, &fa, 1, &n) < 0) {
      ml_tensor_release(&fa);
      return -1;
    }
    ml_tensor_release(&fa);
    double r = reduce_row(op, f32p(&flat), 1, n);
    ml_tensor_release(&flat);
    if (ml_tensor_init(&o, ot, 0, NULL) < 0) return -1;
    ml_tensor_set(&o, NULL, r);
    *out = o;
    return 0;
  }
  if (dim_last(&v, a, dim) < 0) return -1;
  int64_t n = last_dim(&v), st = last_stride(&v), rows = rows_of(&v);
  if (n == 0 && op != ML_RED_SUM && op != ML_RED_MEAN) {
    ml_tensor_release(&v);
    ml_misuse(2, "cannot reduce an empty dimension");
    return -1;
  }
  for (int i = 0; i < a->ndim; i++) {
    if (i != dim)
      shape[nd++] = a->shape[i];
    else if (keepdim)
      shape[nd++] = 1;
  }
  if (ml_tensor_init(&o, ot, nd, shape) < 0) {
    ml_tensor_release(&v);
    return -1;
  }
  const float *pv = f32p(&v);
  if (is_arg) {
    int32_t *po = ml_tensor_data(&o);
    for (int64_t r = 0; r < rows; r++) po[r] = (int32_t)reduce_row(op, pv + row_elems(&v, r), st, n);
  } else {
    float *po = f32p(&o);
    for (int64_t r = 0; r < rows; r++) po[r] = (float)reduce_row(op, pv + row_elems(&v, r), st, n);
  }
  ml_tensor_release(&v);
  *out = o;
  return 0;
}

/* ---- softmax and norms (row-wise) ---- */

static void softmax_row(float *o, const float *x, int64_t st, int64_t n, int logsm) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i * st] > m ? x[i * st] : m;
  double s = 0;
  for (int64_t i = 0; i < n; i++) {
    float e = expf(x[i * st] - m);
    if (!logsm) o[i] = e;
    s += e;
  }
  if (logsm) {
    float ls = (float)log(s) + m;
    for (int64_t i = 0; i < n; i++) o[i] = x[i * st] - ls;
  } else {
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) o[i] *= inv;
  }
}

static int softmax_impl(ml_tensor *out, const ml_tensor *a, int dim, int logsm) {
  ml_tensor v, o, back, res;
  int perm[ML_MAX_DIMS], inv[ML_MAX_DIMS], k = 0;
  if (dim_last(&v, a, dim) < 0) return -1;
  if (new_f32(&o, v.ndim, v.shape) < 0) {
    ml_tensor_release(&v);
    return -1;
  }
  int64_t n = last_dim(&v), st = last_stride(&v), rows = rows_of(&v);
  const float *pv = f32p(&v);
  float *po = f32p(&o);
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) softmax_row(po + r * n, pv + row_elems(&v, r), st, n, logsm);
  ml_tensor_release(&v);
  if (dim == a->ndim - 1) {
    *out = o;
    return 0;
  }
  for (int i = 0; i < a->ndim; i++)
    if (i != dim) perm[k++] = i;
  perm[k] = dim;
  for (int i = 0; i < a->ndim; i++) inv[perm[i]] = i;
  int rc = ml_tensor_permute(&back, &o, inv);
  ml_tensor_release(&o);
  if (rc < 0) return -1;
  rc = ml_tensor_contiguous(&res, &back);
  ml_tensor_release(&back);
  if (rc < 0) return -1;
  *out = res;
  return 0;
}

int ml_softmax(ml_tensor *out, const ml_tensor *a, int dim) { return softmax_impl(out, a, dim, 0); }
int ml_log_softmax(ml_tensor *out, const ml_tensor *a, int dim) { return softmax_impl(out, a, dim, 1); }

static int check_vec(const ml_tensor *w, int64_t n, int input, const char *what, ml_tensor *fw) {
  if (!w) {
    fw->storage = NULL;
    return 0;
  }
  if (w->ndim != 1 || w->shape[0] != n) {
    ml_misuse(input, "%s must have shape {%lld}", what, (long long)n);
    return -1;
  }
  return ml_tensor_f32(fw, w);
}

static int norm_impl(ml_tensor *out, const ml_tensor *a, const ml_tensor *w, const ml_tensor *b,
                     double eps, int layer) {
  ml_tensor fa, fw, fb, o;
  if (a->ndim == 0) {
    ml_misuse(1, "needs at least one dimension");
    return -1;
  }
  int64_t n = last_dim(a);
  if (check_vec(w, n, 2, "weight", &fw) < 0) return -1;
  if (check_vec(b, n, 3, "bias", &fb) < 0) goto fail_w;
  if (as_f32(&fa, a) < 0) goto fail_b;
  if (new_f32_result(&o, a->ndim, a->shape) < 0) goto fail_a;
  int64_t rows = rows_of(&fa), st = last_stride(&fa);
  const float *pa = f32p(&fa), *pw = fw.storage ? f32p(&fw) : NULL, *pb = fb.storage ? f32p(&fb) : NULL;
  float *po = f32p(&o);
  /* RMSNorm of rows with a weight: the forward pass's row kernel (the same sums in double) */
  const ml_rowops *ro = !layer && pw && (st == 1 || n == 1) ? ml_rowops_get() : NULL;
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *x = pa + row_elems(&fa, r);
    float *y = po + r * n;
    if (ro) {
      ro->rmsnorm(y, x, pw, n, (float)eps);
      continue;
    }
    double mean = 0, ss = 0;
    if (layer) {
      for (int64_t i = 0; i < n; i++) mean += x[i * st];
      mean /= (double)n;
    }
    for (int64_t i = 0; i < n; i++) {
      double d = x[i * st] - mean;
      ss += d * d;
    }
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) {
      float v = (float)(x[i * st] - mean) * scale;
      if (pw) v *= pw[i];
      if (pb) v += pb[i];
      y[i] = v;
    }
  }
  ml_tensor_release(&fa);
  if (fw.storage) ml_tensor_release(&fw);
  if (fb.storage) ml_tensor_release(&fb);
  *out = o;
  return 0;
fail_a:
  ml_tensor_release(&fa);
fail_b:
  if (fb.storage) ml_tensor_release(&fb);
fail_w:
  if (fw.storage) ml_tensor_release(&fw);
  return -1;
}

int ml_rmsnorm(ml_tensor *out, const ml_tensor *a, const ml_tensor *weight, double eps) {
  return norm_impl(out, a, weight, NULL, eps, 0);
}

int ml_layernorm(ml_tensor *out, const ml_tensor *a, const ml_tensor *weight, const ml_tensor *bias, double eps) {
  return norm_impl(out, a, weight, bias, eps, 1);
}

/* ---- matmul ---- */

/* How sgemm can read the 2-D matrix at the last two dims of t: row-major with leading dim,
 * transposed, or not at all (needs a copy). */
static int gemm_layout(const ml_tensor *t, int *trans, int64_t *ld) {
  int64_t rows = t->shape[t->ndim - 2], cols = t->shape[t->ndim - 1];
  int64_t rs = t->stride[t->ndim - 2], cs = t->stride[t->ndim - 1];
  if ((cs == 1 || cols == 1) && rs >= ML_MAX(cols, 1)) {
    *trans = 0;
    *ld = rs;
    return 1;
  }
  if ((rs == 1 || rows == 1) && cs >= ML_MAX(rows, 1)) {
    *trans = 1;
    *ld = cs;
    return 1;
  }
  return 0;
}

int ml_matmul(ml_tensor *out, const ml_tensor *a, const ml_tensor *b) {
  ml_tensor fa, fb, va, vb, o;
  int64_t shape[ML_MAX_DIMS], bshape[ML_MAX_DIMS];
  if (a->ndim == 0 || b->ndim == 0) {
    ml_misuse(a->ndim == 0 ? 1 : 2, "matmul needs tensors with at least one dimension");
    return -1;
  }
  int64_t k = last_dim(a), kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
  if (k != kb) {
    ml_misuse(2, "inner dimensions %lld and %lld differ", (long long)k, (long long)kb);
    return -1;
  }
  /* promote vectors to matrices: a (k) -> (1, k); b (k) -> (k, 1) */
  if (as_f32(&fa, a) < 0) return -1;
  if (as_f32(&fb, b) < 0) {
    ml_tensor_release(&fa);
    return -1;
  }
  if (fa.ndim == 1) {
    ml_tensor t = fa;
    t.ndim = 2; t.shape[0] = 1; t.shape[1] = k; t.stride[0] = k; t.stride[1] = fa.stride[0];
    fa = t;
  }
  if (fb.ndim == 1) {
    ml_tensor t = fb;
    t.ndim = 2; t.shape[0] = k; t.shape[1] = 1; t.stride[0] = fb.stride[0]; t.stride[1] = 1;
    fb = t;
  }
  int64_t m = fa.shape[fa.ndim - 2], n = fb.shape[fb.ndim - 1];
  /* broadcast the batch dims */
  int nb = ML_MAX(fa.ndim, fb.ndim) - 2;
  for (int i = 0; i < nb; i++) {
    int ia = fa.ndim - 2 - nb + i, ib = fb.ndim - 2 - nb + i;
    int64_t sa = ia >= 0 ? fa.shape[ia] : 1, sb = ib >= 0 ? fb.shape[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      ml_misuse(2, "batch dimensions do not broadcast (%lld and %lld)", (long long)sa, (long long)sb);
      goto fail;
    }
    shape[i] = sa == 1 ? sb : sa;
  }
  memcpy(bshape, shape, sizeof(int64_t) * (size_t)nb);
  bshape[nb] = m; bshape[nb + 1] = k;
  if (ml_tensor_expand(&va, &fa, nb + 2, bshape) < 0) goto fail;
  bshape[nb] = k; bshape[nb + 1] = n;
  if (ml_tensor_expand(&vb, &fb, nb + 2, bshape) < 0) {
    ml_tensor_release(&va);
    goto fail;
  }
  ml_tensor_release(&fa);
  ml_tensor_release(&fb);
  /* make each operand readable by sgemm */
  int ta, tb;
  int64_t lda, ldb;
  if (!gemm_layout(&va, &ta, &lda)) {
    ml_tensor c;
    if (ml_tensor_clone(&c, &va) < 0) { ml_tensor_release(&va); ml_tensor_release(&vb); return -1; }
    ml_tensor_release(&va);
    va = c;
    gemm_layout(&va, &ta, &lda);
  }
  if (!gemm_layout(&vb, &tb, &ldb)) {
    ml_tensor c;
    if (ml_tensor_clone(&c, &vb) < 0) { ml_tensor_release(&va); ml_tensor_release(&vb); return -1; }
    ml_tensor_release(&vb);
    vb = c;
    gemm_layout(&vb, &tb, &ldb);
  }
  shape[nb] = m; shape[nb + 1] = n;
  if (new_f32(&o, nb + 2, shape) < 0) {
    ml_tensor_release(&va);
    ml_tensor_release(&vb);
    return -1;
  }
  int64_t batches = 1;
  for (int i = 0; i < nb; i++) batches *= shape[i];
  ml_blas_threads();
  for (int64_t bi = 0; bi < batches; bi++) {
    int64_t ea = 0, eb = 0, r = bi;
    for (int d = nb - 1; d >= 0; d--) {
      ea += (r % shape[d]) * va.stride[d];
      eb += (r % shape[d]) * vb.stride[d];
      r /= shape[d];
    }
    float *c = f32p(&o) + bi * m * n;
    if (k == 0) {
      memset(c, 0, sizeof(float) * (size_t)(m * n));
      continue;
    }
    if (m == 0 || n == 0) continue;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, 1.0f, f32p(&va) + ea, (int)lda, f32p(&vb) + eb, (int)ldb, 0.0f, c, (int)n);
  }
  ml_tensor_release(&va);
  ml_tensor_release(&vb);
  /* drop the promoted vector dims */
  if (a->ndim == 1 || b->ndim == 1) {
    int j = 0;
    for (int i = 0; i < o.ndim; i++) {
      if (i == o.ndim - 2 && a->ndim == 1) continue;
      if (i == o.ndim - 1 && b->ndim == 1) continue;
      shape[j++] = o.shape[i];
    }
    o.ndim = j;
    memcpy(o.shape, shape, sizeof(int64_t) * (size_t)j);
    int64_t st = 1;
    for (int i = j - 1; i >= 0; i--) {
      o.stride[i] = st;
      st *= o.shape[i];
    }
  }
  *out = o;
  return 0;
fail:
  ml_tensor_release(&fa);
  ml_tensor_release(&fb);
  return -1;
}

/* x (..., K) · wᵀ + b for a weight that is a tensor w or a prepared (packed) weight pw */
static int linear(ml_tensor *out, const ml_tensor *x, const ml_tensor *w, const ml_weight *pw, const ml_tensor *b) {
  ml_tensor fx, fb, o;
  if (x->ndim == 0) {
    ml_misuse(1, "linear needs an input with at least one dimension");
    return -1;
  }
  if (w && w->ndim != 2) {
    ml_misuse(2, "weight must be a matrix (out, in), got %d dimensions", w->ndim);
    return -1;
  }
  if (pw && !pw->w.storage) {
    ml_misuse(2, "weight was released");
    return -1;
  }
  int64_t K = last_dim(x), N = w ? w->shape[0] : pw->N, wk = w ? w->shape[1] : pw->K;
  if (wk != K) {
    ml_misuse(2, "inner dimensions %lld and %lld differ", (long long)K, (long long)wk);
    return -1;
  }
  if (check_vec(b, N, 3, "bias", &fb) < 0) return -1;
  if (ml_tensor_f32(&fx, x) < 0) goto fail_b;
  int64_t shape[ML_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = N;
  /* the products write every element of a non-empty sum; with K = 0 they are zeros */
  if ((K > 0 ? new_f32_result(&o, x->ndim, shape) : new_f32(&o, x->ndim, shape)) < 0) goto fail_x;
  int64_t M = rows_of(&fx);
  if ((w ? ml_mm(w, N, K, f32p(&fx), K, M, f32p(&o), N) : ml_mm_w(pw, f32p(&fx), K, M, f32p(&o), N)) < 0) {
    ml_misuse_input(2); /* the weight */
    ml_tensor_release(&o);
    goto fail_x;
  }
  if (fb.storage) {
    const float *pb = f32p(&fb);
    float *po = f32p(&o);
    for (int64_t r = 0; r < M; r++)
      for (int64_t i = 0; i < N; i++) po[r * N + i] += pb[i];
    ml_tensor_release(&fb);
  }
  ml_tensor_release(&fx);
  *out = o;
  return 0;
fail_x:
  ml_tensor_release(&fx);
fail_b:
  if (fb.storage) ml_tensor_release(&fb);
  return -1;
}

int ml_linear(ml_tensor *out, const ml_tensor *x, const ml_tensor *w, const ml_tensor *b) {
  return linear(out, x, w, NULL, b);
}

int ml_linear_w(ml_tensor *out, const ml_tensor *x, const ml_weight *w, const ml_tensor *b) {
  return linear(out, x, NULL, w, b);
}

/* ---- top-k ---- */

int ml_topk(ml_tensor *values, ml_tensor *indices, const ml_tensor *a, int64_t k, int dim, int largest) {
  ml_tensor v, ov, oi;
  if (dim_last(&v, a, dim) < 0) {
    ml_misuse_input(3); /* dim */
    return -1;
  }
  int64_t n = last_dim(&v), st = last_stride(&v), rows = rows_of(&v);
  if (k < 0 || k > n) {
    ml_tensor_release(&v);
    ml_misuse(2, "k = %lld out of range (dimension has %lld elements)", (long long)k, (long long)n);
    return -1;
  }
  int64_t shape[ML_MAX_DIMS];
  memcpy(shape, v.shape, sizeof(int64_t) * (size_t)v.ndim);
  shape[v.ndim - 1] = k;
  ml_cand *h = ml_alloc(sizeof(ml_cand) * (size_t)(k ? k : 1));
  if (!h || new_f32(&ov, v.ndim, shape) < 0) goto fail_h;
  if (ml_tensor_init(&oi, ML_TYPE_I32, v.ndim, shape) < 0) goto fail_ov;
  for (int64_t r = 0; r < rows; r++) {
    ml_top_k(f32p(&v) + row_elems(&v, r), st, n, k, largest, h);
    float *pv = f32p(&ov) + r * k;
    int32_t *pi = (int32_t *)ml_tensor_data(&oi) + r * k;
    for (int64_t j = 0; j < k; j++) { /* the value itself (a NaN ranked last stays NaN) */
      pv[j] = f32p(&v)[row_elems(&v, r) + h[j].id * st];
      pi[j] = h[j].id;
    }
  }
  ml_free(h);
  ml_tensor_release(&v);
  /* move the dim back where it was */
  if (dim != a->ndim - 1) {
    int perm[ML_MAX_DIMS];
    for (int i = 0, j = 0; i < a->ndim; i++) perm[i] = i == dim ? a->ndim - 1 : j++;
    ml_tensor pv, pi, cv, ci;
    ml_tensor_permute(&pv, &ov, perm);
    ml_tensor_permute(&pi, &oi, perm);
    ml_tensor_release(&ov);
    ml_tensor_release(&oi);
    int rc1 = ml_tensor_contiguous(&cv, &pv), rc2 = ml_tensor_contiguous(&ci, &pi);
    ml_tensor_release(&pv);
    ml_tensor_release(&pi);
    if (rc1 < 0 || rc2 < 0) {
      if (rc1 == 0) ml_tensor_release(&cv);
      if (rc2 == 0) ml_tensor_release(&ci);
      return -1;
    }
    ov = cv;
    oi = ci;
  }
  *values = ov;
  *indices = oi;
  return 0;
fail_ov:
  ml_tensor_release(&ov);
fail_h:
  ml_free(h);
  ml_tensor_release(&v);
  return -1;
}

/* ---- cat / stack / index ---- */

int ml_cat(ml_tensor *out, const ml_tensor *const *ts, int n, int dim) {
  ml_tensor o;
  if (n < 1) {
    ml_misuse(1, "nothing to concatenate");
    return -1;
  }
  const ml_tensor *t0 = ts[0];
  if (dim < 0 || dim >= t0->ndim) {
    ml_misuse(2, "dimension %d out of range (tensor has %d)", dim + 1, t0->ndim);
    return -1;
  }
  ml_type type = t0->type;
  int64_t shape[ML_MAX_DIMS];
  memcpy(shape, t0->shape, sizeof(int64_t) * (size_t)t0->ndim);
  shape[dim] = 0;
  for (int i = 0; i < n; i++) {
    const ml_tensor *t = ts[i];
    if (t->ndim != t0->ndim) {
      ml_misuse(1, "tensor %d has %d dimensions, tensor 1 has %d", i + 1, t->ndim, t0->ndim);
      return -1;
    }
    for (int d = 0; d < t->ndim; d++)
      if (d != dim && t->shape[d] != t0->shape[d]) {
        ml_misuse(1, "tensor %d has size %lld in dimension %d, tensor 1 has %lld", i + 1,
                  (long long)t->shape[d], d + 1, (long long)t0->shape[d]);
        return -1;
      }
    if (t->type != type) type = ML_TYPE_F32;
    shape[dim] += t->shape[dim];
  }
  if (ml_tensor_init(&o, type, t0->ndim, shape) < 0) {
    ml_misuse_input(1);
    return -1;
  }
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    ml_tensor part;
    if (ml_tensor_narrow(&part, &o, dim, at, ts[i]->shape[dim]) < 0 || (ml_tensor_copy_into(&part, ts[i]) < 0 && (ml_tensor_release(&part), 1))) {
      ml_tensor_release(&o);
      ml_misuse_input(1);
      return -1;
    }
    ml_tensor_release(&part);
    at += ts[i]->shape[dim];
  }
  *out = o;
  return 0;
}

int ml_stack(ml_tensor *out, const ml_tensor *const *ts, int n, int dim) {
  if (n < 1) {
    ml_misuse(1, "nothing to stack");
    return -1;
  }
  if (dim < 0 || dim > ts[0]->ndim || ts[0]->ndim + 1 > ML_MAX_DIMS) {
    ml_misuse(2, "dimension %d out of range", dim + 1);
    return -1;
  }
  ml_tensor *vs = ml_alloc(sizeof(ml_tensor) * (size_t)n);
  const ml_tensor **ps = ml_alloc(sizeof(ml_tensor *) * (size_t)n);
  int rc = -1;
  if (!vs || !ps) goto done;
  for (int i = 0; i < n; i++) {
    const ml_tensor *t = ts[i];
    if (t->ndim != ts[0]->ndim || memcmp(t->shape, ts[0]->shape, sizeof(int64_t) * (size_t)t->ndim)) {
      ml_misuse(1, "tensor %d has a different shape from tensor 1", i + 1);
      goto done;
    }
    vs[i] = *t;
    vs[i].ndim = t->ndim + 1;
    for (int d = t->ndim; d > dim; d--) {
      vs[i].shape[d] = t->shape[d - 1];
      vs[i].stride[d] = t->stride[d - 1];
    }
    vs[i].shape[dim] = 1;
    vs[i].stride[dim] = dim < t->ndim ? t->stride[dim] * t->shape[dim] : 1;
    ps[i] = &vs[i];
  }
  rc = ml_cat(out, ps, n, dim);
done:
  ml_free(vs);
  ml_free(ps);
  return rc;
}

int ml_index_select(ml_tensor *out, const ml_tensor *a, int dim, const int64_t *ids, int64_t n) {
  ml_tensor o;
  if (dim < 0 || dim >= a->ndim) {
    ml_misuse(2, "dimension %d out of range (tensor has %d)", dim + 1, a->ndim);
    return -1;
  }
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= a->shape[dim]) {
      ml_misuse(3, "index %lld out of range (dimension %d has size %lld)", (long long)ids[i] + 1, dim + 1,
                (long long)a->shape[dim]);
      return -1;
    }
  int64_t shape[ML_MAX_DIMS];
  memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
  shape[dim] = n;
  if (ml_tensor_init(&o, a->type, a->ndim, shape) < 0) {
    ml_misuse_input(3);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    ml_tensor src, dst;
    if (ml_tensor_narrow(&src, a, dim, ids[i], 1) < 0) goto fail;
    if (ml_tensor_narrow(&dst, &o, dim, i, 1) < 0) {
      ml_tensor_release(&src);
      goto fail;
    }
    int rc = ml_tensor_copy_into(&dst, &src);
    ml_tensor_release(&src);
    ml_tensor_release(&dst);
    if (rc < 0) goto fail;
  }
  *out = o;
  return 0;
fail:
  ml_tensor_release(&o);
  return -1;
}

/* ---- pairwise dot products: the feature interaction of DLRM-style recommenders ---- */

/* x · y over d floats, in 8 partial sums so the compiler vectorizes it without -ffast-math */
static float dot_rows(const float *x, const float *y, int64_t d) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, t = 0.0f;
  int64_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int l = 0; l < 8; l++) s[l] += x[k + l] * y[k + l];
  for (; k < d; k++) t += x[k] * y[k];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + t;
}

int ml_pairwise_dot(ml_tensor *out, const ml_tensor *a, int diagonal) {
  ml_tensor c, o;
  if (a->ndim < 2) {
    ml_misuse(1, "pairwise_dot needs a tensor (..., n, d), got %d dimensions", a->ndim);
    return -1;
  }
  int64_t n = a->shape[a->ndim - 2], d = a->shape[a->ndim - 1];
  int64_t pairs = diagonal ? n * (n + 1) / 2 : n * (n - 1) / 2;
  int64_t batches = 1, shape[ML_MAX_DIMS];
  for (int i = 0; i < a->ndim - 2; i++) batches *= (shape[i] = a->shape[i]);
  shape[a->ndim - 2] = pairs;
  if (ml_tensor_f32(&c, a) < 0) return -1;
  if (new_f32(&o, a->ndim - 1, shape) < 0) {
    ml_tensor_release(&c);
    return -1;
  }
  const float *x = f32p(&c);
  float *y = f32p(&o);
  double macs = (double)batches * (double)pairs * (double)d;
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_MACS, macs)) schedule(static)
  for (int64_t b = 0; b < batches; b++) {
    const float *m = x + b * n * d;
    float *p = y + b * pairs;
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < (diagonal ? i + 1 : i); j++) *p++ = dot_rows(m + i * d, m + j * d, d);
  }
  ml_tensor_release(&c);
  *out = o;
  return 0;
}
