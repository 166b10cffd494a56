/* tensor.c: storage, tensor shapes and views, copies and conversions, the seeded generator.
 * The arithmetic lives in ops.c; this file only moves and reinterprets memory. */
#include "tensor.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "threads.h"

/* ---- storage ---- */

/* Bytes of storage this thread allocated since the binding last asked: the Lua collector
 * cannot see this memory, so the binding turns it into collection steps. */
static _Thread_local size_t alloc_pending;

size_t ml_storage_take_pending(void) {
  size_t n = alloc_pending;
  alloc_pending = 0;
  return n;
}

static size_t storage_limit; /* 0: the default, computed on first use */

static size_t default_limit(void) {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || size <= 0) return (size_t)1 << 34; /* unknown: 16 GiB */
  return (size_t)pages * (size_t)size / 2;
}

size_t ml_storage_limit(void) {
  size_t n = __atomic_load_n(&storage_limit, __ATOMIC_RELAXED);
  if (!n) {
    n = default_limit();
    __atomic_store_n(&storage_limit, n, __ATOMIC_RELAXED);
  }
  return n;
}

void ml_storage_set_limit(size_t nbytes) { __atomic_store_n(&storage_limit, nbytes, __ATOMIC_RELAXED); }

/* Freed blocks kept for the next storage of the same size. A model written in Lua makes
 * and drops a few tensors of the same few sizes per layer; freed back to malloc in the
 * collector's bursts, they left the heap's top free, malloc gave it back to the system, and
 * the next tensors faulted and zeroed the same pages again (LuaJIT, whose steps run whole
 * cycles: 6,000 page faults per 128-token prefill of a 135M model). Blocks from 64 KiB up
 * (smaller ones stay in malloc's own bins), at most POOL_SLOTS of them and POOL_BYTES in all;
 * when full, the oldest goes back to malloc. Sizes are rounded up to whole pages so nearby
 * sizes share blocks. */
#define POOL_SLOTS 256
#define POOL_MIN ((size_t)64 << 10)
#define POOL_BYTES ((size_t)64 << 20)

static struct {
  pthread_mutex_t lock;
  void *data[POOL_SLOTS];
  size_t size[POOL_SLOTS]; /* 0: the slot is empty */
  uint64_t when[POOL_SLOTS], clock;
  size_t bytes;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t pool_size(size_t nbytes) { return nbytes < POOL_MIN ? nbytes : (nbytes + 4095) & ~(size_t)4095; }

static void *pool_take(size_t size) {
  void *p = NULL;
  if (size < POOL_MIN) return NULL;
  pthread_mutex_lock(&pool.lock);
  for (int i = 0; i < POOL_SLOTS; i++)
    if (pool.size[i] == size) {
      p = pool.data[i];
      pool.size[i] = 0;
      pool.bytes -= size;
      break;
    }
  pthread_mutex_unlock(&pool.lock);
  return p;
}

/* Keeps the block (the oldest ones leave to make room) or frees it. */
static void pool_give(void *p, size_t size) {
  void *evicted[POOL_SLOTS];
  int n_evicted = 0;
  if (size < POOL_MIN || size > POOL_BYTES) {
    ml_free(p);
    return;
  }
  pthread_mutex_lock(&pool.lock);
  int slot = -1;
  for (;;) {
    int oldest = -1;
    slot = -1;
    for (int i = 0; i < POOL_SLOTS; i++) {
      if (!pool.size[i]) slot = i;
      else if (oldest < 0 || pool.when[i] < pool.when[oldest]) oldest = i;
    }
    if (slot >= 0 && pool.bytes + size <= POOL_BYTES) break;
    evicted[n_evicted++] = pool.data[oldest];
    pool.bytes -= pool.size[oldest];
    pool.size[oldest] = 0;
  }
  pool.data[slot] = p;
  pool.size[slot] = size;
  pool.when[slot] = ++pool.clock;
  pool.bytes += size;
  pthread_mutex_unlock(&pool.lock);
  for (int i = 0; i < n_evicted; i++) ml_free(evicted[i]);
}

static ml_storage *storage_new(size_t nbytes, int zero) {
  size_t limit = ml_storage_limit();
  if (nbytes > limit) {
    ml_seterr("a tensor of %zu bytes is over the limit of %zu bytes (lm.limits{ max_tensor_bytes = n } sets it)",
              nbytes, limit);
    return NULL;
  }
  alloc_pending += nbytes;
  size_t size = pool_size(nbytes);
  ml_storage *s;
  if (size < POOL_MIN) {
    /* One block from malloc: the struct, then the data ML_ALIGN-aligned. A Lua forward
     * makes a few such tensors per layer and token (the norms' and products' results of a
     * decode), and each took two ml_allocs, whose posix_memalign carves the alignment out
     * of a larger chunk and frees the rest: ~1,600 instructions a tensor. */
    if (!(s = malloc(sizeof *s + ML_ALIGN + size))) {
      ml_seterr("out of memory (%zu bytes)", nbytes);
      return NULL;
    }
    memset(s, 0, sizeof *s);
    s->data = (void *)(((uintptr_t)(s + 1) + ML_ALIGN - 1) & ~(uintptr_t)(ML_ALIGN - 1));
    s->inline_data = 1;
  } else {
    if (!(s = ml_calloc(sizeof *s))) return NULL;
    s->data = pool_take(size);
    if (!s->data && !(s->data = ml_alloc(size))) {
      ml_free(s);
      return NULL;
    }
  }
  if (zero) memset(s->data, 0, nbytes);
  s->nbytes = nbytes;
  s->refcount = 1;
  return s;
}

ml_storage *ml_storage_new(size_t nbytes) { return storage_new(nbytes, 1); }
ml_storage *ml_storage_new_uninit(size_t nbytes) { return storage_new(nbytes, 0); }

ml_storage *ml_storage_external(void *data, size_t nbytes, void (*release)(void *), void *ctx) {
  ml_storage *s = ml_calloc(sizeof *s);
  if (!s) return NULL;
  s->data = data;
  s->nbytes = nbytes;
  s->release = release;
  s->ctx = ctx;
  s->refcount = 1;
  return s;
}

void ml_storage_retain(ml_storage *s) { __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED); }

