/* grammar_regex.c: regular expressions and literal choices as grammars, and the public
 * constructors (GBNF, regex, choice), lifetime and registry of ml_grammar.
 *
 * The regex dialect is ECMAScript's (what JSON Schema `pattern` uses) without the parts
 * that are not regular or need context: look-around, back references, \b. The whole text
 * must match (^ and $ are accepted and mean the start and the end of the text). `.` is
 * any character but a line terminator; \d \w \s and their negations as ECMAScript defines
 * them; {n,m} and the lazy forms (*? +? ?? {n,m}?, same language).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"
#include "registry.h"

typedef struct rp {
  gx_ast *a;
  const char *s;
  int32_t n, i;
  int depth;
} rp;

static int rat(const rp *p, int32_t k) { return p->i + k < p->n ? (uint8_t)p->s[p->i + k] : -1; }

static int rerr(rp *p, int32_t pos, const char *msg) { return gx_err(p->a, pos, "%s", msg); }

typedef struct cpset {
  uint32_t *v; /* pairs */
  int32_t n, cap; /* pairs */
} cpset;

static int cp_add(cpset *c, uint32_t lo, uint32_t hi) {
  if (c->n == c->cap) {
    int32_t nc = c->cap ? c->cap * 2 : 16;
    uint32_t *p = realloc(c->v, (size_t)nc * 2 * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    c->v = p;
    c->cap = nc;
  }
  c->v[2 * c->n] = lo;
  c->v[2 * c->n + 1] = hi;
  c->n++;
  return 0;
}

/* the complement of a sorted, merged list, added to c */
static int cp_add_negated(cpset *c, const uint32_t *r, int32_t n) {
  uint32_t next = 0;
  for (int32_t i = 0; i < n; i++) {
    if (r[2 * i] > next && cp_add(c, next, r[2 * i] - 1) < 0) return -1;
    next = r[2 * i + 1] + 1;
  }
  return next <= 0x10FFFF ? cp_add(c, next, 0x10FFFF) : 0;
}

static const uint32_t R_DIGIT[] = {'0', '9'};
static const uint32_t R_WORD[] = {'0', '9', 'A', 'Z', '_', '_', 'a', 'z'};
static const uint32_t R_SPACE[] = {0x09, 0x0D, 0x20, 0x20, 0xA0, 0xA0, 0x1680, 0x1680, 0x2000, 0x200A,
                                   0x2028, 0x2029, 0x202F, 0x202F, 0x205F, 0x205F, 0x3000, 0x3000, 0xFEFF, 0xFEFF};
static const uint32_t R_LINE[] = {0x0A, 0x0A, 0x0D, 0x0D, 0x2028, 0x2029}; /* line terminators */

/* \d \w \s \D \W \S into c; 1 if e was one of them, 0 if not, -1 on error */
static int class_escape(cpset *c, int e) {
  const uint32_t *r;
  int32_t n;
  switch (e | 0x20) {
  case 'd': r = R_DIGIT, n = 1; break;
  case 'w': r = R_WORD, n = 4; break;
  case 's': r = R_SPACE, n = 10; break;
  default: return 0;
  }
  if (e >= 'a') {
    for (int32_t i = 0; i < n; i++)
      if (cp_add(c, r[2 * i], r[2 * i + 1]) < 0) return -1;
    return 1;
  }
  return cp_add_negated(c, r, n) < 0 ? -1 : 1;
}

static int hexv(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int read_hex(rp *p, int32_t at, int n, uint32_t *v) {
  *v = 0;
  for (int k = 0; k < n; k++) {
    int h = hexv(rat(p, at + k));
    if (h < 0) return -1;
    *v = *v << 4 | (uint32_t)h;
  }
  return 0;
}

/* One escaped character after '\' (p->i at the '\'): the code point, or a class into c
 * (returns 1 then). in_class: inside [...] (\b is backspace there). 0 / 1 / -1. */
static int parse_escape(rp *p, cpset *c, int in_class, uint32_t *cp) {
  int32_t start = p->i;
  int e = rat(p, 1);
  if (e < 0) return rerr(p, start, "pattern ends with '\\'");
  int k = class_escape(c, e);
  if (k != 0) {
    p->i += 2;
    return k;
  }
  p->i += 2;
  switch (e) {
  case 'n': *cp = '\n'; return 0;
  case 'r': *cp = '\r'; return 0;
  case 't': *cp = '\t'; return 0;
  case 'v': *cp = 0x0B; return 0;
  case 'f': *cp = 0x0C; return 0;
  case '0':
    if (rat(p, 0) >= '0' && rat(p, 0) <= '9') return rerr(p, start, "unsupported: octal escape");
    *cp = 0;
    return 0;
  case 'b':
    if (in_class) return *cp = 0x08, 0;
    return rerr(p, start, "unsupported: word boundary \\b");
  case 'B': return rerr(p, start, "unsupported: word boundary \\B");
  case 'c': {
    int x = rat(p, 0);
    if (!((x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z'))) return rerr(p, start, "expecting a letter after \\c");
    p->i++;
    *cp = (uint32_t)(x & 31);
    return 0;
  }
  case 'x':
    if (read_hex(p, 0, 2, cp) < 0) return rerr(p, start, "expecting 2 hex digits after \\x");
    p->i += 2;
    return 0;
  case 'u': {
    if (rat(p, 0) == '{') {
      int32_t j = 1;
      uint32_t v = 0;
      while (hexv(rat(p, j)) >= 0 && j < 9) v = v << 4 | (uint32_t)hexv(rat(p, j)), j++;
      if (j == 1 || rat(p, j) != '}' || v > 0x10FFFF) return rerr(p, start, "bad \\u{...} escape");
      p->i += j + 1;
      *cp = v;
    } else {
      if (read_hex(p, 0, 4, cp) < 0) return rerr(p, start, "expecting 4 hex digits after \\u");
      p->i += 4;
    }
    if (*cp >= 0xD800 && *cp <= 0xDBFF) { /* a surrogate pair written as two escapes */
      uint32_t lo;
      if (rat(p, 0) == '\\' && rat(p, 1) == 'u' && read_hex(p, 2, 4, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
        p->i += 6;
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
        return 0;
      }
    }
    if (*cp >= 0xD800 && *cp <= 0xDFFF) return rerr(p, start, "lone surrogate escape");
    return 0;
  }
  case 'p': case 'P': return rerr(p, start, "unsupported: Unicode property escape");
  case 'k': return rerr(p, start, "unsupported: back reference");
  default:
    if (e >= '1' && e <= '9') return rerr(p, start, "unsupported: back reference");
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || e >= 0x80) return rerr(p, start, "unknown escape");
    *cp = (uint32_t)e; /* escaped punctuation stands for itself */
    return 0;
  }
}

static int read_char(rp *p, uint32_t *cp) {
  int len = gx_utf8_decode((const uint8_t *)p->s + p->i, (size_t)(p->n - p->i), cp);
  if (!len) return rerr(p, p->i, "invalid UTF-8");
  p->i += len;
  return 0;
}

static int32_t parse_bracket(rp *p) {
  int32_t start = p->i;
  p->i++;
  int neg = 0;
  if (rat(p, 0) == '^') neg = 1, p->i++;
  cpset c = {0};
  for (;;) {
    int ch = rat(p, 0);
    if (ch < 0) return free(c.v), rerr(p, start, "unterminated character class");
    if (ch == ']') break;
    uint32_t lo, hi;
    int32_t item = p->i;
    int k = 0;
    if (ch == '\\') {
      k = parse_escape(p, &c, 1, &lo);
      if (k < 0) return free(c.v), -1;
      if (k == 1) {
        if (rat(p, 0) == '-' && rat(p, 1) != ']' && rat(p, 1) >= 0)
          return free(c.v), rerr(p, item, "unsupported: range from a class escape");
        continue;
      }
    } else if (read_char(p, &lo) < 0) {
      return free(c.v), -1;
    }
    hi = lo;
    if (rat(p, 0) == '-' && rat(p, 1) != ']' && rat(p, 1) >= 0) {
      p->i++;
      if (rat(p, 0) == '\\') {
        cpset tmp = {0};
        int k2 = parse_escape(p, &tmp, 1, &hi);
        free(tmp.v);
        if (k2 < 0) return free(c.v), -1;
        if (k2 == 1) return free(c.v), rerr(p, item, "unsupported: range to a class escape");
      } else if (read_char(p, &hi) < 0) {
        return free(c.v), -1;
      }
      if (hi < lo) return free(c.v), rerr(p, item, "range out of order in character class");
    }
    if (cp_add(&c, lo, hi) < 0) return free(c.v), -1;
  }
  p->i++;
  int32_t r;
  if (c.n == 0) { /* [] matches nothing, [^] anything */
    r = neg ? (cp_add(&c, 0, 0x10FFFF) < 0 ? -1 : gx_class_node(p->a, c.v, 1, 0, start))
            : gx_node_new(p->a, GX_CLASS, 0, 0, 0, start);
  } else {
    r = gx_class_node(p->a, c.v, c.n, neg, start);
  }
  free(c.v);
  return r;
}

static int32_t parse_alt(rp *p);

/* {n}, {n,}, {n,m} at p->i; 1 parsed, 0 not a quantifier (a literal '{'), -1 error */
static int parse_braces(rp *p, int32_t *lo, int32_t *hi) {
  int32_t j = 1;
  int64_t a = 0, b = -1;
  if (!(rat(p, j) >= '0' && rat(p, j) <= '9')) return 0;
  while (rat(p, j) >= '0' && rat(p, j) <= '9') {
    a = a * 10 + (rat(p, j) - '0');
    if (a > GX_MAX_REPEAT) return rerr(p, p->i, "repetition count too large");
    j++;
  }
  if (rat(p, j) == '}') {
    b = a;
  } else if (rat(p, j) == ',') {
    j++;
    if (rat(p, j) >= '0' && rat(p, j) <= '9') {
      b = 0;
      while (rat(p, j) >= '0' && rat(p, j) <= '9') {
        b = b * 10 + (rat(p, j) - '0');
        if (b > GX_MAX_REPEAT) return rerr(p, p->i, "repetition count too large");
        j++;
      }
    }
    if (rat(p, j) != '}') return 0;
  } else {
    return 0;
  }
  if (b >= 0 && b < a) return rerr(p, p->i, "numbers out of order in {} quantifier");
  p->i += j + 1;
  *lo = (int32_t)a;
  *hi = (int32_t)b;
  return 1;
}

static int32_t parse_seq(rp *p) {
  int32_t *items = NULL, n = 0, cap = 0;
  int32_t start = p->i;
  int quantified = 0; /* the last item already has a quantifier */
  for (;;) {
    int ch = rat(p, 0);
    if (ch < 0 || ch == '|' || ch == ')') break;
    int32_t pos = p->i, item = -1;
    if (ch == '*' || ch == '+' || ch == '?' || ch == '{') {
      int32_t lo = 0, hi = -1;
      if (ch == '{') {
        int k = parse_braces(p, &lo, &hi);
        if (k < 0) return free(items), -1;
        if (k == 0) goto literal;
      } else {
        p->i++;
        if (ch == '+') lo = 1;
        if (ch == '?') hi = 1;
      }
      if (rat(p, 0) == '?') p->i++; /* lazy: same language */
      if (n == 0 || quantified) return free(items), rerr(p, pos, "nothing to repeat");
      int32_t prev = items[n - 1];
      int pk = p->a->nodes[prev].kind;
      if (pk == GX_BOL || pk == GX_EOL) return free(items), rerr(p, pos, "nothing to repeat");
      quantified = 1;
      item = gx_node_new(p->a, GX_REP, prev, lo, hi, pos);
      if (item < 0) return free(items), -1;
      items[n - 1] = item;
      continue;
    }
    if (ch == '(') {
      if (++p->depth > GX_MAX_NEST) return free(items), rerr(p, pos, "groups nested too deeply");
      p->i++;
      if (rat(p, 0) == '?') {
        int x = rat(p, 1);
        if (x == ':') p->i += 2;
        else if (x == '<' && rat(p, 2) != '=' && rat(p, 2) != '!') { /* named group */
          int32_t j = 2;
          while (rat(p, j) >= 0 && rat(p, j) != '>') j++;
          if (rat(p, j) != '>') return free(items), rerr(p, pos, "unterminated group name");
          p->i += j + 1;
        } else {
          return free(items), rerr(p, pos, "unsupported: look-around");
        }
      }
      item = parse_alt(p);
      if (item < 0) return free(items), -1;
      if (rat(p, 0) != ')') return free(items), rerr(p, pos, "missing ')'");
      p->i++;
      p->depth--;
    } else if (ch == '[') {
      item = parse_bracket(p);
    } else if (ch == '.') {
      p->i++;
      cpset c = {0};
      if (cp_add_negated(&c, R_LINE, 3) < 0) return free(items), -1;
      item = gx_class_node(p->a, c.v, c.n, 0, pos);
      free(c.v);
    } else if (ch == '^' || ch == '$') {
      p->i++;
      item = gx_node_new(p->a, ch == '^' ? GX_BOL : GX_EOL, 0, 0, 0, pos);
    } else if (ch == '\\') {
      cpset c = {0};
      uint32_t cp;
      int k = parse_escape(p, &c, 0, &cp);
      if (k < 0) return free(c.v), free(items), -1;
      if (k == 1) item = gx_class_node(p->a, c.v, c.n, 0, pos);
      else {
        uint32_t pr[2] = {cp, cp};
        item = gx_class_node(p->a, pr, 1, 0, pos);
      }
      free(c.v);
    } else {
    literal:;
      uint32_t cp;
      if (ch == '{') {
        p->i++;
        cp = '{';
      } else if (read_char(p, &cp) < 0) {
        return free(items), -1;
      }
      uint32_t pr[2] = {cp, cp};
      item = gx_class_node(p->a, pr, 1, 0, pos);
    }
    if (item < 0) return free(items), -1;
    quantified = 0;
    if (n == cap) {
      int32_t nc = cap ? cap * 2 : 16;
      int32_t *np = realloc(items, (size_t)nc * sizeof *np);
      if (!np) return free(items), ml_seterr("out of memory (grammar)"), -1;
      items = np;
      cap = nc;
    }
    items[n++] = item;
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

static int32_t parse_alt(rp *p) {
  int32_t start = p->i;
  int32_t *alts = NULL, n = 0, cap = 0;
  for (;;) {
    int32_t s = parse_seq(p);
    if (s < 0) return free(alts), -1;
    if (n == cap) {
      int32_t nc = cap ? cap * 2 : 8;
      int32_t *np = realloc(alts, (size_t)nc * sizeof *np);
      if (!np) return free(alts), ml_seterr("out of memory (grammar)"), -1;
      alts = np;
      cap = nc;
    }
    alts[n++] = s;
    if (rat(p, 0) != '|') break;
    p->i++;
  }
  int32_t r = alts[0];
  if (n > 1) {
    int32_t off = gx_kids_add(p->a, alts, n);
    r = off < 0 ? -1 : gx_node_new(p->a, GX_ALT, off, n, 0, start);
  }
  free(alts);
  return r;
}

int gx_parse_regex(gx_ast *a, const char *pat, size_t len, int32_t *root_rule) {
  a->src = pat;
  a->src_len = len;
  a->what = "regex";
  if (len > GX_MAX_TEXT) return ml_seterr("pattern of %zu bytes (at most %zu)", len, GX_MAX_TEXT), -1;
  rp p = {a, pat, (int32_t)len, 0, 0};
  int32_t body = parse_alt(&p);
  if (body < 0) return -1;
  if (p.i < p.n) return rerr(&p, p.i, "unmatched ')'");
  int32_t r = gx_rule_get(a, "root", 4, 0);
  if (r < 0) return -1;
  a->rules[r].body = body;
  *root_rule = r;
  return 0;
}

/* ---- public constructors and lifetime ---- */

static ml_grammar *finish_grammar(gx_ast *a, int32_t root) {
  ml_grammar *g = gx_compile(a, root);
  gx_ast_free(a);
  if (g && ml_registry_add_grammar(g) < 0) {
    ml_grammar_release(g);
    return NULL;
  }
  return g;
}

ml_grammar *ml_grammar_gbnf(const char *text, size_t len, const ml_grammar_opts *opts) {
  gx_ast a = {0};
  int32_t root;
  if (gx_parse_gbnf(&a, text, len, opts ? opts->root : NULL, &root) < 0) {
    gx_ast_free(&a);
    return NULL;
  }
  return finish_grammar(&a, root);
}

ml_grammar *ml_grammar_regex(const char *pattern, size_t len) {
  gx_ast a = {0};
  int32_t root;
  if (gx_parse_regex(&a, pattern, len, &root) < 0) {
    gx_ast_free(&a);
    return NULL;
  }
  return finish_grammar(&a, root);
}

ml_grammar *ml_grammar_choice(const char *const *items, const size_t *lens, size_t n) {
  if (n == 0) return ml_seterr("choice of nothing"), NULL;
  if (n > (size_t)GX_MAX_NFA) return ml_seterr("choice of %zu items (at most %d)", n, GX_MAX_NFA), NULL;
  gx_ast a = {0};
  int32_t *alts = malloc(n * sizeof *alts);
  size_t total = 0;
  if (!alts) return ml_seterr("out of memory (grammar)"), NULL;
  for (size_t i = 0; i < n; i++) {
    total += lens[i];
    if (total > GX_MAX_TEXT) {
      free(alts);
      ml_seterr("choice of more than %zu bytes", GX_MAX_TEXT);
      return NULL;
    }
    int32_t off = gx_bytes_add(&a, items[i], (int32_t)lens[i]);
    alts[i] = off < 0 ? -1 : lens[i] ? gx_node_new(&a, GX_BYTES, off, (int32_t)lens[i], 0, -1) : gx_node_new(&a, GX_EMPTY, 0, 0, 0, -1);
    if (alts[i] < 0) {
      free(alts);
      gx_ast_free(&a);
      return NULL;
    }
  }
  int32_t off = gx_kids_add(&a, alts, (int32_t)n);
  int32_t body = off < 0 ? -1 : n == 1 ? alts[0] : gx_node_new(&a, GX_ALT, off, (int32_t)n, 0, -1);
  free(alts);
  int32_t r = body < 0 ? -1 : gx_rule_get(&a, "root", 4, -1);
  if (r < 0) {
    gx_ast_free(&a);
    return NULL;
  }
  a.rules[r].body = body;
  return finish_grammar(&a, r);
}

void ml_grammar_retain(ml_grammar *g) { __atomic_add_fetch(&g->refcount, 1, __ATOMIC_RELAXED); }

void ml_grammar_release(ml_grammar *g) {
  if (!g || __atomic_sub_fetch(&g->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  if (g->handle) ml_registry_forget(g);
  gk_binds_free(g);
  pthread_mutex_destroy(&g->mu);
  gd_free(g);
  free(g);
}

int64_t ml_grammar_handle(const ml_grammar *g) { return g->handle; }

void ml_grammar_get_stats(const ml_grammar *g, ml_grammar_stats *s) {
  s->n_rules = g->n_rules;
  s->n_machines = g->n_machines;
  s->n_nfa = g->n_nfa;
  s->n_states = __atomic_load_n(&g->n_states, __ATOMIC_ACQUIRE) - 1;
  s->n_classes = g->n_cls;
  s->bytes = g->bytes;
}
