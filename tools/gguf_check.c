/* gguf_check.c: dump GGUF files with moonlm's reader, and self-test the reader and writer.
 *
 *   gguf_check FILE...          version, counts, every key (type, short value), every tensor;
 *                               exits 1 with the reader's message on the first bad file
 *   gguf_check --json FILE      the same in full as JSON, in the shape of
 *                               `gguf_meta.py --json --full-arrays --tensors`, for comparing
 *   gguf_check --selftest DIR   writer/reader round trips, every truncation, hostile headers,
 *                               the 150k-token vocabulary timing; scratch files go in DIR
 *   gguf_check --seeds DIR      write the small fuzzing seed files into DIR
 *   gguf_check --rewrite IN OUT copy every key and tensor of IN through the writer to OUT
 *                               (a file written by llama.cpp comes out byte for byte the same)
 */
#define _POSIX_C_SOURCE 200809L

#include "gguf.h"
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- dump ---- */

static void put_str(FILE *f, const char *s, uint64_t len, uint64_t max) {
  fputc('"', f);
  for (uint64_t i = 0; i < len && i < max; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
  if (len > max) fprintf(f, "... (%llu bytes)", (unsigned long long)len);
}

static int json_mode; /* floats in full (%.17g round-trips a double) rather than short */

static void put_double(FILE *f, double d, int is_f32) {
  if (isnan(d)) fputs("NaN", f);
  else if (isinf(d)) fputs(d > 0 ? "Infinity" : "-Infinity", f);
  else fprintf(f, json_mode ? "%.17g" : is_f32 ? "%.9g" : "%.17g", d);
}

static void put_scalar(FILE *f, const ml_gguf_value *v) {
  switch (v->type) {
  case ML_GGUF_BOOL: fputs(v->v.u ? "true" : "false", f); break;
  case ML_GGUF_FLOAT32: case ML_GGUF_FLOAT64: put_double(f, v->v.f, v->type == ML_GGUF_FLOAT32); break;
  case ML_GGUF_INT8: case ML_GGUF_INT16: case ML_GGUF_INT32: case ML_GGUF_INT64:
    fprintf(f, "%lld", (long long)v->v.i);
    break;
  default: fprintf(f, "%llu", (unsigned long long)v->v.u); break;
  }
}

static void upper(char *dst, const char *src) {
  while ((*dst++ = (char)(*src >= 'a' && *src <= 'z' ? *src - 32 : *src))) src++;
}

/* A value; arrays show at most `max` items (and strings `max` * 8 bytes) unless max is 0. */
static void put_value(FILE *f, const ml_gguf_value *v, uint64_t max, int json) {
  char tn[16];
  uint64_t n, shown;
  if (v->type == ML_GGUF_STRING) {
    put_str(f, v->v.str.s, v->v.str.len, max ? max * 8 : UINT64_MAX);
    return;
  }
  if (v->type != ML_GGUF_ARRAY) {
    put_scalar(f, v);
    return;
  }
  n = v->v.arr.n;
  shown = max && n > max ? max : n;
  upper(tn, ml_gguf_vtype_name(v->v.arr.type));
  if (json) fprintf(f, "{\"array_of\": \"%s\", \"items\": [", tn);
  else fprintf(f, "[%s x %llu] [", tn, (unsigned long long)n);
  for (uint64_t i = 0; i < shown; i++) {
    ml_gguf_value e;
    if (i) fputs(", ", f);
    if (v->v.arr.type == ML_GGUF_STRING) {
      put_str(f, v->v.arr.strs[i].s, v->v.arr.strs[i].len, max ? max * 8 : UINT64_MAX);
    } else if (v->v.arr.type == ML_GGUF_ARRAY) {
      put_value(f, &v->v.arr.items[i], max, json);
    } else {
      /* decode through the public accessors, as a user would */
      e.type = v->v.arr.type;
      if (e.type == ML_GGUF_FLOAT32 || e.type == ML_GGUF_FLOAT64) e.v.f = ml_gguf_arr_float(v, i);
      else if (e.type == ML_GGUF_UINT64) memcpy(&e.v.u, (const char *)v->v.arr.raw + 8 * i, 8);
      else e.v.i = ml_gguf_arr_int(v, i);
      put_scalar(f, &e);
    }
  }
  fputs(shown < n ? ", ...]" : "]", f);
  if (json) fputc('}', f);
}

static void dump_text(const char *path, const ml_gguf *g) {
  printf("%s: GGUF v%u, %llu keys, %llu tensors, alignment %zu, data at %zu, %zu bytes\n",
         path, g->version, (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors,
         g->alignment, g->data_offset, g->size);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    const ml_gguf_kv *kv = &g->kv[i];
    printf("  %-44.*s %-8s ", (int)kv->key.len, kv->key.s, ml_gguf_vtype_name(kv->value.type));
    put_value(stdout, &kv->value, 8, 0);
    putchar('\n');
  }
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ml_gguf_tensor *t = &g->tensors[i];
    const ml_type_traits *tr = ml_type_traits_get(t->type);
    char shape[96];
    int k = 0;
    for (int d = 0; d < t->n_dims; d++)
      k += snprintf(shape + k, sizeof shape - (size_t)k, d ? "x%lld" : "%lld", (long long)t->ne[d]);
    if (!t->n_dims) snprintf(shape, sizeof shape, "scalar");
    printf("  tensor %-40.*s %-5s %-20s offset %llu (%zu bytes)\n", (int)t->name.len, t->name.s,
           tr ? tr->name : "?", shape, (unsigned long long)t->offset, t->nbytes);
  }
}