void ml_storage_release(ml_storage *s) {
  if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (s->release)
    s->release(s->ctx);
  else if (!s->inline_data)
    pool_give(s->data, pool_size(s->nbytes));
  free(s); /* ml_free's free: the struct came from ml_calloc or, with its data, malloc */
}

/* ---- shapes ---- */

int ml_shape_numel(int ndim, const int64_t *shape, int64_t *out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      ml_misuse(0, "negative dimension %lld", (long long)shape[i]);
      return -1;
    }
    if (shape[i] != 0 && n > (INT64_C(1) << 50) / shape[i]) {
      ml_misuse(0, "tensor too large");
      return -1;
    }
    n *= shape[i];
  }
  if (n > (INT64_C(1) << 50)) {
    ml_misuse(0, "tensor too large");
    return -1;
  }
  *out = n;
  return 0;
}

static void set_contiguous_strides(ml_tensor *t) {
  int64_t st = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->stride[i] = st;
    st *= t->shape[i] ? t->shape[i] : 1;
  }
}

/* type, ndim and shape describe one thing: a misuse of them blames no one input (0) */
static int check_shape(ml_type type, int ndim, const int64_t *shape, int64_t *numel) {
  const ml_type_traits *tr = ml_type_traits_get(type);
  if (!tr) {
    ml_misuse(0, "unknown dtype %d", (int)type);
    return -1;
  }
  if (ndim < 0 || ndim > ML_MAX_DIMS) {
    ml_misuse(0, "at most %d dimensions, got %d", ML_MAX_DIMS, ndim);
    return -1;
  }
  if (ml_shape_numel(ndim, shape, numel) < 0) return -1;
  if (tr->blck > 1 && (ndim == 0 || shape[ndim - 1] % tr->blck != 0)) {
    ml_misuse(0, "%s needs the last dimension to be a multiple of %d, got %lld", tr->name, tr->blck,
              ndim ? (long long)shape[ndim - 1] : 1LL);
    return -1;
  }
  return 0;
}

