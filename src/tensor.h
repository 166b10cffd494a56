/* tensor.h: N-d strided tensors over refcounted storage.
 *
 * A tensor is a small value struct (type, shape, strides, byte offset) that points at a
 * storage block. Views share the storage and hold a reference, so a view keeps its base
 * alive however the base's owner is freed. Storage is owned (64-byte aligned), or external
 * (an mmapped GGUF file, released through a callback). Strides count elements; for block
 * types the innermost dimension must be contiguous and whole blocks, and the other strides
 * must be multiples of the block size. Shapes are row-major, outermost first: a GGUF tensor
 * with ne = [256, 64] is shape {64, 256}.
 */
#ifndef ML_TENSOR_H
#define ML_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ML_MAX_DIMS 8

typedef struct ml_storage {
  int refcount; /* atomic */
  void *data;
  size_t nbytes;
  void (*release)(void *ctx); /* external storage: called at zero; NULL: data is ml_alloc'd */
  void *ctx;
  int readonly; /* a model file's mapping (shared by every state): the binding refuses writes */
  int inline_data; /* data sits in the struct's own block (small storage), freed with it */
} ml_storage;

typedef struct ml_tensor {
  ml_type type;
  int ndim;                         /* 0 = scalar (numel 1) */
  int64_t shape[ML_MAX_DIMS];
  int64_t stride[ML_MAX_DIMS];      /* in elements */
  size_t offset;                    /* in bytes, from storage->data */
  ml_storage *storage;              /* NULL once released */
} ml_tensor;

/* storage */
ml_storage *ml_storage_new(size_t nbytes); /* zero-filled; refused above the limit below */
/* The same, not zero-filled: for results the caller writes in full before anyone reads them */
ml_storage *ml_storage_new_uninit(size_t nbytes);
/* The largest storage ml_storage_new allocates (process-wide; lm.limits{ max_tensor_bytes }):
 * by default half the physical memory, so a mistyped shape fails at once instead of paging
 * the machine for minutes. 0 restores the default. */
size_t ml_storage_limit(void);
void ml_storage_set_limit(size_t nbytes);
/* Bytes ml_storage_new allocated on this thread since the last call (and reset). */
size_t ml_storage_take_pending(void);
ml_storage *ml_storage_external(void *data, size_t nbytes, void (*release)(void *), void *ctx);
void ml_storage_retain(ml_storage *s);
void ml_storage_release(ml_storage *s);

/* Initialise `t` (caller-owned struct) as a new contiguous tensor. Returns 0 or -1 with an
 * error: a misuse with no one input to blame (bad shape, dims not whole blocks, too large), or
 * out of memory. */
int ml_tensor_init(ml_tensor *t, ml_type type, int ndim, const int64_t *shape);
/* The same, its elements not zero-filled: for a result the op then writes in full. */
int ml_tensor_init_uninit(ml_tensor *t, ml_type type, int ndim, const int64_t *shape);
/* Initialise as a contiguous tensor over existing storage at `offset` (retains it). */
int ml_tensor_init_on(ml_tensor *t, ml_storage *s, size_t offset, ml_type type, int ndim,
                      const int64_t *shape);
/* `dst` becomes a view of `src` (same shape/strides; retains storage). */
void ml_tensor_view_of(ml_tensor *dst, const ml_tensor *src);
void ml_tensor_release(ml_tensor *t); /* drop the storage reference; safe to call twice */

int64_t ml_tensor_numel(const ml_tensor *t);
int ml_tensor_is_contiguous(const ml_tensor *t);
size_t ml_tensor_nbytes(const ml_tensor *t); /* bytes of the elements (as if contiguous) */
static inline void *ml_tensor_data(const ml_tensor *t) {
  return (char *)t->storage->data + t->offset;
}
/* Byte offset (from the tensor's data) of the element at a 0-based index, plain types. */
int64_t ml_tensor_elem_offset(const ml_tensor *t, const int64_t *idx);
/* Check the shape's elements fit the storage (defensive; used on views built from user input). */
int ml_shape_numel(int ndim, const int64_t *shape, int64_t *out);

/* Element access as double (any plain type); index 0-based, already range-checked. */
double ml_tensor_get(const ml_tensor *t, const int64_t *idx);
void ml_tensor_set(const ml_tensor *t, const int64_t *idx, double v);
/* Read the element at flat (row-major, logical) position i, any type incl. blocks: slow path. */
double ml_tensor_get_flat(const ml_tensor *t, int64_t i);

/* Views (dst is overwritten; on error dst is untouched and -1 is returned with an error: a
 * misuse names its input as common.h counts them, src being 1). dims are 0-based here; the
 * binding converts from Lua's 1-based. */
int ml_tensor_reshape_view(ml_tensor *dst, const ml_tensor *src, int ndim, const int64_t *shape);
int ml_tensor_narrow(ml_tensor *dst, const ml_tensor *src, int dim, int64_t start, int64_t len);
int ml_tensor_select(ml_tensor *dst, const ml_tensor *src, int dim, int64_t index);
int ml_tensor_transpose(ml_tensor *dst, const ml_tensor *src, int d0, int d1);
int ml_tensor_permute(ml_tensor *dst, const ml_tensor *src, const int *perm);
int ml_tensor_expand(ml_tensor *dst, const ml_tensor *src, int ndim, const int64_t *shape);

/* New contiguous copies. */
int ml_tensor_contiguous(ml_tensor *dst, const ml_tensor *src); /* view if already contiguous */
int ml_tensor_clone(ml_tensor *dst, const ml_tensor *src);
/* Convert (copy) to another type; quantizing needs whole blocks in the last dim. */
int ml_tensor_to(ml_tensor *dst, const ml_tensor *src, ml_type type);
/* Copy src into dst elementwise (same shape, dst plain type, src any type). */
int ml_tensor_copy_into(const ml_tensor *dst, const ml_tensor *src);
/* A contiguous f32 version: a view if src already is, else a converted copy. */
int ml_tensor_f32(ml_tensor *dst, const ml_tensor *src);

/* Fill */
void ml_tensor_fill(const ml_tensor *t, double v); /* plain types */

/* Deterministic generator (same seed, same numbers on every machine). */
typedef struct ml_rng { uint64_t s[4]; } ml_rng;
void ml_rng_seed(ml_rng *r, uint64_t seed);
uint64_t ml_rng_next(ml_rng *r);
double ml_rng_uniform(ml_rng *r); /* [0, 1) */
double ml_rng_normal(ml_rng *r);
void ml_tensor_rand(const ml_tensor *t, ml_rng *r, double lo, double hi);
void ml_tensor_randn(const ml_tensor *t, ml_rng *r, double mean, double std);

#endif
