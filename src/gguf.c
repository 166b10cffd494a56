/* gguf.c: GGUF v2/v3 reader and writer (the contract is in gguf.h).
 *
 * The reader maps the file and parses it in one forward pass. Strings, scalar arrays and
 * tensor data are pointers into the mapping; what has to be allocated (the kv and tensor
 * tables, string and nested-array tables, two hash indexes) comes from a bump arena owned by
 * the ml_gguf. Every count and length read from the file is checked against the bytes that
 * remain before anything is allocated for it, so allocation stays O(file size) whatever the
 * header claims, and a bad file gives an error message, never a crash.
 *
 * The writer keeps metadata already encoded as GGUF bytes and tensor data by reference,
 * then writes header, infos and aligned data to a temporary file renamed into place.
 */
#define _POSIX_C_SOURCE 200809L

#include "gguf.h"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c uses GGUF's little-endian values in place: it needs a little-endian host"
#endif

#define MAX_ALIGNMENT ((uint64_t)1 << 31) /* the largest power of two a u32 holds */
#define MAX_NE ((uint64_t)1 << 62)
#define MAX_ITEMS ((uint64_t)1 << 31)     /* kv and tensor counts: index slots are 32-bit */
#define MAX_TENSOR_NAME 63                /* llama.cpp rejects names of 64 bytes or more */
#define CHUNK_SIZE ((size_t)64 << 10)

/* Encoded size of one value of each type. For strings and arrays it is the minimum (u64
 * length; u32 element type + u64 count), which bounds a count before we allocate for it. */
static const uint8_t vsize[ML_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};

static const char *const vnames[ML_GGUF_VTYPE_COUNT] = {
  "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
  "bool", "string", "array", "uint64", "int64", "float64"};

const char *ml_gguf_vtype_name(ml_gguf_vtype t) {
  return (unsigned)t < ML_GGUF_VTYPE_COUNT ? vnames[t] : "?";
}

static int is_scalar(uint32_t t) {
  return t < ML_GGUF_VTYPE_COUNT && t != ML_GGUF_STRING && t != ML_GGUF_ARRAY;
}

/* Value of one little-endian scalar of type t at q. */
static void decode_scalar(ml_gguf_value *v, uint32_t t, const uint8_t *q) {
  uint16_t u16;
  uint32_t u32;
  uint64_t u64;
  float f;
  v->type = (ml_gguf_vtype)t;
  switch (t) {
  case ML_GGUF_UINT8: v->v.u = q[0]; break;
  case ML_GGUF_INT8: v->v.i = (int8_t)q[0]; break;
  case ML_GGUF_BOOL: v->v.u = q[0] != 0; break;
  case ML_GGUF_UINT16: memcpy(&u16, q, 2); v->v.u = u16; break;
  case ML_GGUF_INT16: memcpy(&u16, q, 2); v->v.i = (int16_t)u16; break;
  case ML_GGUF_UINT32: memcpy(&u32, q, 4); v->v.u = u32; break;
  case ML_GGUF_INT32: memcpy(&u32, q, 4); v->v.i = (int32_t)u32; break;
  case ML_GGUF_UINT64: memcpy(&u64, q, 8); v->v.u = u64; break;
  case ML_GGUF_INT64: memcpy(&u64, q, 8); v->v.i = (int64_t)u64; break;
  case ML_GGUF_FLOAT32: memcpy(&f, q, 4); v->v.f = f; break;
  case ML_GGUF_FLOAT64: memcpy(&v->v.f, q, 8); break;
  default: v->v.u = 0; break;
  }
}

/* ---- arena and string index ---- */

typedef struct chunk {
  struct chunk *next;
  size_t used, cap; /* cap bytes follow the header */
} chunk;

/* Open addressing; a slot holds entry index + 1, 0 when empty. */
typedef struct strindex {
  uint32_t *slot;
  size_t mask;
  uint64_t seed; /* per index, so a file cannot be crafted to make every name collide */
} strindex;

typedef struct gguf_priv {
  chunk *chunks;
  strindex keys, names;
  void *map; /* the mmap, when we own one */
  size_t map_size;
} gguf_priv;

/* One allocation for the public object and its private part; g must stay first. */
typedef struct gguf_box {
  ml_gguf g;
  gguf_priv p;
} gguf_box;

static void *arena_alloc(gguf_priv *a, size_t n) {
  chunk *c = a->chunks;
  void *p;
  n = (n + 7) & ~(size_t)7; /* 8 is enough for every struct we store */
  if (!c || c->cap - c->used < n) {
    size_t cap = n > CHUNK_SIZE / 4 ? n : CHUNK_SIZE;
    chunk *nc = ml_alloc(sizeof(chunk) + cap);
    if (!nc) return NULL;
    nc->used = 0;
    nc->cap = cap;
    if (c && cap == n) { /* a big block gets its own chunk; keep filling the current one */
      nc->next = c->next;
      c->next = nc;
    } else {
      nc->next = c;
      a->chunks = nc;
    }
    c = nc;
  }
  p = (char *)(c + 1) + c->used;
  c->used += n;
  return p;
}

/* n > 0 elements of sz bytes. Callers have bounded n by the file size already. */
static void *arena_array(gguf_priv *a, uint64_t n, size_t sz) {
  if (n > (ML_MAX_ALLOC - 8) / sz) {
    ml_seterr("out of memory (%llu x %zu bytes)", (unsigned long long)n, sz);
    return NULL;
  }
  return arena_alloc(a, (size_t)n * sz);
}

/* FNV-1a from a seed, then a final mix: FNV's low bits, which pick the slot, depend only
 * on the low bits of the input bytes until mixed. */
static uint64_t hash_bytes(uint64_t seed, const char *s, size_t n) {
  uint64_t h = 14695981039346656037u ^ seed;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211u;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdu;
  h ^= h >> 33;
  return h;
}

static int index_init(gguf_priv *a, strindex *ix, uint64_t n) {
  size_t cap = 8;
  while (cap < 2 * n) cap *= 2; /* load <= 1/2 */
  ix->slot = arena_array(a, cap, sizeof *ix->slot);
  if (!ix->slot) return -1;
  memset(ix->slot, 0, cap * sizeof *ix->slot);
  ix->mask = cap - 1;
  ix->seed = (uint64_t)(uintptr_t)ix->slot * 0x9e3779b97f4a7c15u; /* heap addresses vary */
  return 0;
}

