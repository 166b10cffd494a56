/* kvcache.c: cells, sequence membership and the per-sequence cell lists. */
#include "kvcache.h"

#include <string.h>

#include "common.h"
#include "kernels/dispatch.h"
#include "tensor.h"

int ml_kvcache_init(ml_kvcache *c, int64_t n_cells, int64_t n_layer, int64_t row, ml_type type, int n_seq) {
  memset(c, 0, sizeof *c);
  c->n_cells = n_cells;
  c->n_layer = n_layer;
  c->row = row;
  c->type = type;
  c->row_bytes = ml_type_nbytes(type, row);
  c->n_seq = n_seq;
  /* K and V of every layer: one object, under the same cap as a tensor's storage (cells are
     allocated lazily, so without it a cache of terabytes is accepted and fails page by page) */
  size_t limit = ml_storage_limit(), per_layer = 0, total = 0;
  int over = __builtin_mul_overflow(c->row_bytes, (size_t)n_cells, &per_layer) ||
             __builtin_mul_overflow(per_layer, 2 * (size_t)n_layer, &total);
  if (over || total > limit) {
    if (over)
      ml_seterr("a KV cache of %lld cells x %lld layers x %zu bytes per cell is over the limit of %zu bytes "
                "(lm.limits{ max_tensor_bytes = n } sets it)", (long long)n_cells, (long long)n_layer, 2 * c->row_bytes,
                limit);
    else
      ml_seterr("a KV cache of %zu bytes is over the limit of %zu bytes (lm.limits{ max_tensor_bytes = n } sets it)",
                total, limit);
    memset(c, 0, sizeof *c);
    return -1;
  }
  if (n_layer && (!(c->k = ml_calloc(sizeof(uint8_t *) * (size_t)n_layer)) ||
                  !(c->v = ml_calloc(sizeof(uint8_t *) * (size_t)n_layer))))
    goto fail;
  for (int64_t l = 0; l < n_layer; l++)
    if (!(c->k[l] = ml_alloc(c->row_bytes * (size_t)n_cells)) || !(c->v[l] = ml_alloc(c->row_bytes * (size_t)n_cells)))
      goto fail;
  if (!(c->mask = ml_calloc(sizeof(uint64_t) * (size_t)n_cells))) goto fail;
  if (!(c->cells = ml_calloc(sizeof(int32_t *) * (size_t)n_seq)) || !(c->len = ml_calloc(sizeof(int64_t) * (size_t)n_seq)) ||
      !(c->off = ml_calloc(sizeof(int64_t) * (size_t)n_seq)))
    goto fail;
  for (int s = 0; s < n_seq; s++)
    if (!(c->cells[s] = ml_alloc(sizeof(int32_t) * (size_t)n_cells))) goto fail;
  return 0;
fail:
  ml_kvcache_free(c);
  ml_seterr("cannot allocate the KV cache (%lld cells of %zu bytes, %lld layers)", (long long)n_cells,
            2 * c->row_bytes, (long long)n_layer);
  return -1;
}

void ml_kvcache_free(ml_kvcache *c) {
  for (int64_t l = 0; l < c->n_layer; l++) {
    if (c->k) ml_free(c->k[l]);
    if (c->v) ml_free(c->v[l]);
  }
  if (c->cells)
    for (int s = 0; s < c->n_seq; s++) ml_free(c->cells[s]);
  ml_free(c->k);
  ml_free(c->v);
  ml_free(c->mask);
  ml_free(c->cells);
  ml_free(c->len);
  ml_free(c->off);
  memset(c, 0, sizeof *c);
}

int32_t ml_kvcache_append(ml_kvcache *c, int seq) {
  if (c->n_used >= c->n_cells) return -1;
  int64_t i = c->next_free;
  while (c->mask[i]) i = i + 1 == c->n_cells ? 0 : i + 1; /* n_used < n_cells: terminates */
  c->mask[i] = UINT64_C(1) << seq;
  c->n_used++;
  c->next_free = i + 1 == c->n_cells ? 0 : i + 1;
  c->cells[seq][c->len[seq]++ - c->off[seq]] = (int32_t)i;
  return (int32_t)i;
}

/* Give up seq's claim on cells[seq][a, b) (list indices). */
static void release(ml_kvcache *c, int seq, int64_t a, int64_t b) {
  uint64_t bit = UINT64_C(1) << seq;
  for (int64_t k = a; k < b; k++) {
    int32_t i = c->cells[seq][k];
    c->mask[i] &= ~bit;
    if (!c->mask[i]) {
      c->n_used--;
      if (i < c->next_free) c->next_free = i; /* keep the lowest free cell first */
    }
  }
}

void ml_kvcache_truncate(ml_kvcache *c, int seq, int64_t n) {
  if (n >= c->len[seq]) return;
  if (n < c->off[seq]) n = 0;
  int64_t held = c->len[seq] - c->off[seq];
  release(c, seq, n ? n - c->off[seq] : 0, held);
  c->len[seq] = n;
  if (!n) c->off[seq] = 0;
}

