/* gguf.h: GGUF v2/v3 reader (mmap, zero copy, every length validated) and writer.
 *
 * The reader never trusts the file: every count, length and offset is checked against the
 * bytes that remain before it is used, so a truncated or hostile file gives NULL with a
 * message naming what is wrong and the byte offset (ml_errmsg), never a crash or a huge
 * allocation. Strings and array payloads point into the mapping (not NUL-terminated).
 */
#ifndef ML_GGUF_H
#define ML_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

typedef enum ml_gguf_vtype {
  ML_GGUF_UINT8 = 0,
  ML_GGUF_INT8 = 1,
  ML_GGUF_UINT16 = 2,
  ML_GGUF_INT16 = 3,
  ML_GGUF_UINT32 = 4,
  ML_GGUF_INT32 = 5,
  ML_GGUF_FLOAT32 = 6,
  ML_GGUF_BOOL = 7,
  ML_GGUF_STRING = 8,
  ML_GGUF_ARRAY = 9,
  ML_GGUF_UINT64 = 10,
  ML_GGUF_INT64 = 11,
  ML_GGUF_FLOAT64 = 12,
  ML_GGUF_VTYPE_COUNT
} ml_gguf_vtype;

typedef struct ml_gguf_str {
  const char *s; /* into the mapping (or into writer-owned memory); not NUL-terminated */
  uint64_t len;
} ml_gguf_str;

typedef struct ml_gguf_value ml_gguf_value;
struct ml_gguf_value {
  ml_gguf_vtype type;
  union {
    uint64_t u;  /* UINT8..UINT64, BOOL (0/1) */
    int64_t i;   /* INT8..INT64 */
    double f;    /* FLOAT32, FLOAT64 */
    ml_gguf_str str;
    struct {
      ml_gguf_vtype type; /* element type */
      uint64_t n;
      const void *raw;     /* scalar elements: packed little-endian in the file (maybe unaligned) */
      ml_gguf_str *strs;   /* STRING elements: n entries (owned by the ml_gguf) */
      ml_gguf_value *items;/* ARRAY elements: n nested arrays (owned by the ml_gguf) */
    } arr;
  } v;
};

typedef struct ml_gguf_kv {
  ml_gguf_str key;
  ml_gguf_value value;
} ml_gguf_kv;

#define ML_GGUF_MAX_DIMS 4
#define ML_GGUF_MAX_DEPTH 8          /* arrays nest at most this deep (reader and writer) */
#define ML_GGUF_DEFAULT_ALIGNMENT 32

typedef struct ml_gguf_tensor {
  ml_gguf_str name;
  int n_dims;
  int64_t ne[ML_GGUF_MAX_DIMS]; /* ne[0] is the contiguous (innermost) dimension; unused = 1 */
  ml_type type;
  uint64_t offset;   /* relative to the data section */
  size_t nbytes;
  const void *data;  /* base + data_offset + offset, inside the mapping */
} ml_gguf_tensor;

typedef struct ml_gguf {
  uint32_t version;
  uint64_t n_kv;
  ml_gguf_kv *kv;
  uint64_t n_tensors;
  ml_gguf_tensor *tensors;
  size_t alignment;     /* general.alignment or 32 */
  size_t data_offset;   /* file offset of the tensor data section */
  const uint8_t *base;  /* whole file */
  size_t size;
  /* private */
  int refcount;         /* atomic; ml_gguf_retain/ml_gguf_release */
  int mapped;           /* 1: base maps the file; 2: base is a private copy read into memory */
  void *arena;          /* allocations owned by this object */
} ml_gguf;

/* Open and validate. flags: ML_GGUF_NO_TENSORS skips tensor-data bounds checks beyond the
 * infos (vocab-only loads). Returns NULL and sets ml_errmsg on failure. refcount starts at 1. */
#define ML_GGUF_NO_TENSORS 1
#define ML_GGUF_READ 2 /* read the file into memory instead of mapping it (mapped = 2) */
ml_gguf *ml_gguf_open(const char *path, int flags);
/* Parse a buffer in place (not copied; must outlive the result). For fuzzing and tests. */
ml_gguf *ml_gguf_from_memory(const void *data, size_t size, int flags);
void ml_gguf_retain(ml_gguf *g);
void ml_gguf_release(ml_gguf *g); /* frees and unmaps at zero; NULL is fine */

