/* json.c: the JSON reader of json.h. Recursive descent over the text, one arena for the
 * tree. Strict RFC 8259: no comments, no trailing commas, no NaN; strings must be valid
 * UTF-8 and escapes must not leave a lone surrogate. */
#include "json.h"
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct block {
  struct block *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
} block;

struct ml_json_doc {
  block *blocks;
  ml_json *root;
};

typedef struct {
  ml_json_doc *doc;
  const char *s, *end, *start;
  int max_depth;
  int failed;
} parser;

static void *arena(ml_json_doc *doc, size_t n) {
  n = (n + 15) & ~(size_t)15;
  block *b = doc->blocks;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = doc->blocks;
    b->used = 0;
    b->cap = cap;
    doc->blocks = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  return p;
}

static void fail(parser *p, const char *what) {
  if (p->failed) return;
  p->failed = 1;
  int line = 1, col = 1;
  for (const char *c = p->start; c < p->s && c < p->end; c++) {
    if (*c == '\n') line++, col = 1;
    else col++;
  }
  ml_seterr("invalid JSON: %s at line %d column %d", what, line, col);
}

static void skip_ws(parser *p) {
  while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
    return 3;
  }
  o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
  o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
  return 4;
}

/* length of the valid UTF-8 sequence at s (1..4), 0 when invalid */
static size_t utf8_len(const unsigned char *s, const unsigned char *end) {
  unsigned c = s[0];
  size_t n;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) n = 2, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, min = 0x10000;
  else return 0;
  if ((size_t)(end - s) < n) return 0;
  unsigned cp = c & (0x7F >> n);
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 63);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/* *p->s is the opening quote; decoded string into the arena */
static const char *parse_string(parser *p, uint32_t *len_out) {
  const char *s = ++p->s;
  size_t cap = 0;
  while (s < p->end && *s != '"') { /* upper bound of the decoded size */
    if (*s == '\\' && s + 1 < p->end) s++;
    s++, cap++;
  }
  char *out = arena(p->doc, cap * 4 + 1), *o = out;
  if (!out) { fail(p, "out of memory"); return NULL; }
  while (1) {
    if (p->s >= p->end) { fail(p, "unterminated string"); return NULL; }
    unsigned char c = (unsigned char)*p->s;
    if (c == '"') break;
    if (c < 0x20) { fail(p, "control character in string"); return NULL; }
    if (c != '\\') {
      size_t n = utf8_len((const unsigned char *)p->s, (const unsigned char *)p->end);
      if (!n) { fail(p, "invalid UTF-8 in string"); return NULL; }
      memcpy(o, p->s, n);
      o += n, p->s += n;
      continue;
    }
    if (p->s + 1 >= p->end) { fail(p, "unterminated string"); return NULL; }
    char e = p->s[1];
    p->s += 2;
    switch (e) {
    case '"': *o++ = '"'; break;
    case '\\': *o++ = '\\'; break;
    case '/': *o++ = '/'; break;
    case 'b': *o++ = '\b'; break;
    case 'f': *o++ = '\f'; break;
    case 'n': *o++ = '\n'; break;
    case 'r': *o++ = '\r'; break;
    case 't': *o++ = '\t'; break;
    case 'u': {
      unsigned cp, lo;
      if (p->end - p->s < 4 || !hex4(p->s, &cp)) { fail(p, "bad \\u escape"); return NULL; }
      p->s += 4;
      if (cp >= 0xDC00 && cp <= 0xDFFF) { fail(p, "lone surrogate in \\u escape"); return NULL; }
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->end - p->s < 6 || p->s[0] != '\\' || p->s[1] != 'u' || !hex4(p->s + 2, &lo) ||
            lo < 0xDC00 || lo > 0xDFFF) {
          fail(p, "lone surrogate in \\u escape");
          return NULL;
        }
        p->s += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      o += put_utf8(o, cp);
      break;
    }
    default: p->s -= 1; fail(p, "bad escape"); return NULL;
    }
  }
  p->s++;
  *o = 0;
  *len_out = (uint32_t)(o - out);
  return out;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static ml_json *parse_value(parser *p, int depth);