void ml_kvcache_evict(ml_kvcache *c, int seq, int64_t from) {
  int64_t k = from - c->off[seq], held = c->len[seq] - c->off[seq];
  if (k <= 0) return;
  if (k > held) k = held;
  release(c, seq, 0, k);
  memmove(c->cells[seq], c->cells[seq] + k, sizeof(int32_t) * (size_t)(held - k));
  c->off[seq] += k;
}

void ml_kvcache_copy(ml_kvcache *c, int from, int to) {
  if (from == to) return;
  ml_kvcache_truncate(c, to, 0);
  uint64_t bit = UINT64_C(1) << to;
  int64_t held = c->len[from] - c->off[from];
  for (int64_t k = 0; k < held; k++) {
    int32_t i = c->cells[from][k];
    c->mask[i] |= bit;
    c->cells[to][k] = i;
  }
  c->len[to] = c->len[from];
  c->off[to] = c->off[from];
}

void ml_kvcache_store(const ml_kvcache *c, int64_t layer, int32_t cell, const float *k, const float *v) {
  uint8_t *kd = ml_kvcache_k(c, layer, cell), *vd = ml_kvcache_v(c, layer, cell);
  if (c->type == ML_TYPE_F32) {
    memcpy(kd, k, sizeof(float) * (size_t)c->row);
    memcpy(vd, v, sizeof(float) * (size_t)c->row);
    return;
  }
  if (c->type == ML_TYPE_F16) { /* the forward pass's row kernel (the same rounding) */
    const ml_rowops *ro = ml_rowops_get();
    ro->f32_to_f16(k, (ml_fp16 *)kd, c->row);
    ro->f32_to_f16(v, (ml_fp16 *)vd, c->row);
    return;
  }
  const ml_type_traits *tr = ml_type_traits_get(c->type);
  tr->from_float(k, kd, c->row);
  tr->from_float(v, vd, c->row);
}

/* list indices of seq for positions [a, b), clipped to what it holds */
static void clip(const ml_kvcache *c, int seq, int64_t a, int64_t b, int64_t *lo, int64_t *hi) {
  int64_t held = c->len[seq] - c->off[seq];
  *lo = ML_MIN(ML_MAX(a - c->off[seq], 0), held);
  *hi = ML_MIN(ML_MAX(b - c->off[seq], 0), held);
}

int ml_kvcache_shift_fits(const ml_kvcache *c, int seq, int64_t a, int64_t b) {
  uint64_t bit = UINT64_C(1) << seq;
  int64_t lo, hi, held = c->len[seq] - c->off[seq], freed = 0, shared = 0;
  clip(c, seq, a, b, &lo, &hi);
  for (int64_t k = lo; k < hi; k++) freed += c->mask[c->cells[seq][k]] == bit;
  for (int64_t k = hi; k < held; k++) shared += c->mask[c->cells[seq][k]] != bit;
  return shared <= c->n_cells - c->n_used + freed;
}

/* a free cell for seq (the caller checked that one exists) */
static int32_t take(ml_kvcache *c, int seq) {
  int64_t i = c->next_free;
  while (c->mask[i]) i = i + 1 == c->n_cells ? 0 : i + 1;
  c->mask[i] = UINT64_C(1) << seq;
  c->n_used++;
  c->next_free = i + 1 == c->n_cells ? 0 : i + 1;
  return (int32_t)i;
}

int64_t ml_kvcache_shift(ml_kvcache *c, int seq, int64_t a, int64_t b, int64_t *first) {
  uint64_t bit = UINT64_C(1) << seq;
  int64_t d = b - a, lo, hi, held = c->len[seq] - c->off[seq];
  clip(c, seq, a, b, &lo, &hi);
  release(c, seq, lo, hi);
  int32_t *list = c->cells[seq];
  memmove(list + lo, list + hi, sizeof(int32_t) * (size_t)(held - hi));
  int64_t moved = held - hi;
  for (int64_t k = lo; k < lo + moved; k++) {
    int32_t old = list[k];
    if (c->mask[old] == bit) continue;
    int32_t cell = take(c, seq);
    for (int64_t l = 0; l < c->n_layer; l++) {
      memcpy(ml_kvcache_k(c, l, cell), ml_kvcache_k(c, l, old), c->row_bytes);
      memcpy(ml_kvcache_v(c, l, cell), ml_kvcache_v(c, l, old), c->row_bytes);
    }
    c->mask[old] &= ~bit; /* still used by the others */
    list[k] = cell;
  }
  int64_t off = c->off[seq];
  c->off[seq] = off >= b ? off - d : off > a ? a : off;
  c->len[seq] -= d;
  *first = lo;
  return moved;
}