static void dump_json(const ml_gguf *g) {
  char tn[16];
  printf("{\"version\": %u, \"n_tensors\": %llu, \"n_kv\": %llu, \"alignment\": %zu, "
         "\"data_start\": %zu,\n \"kv\": {", g->version, (unsigned long long)g->n_tensors,
         (unsigned long long)g->n_kv, g->alignment, g->data_offset);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    printf(i ? ",\n  " : "\n  ");
    put_str(stdout, g->kv[i].key.s, g->kv[i].key.len, UINT64_MAX);
    fputs(": ", stdout);
    put_value(stdout, &g->kv[i].value, 0, 1);
  }
  fputs("},\n \"types\": {", stdout);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    printf(i ? ", " : "");
    put_str(stdout, g->kv[i].key.s, g->kv[i].key.len, UINT64_MAX);
    upper(tn, ml_gguf_vtype_name(g->kv[i].value.type));
    printf(": \"%s\"", tn);
  }
  fputs("},\n \"tensors\": [", stdout);
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ml_gguf_tensor *t = &g->tensors[i];
    printf(i ? ",\n  {\"name\": " : "\n  {\"name\": ");
    put_str(stdout, t->name.s, t->name.len, UINT64_MAX);
    fputs(", \"dims\": [", stdout);
    for (int d = 0; d < t->n_dims; d++) printf(d ? ", %lld" : "%lld", (long long)t->ne[d]);
    printf("], \"type\": %d, \"offset\": %llu, \"nbytes\": %zu}", (int)t->type,
           (unsigned long long)t->offset, t->nbytes);
  }
  fputs("]}\n", stdout);
}

/* ---- self-test ---- */

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)
#define CHECK_MSG(c, m) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #c, m); failures++; } } while (0)

static char *join(const char *dir, const char *name) {
  static char buf[4][1024];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

static uint8_t *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  uint8_t *p;
  long len;
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  fseek(f, 0, SEEK_SET);
  p = malloc(len > 0 ? (size_t)len : 1);
  *n = fread(p, 1, (size_t)len, f);
  fclose(f);
  return p;
}

static int key_is(const ml_gguf_str *s, const char *c) {
  return s->len == strlen(c) && memcmp(s->s, c, s->len) == 0;
}

/* Tensor payloads: deterministic bytes. */
static uint8_t payload[4096];

static const char *const words[] = {"", "a", "hello", "caf\xc3\xa9", "\xe2\x96\x81the", "x y"};

