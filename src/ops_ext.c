/* ops_ext.c: the torch7 essentials of ops_ext.h. Like ops.c, every op first views (or
 * converts) its inputs as f32, then walks rows (the innermost dimension) with raw pointers
 * and strides; ops along a dimension view that dimension last, and write through a
 * permuted view of the result, so nothing is copied back. */
#include "ops_ext.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "threads.h"
#include "tensor_rows.h"

/* ---- helpers ---- */

static int check_dim(const ml_tensor *a, int dim, int input) {
  if (dim < 0 || dim >= a->ndim) {
    if (a->ndim == 0) ml_misuse(input, "a 0-d tensor has no dimension %d", dim + 1);
    else ml_misuse(input, "dimension %d out of range (tensor has %d)", dim + 1, a->ndim);
    return -1;
  }
  return 0;
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

/* An f32 view of t expanded to (nd, shape); a misuse names `input`. */
static int expand_f32(ml_tensor *e, const ml_tensor *t, int nd, const int64_t *shape, int input) {
  ml_tensor f;
  if (as_f32(&f, t) < 0) return -1;
  int rc = ml_tensor_expand(e, &f, nd, shape);
  ml_tensor_release(&f);
  if (rc < 0) ml_misuse_input(input);
  return rc;
}

/* The permutation that moves dim last, and its inverse. */
static void dim_last_perm(int ndim, int dim, int *perm) {
  int k = 0;
  for (int i = 0; i < ndim; i++)
    if (i != dim) perm[k++] = i;
  perm[k] = dim;
}

/* v: an f32 view of a with dim last; o: a new f32 tensor of a's shape (or with dim of size
 * odim) and ov: o viewed with dim last (what the row loops write through). */
static int along_dim(const ml_tensor *a, int dim, int64_t odim, ml_type otype, ml_tensor *v, ml_tensor *o,
                     ml_tensor *ov) {
  int perm[ML_MAX_DIMS];
  int64_t shape[ML_MAX_DIMS];
  ml_tensor fa;
  dim_last_perm(a->ndim, dim, perm);
  if (as_f32(&fa, a) < 0) return -1;
  int rc = ml_tensor_permute(v, &fa, perm);
  ml_tensor_release(&fa);
  if (rc < 0) return -1;
  memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
  shape[dim] = odim;
  if (ml_tensor_init(o, otype, a->ndim, shape) < 0) {
    ml_tensor_release(v);
    return -1;
  }
  if (ml_tensor_permute(ov, o, perm) < 0) {
    ml_tensor_release(v);
    ml_tensor_release(o);
    return -1;
  }
  return 0;
}

/* ---- comparisons, where, masked_fill, clamp ---- */

static inline float cmp1(ml_cmpop op, float x, float y) {
  switch (op) {
  case ML_CMP_EQ: return x == y;
  case ML_CMP_NE: return x != y;
  case ML_CMP_LT: return x < y;
  case ML_CMP_LE: return x <= y;
  case ML_CMP_GT: return x > y;
  case ML_CMP_GE: return x >= y;
  }
  return 0;
}

int ml_compare(ml_tensor *out, const ml_tensor *a, const ml_tensor *b, ml_cmpop op) {
  int nd;
  int64_t shape[ML_MAX_DIMS];
  ml_tensor o, ea, eb;
  if (ml_broadcast_shape(a, b, &nd, shape) < 0) return -1;
  if (expand_f32(&ea, a, nd, shape, 1) < 0) return -1;
  if (expand_f32(&eb, b, nd, shape, 2) < 0) goto fail_a;
  if (ml_tensor_init(&o, ML_TYPE_F32, nd, shape) < 0) goto fail_b;
  int64_t rows = rows_of(&o), n = last_dim(&o), sa = last_stride(&ea), sb = last_stride(&eb);
  const float *pa = f32p(&ea), *pb = f32p(&eb);
  float *po = f32p(&o);
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *x = pa + row_elems(&ea, r), *y = pb + row_elems(&eb, r);
    float *z = po + r * n;
    for (int64_t i = 0; i < n; i++) z[i] = cmp1(op, x[i * sa], y[i * sb]);
  }
  ml_tensor_release(&ea);
  ml_tensor_release(&eb);
  *out = o;
  return 0;
fail_b:
  ml_tensor_release(&eb);
fail_a:
  ml_tensor_release(&ea);
  return -1;
}