/* Entries are ml_gguf_str fields `stride` bytes apart from `base`. Returns the slot that
 * holds s, or the empty slot where it belongs. */
static size_t index_slot(const strindex *ix, const char *base, size_t stride,
                         const char *s, size_t n) {
  size_t h = (size_t)hash_bytes(ix->seed, s, n) & ix->mask;
  for (;; h = (h + 1) & ix->mask) {
    uint32_t e = ix->slot[h];
    const ml_gguf_str *k;
    if (!e) return h;
    k = (const ml_gguf_str *)(const void *)(base + (size_t)(e - 1) * stride);
    if (k->len == n && memcmp(k->s, s, n) == 0) return h;
  }
}

/* ---- reader ---- */

typedef struct rd {
  const uint8_t *p;
  size_t size, pos;
  const char *path;        /* message prefix; NULL for a memory buffer */
  const char *stage;       /* what is being read, for messages */
  uint64_t i, n;           /* item i of n in that stage */
  const ml_gguf_str *key;  /* the key being read, for messages */
  gguf_priv *a;
} rd;

static int shown(const ml_gguf_str *s) { return s->len > 64 ? 64 : (int)s->len; }

static int fail(rd *r, const char *fmt, ...) ML_PRINTF(2, 3);
static int fail(rd *r, const char *fmt, ...) {
  char msg[320], ctx[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (r->key)
    snprintf(ctx, sizeof ctx, "reading %s %llu of %llu, '%.*s'", r->stage,
             (unsigned long long)r->i + 1, (unsigned long long)r->n, shown(r->key), r->key->s);
  else if (r->n)
    snprintf(ctx, sizeof ctx, "reading %s %llu of %llu", r->stage,
             (unsigned long long)r->i + 1, (unsigned long long)r->n);
  else /* the header: the offset says enough */
    ctx[0] = 0;
  ml_seterr("%s: %s%s%s%s", r->path ? r->path : "GGUF", msg, ctx[0] ? " (" : "", ctx,
            ctx[0] ? ")" : "");
  return -1;
}

/* A tensor's own error: its name leads the message. */
static int tfail(rd *r, const ml_gguf_tensor *t, const char *fmt, ...) ML_PRINTF(3, 4);
static int tfail(rd *r, const ml_gguf_tensor *t, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return fail(r, "tensor '%.*s': %s", shown(&t->name), t->name.s, msg);
}

static int need(rd *r, size_t n) {
  if (r->size - r->pos >= n) return 0;
  return fail(r, "truncated at offset %zu", r->pos);
}

static int get_u32(rd *r, uint32_t *v) {
  if (need(r, 4)) return -1;
  memcpy(v, r->p + r->pos, 4);
  r->pos += 4;
  return 0;
}

static int get_u64(rd *r, uint64_t *v) {
  if (need(r, 8)) return -1;
  memcpy(v, r->p + r->pos, 8);
  r->pos += 8;
  return 0;
}

static int get_str(rd *r, ml_gguf_str *s) {
  size_t at = r->pos;
  uint64_t len;
  if (get_u64(r, &len)) return -1;
  if (len > r->size - r->pos)
    return fail(r, "string length %llu at offset %zu exceeds file size",
                (unsigned long long)len, at);
  s->s = (const char *)(r->p + r->pos);
  s->len = len;
  r->pos += (size_t)len;
  return 0;
}

/* The array at the read position (element type, count, elements); `depth` is its
 * nesting level, 1 for a kv's own array. */
static int parse_array(rd *r, ml_gguf_value *out, int depth) {
  size_t at = r->pos;
  uint32_t et;
  uint64_t n, i;
  if (get_u32(r, &et)) return -1;
  if (et >= ML_GGUF_VTYPE_COUNT)
    return fail(r, "unknown array element type %u at offset %zu", et, at);
  if (et == ML_GGUF_ARRAY && depth >= ML_GGUF_MAX_DEPTH)
    return fail(r, "arrays nested more than %d deep at offset %zu", ML_GGUF_MAX_DEPTH, at);
  if (get_u64(r, &n)) return -1;
  if (n > (r->size - r->pos) / vsize[et])
    return fail(r, "array of %llu %s at offset %zu exceeds file size",
                (unsigned long long)n, vnames[et], at + 4);
  memset(out, 0, sizeof *out);
  out->type = ML_GGUF_ARRAY;
  out->v.arr.type = (ml_gguf_vtype)et;
  out->v.arr.n = n;
  if (is_scalar(et)) {
    out->v.arr.raw = r->p + r->pos;
    r->pos += (size_t)n * vsize[et];
    return 0;
  }
  if (n == 0) return 0;
  if (et == ML_GGUF_STRING) {
    ml_gguf_str *s = arena_array(r->a, n, sizeof *s); /* one block for the whole vocabulary */
    if (!s) return -1;
    out->v.arr.strs = s;
    for (i = 0; i < n; i++)
      if (get_str(r, &s[i])) return -1;
  } else {
    ml_gguf_value *items = arena_array(r->a, n, sizeof *items);
    if (!items) return -1;
    out->v.arr.items = items;
    for (i = 0; i < n; i++)
      if (parse_array(r, &items[i], depth + 1)) return -1;
  }
  return 0;
}

static int value_int(const ml_gguf_value *v, int64_t *out) {
  switch (v->type) {
  case ML_GGUF_UINT8: case ML_GGUF_UINT16: case ML_GGUF_UINT32: case ML_GGUF_UINT64:
    if (v->v.u > (uint64_t)INT64_MAX) return 0;
    *out = (int64_t)v->v.u;
    return 1;
  case ML_GGUF_INT8: case ML_GGUF_INT16: case ML_GGUF_INT32: case ML_GGUF_INT64:
    *out = v->v.i;
    return 1;
  default: return 0;
  }
}

static int parse_kv(ml_gguf *g, rd *r, uint64_t n_kv) {
  gguf_priv *a = r->a;
  r->stage = "key/value";
  r->n = n_kv;
  for (uint64_t i = 0; i < n_kv; i++) {
    ml_gguf_kv *kv = &g->kv[i];
    size_t s, at;
    uint32_t type;
    r->i = i;
    r->key = NULL;
    if (get_str(r, &kv->key)) return -1;
    r->key = &kv->key;
    s = index_slot(&a->keys, (const char *)&g->kv[0].key, sizeof *g->kv, kv->key.s,
                   (size_t)kv->key.len);
    if (a->keys.slot[s]) return fail(r, "duplicate key");
    a->keys.slot[s] = (uint32_t)i + 1;
    at = r->pos;
    if (get_u32(r, &type)) return -1;
    if (type >= ML_GGUF_VTYPE_COUNT)
      return fail(r, "unknown value type %u at offset %zu", type, at);
    if (type == ML_GGUF_ARRAY) {
      if (parse_array(r, &kv->value, 1)) return -1;
    } else if (type == ML_GGUF_STRING) {
      kv->value.type = ML_GGUF_STRING;
      if (get_str(r, &kv->value.v.str)) return -1;
    } else {
      if (need(r, vsize[type])) return -1;
      decode_scalar(&kv->value, type, r->p + r->pos);
      r->pos += vsize[type];
    }
  }
  r->key = NULL;
  g->n_kv = n_kv;
  return 0;
}

static int parse_alignment(ml_gguf *g, rd *r) {
  const ml_gguf_kv *kv = ml_gguf_find(g, "general.alignment");
  int64_t v;
  g->alignment = ML_GGUF_DEFAULT_ALIGNMENT;
  if (!kv) return 0;
  r->n = 0;
  if (!value_int(&kv->value, &v))
    return fail(r, "general.alignment is a %s, not an integer", vnames[kv->value.type]);
  if (v <= 0 || (uint64_t)v > MAX_ALIGNMENT || (v & (v - 1)) != 0)
    return fail(r, "general.alignment = %lld is not a power of two from 1 to 2^31",
                (long long)v);
  g->alignment = (size_t)v;
  return 0;
}

static int parse_tensor_info(ml_gguf *g, rd *r, ml_gguf_tensor *t, uint32_t i) {
  gguf_priv *a = r->a;
  const ml_type_traits *tr;
  uint32_t nd, type;
  uint64_t off, nblocks;
  int64_t nel = 1;
  size_t s;
  if (get_str(r, &t->name)) return -1;
  s = index_slot(&a->names, (const char *)&g->tensors[0].name, sizeof *g->tensors, t->name.s,
                 (size_t)t->name.len);
  if (a->names.slot[s]) return tfail(r, t, "duplicate tensor name");
  a->names.slot[s] = i + 1;
  if (get_u32(r, &nd)) return -1;
  if (nd > ML_GGUF_MAX_DIMS) return tfail(r, t, "%u dimensions (at most %d)", nd, ML_GGUF_MAX_DIMS);
  t->n_dims = (int)nd;
  for (int d = 0; d < ML_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < nd; d++) {
    uint64_t x;
    if (get_u64(r, &x)) return -1;
    if (x > MAX_NE) return tfail(r, t, "ne[%u] = %llu is too large", d, (unsigned long long)x);
    t->ne[d] = (int64_t)x;
    if (__builtin_mul_overflow(nel, t->ne[d], &nel))
      return tfail(r, t, "element count overflows");
  }
  if (get_u32(r, &type)) return -1;
  tr = type < ML_TYPE_COUNT ? ml_type_traits_get((int)type) : NULL;
  if (!tr) return tfail(r, t, "unknown type %u", type);
  if (t->ne[0] % tr->blck != 0)
    return tfail(r, t, "ne[0] = %lld is not a multiple of the %s block size %d",
                 (long long)t->ne[0], tr->name, tr->blck);
  if (get_u64(r, &off)) return -1;
  if (off % g->alignment != 0)
    return tfail(r, t, "offset %llu is not a multiple of the alignment %zu",
                 (unsigned long long)off, g->alignment);
  nblocks = (uint64_t)(nel / tr->blck);
  if (nblocks > SIZE_MAX / tr->size) return tfail(r, t, "byte size overflows");
  t->type = (ml_type)type;
  t->offset = off;
  t->nbytes = (size_t)nblocks * tr->size;
  t->data = NULL;
  return 0;
}


/* Tensors may not share bytes: a type or shape that does not match the data written (a
 * q4_0 tensor labelled q8_0 reads into its neighbour) shows as an overlap. */
static int cmp_offset(const void *a, const void *b) {
  const ml_gguf_tensor *x = *(ml_gguf_tensor *const *)a, *y = *(ml_gguf_tensor *const *)b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_overlaps(ml_gguf *g, rd *r) {
  if (g->n_tensors < 2) return 0;
  ml_gguf_tensor **by = ml_alloc(sizeof *by * (size_t)g->n_tensors);
  if (!by) return -1;
  for (uint64_t i = 0; i < g->n_tensors; i++) by[i] = &g->tensors[i];
  qsort(by, (size_t)g->n_tensors, sizeof *by, cmp_offset);
  for (uint64_t i = 0; i + 1 < g->n_tensors; i++) {
    const ml_gguf_tensor *a = by[i], *b = by[i + 1];
    if (a->nbytes > b->offset - a->offset) {
      r->i = (uint64_t)(a - g->tensors);
      ml_free(by);
      return tfail(r, a, "%zu bytes of %s at offset %llu run into tensor '%.*s' at offset %llu (a type or "
                   "shape that does not match the data)", a->nbytes, ml_type_traits_get(a->type)->name,
                   (unsigned long long)a->offset, (int)(b->name.len > 64 ? 64 : b->name.len), b->name.s,
                   (unsigned long long)b->offset);
    }
  }
  ml_free(by);
  return 0;
}

static int parse_tensors(ml_gguf *g, rd *r, uint64_t n_tensors, int flags) {
  uint64_t data_offset, avail;
  r->stage = "tensor info";
  r->n = n_tensors;
  for (uint64_t i = 0; i < n_tensors; i++) {
    r->i = i;
    if (parse_tensor_info(g, r, &g->tensors[i], (uint32_t)i)) return -1;
  }
  g->n_tensors = n_tensors;
  /* pos <= size and alignment <= 2^31: no overflow in 64 bits */
  data_offset = ((uint64_t)r->pos + g->alignment - 1) / g->alignment * g->alignment;
  g->data_offset = (size_t)data_offset;
  avail = data_offset <= r->size ? r->size - data_offset : 0;
  r->stage = "tensor data";
  for (uint64_t i = 0; i < n_tensors; i++) {
    ml_gguf_tensor *t = &g->tensors[i];
    r->i = i;
    if (data_offset <= r->size && t->offset <= avail && t->nbytes <= avail - t->offset)
      t->data = r->p + data_offset + t->offset;
    else if (!(flags & ML_GGUF_NO_TENSORS))
      return tfail(r, t, "%zu bytes at offset %llu lie past the end of the file (the data "
                   "section at %llu holds %llu bytes)", t->nbytes,
                   (unsigned long long)t->offset, (unsigned long long)data_offset,
                   (unsigned long long)avail);
  }
  return check_overlaps(g, r);
}

static int parse(ml_gguf *g, rd *r, int flags) {
  uint32_t ver, sw;
  uint64_t n_tensors, n_kv;
  size_t rem;
  const uint64_t min_kv = 8 + 4 + 1;     /* empty key, type, 1-byte value */
  const uint64_t min_ti = 8 + 4 + 4 + 8; /* empty name, n_dims 0, type, offset */
  r->stage = "header";
  if (r->size < 4 || memcmp(r->p, "GGUF", 4) != 0) {
    const char *why = r->size == 0 ? "empty" : r->size < 4 ? "too short" : "bad magic";
    if (r->path) ml_seterr("%s: not a GGUF file (%s)", r->path, why);
    else ml_seterr("not a GGUF file (%s)", why);
    return -1;
  }
  r->pos = 4;
  if (get_u32(r, &ver)) return -1;
  g->version = ver;
  if (ver != 2 && ver != 3) {
    sw = (ver >> 24) | ((ver >> 8) & 0xff00) | ((ver << 8) & 0xff0000) | (ver << 24);
    if (sw >= 1 && sw <= 3)
      return fail(r, "big-endian GGUF file (version %u with bytes swapped): only "
                  "little-endian files are supported", sw);
    return fail(r, "unsupported GGUF version %u (only 2 and 3 are supported)", ver);
  }
  if (get_u64(r, &n_tensors) || get_u64(r, &n_kv)) return -1;
  rem = r->size - r->pos;
  if (n_kv > rem / min_kv)
    return fail(r, "%llu key/value pairs cannot fit in the %zu bytes after offset %zu",
                (unsigned long long)n_kv, rem, r->pos);
  if (n_tensors > (rem - n_kv * min_kv) / min_ti)
    return fail(r, "%llu tensor infos cannot fit in the %zu bytes after offset %zu",
                (unsigned long long)n_tensors, rem, r->pos);
  if (n_kv >= MAX_ITEMS || n_tensors >= MAX_ITEMS)
    return fail(r, "too many entries (%llu key/value pairs, %llu tensors)",
                (unsigned long long)n_kv, (unsigned long long)n_tensors);
  if (n_kv && !(g->kv = arena_array(r->a, n_kv, sizeof *g->kv))) return -1;
  if (n_tensors && !(g->tensors = arena_array(r->a, n_tensors, sizeof *g->tensors))) return -1;
  if ((n_kv && index_init(r->a, &r->a->keys, n_kv)) ||
      (n_tensors && index_init(r->a, &r->a->names, n_tensors)))
    return -1;
  if (parse_kv(g, r, n_kv) || parse_alignment(g, r)) return -1;
  return parse_tensors(g, r, n_tensors, flags);
}

static ml_gguf *box_new(void) {
  gguf_box *b = ml_calloc(sizeof *b);
  if (!b) return NULL;
  b->g.refcount = 1;
  b->g.arena = &b->p;
  return &b->g;
}

ml_gguf *ml_gguf_from_memory(const void *data, size_t size, int flags) {
  ml_gguf *g;
  rd r;
  if (!data && size) {
    ml_seterr("GGUF: NULL buffer of %zu bytes", size);
    return NULL;
  }
  if (!(g = box_new())) return NULL;
  g->base = data;
  g->size = size;
  memset(&r, 0, sizeof r);
  r.p = data;
  r.size = size;
  r.a = g->arena;
  if (parse(g, &r, flags)) {
    ml_gguf_release(g);
    return NULL;
  }
  return g;
}

ml_gguf *ml_gguf_open(const char *path, int flags) {
  ml_gguf *g;
  gguf_priv *a;
  struct stat st;
  void *m;
  int fd;
  rd r;
  if (!path) {
    ml_seterr("GGUF: NULL path");
    return NULL;
  }
  if (!(g = box_new())) return NULL; /* first, so nothing below can leak */
  a = g->arena;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ml_seterr("cannot open '%s': %s", path, strerror(errno));
    goto fail;
  }
  if (fstat(fd, &st) != 0) {
    ml_seterr("cannot open '%s': %s", path, strerror(errno));
    close(fd);
    goto fail;
  }
  if (!S_ISREG(st.st_mode)) {
    ml_seterr("cannot open '%s': %s", path,
              S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
    close(fd);
    goto fail;
  }
  if ((uint64_t)st.st_size > SIZE_MAX) {
    ml_seterr("cannot open '%s': file too large to map", path);
    close(fd);
    goto fail;
  }
  if (st.st_size > 0 && (flags & ML_GGUF_READ)) { /* a private copy in memory, read now */
    size_t len = (size_t)st.st_size, got = 0;
    m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      ml_seterr("cannot allocate %zu bytes for '%s': %s", len, path, strerror(errno));
      close(fd);
      goto fail;
    }
    a->map = m;
    a->map_size = len;
    while (got < len) {
      ssize_t k = read(fd, (char *)m + got, len - got);
      if (k <= 0) {
        ml_seterr("cannot read '%s': %s", path, k < 0 ? strerror(errno) : "file shrank while reading");
        close(fd);
        goto fail;
      }
      got += (size_t)k;
    }
    g->mapped = 2;
    g->base = m;
    g->size = len;
  } else if (st.st_size > 0) { /* mmap refuses length 0; the parser reports the empty file */
    m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ml_seterr("cannot map '%s': %s", path, strerror(errno));
      close(fd);
      goto fail;
    }
    a->map = m;
    a->map_size = (size_t)st.st_size;
    g->mapped = 1;
    g->base = m;
    g->size = (size_t)st.st_size;
  }
  close(fd); /* the mapping keeps the file */
  memset(&r, 0, sizeof r);
  r.p = g->base;
  r.size = g->size;
  r.path = path;
  r.a = a;
  if (parse(g, &r, flags)) goto fail;
  return g;
fail:
  ml_gguf_release(g);
  return NULL;
}