static ml_json *new_node(parser *p, ml_json_kind kind) {
  ml_json *v = arena(p->doc, sizeof *v);
  if (!v) { fail(p, "out of memory"); return NULL; }
  memset(v, 0, sizeof *v);
  v->kind = kind;
  return v;
}

/* children are gathered in a growing malloc'd list, then copied into the arena */
typedef struct {
  ml_json **v;
  size_t n, cap;
} kidlist;

static int kid_push(parser *p, kidlist *k, ml_json *v) {
  if (k->n == k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 8;
    ml_json **nv = realloc(k->v, cap * sizeof *nv);
    if (!nv) { fail(p, "out of memory"); return 0; }
    k->v = nv, k->cap = cap;
  }
  k->v[k->n++] = v;
  return 1;
}

static int kid_finish(parser *p, kidlist *k, ml_json *parent) {
  if (k->n > UINT32_MAX) { fail(p, "too many elements"); return 0; }
  parent->n = (uint32_t)k->n;
  if (k->n) {
    parent->kids = arena(p->doc, k->n * sizeof *parent->kids);
    if (!parent->kids) { fail(p, "out of memory"); return 0; }
    memcpy(parent->kids, k->v, k->n * sizeof *parent->kids);
  }
  for (size_t i = 0; i < k->n; i++) parent->kids[i]->parent = parent, parent->kids[i]->index = (uint32_t)i;
  return 1;
}

static ml_json *parse_container(parser *p, int depth, int object) {
  ml_json *v = new_node(p, object ? ML_JSON_OBJECT : ML_JSON_ARRAY);
  if (!v) return NULL;
  if (depth >= p->max_depth) { fail(p, "nesting too deep"); return NULL; }
  char close = object ? '}' : ']';
  kidlist k = {0};
  p->s++;
  skip_ws(p);
  if (p->s < p->end && *p->s == close) {
    p->s++;
    return v;
  }
  while (1) {
    const char *key = NULL;
    uint32_t key_len = 0;
    if (object) {
      skip_ws(p);
      if (p->s >= p->end || *p->s != '"') { fail(p, "expected a string key"); break; }
      key = parse_string(p, &key_len);
      if (!key) break;
      skip_ws(p);
      if (p->s >= p->end || *p->s != ':') { fail(p, "expected ':'"); break; }
      p->s++;
    }
    ml_json *kid = parse_value(p, depth + 1);
    if (!kid) break;
    kid->key = key, kid->key_len = key_len;
    if (!kid_push(p, &k, kid)) break;
    skip_ws(p);
    if (p->s < p->end && *p->s == ',') { p->s++; continue; }
    if (p->s < p->end && *p->s == close) { p->s++; break; }
    fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    break;
  }
  int ok = !p->failed && kid_finish(p, &k, v);
  free(k.v);
  return ok ? v : NULL;
}

static ml_json *parse_number(parser *p) {
  const char *b = p->s, *s = p->s;
  if (s < p->end && *s == '-') s++;
  if (s >= p->end || !is_digit(*s)) { fail(p, "bad number"); return NULL; }
  if (*s == '0') s++;
  else while (s < p->end && is_digit(*s)) s++;
  if (s < p->end && *s == '.') {
    s++;
    if (s >= p->end || !is_digit(*s)) { p->s = s; fail(p, "bad number"); return NULL; }
    while (s < p->end && is_digit(*s)) s++;
  }
  if (s < p->end && (*s == 'e' || *s == 'E')) {
    s++;
    if (s < p->end && (*s == '+' || *s == '-')) s++;
    if (s >= p->end || !is_digit(*s)) { p->s = s; fail(p, "bad number"); return NULL; }
    while (s < p->end && is_digit(*s)) s++;
  }
  ml_json *v = new_node(p, ML_JSON_NUMBER);
  if (!v) return NULL;
  size_t n = (size_t)(s - b);
  char *t = arena(p->doc, n + 1);
  if (!t) { fail(p, "out of memory"); return NULL; }
  memcpy(t, b, n);
  t[n] = 0;
  v->str = t;
  v->n = (uint32_t)n;
  v->num = strtod(t, NULL);
  p->s = s;
  return v;
}