static int is_integer_type(ml_type t) {
  return t == ML_TYPE_I8 || t == ML_TYPE_I16 || t == ML_TYPE_I32 || t == ML_TYPE_I64;
}

int ml_equal(const ml_tensor *a, const ml_tensor *b, int *eq) {
  *eq = 0;
  if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim)) return 0;
  int64_t n = ml_tensor_numel(a);
  if (is_integer_type(a->type) || is_integer_type(b->type) || a->type == ML_TYPE_F64 || b->type == ML_TYPE_F64) {
    for (int64_t i = 0; i < n; i++)
      if (ml_tensor_get_flat(a, i) != ml_tensor_get_flat(b, i)) return 0;
    *eq = 1;
    return 0;
  }
  ml_tensor fa, fb;
  if (ml_tensor_f32(&fa, a) < 0) return -1;
  if (ml_tensor_f32(&fb, b) < 0) {
    ml_tensor_release(&fa);
    return -1;
  }
  const float *x = f32p(&fa), *y = f32p(&fb);
  int64_t i = 0;
  while (i < n && x[i] == y[i]) i++;
  *eq = i == n;
  ml_tensor_release(&fa);
  ml_tensor_release(&fb);
  return 0;
}

int ml_where(ml_tensor *out, const ml_tensor *cond, const ml_tensor *a, const ml_tensor *b) {
  int nd;
  int64_t shape[ML_MAX_DIMS];
  ml_tensor o, ec, ea, eb, tmp;
  if (ml_broadcast_shape(cond, a, &nd, shape) < 0) return -1;
  memset(&tmp, 0, sizeof tmp);
  tmp.ndim = nd;
  memcpy(tmp.shape, shape, sizeof(int64_t) * (size_t)nd);
  if (ml_broadcast_shape(&tmp, b, &nd, shape) < 0) {
    ml_misuse_input(3);
    return -1;
  }
  if (expand_f32(&ec, cond, nd, shape, 1) < 0) return -1;
  if (expand_f32(&ea, a, nd, shape, 2) < 0) goto fail_c;
  if (expand_f32(&eb, b, nd, shape, 3) < 0) goto fail_a;
  if (ml_tensor_init(&o, ML_TYPE_F32, nd, shape) < 0) goto fail_b;
  int64_t rows = rows_of(&o), n = last_dim(&o), sc = last_stride(&ec), sa = last_stride(&ea), sb = last_stride(&eb);
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *c = f32p(&ec) + row_elems(&ec, r), *x = f32p(&ea) + row_elems(&ea, r),
                *y = f32p(&eb) + row_elems(&eb, r);
    float *z = f32p(&o) + r * n;
    for (int64_t i = 0; i < n; i++) z[i] = c[i * sc] != 0 ? x[i * sa] : y[i * sb];
  }
  ml_tensor_release(&ec);
  ml_tensor_release(&ea);
  ml_tensor_release(&eb);
  *out = o;
  return 0;
fail_b:
  ml_tensor_release(&eb);
fail_a:
  ml_tensor_release(&ea);
fail_c:
  ml_tensor_release(&ec);
  return -1;
}

int ml_masked_fill_(const ml_tensor *a, const ml_tensor *mask, double v) {
  ml_tensor em;
  if (check_inplace(a) < 0 || expand_f32(&em, mask, a->ndim, a->shape, 2) < 0) return -1;
  int64_t rows = rows_of(a), n = last_dim(a), sa = last_stride(a), sm = last_stride(&em);
  float fv = (float)v;
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    float *x = f32p(a) + row_elems(a, r);
    const float *m = f32p(&em) + row_elems(&em, r);
    for (int64_t i = 0; i < n; i++)
      if (m[i * sm] != 0) x[i * sa] = fv;
  }
  ml_tensor_release(&em);
  return 0;
}

