/* kvcache.h: a key/value cache of a context.
 *
 * n_cells slots, each holding one token's keys and values for every layer of the cache (a
 * row of n_head_kv * head_dim elements of the cache type, per layer, for K and for V). A
 * cell belongs to a set of sequences (a bit mask: copying a sequence shares its cells
 * instead of duplicating them) and sits at one position. Each sequence keeps the list of
 * its cells in position order, so attention walks exactly the cells of its own sequence.
 *
 * A context has one cache for its global layers and, for families with sliding-window
 * layers (gemma2, gemma3), a second, smaller one for those: a sequence there holds only its
 * last positions, so the front of its list is evicted as it grows (off[seq] positions are
 * gone; position p sits at cells[seq][p - off[seq]]). */
#ifndef ML_KVCACHE_H
#define ML_KVCACHE_H

#include <stdint.h>

#include "dtype.h"

#define ML_MAX_SEQ 64

typedef struct ml_kvcache {
  int64_t n_cells, n_layer, row;  /* row: elements per cell per layer (n_head_kv * head_dim) */
  ml_type type;
  size_t row_bytes;               /* bytes of one row in the cache type */
  uint8_t **k, **v;               /* per layer: n_cells rows */
  uint64_t *mask;                 /* per cell: sequences that use it (0: free) */
  int64_t n_used, next_free;      /* cells in use; where to start looking for a free one */
  int n_seq;
  int32_t **cells;                /* per sequence: its cells in position order, from off */
  int64_t *len;                   /* per sequence: tokens (the next position) */
  int64_t *off;                   /* per sequence: positions evicted from the front */
} ml_kvcache;

int ml_kvcache_init(ml_kvcache *c, int64_t n_cells, int64_t n_layer, int64_t row, ml_type type, int n_seq);
void ml_kvcache_free(ml_kvcache *c);
/* Append one token to seq: returns its cell, or -1 when no cell is free. */
int32_t ml_kvcache_append(ml_kvcache *c, int seq);
/* Keep the first n positions of seq (n >= off[seq], or everything goes and off becomes 0). */
void ml_kvcache_truncate(ml_kvcache *c, int seq, int64_t n);
/* Drop the positions of seq before `from` (sliding window). */
void ml_kvcache_evict(ml_kvcache *c, int seq, int64_t from);
void ml_kvcache_copy(ml_kvcache *c, int from, int to);
/* Write one token's keys and values (row floats each) into a cell of a layer, converted to
 * the cache type. */
void ml_kvcache_store(const ml_kvcache *c, int64_t layer, int32_t cell, const float *k, const float *v);
/* Context shift, the cells' side: positions [a, b) of seq go, the later ones move down by
 * b - a (len and off follow). A later cell that another sequence shares is first copied to
 * a free cell (its rows of every layer), so that the caller can rewrite its keys (RoPE)
 * without touching the other sequence. Returns how many cells now hold moved positions,
 * at list indices [*first, *first + n) of seq. ml_kvcache_shift_fits says whether there are
 * free cells enough for those copies; call ml_kvcache_shift only when it is 1. */
int ml_kvcache_shift_fits(const ml_kvcache *c, int seq, int64_t a, int64_t b);
int64_t ml_kvcache_shift(ml_kvcache *c, int seq, int64_t a, int64_t b, int64_t *first);
static inline int32_t ml_kvcache_cell(const ml_kvcache *c, int seq, int64_t pos) {
  return c->cells[seq][pos - c->off[seq]];
}
static inline uint8_t *ml_kvcache_k(const ml_kvcache *c, int64_t layer, int64_t cell) {
  return c->k[layer] + (size_t)cell * c->row_bytes;
}
static inline uint8_t *ml_kvcache_v(const ml_kvcache *c, int64_t layer, int64_t cell) {
  return c->v[layer] + (size_t)cell * c->row_bytes;
}

#endif