static int tensor_init(ml_tensor *t, ml_type type, int ndim, const int64_t *shape, int zero) {
  int64_t n;
  if (check_shape(type, ndim, shape, &n) < 0) return -1;
  ml_storage *s = storage_new(ml_type_nbytes(type, n), zero);
  if (!s) return -1;
  memset(t, 0, sizeof *t);
  t->type = type;
  t->ndim = ndim;
  if (ndim > 0) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(t);
  t->storage = s;
  return 0;
}

int ml_tensor_init(ml_tensor *t, ml_type type, int ndim, const int64_t *shape) {
  return tensor_init(t, type, ndim, shape, 1);
}

int ml_tensor_init_uninit(ml_tensor *t, ml_type type, int ndim, const int64_t *shape) {
  return tensor_init(t, type, ndim, shape, 0);
}

int ml_tensor_init_on(ml_tensor *t, ml_storage *s, size_t offset, ml_type type, int ndim,
                      const int64_t *shape) {
  int64_t n;
  if (check_shape(type, ndim, shape, &n) < 0) return -1;
  size_t nb = ml_type_nbytes(type, n);
  if (offset > s->nbytes || nb > s->nbytes - offset) {
    ml_seterr("tensor of %zu bytes at offset %zu exceeds its storage (%zu bytes)", nb, offset,
              s->nbytes);
    return -1;
  }
  memset(t, 0, sizeof *t);
  t->type = type;
  t->ndim = ndim;
  if (ndim > 0) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(t);
  t->offset = offset;
  t->storage = s;
  ml_storage_retain(s);
  return 0;
}

void ml_tensor_view_of(ml_tensor *dst, const ml_tensor *src) {
  if (dst != src) *dst = *src;
  ml_storage_retain(dst->storage);
}

void ml_tensor_release(ml_tensor *t) {
  ml_storage *s = t->storage;
  t->storage = NULL;
  ml_storage_release(s);
}

int64_t ml_tensor_numel(const ml_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

int ml_tensor_is_contiguous(const ml_tensor *t) {
  int64_t st = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != st) return 0;
    st *= t->shape[i];
  }
  return 1;
}

size_t ml_tensor_nbytes(const ml_tensor *t) { return ml_type_nbytes(t->type, ml_tensor_numel(t)); }

int64_t ml_tensor_elem_offset(const ml_tensor *t, const int64_t *idx) {
  const ml_type_traits *tr = ml_type_traits_get(t->type);
  int64_t e = 0;
  for (int i = 0; i < t->ndim; i++) e += idx[i] * t->stride[i];
  return e / tr->blck * (int64_t)tr->size;
}

/* ---- scalar element access ---- */

static double load_plain(ml_type type, const void *p) {
  switch (type) {
  case ML_TYPE_F32: { float v; memcpy(&v, p, 4); return v; }
  case ML_TYPE_F64: { double v; memcpy(&v, p, 8); return v; }
  case ML_TYPE_F16: { ml_fp16 v; memcpy(&v, p, 2); return ml_fp16_to_f32(v); }
  case ML_TYPE_BF16: { ml_bf16 v; memcpy(&v, p, 2); return ml_bf16_to_f32(v); }
  case ML_TYPE_I8: return *(const int8_t *)p;
  case ML_TYPE_I16: { int16_t v; memcpy(&v, p, 2); return v; }
  case ML_TYPE_I32: { int32_t v; memcpy(&v, p, 4); return v; }
  case ML_TYPE_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
  default: return NAN;
  }
}

static int64_t clamp_int(double v, int64_t lo, int64_t hi) {
  if (v != v) return 0;
  if (v <= (double)lo) return lo;
  if (v >= (double)hi) return hi;
  return (int64_t)v;
}

static void store_plain(ml_type type, void *p, double v) {
  switch (type) {
  case ML_TYPE_F32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case ML_TYPE_F64: memcpy(p, &v, 8); break;
  case ML_TYPE_F16: { ml_fp16 h = ml_f32_to_fp16((float)v); memcpy(p, &h, 2); break; }
  case ML_TYPE_BF16: { ml_bf16 h = ml_f32_to_bf16((float)v); memcpy(p, &h, 2); break; }
  case ML_TYPE_I8: *(int8_t *)p = (int8_t)clamp_int(v, INT8_MIN, INT8_MAX); break;
  case ML_TYPE_I16: { int16_t x = (int16_t)clamp_int(v, INT16_MIN, INT16_MAX); memcpy(p, &x, 2); break; }
  case ML_TYPE_I32: { int32_t x = (int32_t)clamp_int(v, INT32_MIN, INT32_MAX); memcpy(p, &x, 4); break; }
  case ML_TYPE_I64: { int64_t x = clamp_int(v, INT64_MIN, INT64_MAX); memcpy(p, &x, 8); break; }
  default: break;
  }
}