/* A file with every value type, nested arrays and tensors of several types. */
static int write_all_types(const char *path, int with_tensors) {
  ml_gguf_writer *w = ml_gguf_writer_new();
  ml_gguf_value v, inner[3], mid[2], sarr[2];
  ml_gguf_str strs[3] = {{"one", 3}, {"t\0o", 3}, {"", 0}};
  static const uint8_t u8s[] = {0, 1, 255};
  static const int8_t i8s[] = {-128, 0, 127};
  static const uint16_t u16s[] = {0, 65535};
  static const int16_t i16s[] = {-32768, 32767};
  static const uint32_t u32s[] = {0, 4294967295u, 7};
  static const int32_t i32s[] = {-2147483647 - 1, 2147483647};
  static const float f32s[] = {0.5f, -1e-30f, 3.4e38f};
  static const uint8_t bools[] = {1, 0, 1};
  static const uint64_t u64s[] = {18446744073709551615u, 1};
  static const int64_t i64s[] = {INT64_MIN, INT64_MAX};
  static const double f64s[] = {3.141592653589793, -0.0};
  static const int32_t ints[] = {1, 2, 3, 4, 5, 6};
  int rc = 0;
  if (!w) return -1;
  memset(&v, 0, sizeof v);
  v.type = ML_GGUF_UINT8; v.v.u = 200; rc |= ml_gguf_set_value(w, "t.u8", &v);
  v.type = ML_GGUF_INT8; v.v.i = -100; rc |= ml_gguf_set_value(w, "t.i8", &v);
  v.type = ML_GGUF_UINT16; v.v.u = 60000; rc |= ml_gguf_set_value(w, "t.u16", &v);
  v.type = ML_GGUF_INT16; v.v.i = -30000; rc |= ml_gguf_set_value(w, "t.i16", &v);
  rc |= ml_gguf_set_u32(w, "t.u32", 4000000000u);
  rc |= ml_gguf_set_i32(w, "t.i32", -2000000000);
  rc |= ml_gguf_set_f32(w, "t.f32", 1e-5f);
  rc |= ml_gguf_set_bool(w, "t.bool", 1);
  rc |= ml_gguf_set_str(w, "t.str", "h\xc3\xa9llo \"world\"\n", 15);
  rc |= ml_gguf_set_u64(w, "t.u64", 18446744073709551615u);
  rc |= ml_gguf_set_i64(w, "t.i64", -9000000000000000000);
  rc |= ml_gguf_set_f64(w, "t.f64", 2.718281828459045);
  rc |= ml_gguf_set_str(w, "t.empty_str", "", 0);
  rc |= ml_gguf_set_arr(w, "a.u8", ML_GGUF_UINT8, u8s, 3);
  rc |= ml_gguf_set_arr(w, "a.i8", ML_GGUF_INT8, i8s, 3);
  rc |= ml_gguf_set_arr(w, "a.u16", ML_GGUF_UINT16, u16s, 2);
  rc |= ml_gguf_set_arr(w, "a.i16", ML_GGUF_INT16, i16s, 2);
  rc |= ml_gguf_set_arr(w, "a.u32", ML_GGUF_UINT32, u32s, 3);
  rc |= ml_gguf_set_arr(w, "a.i32", ML_GGUF_INT32, i32s, 2);
  rc |= ml_gguf_set_arr(w, "a.f32", ML_GGUF_FLOAT32, f32s, 3);
  rc |= ml_gguf_set_arr(w, "a.bool", ML_GGUF_BOOL, bools, 3);
  rc |= ml_gguf_set_arr(w, "a.u64", ML_GGUF_UINT64, u64s, 2);
  rc |= ml_gguf_set_arr(w, "a.i64", ML_GGUF_INT64, i64s, 2);
  rc |= ml_gguf_set_arr(w, "a.f64", ML_GGUF_FLOAT64, f64s, 2);
  rc |= ml_gguf_set_arr(w, "a.empty", ML_GGUF_INT32, NULL, 0);
  rc |= ml_gguf_set_arr_str(w, "a.str", words, NULL, sizeof words / sizeof *words);
  /* [[[1,2],[3]],[[4,5,6]]] as i32, and [["one","t\0o",""],[]] as strings */
  memset(inner, 0, sizeof inner);
  memset(mid, 0, sizeof mid);
  memset(sarr, 0, sizeof sarr);
  for (int k = 0; k < 3; k++) {
    inner[k].type = ML_GGUF_ARRAY;
    inner[k].v.arr.type = ML_GGUF_INT32;
  }
  inner[0].v.arr.n = 2; inner[0].v.arr.raw = ints;
  inner[1].v.arr.n = 1; inner[1].v.arr.raw = ints + 2;
  inner[2].v.arr.n = 3; inner[2].v.arr.raw = ints + 3;
  mid[0].type = mid[1].type = ML_GGUF_ARRAY;
  mid[0].v.arr.type = mid[1].v.arr.type = ML_GGUF_ARRAY;
  mid[0].v.arr.n = 2; mid[0].v.arr.items = inner;
  mid[1].v.arr.n = 1; mid[1].v.arr.items = inner + 2;
  memset(&v, 0, sizeof v);
  v.type = ML_GGUF_ARRAY; v.v.arr.type = ML_GGUF_ARRAY; v.v.arr.n = 2; v.v.arr.items = mid;
  rc |= ml_gguf_set_value(w, "n.i32", &v);
  sarr[0].type = sarr[1].type = ML_GGUF_ARRAY;
  sarr[0].v.arr.type = sarr[1].v.arr.type = ML_GGUF_STRING;
  sarr[0].v.arr.n = 3; sarr[0].v.arr.strs = strs;
  v.v.arr.items = sarr;
  rc |= ml_gguf_set_value(w, "n.str", &v);
  rc |= ml_gguf_set_str(w, "general.architecture", "test", 4);
  if (with_tensors) {
    static const struct { const char *name; ml_type type; int nd; int64_t ne[4]; } ts[] = {
      {"f32", ML_TYPE_F32, 2, {4, 3, 1, 1}},
      {"f16", ML_TYPE_F16, 1, {7, 1, 1, 1}},
      {"q4_0", ML_TYPE_Q4_0, 2, {64, 2, 1, 1}},
      {"q8_0", ML_TYPE_Q8_0, 1, {32, 1, 1, 1}},
      {"q4_k", ML_TYPE_Q4_K, 1, {256, 1, 1, 1}},
      {"i32.4d", ML_TYPE_I32, 4, {3, 1, 2, 2}},
      {"empty", ML_TYPE_F32, 2, {0, 5, 1, 1}},
      {"bf16", ML_TYPE_BF16, 3, {2, 2, 2, 1}},
    };
    for (size_t k = 0; k < sizeof ts / sizeof *ts; k++)
      rc |= ml_gguf_add_tensor(w, ts[k].name, ts[k].type, ts[k].nd, ts[k].ne, payload + 8 * k);
  }
  rc |= ml_gguf_writer_write(w, path);
  if (rc) fprintf(stderr, "write_all_types: %s\n", ml_errmsg());
  ml_gguf_writer_free(w);
  return rc ? -1 : 0;
}

