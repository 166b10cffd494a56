/* grammar_schema.c: JSON Schema -> GBNF, the structural half (grammar_schema_leaf.c has
 * the regular leaves).
 *
 * A schema position is compiled as a *set* of schema nodes that must all hold: allOf,
 * $ref and sibling keywords add nodes to the set, anyOf/oneOf split it into one set per
 * branch. A set without branches is read into a view (the constraints per JSON type) and
 * emitted as one rule; sets are memoized by their members, which is also how recursive
 * $refs become recursive rules. Objects follow llguidance's property order (properties in
 * definition order, merged in the order the schemas come; required names not listed next;
 * additional properties after them), the order JSONSchemaBench's instances use, with
 * optional properties as a chain of rules linear in their number. */
#define _POSIX_C_SOURCE 200809L
#include "grammar_schema_int.h"
#include "common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { T_NULL = 1, T_BOOL = 2, T_INT = 4, T_FRAC = 8, T_STR = 16, T_ARR = 32, T_OBJ = 64, T_ALL = 127 };
enum { SK_ANYOF = 1, SK_ONEOF = 2 };

typedef struct {
  const ml_json *node;
  unsigned skip;
} member;

typedef struct {
  member *m;
  int n, cap;
} mset;

typedef struct {
  const char *name; /* decoded */
  uint32_t nlen;
  const ml_json *key; /* the member node in `properties`, or the string naming it */
  const ml_json *listed_by; /* the last member whose `properties` named it */
  mset schemas;
  int required;
} prop;

typedef struct {
  unsigned types;
  int has_enum;
  const ml_json **enumv;
  int nenum;
  str_view str;
  num_view num;
  /* arrays: per member its prefix (list of nodes) and rest (NULL: anything) */
  struct {
    const ml_json *prefix; /* array node of schemas, or NULL */
    const ml_json *rest;   /* schema node, NULL = true */
  } *arr;
  int narr;
  uint64_t min_items, max_items;
  const ml_json *unique_at;
  /* objects */
  prop *props;
  int nprops;
  mset additional;             /* nodes every additional property must satisfy */
  int additional_false;
  const ml_json **required;    /* names, in order */
  int nrequired;
  uint64_t min_props, max_props;
  const ml_json *props_at;
  const ml_json *pprops, *pprops_at; /* patternProperties and the schema holding it */
  int obj_members;             /* members with properties/additionalProperties/patternProperties */
  const ml_json *any_member;   /* for errors */
  struct map *index;           /* property name -> position + 1 */
} view;

typedef struct {
  char *key;
  size_t klen;
  char *val;
  int state; /* set memo: 1 in progress, 2 done, 3 empty */
  int nest;
  int used;  /* set memo: its name was handed out while in progress */
} entry;

typedef struct map {
  entry *e;
  size_t n, cap;
} map;

typedef struct {
  schema_base b;
  const ml_json *root;
  sbuf rules;
  map sets;     /* member signature -> rule */
  map bodies;   /* leaf body -> rule */
  map names;    /* every rule name in use */
  int nest;     /* containers entered: recursion below it consumes input */
  const ml_json *chain[64]; /* $ref targets being expanded */
  int nchain;
  const char *ws;
  int ref_alone; /* $schema is draft 3 to 7: siblings of $ref are ignored */
} comp;

static const char EMPTY[] = "<empty>";

/* ---------------------------------------------------------------- errors, budget */

const char *schema_pointer(const ml_json *node, char *buf, size_t size) {
  const ml_json *path[256];
  int n = 0;
  for (const ml_json *x = node; x && x->parent && n < 256; x = x->parent) path[n++] = x;
  size_t w = 0;
  buf[0] = 0;
  for (int i = n - 1; i >= 0 && w + 8 < size; i--) {
    const ml_json *x = path[i];
    buf[w++] = '/';
    if (x->parent->kind == ML_JSON_ARRAY) {
      w += (size_t)snprintf(buf + w, size - w, "%u", x->index);
    } else {
      for (uint32_t k = 0; k < x->key_len && w + 4 < size; k++) {
        char ch = x->key[k];
        if (ch == '~') buf[w++] = '~', buf[w++] = '0';
        else if (ch == '/') buf[w++] = '~', buf[w++] = '1';
        else buf[w++] = ch;
      }
    }
    if (w >= size) w = size - 1;
    buf[w] = 0;
  }
  return buf;
}

