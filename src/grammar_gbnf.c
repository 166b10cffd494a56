/* grammar_gbnf.c: the GBNF parser (llama.cpp's dialect) and the AST it builds.
 *
 * The dialect, as llama.cpp's grammar parser reads it: rules `name ::= alternatives`, names
 * of [a-zA-Z0-9-]; sequences of "literals", [classes] (ranges, ^ negation), rule names,
 * (groups), `.` (any character), each optionally followed by * + ? {m} {m,} {m,n};
 * escapes \x \u \U \t \r \n \\ \" \[ \]; # comments; a newline ends a rule except inside
 * groups and after `|`. A rule defined twice keeps its last definition, as there.
 * Errors are stricter than llama.cpp's where it would accept nonsense silently: empty
 * classes, reversed ranges, code points beyond U+10FFFF, invalid UTF-8, NUL bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"

/* ---- the AST ---- */

void gx_ast_free(gx_ast *a) {
  free(a->nodes);
  free(a->kids);
  free(a->ranges);
  free(a->bytes);
  free(a->rules);
  free(a->names);
  free(a->rhash);
  memset(a, 0, sizeof *a);
}

/* Grow *p (elements of size sz) to hold need elements. 0 or -1. */
static int grow(void *pp, int32_t *cap, int32_t need, size_t sz) {
  if (need <= *cap) return 0;
  if (need > INT32_MAX / 2) return ml_seterr("grammar too large"), -1;
  int32_t nc = *cap ? *cap : 16;
  while (nc < need) nc *= 2;
  void *np = realloc(*(void **)pp, (size_t)nc * sz);
  if (!np) return ml_seterr("out of memory (grammar)"), -1;
  *(void **)pp = np;
  *cap = nc;
  return 0;
}

int32_t gx_node_new(gx_ast *a, int kind, int32_t x, int32_t y, int32_t z, int32_t pos) {
  if (grow(&a->nodes, &a->cap_nodes, a->n_nodes + 1, sizeof *a->nodes) < 0) return -1;
  gx_node *n = &a->nodes[a->n_nodes];
  n->kind = kind;
  n->a = x;
  n->b = y;
  n->c = z;
  n->pos = pos;
  return a->n_nodes++;
}

int32_t gx_kids_add(gx_ast *a, const int32_t *k, int32_t n) {
  if (grow(&a->kids, &a->cap_kids, a->n_kids + n, sizeof *a->kids) < 0) return -1;
  memcpy(a->kids + a->n_kids, k, (size_t)n * sizeof *k);
  a->n_kids += n;
  return a->n_kids - n;
}

int32_t gx_ranges_add(gx_ast *a, const uint32_t *r, int32_t npairs) {
  if (grow(&a->ranges, &a->cap_ranges, a->n_ranges + 2 * npairs, sizeof *a->ranges) < 0) return -1;
  memcpy(a->ranges + a->n_ranges, r, (size_t)npairs * 2 * sizeof *r);
  a->n_ranges += 2 * npairs;
  return a->n_ranges - 2 * npairs;
}

int32_t gx_bytes_add(gx_ast *a, const void *b, int32_t n) {
  if (grow(&a->bytes, &a->cap_bytes, a->n_bytes + n, 1) < 0) return -1;
  if (n) memcpy(a->bytes + a->n_bytes, b, (size_t)n);
  a->n_bytes += n;
  return a->n_bytes - n;
}

static uint32_t name_hash(const char *s, int32_t n) {
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

int32_t gx_rule_get(gx_ast *a, const char *name, int32_t len, int32_t pos) {
  if (a->hcap == 0 || a->n_rules * 2 >= a->hcap) {
    int32_t nc = a->hcap ? a->hcap * 2 : 64;
    int32_t *nh = malloc((size_t)nc * sizeof *nh);
    if (!nh) return ml_seterr("out of memory (grammar)"), -1;
    for (int32_t i = 0; i < nc; i++) nh[i] = -1;
    for (int32_t r = 0; r < a->n_rules; r++) {
      uint32_t h = name_hash(a->names + a->rules[r].name, a->rules[r].name_len) & (uint32_t)(nc - 1);
      while (nh[h] >= 0) h = (h + 1) & (uint32_t)(nc - 1);
      nh[h] = r;
    }
    free(a->rhash);
    a->rhash = nh;
    a->hcap = nc;
  }
  uint32_t h = name_hash(name, len) & (uint32_t)(a->hcap - 1);
  for (; a->rhash[h] >= 0; h = (h + 1) & (uint32_t)(a->hcap - 1)) {
    const gx_rule *r = &a->rules[a->rhash[h]];
    if (r->name_len == len && memcmp(a->names + r->name, name, (size_t)len) == 0) return a->rhash[h];
  }
  if (grow(&a->rules, &a->cap_rules, a->n_rules + 1, sizeof *a->rules) < 0) return -1;
  if (grow(&a->names, &a->cap_names, a->n_names + len + 1, 1) < 0) return -1;
  gx_rule *r = &a->rules[a->n_rules];
  r->name = a->n_names;
  r->name_len = len;
  r->body = -1;
  r->pos = pos;
  memcpy(a->names + a->n_names, name, (size_t)len);
  a->names[a->n_names + len] = 0;
  a->n_names += len + 1;
  a->rhash[h] = a->n_rules;
  return a->n_rules++;
}

static int cmp_pair(const void *x, const void *y) {
  const uint32_t *a = x, *b = y;
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1];
}