double ml_tensor_get(const ml_tensor *t, const int64_t *idx) {
  const ml_type_traits *tr = ml_type_traits_get(t->type);
  if (tr->blck > 1) {
    /* dequantize the block holding the element */
    int64_t e = 0;
    for (int i = 0; i < t->ndim; i++) e += idx[i] * t->stride[i];
    float buf[ML_QK_K];
    const char *blk = (const char *)ml_tensor_data(t) + e / tr->blck * (int64_t)tr->size;
    tr->to_float(blk, buf, tr->blck);
    return buf[e % tr->blck];
  }
  return load_plain(t->type, (const char *)ml_tensor_data(t) + ml_tensor_elem_offset(t, idx));
}

void ml_tensor_set(const ml_tensor *t, const int64_t *idx, double v) {
  store_plain(t->type, (char *)ml_tensor_data(t) + ml_tensor_elem_offset(t, idx), v);
}

static void unflatten(const ml_tensor *t, int64_t i, int64_t *idx) {
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = t->shape[d] ? i % t->shape[d] : 0;
    i = t->shape[d] ? i / t->shape[d] : 0;
  }
}

double ml_tensor_get_flat(const ml_tensor *t, int64_t i) {
  int64_t idx[ML_MAX_DIMS];
  unflatten(t, i, idx);
  return ml_tensor_get(t, idx);
}

void ml_tensor_fill(const ml_tensor *t, double v) {
  int64_t n = ml_tensor_numel(t), idx[ML_MAX_DIMS];
  if (ml_tensor_is_contiguous(t) && t->type == ML_TYPE_F32) {
    float *p = ml_tensor_data(t), f = (float)v;
    for (int64_t i = 0; i < n; i++) p[i] = f;
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    unflatten(t, i, idx);
    ml_tensor_set(t, idx, v);
  }
}

/* ---- views ---- */

static int check_dim(const ml_tensor *t, int dim, int input) {
  if (dim < 0 || dim >= t->ndim) {
    ml_misuse(input, "dimension %d out of range (tensor has %d)", dim + 1, t->ndim);
    return -1;
  }
  return 0;
}

static int blocks_ok(const ml_tensor *t, int input) {
  const ml_type_traits *tr = ml_type_traits_get(t->type);
  if (tr->blck == 1) return 0;
  if (t->ndim == 0 || t->stride[t->ndim - 1] != 1 || t->shape[t->ndim - 1] % tr->blck) goto bad;
  for (int i = 0; i < t->ndim - 1; i++)
    if (t->stride[i] % tr->blck) goto bad;
  return 0;
bad:
  ml_misuse(input, "this view would split %s blocks of %d (dequantize first)", tr->name, tr->blck);
  return -1;
}