int ml_clamp_(const ml_tensor *a, double lo, double hi) {
  if (check_inplace(a) < 0) return -1;
  if (lo == lo && hi == hi && lo > hi) {
    ml_misuse(2, "min %g is above max %g", lo, hi);
    return -1;
  }
  int64_t rows = rows_of(a), n = last_dim(a), sa = last_stride(a);
  float flo = lo == lo ? (float)lo : -INFINITY, fhi = hi == hi ? (float)hi : INFINITY;
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    float *x = f32p(a) + row_elems(a, r);
    for (int64_t i = 0; i < n; i++) {
      float y = x[i * sa];
      x[i * sa] = y < flo ? flo : y > fhi ? fhi : y; /* NaN fails both tests: stays */
    }
  }
  return 0;
}

/* ---- sort, cumulative ---- */

typedef struct keyed {
  float v;
  int32_t i;
} keyed;

/* x before y in the order asked; ties keep their order (the merge takes the left first) */
static inline int before(float x, float y, int desc) {
  if (x != x) return desc && y == y;  /* NaN above every number */
  if (y != y) return !desc;
  return desc ? x > y : x < y;
}

/* Bottom-up merge sort of k[0, n) using tmp (n entries). */
static void merge_sort(keyed *k, keyed *tmp, int64_t n, int desc) {
  keyed *src = k, *dst = tmp;
  for (int64_t w = 1; w < n; w *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * w) {
      int64_t mid = ML_MIN(lo + w, n), hi = ML_MIN(lo + 2 * w, n), i = lo, j = mid, o = lo;
      while (i < mid && j < hi) dst[o++] = before(src[j].v, src[i].v, desc) ? src[j++] : src[i++];
      while (i < mid) dst[o++] = src[i++];
      while (j < hi) dst[o++] = src[j++];
    }
    keyed *t = src;
    src = dst;
    dst = t;
  }
  if (src != k) memcpy(k, src, sizeof(keyed) * (size_t)n);
}

int ml_sort(ml_tensor *values, ml_tensor *indices, const ml_tensor *a, int dim, int descending, int64_t base) {
  ml_tensor v, ov, ovv, oi, oiv;
  if (check_dim(a, dim, 2) < 0) return -1;
  int64_t n = a->shape[dim];
  if (n > INT32_MAX) {
    ml_misuse(1, "cannot sort more than %d elements along a dimension", INT32_MAX);
    return -1;
  }
  if (along_dim(a, dim, n, ML_TYPE_F32, &v, &ov, &ovv) < 0) return -1;
  int perm[ML_MAX_DIMS];
  dim_last_perm(a->ndim, dim, perm);
  keyed *k = ml_alloc(sizeof(keyed) * (size_t)(2 * n + 1));
  if (!k || ml_tensor_init(&oi, ML_TYPE_I32, a->ndim, a->shape) < 0) goto fail;
  if (ml_tensor_permute(&oiv, &oi, perm) < 0) {
    ml_tensor_release(&oi);
    goto fail;
  }
  int64_t rows = rows_of(&v), sv = last_stride(&v), so = last_stride(&ovv);
  for (int64_t r = 0; r < rows; r++) {
    const float *x = f32p(&v) + row_elems(&v, r);
    for (int64_t i = 0; i < n; i++) k[i] = (keyed){x[i * sv], (int32_t)i};
    merge_sort(k, k + n, n, descending);
    float *y = f32p(&ovv) + row_elems(&ovv, r);
    int32_t *p = (int32_t *)ml_tensor_data(&oiv) + row_elems(&oiv, r);
    for (int64_t i = 0; i < n; i++) {
      y[i * so] = k[i].v;
      p[i * so] = (int32_t)(k[i].i + base);
    }
  }
  ml_free(k);
  ml_tensor_release(&v);
  ml_tensor_release(&ovv);
  ml_tensor_release(&oiv);
  *values = ov;
  *indices = oi;
  return 0;
fail:
  ml_free(k);
  ml_tensor_release(&v);
  ml_tensor_release(&ovv);
  ml_tensor_release(&ov);
  return -1;
}