int32_t gx_class_node(gx_ast *a, uint32_t *p, int32_t np, int negate, int32_t pos) {
  qsort(p, (size_t)np, 2 * sizeof *p, cmp_pair);
  int32_t m = 0; /* merge overlapping and adjacent pairs */
  for (int32_t i = 0; i < np; i++) {
    if (m > 0 && p[2 * i] <= p[2 * (m - 1) + 1] + 1) {
      if (p[2 * i + 1] > p[2 * (m - 1) + 1]) p[2 * (m - 1) + 1] = p[2 * i + 1];
    } else {
      p[2 * m] = p[2 * i];
      p[2 * m + 1] = p[2 * i + 1];
      m++;
    }
  }
  /* complement and surrogate removal into a fresh list: at most m + 2 pairs (on the
   * stack for the usual small class: grammars from schemas hold thousands of classes) */
  uint32_t qs[64], rs[128];
  uint32_t *q = (size_t)m + 3 <= 32 ? qs : malloc(((size_t)m + 3) * 2 * sizeof *q);
  if (!q) return ml_seterr("out of memory (grammar)"), -1;
  int32_t nq = 0;
  if (negate) {
    uint32_t next = 0;
    for (int32_t i = 0; i < m; i++) {
      if (p[2 * i] > next) q[2 * nq] = next, q[2 * nq + 1] = p[2 * i] - 1, nq++;
      next = p[2 * i + 1] + 1;
    }
    if (next <= 0x10FFFF) q[2 * nq] = next, q[2 * nq + 1] = 0x10FFFF, nq++;
  } else {
    memcpy(q, p, (size_t)m * 2 * sizeof *q);
    nq = m;
  }
  /* cut out D800-DFFF (no UTF-8 encoding) */
  uint32_t *r = (size_t)nq * 2 + 2 <= 64 ? rs : malloc(((size_t)nq * 2 + 2) * 2 * sizeof *r);
  if (!r) return q != qs ? free(q) : (void)0, ml_seterr("out of memory (grammar)"), -1;
  int32_t nr = 0;
  for (int32_t i = 0; i < nq; i++) {
    uint32_t lo = q[2 * i], hi = q[2 * i + 1];
    if (hi < 0xD800 || lo > 0xDFFF) {
      r[2 * nr] = lo, r[2 * nr + 1] = hi, nr++;
      continue;
    }
    if (lo < 0xD800) r[2 * nr] = lo, r[2 * nr + 1] = 0xD7FF, nr++;
    if (hi > 0xDFFF) r[2 * nr] = 0xE000, r[2 * nr + 1] = hi, nr++;
  }
  if (q != qs) free(q);
  int32_t off = gx_ranges_add(a, r, nr);
  if (r != rs) free(r);
  if (off < 0) return -1;
  return gx_node_new(a, GX_CLASS, off, nr, 0, pos);
}

