/* fuzz/gguf.c: libFuzzer harness for the GGUF reader (and the writer's value copy).
 *
 * Parses the input with and without ML_GGUF_NO_TENSORS, then touches everything the reader
 * hands out: every key, string and array element (nested arrays included), every tensor's
 * first and last byte, and every lookup; then copies each value and tensor into a writer, as
 * a re-write would. ASan catches a pointer outside the input; the checks below catch a
 * result that contradicts itself.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/gguf.c src/gguf.c \
 *          src/error.c src/dtype.c src/quant.c -o fuzz_gguf
 * Run:   mkdir -p /tmp/gguf-corpus && ./fuzz_gguf -rss_limit_mb=2048 -malloc_limit_mb=512 \
 *          -max_len=16384 -max_total_time=600 /tmp/gguf-corpus fuzz/seeds/gguf ../shared/tokenizer
 * (new inputs go to the first directory, so that one is scratch, never the seeds)
 */
#include "gguf.h"
#include "common.h"

#include <string.h>

static volatile unsigned sink; /* keeps the reads */

#define EXPECT(c) do { if (!(c)) __builtin_trap(); } while (0)

static void touch(const void *p, uint64_t n) {
  if (n) sink += ((const uint8_t *)p)[0] + ((const uint8_t *)p)[n - 1];
}

static void fsink(double d) { /* bits, not a conversion: any double is fine */
  uint64_t b;
  memcpy(&b, &d, sizeof b);
  sink += (unsigned)b;
}

static void walk(const ml_gguf_value *v, int depth) {
  EXPECT(depth <= ML_GGUF_MAX_DEPTH);
  if (v->type == ML_GGUF_STRING) touch(v->v.str.s, v->v.str.len);
  if (v->type != ML_GGUF_ARRAY) return;
  EXPECT((unsigned)v->v.arr.type < ML_GGUF_VTYPE_COUNT);
  if (v->v.arr.type == ML_GGUF_STRING) {
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
      touch(v->v.arr.strs[i].s, v->v.arr.strs[i].len);
      EXPECT(ml_gguf_arr_str(v, i) == &v->v.arr.strs[i]);
    }
    EXPECT(ml_gguf_arr_str(v, v->v.arr.n) == NULL);
  } else if (v->v.arr.type == ML_GGUF_ARRAY) {
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
      EXPECT(v->v.arr.items[i].type == ML_GGUF_ARRAY);
      walk(&v->v.arr.items[i], depth + 1);
    }
  } else if (v->v.arr.n) {
    uint64_t last = v->v.arr.n - 1;
    sink += (unsigned)ml_gguf_arr_int(v, 0) + (unsigned)ml_gguf_arr_int(v, last);
    fsink(ml_gguf_arr_float(v, last));
    EXPECT(ml_gguf_arr_int(v, v->v.arr.n) == 0);
  }
}

/* A NUL-terminated copy of s, or 0 if it does not fit or holds a NUL. */
static int cstr(char *buf, size_t size, const ml_gguf_str *s) {
  if (s->len >= size || memchr(s->s, 0, (size_t)s->len)) return 0;
  memcpy(buf, s->s, (size_t)s->len);
  buf[s->len] = 0;
  return 1;
}

static void check(const ml_gguf *g, const uint8_t *data, size_t size) {
  ml_gguf_writer *w = ml_gguf_writer_new();
  char name[256];
  EXPECT(g->base == data && g->size == size);
  EXPECT(g->alignment && (g->alignment & (g->alignment - 1)) == 0);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    const ml_gguf_kv *kv = &g->kv[i];
    touch(kv->key.s, kv->key.len);
    EXPECT((unsigned)kv->value.type < ML_GGUF_VTYPE_COUNT);
    walk(&kv->value, 1);
    if (cstr(name, sizeof name, &kv->key)) {
      EXPECT(ml_gguf_find(g, name) == kv); /* keys are unique */
      sink += (unsigned)ml_gguf_get_int(g, name, 0) + (unsigned)ml_gguf_get_bool(g, name, 0);
      fsink(ml_gguf_get_float(g, name, 0));
      EXPECT(!ml_gguf_get_str(g, name) == (kv->value.type != ML_GGUF_STRING));
      if (w) ml_gguf_set_value(w, name, &kv->value); /* may refuse, e.g. a bad alignment type */
    }
  }
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ml_gguf_tensor *t = &g->tensors[i];
    const ml_type_traits *tr = ml_type_traits_get(t->type);
    touch(t->name.s, t->name.len);
    EXPECT(tr && t->n_dims >= 0 && t->n_dims <= ML_GGUF_MAX_DIMS);
    EXPECT(t->offset % g->alignment == 0);
    for (int d = 0; d < ML_GGUF_MAX_DIMS; d++) EXPECT(t->ne[d] >= 0);
    if (t->data) {
      EXPECT((const uint8_t *)t->data >= data && t->nbytes <= size &&
             (size_t)((const uint8_t *)t->data - data) <= size - t->nbytes);
      touch(t->data, t->nbytes);
    }
    if (cstr(name, sizeof name, &t->name)) {
      EXPECT(ml_gguf_find_tensor(g, name) == (int64_t)i);
      if (w) ml_gguf_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data);
    }
  }
  ml_gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int flags = 0; flags <= ML_GGUF_NO_TENSORS; flags += ML_GGUF_NO_TENSORS) {
    ml_gguf *g = ml_gguf_from_memory(data, size, flags);
    if (!g) continue;
    check(g, data, size);
    ml_gguf_retain(g);
    ml_gguf_release(g);
    ml_gguf_release(g);
  }
  return 0;
}