static void check_all_types(const ml_gguf *g) {
  const ml_gguf_kv *kv;
  const ml_gguf_str *s;
  CHECK(g->version == 3 && g->alignment == 32 && g->data_offset % 32 == 0);
  CHECK(ml_gguf_get_int(g, "t.u8", 0) == 200 && ml_gguf_get_int(g, "t.i8", 0) == -100);
  CHECK(ml_gguf_get_int(g, "t.u16", 0) == 60000 && ml_gguf_get_int(g, "t.i16", 0) == -30000);
  CHECK(ml_gguf_get_int(g, "t.u32", 0) == 4000000000 && ml_gguf_get_int(g, "t.i32", 0) == -2000000000);
  CHECK(ml_gguf_get_int(g, "t.u64", -7) == -7); /* above INT64_MAX: default */
  CHECK(ml_gguf_get_int(g, "t.i64", 0) == -9000000000000000000);
  CHECK(ml_gguf_get_float(g, "t.f32", 0) == (double)1e-5f);
  CHECK(ml_gguf_get_float(g, "t.f64", 0) == 2.718281828459045);
  CHECK(ml_gguf_get_float(g, "t.u32", 0) == 4000000000.0);
  CHECK(ml_gguf_get_float(g, "t.str", -1) == -1);
  CHECK(ml_gguf_get_int(g, "t.f32", 5) == 5);
  CHECK(ml_gguf_get_bool(g, "t.bool", 0) == 1 && ml_gguf_get_bool(g, "nope", 7) == 7);
  CHECK((s = ml_gguf_get_str(g, "t.str")) && key_is(s, "h\xc3\xa9llo \"world\"\n"));
  CHECK((s = ml_gguf_get_str(g, "t.empty_str")) && s->len == 0);
  CHECK(ml_gguf_get_str(g, "t.u8") == NULL && ml_gguf_find(g, "t") == NULL);
  CHECK((kv = ml_gguf_find(g, "a.u8")) && kv->value.v.arr.n == 3 && ml_gguf_arr_int(&kv->value, 2) == 255);
  CHECK((kv = ml_gguf_find(g, "a.i8")) && ml_gguf_arr_int(&kv->value, 0) == -128);
  CHECK((kv = ml_gguf_find(g, "a.u16")) && ml_gguf_arr_int(&kv->value, 1) == 65535);
  CHECK((kv = ml_gguf_find(g, "a.i16")) && ml_gguf_arr_int(&kv->value, 0) == -32768);
  CHECK((kv = ml_gguf_find(g, "a.u32")) && ml_gguf_arr_int(&kv->value, 1) == 4294967295);
  CHECK((kv = ml_gguf_find(g, "a.i32")) && ml_gguf_arr_int(&kv->value, 0) == INT32_MIN);
  CHECK((kv = ml_gguf_find(g, "a.f32")) && ml_gguf_arr_float(&kv->value, 2) == (double)3.4e38f &&
        ml_gguf_arr_int(&kv->value, 0) == 0 && ml_gguf_arr_float(&kv->value, 3) == 0);
  CHECK((kv = ml_gguf_find(g, "a.bool")) && ml_gguf_arr_int(&kv->value, 1) == 0 &&
        ml_gguf_arr_int(&kv->value, 2) == 1);
  CHECK((kv = ml_gguf_find(g, "a.u64")) && ml_gguf_arr_int(&kv->value, 1) == 1 &&
        ml_gguf_arr_float(&kv->value, 0) == 18446744073709551615.0);
  CHECK((kv = ml_gguf_find(g, "a.i64")) && ml_gguf_arr_int(&kv->value, 0) == INT64_MIN);
  CHECK((kv = ml_gguf_find(g, "a.f64")) && ml_gguf_arr_float(&kv->value, 0) == 3.141592653589793 &&
        signbit(ml_gguf_arr_float(&kv->value, 1)));
  CHECK((kv = ml_gguf_find(g, "a.empty")) && kv->value.v.arr.n == 0 && kv->value.v.arr.type == ML_GGUF_INT32);
  CHECK((kv = ml_gguf_find(g, "a.str")) && kv->value.v.arr.n == 6 &&
        key_is(ml_gguf_arr_str(&kv->value, 4), words[4]) && ml_gguf_arr_str(&kv->value, 0)->len == 0 &&
        ml_gguf_arr_str(&kv->value, 6) == NULL);
  kv = ml_gguf_find(g, "n.i32");
  CHECK(kv && kv->value.v.arr.type == ML_GGUF_ARRAY && kv->value.v.arr.n == 2);
  if (kv && kv->value.v.arr.n == 2) {
    const ml_gguf_value *m = kv->value.v.arr.items;
    CHECK(m[0].v.arr.n == 2 && m[1].v.arr.n == 1 && m[0].v.arr.type == ML_GGUF_ARRAY);
    CHECK(ml_gguf_arr_int(&m[0].v.arr.items[1], 0) == 3 && ml_gguf_arr_int(&m[1].v.arr.items[0], 2) == 6);
  }
  kv = ml_gguf_find(g, "n.str");
  CHECK(kv && kv->value.v.arr.n == 2);
  if (kv && kv->value.v.arr.n == 2) {
    const ml_gguf_value *m = kv->value.v.arr.items;
    CHECK(m[0].v.arr.n == 3 && m[1].v.arr.n == 0 && m[0].v.arr.strs[1].len == 3 &&
          memcmp(m[0].v.arr.strs[1].s, "t\0o", 3) == 0);
  }
  CHECK(g->n_tensors == 8);
  if (g->n_tensors == 8) {
    const ml_gguf_tensor *t;
    int64_t k = ml_gguf_find_tensor(g, "q4_k");
    CHECK(k == 4 && ml_gguf_find_tensor(g, "nope") == -1);
    t = &g->tensors[2];
    CHECK(t->type == ML_TYPE_Q4_0 && t->ne[0] == 64 && t->ne[1] == 2 && t->ne[2] == 1 && t->nbytes == 72);
    CHECK(memcmp(t->data, payload + 16, 72) == 0);
    t = &g->tensors[5];
    CHECK(t->n_dims == 4 && t->ne[3] == 2 && t->nbytes == 48 && memcmp(t->data, payload + 40, 48) == 0);
    t = &g->tensors[6];
    CHECK(t->nbytes == 0 && t->ne[0] == 0);
    for (uint64_t i = 0; i < g->n_tensors; i++)
      CHECK(g->tensors[i].offset % 32 == 0 && g->tensors[i].data &&
            (size_t)((const uint8_t *)g->tensors[i].data - g->base) == g->data_offset + g->tensors[i].offset);
  }
}