void ml_gguf_retain(ml_gguf *g) {
  if (g) __atomic_add_fetch(&g->refcount, 1, __ATOMIC_RELAXED);
}

void ml_gguf_release(ml_gguf *g) {
  gguf_priv *a;
  chunk *c, *next;
  if (!g || __atomic_sub_fetch(&g->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  a = g->arena;
  for (c = a->chunks; c; c = next) {
    next = c->next;
    ml_free(c);
  }
  if (a->map) munmap(a->map, a->map_size);
  ml_free(g); /* g is the start of its gguf_box */
}

/* ---- lookups ---- */

const ml_gguf_kv *ml_gguf_find(const ml_gguf *g, const char *key) {
  const gguf_priv *a;
  uint32_t e;
  if (!g || !key || !g->n_kv) return NULL;
  a = g->arena;
  e = a->keys.slot[index_slot(&a->keys, (const char *)&g->kv[0].key, sizeof *g->kv, key,
                              strlen(key))];
  return e ? &g->kv[e - 1] : NULL;
}

int64_t ml_gguf_find_tensor(const ml_gguf *g, const char *name) {
  const gguf_priv *a;
  uint32_t e;
  if (!g || !name || !g->n_tensors) return -1;
  a = g->arena;
  e = a->names.slot[index_slot(&a->names, (const char *)&g->tensors[0].name,
                               sizeof *g->tensors, name, strlen(name))];
  return e ? (int64_t)e - 1 : -1;
}

int64_t ml_gguf_get_int(const ml_gguf *g, const char *key, int64_t def) {
  const ml_gguf_kv *kv = ml_gguf_find(g, key);
  int64_t v;
  return kv && value_int(&kv->value, &v) ? v : def;
}

double ml_gguf_get_float(const ml_gguf *g, const char *key, double def) {
  const ml_gguf_kv *kv = ml_gguf_find(g, key);
  int64_t v;
  if (!kv) return def;
  if (kv->value.type == ML_GGUF_FLOAT32 || kv->value.type == ML_GGUF_FLOAT64)
    return kv->value.v.f;
  if (kv->value.type == ML_GGUF_UINT64) return (double)kv->value.v.u;
  return value_int(&kv->value, &v) ? (double)v : def;
}

int ml_gguf_get_bool(const ml_gguf *g, const char *key, int def) {
  const ml_gguf_kv *kv = ml_gguf_find(g, key);
  int64_t v;
  if (!kv) return def;
  if (kv->value.type == ML_GGUF_BOOL) return kv->value.v.u != 0;
  return value_int(&kv->value, &v) ? v != 0 : def;
}

const ml_gguf_str *ml_gguf_get_str(const ml_gguf *g, const char *key) {
  const ml_gguf_kv *kv = ml_gguf_find(g, key);
  return kv && kv->value.type == ML_GGUF_STRING ? &kv->value.v.str : NULL;
}

/* Element i of a scalar array, decoded; 0 when there is none. */
static int arr_elem(const ml_gguf_value *arr, uint64_t i, ml_gguf_value *out) {
  uint32_t et;
  if (!arr || arr->type != ML_GGUF_ARRAY || i >= arr->v.arr.n || !arr->v.arr.raw) return 0;
  et = arr->v.arr.type;
  if (!is_scalar(et)) return 0;
  decode_scalar(out, et, (const uint8_t *)arr->v.arr.raw + i * vsize[et]);
  return 1;
}

int64_t ml_gguf_arr_int(const ml_gguf_value *arr, uint64_t i) {
  ml_gguf_value v;
  int64_t x;
  if (!arr_elem(arr, i, &v)) return 0;
  if (v.type == ML_GGUF_FLOAT32 || v.type == ML_GGUF_FLOAT64) /* truncate when in range */
    return v.v.f > -9.2233720368547758e18 && v.v.f < 9.2233720368547758e18 ? (int64_t)v.v.f : 0;
  if (v.type == ML_GGUF_BOOL) return (int64_t)v.v.u;
  return value_int(&v, &x) ? x : 0;
}

double ml_gguf_arr_float(const ml_gguf_value *arr, uint64_t i) {
  ml_gguf_value v;
  if (!arr_elem(arr, i, &v)) return 0;
  switch (v.type) {
  case ML_GGUF_FLOAT32: case ML_GGUF_FLOAT64: return v.v.f;
  case ML_GGUF_INT8: case ML_GGUF_INT16: case ML_GGUF_INT32: case ML_GGUF_INT64:
    return (double)v.v.i;
  default: return (double)v.v.u;
  }
}

const ml_gguf_str *ml_gguf_arr_str(const ml_gguf_value *arr, uint64_t i) {
  if (!arr || arr->type != ML_GGUF_ARRAY || arr->v.arr.type != ML_GGUF_STRING ||
      i >= arr->v.arr.n || !arr->v.arr.strs)
    return NULL;
  return &arr->v.arr.strs[i];
}

/* ---- writer ---- */

typedef struct wbuf {
  uint8_t *p;
  size_t n, cap;
} wbuf;

typedef struct wkv {
  char *key;
  ml_gguf_vtype type;
  wbuf val; /* the value as encoded in the file (without its type) */
} wkv;

typedef struct wtensor {
  char *name;
  ml_type type;
  int n_dims;
  int64_t ne[ML_GGUF_MAX_DIMS];
  size_t nbytes;
  const void *data; /* the caller's */
} wtensor;

struct ml_gguf_writer {
  wkv *kv;
  size_t n_kv, cap_kv;
  wtensor *t;
  size_t n_t, cap_t;
};

static int wb_reserve(wbuf *b, size_t more) {
  size_t cap;
  uint8_t *p;
  if (b->cap - b->n >= more) return 0;
  if (more > ML_MAX_ALLOC - b->n) {
    ml_seterr("GGUF writer: out of memory (%zu more bytes)", more);
    return -1;
  }
  cap = b->cap ? b->cap : 256;
  while (cap - b->n < more) cap = cap > ML_MAX_ALLOC / 2 ? ML_MAX_ALLOC : cap * 2;
  if (!(p = ml_alloc(cap))) return -1;
  if (b->n) memcpy(p, b->p, b->n);
  ml_free(b->p);
  b->p = p;
  b->cap = cap;
  return 0;
}

static int wb_put(wbuf *b, const void *src, size_t n) {
  if (wb_reserve(b, n)) return -1;
  if (n) memcpy(b->p + b->n, src, n);
  b->n += n;
  return 0;
}

static int wb_u32(wbuf *b, uint32_t v) { return wb_put(b, &v, 4); }
static int wb_u64(wbuf *b, uint64_t v) { return wb_put(b, &v, 8); }

static int wb_str(wbuf *b, const char *s, uint64_t len) {
  if (len && !s) {
    ml_seterr("GGUF writer: NULL string of length %llu", (unsigned long long)len);
    return -1;
  }
  if (len > SIZE_MAX) {
    ml_seterr("GGUF writer: string too long");
    return -1;
  }
  return wb_u64(b, len) || wb_put(b, s, (size_t)len) ? -1 : 0;
}

/* v's encoding without its type; `depth` is v's nesting level if v is an array. */
static int enc_value(wbuf *b, const ml_gguf_value *v, int depth) {
  union { uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64; float f32; double f64; } x;
  uint32_t et;
  uint64_t n;
  switch (v->type) {
  case ML_GGUF_UINT8: case ML_GGUF_INT8: x.u8 = (uint8_t)v->v.u; return wb_put(b, &x, 1);
  case ML_GGUF_BOOL: x.u8 = v->v.u != 0; return wb_put(b, &x, 1);
  case ML_GGUF_UINT16: case ML_GGUF_INT16: x.u16 = (uint16_t)v->v.u; return wb_put(b, &x, 2);
  case ML_GGUF_UINT32: case ML_GGUF_INT32: x.u32 = (uint32_t)v->v.u; return wb_put(b, &x, 4);
  case ML_GGUF_UINT64: case ML_GGUF_INT64: return wb_u64(b, v->v.u);
  case ML_GGUF_FLOAT32: x.f32 = (float)v->v.f; return wb_put(b, &x, 4);
  case ML_GGUF_FLOAT64: x.f64 = v->v.f; return wb_put(b, &x, 8);
  case ML_GGUF_STRING: return wb_str(b, v->v.str.s, v->v.str.len);
  case ML_GGUF_ARRAY: break;
  default:
    ml_seterr("GGUF writer: unknown value type %d", (int)v->type);
    return -1;
  }
  et = v->v.arr.type;
  n = v->v.arr.n;
  if (depth > ML_GGUF_MAX_DEPTH) {
    ml_seterr("GGUF writer: arrays nested more than %d deep", ML_GGUF_MAX_DEPTH);
    return -1;
  }
  if (et >= ML_GGUF_VTYPE_COUNT) {
    ml_seterr("GGUF writer: unknown array element type %u", et);
    return -1;
  }
  if (wb_u32(b, et) || wb_u64(b, n)) return -1;
  if (is_scalar(et)) {
    if (n > SIZE_MAX / vsize[et] || (n && !v->v.arr.raw)) {
      ml_seterr("GGUF writer: bad array of %llu %s", (unsigned long long)n, vnames[et]);
      return -1;
    }
    return wb_put(b, v->v.arr.raw, (size_t)n * vsize[et]);
  }
  if (n && !(et == ML_GGUF_STRING ? (const void *)v->v.arr.strs : (const void *)v->v.arr.items)) {
    ml_seterr("GGUF writer: array of %llu %s has no elements", (unsigned long long)n, vnames[et]);
    return -1;
  }
  for (uint64_t i = 0; i < n; i++) {
    if (et == ML_GGUF_STRING) {
      if (wb_str(b, v->v.arr.strs[i].s, v->v.arr.strs[i].len)) return -1;
    } else if (v->v.arr.items[i].type != ML_GGUF_ARRAY) {
      ml_seterr("GGUF writer: item %llu of an array of arrays is a %s",
                (unsigned long long)i, ml_gguf_vtype_name(v->v.arr.items[i].type));
      return -1;
    } else if (enc_value(b, &v->v.arr.items[i], depth + 1)) {
      return -1;
    }
  }
  return 0;
}

/* Room for one more of n elements of sz bytes in *p. */
static void *grow(void *p, size_t n, size_t *cap, size_t sz) {
  size_t nc;
  void *q;
  if (n < *cap) return p;
  nc = *cap ? *cap * 2 : 16;
  if (nc > ML_MAX_ALLOC / sz) {
    ml_seterr("GGUF writer: out of memory");
    return NULL;
  }
  if (!(q = ml_alloc(nc * sz))) return NULL;
  if (n) memcpy(q, p, n * sz);
  ml_free(p);
  *cap = nc;
  return q;
}

ml_gguf_writer *ml_gguf_writer_new(void) { return ml_calloc(sizeof(ml_gguf_writer)); }

void ml_gguf_writer_free(ml_gguf_writer *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n_kv; i++) {
    ml_free(w->kv[i].key);
    ml_free(w->kv[i].val.p);
  }
  for (size_t i = 0; i < w->n_t; i++) ml_free(w->t[i].name);
  ml_free(w->kv);
  ml_free(w->t);
  ml_free(w);
}

static int64_t find_wkv(const ml_gguf_writer *w, const char *key) {
  for (size_t i = 0; i < w->n_kv; i++)
    if (strcmp(w->kv[i].key, key) == 0) return (int64_t)i;
  return -1;
}

/* Store an encoded value under key; takes b's memory in every case. */
static int put_kv(ml_gguf_writer *w, const char *key, ml_gguf_vtype type, wbuf *b) {
  size_t klen = strlen(key);
  int64_t i;
  wkv *kv;
  char *k;
  if (strcmp(key, "general.alignment") == 0) { /* llama.cpp reads it as a u32 only */
    uint32_t al = 0;
    if (type == ML_GGUF_UINT32) memcpy(&al, b->p, 4);
    if (al == 0 || (al & (al - 1)) != 0) {
      ml_free(b->p);
      ml_seterr("GGUF writer: general.alignment must be a uint32 power of two");
      return -1;
    }
  }
  if ((i = find_wkv(w, key)) >= 0) {
    ml_free(w->kv[i].val.p);
    w->kv[i].type = type;
    w->kv[i].val = *b;
    return 0;
  }
  if (!(k = ml_alloc(klen + 1)) || !(kv = grow(w->kv, w->n_kv, &w->cap_kv, sizeof *kv))) {
    ml_free(k);
    ml_free(b->p);
    return -1;
  }
  memcpy(k, key, klen + 1);
  w->kv = kv;
  kv[w->n_kv].key = k;
  kv[w->n_kv].type = type;
  kv[w->n_kv].val = *b;
  w->n_kv++;
  return 0;
}

int ml_gguf_set_value(ml_gguf_writer *w, const char *key, const ml_gguf_value *v) {
  wbuf b = {NULL, 0, 0};
  if (!w || !key || !v) {
    ml_seterr("GGUF writer: NULL argument");
    return -1;
  }
  if (enc_value(&b, v, 1)) {
    ml_free(b.p);
    return -1;
  }
  return put_kv(w, key, v->type, &b);
}

static int set_u(ml_gguf_writer *w, const char *key, ml_gguf_vtype t, uint64_t u) {
  ml_gguf_value v;
  v.type = t;
  v.v.u = u;
  return ml_gguf_set_value(w, key, &v);
}

static int set_f(ml_gguf_writer *w, const char *key, ml_gguf_vtype t, double f) {
  ml_gguf_value v;
  v.type = t;
  v.v.f = f;
  return ml_gguf_set_value(w, key, &v);
}

/* Signed values go through u: enc_value keeps the low bytes, which is two's complement. */
int ml_gguf_set_u32(ml_gguf_writer *w, const char *key, uint32_t v) { return set_u(w, key, ML_GGUF_UINT32, v); }
int ml_gguf_set_i32(ml_gguf_writer *w, const char *key, int32_t v) { return set_u(w, key, ML_GGUF_INT32, (uint64_t)(int64_t)v); }
int ml_gguf_set_u64(ml_gguf_writer *w, const char *key, uint64_t v) { return set_u(w, key, ML_GGUF_UINT64, v); }
int ml_gguf_set_i64(ml_gguf_writer *w, const char *key, int64_t v) { return set_u(w, key, ML_GGUF_INT64, (uint64_t)v); }
int ml_gguf_set_f32(ml_gguf_writer *w, const char *key, float v) { return set_f(w, key, ML_GGUF_FLOAT32, v); }
int ml_gguf_set_f64(ml_gguf_writer *w, const char *key, double v) { return set_f(w, key, ML_GGUF_FLOAT64, v); }
int ml_gguf_set_bool(ml_gguf_writer *w, const char *key, int v) { return set_u(w, key, ML_GGUF_BOOL, v != 0); }

int ml_gguf_set_str(ml_gguf_writer *w, const char *key, const char *s, size_t len) {
  ml_gguf_value v;
  v.type = ML_GGUF_STRING;
  v.v.str.s = s;
  v.v.str.len = len;
  return ml_gguf_set_value(w, key, &v);
}

int ml_gguf_set_arr(ml_gguf_writer *w, const char *key, ml_gguf_vtype type, const void *data,
                    uint64_t n) {
  ml_gguf_value v;
  if (!is_scalar(type)) {
    ml_seterr("GGUF writer: ml_gguf_set_arr takes scalar elements, not %s",
              ml_gguf_vtype_name(type));
    return -1;
  }
  memset(&v, 0, sizeof v);
  v.type = ML_GGUF_ARRAY;
  v.v.arr.type = type;
  v.v.arr.n = n;
  v.v.arr.raw = data;
  return ml_gguf_set_value(w, key, &v);
}

int ml_gguf_set_arr_str(ml_gguf_writer *w, const char *key, const char *const *strs,
                        const size_t *lens, uint64_t n) {
  wbuf b = {NULL, 0, 0};
  if (!w || !key || (n && !strs)) {
    ml_seterr("GGUF writer: NULL argument");
    return -1;
  }
  if (wb_u32(&b, ML_GGUF_STRING) || wb_u64(&b, n)) goto fail;
  for (uint64_t i = 0; i < n; i++) {
    const char *s = strs[i];
    if (wb_str(&b, s, lens ? lens[i] : s ? strlen(s) : 0)) goto fail;
  }
  return put_kv(w, key, ML_GGUF_ARRAY, &b);
fail:
  ml_free(b.p);
  return -1;
}

int ml_gguf_unset(ml_gguf_writer *w, const char *key) {
  int64_t i;
  if (!w || !key || (i = find_wkv(w, key)) < 0) return 0;
  ml_free(w->kv[i].key);
  ml_free(w->kv[i].val.p);
  memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - (size_t)i - 1) * sizeof *w->kv);
  w->n_kv--;
  return 1;
}