int ml_cumulative(ml_tensor *out, const ml_tensor *a, int dim, int product) {
  ml_tensor v, o, ov;
  if (check_dim(a, dim, 2) < 0) return -1;
  if (along_dim(a, dim, a->shape[dim], ML_TYPE_F32, &v, &o, &ov) < 0) return -1;
  int64_t rows = rows_of(&v), n = last_dim(&v), sv = last_stride(&v), so = last_stride(&ov);
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *x = f32p(&v) + row_elems(&v, r);
    float *y = f32p(&ov) + row_elems(&ov, r);
    double acc = product ? 1 : 0;
    for (int64_t i = 0; i < n; i++) {
      acc = product ? acc * x[i * sv] : acc + x[i * sv];
      y[i * so] = (float)acc;
    }
  }
  ml_tensor_release(&v);
  ml_tensor_release(&ov);
  *out = o;
  return 0;
}

/* ---- gather, scatter ---- */

/* index must have a's number of dimensions and fit inside `bound` (a or src) elsewhere than
 * dim (`loose`: in dim too). */
static int check_index(const ml_tensor *index, const ml_tensor *bound, int dim, int bound_input, int loose) {
  if (is_integer_type(index->type) == 0 && index->type != ML_TYPE_F32 && index->type != ML_TYPE_F64) {
    ml_misuse(3, "index must be an integer or f32 tensor, got %s", ml_type_traits_get(index->type)->name);
    return -1;
  }
  if (index->ndim != bound->ndim) {
    ml_misuse(3, "index has %d dimensions, the tensor %d", index->ndim, bound->ndim);
    return -1;
  }
  for (int d = 0; d < index->ndim; d++)
    if ((d != dim || loose) && index->shape[d] > bound->shape[d]) {
      ml_misuse(bound_input == 1 ? 3 : bound_input, "index has size %lld in dimension %d, more than %lld",
                (long long)index->shape[d], d + 1, (long long)bound->shape[d]);
      return -1;
    }
  return 0;
}

/* The index values as int64 (0-based, checked against size), in index's logical order. */
static int64_t *read_positions(const ml_tensor *index, int64_t base, int64_t size, int dim) {
  int64_t n = ml_tensor_numel(index);
  int64_t *p = ml_alloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  if (!p) return NULL;
  for (int64_t i = 0; i < n; i++) {
    double d = ml_tensor_get_flat(index, i);
    int64_t k = (int64_t)d - base;
    if (d != floor(d) || k < 0 || k >= size) {
      ml_misuse(3, "index %g out of range (dimension %d has size %lld)", d, dim + 1, (long long)size);
      ml_free(p);
      return NULL;
    }
    p[i] = k;
  }
  return p;
}

/* Element offset in t of the multi-index of flat position i of shape (nd, shape), with
 * position `at` in dimension dim. */
static int64_t offset_of(const ml_tensor *t, const int64_t *shape, int64_t i, int dim, int64_t at) {
  int64_t e = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t k = i % shape[d];
    i /= shape[d];
    e += (d == dim ? at : k) * t->stride[d];
  }
  return e;
}