/* Copy every kv and tensor of g into a writer and write it to path. */
static int rewrite(const ml_gguf *g, const char *path) {
  ml_gguf_writer *w = ml_gguf_writer_new();
  char key[256];
  int rc = 0;
  for (uint64_t i = 0; i < g->n_kv && !rc; i++) {
    snprintf(key, sizeof key, "%.*s", (int)g->kv[i].key.len, g->kv[i].key.s);
    rc = ml_gguf_set_value(w, key, &g->kv[i].value);
  }
  for (uint64_t i = 0; i < g->n_tensors && !rc; i++) {
    const ml_gguf_tensor *t = &g->tensors[i];
    snprintf(key, sizeof key, "%.*s", (int)t->name.len, t->name.s);
    rc = ml_gguf_add_tensor(w, key, t->type, t->n_dims, t->ne, t->data);
  }
  if (!rc) rc = ml_gguf_writer_write(w, path);
  if (rc) fprintf(stderr, "rewrite: %s\n", ml_errmsg());
  ml_gguf_writer_free(w);
  return rc;
}

static int same_file(const char *a, const char *b) {
  size_t na, nb;
  uint8_t *pa = slurp(a, &na), *pb = slurp(b, &nb);
  int same = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
  free(pa);
  free(pb);
  return same;
}

/* Every prefix of a valid file: an error unless it still holds every byte the reader needs.
 * Each prefix is copied into its own exact-size block so ASan sees any overread. */
static void check_truncations(const char *path) {
  size_t n, infos_end, data_end = 0;
  uint8_t *p = slurp(path, &n);
  ml_gguf *g = p ? ml_gguf_from_memory(p, n, 0) : NULL;
  CHECK(g != NULL);
  if (!g) { free(p); return; }
  for (uint64_t i = 0; i < g->n_tensors; i++)
    data_end = ML_MAX(data_end, g->data_offset + g->tensors[i].offset + g->tensors[i].nbytes);
  infos_end = g->data_offset; /* an upper bound: the infos end at most here */
  ml_gguf_release(g);
  for (size_t len = 0; len < n; len++) {
    uint8_t *q = malloc(len ? len : 1);
    memcpy(q, p, len);
    g = ml_gguf_from_memory(len ? q : NULL, len, 0);
    CHECK_MSG((g != NULL) == (len >= data_end), ml_errmsg());
    ml_gguf_release(g);
    g = ml_gguf_from_memory(len ? q : NULL, len, ML_GGUF_NO_TENSORS);
    if (len >= infos_end) CHECK(g != NULL);
    if (g) CHECK(g->n_kv > 0);
    ml_gguf_release(g);
    free(q);
  }
  free(p);
}

/* Hostile files, written in a small notation: "GGUF" magic, u8/u32/u64:N, s:text (a string
 * with its u64 length), f32:X, z:N (N zero bytes). `want` is a piece of the error message. */
static const struct { const char *spec, *want; } hostile[] = {
  {"", "empty"},
  {"GG", "too short"},
  {"GGUG u32:3 u64:0 u64:0", "bad magic"},
  {"GGUF u32:1 u64:0 u64:0", "unsupported GGUF version 1"},
  {"GGUF u32:4 u64:0 u64:0", "unsupported GGUF version 4"},
  {"GGUF u32:50331648 u64:0 u64:0", "big-endian"},
  {"GGUF u32:3 u64:0", "truncated at offset 16"},
  {"GGUF u32:3 u64:0 u64:0", ""},
  {"GGUF u32:2 u64:0 u64:1 s:k u32:4 u32:9", ""},
  {"GGUF u32:3 u64:0 u64:1000", "1000 key/value pairs cannot fit"},
  {"GGUF u32:3 u64:1000 u64:0 z:100", "1000 tensor infos cannot fit"},
  {"GGUF u32:3 u64:0 u64:1 u64:18446744073709551615 z:8", "string length 18446744073709551615 at offset 24 exceeds file size"},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:13 u32:0", "unknown value type 13"},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:9 u32:13 u64:0", "unknown array element type 13"},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:9 u32:8 u64:4611686018427387904 z:8", "array of 4611686018427387904 string"},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:9 u32:4 u64:3 u32:1 u32:2", "array of 3 uint32"},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:9 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:4 u64:0", ""},
  {"GGUF u32:3 u64:0 u64:1 s:k u32:9 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:9 u64:1 u32:4 u64:0", "nested more than 8 deep"},
  {"GGUF u32:3 u64:0 u64:2 s:k u32:0 u8:1 s:k u32:0 u8:2", "duplicate key (reading key/value 2 of 2, 'k')"},
  {"GGUF u32:3 u64:0 u64:1 s:general.alignment u32:6 f32:64", "general.alignment is a float32"},
  {"GGUF u32:3 u64:0 u64:1 s:general.alignment u32:4 u32:0", "general.alignment = 0 is not a power of two"},
  {"GGUF u32:3 u64:0 u64:1 s:general.alignment u32:4 u32:48", "general.alignment = 48"},
  {"GGUF u32:3 u64:0 u64:1 s:general.alignment u32:10 u64:4294967296", "general.alignment = 4294967296"},
  {"GGUF u32:3 u64:1 u64:1 s:general.alignment u32:0 u8:8 s:t u32:1 u64:8 u32:0 u64:8 z:11 z:40", ""},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:8 u32:42 u64:0 z:64", "tensor 't': unknown type 42"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:8 u32:4294967295 u64:0 z:64", "tensor 't': unknown type 4294967295"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:5 u64:1 u64:1 u64:1 u64:1 u64:1 u32:0 u64:0 z:64", "5 dimensions"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:4611686018427387905 u32:0 u64:0", "ne[0] = 4611686018427387905 is too large"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:3 u64:4294967296 u64:4294967296 u64:4 u32:0 u64:0", "element count overflows"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:2 u64:4611686018427387904 u64:1 u32:28 u64:0", "byte size overflows"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:33 u32:8 u64:0 z:64", "ne[0] = 33 is not a multiple of the q8_0 block size 32"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:8 u32:0 u64:16 z:64", "offset 16 is not a multiple of the alignment 32"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:8 u32:0 u64:0 z:7 z:31", "tensor 't': 32 bytes at offset 0 lie past the end"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:8 u32:0 u64:0 z:7 z:32", ""},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:0 u32:0 u64:0", "0 bytes at offset 0 lie past the end"},
  {"GGUF u32:3 u64:1 u64:0 s:t u32:1 u64:0 u32:0 u64:0 z:7", ""},
  {"GGUF u32:3 u64:2 u64:0 s:t u32:1 u64:8 u32:0 u64:0 s:t u32:1 u64:8 u32:0 u64:32 z:64", "tensor 't': duplicate tensor name"},
  {"GGUF u32:3 u64:2 u64:0 s:a u32:1 u64:8 u32:0 u64:0 s:b u32:4 u64:8 u64:8", "truncated at offset 86 (reading tensor info 2 of 2)"},
};