int ml_tensor_reshape_view(ml_tensor *dst, const ml_tensor *src, int ndim, const int64_t *shape) {
  int64_t n, infer = -1, known = 1, sh[ML_MAX_DIMS];
  if (ndim < 0 || ndim > ML_MAX_DIMS) {
    ml_misuse(2, "at most %d dimensions", ML_MAX_DIMS);
    return -1;
  }
  for (int i = 0; i < ndim; i++) {
    sh[i] = shape[i];
    if (shape[i] == -1) {
      if (infer >= 0) {
        ml_misuse(2, "only one dimension can be -1");
        return -1;
      }
      infer = i;
    } else if (shape[i] < 0) {
      ml_misuse(2, "negative dimension %lld", (long long)shape[i]);
      return -1;
    } else {
      known *= shape[i];
    }
  }
  n = ml_tensor_numel(src);
  if (infer >= 0) {
    if (known == 0 || n % known) {
      ml_misuse(2, "cannot infer -1: %lld elements do not divide by %lld", (long long)n, (long long)known);
      return -1;
    }
    sh[infer] = n / known;
  }
  int64_t m;
  if (ml_shape_numel(ndim, sh, &m) < 0 || m != n) {
    ml_misuse(2, "shape has %lld elements, tensor has %lld", (long long)(ml_shape_numel(ndim, sh, &m) < 0 ? -1 : m),
              (long long)n);
    return -1;
  }
  if (!ml_tensor_is_contiguous(src)) {
    ml_misuse(1, "view needs a contiguous tensor (call contiguous() or use reshape)");
    return -1;
  }
  ml_tensor t = *src;
  t.ndim = ndim;
  memcpy(t.shape, sh, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(&t);
  if (blocks_ok(&t, 2) < 0) return -1;
  ml_tensor_view_of(dst, &t);
  return 0;
}

int ml_tensor_narrow(ml_tensor *dst, const ml_tensor *src, int dim, int64_t start, int64_t len) {
  if (check_dim(src, dim, 2) < 0) return -1;
  if (start < 0 || start > src->shape[dim]) {
    ml_misuse(3, "start %lld out of range (dimension %d has size %lld)", (long long)start + 1,
              dim + 1, (long long)src->shape[dim]);
    return -1;
  }
  if (len < 0 || len > src->shape[dim] - start) {
    ml_misuse(4, "length %lld out of range (%lld elements from %lld)", (long long)len,
              (long long)(src->shape[dim] - start), (long long)start + 1);
    return -1;
  }
  ml_tensor t = *src;
  const ml_type_traits *tr = ml_type_traits_get(t.type);
  int64_t e = start * src->stride[dim];
  if (e % tr->blck) {
    ml_misuse(3, "this view would split %s blocks of %d (dequantize first)", tr->name, tr->blck);
    return -1;
  }
  t.offset += (size_t)(e / tr->blck * (int64_t)tr->size);
  t.shape[dim] = len;
  if (blocks_ok(&t, 4) < 0) return -1;
  ml_tensor_view_of(dst, &t);
  return 0;
}

int ml_tensor_select(ml_tensor *dst, const ml_tensor *src, int dim, int64_t index) {
  if (check_dim(src, dim, 2) < 0) return -1;
  if (index < 0 || index >= src->shape[dim]) {
    ml_misuse(3, "index %lld out of range (dimension %d has size %lld)", (long long)index + 1,
              dim + 1, (long long)src->shape[dim]);
    return -1;
  }
  ml_tensor t;
  if (ml_tensor_narrow(&t, src, dim, index, 1) < 0) return -1;
  for (int i = dim; i < t.ndim - 1; i++) {
    t.shape[i] = t.shape[i + 1];
    t.stride[i] = t.stride[i + 1];
  }
  t.ndim--;
  /* narrow() retained; hand that reference to dst */
  if (blocks_ok(&t, 3) < 0) {
    ml_tensor_release(&t);
    return -1;
  }
  *dst = t;
  return 0;
}

int ml_tensor_transpose(ml_tensor *dst, const ml_tensor *src, int d0, int d1) {
  if (check_dim(src, d0, 2) < 0 || check_dim(src, d1, 3) < 0) return -1;
  ml_tensor t = *src;
  int64_t s = t.shape[d0], st = t.stride[d0];
  t.shape[d0] = t.shape[d1];
  t.stride[d0] = t.stride[d1];
  t.shape[d1] = s;
  t.stride[d1] = st;
  if (blocks_ok(&t, 2) < 0) return -1;
  ml_tensor_view_of(dst, &t);
  return 0;
}

int ml_tensor_permute(ml_tensor *dst, const ml_tensor *src, const int *perm) {
  int seen[ML_MAX_DIMS] = {0};
  ml_tensor t = *src;
  for (int i = 0; i < src->ndim; i++) {
    if (perm[i] < 0 || perm[i] >= src->ndim || seen[perm[i]]) {
      ml_misuse(2, "not a permutation of the %d dimensions", src->ndim);
      return -1;
    }
    seen[perm[i]] = 1;
    t.shape[i] = src->shape[perm[i]];
    t.stride[i] = src->stride[perm[i]];
  }
  if (blocks_ok(&t, 2) < 0) return -1;
  ml_tensor_view_of(dst, &t);
  return 0;
}

int ml_tensor_expand(ml_tensor *dst, const ml_tensor *src, int ndim, const int64_t *shape) {
  if (ndim < src->ndim || ndim > ML_MAX_DIMS) {
    ml_misuse(2, "cannot expand %d dimensions to %d", src->ndim, ndim);
    return -1;
  }
  ml_tensor t = *src;
  int off = ndim - src->ndim;
  t.ndim = ndim;
  for (int i = ndim - 1; i >= 0; i--) {
    int j = i - off;
    int64_t have = j >= 0 ? src->shape[j] : 1, st = j >= 0 ? src->stride[j] : 0;
    if (shape[i] < 0 || (have != shape[i] && have != 1)) {
      ml_misuse(2, "cannot expand size %lld to %lld in dimension %d", (long long)have, (long long)shape[i], i + 1);
      return -1;
    }
    t.shape[i] = shape[i];
    t.stride[i] = have == shape[i] ? st : 0;
  }
  if (blocks_ok(&t, 2) < 0) return -1;
  ml_tensor_view_of(dst, &t);
  return 0;
}

/* ---- copies ---- */

/* Iterate the rows (innermost dimension) of t in logical order. */
typedef struct row_iter {
  int64_t idx[ML_MAX_DIMS];
  int64_t nrows, row;
} row_iter;

static int64_t row_count(const ml_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim - 1; i++) n *= t->shape[i];
  return t->ndim == 0 ? 1 : n;
}