int ml_gather(ml_tensor *out, const ml_tensor *a, int dim, const ml_tensor *index, int64_t base) {
  ml_tensor fa, o;
  if (check_dim(a, dim, 2) < 0 || check_index(index, a, dim, 1, 0) < 0) return -1;
  int64_t *pos = read_positions(index, base, a->shape[dim], dim);
  if (!pos) return -1;
  if (as_f32(&fa, a) < 0) goto fail;
  if (ml_tensor_init(&o, ML_TYPE_F32, index->ndim, index->shape) < 0) {
    ml_tensor_release(&fa);
    goto fail;
  }
  int64_t n = ml_tensor_numel(&o);
  for (int64_t i = 0; i < n; i++) f32p(&o)[i] = f32p(&fa)[offset_of(&fa, index->shape, i, dim, pos[i])];
  ml_tensor_release(&fa);
  ml_free(pos);
  *out = o;
  return 0;
fail:
  ml_free(pos);
  return -1;
}

int ml_scatter_(const ml_tensor *a, int dim, const ml_tensor *index, const ml_tensor *src, double v, int64_t base,
                int add) {
  ml_tensor fs;
  if (check_inplace(a) < 0 || check_dim(a, dim, 2) < 0 || check_index(index, a, dim, 1, 0) < 0) return -1;
  if (src && check_index(index, src, dim, 4, 1) < 0) return -1;
  int64_t *pos = read_positions(index, base, a->shape[dim], dim);
  if (!pos) return -1;
  if (src && as_f32(&fs, src) < 0) {
    ml_free(pos);
    return -1;
  }
  int64_t n = ml_tensor_numel(index);
  float *pa = f32p(a);
  for (int64_t i = 0; i < n; i++) {
    float x = src ? f32p(&fs)[offset_of(&fs, index->shape, i, -1, 0)] : (float)v;
    float *y = pa + offset_of(a, index->shape, i, dim, pos[i]);
    *y = add ? *y + x : x;
  }
  if (src) ml_tensor_release(&fs);
  ml_free(pos);
  return 0;
}

/* ---- moments and norms ---- */

typedef enum stat_kind { STAT_VAR, STAT_NORM } stat_kind;
typedef struct stat_args {
  stat_kind kind;
  int unbiased, root;
  double p;
} stat_args;

static double stat_row(const stat_args *s, const float *x, int64_t st, int64_t n) {
  if (s->kind == STAT_VAR) {
    double mean = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) mean += x[i * st];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) {
      double d = x[i * st] - mean;
      ss += d * d;
    }
    double den = (double)n - (s->unbiased ? 1 : 0);
    double var = den > 0 ? ss / den : NAN;
    return s->root ? sqrt(var) : var;
  }
  double p = s->p, acc = 0;
  if (p == INFINITY) {
    for (int64_t i = 0; i < n; i++) {
      double a = fabs((double)x[i * st]);
      if (a > acc || a != a) acc = a;
    }
    return acc;
  }
  for (int64_t i = 0; i < n; i++) {
    double a = fabs((double)x[i * st]);
    acc += p == 0 ? (a != 0) : p == 1 ? a : p == 2 ? a * a : pow(a, p);
  }
  return p == 0 || p == 1 ? acc : p == 2 ? sqrt(acc) : pow(acc, 1.0 / p);
}

static int stat(ml_tensor *out, const ml_tensor *a, int dim, int keepdim, const stat_args *s) {
  ml_tensor v, o;
  int64_t shape[ML_MAX_DIMS];
  int nd = 0;
  if (dim < 0) {
    ml_tensor fa;
    if (ml_tensor_f32(&fa, a) < 0) return -1;
    double r = stat_row(s, f32p(&fa), 1, ml_tensor_numel(&fa));
    ml_tensor_release(&fa);
    if (ml_tensor_init(&o, ML_TYPE_F32, 0, NULL) < 0) return -1;
    f32p(&o)[0] = (float)r;
    *out = o;
    return 0;
  }
  if (check_dim(a, dim, 2) < 0) return -1;
  int perm[ML_MAX_DIMS];
  ml_tensor fa;
  dim_last_perm(a->ndim, dim, perm);
  if (as_f32(&fa, a) < 0) return -1;
  int rc = ml_tensor_permute(&v, &fa, perm);
  ml_tensor_release(&fa);
  if (rc < 0) return -1;
  for (int i = 0; i < a->ndim; i++)
    if (i != dim) shape[nd++] = a->shape[i];
    else if (keepdim) shape[nd++] = 1;
  if (ml_tensor_init(&o, ML_TYPE_F32, nd, shape) < 0) {
    ml_tensor_release(&v);
    return -1;
  }
  int64_t rows = rows_of(&v), n = last_dim(&v), sv = last_stride(&v);
#pragma omp parallel for num_threads(ml_threads_for(ML_WORK_ROWS, (double)rows * (double)n)) schedule(static)
  for (int64_t r = 0; r < rows; r++) f32p(&o)[r] = (float)stat_row(s, f32p(&v) + row_elems(&v, r), sv, n);
  ml_tensor_release(&v);
  *out = o;
  return 0;
}