static size_t build(const char *spec, uint8_t *out) {
  size_t n = 0;
  char tok[128];
  int used;
  while (sscanf(spec, "%127s%n", tok, &used) == 1) {
    spec += used;
    if (strcmp(tok, "GGUF") == 0 || strcmp(tok, "GGUG") == 0 || strcmp(tok, "GG") == 0) {
      memcpy(out + n, tok, strlen(tok));
      n += strlen(tok);
    } else if (strncmp(tok, "s:", 2) == 0) {
      uint64_t len = strlen(tok + 2);
      memcpy(out + n, &len, 8);
      memcpy(out + n + 8, tok + 2, len);
      n += 8 + len;
    } else if (strncmp(tok, "f32:", 4) == 0) {
      float f = strtof(tok + 4, NULL);
      memcpy(out + n, &f, 4);
      n += 4;
    } else {
      unsigned long long x = strtoull(strchr(tok, ':') + 1, NULL, 10);
      uint32_t x32 = (uint32_t)x;
      if (tok[0] == 'z') memset(out + n, 0, x), n += x;
      else if (tok[1] == '8') out[n++] = (uint8_t)x;
      else if (tok[1] == '3') memcpy(out + n, &x32, 4), n += 4;
      else memcpy(out + n, &x, 8), n += 8;
    }
  }
  return n;
}

static void check_hostile(void) {
  static uint8_t buf[1024];
  for (size_t k = 0; k < sizeof hostile / sizeof *hostile; k++) {
    size_t n = build(hostile[k].spec, buf);
    uint8_t *q = malloc(n ? n : 1); /* exact size, for ASan */
    ml_gguf *g;
    memcpy(q, buf, n);
    g = ml_gguf_from_memory(n ? q : NULL, n, 0);
    if (!hostile[k].want[0]) CHECK_MSG(g != NULL, ml_errmsg());
    else CHECK_MSG(!g && strstr(ml_errmsg(), hostile[k].want), ml_errmsg());
    if (getenv("GGUF_CHECK_VERBOSE")) printf("  %-60.60s -> %s\n", hostile[k].spec, g ? "ok" : ml_errmsg());
    ml_gguf_release(g);
    free(q);
  }
}

static void check_writer_errors(const char *dir) {
  ml_gguf_writer *w = ml_gguf_writer_new();
  int64_t ne[4] = {32, 2, 1, 1}, bad[2] = {-1, 2}, odd[1] = {33};
  static const char *const two[] = {"a", "b"};
  CHECK(ml_gguf_add_tensor(w, "a", ML_TYPE_Q8_0, 2, ne, payload) == 0);
  CHECK(ml_gguf_add_tensor(w, "a", ML_TYPE_F32, 1, ne, payload) == -1 && strstr(ml_errmsg(), "duplicate tensor name 'a'"));
  CHECK(ml_gguf_add_tensor(w, "b", ML_TYPE_F32, 2, bad, payload) == -1 && strstr(ml_errmsg(), "bad ne[0] = -1"));
  CHECK(ml_gguf_add_tensor(w, "b", ML_TYPE_Q4_0, 1, odd, payload) == -1 && strstr(ml_errmsg(), "not a multiple"));
  CHECK(ml_gguf_add_tensor(w, "b", (ml_type)42, 1, ne, payload) == -1 && strstr(ml_errmsg(), "unknown type 42"));
  CHECK(ml_gguf_add_tensor(w, "b", ML_TYPE_F32, 5, ne, payload) == -1 && strstr(ml_errmsg(), "5 dimensions"));
  CHECK(ml_gguf_add_tensor(w, "b", ML_TYPE_F32, 1, ne, NULL) == -1 && strstr(ml_errmsg(), "NULL data"));
  CHECK(ml_gguf_add_tensor(w, "0123456789012345678901234567890123456789012345678901234567890123",
                           ML_TYPE_F32, 1, ne, payload) == -1 && strstr(ml_errmsg(), "64 bytes"));
  CHECK(ml_gguf_set_i32(w, "general.alignment", 64) == -1 && strstr(ml_errmsg(), "uint32 power of two"));
  CHECK(ml_gguf_set_u32(w, "general.alignment", 48) == -1);
  CHECK(ml_gguf_set_arr(w, "x", ML_GGUF_STRING, two, 2) == -1);
  CHECK(ml_gguf_set_str(w, "x", NULL, 3) == -1);
  CHECK(ml_gguf_set_u32(w, "x", 1) == 0 && ml_gguf_set_str(w, "x", "replaced", 8) == 0);
  CHECK(ml_gguf_set_u32(w, "y", 1) == 0 && ml_gguf_unset(w, "y") == 1 && ml_gguf_unset(w, "y") == 0);
  CHECK(ml_gguf_writer_write(w, join(dir, "no/such/dir/x.gguf")) == -1 && strstr(ml_errmsg(), "cannot write") &&
        strstr(ml_errmsg(), "No such file or directory"));
  CHECK(ml_gguf_writer_write(w, dir) == -1); /* a directory: rename fails, temp file removed */
  CHECK(ml_gguf_set_u32(w, "general.alignment", 64) == 0);
  CHECK(ml_gguf_writer_write(w, join(dir, "align64.gguf")) == 0);
  ml_gguf_writer_free(w);
  {
    ml_gguf *g = ml_gguf_open(join(dir, "align64.gguf"), 0);
    const ml_gguf_str *s;
    CHECK(g && g->alignment == 64 && g->data_offset % 64 == 0 && g->n_kv == 2 && g->n_tensors == 1);
    CHECK(g && (s = ml_gguf_get_str(g, "x")) && key_is(s, "replaced"));
    CHECK(g && g->size == g->data_offset + 128); /* 68 bytes of q8_0 padded to 64 */
    ml_gguf_release(g);
  }
}