/* Lookups: NULL / -1 when absent. Keys compare by bytes. */
const ml_gguf_kv *ml_gguf_find(const ml_gguf *g, const char *key);
int64_t ml_gguf_find_tensor(const ml_gguf *g, const char *name);

/* Typed getters with a default, converting between integer widths and float widths;
 * a value of the wrong kind (string for a number...) gives the default. */
int64_t ml_gguf_get_int(const ml_gguf *g, const char *key, int64_t def);
double ml_gguf_get_float(const ml_gguf *g, const char *key, double def);
int ml_gguf_get_bool(const ml_gguf *g, const char *key, int def);
/* NULL if absent or not a string. */
const ml_gguf_str *ml_gguf_get_str(const ml_gguf *g, const char *key);
/* Array element access for scalar arrays (any numeric element type). */
int64_t ml_gguf_arr_int(const ml_gguf_value *arr, uint64_t i);
double ml_gguf_arr_float(const ml_gguf_value *arr, uint64_t i);

/* Element i of a string array; NULL if out of range or not a string array. */
const ml_gguf_str *ml_gguf_arr_str(const ml_gguf_value *arr, uint64_t i);
/* Conversions: get_int takes any integer type (a uint64 above INT64_MAX gives def);
 * get_float takes floats and integers; get_bool takes bool and integers (nonzero = 1).
 * arr_int truncates float elements; arr_* give 0 for a bad index or a non-scalar array. */

const char *ml_gguf_vtype_name(ml_gguf_vtype t); /* "uint8" ... "float64", "?" */

/* ---- writer ---- */
typedef struct ml_gguf_writer ml_gguf_writer;

ml_gguf_writer *ml_gguf_writer_new(void);
void ml_gguf_writer_free(ml_gguf_writer *w);
/* Metadata. Keys and strings are copied. Adding a key twice replaces the value. */
int ml_gguf_set_u32(ml_gguf_writer *w, const char *key, uint32_t v);
int ml_gguf_set_i32(ml_gguf_writer *w, const char *key, int32_t v);
int ml_gguf_set_u64(ml_gguf_writer *w, const char *key, uint64_t v);
int ml_gguf_set_i64(ml_gguf_writer *w, const char *key, int64_t v);
int ml_gguf_set_f32(ml_gguf_writer *w, const char *key, float v);
int ml_gguf_set_f64(ml_gguf_writer *w, const char *key, double v);
int ml_gguf_set_bool(ml_gguf_writer *w, const char *key, int v);
int ml_gguf_set_str(ml_gguf_writer *w, const char *key, const char *s, size_t len);
/* Scalar array: `data` holds n packed elements of `type`. */
int ml_gguf_set_arr(ml_gguf_writer *w, const char *key, ml_gguf_vtype type, const void *data, uint64_t n);
int ml_gguf_set_arr_str(ml_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens, uint64_t n);
/* Copy a value read from another file (any type, nested arrays included). */
int ml_gguf_set_value(ml_gguf_writer *w, const char *key, const ml_gguf_value *v);
/* Drop a key (e.g. before re-writing a file). 1 if it was there, 0 if not. */
int ml_gguf_unset(ml_gguf_writer *w, const char *key);
/* Tensor: ne[0] innermost. `data` (nbytes = ml_type_nbytes(type, prod(ne))) is referenced,
 * not copied: it must stay valid until ml_gguf_writer_write returns. */
/* Writer checks, so that llama.cpp can read the result: tensor names are unique and at most
 * 63 bytes, 0..4 dims, each ne in [0, 2^62], ne[0] a multiple of the block size;
 * general.alignment must be a uint32 power of two. The writer never writes a partial file:
 * it writes PATH.tmp.<pid>.<n> next to PATH, fsyncs it and renames it over PATH. */
int ml_gguf_add_tensor(ml_gguf_writer *w, const char *name, ml_type type, int n_dims,
                       const int64_t *ne, const void *data);
/* Write GGUF v3, alignment 32 (or general.alignment if set as u32). Returns 0 or -1. */
int ml_gguf_writer_write(ml_gguf_writer *w, const char *path);

#endif