int ml_var(ml_tensor *out, const ml_tensor *a, int dim, int keepdim, int unbiased, int root) {
  stat_args s = {STAT_VAR, unbiased, root, 0};
  return stat(out, a, dim, keepdim, &s);
}

int ml_norm(ml_tensor *out, const ml_tensor *a, double p, int dim, int keepdim) {
  if (!(p >= 0)) {
    ml_misuse(2, "p must be a number >= 0 (or math.huge), got %g", p);
    return -1;
  }
  stat_args s = {STAT_NORM, 0, 0, p};
  return stat(out, a, dim, keepdim, &s);
}

int ml_dot(const ml_tensor *a, const ml_tensor *b, double *out) {
  int64_t n = ml_tensor_numel(a);
  if (ml_tensor_numel(b) != n) {
    ml_misuse(2, "dot needs tensors with the same number of elements (%lld and %lld)", (long long)n,
              (long long)ml_tensor_numel(b));
    return -1;
  }
  ml_tensor fa, fb;
  if (ml_tensor_f32(&fa, a) < 0) return -1;
  if (ml_tensor_f32(&fb, b) < 0) {
    ml_tensor_release(&fa);
    return -1;
  }
  double s = 0;
  const float *x = f32p(&fa), *y = f32p(&fb);
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
  ml_tensor_release(&fa);
  ml_tensor_release(&fb);
  *out = s;
  return 0;
}

/* ---- constructors, random draws ---- */

int ml_eye(ml_tensor *out, int64_t n, int64_t m) {
  if (n < 0 || m < 0) {
    ml_misuse(n < 0 ? 1 : 2, "sizes must not be negative");
    return -1;
  }
  int64_t shape[2] = {n, m};
  if (ml_tensor_init(out, ML_TYPE_F32, 2, shape) < 0) return -1;
  for (int64_t i = 0; i < ML_MIN(n, m); i++) f32p(out)[i * m + i] = 1;
  return 0;
}

int ml_linspace(ml_tensor *out, double a, double b, int64_t n) {
  if (n < 1) {
    ml_misuse(3, "linspace needs at least 1 point, got %lld", (long long)n);
    return -1;
  }
  if (ml_tensor_init(out, ML_TYPE_F32, 1, &n) < 0) return -1;
  double step = n > 1 ? (b - a) / (double)(n - 1) : 0;
  /* from both ends, as torch does, so the last value is b exactly */
  for (int64_t i = 0; i < n; i++)
    f32p(out)[i] = (float)(n == 1 || i < n / 2 ? a + step * (double)i : b - step * (double)(n - 1 - i));
  return 0;
}

/* A uniform integer in [0, range) without modulo bias. */
static uint64_t uniform_below(ml_rng *r, uint64_t range) {
  uint64_t lim = UINT64_MAX - UINT64_MAX % range, x;
  do x = ml_rng_next(r);
  while (x >= lim);
  return x % range;
}