/* Byte offset of row r (0-based, logical order) of t. */
static int64_t row_offset(const ml_tensor *t, int64_t r) {
  const ml_type_traits *tr = ml_type_traits_get(t->type);
  int64_t e = 0;
  for (int d = t->ndim - 2; d >= 0; d--) {
    int64_t sz = t->shape[d];
    e += (r % sz) * t->stride[d];
    r /= sz;
  }
  return e / tr->blck * (int64_t)tr->size;
}

/* Convert one row of n elements (element stride `st`, in elements) of any type into f32. */
static void row_to_f32(const ml_tensor *t, const char *p, int64_t st, int64_t n, float *out) {
  const ml_type_traits *tr = ml_type_traits_get(t->type);
  if (tr->blck > 1 || (st == 1 && tr->to_float)) {
    tr->to_float(p, out, n);
    return;
  }
  for (int64_t i = 0; i < n; i++) out[i] = (float)load_plain(t->type, p + i * st * (int64_t)tr->size);
}

int ml_tensor_copy_into(const ml_tensor *dst, const ml_tensor *src) {
  if (dst->ndim != src->ndim || memcmp(dst->shape, src->shape, sizeof(int64_t) * (size_t)dst->ndim)) {
    ml_misuse(2, "shapes differ");
    return -1;
  }
  const ml_type_traits *dt = ml_type_traits_get(dst->type);
  if (dt->blck > 1 && !ml_tensor_is_contiguous(dst)) {
    ml_misuse(1, "cannot write into a non-contiguous %s tensor", dt->name);
    return -1;
  }
  int64_t n = src->ndim ? src->shape[src->ndim - 1] : 1, rows = row_count(src);
  if (ml_tensor_numel(src) == 0) return 0;
  int64_t sst = src->ndim ? src->stride[src->ndim - 1] : 1;
  int64_t dst_st = dst->ndim ? dst->stride[dst->ndim - 1] : 1;
  /* same plain type, contiguous rows: memcpy */
  if (src->type == dst->type && dt->blck == 1 && sst == 1 && dst_st == 1) {
    for (int64_t r = 0; r < rows; r++)
      memcpy((char *)ml_tensor_data(dst) + row_offset(dst, r),
             (const char *)ml_tensor_data(src) + row_offset(src, r), (size_t)n * dt->size);
    return 0;
  }
  if (src->type == dst->type && dt->blck > 1) {
    for (int64_t r = 0; r < rows; r++)
      memcpy((char *)ml_tensor_data(dst) + row_offset(dst, r),
             (const char *)ml_tensor_data(src) + row_offset(src, r), ml_type_nbytes(dst->type, n));
    return 0;
  }
  if (dt->blck > 1 && !dt->from_float) {
    ml_misuse(2, "cannot quantize to %s", dt->name);
    return -1;
  }
  /* rows convert independently: large conversions (quantizing a weight) use every thread */
  int nth = ml_threads_for(ML_WORK_ELEMS, (double)n * (double)rows);
  float *bufs = ml_alloc(sizeof(float) * (size_t)n * (size_t)nth);
  if (!bufs) return -1;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    float *buf = bufs + (size_t)n * (size_t)ml_thread_id();
    const char *sp = (const char *)ml_tensor_data(src) + row_offset(src, r);
    char *dp = (char *)ml_tensor_data(dst) + row_offset(dst, r);
    float *row = buf;
    if (src->type == ML_TYPE_F32 && sst == 1)
      row = (float *)sp;
    else
      row_to_f32(src, sp, sst, n, buf);
    if (dst->type == ML_TYPE_F32 && dst_st == 1)
      memcpy(dp, row, sizeof(float) * (size_t)n);
    else if (dt->from_float && dst_st == 1 && (dt->blck > 1 || dt->is_float))
      dt->from_float(row, dp, n); /* integers go through store_plain: truncate and saturate */
    else
      for (int64_t i = 0; i < n; i++) store_plain(dst->type, dp + i * dst_st * (int64_t)dt->size, row[i]);
  }
  ml_free(bufs);
  return 0;
}