int gx_err(const gx_ast *a, int32_t pos, const char *fmt, ...) {
  char msg[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (pos < 0 || !a->src) {
    ml_seterr("%s", msg);
    return -1;
  }
  int line = 1, col = 1;
  for (int32_t i = 0; i < pos && (size_t)i < a->src_len; i++) {
    if (a->src[i] == '\n') line++, col = 1;
    else if (((uint8_t)a->src[i] & 0xC0) != 0x80) col++; /* columns count characters */
  }
  if (a->what && strcmp(a->what, "regex") == 0) ml_seterr("%s at position %d", msg, col);
  else ml_seterr("%s at line %d, column %d", msg, line, col);
  return -1;
}

int gx_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
  uint8_t c = s[0];
  if (c < 0x80) return *cp = c, 1;
  int len;
  uint32_t v, min;
  if (c >= 0xC2 && c < 0xE0) len = 2, v = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c < 0xF0) len = 3, v = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c < 0xF5) len = 4, v = c & 0x07, min = 0x10000;
  else return 0;
  if ((size_t)len > n) return 0;
  for (int i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

int gx_utf8_encode(uint32_t cp, uint8_t *o) {
  if (cp < 0x80) return o[0] = (uint8_t)cp, 1;
  if (cp < 0x800) return o[0] = (uint8_t)(0xC0 | (cp >> 6)), o[1] = (uint8_t)(0x80 | (cp & 0x3F)), 2;
  if (cp < 0x10000) {
    o[0] = (uint8_t)(0xE0 | (cp >> 12));
    o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (uint8_t)(0xF0 | (cp >> 18));
  o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

/* ---- the parser ---- */

typedef struct gp {
  gx_ast *a;
  const char *s;
  int32_t n, i;
  int depth;
} gp;

static int at(const gp *p, int32_t k) { return p->i + k < p->n ? (uint8_t)p->s[p->i + k] : -1; }

static int is_word(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static void space(gp *p, int newline_ok) {
  while (p->i < p->n) {
    char c = p->s[p->i];
    if (c == ' ' || c == '\t' || (newline_ok && (c == '\r' || c == '\n'))) {
      p->i++;
    } else if (c == '#') {
      while (p->i < p->n && p->s[p->i] != '\r' && p->s[p->i] != '\n') p->i++;
    } else {
      break;
    }
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int end_err(gp *p) { return gx_err(p->a, p->i, "unexpected end of input"); }

/* One character of a literal or a class (escapes, UTF-8) into *cp. 0 or -1. */
static int parse_char(gp *p, uint32_t *cp) {
  int32_t start = p->i;
  if (p->i >= p->n) return end_err(p);
  if (p->s[p->i] == '\\') {
    int e = at(p, 1);
    int nhex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (nhex) {
      uint32_t v = 0;
      for (int k = 0; k < nhex; k++) {
        int h = hexval(at(p, 2 + k));
        if (h < 0) return gx_err(p->a, start, "expecting %d hex digits after '\\%c'", nhex, e);
        v = v << 4 | (uint32_t)h;
      }
      if (v > 0x10FFFF) return gx_err(p->a, start, "code point U+%X is beyond U+10FFFF", (unsigned)v);
      if (v >= 0xD800 && v <= 0xDFFF) return gx_err(p->a, start, "surrogate code point U+%X", (unsigned)v);
      p->i += 2 + nhex;
      *cp = v;
      return 0;
    }
    switch (e) {
    case 't': *cp = '\t'; break;
    case 'r': *cp = '\r'; break;
    case 'n': *cp = '\n'; break;
    case '\\': case '"': case '[': case ']': *cp = (uint32_t)e; break;
    case -1: return end_err(p);
    default:
      if (e >= 0x20 && e < 0x7F) return gx_err(p->a, start, "unknown escape '\\%c'", e);
      return gx_err(p->a, start, "unknown escape");
    }
    p->i += 2;
    return 0;
  }
  if (p->s[p->i] == 0) return gx_err(p->a, start, "unexpected NUL byte");
  int len = gx_utf8_decode((const uint8_t *)p->s + p->i, (size_t)(p->n - p->i), cp);
  if (!len) return gx_err(p->a, start, "invalid UTF-8");
  p->i += len;
  return 0;
}

static int32_t parse_literal(gp *p) {
  int32_t start = p->i;
  p->i++; /* " */
  int32_t off = p->a->n_bytes;
  while (at(p, 0) != '"') {
    if (p->i >= p->n) return end_err(p);
    uint32_t cp;
    if (parse_char(p, &cp) < 0) return -1;
    uint8_t u[4];
    if (gx_bytes_add(p->a, u, gx_utf8_encode(cp, u)) < 0) return -1;
  }
  p->i++;
  int32_t len = p->a->n_bytes - off;
  if (len == 0) return gx_node_new(p->a, GX_EMPTY, 0, 0, 0, start);
  return gx_node_new(p->a, GX_BYTES, off, len, 0, start);
}

static int32_t parse_class(gp *p) {
  int32_t start = p->i;
  p->i++; /* [ */
  int negate = 0;
  if (at(p, 0) == '^') negate = 1, p->i++;
  uint32_t *pairs = NULL;
  int32_t np = 0, cap = 0;
  while (at(p, 0) != ']') {
    if (p->i >= p->n) return free(pairs), end_err(p);
    int32_t item = p->i;
    uint32_t lo, hi;
    if (parse_char(p, &lo) < 0) return free(pairs), -1;
    hi = lo;
    if (at(p, 0) == '-' && at(p, 1) != ']') {
      p->i++;
      if (p->i >= p->n) return free(pairs), end_err(p);
      if (parse_char(p, &hi) < 0) return free(pairs), -1;
      if (hi < lo) return free(pairs), gx_err(p->a, item, "invalid range (U+%X after U+%X)", (unsigned)hi, (unsigned)lo);
    }
    if (grow(&pairs, &cap, 2 * np + 2, sizeof *pairs) < 0) return free(pairs), -1;
    pairs[2 * np] = lo;
    pairs[2 * np + 1] = hi;
    np++;
  }
  p->i++;
  if (np == 0) return free(pairs), gx_err(p->a, start, "empty character class");
  int32_t r = gx_class_node(p->a, pairs, np, negate, start);
  free(pairs);
  if (r >= 0 && p->a->nodes[r].b == 0) return gx_err(p->a, start, "character class matches nothing");
  return r;
}

static int parse_count(gp *p, int32_t *v) {
  if (at(p, 0) < '0' || at(p, 0) > '9') return gx_err(p->a, p->i, "expecting an integer");
  int64_t x = 0;
  int32_t start = p->i;
  while (at(p, 0) >= '0' && at(p, 0) <= '9') {
    x = x * 10 + (at(p, 0) - '0');
    if (x > GX_MAX_REPEAT) return gx_err(p->a, start, "repetition count above %d", GX_MAX_REPEAT);
    p->i++;
  }
  *v = (int32_t)x;
  return 0;
}

static int32_t parse_alternates(gp *p, int nested);

static int32_t parse_sequence(gp *p, int nested) {
  int32_t *items = NULL, n = 0, cap = 0;
  int32_t start = p->i;
  for (;;) {
    int c = at(p, 0);
    int32_t item = -2, pos = p->i;
    if (c == '"') {
      item = parse_literal(p);
    } else if (c == '[') {
      item = parse_class(p);
    } else if (c >= 0 && is_word(c)) {
      while (p->i < p->n && is_word((uint8_t)p->s[p->i])) p->i++;
      int32_t r = gx_rule_get(p->a, p->s + pos, p->i - pos, pos);
      item = r < 0 ? -1 : gx_node_new(p->a, GX_REF, r, 0, 0, pos);
    } else if (c == '(') {
      if (++p->depth > GX_MAX_NEST) return free(items), gx_err(p->a, pos, "groups nested deeper than %d", GX_MAX_NEST);
      p->i++;
      space(p, 1);
      item = parse_alternates(p, 1);
      if (item >= 0 && at(p, 0) != ')') item = gx_err(p->a, p->i, "expecting ')'");
      p->i++;
      p->depth--;
    } else if (c == '.') {
      p->i++;
      uint32_t all[2] = {0, 0x10FFFF};
      item = gx_class_node(p->a, all, 1, 0, pos);
    } else if (c == '*' || c == '+' || c == '?' || c == '{') {
      if (n == 0) return free(items), gx_err(p->a, pos, "expecting an item before '%c'", c);
      int32_t lo = 0, hi = -1;
      p->i++;
      if (c == '+') lo = 1;
      else if (c == '?') hi = 1;
      else if (c == '{') {
        space(p, nested);
        if (parse_count(p, &lo) < 0) return free(items), -1;
        space(p, nested);
        if (at(p, 0) == '}') {
          hi = lo;
        } else if (at(p, 0) == ',') {
          p->i++;
          space(p, nested);
          if (at(p, 0) >= '0' && at(p, 0) <= '9') {
            if (parse_count(p, &hi) < 0) return free(items), -1;
            space(p, nested);
          }
          if (at(p, 0) != '}') return free(items), gx_err(p->a, p->i, "expecting '}'");
          if (hi >= 0 && hi < lo) return free(items), gx_err(p->a, pos, "repetition {%d,%d}: maximum below minimum", (int)lo, (int)hi);
        } else {
          return free(items), gx_err(p->a, p->i, "expecting ',' or '}'");
        }
        p->i++;
      }
      int chain = 0; /* x*** nests repetitions as groups nest */
      for (int32_t k = items[n - 1]; p->a->nodes[k].kind == GX_REP && chain <= GX_MAX_NEST; k = p->a->nodes[k].a) chain++;
      if (chain >= GX_MAX_NEST) return free(items), gx_err(p->a, pos, "repetitions nested deeper than %d", GX_MAX_NEST);
      int32_t r = gx_node_new(p->a, GX_REP, items[n - 1], lo, hi, pos);
      if (r < 0) return free(items), -1;
      items[n - 1] = r;
      space(p, nested);
      continue;
    } else {
      break;
    }
    if (item < 0) return free(items), -1;
    if (grow(&items, &cap, n + 1, sizeof *items) < 0) return free(items), -1;
    items[n++] = item;
    space(p, nested);
  }
  int32_t r;
  if (n == 0) r = gx_node_new(p->a, GX_EMPTY, 0, 0, 0, start);
  else if (n == 1) r = items[0];
  else {
    int32_t off = gx_kids_add(p->a, items, n);
    r = off < 0 ? -1 : gx_node_new(p->a, GX_SEQ, off, n, 0, start);
  }
  free(items);
  return r;
}

static int32_t parse_alternates(gp *p, int nested) {
  int32_t start = p->i;
  int32_t *alts = NULL, n = 0, cap = 0;
  for (;;) {
    int32_t s = parse_sequence(p, nested);
    if (s < 0) return free(alts), -1;
    if (grow(&alts, &cap, n + 1, sizeof *alts) < 0) return free(alts), -1;
    alts[n++] = s;
    if (at(p, 0) != '|') break;
    p->i++;
    space(p, 1);
  }
  int32_t r = alts[0];
  if (n > 1) {
    int32_t off = gx_kids_add(p->a, alts, n);
    r = off < 0 ? -1 : gx_node_new(p->a, GX_ALT, off, n, 0, start);
  }
  free(alts);
  return r;
}

static int parse_rule(gp *p) {
  int32_t start = p->i;
  if (!is_word(at(p, 0))) {
    if (at(p, 0) == 0) return gx_err(p->a, p->i, "unexpected NUL byte");
    return gx_err(p->a, p->i, "expecting a rule name");
  }
  while (p->i < p->n && is_word((uint8_t)p->s[p->i])) p->i++;
  int32_t r = gx_rule_get(p->a, p->s + start, p->i - start, start);
  if (r < 0) return -1;
  space(p, 0);
  if (!(at(p, 0) == ':' && at(p, 1) == ':' && at(p, 2) == '=')) return gx_err(p->a, p->i, "expecting '::='");
  p->i += 3;
  space(p, 1);
  int32_t body = parse_alternates(p, 0);
  if (body < 0) return -1;
  p->a->rules[r].body = body;
  if (at(p, 0) == '\r') p->i += at(p, 1) == '\n' ? 2 : 1;
  else if (at(p, 0) == '\n') p->i++;
  else if (p->i < p->n) {
    if (at(p, 0) == 0) return gx_err(p->a, p->i, "unexpected NUL byte");
    return gx_err(p->a, p->i, "expecting newline or end");
  }
  space(p, 1);
  return 0;
}

int gx_parse_gbnf(gx_ast *a, const char *text, size_t len, const char *root, int32_t *root_rule) {
  a->src = text;
  a->src_len = len;
  a->what = "gbnf";
  if (len > GX_MAX_TEXT) return ml_seterr("grammar text of %zu bytes (at most %zu)", len, GX_MAX_TEXT), -1;
  gp p = {a, text, (int32_t)len, 0, 0};
  space(&p, 1);
  if (p.i >= p.n) return ml_seterr("empty grammar"), -1;
  while (p.i < p.n)
    if (parse_rule(&p) < 0) return -1;
  for (int32_t r = 0; r < a->n_rules; r++)
    if (a->rules[r].body < 0)
      return gx_err(a, a->rules[r].pos, "undefined rule '%s'", a->names + a->rules[r].name);
  const char *rn = root ? root : "root";
  int32_t rl = (int32_t)strlen(rn);
  for (int32_t r = 0; r < a->n_rules; r++)
    if (a->rules[r].name_len == rl && memcmp(a->names + a->rules[r].name, rn, (size_t)rl) == 0) {
      *root_rule = r;
      return 0;
    }
  ml_seterr("grammar has no rule named '%s'", rn);
  return -1;
}