int schema_fail(schema_base *c, const ml_json *at, const char *fmt, ...) {
  if (c->failed) return -1;
  c->failed = 1;
  char msg[400], ptr[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (at) {
    schema_pointer(at, ptr, sizeof ptr);
    ml_seterr("%s at %s", msg, ptr[0] ? ptr : "/");
  } else {
    ml_seterr("%s", msg);
  }
  return -1;
}

/* the budget counts this thread's CPU time: on a loaded machine the wall clock would turn
 * a schema that compiles in 0.3 s into a refusal */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int over_budget(comp *c, const ml_json *at) {
  if (c->b.failed) return 1;
  if (c->rules.oom) return schema_fail(&c->b, NULL, "out of memory"), 1;
  if (c->rules.n > c->b.opts.max_bytes) {
    schema_fail(&c->b, at, "grammar larger than the compile budget (%zu bytes)", c->b.opts.max_bytes);
    return 1;
  }
  if (now_ms() - c->b.t0 > c->b.opts.max_ms) {
    schema_fail(&c->b, at, "compile took longer than the budget (%.0f ms)", c->b.opts.max_ms);
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- small containers */

static int ms_push(mset *s, const ml_json *node, unsigned skip) {
  for (int i = 0; i < s->n; i++)
    if (s->m[i].node == node && s->m[i].skip == skip) return 0;
  if (s->n == s->cap) {
    int cap = s->cap ? s->cap * 2 : 4;
    member *m = realloc(s->m, (size_t)cap * sizeof *m);
    if (!m) return -1;
    s->m = m, s->cap = cap;
  }
  s->m[s->n].node = node, s->m[s->n].skip = skip;
  s->n++;
  return 0;
}

static void ms_free(mset *s) { free(s->m); memset(s, 0, sizeof *s); }

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static entry *map_find(map *m, const char *key, size_t klen, int create) {
  if (create && (m->n + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    entry *e = calloc(cap, sizeof *e);
    if (!e) return NULL;
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->e[i].key) continue;
      size_t j = hash(m->e[i].key, m->e[i].klen) & (cap - 1);
      while (e[j].key) j = (j + 1) & (cap - 1);
      e[j] = m->e[i];
    }
    free(m->e);
    m->e = e, m->cap = cap;
  }
  if (!m->cap) return NULL;
  size_t j = hash(key, klen) & (m->cap - 1);
  while (m->e[j].key) {
    if (m->e[j].klen == klen && !memcmp(m->e[j].key, key, klen)) return &m->e[j];
    j = (j + 1) & (m->cap - 1);
  }
  if (!create) return NULL;
  m->e[j].key = malloc(klen + 1);
  if (!m->e[j].key) return NULL;
  memcpy(m->e[j].key, key, klen);
  m->e[j].key[klen] = 0;
  m->e[j].klen = klen;
  m->n++;
  return &m->e[j];
}

static void map_free(map *m) {
  for (size_t i = 0; i < m->cap; i++) free(m->e[i].key), free(m->e[i].val);
  free(m->e);
  memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- rules */

/* a fresh rule name from a hint: [a-z0-9-], unique */
static const char *new_name(comp *c, const char *hint) {
  char base[48], name[64];
  size_t w = 0;
  for (const char *h = hint; *h && w < 32; h++) {
    char ch = *h;
    if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) base[w++] = ch;
    else if (ch >= 'A' && ch <= 'Z') base[w++] = (char)(ch - 'A' + 'a');
    else if (w && base[w - 1] != '-') base[w++] = '-';
  }
  while (w && base[w - 1] == '-') w--;
  if (!w) memcpy(base, "r", 1), w = 1;
  base[w] = 0;
  memcpy(name, base, w + 1);
  size_t nl = w;
  /* the base's entry remembers the next suffix to try */
  entry *b = map_find(&c->names, base, w, 0);
  int k = b && b->nest > 1 ? b->nest : 2;
  while (map_find(&c->names, name, nl, 0)) { /* base-k */
    char digits[12];
    int nd = 0;
    for (unsigned x = (unsigned)k++; x; x /= 10) digits[nd++] = (char)('0' + x % 10);
    name[w] = '-';
    for (int i = 0; i < nd; i++) name[w + 1 + i] = digits[nd - 1 - i];
    nl = w + 1 + (size_t)nd;
    name[nl] = 0;
  }
  if (b) b->nest = k;
  entry *e = map_find(&c->names, name, nl, 1);
  if (!e) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  return e->key;
}

/* h := "hint-part", cut to size (the name takes its first 32 characters anyway) */
static void sub_hint(char *h, size_t size, const char *hint, const char *part) {
  size_t w = 0;
  for (const char *p = hint; *p && w + 1 < size; p++) h[w++] = *p;
  if (w + 1 < size) h[w++] = '-';
  for (const char *p = part; *p && w + 1 < size; p++) h[w++] = *p;
  h[w] = 0;
}

static void put_rule(comp *c, const char *name, const char *body) {
  sb_puts(&c->rules, name);
  sb_puts(&c->rules, " ::= ");
  sb_puts(&c->rules, body);
  sb_puts(&c->rules, "\n");
}

/* a rule for a leaf body, shared by every identical body */
static const char *leaf_rule(comp *c, const char *hint, const char *body) {
  entry *e = map_find(&c->bodies, body, strlen(body), 1);
  if (!e) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  if (e->val) return e->val;
  const char *name = new_name(c, hint);
  if (!name) return NULL;
  e = map_find(&c->bodies, body, strlen(body), 0);
  e->val = strdup(name);
  if (!e->val) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  put_rule(c, name, body);
  return e->val;
}

/* ---------------------------------------------------------------- $ref */

static int is_str(const ml_json *v) { return v && v->kind == ML_JSON_STRING; }

static const ml_json *walk_pointer(const ml_json *base, const char *p) {
  const ml_json *cur = base;
  char tok[512];
  while (*p == '/') {
    p++;
    size_t w = 0;
    while (*p && *p != '/' && w + 4 < sizeof tok) {
      if (*p == '~' && p[1] == '0') tok[w++] = '~', p += 2;
      else if (*p == '~' && p[1] == '1') tok[w++] = '/', p += 2;
      else if (*p == '%' && p[1] && p[2]) {
        char hx[3] = {p[1], p[2], 0};
        tok[w++] = (char)strtol(hx, NULL, 16);
        p += 3;
      } else tok[w++] = *p++;
    }
    tok[w] = 0;
    if (cur->kind == ML_JSON_OBJECT) {
      cur = ml_json_get(cur, tok);
    } else if (cur->kind == ML_JSON_ARRAY) {
      char *end;
      unsigned long i = strtoul(tok, &end, 10);
      cur = *end || !w || i >= cur->n ? NULL : cur->kids[i];
    } else {
      cur = NULL;
    }
    if (!cur) return NULL;
  }
  return *p ? NULL : cur;
}

/* the node whose $id / id / $anchor matches */
static const ml_json *find_id(const ml_json *n, const char *id, int anchor) {
  if (n->kind == ML_JSON_OBJECT) {
    const ml_json *v;
    if (anchor) {
      if ((v = ml_json_get(n, "$anchor")) && is_str(v) && !strcmp(v->str, id)) return n;
      char hid[520];
      snprintf(hid, sizeof hid, "#%s", id);
      if ((v = ml_json_get(n, "$id")) && is_str(v) && !strcmp(v->str, hid)) return n;
      if ((v = ml_json_get(n, "id")) && is_str(v) && !strcmp(v->str, hid)) return n;
    } else {
      const char *keys[2] = {"$id", "id"};
      for (int k = 0; k < 2; k++)
        if ((v = ml_json_get(n, keys[k])) && is_str(v)) {
          size_t a = strlen(v->str), b = strlen(id);
          if (!strcmp(v->str, id) || (a > b && v->str[a - b - 1] == '/' && !strcmp(v->str + a - b, id))) return n;
        }
    }
  }
  if (n->kind == ML_JSON_OBJECT || n->kind == ML_JSON_ARRAY)
    for (uint32_t i = 0; i < n->n; i++) {
      const ml_json *r = find_id(n->kids[i], id, anchor);
      if (r) return r;
    }
  return NULL;
}

static const ml_json *resolve_ref(comp *c, const ml_json *at, const ml_json *ref) {
  if (!is_str(ref)) { schema_fail(&c->b, at, "'$ref' must be a string"); return NULL; }
  const char *r = ref->str, *hashp = strchr(r, '#');
  const ml_json *base = c->root;
  char doc[512];
  size_t dl = hashp ? (size_t)(hashp - r) : strlen(r);
  if (dl >= sizeof doc) dl = sizeof doc - 1;
  memcpy(doc, r, dl);
  doc[dl] = 0;
  if (dl) {
    base = find_id(c->root, doc, 0);
    if (!base) { schema_fail(&c->b, at, "unsupported $ref '%s' (not in this document)", r); return NULL; }
  }
  const ml_json *t = base;
  if (hashp && hashp[1] && hashp[1] != '/') t = find_id(c->root, hashp + 1, 1);
  else if (hashp) t = walk_pointer(base, hashp + 1);
  if (!t) { schema_fail(&c->b, at, "unresolved $ref '%s'", r); return NULL; }
  return t;
}

/* ---------------------------------------------------------------- flattening a set */

static int is_annotation_only(const ml_json *n, const char *allowed) {
  /* every key of n is `allowed` or an annotation */
  static const char *const notes[] = {"title", "description", "$comment", "examples", "default", "$id", "id", "$schema", "deprecated", "readOnly", "writeOnly"};
  for (uint32_t i = 0; i < n->n; i++) {
    const char *k = n->kids[i]->key;
    int ok = !strcmp(k, allowed);
    for (size_t j = 0; j < sizeof notes / sizeof *notes && !ok; j++) ok = !strcmp(k, notes[j]);
    if (!ok) return 0;
  }
  return 1;
}

/* adds node (and what allOf/$ref bring) to s; returns -1 error, 1 when the set is empty */
static int flatten(comp *c, mset *s, const ml_json *node, unsigned skip, int depth) {
  if (node->kind == ML_JSON_TRUE) return 0;
  if (node->kind == ML_JSON_FALSE) return 1;
  if (node->kind != ML_JSON_OBJECT) return schema_fail(&c->b, node, "a schema must be an object or a boolean");
  if (depth > 200) return schema_fail(&c->b, node, "schema nesting deeper than the compile budget");
  for (int j = 0; j < c->nchain; j++)
    if (c->chain[j] == node) return schema_fail(&c->b, node, "$ref cycle with no base case");
  for (int i = 0; i < s->n; i++) {
    if (s->m[i].node != node) continue;
    if (s->m[i].skip == skip) return 0;
    /* back to a node whose anyOf/oneOf this set is already inside, before any input:
     * recursion without a base case (the grammar would be left-recursive) */
    if (!skip) return schema_fail(&c->b, node, "$ref cycle with no base case (left recursion)");
  }
  if (c->nchain >= 64) return schema_fail(&c->b, node, "$ref chain deeper than the compile budget");
  const ml_json *ref;
  if (c->ref_alone && (ref = ml_json_get(node, "$ref"))) {
    /* drafts 3 to 7: a $ref replaces the schema holding it, siblings are not applied */
    const ml_json *t = resolve_ref(c, node, ref);
    if (!t) return -1;
    c->chain[c->nchain++] = node;
    int rc = flatten(c, s, t, 0, depth + 1);
    c->nchain--;
    return rc;
  }
  if (ms_push(s, node, skip) < 0) return schema_fail(&c->b, NULL, "out of memory");
  c->chain[c->nchain++] = node;
  int rc = 0;
  for (uint32_t i = 0; i < node->n && !rc; i++) {
    const ml_json *k = node->kids[i];
    if (!strcmp(k->key, "$ref")) {
      const ml_json *t = resolve_ref(c, node, k);
      rc = t ? flatten(c, s, t, 0, depth + 1) : -1;
    } else if (!strcmp(k->key, "not") && k->kind == ML_JSON_OBJECT && ml_json_get(k, "not") && is_annotation_only(k, "not")) {
      rc = flatten(c, s, ml_json_get(k, "not"), 0, depth + 1); /* not (not X) is X */
    } else if (!strcmp(k->key, "allOf")) {
      if (k->kind != ML_JSON_ARRAY || !k->n) rc = schema_fail(&c->b, node, "'allOf' must be a non-empty array");
      for (uint32_t j = 0; j < k->n && !rc; j++) rc = flatten(c, s, k->kids[j], 0, depth + 1);
    }
  }
  c->nchain--;
  return rc;
}

/* the first member with a branch keyword still to split on */
static int find_branch(const mset *s, const ml_json **kw, unsigned *bit) {
  for (int i = 0; i < s->n; i++) {
    const ml_json *n = s->m[i].node, *v;
    if (!(s->m[i].skip & SK_ANYOF) && (v = ml_json_get(n, "anyOf"))) { *kw = v, *bit = SK_ANYOF; return i; }
    if (!(s->m[i].skip & SK_ONEOF) && (v = ml_json_get(n, "oneOf"))) { *kw = v, *bit = SK_ONEOF; return i; }
  }
  return -1;
}

/* ---------------------------------------------------------------- views */

static unsigned type_bits(const char *t) {
  if (!strcmp(t, "null")) return T_NULL;
  if (!strcmp(t, "boolean")) return T_BOOL;
  if (!strcmp(t, "integer")) return T_INT;
  if (!strcmp(t, "number")) return T_INT | T_FRAC;
  if (!strcmp(t, "string")) return T_STR;
  if (!strcmp(t, "array")) return T_ARR;
  if (!strcmp(t, "object")) return T_OBJ;
  if (!strcmp(t, "any")) return T_ALL;
  return 0;
}

static unsigned value_type(const ml_json *v) {
  switch (v->kind) {
  case ML_JSON_NULL: return T_NULL;
  case ML_JSON_TRUE: case ML_JSON_FALSE: return T_BOOL;
  case ML_JSON_NUMBER: return v->num == floor(v->num) || v->num != v->num ? T_INT : T_FRAC; /* 1e300 too */
  case ML_JSON_STRING: return T_STR;
  case ML_JSON_ARRAY: return T_ARR;
  default: return T_OBJ;
  }
}

static int get_count(comp *c, const ml_json *node, const ml_json *v, uint64_t *out) {
  if (v->kind != ML_JSON_NUMBER || !(v->num >= 0) || v->num != floor(v->num))
    return schema_fail(&c->b, node, "'%s' must be a non-negative integer", v->key);
  *out = v->num < 1.8e19 ? (uint64_t)v->num : UINT64_MAX - 1; /* past any budget, still a bound */
  return 0;
}

static void view_free(view *v) {
  free(v->enumv);
  free(v->arr);
  for (int i = 0; i < v->nprops; i++) ms_free(&v->props[i].schemas);
  free(v->props);
  ms_free(&v->additional);
  free(v->required);
  if (v->index) map_free(v->index), free(v->index);
  memset(v, 0, sizeof *v);
}

static prop *find_prop(view *v, const char *name, uint32_t len) {
  if (v->index) {
    entry *e = map_find(v->index, name, len, 0);
    return e ? &v->props[e->state - 1] : NULL;
  }
  for (int i = 0; i < v->nprops; i++)
    if (v->props[i].nlen == len && !memcmp(v->props[i].name, name, len)) return &v->props[i];
  return NULL;
}

/* a new, empty property at the end */
static prop *add_prop(comp *c, view *v, const char *name, uint32_t len, const ml_json *key) {
  prop *np = realloc(v->props, (size_t)(v->nprops + 1) * sizeof *np);
  if (!np) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  v->props = np;
  prop *p = &v->props[v->nprops++];
  memset(p, 0, sizeof *p);
  p->name = name, p->nlen = len, p->key = key;
  if (!v->index && v->nprops > 16) {
    v->index = calloc(1, sizeof *v->index);
    for (int i = 0; v->index && i < v->nprops - 1; i++) {
      entry *e = map_find(v->index, v->props[i].name, v->props[i].nlen, 1);
      if (e) e->state = i + 1;
    }
  }
  if (v->index) {
    entry *e = map_find(v->index, name, len, 1);
    if (!e) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
    e->state = v->nprops;
  }
  return p;
}


/* `not`: the shapes that have an exact meaning here */
static int apply_not(comp *c, view *v, const ml_json *node, const ml_json *n) {
  if (n->kind == ML_JSON_OBJECT && ml_json_get(n, "not") && is_annotation_only(n, "not")) return 0; /* flatten took it */
  if (n->kind == ML_JSON_TRUE || (n->kind == ML_JSON_OBJECT && n->n == 0)) { v->types = 0; return 0; }
  if (n->kind == ML_JSON_FALSE) return 0;
  if (n->kind == ML_JSON_OBJECT) {
    const ml_json *t = ml_json_get(n, "type"), *r = ml_json_get(n, "required");
    if (t && is_annotation_only(n, "type")) {
      unsigned bits = 0;
      if (is_str(t)) bits = type_bits(t->str);
      else if (t->kind == ML_JSON_ARRAY)
        for (uint32_t i = 0; i < t->n; i++) bits |= is_str(t->kids[i]) ? type_bits(t->kids[i]->str) : 0;
      if (bits == (T_INT | T_FRAC) || !(bits & T_INT)) { v->types &= ~bits; return 0; }
      if (bits & T_INT && !(bits & T_FRAC)) {
        /* not integer: only non-integral numbers remain, which we cannot write exactly */
        if (!(v->types & T_FRAC)) { v->types &= ~bits; return 0; }
      }
    }
    if (r && is_annotation_only(n, "required") && r->kind == ML_JSON_ARRAY && r->n == 1 && is_str(r->kids[0])) {
      /* the property must be absent: forbid it */
      const ml_json *name = r->kids[0];
      prop *p = find_prop(v, name->str, name->n);
      if (!p && !(p = add_prop(c, v, name->str, name->n, name))) return -1;
      static const ml_json never = {ML_JSON_FALSE, 0, NULL, NULL, 0, 0, NULL, NULL, 0};
      if (ms_push(&p->schemas, &never, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
      return 0;
    }
  }
  return schema_fail(&c->b, node, "unsupported keyword 'not'");
}

static int num_lt(const num_bound *a, const num_bound *b) { return a->value->num < b->value->num; }

/* reads one member's keywords into v */
static int collect(comp *c, view *v, const member *mb, int first_obj) {
  const ml_json *n = mb->node;
  num_bound lo = {0}, hi = {0};
  const ml_json *items = NULL, *prefix = NULL, *additional_items = NULL;
  int has_items_kw = 0;
  const ml_json *props = NULL, *addl = NULL, *req = NULL;
  int obj_kw = 0;
  v->any_member = n;
  for (uint32_t i = 0; i < n->n; i++) {
    const ml_json *k = n->kids[i];
    const char *key = k->key;
    if (!strcmp(key, "type")) {
      unsigned bits = 0;
      if (is_str(k)) bits = type_bits(k->str);
      else if (k->kind == ML_JSON_ARRAY)
        for (uint32_t j = 0; j < k->n; j++) {
          unsigned b = is_str(k->kids[j]) ? type_bits(k->kids[j]->str) : 0;
          if (!b) return schema_fail(&c->b, n, "unknown type in 'type'");
          bits |= b;
        }
      if (!bits) return schema_fail(&c->b, n, "unknown type in 'type'");
      v->types &= bits;
    } else if (!strcmp(key, "enum") || !strcmp(key, "const")) {
      const ml_json *const *vals = (const ml_json *const *)(k->kind == ML_JSON_ARRAY && key[0] == 'e' ? k->kids : NULL);
      int nv = vals ? (int)k->n : 1;
      if (key[0] == 'e' && k->kind != ML_JSON_ARRAY) return schema_fail(&c->b, n, "'enum' must be an array");
      if (!vals) vals = &k;
      if (!v->has_enum) {
        v->enumv = malloc((size_t)(nv ? nv : 1) * sizeof *v->enumv);
        if (!v->enumv) return schema_fail(&c->b, NULL, "out of memory");
        v->nenum = 0;
        for (int j = 0; j < nv; j++) {
          int dup = 0;
          for (int q = 0; q < v->nenum && !dup; q++) dup = ml_json_equal(v->enumv[q], vals[j]);
          if (!dup) v->enumv[v->nenum++] = vals[j];
        }
        v->has_enum = 1;
      } else {
        int w = 0;
        for (int q = 0; q < v->nenum; q++) {
          int keep = 0;
          for (int j = 0; j < nv && !keep; j++) keep = ml_json_equal(v->enumv[q], vals[j]);
          if (keep) v->enumv[w++] = v->enumv[q];
        }
        v->nenum = w;
      }
    } else if (!strcmp(key, "minLength") || !strcmp(key, "maxLength")) {
      uint64_t x = 0;
      if (get_count(c, n, k, &x) < 0) return -1;
      if (key[1] == 'i') { if (x > v->str.min_len) v->str.min_len = x; }
      else if (x < v->str.max_len) v->str.max_len = x;
      v->str.len_at = n;
    } else if (!strcmp(key, "pattern")) {
      if (!is_str(k)) return schema_fail(&c->b, n, "'pattern' must be a string");
      if (v->str.pattern && strcmp(v->str.pattern->str, k->str))
        return schema_fail(&c->b, n, "unsupported keyword 'pattern' (a second pattern on the same string)");
      v->str.pattern = k, v->str.pattern_at = n;
    } else if (!strcmp(key, "format")) {
      if (!is_str(k)) return schema_fail(&c->b, n, "'format' must be a string");
      if (v->str.format && strcmp(v->str.format->str, k->str))
        return schema_fail(&c->b, n, "unsupported keyword 'format' (a second format on the same string)");
      v->str.format = k, v->str.format_at = n;
    } else if (!strcmp(key, "minimum") || !strcmp(key, "maximum")) {
      if (k->kind != ML_JSON_NUMBER) return schema_fail(&c->b, n, "'%s' must be a number", key);
      num_bound *b = key[1] == 'i' ? &lo : &hi;
      b->set = 1, b->value = k;
    } else if (!strcmp(key, "exclusiveMinimum") || !strcmp(key, "exclusiveMaximum")) {
      num_bound *b = key[10] == 'i' ? &lo : &hi;
      if (k->kind == ML_JSON_TRUE) b->exclusive = 2; /* draft 4: applies to minimum/maximum */
      else if (k->kind == ML_JSON_FALSE) continue;
      else if (k->kind == ML_JSON_NUMBER) {
        /* draft 6+: a bound of its own; intersect with the plain one below */
        num_bound e = {1, 1, k};
        num_bound *dst = key[10] == 'i' ? &v->num.lo : &v->num.hi;
        int tighter = !dst->set || (key[10] == 'i' ? !num_lt(&e, dst) : !num_lt(dst, &e));
        if (tighter) *dst = e;
      } else {
        return schema_fail(&c->b, n, "'%s' must be a number or a boolean", key);
      }
    } else if (!strcmp(key, "multipleOf")) {
      if (k->kind != ML_JSON_NUMBER || !(k->num > 0)) return schema_fail(&c->b, n, "'multipleOf' must be a positive number");
      if (k->num == 1.0) v->types &= ~T_FRAC; /* multiples of 1 are the integers */
      else if (v->types & (T_INT | T_FRAC)) return schema_fail(&c->b, n, "unsupported keyword 'multipleOf'");
    } else if (!strcmp(key, "items")) {
      has_items_kw = 1;
      if (k->kind == ML_JSON_ARRAY) prefix = k;
      else items = k;
    } else if (!strcmp(key, "prefixItems")) {
      if (k->kind != ML_JSON_ARRAY) return schema_fail(&c->b, n, "'prefixItems' must be an array");
      prefix = k;
    } else if (!strcmp(key, "additionalItems")) {
      additional_items = k;
    } else if (!strcmp(key, "minItems") || !strcmp(key, "maxItems")) {
      uint64_t x = 0;
      if (get_count(c, n, k, &x) < 0) return -1;
      if (key[1] == 'i') { if (x > v->min_items) v->min_items = x; }
      else if (x < v->max_items) v->max_items = x;
    } else if (!strcmp(key, "uniqueItems")) {
      if (k->kind == ML_JSON_TRUE) v->unique_at = n;
    } else if (!strcmp(key, "contains") || !strcmp(key, "unevaluatedItems") || !strcmp(key, "unevaluatedProperties") ||
               !strcmp(key, "$dynamicRef") || !strcmp(key, "$recursiveRef")) {
      if (k->kind == ML_JSON_TRUE && key[0] == 'u') continue;
      return schema_fail(&c->b, n, "unsupported keyword '%s'", key);
    } else if (!strcmp(key, "properties")) {
      if (k->kind != ML_JSON_OBJECT) return schema_fail(&c->b, n, "'properties' must be an object");
      props = k, obj_kw = 1;
    } else if (!strcmp(key, "additionalProperties")) {
      addl = k, obj_kw = 1;
    } else if (!strcmp(key, "required")) {
      if (k->kind != ML_JSON_ARRAY) return schema_fail(&c->b, n, "'required' must be an array");
      req = k;
    } else if (!strcmp(key, "patternProperties") && k->kind == ML_JSON_OBJECT && k->n && (v->types & T_OBJ)) {
      if (v->pprops) return schema_fail(&c->b, n, "unsupported keyword 'patternProperties' (in more than one schema of a value)");
      v->pprops = k, v->pprops_at = n;
    } else if (!strcmp(key, "patternProperties") || !strcmp(key, "dependencies") || !strcmp(key, "dependentRequired") ||
               !strcmp(key, "dependentSchemas") || !strcmp(key, "propertyNames")) {
      if ((k->kind == ML_JSON_OBJECT && k->n == 0) || k->kind == ML_JSON_TRUE) continue;
      if (!(v->types & T_OBJ)) continue;
      return schema_fail(&c->b, n, "unsupported keyword '%s'", key);
    } else if (!strcmp(key, "minProperties") || !strcmp(key, "maxProperties")) {
      uint64_t x = 0;
      if (get_count(c, n, k, &x) < 0) return -1;
      if (key[1] == 'i') { if (x > v->min_props) v->min_props = x; }
      else if (x < v->max_props) v->max_props = x;
      v->props_at = n;
    } else if (!strcmp(key, "not")) {
      if (apply_not(c, v, n, k) < 0) return -1;
    } else if (!strcmp(key, "if")) {
      if (ml_json_get(n, "then") || ml_json_get(n, "else")) return schema_fail(&c->b, n, "unsupported keyword 'if'");
    }
    /* anyOf/oneOf/allOf/$ref are structure; anything else is an annotation or unknown,
     * which JSON Schema ignores */
  }
  /* numeric bounds of this member */
  if (lo.set) {
    if (lo.exclusive == 2) lo.exclusive = 1;
    num_bound *d = &v->num.lo;
    if (!d->set || num_lt(d, &lo) || (!num_lt(&lo, d) && lo.exclusive)) *d = lo;
    v->num.at = n;
  }
  if (hi.set) {
    if (hi.exclusive == 2) hi.exclusive = 1;
    num_bound *d = &v->num.hi;
    if (!d->set || num_lt(&hi, d) || (!num_lt(d, &hi) && hi.exclusive)) *d = hi;
    v->num.at = n;
  }
  if (v->num.lo.set || v->num.hi.set) v->num.at = n;
  /* arrays */
  if (prefix || has_items_kw || additional_items) {
    void *na = realloc(v->arr, (size_t)(v->narr + 1) * sizeof *v->arr);
    if (!na) return schema_fail(&c->b, NULL, "out of memory");
    v->arr = na;
    v->arr[v->narr].prefix = prefix;
    v->arr[v->narr].rest = prefix && ml_json_get(n, "prefixItems") ? items : prefix ? additional_items : items;
    v->narr++;
  }
  /* objects: properties in order, then what additionalProperties says of the others */
  if (props) {
    for (uint32_t i = 0; i < props->n; i++) {
      const ml_json *pk = props->kids[i];
      prop *p = find_prop(v, pk->key, pk->key_len);
      if (!p) {
        if (!(p = add_prop(c, v, pk->key, pk->key_len, pk))) return -1;
        /* members before this one did not list it: their additionalProperties apply */
        if (!first_obj) {
          if (v->additional_false) ms_push(&p->schemas, NULL, 0);
          for (int j = 0; j < v->additional.n; j++) ms_push(&p->schemas, v->additional.m[j].node, 0);
        }
      }
      if (ms_push(&p->schemas, pk, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
      p->listed_by = n;
    }
  }
  if (obj_kw || req) {
    /* properties this member does not list take its additionalProperties */
    for (int i = 0; i < v->nprops; i++) {
      prop *p = &v->props[i];
      if (p->listed_by == n || !addl) continue;
      if (addl->kind == ML_JSON_FALSE) ms_push(&p->schemas, NULL, 0);
      else if (addl->kind != ML_JSON_TRUE) ms_push(&p->schemas, addl, 0);
    }
    if (addl) {
      if (addl->kind == ML_JSON_FALSE) v->additional_false = 1;
      else if (addl->kind != ML_JSON_TRUE && ms_push(&v->additional, addl, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
    }
  }
  if (req) {
    for (uint32_t i = 0; i < req->n; i++) {
      if (!is_str(req->kids[i])) return schema_fail(&c->b, n, "'required' must list strings");
      int dup = 0;
      for (int j = 0; j < v->nrequired && !dup; j++) dup = v->required[j]->n == req->kids[i]->n && !memcmp(v->required[j]->str, req->kids[i]->str, req->kids[i]->n);
      if (dup) continue;
      const ml_json **nr = realloc(v->required, (size_t)(v->nrequired + 1) * sizeof *nr);
      if (!nr) return schema_fail(&c->b, NULL, "out of memory");
      v->required = nr;
      v->required[v->nrequired++] = req->kids[i];
    }
  }
  return 0;
}

static int read_view(comp *c, const mset *s, view *v) {
  memset(v, 0, sizeof *v);
  v->types = T_ALL;
  v->str.max_len = UINT64_MAX;
  v->max_items = UINT64_MAX;
  v->max_props = UINT64_MAX;
  int first_obj = 1;
  for (int i = 0; i < s->n; i++) {
    if (collect(c, v, &s->m[i], first_obj) < 0) return -1;
    if (ml_json_get(s->m[i].node, "properties") || ml_json_get(s->m[i].node, "additionalProperties")) first_obj = 0;
    if (ml_json_get(s->m[i].node, "properties") || ml_json_get(s->m[i].node, "additionalProperties") ||
        ml_json_get(s->m[i].node, "patternProperties"))
      v->obj_members++;
  }
  return 0;
}

/* ---------------------------------------------------------------- emission */

static const char *compile_set(comp *c, mset *s, const char *hint);
static int emit_object_body(comp *c, view *v, const char *hint, const char *pkey, sbuf *o);

/* rule for the intersection of `nodes` (NULL stands for false) */
static const char *compile_nodes(comp *c, const mset *nodes, const char *hint) {
  mset s = {0};
  int rc = 0;
  for (int i = 0; i < nodes->n && !rc; i++) rc = nodes->m[i].node ? flatten(c, &s, nodes->m[i].node, 0, 0) : 1;
  const char *r = rc < 0 ? NULL : rc > 0 ? EMPTY : compile_set(c, &s, hint);
  ms_free(&s);
  return r;
}

static const char *any_value(comp *c) { return "json-value"; }

static void put_ws(comp *c, sbuf *o) {
  if (c->ws[0]) sb_printf(o, " %s ", c->ws);
  else sb_puts(o, " ");
}

static int emit_literal(comp *c, const ml_json *v, sbuf *o) {
  switch (v->kind) {
  case ML_JSON_NULL: sb_puts(o, "\"null\""); return 0;
  case ML_JSON_TRUE: sb_puts(o, "\"true\""); return 0;
  case ML_JSON_FALSE: sb_puts(o, "\"false\""); return 0;
  case ML_JSON_NUMBER: leaf_number_literal(o, v->str); return 0;
  case ML_JSON_STRING: leaf_string_literal(o, v->str, v->n); return 0;
  case ML_JSON_ARRAY:
  case ML_JSON_OBJECT: {
    int obj = v->kind == ML_JSON_OBJECT;
    sb_puts(o, obj ? "\"{\"" : "\"[\"");
    for (uint32_t i = 0; i < v->n; i++) {
      put_ws(c, o);
      if (i) {
        sb_puts(o, "\",\"");
        put_ws(c, o);
      }
      if (obj) {
        leaf_string_literal(o, v->kids[i]->key, v->kids[i]->key_len);
        put_ws(c, o);
        sb_puts(o, "\":\"");
        put_ws(c, o);
      }
      emit_literal(c, v->kids[i], o);
    }
    put_ws(c, o);
    sb_puts(o, obj ? "\"}\"" : "\"]\"");
    return 0;
  }
  }
  return 0;
}

/* does scalar `x` satisfy the view's own constraints? 1 yes, 0 no, -1 error */
static int scalar_ok(comp *c, const view *v, const ml_json *x) {
  unsigned t = value_type(x);
  if (!(v->types & t) && !(t == T_INT && (v->types & T_FRAC))) return 0;
  if (x->kind == ML_JSON_STRING) return leaf_string_check(&c->b, &v->str, x->str, x->n);
  if (x->kind == ML_JSON_NUMBER) {
    if (v->num.lo.set && (x->num < v->num.lo.value->num || (v->num.lo.exclusive && x->num == v->num.lo.value->num))) return 0;
    if (v->num.hi.set && (x->num > v->num.hi.value->num || (v->num.hi.exclusive && x->num == v->num.hi.value->num))) return 0;
  }
  return 1;
}

static int view_has_structure(const view *v) {
  return v->narr || v->min_items || v->max_items != UINT64_MAX || v->unique_at || v->nprops || v->additional.n ||
         v->additional_false || v->nrequired || v->min_props || v->max_props != UINT64_MAX;
}

static int emit_array(comp *c, view *v, const char *hint, sbuf *o) {
  uint64_t mn = v->min_items, mx = v->max_items;
  /* positions with their own schemas: the longest prefix of any member */
  int npos = 0;
  for (int i = 0; i < v->narr; i++)
    if (v->arr[i].prefix && (int)v->arr[i].prefix->n > npos) npos = (int)v->arr[i].prefix->n;
  if ((uint64_t)npos > mx) npos = (int)mx;
  const char **pos = calloc((size_t)npos + 1, sizeof *pos);
  if (!pos) return schema_fail(&c->b, NULL, "out of memory");
  char h[80];
  c->nest++;
  for (int j = 0; j <= npos; j++) {
    mset nodes = {0};
    for (int i = 0; i < v->narr; i++) {
      const ml_json *sch = v->arr[i].prefix && j < (int)v->arr[i].prefix->n ? v->arr[i].prefix->kids[j] : v->arr[i].rest;
      if (sch) ms_push(&nodes, sch, 0);
    }
    sub_hint(h, sizeof h, hint, j < npos ? "item" : "items");
    pos[j] = nodes.n ? compile_nodes(c, &nodes, h) : any_value(c);
    ms_free(&nodes);
    if (!pos[j]) { c->nest--; free(pos); return -1; }
    if (pos[j] == EMPTY) {
      if ((uint64_t)j < mx) mx = (uint64_t)j;
      if (j < npos) npos = j;
      break;
    }
  }
  c->nest--;
  if (mn > mx) { free(pos); return 1; }
  if (v->unique_at && mx > 1) { free(pos); return schema_fail(&c->b, v->unique_at, "unsupported keyword 'uniqueItems'"); }
  uint64_t lim = c->b.opts.max_repeat;
  if ((mx != UINT64_MAX && mx > lim) || mn > lim) {
    free(pos);
    return schema_fail(&c->b, v->any_member, "minItems/maxItems %llu is over the compile budget (%llu)",
                       (unsigned long long)(mx != UINT64_MAX && mx > lim ? mx : mn), (unsigned long long)lim);
  }
  sbuf sep = {0};
  put_ws(c, &sep);
  sb_puts(&sep, "\",\"");
  put_ws(c, &sep);
  sb_puts(o, "\"[\"");
  put_ws(c, o);
  /* nested: v0 ( sep v1 ( sep v2 ( sep rest{a,b} )? )? )? */
  int open = 0;
  uint64_t j = 0;
  for (; j < (uint64_t)npos && j < mx; j++) {
    int optional = j >= mn;
    if (optional) sb_puts(o, "( ");
    if (j) sb_puts(o, sep.p);
    sb_puts(o, pos[j]);
    sb_puts(o, " ");
    open += optional;
  }
  const char *rest = pos[npos];
  if (j < mx && rest != EMPTY) {
    uint64_t rmin = mn > j ? mn - j : 0, rmax = mx == UINT64_MAX ? UINT64_MAX : mx - j;
    if (j == 0) {
      /* rest ( sep rest ){rmin-1, rmax-1}, optional when rmin == 0 */
      if (!rmin) sb_puts(o, "( ");
      sb_printf(o, "%s ( %s%s )", rest, sep.p, rest);
      uint64_t a = rmin ? rmin - 1 : 0, b = rmax == UINT64_MAX ? UINT64_MAX : rmax - 1;
      if (a == 0 && b == UINT64_MAX) sb_puts(o, "*");
      else if (b == UINT64_MAX) sb_printf(o, "{%llu,}", (unsigned long long)a);
      else if (a == b) sb_printf(o, "{%llu}", (unsigned long long)a);
      else sb_printf(o, "{%llu,%llu}", (unsigned long long)a, (unsigned long long)b);
      if (!rmin) sb_puts(o, " )?");
      sb_puts(o, " ");
    } else {
      sb_printf(o, "( %s%s )", sep.p, rest);
      if (rmin == 0 && rmax == UINT64_MAX) sb_puts(o, "*");
      else if (rmax == UINT64_MAX) sb_printf(o, "{%llu,}", (unsigned long long)rmin);
      else if (rmin == rmax) sb_printf(o, "{%llu}", (unsigned long long)rmin);
      else sb_printf(o, "{%llu,%llu}", (unsigned long long)rmin, (unsigned long long)rmax);
      sb_puts(o, " ");
    }
  }
  while (open--) sb_puts(o, ")? ");
  put_ws(c, o);
  sb_puts(o, "\"]\"");
  sb_free(&sep);
  free(pos);
  return 0;
}

/* patternProperties, where they are exact without a regex complement: one pattern that
 * matters (the others' schemas accept anything), and either additionalProperties false
 * (keys not listed must match it: their language is the pattern's, when no listed name
 * matches it) or a pattern every key matches (unanchored, matching the empty string). A
 * listed name the pattern matches takes its schema too. Sets `key` to the keys' GBNF when
 * the pattern decides them. 0 done, -1 error, 1 the object allows nothing. */
static int apply_pattern_props(comp *c, view *v, sbuf *key) {
  const ml_json *pat = NULL;
  for (uint32_t i = 0; i < v->pprops->n; i++) {
    const ml_json *s = v->pprops->kids[i];
    if (s->kind == ML_JSON_TRUE || (s->kind == ML_JSON_OBJECT && is_annotation_only(s, "description"))) continue;
    if (pat) return schema_fail(&c->b, v->pprops_at, "unsupported keyword 'patternProperties' (two patterns that constrain)");
    pat = s;
  }
  if (!pat) return 0;
  if (v->obj_members > 1)
    return schema_fail(&c->b, v->pprops_at, "unsupported keyword 'patternProperties' (beside properties of another schema)");
  ml_json re = {ML_JSON_STRING, pat->key_len, pat->key, NULL, 0, 0, NULL, NULL, 0};
  str_view sv;
  memset(&sv, 0, sizeof sv);
  sv.max_len = UINT64_MAX;
  sv.pattern = &re, sv.pattern_at = v->pprops_at;
  int anchors = memchr(pat->key, '^', pat->key_len) || memchr(pat->key, '$', pat->key_len);
  int universal = anchors ? 0 : leaf_string_check(&c->b, &sv, "", 0);
  if (universal < 0) return -1;
  if (!universal && !v->additional_false)
    return schema_fail(&c->b, v->pprops_at, "unsupported keyword 'patternProperties' (keys it does not match are allowed)");
  for (int i = 0; i < v->nprops; i++) {
    prop *p = &v->props[i];
    int m = leaf_string_check(&c->b, &sv, p->name, p->nlen);
    if (m < 0) return -1;
    if (m && !universal)
      return schema_fail(&c->b, v->pprops_at, "unsupported keyword 'patternProperties' (it matches the listed property '%s')", p->name);
    if (m && ms_push(&p->schemas, pat, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
  }
  /* required names not listed: additional entries, which the pattern decides */
  for (int i = 0; i < v->nrequired; i++) {
    const ml_json *r = v->required[i];
    if (find_prop(v, r->str, r->n)) continue;
    int m = leaf_string_check(&c->b, &sv, r->str, r->n);
    if (m < 0) return -1;
    prop *p = add_prop(c, v, r->str, r->n, r);
    if (!p) return -1;
    if (ms_push(&p->schemas, m ? pat : NULL, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
  }
  /* the other keys: all match (universal) or must (additionalProperties false) */
  v->additional.n = 0;
  v->additional_false = 0;
  if (ms_push(&v->additional, pat, 0) < 0) return schema_fail(&c->b, NULL, "out of memory");
  if (!universal) {
    int rc = leaf_string(&c->b, &sv, key);
    if (rc < 0) return -1;
    if (rc > 0) v->additional_false = 1; /* no key matches */
  }
  return 0;
}

/* the alternatives of an object's first entry, and the tail rules after it, with the
 * properties in the order `ord` (a permutation of 0..nprops-1); appended to `first` */
static int object_sequence(comp *c, view *v, const char **val, const char *addkv, const int *ord, const char *hint,
                           sbuf *first, int *any_required) {
  int k = v->nprops;
  char h[96];
  sbuf sep = {0};
  put_ws(c, &sep);
  sb_puts(&sep, "\",\"");
  put_ws(c, &sep);
  /* kv text of entry i (in order) */
  sbuf *kv = calloc((size_t)k + 1, sizeof *kv);
  if (!kv) { sb_free(&sep); return schema_fail(&c->b, NULL, "out of memory"); }
  for (int i = 0; i < k; i++) {
    int e = ord[i];
    if (val[e] == EMPTY) continue;
    leaf_string_literal(&kv[i], v->props[e].name, v->props[e].nlen);
    put_ws(c, &kv[i]);
    sb_puts(&kv[i], "\":\"");
    put_ws(c, &kv[i]);
    sb_puts(&kv[i], val[e]);
  }
  /* tail[i]: what may follow once something was written, from entry i on */
  const char **tail = calloc((size_t)k + 2, sizeof *tail);
  if (!tail) { free(kv), sb_free(&sep); return schema_fail(&c->b, NULL, "out of memory"); }
  sbuf b = {0};
  if (addkv) sb_printf(&b, "( %s%s )*", sep.p, addkv);
  else sb_puts(&b, "\"\"");
  sub_hint(h, sizeof h, hint, "tail");
  tail[k] = addkv ? leaf_rule(c, h, b.p) : "";
  sb_free(&b);
  for (int i = k - 1; i >= 1 && !c->b.failed; i--) {
    int e = ord[i];
    if (val[e] == EMPTY) { tail[i] = tail[i + 1]; continue; }
    if (v->props[e].required) sb_printf(&b, "%s%s %s", sep.p, kv[i].p, tail[i + 1]);
    else sb_printf(&b, "( %s%s )? %s", sep.p, kv[i].p, tail[i + 1]);
    sub_hint(h, sizeof h, hint, "tail");
    const char *name = new_name(c, h);
    if (name) put_rule(c, name, b.p);
    tail[i] = name;
    sb_free(&b);
  }
  if (c->b.failed) { free(kv), free(tail), sb_free(&sep); return -1; }
  /* first written entry: any optional one up to the first required one */
  int nalt = 0;
  for (int i = 0; i < k; i++) {
    int e = ord[i];
    if (val[e] == EMPTY) continue;
    if (nalt++) sb_puts(first, " | ");
    sb_printf(first, "%s %s", kv[i].p, tail[i + 1]);
    if (v->props[e].required) { *any_required = 1; break; }
  }
  for (int i = 0; i < k; i++) sb_free(&kv[i]);
  free(kv), free(tail);
  sb_free(&sep);
  return first->oom ? schema_fail(&c->b, NULL, "out of memory") : 0;
}

static int cmp_prop_name(const void *a, const void *b) {
  const prop *x = *(const prop *const *)a, *y = *(const prop *const *)b;
  int r = memcmp(x->name, y->name, x->nlen < y->nlen ? x->nlen : y->nlen);
  return r ? r : (x->nlen > y->nlen) - (x->nlen < y->nlen);
}

/* a key for the set of listed names (sorted, NUL-separated, behind a byte no GBNF body
 * starts with), so that objects with the same names share one key rule */
static void sig_of_names(const view *v, sbuf *sig) {
  const prop **ps = malloc((size_t)(v->nprops ? v->nprops : 1) * sizeof *ps);
  if (!ps) { sig->oom = 1; return; }
  for (int i = 0; i < v->nprops; i++) ps[i] = &v->props[i];
  qsort(ps, (size_t)v->nprops, sizeof *ps, cmp_prop_name);
  sb_put(sig, "\x01names", 6);
  for (int i = 0; i < v->nprops; i++) {
    sb_put(sig, ps[i]->name, ps[i]->nlen);
    sb_put(sig, "", 1);
  }
  free(ps);
}

static int emit_object(comp *c, view *v, const char *hint, sbuf *o) {
  sbuf pkey = {0}; /* the keys of additional entries when patternProperties decide them */
  if (v->pprops) {
    int prc = apply_pattern_props(c, v, &pkey);
    if (prc) { sb_free(&pkey); return prc; }
  }
  int rc = emit_object_body(c, v, hint, pkey.n ? pkey.p : NULL, o);
  sb_free(&pkey);
  return rc;
}

static int emit_object_body(comp *c, view *v, const char *hint, const char *pkey, sbuf *o) {
  /* required names that no properties list follow them, constrained as additional */
  for (int i = 0; i < v->nrequired; i++) {
    const ml_json *r = v->required[i];
    prop *p = find_prop(v, r->str, r->n);
    if (!p) {
      if (!(p = add_prop(c, v, r->str, r->n, r))) return -1;
      if (v->additional_false) ms_push(&p->schemas, NULL, 0);
      for (int j = 0; j < v->additional.n; j++) ms_push(&p->schemas, v->additional.m[j].node, 0);
    }
    p->required = 1;
  }
  int k = v->nprops;
  const char **val = calloc((size_t)k + 1, sizeof *val);
  if (!val) return schema_fail(&c->b, NULL, "out of memory");
  char h[96];
  int rc = 0, nreq = 0, nopt = 0;
  c->nest++;
  for (int i = 0; i < k && !rc; i++) {
    prop *p = &v->props[i];
    sub_hint(h, sizeof h, hint, p->name);
    val[i] = p->schemas.n ? compile_nodes(c, &p->schemas, h) : any_value(c);
    if (!val[i]) rc = -1;
    else if (val[i] == EMPTY && p->required) rc = 1;
    else if (val[i] != EMPTY) p->required ? nreq++ : nopt++;
  }
  const char *addval = NULL;
  if (!rc && !v->additional_false) {
    sub_hint(h, sizeof h, hint, "additional");
    addval = v->additional.n ? compile_nodes(c, &v->additional, h) : any_value(c);
    if (!addval) rc = -1;
    else if (addval == EMPTY) addval = NULL;
  }
  c->nest--;
  if (rc) { free(val); return rc; }
  /* min/maxProperties: only where the shape decides them */
  if (v->min_props > (uint64_t)nreq && !(v->min_props == 1 && nreq == 0 && (nopt || addval))) {
    free(val);
    return schema_fail(&c->b, v->props_at, "unsupported keyword 'minProperties'");
  }
  if (v->max_props != UINT64_MAX && (addval || v->max_props < (uint64_t)(nreq + nopt))) {
    if (v->max_props < (uint64_t)nreq) { free(val); return 1; }
    free(val);
    return schema_fail(&c->b, v->props_at, "unsupported keyword 'maxProperties'");
  }
  if (v->min_props == 1 && nreq == 0 && !nopt && !addval) { free(val); return 1; }
  /* the key of an additional property: any string but the listed names */
  const char *addkv = NULL;
  sbuf t = {0};
  if (addval) {
    const ml_json **names = malloc((size_t)(k ? k : 1) * sizeof *names);
    if (!names) { free(val); return schema_fail(&c->b, NULL, "out of memory"); }
    for (int i = 0; i < k; i++) names[i] = v->props[i].key;
    const char *keyrule = NULL;
    sbuf key = {0}, sig = {0};
    if (pkey) sb_puts(&key, pkey), rc = 0;
    else {
      /* objects with the same names share the rule: look it up before building the trie */
      sig_of_names(v, &sig);
      entry *e = sig.oom ? NULL : map_find(&c->bodies, sig.p, sig.n, 0);
      if (e && e->val) keyrule = e->val;
      rc = keyrule ? 0 : leaf_key_not_in(&c->b, names, k, &key);
    }
    free(names);
    if (!keyrule && rc >= 0) {
      keyrule = leaf_rule(c, pkey ? "key-pattern" : k ? "key" : "json-string", key.p);
      entry *e = keyrule && sig.n && !sig.oom ? map_find(&c->bodies, sig.p, sig.n, 1) : NULL;
      if (e && !e->val) e->val = strdup(keyrule);
    }
    sb_free(&key), sb_free(&sig);
    if (!keyrule) { free(val); return -1; }
    sb_printf(&t, "%s", keyrule);
    put_ws(c, &t);
    sb_printf(&t, "\":\"");
    put_ws(c, &t);
    sb_puts(&t, addval);
    sub_hint(h, sizeof h, hint, "kv");
    addkv = leaf_rule(c, h, t.p);
    sb_free(&t);
    if (!addkv) { free(val); return -1; }
  }
  /* the properties in definition order; where the required ones are not already first,
   * also required first (in `required` order), then the others: both orders occur in
   * instances, and either is exactly the same object */
  int *ord = malloc((size_t)(k ? k : 1) * 2 * sizeof *ord);
  if (!ord) { free(val); return schema_fail(&c->b, NULL, "out of memory"); }
  int *ord2 = ord + k, n2 = 0, differs = 0;
  for (int i = 0; i < k; i++) ord[i] = i;
  for (int r = 0; r < v->nrequired; r++) {
    prop *p = find_prop(v, v->required[r]->str, v->required[r]->n);
    if (p && val[p - v->props] != EMPTY) ord2[n2++] = (int)(p - v->props);
  }
  for (int i = 0; i < k; i++)
    if (!v->props[i].required || val[i] == EMPTY) ord2[n2++] = i;
  for (int i = 0, j = 0; i < k; i++) {
    if (val[ord[i]] == EMPTY) continue;
    while (val[ord2[j]] == EMPTY) j++;
    if (ord[i] != ord2[j++]) { differs = 1; break; }
  }
  sbuf first = {0};
  int any_required = 0;
  rc = object_sequence(c, v, val, addkv, ord, hint, &first, &any_required);
  if (!rc && differs) {
    sb_puts(&first, " | ");
    rc = object_sequence(c, v, val, addkv, ord2, hint, &first, &any_required);
  }
  free(ord), free(val);
  if (rc) { sb_free(&first); return rc; }
  /* additional entries: ( sep add )* after one of them, a rule shared by the two uses below */
  sbuf sep = {0};
  const char *loop = NULL;
  if (addkv && ((first.n && c->nest == 0) || !any_required)) {
    sbuf lp = {0};
    put_ws(c, &sep);
    sb_puts(&sep, "\",\"");
    put_ws(c, &sep);
    sb_printf(&lp, "( %s%s )*", sep.p, addkv);
    sub_hint(h, sizeof h, hint, "tail");
    loop = leaf_rule(c, h, lp.p);
    sb_free(&lp);
    if (!loop) { sb_free(&sep), sb_free(&first); return -1; }
  }
  if (addkv && first.n && c->nest == 0) {
    /* the top-level object (where documents put $schema, $id, title) also takes additional
     * entries before the listed ones (F, the alternatives above): ( add ( sep add )* sep )?
     * ( F ); the key after each separator decides, so the parse is unique. It copies the
     * key rule once more, so only there (anywhere, +8% automaton states in all) */
    sbuf nf = {0};
    sb_printf(&nf, "( %s %s%s )? ( %s )", addkv, loop, sep.p, first.p);
    sb_free(&first);
    first = nf;
    if (first.oom) { sb_free(&sep), sb_free(&first); return schema_fail(&c->b, NULL, "out of memory"); }
  }
  sb_free(&sep);
  /* additional entries alone */
  if (addkv && !any_required) sb_printf(&first, "%s%s %s", first.n ? " | " : "", addkv, loop);
  sb_puts(o, "\"{\"");
  put_ws(c, o);
  if (first.n) {
    int optional = !any_required && v->min_props == 0;
    sb_printf(o, "( %s )%s", first.p, optional ? "?" : "");
    put_ws(c, o);
  }
  sb_puts(o, "\"}\"");
  sb_free(&first);
  return 0;
}

/* the alternatives of a view without branches; 1 when it allows nothing */
static int emit_view(comp *c, view *v, const char *hint, sbuf *o) {
  int n = 0, rc;
  char h[96];
  if (v->has_enum) {
    for (int i = 0; i < v->nenum; i++) {
      const ml_json *x = v->enumv[i];
      if (x->kind == ML_JSON_ARRAY || x->kind == ML_JSON_OBJECT) {
        if (!(v->types & value_type(x))) continue;
        if (view_has_structure(v)) return schema_fail(&c->b, v->any_member, "unsupported keyword 'enum' (array or object values with other constraints)");
      } else {
        int ok = scalar_ok(c, v, x);
        if (ok < 0) return -1;
        if (!ok) continue;
      }
      if (n++) sb_puts(o, " | ");
      emit_literal(c, x, o);
    }
    return n ? 0 : 1;
  }
  unsigned t = v->types;
  if (t & T_NULL) sb_puts(o, n++ ? " | \"null\"" : "\"null\"");
  if (t & T_BOOL) sb_puts(o, n++ ? " | \"true\" | \"false\"" : "\"true\" | \"false\"");
  if (t & (T_INT | T_FRAC)) {
    sbuf b = {0};
    v->num.integer = !(t & T_FRAC);
    if (!v->num.at) v->num.at = v->any_member;
    rc = leaf_number(&c->b, &v->num, &b);
    if (rc < 0) { sb_free(&b); return -1; }
    if (rc == 0) {
      sub_hint(h, sizeof h, hint, v->num.integer ? "int" : "num");
      const char *r = leaf_rule(c, v->num.lo.set || v->num.hi.set ? h : v->num.integer ? "integer" : "number", b.p);
      sb_free(&b);
      if (!r) return -1;
      if (n++) sb_puts(o, " | ");
      sb_puts(o, r);
    }
    sb_free(&b);
  }
  if (t & T_STR) {
    sbuf b = {0};
    rc = leaf_string(&c->b, &v->str, &b);
    if (rc < 0) { sb_free(&b); return -1; }
    if (rc == 0) {
      sub_hint(h, sizeof h, hint, "str");
      int plain = !v->str.pattern && !v->str.format && !v->str.min_len && v->str.max_len == UINT64_MAX;
      const char *r = leaf_rule(c, plain ? "json-string" : h, b.p);
      if (!r) { sb_free(&b); return -1; }
      if (n++) sb_puts(o, " | ");
      sb_puts(o, r);
    }
    sb_free(&b);
  }
  if (t & T_ARR) {
    sbuf b = {0};
    rc = emit_array(c, v, hint, &b);
    if (rc < 0) { sb_free(&b); return -1; }
    if (rc == 0) {
      if (n++) sb_puts(o, " | ");
      sb_puts(o, b.p);
    }
    sb_free(&b);
  }
  if (t & T_OBJ) {
    sbuf b = {0};
    rc = emit_object(c, v, hint, &b);
    if (rc < 0) { sb_free(&b); return -1; }
    if (rc == 0) {
      if (n++) sb_puts(o, " | ");
      sb_puts(o, b.p);
    }
    sb_free(&b);
  }
  return n ? 0 : 1;
}

/* ---------------------------------------------------------------- oneOf: disjoint branches */

static int disjoint_sets(comp *c, mset *a, mset *b, int depth);

/* numeric intervals that cannot meet */
static int bounds_apart(const num_view *x, const num_view *y) {
  if (x->hi.set && y->lo.set) {
    double h = x->hi.value->num, l = y->lo.value->num;
    if (h < l || (h == l && (x->hi.exclusive || y->lo.exclusive))) return 1;
  }
  if (y->hi.set && x->lo.set) {
    double h = y->hi.value->num, l = x->lo.value->num;
    if (h < l || (h == l && (y->hi.exclusive || x->lo.exclusive))) return 1;
  }
  return 0;
}

/* 1 when no value satisfies both views (proved), 0 when not proved, -1 error */
static int disjoint_views(comp *c, view *a, view *b, int depth) {
  unsigned ta = a->types, tb = b->types;
  if (a->has_enum) { ta = 0; for (int i = 0; i < a->nenum; i++) ta |= value_type(a->enumv[i]); ta &= a->types | (a->types & T_FRAC ? T_INT : 0); }
  if (b->has_enum) { tb = 0; for (int i = 0; i < b->nenum; i++) tb |= value_type(b->enumv[i]); tb &= b->types | (b->types & T_FRAC ? T_INT : 0); }
  unsigned common = ta & tb;
  if ((ta & T_FRAC) && (tb & T_INT)) common |= T_INT & tb; /* integers are numbers too */
  if ((tb & T_FRAC) && (ta & T_INT)) common |= T_INT & ta;
  if (!common) return 1;
  if (a->has_enum || b->has_enum) {
    view *e = a->has_enum ? a : b, *o = a->has_enum ? b : a;
    for (int i = 0; i < e->nenum; i++) {
      const ml_json *x = e->enumv[i];
      if (o->has_enum) {
        for (int j = 0; j < o->nenum; j++)
          if (ml_json_equal(x, o->enumv[j])) return 0;
        continue;
      }
      if (x->kind == ML_JSON_ARRAY || x->kind == ML_JSON_OBJECT) return 0;
      int ok = scalar_ok(c, o, x);
      if (ok < 0) return -1;
      if (ok) return 0;
    }
    return 1;
  }
  /* every common type must be told apart */
  if (common & (T_NULL | T_BOOL | T_STR | T_ARR)) return 0;
  if (common & (T_INT | T_FRAC) && !bounds_apart(&a->num, &b->num)) return 0;
  if (common & T_OBJ) {
    int apart = 0;
    for (int i = 0; i < a->nprops && !apart; i++) {
      prop *p = &a->props[i];
      int req_a = 0;
      for (int r = 0; r < a->nrequired; r++)
        if (!strcmp(a->required[r]->str, p->name)) req_a = 1;
      prop *q = find_prop(b, p->name, p->nlen);
      int req_b = 0;
      for (int r = 0; r < b->nrequired; r++)
        if (!strcmp(b->required[r]->str, p->name)) req_b = 1;
      if (req_a && !q && b->additional_false && !b->pprops) apart = 1;
      else if (req_a && req_b && q) {
        mset x = {0}, y = {0};
        int rc = 0;
        for (int j = 0; j < p->schemas.n && !rc; j++) rc = p->schemas.m[j].node ? flatten(c, &x, p->schemas.m[j].node, 0, 0) : 1;
        for (int j = 0; j < q->schemas.n && !rc; j++) rc = q->schemas.m[j].node ? flatten(c, &y, q->schemas.m[j].node, 0, 0) : 1;
        if (rc < 0) { ms_free(&x), ms_free(&y); return -1; }
        if (rc > 0) apart = 1;
        else {
          int d = disjoint_sets(c, &x, &y, depth + 1);
          if (d < 0) { ms_free(&x), ms_free(&y); return -1; }
          apart = d;
        }
        ms_free(&x), ms_free(&y);
      }
    }
    for (int i = 0; i < b->nrequired && !apart; i++) {
      const ml_json *r = b->required[i];
      if (!find_prop(a, r->str, r->n) && a->additional_false && !a->pprops) apart = 1;
    }
    if (!apart) return 0;
  }
  return 1;
}

static int disjoint_sets(comp *c, mset *a, mset *b, int depth) {
  if (depth > 8 || over_budget(c, NULL)) return c->b.failed ? -1 : 0;
  const ml_json *kw;
  unsigned bit;
  for (int side = 0; side < 2; side++) {
    mset *s = side ? b : a, *o = side ? a : b;
    int i = find_branch(s, &kw, &bit);
    if (i < 0) continue;
    if (kw->kind != ML_JSON_ARRAY) return 0;
    /* every branch of s apart from o */
    for (uint32_t j = 0; j < kw->n; j++) {
      mset t = {0};
      int rc = 0;
      for (int q = 0; q < s->n && !rc; q++) rc = ms_push(&t, s->m[q].node, s->m[q].skip | (q == i ? bit : 0));
      if (!rc) rc = flatten(c, &t, kw->kids[j], 0, 0);
      int d = rc < 0 ? -1 : rc > 0 ? 1 : disjoint_sets(c, &t, o, depth + 1);
      ms_free(&t);
      if (d <= 0) return d;
    }
    return 1;
  }
  view va, vb;
  if (read_view(c, a, &va) < 0) { view_free(&va); return -1; }
  if (read_view(c, b, &vb) < 0) { view_free(&va), view_free(&vb); return -1; }
  int d = disjoint_views(c, &va, &vb, depth);
  view_free(&va), view_free(&vb);
  return d;
}

/* ---------------------------------------------------------------- sets */

static int cmp_member(const void *x, const void *y) {
  const uintptr_t *a = x, *b = y;
  if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
  return a[1] < b[1] ? -1 : a[1] > b[1];
}

/* A set's memo key: its members as (node address, skip) pairs, sorted, so the key does not
 * depend on their order. Built field by field: a copy of the member structs carried their
 * padding, bytes the allocator left there, so equal sets sometimes missed each other and
 * which rules were shared (and their names) changed from one process to the next. */
static uintptr_t *set_key(const mset *s, size_t *klen) {
  uintptr_t *k = malloc((size_t)s->n * 2 * sizeof *k);
  if (!k) return NULL;
  for (int i = 0; i < s->n; i++) k[2 * i] = (uintptr_t)s->m[i].node, k[2 * i + 1] = s->m[i].skip;
  qsort(k, (size_t)s->n, 2 * sizeof *k, cmp_member);
  *klen = (size_t)s->n * 2 * sizeof *k;
  return k;
}

/* the members a branch brought (appended from index `from`) move to just after member
 * `at`, the one holding the anyOf/oneOf: properties then come in the order the schema
 * writes them, the branch's where the keyword stands (the order instances use) */
static void branch_in_place(mset *t, int from, int at) {
  int n = t->n - from;
  if (n <= 0 || from == at + 1) return;
  member tmp[16];
  member *buf = n <= 16 ? tmp : malloc((size_t)n * sizeof *buf);
  if (!buf) return; /* order only: the set stays right */
  memcpy(buf, t->m + from, (size_t)n * sizeof *buf);
  memmove(t->m + at + 1 + n, t->m + at + 1, (size_t)(from - at - 1) * sizeof *buf);
  memcpy(t->m + at + 1, buf, (size_t)n * sizeof *buf);
  if (buf != tmp) free(buf);
}

static const char *compile_set(comp *c, mset *s, const char *hint) {
  if (over_budget(c, s->n ? s->m[0].node : NULL)) return NULL;
  if (c->nest > 128) {
    schema_fail(&c->b, s->n ? s->m[0].node : NULL, "schema nesting deeper than the compile budget (128)");
    return NULL;
  }
  if (s->n == 0) return any_value(c);
  /* memo by members (order-free) */
  size_t klen;
  uintptr_t *sorted = set_key(s, &klen);
  if (!sorted) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  entry *e = map_find(&c->sets, (const char *)sorted, klen, 0);
  if (e) {
    free(sorted);
    if (e->state == 3) return EMPTY;
    if (e->state == 1 && e->nest == c->nest) {
      schema_fail(&c->b, s->m[0].node, "$ref cycle with no base case (left recursion)");
      return NULL;
    }
    if (e->state == 1) e->used = 1;
    return e->val;
  }
  const char *name = new_name(c, hint);
  e = name ? map_find(&c->sets, (const char *)sorted, klen, 1) : NULL;
  free(sorted);
  if (!e) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  e->val = strdup(name);
  e->state = 1;
  e->nest = c->nest;
  char *myname = e->val;
  if (!myname) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  sbuf body = {0};
  int rc = 0;
  const ml_json *kw;
  unsigned bit;
  int bi = find_branch(s, &kw, &bit);
  if (bi >= 0) {
    const char *kwname = bit == SK_ANYOF ? "anyOf" : "oneOf";
    if (kw->kind != ML_JSON_ARRAY || !kw->n) rc = schema_fail(&c->b, s->m[bi].node, "'%s' must be a non-empty array", kwname);
    if (!rc && bit == SK_ONEOF) {
      for (uint32_t i = 0; i < kw->n && !rc; i++)
        for (uint32_t j = i + 1; j < kw->n && !rc; j++) {
          mset x = {0}, y = {0};
          int fx = flatten(c, &x, kw->kids[i], 0, 0), fy = fx < 0 ? -1 : flatten(c, &y, kw->kids[j], 0, 0);
          int d = fx < 0 || fy < 0 ? -1 : (fx > 0 || fy > 0) ? 1 : disjoint_sets(c, &x, &y, 0);
          ms_free(&x), ms_free(&y);
          if (d < 0) rc = -1;
          else if (!d) rc = schema_fail(&c->b, s->m[bi].node, "unsupported keyword 'oneOf' (branches %u and %u may both match)", i, j);
        }
    }
    int nalt = 0;
    for (uint32_t i = 0; i < kw->n && !rc; i++) {
      mset t = {0};
      for (int q = 0; q < s->n && !rc; q++)
        if (ms_push(&t, s->m[q].node, s->m[q].skip | (q == bi ? bit : 0)) < 0) rc = schema_fail(&c->b, NULL, "out of memory");
      int f = rc ? -1 : flatten(c, &t, kw->kids[i], 0, 0);
      if (!f) branch_in_place(&t, s->n, bi);
      const char *r = f < 0 ? NULL : f > 0 ? EMPTY : compile_set(c, &t, hint);
      ms_free(&t);
      if (!r) rc = -1;
      else if (r != EMPTY) {
        if (nalt++) sb_puts(&body, " | ");
        sb_puts(&body, r);
      }
    }
    if (!rc && !nalt) rc = 1;
  } else {
    view v;
    rc = read_view(c, s, &v);
    if (!rc) rc = emit_view(c, &v, hint, &body);
    view_free(&v);
  }
  if (rc < 0 || body.oom) {
    sb_free(&body);
    if (!c->b.failed) schema_fail(&c->b, NULL, "out of memory");
    return NULL;
  }
  /* find our entry again: compile_set calls below may have grown the table */
  uintptr_t *again = set_key(s, &klen);
  if (!again) { sb_free(&body); schema_fail(&c->b, NULL, "out of memory"); return NULL; }
  e = map_find(&c->sets, (const char *)again, klen, 0);
  free(again);
  if (rc > 0) {
    e->state = 3;
    /* it may have been referenced while being compiled: a rule that can never finish
     * (the engine drops the alternatives that use it) */
    sb_printf(&c->rules, "%s ::= \"{\" %s\n", myname, myname);
    sb_free(&body);
    return EMPTY;
  }
  e->state = 2;
  /* a body that is one rule's name (a leaf's) stands for the set itself, unless a
   * recursive use already took the set's own name */
  if (!e->used && body.n && strspn(body.p, "abcdefghijklmnopqrstuvwxyz0123456789-") == body.n) {
    char *alias = strdup(body.p);
    sb_free(&body);
    if (!alias) { schema_fail(&c->b, NULL, "out of memory"); return NULL; }
    free(e->val);
    e->val = alias;
    return alias;
  }
  put_rule(c, myname, body.p);
  sb_free(&body);
  return myname;
}

/* ---------------------------------------------------------------- entry point */

char *ml_schema_to_gbnf(const char *text, size_t len, const ml_schema_opts *opts, size_t *out_len) {
  comp c;
  memset(&c, 0, sizeof c);
  if (opts) c.b.opts = *opts;
  if (!c.b.opts.max_bytes) c.b.opts.max_bytes = (size_t)4 << 20;
  if (!(c.b.opts.max_ms > 0)) c.b.opts.max_ms = 2000;
  if (!c.b.opts.max_repeat) c.b.opts.max_repeat = 4096;
  c.b.t0 = now_ms();
  c.ws = c.b.opts.compact ? "" : "ws";
  ml_json_doc *doc = ml_json_parse(text, len, 512);
  if (!doc) return NULL;
  c.root = ml_json_root(doc);
  const ml_json *draft = c.root->kind == ML_JSON_OBJECT ? ml_json_get(c.root, "$schema") : NULL;
  if (draft && draft->kind == ML_JSON_STRING)
    c.ref_alone = strstr(draft->str, "draft-03") || strstr(draft->str, "draft-04") || strstr(draft->str, "draft-06") ||
                  strstr(draft->str, "draft-07");
  const char *reserved[] = {"root", "ws", "char", "json-value", "json-object", "json-array", "json-string", "json-number"};
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++) map_find(&c.names, reserved[i], strlen(reserved[i]), 1);
  /* leaves equal to a builtin rule use it */
  static const char json_string_body[] = "\"\\\"\" char* \"\\\"\"";
  entry *js = map_find(&c.bodies, json_string_body, strlen(json_string_body), 1);
  if (js) js->val = strdup("json-string");
  mset s = {0};
  int rc = flatten(&c, &s, c.root, 0, 0);
  const char *top = rc < 0 ? NULL : rc > 0 ? EMPTY : compile_set(&c, &s, "value");
  ms_free(&s);
  char *out = NULL;
  if (top == EMPTY) schema_fail(&c.b, NULL, "the schema accepts no value");
  if (top && top != EMPTY && !c.b.failed) {
    sbuf g = {0};
    sb_printf(&g, "root ::= %s\n", top);
    sb_put(&g, c.rules.p ? c.rules.p : "", c.rules.n);
    if (c.ws[0]) sb_puts(&g, "ws ::= [ \\t\\n\\r]*\n");
    sb_printf(&g, "char ::= %s\n", leaf_char_rule);
    sb_puts(&g, "json-string ::= \"\\\"\" char* \"\\\"\"\n");
    sb_printf(&g, "json-number ::= %s\n", leaf_number_rule);
    const char *w = c.ws[0] ? " ws " : " ";
    sb_printf(&g, "json-value ::= json-object | json-array | json-string | json-number | \"true\" | \"false\" | \"null\"\n");
    sb_printf(&g, "json-object ::= \"{\"%s( json-string%s\":\"%sjson-value (%s\",\"%sjson-string%s\":\"%sjson-value )* )?%s\"}\"\n",
              w, w, w, w, w, w, w, w);
    sb_printf(&g, "json-array ::= \"[\"%s( json-value (%s\",\"%sjson-value )* )?%s\"]\"\n", w, w, w, w);
    if (g.oom) { sb_free(&g); ml_seterr("out of memory"); }
    else if (g.n > c.b.opts.max_bytes) {
      ml_seterr("grammar larger than the compile budget (%zu bytes)", c.b.opts.max_bytes);
      sb_free(&g);
    } else {
      out = g.p;
      if (out_len) *out_len = g.n;
    }
  }
  sb_free(&c.rules);
  map_free(&c.sets), map_free(&c.bodies), map_free(&c.names);
  ml_json_free(doc);
  return out;
}