int ml_randint(ml_tensor *out, int ndim, const int64_t *shape, int64_t lo, int64_t hi, ml_rng *r) {
  if (lo > hi || lo < INT32_MIN || hi > INT32_MAX) {
    ml_misuse(2, "bounds [%lld, %lld] are empty or outside 32-bit integers", (long long)lo, (long long)hi);
    return -1;
  }
  if (ml_tensor_init(out, ML_TYPE_I32, ndim, shape) < 0) {
    ml_misuse_input(1);
    return -1;
  }
  int32_t *p = ml_tensor_data(out);
  uint64_t range = (uint64_t)(hi - lo) + 1;
  for (int64_t i = 0, n = ml_tensor_numel(out); i < n; i++) p[i] = (int32_t)(lo + (int64_t)uniform_below(r, range));
  return 0;
}

int ml_multinomial(ml_tensor *out, const ml_tensor *probs, int64_t n, int replacement, ml_rng *r, int64_t base) {
  if (probs->ndim != 1 && probs->ndim != 2) {
    ml_misuse(1, "probabilities must be a vector (K) or a matrix (R, K), got %d dimensions", probs->ndim);
    return -1;
  }
  if (n < 0) {
    ml_misuse(2, "cannot draw %lld samples", (long long)n);
    return -1;
  }
  int64_t K = last_dim(probs), R = probs->ndim == 2 ? probs->shape[0] : 1;
  ml_tensor fp, o;
  if (ml_tensor_f32(&fp, probs) < 0) return -1;
  double *w = ml_alloc(sizeof(double) * (size_t)(K + 1));
  if (!w) goto fail_p;
  int64_t shape[2] = {R, n};
  if (ml_tensor_init(&o, ML_TYPE_I32, probs->ndim, probs->ndim == 2 ? shape : shape + 1) < 0) goto fail_w;
  for (int64_t row = 0; row < R; row++) {
    const float *p = f32p(&fp) + row * K;
    int64_t nonzero = 0;
    double total = 0;
    for (int64_t k = 0; k < K; k++) {
      if (!(p[k] >= 0) || p[k] == INFINITY) {
        ml_misuse(1, "probabilities must be finite and not negative (row %lld has %g)", (long long)row + 1, p[k]);
        goto fail_o;
      }
      nonzero += p[k] > 0;
      total += p[k];
    }
    if (total <= 0 || (!replacement && n > nonzero)) {
      ml_misuse(total <= 0 ? 1 : 2, total <= 0 ? "row %lld has no positive probability"
                                               : "row %lld has fewer positive entries than the draws asked without replacement",
                (long long)row + 1);
      goto fail_o;
    }
    int32_t *y = (int32_t *)ml_tensor_data(&o) + row * n;
    for (int64_t k = 0; k < K; k++) w[k] = p[k];
    for (int64_t s = 0; s < n; s++) {
      /* the first k whose running sum passes u (a zero weight is never picked) */
      double u = ml_rng_uniform(r) * total, run = 0;
      int64_t pick = -1;
      for (int64_t k = 0; k < K; k++) {
        if (w[k] <= 0) continue;
        pick = k;
        run += w[k];
        if (u < run) break;
      }
      y[s] = (int32_t)(pick + base);
      if (!replacement) {
        total -= w[pick];
        w[pick] = 0;
        if (total <= 0) { /* rounding: sum what is left */
          total = 0;
          for (int64_t k = 0; k < K; k++) total += w[k];
        }
      }
    }
  }
  ml_free(w);
  ml_tensor_release(&fp);
  *out = o;
  return 0;
fail_o:
  ml_tensor_release(&o);
fail_w:
  ml_free(w);
fail_p:
  ml_tensor_release(&fp);
  return -1;
}

/* ---- conv1d ---- */