static void check_open_errors(const char *dir) {
  FILE *f = fopen(join(dir, "empty.bin"), "wb");
  ml_gguf *g;
  if (f) fclose(f);
  CHECK(!ml_gguf_open(join(dir, "does-not-exist.gguf"), 0) &&
        strstr(ml_errmsg(), "cannot open") && strstr(ml_errmsg(), "No such file or directory"));
  CHECK(!ml_gguf_open(dir, 0) && strstr(ml_errmsg(), "Is a directory"));
  CHECK(!ml_gguf_open(join(dir, "empty.bin"), 0) && strstr(ml_errmsg(), "not a GGUF file (empty)"));
  CHECK(!ml_gguf_open("/dev/null", 0) && strstr(ml_errmsg(), "not a regular file"));
  g = ml_gguf_open(join(dir, "all_types.gguf"), 0);
  CHECK(g != NULL);
  ml_gguf_retain(g);
  ml_gguf_release(g);
  CHECK(g && ml_gguf_get_int(g, "t.u8", 0) == 200); /* still alive after one release */
  ml_gguf_release(g);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A 150k vocabulary, its scores and 150k merges: they open and read back. */
static void check_big_vocab(const char *dir) {
  enum { N = 150000 };
  char *text = malloc((size_t)N * 16), *mtext = malloc((size_t)N * 24);
  const char **toks = malloc(N * sizeof *toks), **merges = malloc(N * sizeof *merges);
  float *scores = malloc(N * sizeof *scores);
  ml_gguf_writer *w = ml_gguf_writer_new();
  const char *path = join(dir, "big_vocab.gguf");
  double best = 1e9;
  for (int i = 0; i < N; i++) {
    toks[i] = text + (size_t)i * 16;
    merges[i] = mtext + (size_t)i * 24;
    snprintf(text + (size_t)i * 16, 16, "tok%d", i);
    snprintf(mtext + (size_t)i * 24, 24, "m%d x%d", i, i * 7);
    scores[i] = (float)-i;
  }
  CHECK(ml_gguf_set_str(w, "tokenizer.ggml.model", "gpt2", 4) == 0);
  CHECK(ml_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, N) == 0);
  CHECK(ml_gguf_set_arr(w, "tokenizer.ggml.scores", ML_GGUF_FLOAT32, scores, N) == 0);
  CHECK(ml_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, N) == 0);
  CHECK(ml_gguf_writer_write(w, path) == 0);
  ml_gguf_writer_free(w);
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now_ms();
    ml_gguf *g = ml_gguf_open(path, 0);
    double t = now_ms() - t0;
    const ml_gguf_kv *kv = g ? ml_gguf_find(g, "tokenizer.ggml.tokens") : NULL;
    CHECK(kv && kv->value.v.arr.n == N && key_is(ml_gguf_arr_str(&kv->value, 123456), "tok123456"));
    kv = g ? ml_gguf_find(g, "tokenizer.ggml.scores") : NULL;
    CHECK(kv && ml_gguf_arr_float(&kv->value, N - 1) == -(N - 1));
    ml_gguf_release(g);
    best = ML_MIN(best, t);
  }
  /* a figure, not a check (speed is for benchmarks): bench/tokenizer.lua times the load */
  printf("  open of a 150k-token vocabulary + 150k scores + 150k merges: %.2f ms\n", best);
  remove(path);
  free(text); free(mtext); free(toks); free(merges); free(scores);
}