int ml_tensor_to(ml_tensor *dst, const ml_tensor *src, ml_type type) {
  ml_tensor t;
  if (ml_tensor_init(&t, type, src->ndim, src->shape) < 0) {
    ml_misuse_input(2);
    return -1;
  }
  if (ml_tensor_copy_into(&t, src) < 0) { /* only "cannot quantize to" can fail: the type */
    ml_misuse_input(2);
    ml_tensor_release(&t);
    return -1;
  }
  *dst = t;
  return 0;
}

int ml_tensor_clone(ml_tensor *dst, const ml_tensor *src) { return ml_tensor_to(dst, src, src->type); }

int ml_tensor_contiguous(ml_tensor *dst, const ml_tensor *src) {
  if (ml_tensor_is_contiguous(src)) {
    ml_tensor_view_of(dst, src);
    return 0;
  }
  return ml_tensor_clone(dst, src);
}

int ml_tensor_f32(ml_tensor *dst, const ml_tensor *src) {
  if (src->type == ML_TYPE_F32) return ml_tensor_contiguous(dst, src);
  return ml_tensor_to(dst, src, ML_TYPE_F32);
}

/* ---- generator: xoshiro256** seeded by splitmix64; normals by Box-Muller in double ---- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

void ml_rng_seed(ml_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ml_rng_next(ml_rng *r) {
  uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

double ml_rng_uniform(ml_rng *r) { return (double)(ml_rng_next(r) >> 11) * 0x1.0p-53; }

double ml_rng_normal(ml_rng *r) {
  /* One value per pair keeps the sequence independent of how many values a call asks for. */
  double u1 = ml_rng_uniform(r), u2 = ml_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void ml_tensor_rand(const ml_tensor *t, ml_rng *r, double lo, double hi) {
  int64_t n = ml_tensor_numel(t), idx[ML_MAX_DIMS];
  if (t->type == ML_TYPE_F32 && ml_tensor_is_contiguous(t)) {
    float *p = ml_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * ml_rng_uniform(r));
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    unflatten(t, i, idx);
    ml_tensor_set(t, idx, lo + (hi - lo) * ml_rng_uniform(r));
  }
}

void ml_tensor_randn(const ml_tensor *t, ml_rng *r, double mean, double std) {
  int64_t n = ml_tensor_numel(t), idx[ML_MAX_DIMS];
  if (t->type == ML_TYPE_F32 && ml_tensor_is_contiguous(t)) {
    float *p = ml_tensor_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(mean + std * ml_rng_normal(r));
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    unflatten(t, i, idx);
    ml_tensor_set(t, idx, mean + std * ml_rng_normal(r));
  }
}