int ml_conv1d(ml_tensor *out, const ml_tensor *x, const ml_tensor *w, const ml_tensor *b, int64_t stride,
              int64_t padding, int64_t dilation, int64_t groups) {
  if (x->ndim != 2 && x->ndim != 3) {
    ml_misuse(1, "input must be (C_in, L) or (N, C_in, L), got %d dimensions", x->ndim);
    return -1;
  }
  if (w->ndim != 3) {
    ml_misuse(2, "weight must be (C_out, C_in / groups, K), got %d dimensions", w->ndim);
    return -1;
  }
  if (stride < 1 || padding < 0 || dilation < 1 || groups < 1) {
    ml_misuse(stride < 1 ? 4 : padding < 0 ? 5 : dilation < 1 ? 6 : 7,
              "stride, dilation and groups must be >= 1 and padding >= 0");
    return -1;
  }
  int64_t N = x->ndim == 3 ? x->shape[0] : 1, Cin = x->shape[x->ndim - 2], L = x->shape[x->ndim - 1];
  int64_t Cout = w->shape[0], Cg = w->shape[1], K = w->shape[2];
  if (Cin % groups || Cout % groups) {
    ml_misuse(7, "groups = %lld must divide the input (%lld) and output (%lld) channels", (long long)groups,
              (long long)Cin, (long long)Cout);
    return -1;
  }
  if (Cg != Cin / groups) {
    ml_misuse(2, "weight has %lld input channels per group, the input %lld", (long long)Cg, (long long)(Cin / groups));
    return -1;
  }
  if (b && (b->ndim != 1 || b->shape[0] != Cout)) {
    ml_misuse(3, "bias must have shape {%lld}", (long long)Cout);
    return -1;
  }
  int64_t span = dilation * (K - 1) + 1, Lout = L + 2 * padding >= span ? (L + 2 * padding - span) / stride + 1 : 0;
  if (Lout < 1 || K < 1) {
    ml_misuse(1, "input length %lld is shorter than the kernel's span %lld (with padding %lld)", (long long)L,
              (long long)span, (long long)padding);
    return -1;
  }
  ml_tensor fx, fw, fb, o;
  fb.storage = NULL;
  if (ml_tensor_f32(&fx, x) < 0) return -1;
  if (ml_tensor_f32(&fw, w) < 0) goto fail_x;
  if (b && ml_tensor_f32(&fb, b) < 0) goto fail_w;
  int64_t shape[3] = {N, Cout, Lout};
  if (ml_tensor_init(&o, ML_TYPE_F32, x->ndim, x->ndim == 3 ? shape : shape + 1) < 0) goto fail_b;
  int64_t rowsK = Cg * K, Og = Cout / groups;
  float *col = ml_alloc(sizeof(float) * (size_t)(rowsK * Lout));
  if (!col) {
    ml_tensor_release(&o);
    goto fail_b;
  }
  ml_blas_threads();
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < groups; g++) {
      /* col (Cg K, Lout): the input samples each output position reads */
      const float *xs = f32p(&fx) + (n * Cin + g * Cg) * L;
      for (int64_t c = 0; c < Cg; c++)
        for (int64_t k = 0; k < K; k++) {
          float *dst = col + (c * K + k) * Lout;
          for (int64_t t = 0; t < Lout; t++) {
            int64_t at = t * stride + k * dilation - padding;
            dst[t] = at >= 0 && at < L ? xs[c * L + at] : 0.0f;
          }
        }
      float *y = f32p(&o) + (n * Cout + g * Og) * Lout;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Og, (int)Lout, (int)rowsK, 1.0f,
                  f32p(&fw) + g * Og * rowsK, (int)rowsK, col, (int)Lout, 0.0f, y, (int)Lout);
      if (fb.storage)
        for (int64_t c = 0; c < Og; c++)
          for (int64_t t = 0; t < Lout; t++) y[c * Lout + t] += f32p(&fb)[g * Og + c];
    }
  ml_free(col);
  if (fb.storage) ml_tensor_release(&fb);
  ml_tensor_release(&fw);
  ml_tensor_release(&fx);
  *out = o;
  return 0;
fail_b:
  if (fb.storage) ml_tensor_release(&fb);
fail_w:
  ml_tensor_release(&fw);
fail_x:
  ml_tensor_release(&fx);
  return -1;
}