static ml_json *parse_word(parser *p, const char *w, ml_json_kind kind) {
  size_t n = strlen(w);
  if ((size_t)(p->end - p->s) < n || memcmp(p->s, w, n) != 0) { fail(p, "unexpected character"); return NULL; }
  p->s += n;
  return new_node(p, kind);
}

static ml_json *parse_value(parser *p, int depth) {
  skip_ws(p);
  if (p->s >= p->end) { fail(p, "unexpected end of text"); return NULL; }
  switch (*p->s) {
  case '{': return parse_container(p, depth, 1);
  case '[': return parse_container(p, depth, 0);
  case '"': {
    uint32_t n;
    const char *str = parse_string(p, &n);
    if (!str) return NULL;
    ml_json *v = new_node(p, ML_JSON_STRING);
    if (v) v->str = str, v->n = n;
    return v;
  }
  case 't': return parse_word(p, "true", ML_JSON_TRUE);
  case 'f': return parse_word(p, "false", ML_JSON_FALSE);
  case 'n': return parse_word(p, "null", ML_JSON_NULL);
  default: return parse_number(p);
  }
}

ml_json_doc *ml_json_parse(const char *text, size_t len, int max_depth) {
  ml_json_doc *doc = calloc(1, sizeof *doc);
  if (!doc) { ml_seterr("out of memory"); return NULL; }
  parser p = {doc, text, text + len, text, max_depth > 0 ? max_depth : 512, 0};
  doc->root = parse_value(&p, 0);
  if (doc->root) {
    skip_ws(&p);
    if (p.s != p.end) fail(&p, "trailing characters after the value");
  }
  if (p.failed || !doc->root) {
    if (!p.failed) ml_seterr("invalid JSON");
    ml_json_free(doc);
    return NULL;
  }
  return doc;
}

const ml_json *ml_json_root(const ml_json_doc *doc) { return doc->root; }

void ml_json_free(ml_json_doc *doc) {
  if (!doc) return;
  for (block *b = doc->blocks, *nx; b; b = nx) nx = b->next, free(b);
  free(doc);
}

const ml_json *ml_json_get(const ml_json *obj, const char *key) {
  if (!obj || obj->kind != ML_JSON_OBJECT) return NULL;
  size_t kl = strlen(key);
  for (uint32_t i = obj->n; i-- > 0;)
    if (obj->kids[i]->key_len == kl && memcmp(obj->kids[i]->key, key, kl) == 0) return obj->kids[i];
  return NULL;
}

int ml_json_equal(const ml_json *a, const ml_json *b) {
  if (a->kind != b->kind) return 0;
  switch (a->kind) {
  case ML_JSON_NUMBER: return a->num == b->num && (isfinite(a->num) || strcmp(a->str, b->str) == 0);
  case ML_JSON_STRING: return a->n == b->n && memcmp(a->str, b->str, a->n) == 0;
  case ML_JSON_ARRAY:
    if (a->n != b->n) return 0;
    for (uint32_t i = 0; i < a->n; i++)
      if (!ml_json_equal(a->kids[i], b->kids[i])) return 0;
    return 1;
  case ML_JSON_OBJECT:
    if (a->n != b->n) return 0;
    for (uint32_t i = 0; i < a->n; i++) {
      const ml_json *o = ml_json_get(b, a->kids[i]->key);
      if (!o || !ml_json_equal(a->kids[i], o)) return 0;
    }
    return 1;
  default: return 1;
  }
}