static int selftest(const char *dir) {
  const char *a = join(dir, "all_types.gguf"), *b = join(dir, "all_types.rewrite.gguf");
  ml_gguf *g;
  for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 131 + 7);
  CHECK(write_all_types(a, 1) == 0);
  g = ml_gguf_open(a, 0);
  CHECK_MSG(g != NULL, ml_errmsg());
  if (g) {
    check_all_types(g);
    CHECK(rewrite(g, b) == 0 && same_file(a, b)); /* set_value copies every value exactly */
    ml_gguf_release(g);
  }
  check_truncations(a);
  check_hostile();
  check_writer_errors(dir);
  check_open_errors(dir);
  check_big_vocab(dir);
  printf("gguf selftest: %s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}

/* ---- seeds ---- */

static int set_version(const char *path, uint32_t version) {
  FILE *f = fopen(path, "r+b");
  int rc;
  if (!f) return -1;
  rc = fseek(f, 4, SEEK_SET) || fwrite(&version, 4, 1, f) != 1;
  return fclose(f) || rc ? -1 : 0;
}

static int write_seeds(const char *dir) {
  ml_gguf_writer *w;
  ml_gguf_value lv[ML_GGUF_MAX_DEPTH];
  static const char *const toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81\x61\x62"};
  static const char *const merges[] = {"a b", "\xe2\x96\x81 \x61\x62"};
  static const float scores[] = {0, 0, 0, -1, -2, -3, -4, -5};
  static const int32_t ttype[] = {2, 3, 3, 1, 1, 1, 1, 1};
  static const int32_t leaf[] = {42};
  int64_t ne[2];
  int rc = 0;
  for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 131 + 7);
  rc |= write_all_types(join(dir, "all_types.gguf"), 1);
  rc |= write_all_types(join(dir, "all_types_v2.gguf"), 1);
  rc |= set_version(join(dir, "all_types_v2.gguf"), 2);
  rc |= write_all_types(join(dir, "kv_only.gguf"), 0);
  /* the deepest nesting the reader accepts */
  w = ml_gguf_writer_new();
  memset(lv, 0, sizeof lv);
  lv[0].type = ML_GGUF_ARRAY; lv[0].v.arr.type = ML_GGUF_INT32; lv[0].v.arr.n = 1; lv[0].v.arr.raw = leaf;
  for (int d = 1; d < ML_GGUF_MAX_DEPTH; d++) {
    lv[d].type = ML_GGUF_ARRAY; lv[d].v.arr.type = ML_GGUF_ARRAY; lv[d].v.arr.n = 1; lv[d].v.arr.items = &lv[d - 1];
  }
  rc |= ml_gguf_set_value(w, "deep", &lv[ML_GGUF_MAX_DEPTH - 1]);
  rc |= ml_gguf_writer_write(w, join(dir, "nested.gguf"));
  ml_gguf_writer_free(w);
  /* a tiny llama-style vocabulary and model, alignment 64 */
  w = ml_gguf_writer_new();
  rc |= ml_gguf_set_str(w, "general.architecture", "llama", 5);
  rc |= ml_gguf_set_u32(w, "general.alignment", 64);
  rc |= ml_gguf_set_u32(w, "llama.embedding_length", 32);
  rc |= ml_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
  rc |= ml_gguf_set_str(w, "tokenizer.ggml.model", "llama", 5);
  rc |= ml_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 8);
  rc |= ml_gguf_set_arr(w, "tokenizer.ggml.scores", ML_GGUF_FLOAT32, scores, 8);
  rc |= ml_gguf_set_arr(w, "tokenizer.ggml.token_type", ML_GGUF_INT32, ttype, 8);
  rc |= ml_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 2);
  rc |= ml_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
  ne[0] = 32; ne[1] = 8;
  rc |= ml_gguf_add_tensor(w, "token_embd.weight", ML_TYPE_Q8_0, 2, ne, payload);
  rc |= ml_gguf_add_tensor(w, "output_norm.weight", ML_TYPE_F32, 1, ne, payload);
  ne[0] = 256; ne[1] = 2;
  rc |= ml_gguf_add_tensor(w, "blk.0.ffn_down.weight", ML_TYPE_Q6_K, 2, ne, payload);
  rc |= ml_gguf_add_tensor(w, "blk.0.ffn_up.weight", ML_TYPE_Q2_K, 1, ne, payload);
  rc |= ml_gguf_add_tensor(w, "blk.0.attn_q.weight", ML_TYPE_F16, 1, ne, payload);
  rc |= ml_gguf_writer_write(w, join(dir, "tiny_llama.gguf"));
  ml_gguf_writer_free(w);
  /* nothing at all */
  w = ml_gguf_writer_new();
  rc |= ml_gguf_writer_write(w, join(dir, "empty.gguf"));
  ml_gguf_writer_free(w);
  if (rc) fprintf(stderr, "gguf_check: writing seeds: %s\n", ml_errmsg());
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  int json = 0, status = 0;
  if (argc == 3 && strcmp(argv[1], "--selftest") == 0) return selftest(argv[2]);
  if (argc == 3 && strcmp(argv[1], "--seeds") == 0) return write_seeds(argv[2]);
  if (argc == 4 && strcmp(argv[1], "--rewrite") == 0) {
    ml_gguf *g = ml_gguf_open(argv[2], 0);
    int rc = g ? rewrite(g, argv[3]) : -1;
    if (!g) fprintf(stderr, "gguf_check: %s\n", ml_errmsg());
    ml_gguf_release(g);
    return rc ? 1 : 0;
  }
  if (argc > 1 && strcmp(argv[1], "--json") == 0) json_mode = json = 1;
  if (argc < 2 + json) {
    fprintf(stderr, "usage: gguf_check [--json] FILE... | --selftest DIR | --seeds DIR | --rewrite IN OUT\n");
    return 2;
  }
  for (int i = 1 + json; i < argc; i++) {
    ml_gguf *g = ml_gguf_open(argv[i], 0);
    if (!g) {
      fprintf(stderr, "gguf_check: %s\n", ml_errmsg());
      status = 1;
      continue;
    }
    if (json) dump_json(g);
    else dump_text(argv[i], g);
    ml_gguf_release(g);
  }
  return status;
}