int ml_gguf_add_tensor(ml_gguf_writer *w, const char *name, ml_type type, int n_dims,
                       const int64_t *ne, const void *data) {
  const ml_type_traits *tr = ml_type_traits_get((int)type);
  wtensor *t;
  size_t len;
  int64_t nel = 1;
  if (!w || !name || (n_dims > 0 && !ne)) {
    ml_seterr("GGUF writer: NULL argument");
    return -1;
  }
  if ((len = strlen(name)) > MAX_TENSOR_NAME) {
    ml_seterr("GGUF writer: tensor name '%.64s...' is %zu bytes (at most %d)", name, len,
              MAX_TENSOR_NAME);
    return -1;
  }
  for (size_t i = 0; i < w->n_t; i++)
    if (strcmp(w->t[i].name, name) == 0) {
      ml_seterr("GGUF writer: duplicate tensor name '%s'", name);
      return -1;
    }
  if (!tr) {
    ml_seterr("GGUF writer: tensor '%s': unknown type %d", name, (int)type);
    return -1;
  }
  if (n_dims < 0 || n_dims > ML_GGUF_MAX_DIMS) {
    ml_seterr("GGUF writer: tensor '%s': %d dimensions (0 to %d)", name, n_dims,
              ML_GGUF_MAX_DIMS);
    return -1;
  }
  for (int d = 0; d < n_dims; d++)
    if (ne[d] < 0 || (uint64_t)ne[d] > MAX_NE || __builtin_mul_overflow(nel, ne[d], &nel)) {
      ml_seterr("GGUF writer: tensor '%s': bad ne[%d] = %lld", name, d, (long long)ne[d]);
      return -1;
    }
  if (ne[0] % tr->blck != 0) {
    ml_seterr("GGUF writer: tensor '%s': ne[0] = %lld is not a multiple of the %s block size %d",
              name, (long long)ne[0], tr->name, tr->blck);
    return -1;
  }
  if ((uint64_t)(nel / tr->blck) > SIZE_MAX / tr->size || (nel > 0 && !data)) {
    ml_seterr("GGUF writer: tensor '%s': %s", name, data ? "too large" : "NULL data");
    return -1;
  }
  if (!(t = grow(w->t, w->n_t, &w->cap_t, sizeof *t))) return -1;
  w->t = t;
  t += w->n_t;
  if (!(t->name = ml_alloc(len + 1))) return -1;
  memcpy(t->name, name, len + 1);
  t->type = type;
  t->n_dims = n_dims;
  for (int d = 0; d < ML_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
  t->nbytes = (size_t)(nel / tr->blck) * tr->size;
  t->data = data;
  w->n_t++;
  return 0;
}

static uint64_t pad_to(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

/* Header, kv, tensor infos and the padding up to the data section. */
static int build_header(const ml_gguf_writer *w, wbuf *h, uint64_t align) {
  uint64_t off = 0;
  if (wb_put(h, "GGUF", 4) || wb_u32(h, 3) || wb_u64(h, w->n_t) || wb_u64(h, w->n_kv))
    return -1;
  for (size_t i = 0; i < w->n_kv; i++) {
    const wkv *kv = &w->kv[i];
    if (wb_str(h, kv->key, strlen(kv->key)) || wb_u32(h, kv->type) ||
        wb_put(h, kv->val.p, kv->val.n))
      return -1;
  }
  for (size_t i = 0; i < w->n_t; i++) {
    const wtensor *t = &w->t[i];
    if (wb_str(h, t->name, strlen(t->name)) || wb_u32(h, (uint32_t)t->n_dims)) return -1;
    for (int d = 0; d < t->n_dims; d++)
      if (wb_u64(h, (uint64_t)t->ne[d])) return -1;
    if (wb_u32(h, (uint32_t)t->type) || wb_u64(h, off)) return -1;
    if (off > UINT64_MAX - align || t->nbytes > UINT64_MAX - align - off) {
      ml_seterr("GGUF writer: tensor data too large");
      return -1;
    }
    off = pad_to(off + t->nbytes, align);
  }
  off = pad_to(h->n, align) - h->n;
  if (wb_reserve(h, (size_t)off)) return -1;
  memset(h->p + h->n, 0, (size_t)off);
  h->n += (size_t)off;
  return 0;
}

static int write_all(int fd, const void *p, size_t n) {
  const uint8_t *q = p;
  while (n) {
    ssize_t k = write(fd, q, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    q += k;
    n -= (size_t)k;
  }
  return 0;
}

static int write_zeros(int fd, size_t n) {
  static const uint8_t zeros[4096];
  while (n) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;
    if (write_all(fd, zeros, k)) return -1;
    n -= k;
  }
  return 0;
}

int ml_gguf_writer_write(ml_gguf_writer *w, const char *path) {
  static unsigned serial; /* temp names: pid + serial, O_EXCL settles any clash */
  wbuf h = {NULL, 0, 0};
  uint64_t align = ML_GGUF_DEFAULT_ALIGNMENT;
  size_t plen;
  char *tmp = NULL;
  int64_t ai;
  int fd = -1, created = 0, err;
  if (!w || !path) {
    ml_seterr("GGUF writer: NULL argument");
    return -1;
  }
  if ((ai = find_wkv(w, "general.alignment")) >= 0) { /* put_kv checked it is a u32 */
    uint32_t al;
    memcpy(&al, w->kv[ai].val.p, 4);
    align = al;
  }
  if (build_header(w, &h, align)) goto fail;
  plen = strlen(path);
  if (!(tmp = ml_alloc(plen + 48))) goto fail;
  for (int tries = 0; fd < 0 && tries < 100; tries++) {
    snprintf(tmp, plen + 48, "%s.tmp.%ld.%u", path, (long)getpid(),
             __atomic_fetch_add(&serial, 1, __ATOMIC_RELAXED));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) goto io_fail;
  created = 1;
  if (write_all(fd, h.p, h.n)) goto io_fail;
  for (size_t i = 0; i < w->n_t; i++) {
    const wtensor *t = &w->t[i];
    if (write_all(fd, t->data, t->nbytes) ||
        write_zeros(fd, (size_t)(pad_to(t->nbytes, align) - t->nbytes)))
      goto io_fail;
  }
  if (fsync(fd) != 0) goto io_fail; /* the data is on disk before the name points at it */
  err = close(fd);
  fd = -1;
  if (err != 0 || rename(tmp, path) != 0) goto io_fail;
  ml_free(tmp);
  ml_free(h.p);
  return 0;
io_fail:
  err = errno;
  ml_seterr("cannot write '%s': %s", path, strerror(err));
  if (fd >= 0) close(fd);
  if (created) unlink(tmp);
fail:
  ml_free(tmp);
  ml_free(h.p);
  return -1;
}
