/* grammar_schema_leaf.c: the regular leaves of a JSON Schema as GBNF expressions.
 *
 * Strings work on decoded code points: a pattern, a format or a key exclusion is a set of
 * decoded strings, and each character class becomes the JSON encodings of its members
 * (raw where JSON allows it, the short escapes, \u00XX for the other control characters;
 * \uXXXX for other characters only in unconstrained strings, where a surrogate pair counts
 * as one character as minLength/maxLength define). Patterns are ECMA-262 regular
 * expressions without backreferences or lookaround; they match anywhere unless anchored.
 * Numbers with bounds are exact decimal comparisons on the digits; the exponent form only
 * where a whole sign is inside the bounds (minimum 0 takes 1e-05). */
#include "grammar_schema_int.h"
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- text buffer */

void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = 1; return; }
    b->p = p, b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  /* text and %s only (most calls: rule bodies joined, often kilobytes long) are appended
   * directly; vsnprintf copied them at several instructions a byte, twice when long */
  const char *pc = fmt;
  while ((pc = strchr(pc, '%')) && pc[1] == 's') pc += 2;
  if (!pc) {
    va_start(ap, fmt);
    for (const char *q = fmt;;) {
      const char *at = strchr(q, '%');
      if (!at) { sb_puts(b, q); break; }
      sb_put(b, q, (size_t)(at - q));
      sb_puts(b, va_arg(ap, const char *));
      q = at + 2;
    }
    va_end(ap);
    return;
  }
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) { sb_put(b, tmp, (size_t)n); return; }
  char *big = malloc((size_t)n + 1);
  if (!big) { b->oom = 1; return; }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb_put(b, big, (size_t)n);
  free(big);
}

void sb_free(sbuf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- code point sets */

#define CP_MAX 0x10FFFFu

static void cs_add(cset *s, uint32_t lo, uint32_t hi) {
  if (s->n == s->cap) {
    int cap = s->cap ? s->cap * 2 : 8;
    crange *r = realloc(s->r, (size_t)cap * sizeof *r);
    if (!r) return; /* the set stays smaller: callers check sizes through the budget */
    s->r = r, s->cap = cap;
  }
  s->r[s->n].lo = lo, s->r[s->n].hi = hi;
  s->n++;
}

static int cr_cmp(const void *a, const void *b) {
  const crange *x = a, *y = b;
  return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static void cs_norm(cset *s) {
  if (s->n < 2) return;
  qsort(s->r, (size_t)s->n, sizeof *s->r, cr_cmp);
  int w = 0;
  for (int i = 1; i < s->n; i++) {
    if (s->r[i].lo <= s->r[w].hi + 1) {
      if (s->r[i].hi > s->r[w].hi) s->r[w].hi = s->r[i].hi;
    } else {
      s->r[++w] = s->r[i];
    }
  }
  s->n = w + 1;
}

static void cs_negate(cset *s) {
  cs_norm(s);
  cset t = {0};
  uint32_t next = 0;
  for (int i = 0; i < s->n; i++) {
    if (s->r[i].lo > next) cs_add(&t, next, s->r[i].lo - 1);
    next = s->r[i].hi + 1;
  }
  if (next <= CP_MAX) cs_add(&t, next, CP_MAX);
  free(s->r);
  *s = t;
}

static int cs_has(const cset *s, uint32_t c) {
  for (int i = 0; i < s->n; i++)
    if (c >= s->r[i].lo && c <= s->r[i].hi) return 1;
  return 0;
}

static void cs_union(cset *d, const cset *s) {
  for (int i = 0; i < s->n; i++) cs_add(d, s->r[i].lo, s->r[i].hi);
  cs_norm(d);
}

static int cs_full(const cset *s) { return s->n == 1 && s->r[0].lo == 0 && s->r[0].hi == CP_MAX; }

/* ---------------------------------------------------------------- GBNF text helpers */

/* "\\" prefix letter and `digits` hex digits of c */
static void put_hex(sbuf *o, char letter, uint32_t c, int digits) {
  char t[12];
  int n = 0;
  t[n++] = '\\', t[n++] = letter;
  for (int i = digits - 1; i >= 0; i--) t[n++] = "0123456789ABCDEF"[(c >> (4 * i)) & 15];
  sb_put(o, t, (size_t)n);
}

static void put_class_char(sbuf *o, uint32_t c) {
  if (c == ']' || c == '[' || c == '\\' || c == '"') {
    char t[2] = {'\\', (char)c};
    sb_put(o, t, 2);
  } else if (c == '^' || c == '-') put_hex(o, 'x', c, 2);
  else if (c >= 0x20 && c < 0x7F) {
    char ch = (char)c;
    sb_put(o, &ch, 1);
  } else if (c < 0x100) put_hex(o, 'x', c, 2);
  else if (c < 0x10000) put_hex(o, 'u', c, 4);
  else put_hex(o, 'U', c, 8);
}

/* a GBNF literal of raw bytes (UTF-8 kept as is, the rest escaped) */
static void put_literal(sbuf *o, const char *s, size_t n) {
  sb_puts(o, "\"");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') sb_put(o, c == '"' ? "\\\"" : "\\\\", 2);
    else if (c == '\n') sb_puts(o, "\\n");
    else if (c == '\r') sb_puts(o, "\\r");
    else if (c == '\t') sb_puts(o, "\\t");
    else if (c < 0x20 || c == 0x7F) sb_printf(o, "\\x%02X", c);
    else sb_put(o, (const char *)&c, 1);
  }
  sb_puts(o, "\"");
}

/* one JSON string character of any value; a surrogate pair is one character */
const char leaf_char_rule[] =
    "[^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-CefEF] [0-9a-fA-F]{3} | "
    "[dD] [0-7] [0-9a-fA-F]{2} | [dD] [89abAB] [0-9a-fA-F]{2} \"\\\\u\" [dD] [c-fC-F] [0-9a-fA-F]{2} ) )";
const char leaf_integer_rule[] = "\"-\"? ( \"0\" | [1-9] [0-9]* )";
const char leaf_number_rule[] = "\"-\"? ( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?";

static const struct {
  uint32_t c;
  const char *esc; /* GBNF literal of the JSON escape */
} short_esc[] = {
    {'"', "\"\\\\\\\"\""}, {'\\', "\"\\\\\\\\\""}, {'/', "\"\\\\/\""}, {8, "\"\\\\b\""},
    {12, "\"\\\\f\""},     {10, "\"\\\\n\""},     {13, "\"\\\\r\""}, {9, "\"\\\\t\""},
};

/* the JSON encodings of one character of `s` (not empty); "char" when s is everything */
static void emit_set(sbuf *o, const cset *s) {
  if (cs_full(s)) { sb_puts(o, "char"); return; }
  sbuf alts = {0};
  int nalt = 0;
  /* raw part: s minus '"', '\\' and the control characters */
  cset raw = {0};
  for (int i = 0; i < s->n; i++) {
    uint32_t lo = s->r[i].lo < 0x20 ? 0x20 : s->r[i].lo, hi = s->r[i].hi;
    if (lo > hi) continue;
    cs_add(&raw, lo, hi);
  }
  /* raw := raw minus '"', '\\' and the control characters */
  static const crange keep[3] = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, CP_MAX}};
  cset inter = {0};
  for (int i = 0; i < raw.n; i++)
    for (int j = 0; j < 3; j++) {
      uint32_t lo = raw.r[i].lo > keep[j].lo ? raw.r[i].lo : keep[j].lo;
      uint32_t hi = raw.r[i].hi < keep[j].hi ? raw.r[i].hi : keep[j].hi;
      if (lo <= hi) cs_add(&inter, lo, hi);
    }
  cs_norm(&inter);
  if (inter.n) {
    /* write the shorter of the class and its negation */
    cset neg = {0};
    cs_union(&neg, &inter);
    cs_negate(&neg);
    int negated = neg.n + 0 < inter.n;
    const cset *w = negated ? &neg : &inter;
    sb_puts(&alts, negated ? "[^" : "[");
    for (int i = 0; i < w->n; i++) {
      put_class_char(&alts, w->r[i].lo);
      if (w->r[i].hi != w->r[i].lo) {
        if (w->r[i].hi > w->r[i].lo + 1) sb_puts(&alts, "-");
        put_class_char(&alts, w->r[i].hi);
      }
    }
    sb_puts(&alts, "]");
    nalt++;
    free(neg.r);
  }
  for (size_t k = 0; k < sizeof short_esc / sizeof *short_esc; k++)
    if (cs_has(s, short_esc[k].c)) {
      if (nalt++) sb_puts(&alts, " | ");
      sb_puts(&alts, short_esc[k].esc);
    }
  /* the other control characters as \u00XX, lowercase or uppercase hex */
  for (uint32_t hi = 0; hi < 2; hi++) {
    char digits[40];
    int nd = 0;
    for (uint32_t lo = 0; lo < 16; lo++) {
      uint32_t c = hi << 4 | lo;
      if (c == 8 || c == 9 || c == 10 || c == 12 || c == 13 || !cs_has(s, c)) continue;
      const char *hx = "0123456789abcdef";
      digits[nd++] = hx[lo];
      if (lo >= 10) digits[nd++] = (char)(hx[lo] - 32);
    }
    if (!nd) continue;
    digits[nd] = 0;
    if (nalt++) sb_puts(&alts, " | ");
    sb_printf(&alts, "\"\\\\u00%u\" [%s]", hi, digits);
  }
  if (nalt > 1) sb_puts(o, "( ");
  if (alts.p) sb_puts(o, alts.p);
  if (nalt > 1) sb_puts(o, " )");
  sb_free(&alts);
  free(raw.r), free(inter.r);
}

/* ---------------------------------------------------------------- regular expressions */

enum { RX_SET, RX_SEQ, RX_ALT, RX_REP, RX_BOL, RX_EOL };
#define RX_INF UINT32_MAX

typedef struct rx rx;
struct rx {
  int kind;
  cset set;
  rx **k;
  int n, cap;
  uint32_t min, max;
};

typedef struct {
  schema_base *c;
  const ml_json *at;  /* schema holding the pattern, for errors */
  const char *what;   /* "pattern" or "format" */
  uint32_t *cp;       /* the pattern as code points */
  size_t n, i;
  rx **all;           /* every node, for freeing */
  size_t nall, capall;
  int err;
} rxp;

static rx *rx_new(rxp *p, int kind) {
  if (p->err) return NULL;
  if (p->nall == p->capall) {
    size_t cap = p->capall ? p->capall * 2 : 64;
    rx **a = realloc(p->all, cap * sizeof *a);
    if (!a) { p->err = schema_fail(p->c, p->at, "out of memory"); return NULL; }
    p->all = a, p->capall = cap;
  }
  rx *r = calloc(1, sizeof *r);
  if (!r) { p->err = schema_fail(p->c, p->at, "out of memory"); return NULL; }
  r->kind = kind;
  p->all[p->nall++] = r;
  return r;
}

static void rx_push(rxp *p, rx *parent, rx *kid) {
  if (p->err) return;
  if (parent->n == parent->cap) {
    int cap = parent->cap ? parent->cap * 2 : 4;
    rx **k = realloc(parent->k, (size_t)cap * sizeof *k);
    if (!k) { p->err = schema_fail(p->c, p->at, "out of memory"); return; }
    parent->k = k, parent->cap = cap;
  }
  parent->k[parent->n++] = kid;
}

static void rxp_free(rxp *p) {
  for (size_t i = 0; i < p->nall; i++) free(p->all[i]->k), free(p->all[i]->set.r), free(p->all[i]);
  free(p->all);
  free(p->cp);
}

static int rx_err(rxp *p, const char *msg) {
  if (!p->err) {
    char q[64] = "";
    if (p->what[0] == 'p') snprintf(q, sizeof q, " (position %zu)", p->i);
    schema_fail(p->c, p->at, "%s %s%s", p->what, msg, q);
  }
  p->err = 1;
  return -1;
}

static void set_class(rx *r, char esc) {
  switch (esc) {
  case 'd': case 'D': cs_add(&r->set, '0', '9'); break;
  case 'w': case 'W': cs_add(&r->set, '0', '9'), cs_add(&r->set, 'A', 'Z'), cs_add(&r->set, '_', '_'), cs_add(&r->set, 'a', 'z'); break;
  case 's': case 'S':
    /* the white space both ECMA-262 and Python agree on */
    cs_add(&r->set, 9, 13), cs_add(&r->set, ' ', ' '), cs_add(&r->set, 0xA0, 0xA0), cs_add(&r->set, 0x1680, 0x1680);
    cs_add(&r->set, 0x2000, 0x200A), cs_add(&r->set, 0x2028, 0x2029), cs_add(&r->set, 0x202F, 0x202F);
    cs_add(&r->set, 0x205F, 0x205F), cs_add(&r->set, 0x3000, 0x3000);
    break;
  }
  cs_norm(&r->set);
  if (esc == 'D' || esc == 'W' || esc == 'S') cs_negate(&r->set);
}

static int hexval(uint32_t c) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

/* an escape after '\' that stands for one character; class escapes handled by caller.
 * Returns the code point, or -1 (error set). */
static long rx_escape_char(rxp *p, int in_class) {
  if (p->i >= p->n) return rx_err(p, "ends with '\\'");
  uint32_t e = p->cp[p->i++];
  switch (e) {
  case 't': return 9;
  case 'n': return 10;
  case 'v': return 11;
  case 'f': return 12;
  case 'r': return 13;
  case '0':
    if (p->i < p->n && p->cp[p->i] >= '0' && p->cp[p->i] <= '9') return rx_err(p, "uses an octal escape");
    return 0;
  case 'b':
    if (in_class) return 8;
    return rx_err(p, "uses '\\b' (word boundary), which is not supported");
  case 'x': case 'u': {
    int digits = e == 'x' ? 2 : 4;
    long v = 0;
    if (e == 'u' && p->i < p->n && p->cp[p->i] == '{') {
      p->i++;
      int nd = 0;
      while (p->i < p->n && p->cp[p->i] != '}') {
        int h = hexval(p->cp[p->i++]);
        if (h < 0 || ++nd > 6) return rx_err(p, "has a bad \\u{...} escape");
        v = v * 16 + h;
      }
      if (p->i >= p->n || nd == 0 || v > (long)CP_MAX) return rx_err(p, "has a bad \\u{...} escape");
      p->i++;
      return v;
    }
    for (int d = 0; d < digits; d++) {
      int h = p->i < p->n ? hexval(p->cp[p->i]) : -1;
      if (h < 0) return rx_err(p, "has a bad hex escape");
      v = v * 16 + h;
      p->i++;
    }
    if (v >= 0xD800 && v <= 0xDFFF) return rx_err(p, "has a surrogate escape");
    return v;
  }
  case 'c': return rx_err(p, "uses a control escape");
  case 'B': return rx_err(p, "uses '\\B', which is not supported");
  case 'p': case 'P': return rx_err(p, "uses a Unicode property escape, which is not supported");
  case 'k': return rx_err(p, "uses a named backreference, which is not supported");
  default:
    if (e >= '1' && e <= '9') return rx_err(p, "uses a backreference, which is not supported");
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) return rx_err(p, "has an unknown escape");
    return e; /* \. \/ \- \\ and other punctuation stand for themselves */
  }
}

static rx *rx_class(rxp *p) {
  rx *r = rx_new(p, RX_SET);
  if (!r) return NULL;
  int neg = 0;
  if (p->i < p->n && p->cp[p->i] == '^') neg = 1, p->i++;
  while (1) {
    if (p->i >= p->n) { rx_err(p, "has an unterminated '['"); return NULL; }
    uint32_t c = p->cp[p->i];
    if (c == ']') { p->i++; break; }
    long lo;
    p->i++;
    if (c == '\\') {
      if (p->i < p->n && strchr("dDwWsS", (int)p->cp[p->i]) && p->cp[p->i] < 128) {
        rx tmp = {0};
        set_class(&tmp, (char)p->cp[p->i++]);
        cs_union(&r->set, &tmp.set);
        free(tmp.set.r);
        continue;
      }
      lo = rx_escape_char(p, 1);
      if (lo < 0) return NULL;
    } else {
      lo = c;
    }
    long hi = lo;
    if (p->i + 1 < p->n && p->cp[p->i] == '-' && p->cp[p->i + 1] != ']') {
      p->i++;
      uint32_t d = p->cp[p->i++];
      if (d == '\\') {
        if (p->i < p->n && p->cp[p->i] < 128 && strchr("dDwWsS", (int)p->cp[p->i]))
          { rx_err(p, "has a class escape as a range end"); return NULL; }
        hi = rx_escape_char(p, 1);
        if (hi < 0) return NULL;
      } else {
        hi = d;
      }
      if (hi < lo) { rx_err(p, "has a range out of order"); return NULL; }
    }
    cs_add(&r->set, (uint32_t)lo, (uint32_t)hi);
  }
  cs_norm(&r->set);
  if (neg) cs_negate(&r->set);
  return r;
}

static rx *rx_alt(rxp *p, int depth);

/* a decimal count in {m,n}; -1 when absent */
static long rx_count(rxp *p) {
  long v = -1;
  while (p->i < p->n && p->cp[p->i] >= '0' && p->cp[p->i] <= '9') {
    v = (v < 0 ? 0 : v) * 10 + (long)(p->cp[p->i++] - '0');
    if (v > 100000000) v = 100000000;
  }
  return v;
}

static rx *rx_atom(rxp *p, int depth) {
  uint32_t c = p->cp[p->i++];
  rx *r;
  switch (c) {
  case '(': {
    if (p->i < p->n && p->cp[p->i] == '?') {
      if (p->i + 1 < p->n && p->cp[p->i + 1] == ':') p->i += 2;
      else if (p->i + 2 < p->n && p->cp[p->i + 1] == '<' && p->cp[p->i + 2] != '=' && p->cp[p->i + 2] != '!') {
        p->i += 2;
        while (p->i < p->n && p->cp[p->i] != '>') p->i++;
        if (p->i >= p->n) { rx_err(p, "has an unterminated group name"); return NULL; }
        p->i++;
      } else {
        rx_err(p, "uses a lookaround or group flag, which is not supported");
        return NULL;
      }
    }
    r = rx_alt(p, depth + 1);
    if (!r) return NULL;
    if (p->i >= p->n || p->cp[p->i] != ')') { rx_err(p, "has an unbalanced '('"); return NULL; }
    p->i++;
    return r;
  }
  case '[': return rx_class(p);
  case '.':
    r = rx_new(p, RX_SET);
    if (!r) return NULL;
    cs_add(&r->set, 10, 10), cs_add(&r->set, 13, 13), cs_add(&r->set, 0x2028, 0x2029);
    cs_negate(&r->set);
    return r;
  case '^': return rx_new(p, RX_BOL);
  case '$': return rx_new(p, RX_EOL);
  case ')': rx_err(p, "has an unbalanced ')'"); return NULL;
  case '*': case '+': case '?': rx_err(p, "has a quantifier with nothing to repeat"); return NULL;
  case '\\':
    if (p->i < p->n && p->cp[p->i] < 128 && strchr("dDwWsS", (int)p->cp[p->i])) {
      r = rx_new(p, RX_SET);
      if (r) set_class(r, (char)p->cp[p->i++]);
      return r;
    } else {
      long v = rx_escape_char(p, 0);
      if (v < 0) return NULL;
      c = (uint32_t)v;
    }
    /* fall through */
  default:
    r = rx_new(p, RX_SET);
    if (r) cs_add(&r->set, c, c);
    return r;
  }
}

static rx *rx_seq(rxp *p, int depth) {
  rx *seq = rx_new(p, RX_SEQ);
  if (!seq) return NULL;
  while (p->i < p->n && p->cp[p->i] != '|' && p->cp[p->i] != ')') {
    rx *a = rx_atom(p, depth);
    if (!a) return NULL;
    while (p->i < p->n) {
      uint32_t q = p->cp[p->i];
      uint32_t mn, mx;
      size_t save = p->i;
      if (q == '*') mn = 0, mx = RX_INF, p->i++;
      else if (q == '+') mn = 1, mx = RX_INF, p->i++;
      else if (q == '?') mn = 0, mx = 1, p->i++;
      else if (q == '{') {
        p->i++;
        long a1 = rx_count(p), a2 = a1;
        if (p->i < p->n && p->cp[p->i] == ',') {
          p->i++;
          a2 = rx_count(p);
          if (a2 < 0) a2 = -2; /* unbounded */
        }
        if (a1 < 0 || p->i >= p->n || p->cp[p->i] != '}') { p->i = save; break; } /* a literal '{' */
        p->i++;
        mn = (uint32_t)a1;
        mx = a2 == -2 ? RX_INF : (uint32_t)a2;
        if (mx < mn) { rx_err(p, "has a {m,n} with n < m"); return NULL; }
      } else {
        break;
      }
      if (p->i < p->n && p->cp[p->i] == '?') p->i++; /* lazy: same language */
      if (a->kind == RX_BOL || a->kind == RX_EOL) { rx_err(p, "repeats an anchor"); return NULL; }
      rx *rep = rx_new(p, RX_REP);
      if (!rep) return NULL;
      rep->min = mn, rep->max = mx;
      rx_push(p, rep, a);
      a = rep;
    }
    rx_push(p, seq, a);
    if (p->err) return NULL;
  }
  return seq;
}

static rx *rx_alt(rxp *p, int depth) {
  if (depth > 64) { rx_err(p, "nests groups too deeply"); return NULL; }
  rx *first = rx_seq(p, depth);
  if (!first || p->i >= p->n || p->cp[p->i] != '|') return first;
  rx *alt = rx_new(p, RX_ALT);
  if (!alt) return NULL;
  rx_push(p, alt, first);
  while (p->i < p->n && p->cp[p->i] == '|') {
    p->i++;
    rx *s = rx_seq(p, depth);
    if (!s) return NULL;
    rx_push(p, alt, s);
  }
  return p->err ? NULL : alt;
}

static int utf8_decode(const char *s, size_t n, uint32_t **out, size_t *count) {
  uint32_t *cp = malloc((n + 1) * sizeof *cp);
  if (!cp) return -1;
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    uint32_t v;
    int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i + (size_t)len > n) len = (int)(n - i);
    v = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (int j = 1; j < len; j++) v = v << 6 | ((unsigned char)s[i + (size_t)j] & 0x3Fu);
    cp[k++] = v;
    i += (size_t)len;
  }
  *out = cp, *count = k;
  return 0;
}

static rx *rx_parse(rxp *p, const char *src, size_t len) {
  if (utf8_decode(src, len, &p->cp, &p->n) < 0) { p->err = schema_fail(p->c, p->at, "out of memory"); return NULL; }
  rx *r = rx_alt(p, 0);
  if (r && p->i < p->n) { rx_err(p, "has an unbalanced ')'"); return NULL; }
  return r;
}

/* ---- analysis: lengths, emptiness, anchors */

static uint32_t sat_add(uint32_t a, uint32_t b) { return a == RX_INF || b == RX_INF || a + b < a ? RX_INF : a + b; }
static uint32_t sat_mul(uint32_t a, uint32_t b) {
  if (a == 0 || b == 0) return 0;
  if (a == RX_INF || b == RX_INF || (uint64_t)a * b >= RX_INF) return RX_INF;
  return a * b;
}

/* min and max length in code points; *empty when the language is empty */
static void rx_len(const rx *r, uint32_t *mn, uint32_t *mx, int *empty) {
  *empty = 0;
  switch (r->kind) {
  case RX_SET: *mn = *mx = 1; *empty = r->set.n == 0; return;
  case RX_BOL: case RX_EOL: *mn = *mx = 0; return;
  case RX_SEQ: {
    uint32_t a = 0, b = 0;
    for (int i = 0; i < r->n; i++) {
      uint32_t x, y;
      int e;
      rx_len(r->k[i], &x, &y, &e);
      if (e) { *empty = 1; return; }
      a = sat_add(a, x), b = sat_add(b, y);
    }
    *mn = a, *mx = b;
    return;
  }
  case RX_ALT: {
    uint32_t a = RX_INF, b = 0;
    int any = 0;
    for (int i = 0; i < r->n; i++) {
      uint32_t x, y;
      int e;
      rx_len(r->k[i], &x, &y, &e);
      if (e) continue;
      any = 1;
      if (x < a) a = x;
      if (y > b) b = y;
    }
    if (!any) { *empty = 1; return; }
    *mn = a, *mx = b;
    return;
  }
  case RX_REP: {
    uint32_t x, y;
    int e;
    rx_len(r->k[0], &x, &y, &e);
    if (e) {
      *mn = *mx = 0;
      *empty = r->min > 0;
      return;
    }
    *mn = sat_mul(x, r->min), *mx = r->max == RX_INF && y > 0 ? RX_INF : sat_mul(y, r->max);
    return;
  }
  }
}

/* anchors: 1 when every path of r starts (side 0) / ends (side 1) with an anchor of that
 * side, which is then removed; 0 when none does; -1 when only some do */
static int rx_strip(rx *r, int side) {
  int want = side ? RX_EOL : RX_BOL;
  switch (r->kind) {
  case RX_SEQ: {
    if (r->n == 0) return 0;
    int idx = side ? r->n - 1 : 0;
    rx *e = r->k[idx];
    if (e->kind == want) {
      memmove(r->k + idx, r->k + idx + 1, (size_t)(r->n - idx - 1) * sizeof *r->k);
      r->n--;
      return 1;
    }
    return rx_strip(e, side);
  }
  case RX_ALT: {
    int all = 1, none = 1;
    for (int i = 0; i < r->n; i++) {
      int s = rx_strip(r->k[i], side);
      if (s < 0) return -1;
      if (s) none = 0;
      else all = 0;
    }
    return all ? 1 : none ? 0 : -1;
  }
  case RX_BOL: case RX_EOL: return r->kind == want ? -1 : 0;
  default: return 0;
  }
}

static int rx_has_anchor(const rx *r) {
  if (r->kind == RX_BOL || r->kind == RX_EOL) return 1;
  for (int i = 0; i < r->n; i++)
    if (rx_has_anchor(r->k[i])) return 1;
  return 0;
}

/* ---- emission */

static int rx_emit(rxp *p, const rx *r, sbuf *o) {
  uint32_t mn, mx;
  int empty;
  rx_len(r, &mn, &mx, &empty);
  if (empty) return 1;
  switch (r->kind) {
  case RX_SET: emit_set(o, &r->set); return 0;
  case RX_BOL: case RX_EOL: sb_puts(o, "\"\""); return 0;
  case RX_SEQ:
    if (r->n == 0) { sb_puts(o, "\"\""); return 0; }
    if (r->n > 1) sb_puts(o, "( ");
    for (int i = 0; i < r->n; i++) {
      if (i) sb_puts(o, " ");
      if (rx_emit(p, r->k[i], o) < 0) return -1;
    }
    if (r->n > 1) sb_puts(o, " )");
    return 0;
  case RX_ALT: {
    int first = 1;
    sb_puts(o, "( ");
    for (int i = 0; i < r->n; i++) {
      uint32_t a, b;
      int e;
      rx_len(r->k[i], &a, &b, &e);
      if (e) continue;
      if (!first) sb_puts(o, " | ");
      first = 0;
      if (rx_emit(p, r->k[i], o) < 0) return -1;
    }
    sb_puts(o, " )");
    return 0;
  }
  case RX_REP: {
    uint32_t a, b;
    int e;
    rx_len(r->k[0], &a, &b, &e);
    if (e || r->max == 0) { sb_puts(o, "\"\""); return 0; }
    /* (x*)* = x*, (x+)* = x*, (x*)+ = x*, (x+)+ = x+, (x*)? = x*, (x+)? = x* */
    const rx *in = r->k[0];
    while (in->kind == RX_SEQ && in->n == 1) in = in->k[0];
    if (in->kind == RX_REP && in->max == RX_INF && in->min <= 1 && r->min <= 1 && (r->max == RX_INF || r->max == 1)) {
      rx merged = *in;
      merged.min = r->min && in->min ? 1 : 0;
      return rx_emit(p, &merged, o);
    }
    size_t lim = p->c->opts.max_repeat;
    if (r->min > lim || (r->max != RX_INF && r->max > lim))
    {
      p->err = 1;
      return schema_fail(p->c, p->at, "%s repeats more times than the compile budget allows (%zu)", p->what, lim);
    }
    sb_puts(o, "( ");
    if (rx_emit(p, r->k[0], o) < 0) return -1;
    sb_puts(o, " )");
    if (r->min == 0 && r->max == RX_INF) sb_puts(o, "*");
    else if (r->min == 1 && r->max == RX_INF) sb_puts(o, "+");
    else if (r->min == 0 && r->max == 1) sb_puts(o, "?");
    else if (r->max == RX_INF) sb_printf(o, "{%u,}", r->min);
    else if (r->min == r->max) sb_printf(o, "{%u}", r->min);
    else sb_printf(o, "{%u,%u}", r->min, r->max);
    return 0;
  }
  }
  return 0;
}

/* ---- matching a decoded string (for enum values): sets of end positions */

static void rx_run(const rx *r, const uint32_t *s, size_t n, const unsigned char *in, unsigned char *out) {
  memset(out, 0, n + 1);
  switch (r->kind) {
  case RX_SET:
    for (size_t i = 0; i < n; i++)
      if (in[i] && cs_has(&r->set, s[i])) out[i + 1] = 1;
    return;
  case RX_BOL: out[0] = in[0]; return;
  case RX_EOL: out[n] = in[n]; return;
  case RX_SEQ: {
    unsigned char *cur = malloc(n + 1), *nx = malloc(n + 1);
    if (!cur || !nx) { free(cur), free(nx); return; }
    memcpy(cur, in, n + 1);
    for (int k = 0; k < r->n; k++) {
      rx_run(r->k[k], s, n, cur, nx);
      memcpy(cur, nx, n + 1);
    }
    memcpy(out, cur, n + 1);
    free(cur), free(nx);
    return;
  }
  case RX_ALT: {
    unsigned char *t = malloc(n + 1);
    if (!t) return;
    for (int k = 0; k < r->n; k++) {
      rx_run(r->k[k], s, n, in, t);
      for (size_t i = 0; i <= n; i++) out[i] |= t[i];
    }
    free(t);
    return;
  }
  case RX_REP: {
    unsigned char *cur = malloc(n + 1), *nx = malloc(n + 1);
    if (!cur || !nx) { free(cur), free(nx); return; }
    memcpy(cur, in, n + 1);
    if (r->min == 0) memcpy(out, in, n + 1);
    for (uint32_t k = 1; k <= r->max && k <= n + r->min + 1; k++) {
      rx_run(r->k[0], s, n, cur, nx);
      int changed = 0;
      for (size_t i = 0; i <= n; i++) {
        if (k >= r->min && nx[i] && !out[i]) out[i] = 1, changed = 1;
      }
      if (!memcmp(cur, nx, n + 1) && k > r->min) break;
      memcpy(cur, nx, n + 1);
      if (!changed && k > r->min && k > n + 1) break;
    }
    free(cur), free(nx);
    return;
  }
  }
}

/* ---------------------------------------------------------------- formats */

#define RX_DATE_LEAP "(?:\\d\\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
#define RX_DATE                                                                                      \
  "(?:\\d{4}-(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|\\d{4}-(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|" \
  "\\d{4}-02-(?:0[1-9]|1\\d|2[0-8])|" RX_DATE_LEAP "-02-29)"
#define RX_TIME "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:Z|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)"
#define RX_LABEL "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#define RX_UNRES "A-Za-z0-9\\-._~!$&'()*+,;="
#define RX_PCT "%[0-9A-Fa-f]{2}"
#define RX_PCHAR "(?:[" RX_UNRES ":@]|" RX_PCT ")"
#define RX_URI_TAIL "(?:\\?(?:" RX_PCHAR "|[/?])*)?(?:#(?:" RX_PCHAR "|[/?])*)?"
#define RX_URI_HIER                                                                                  \
  "(?://(?:(?:[" RX_UNRES ":]|" RX_PCT ")*@)?(?:[" RX_UNRES "]|" RX_PCT ")*(?::\\d*)?(?:/" RX_PCHAR \
  "*)*|/(?:" RX_PCHAR "+(?:/" RX_PCHAR "*)*)?|" RX_PCHAR "+(?:/" RX_PCHAR "*)*|)"
#define RX_DUR_T "T(?:\\d+H(?:\\d+M(?:\\d+S)?)?|\\d+M(?:\\d+S)?|\\d+S)"

static const struct {
  const char *name, *rx;
} formats[] = {
    {"date", RX_DATE},
    {"time", RX_TIME},
    {"date-time", RX_DATE "T" RX_TIME},
    {"uuid", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"},
    {"email", "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:" RX_LABEL
              "\\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"},
    {"hostname", RX_LABEL "(?:\\." RX_LABEL ")*"},
    {"ipv4", "(?:(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)"},
    {"uri", "[A-Za-z][A-Za-z0-9+.-]*:" RX_URI_HIER RX_URI_TAIL},
    {"duration", "P(?:(?:\\d+Y(?:\\d+M)?(?:\\d+D)?|\\d+M(?:\\d+D)?|\\d+D)(?:" RX_DUR_T ")?|" RX_DUR_T "|\\d+W)"},
    {"json-pointer", "(?:/(?:[^/~]|~[01])*)*"},
};

/* formats the standard defines that this compiler cannot enforce: refused, not ignored */
static const char *const unsupported_formats[] = {
    "ipv6", "uri-reference", "iri", "iri-reference", "uri-template", "relative-json-pointer",
    "regex", "idn-email", "idn-hostname",
};

/* ---------------------------------------------------------------- strings */

/* the regex of a view's pattern or format (NULL: none); p->at and p->what set here */
static rx *view_regex(schema_base *c, const str_view *v, rxp *p, int *anchored) {
  memset(p, 0, sizeof *p);
  p->c = c;
  *anchored = 0;
  if (v->format) {
    const char *f = v->format->str;
    p->at = v->format_at, p->what = "format";
    for (size_t i = 0; i < sizeof formats / sizeof *formats; i++)
      if (!strcmp(f, formats[i].name)) {
        *anchored = 1;
        return rx_parse(p, formats[i].rx, strlen(formats[i].rx));
      }
    for (size_t i = 0; i < sizeof unsupported_formats / sizeof *unsupported_formats; i++)
      if (!strcmp(f, unsupported_formats[i])) {
        schema_fail(c, v->format_at, "unsupported format '%s'", f);
        p->err = 1;
        return NULL;
      }
    return NULL; /* a format the standard does not define: an annotation */
  }
  if (v->pattern) {
    p->at = v->pattern_at, p->what = "pattern";
    return rx_parse(p, v->pattern->str, v->pattern->n);
  }
  return NULL;
}

int leaf_string_check(schema_base *c, const str_view *v, const char *s, size_t n) {
  uint32_t *cp;
  size_t len;
  if (utf8_decode(s, n, &cp, &len) < 0) return schema_fail(c, NULL, "out of memory");
  int ok = len >= v->min_len && len <= v->max_len;
  for (int pass = 0; pass < 2 && ok; pass++) {
    str_view one = *v;
    if (pass == 0) one.pattern = NULL;
    else one.format = NULL;
    if (!one.pattern && !one.format) continue;
    rxp p;
    int anchored;
    rx *r = view_regex(c, &one, &p, &anchored);
    if (p.err) { rxp_free(&p); free(cp); return -1; }
    if (r) {
      unsigned char *in = calloc(len + 1, 1), *out = calloc(len + 1, 1);
      if (!in || !out) { free(in), free(out), rxp_free(&p), free(cp); return schema_fail(c, NULL, "out of memory"); }
      if (anchored) in[0] = 1;
      else memset(in, 1, len + 1);
      rx_run(r, cp, len, in, out);
      int hit = 0;
      if (anchored) hit = out[len];
      else
        for (size_t i = 0; i <= len; i++) hit |= out[i];
      ok = hit;
      free(in), free(out);
    }
    rxp_free(&p);
  }
  free(cp);
  return ok;
}

/* char{min,max} with the counts checked against the budget */
static int emit_counted(schema_base *c, const char *atom, uint64_t mn, uint64_t mx, const ml_json *at, sbuf *o) {
  uint64_t lim = c->opts.max_repeat;
  if (mn > lim || (mx != UINT64_MAX && mx > lim))
    return schema_fail(c, at, "minLength/maxLength %llu is over the compile budget (%llu)",
                       (unsigned long long)(mx != UINT64_MAX && mx > lim ? mx : mn), (unsigned long long)lim);
  if (mx == 0) { sb_puts(o, "\"\""); return 0; }
  sb_puts(o, atom);
  if (mn == 0 && mx == UINT64_MAX) sb_puts(o, "*");
  else if (mn == 1 && mx == UINT64_MAX) sb_puts(o, "+");
  else if (mn == 0 && mx == 1) sb_puts(o, "?");
  else if (mx == UINT64_MAX) sb_printf(o, "{%llu,}", (unsigned long long)mn);
  else if (mn == mx) sb_printf(o, "{%llu}", (unsigned long long)mn);
  else sb_printf(o, "{%llu,%llu}", (unsigned long long)mn, (unsigned long long)mx);
  return 0;
}

int leaf_string(schema_base *c, const str_view *v, sbuf *o) {
  if (v->min_len > v->max_len) return 1;
  if (v->pattern && v->format) {
    /* both hold: only the format's language when it is known to satisfy the pattern is
     * not something we can decide in general */
    str_view f = *v;
    f.pattern = NULL;
    rxp p;
    int anch;
    rx *r = view_regex(c, &f, &p, &anch);
    int err = p.err;
    rxp_free(&p);
    if (err) return -1;
    if (r) return schema_fail(c, v->pattern_at, "unsupported combination of 'pattern' and 'format'");
    str_view q = *v; /* an unknown format is an annotation */
    q.format = NULL;
    return leaf_string(c, &q, o);
  }
  rxp p;
  int anchored;
  rx *r = view_regex(c, v, &p, &anchored);
  if (p.err) { rxp_free(&p); return -1; }
  if (!r) {
    rxp_free(&p);
    sb_puts(o, "\"\\\"\" ");
    if (emit_counted(c, "char", v->min_len, v->max_len, v->len_at, o) < 0) return -1;
    sb_puts(o, " \"\\\"\"");
    return 0;
  }
  /* top-level alternatives are anchored each on its own */
  rx *alts[1] = {r};
  rx **br = alts;
  int nbr = 1;
  if (!anchored && r->kind == RX_ALT) br = r->k, nbr = r->n;
  sbuf body = {0};
  int nout = 0, rc = 0;
  uint32_t lmin = RX_INF, lmax = 0;
  for (int i = 0; i < nbr && rc == 0; i++) {
    int a0 = 1, a1 = 1;
    if (!anchored) {
      a0 = rx_strip(br[i], 0);
      a1 = rx_strip(br[i], 1);
      if (a0 < 0 || a1 < 0 || rx_has_anchor(br[i])) { rc = rx_err(&p, "has an anchor inside, which is not supported"); break; }
    }
    uint32_t mn, mx;
    int empty;
    rx_len(br[i], &mn, &mx, &empty);
    if (empty) continue;
    if (!a0 || !a1) mx = RX_INF;
    if (mn < lmin) lmin = mn;
    if (mx > lmax) lmax = mx;
    /* lengths: implied by the pattern, or merged into a pattern that is one repeated class */
    uint64_t need_min = v->min_len, need_max = v->max_len;
    int implied = mn >= need_min && (need_max == UINT64_MAX || (mx != RX_INF && mx <= need_max));
    const rx *one = br[i];
    while (one->kind == RX_SEQ && one->n == 1) one = one->k[0];
    if (nout++) sb_puts(&body, " | ");
    if (implied) {
      if (!a0) sb_puts(&body, "char* ");
      if (rx_emit(&p, br[i], &body) < 0) { rc = -1; break; }
      if (!a1) sb_puts(&body, " char*");
    } else if (a0 && a1 && one->kind == RX_REP && one->k[0]->kind == RX_SET) {
      uint64_t lo = one->min > need_min ? one->min : need_min;
      uint64_t hi = one->max == RX_INF ? need_max : (one->max < need_max ? one->max : need_max);
      if (lo > hi) { nout--; continue; }
      sbuf atom = {0};
      sb_puts(&atom, "( ");
      emit_set(&atom, &one->k[0]->set);
      sb_puts(&atom, " )");
      rc = emit_counted(c, atom.p ? atom.p : "char", lo, hi, v->pattern_at, &body);
      sb_free(&atom);
    } else if (a0 && a1 && one->kind == RX_SET && need_min <= 1 && need_max >= 1) {
      emit_set(&body, &one->set);
    } else {
      rc = schema_fail(c, v->pattern_at ? v->pattern_at : v->format_at,
                       "unsupported combination of '%s' and 'minLength'/'maxLength'", p.what);
    }
  }
  rxp_free(&p);
  if (rc < 0 || body.oom) { sb_free(&body); return rc < 0 ? -1 : schema_fail(c, NULL, "out of memory"); }
  if (!nout) { sb_free(&body); return 1; }
  sb_puts(o, "\"\\\"\" ( ");
  sb_puts(o, body.p);
  sb_puts(o, " ) \"\\\"\"");
  sb_free(&body);
  return 0;
}

/* the JSON text json.dumps(s, ensure_ascii=False) gives, as a GBNF literal */
void leaf_string_literal(sbuf *o, const char *s, size_t n) {
  sbuf j = {0};
  sb_puts(&j, "\"");
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    switch (ch) {
    case '"': sb_puts(&j, "\\\""); break;
    case '\\': sb_puts(&j, "\\\\"); break;
    case '\n': sb_puts(&j, "\\n"); break;
    case '\r': sb_puts(&j, "\\r"); break;
    case '\t': sb_puts(&j, "\\t"); break;
    case 8: sb_puts(&j, "\\b"); break;
    case 12: sb_puts(&j, "\\f"); break;
    default:
      if (ch < 0x20) sb_printf(&j, "\\u%04x", ch);
      else sb_put(&j, (const char *)&ch, 1);
    }
  }
  sb_puts(&j, "\"");
  if (j.oom) o->oom = 1;
  else put_literal(o, j.p, j.n);
  sb_free(&j);
}

/* ---------------------------------------------------------------- keys not in a set */

typedef struct trie {
  uint32_t c;
  int terminal;
  struct trie *kids, *next;
} trie;

static void trie_free(trie *t) {
  while (t) {
    trie *nx = t->next;
    trie_free(t->kids);
    free(t);
    t = nx;
  }
}

/* A string outside the set leaves the trie somewhere: either it takes a character no
 * branch has (then anything may follow), or it ends at a node that is no name. The two
 * are written apart, so the "anything" (char*) appears once instead of at every node:
 * key ::= "\"" ( deviate char* | stop ) "\"". */

/* deviate(node): the path to the first character that leaves the trie (that character
 * included); the children of a name with no children take any character */
/* one character as emit_set writes it; a printable ASCII one that needs no escape
 * (not '"', '\\' or '/', which JSON may also escape) directly */
static void emit_char(sbuf *o, uint32_t c) {
  if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\' && c != '/') {
    sb_put(o, "[", 1);
    put_class_char(o, c);
    sb_put(o, "]", 1);
    return;
  }
  cset one = {0};
  cs_add(&one, c, c);
  emit_set(o, &one);
  free(one.r);
}

static void emit_deviate(const trie *node, sbuf *o) {
  int n = 0;
  sb_puts(o, "( ");
  cset other = {0};
  for (const trie *k = node; k; k = k->next) cs_add(&other, k->c, k->c);
  cs_norm(&other);
  cs_negate(&other);
  /* the leaving character written raw: an escaped one (\", \\, \n, \u0001...) is refused
   * there, which keeps the grammar small (escapes at every node were most of it) */
  cset raw = {0};
  for (int i = 0; i < other.n; i++) {
    uint32_t lo = other.r[i].lo < 0x20 ? 0x20 : other.r[i].lo, hi = other.r[i].hi;
    for (uint32_t cut = 0; lo <= hi && cut < 2; cut++) {
      uint32_t x = cut ? '\\' : '"';
      if (x < lo || x > hi) continue;
      if (x > lo) cs_add(&raw, lo, x - 1);
      lo = x + 1;
    }
    if (lo <= hi) cs_add(&raw, lo, hi);
  }
  cs_norm(&raw);
  free(other.r);
  if (raw.n) {
    emit_set(o, &raw);
    n++;
  }
  free(raw.r);
  for (const trie *k = node; k; k = k->next) {
    if (n++) sb_puts(o, " | ");
    emit_char(o, k->c);
    sb_puts(o, " ");
    if (k->kids) emit_deviate(k->kids, o);
    else sb_puts(o, "char");
  }
  sb_puts(o, " )");
}

/* does stop(node) have any string: a node below (or this one) that is no name */
static int has_stop(const trie *node, int terminal) {
  if (!terminal) return 1;
  for (const trie *k = node; k; k = k->next)
    if (k->kids && has_stop(k->kids, k->terminal)) return 1;
  return 0;
}

/* stop(node): the paths to a node that is no name, ending there */
static void emit_stop(const trie *node, int terminal, sbuf *o) {
  int n = 0;
  sb_puts(o, "( ");
  if (!terminal) { sb_puts(o, "\"\""); n++; }
  for (const trie *k = node; k; k = k->next) {
    if (!k->kids || !has_stop(k->kids, k->terminal)) continue;
    if (n++) sb_puts(o, " | ");
    emit_char(o, k->c);
    sb_puts(o, " ");
    emit_stop(k->kids, k->terminal, o);
  }
  sb_puts(o, " )");
}

int leaf_key_not_in(schema_base *c, const ml_json *const *names, int n, sbuf *o) {
  trie *root = NULL;
  int root_terminal = 0, rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    uint32_t *cp;
    size_t len;
    if (utf8_decode(names[i]->key ? names[i]->key : names[i]->str,
                    names[i]->key ? names[i]->key_len : names[i]->n, &cp, &len) < 0) { rc = -1; break; }
    trie **level = &root;
    int *term = &root_terminal;
    for (size_t j = 0; j < len; j++) {
      trie *t = *level;
      while (t && t->c != cp[j]) t = t->next;
      if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) { rc = -1; break; }
        t->c = cp[j];
        t->next = *level;
        *level = t;
      }
      term = &t->terminal;
      level = &t->kids;
    }
    if (!rc) *term = 1;
    free(cp);
  }
  if (rc) { trie_free(root); return schema_fail(c, NULL, "out of memory"); }
  sb_puts(o, "\"\\\"\" ");
  if (root) {
    sb_puts(o, "( ");
    emit_deviate(root, o);
    sb_puts(o, " char*");
    if (has_stop(root, root_terminal)) {
      sb_puts(o, " | ");
      emit_stop(root, root_terminal, o);
    }
    sb_puts(o, " )");
  } else {
    sb_puts(o, root_terminal ? "char+" : "char*");
  }
  sb_puts(o, " \"\\\"\"");
  trie_free(root);
  return 0;
}

/* ---------------------------------------------------------------- numbers */

/* a decimal as digit strings: magnitude = ip.fp; ip without leading zeros ("0" for
 * zero), fp without trailing zeros */
typedef struct {
  int neg;
  char ip[400], fp[400];
} dec;

static int dec_parse(const char *t, dec *d) {
  memset(d, 0, sizeof *d);
  char digits[800];
  size_t nd = 0;
  long point = -1, exp = 0;
  const char *s = t;
  if (*s == '-') d->neg = 1, s++;
  for (; (*s >= '0' && *s <= '9') || *s == '.'; s++) {
    if (*s == '.') { point = (long)nd; continue; }
    if (nd >= 300) return -1;
    digits[nd++] = *s;
  }
  if (point < 0) point = (long)nd;
  if (*s == 'e' || *s == 'E') {
    exp = strtol(s + 1, NULL, 10);
    if (exp > 300 || exp < -300) return -1;
  }
  point += exp;
  if (point > 380 || point < -80 || (long)nd - point > 380) return -1;
  /* integer part: digits[0 .. point) padded with zeros, fraction: the rest */
  size_t ni = 0, nf = 0;
  for (long i = 0; i < point; i++) {
    char ch = i < (long)nd ? digits[i] : '0';
    if (ni == 0 && ch == '0') continue;
    d->ip[ni++] = ch;
  }
  if (ni == 0) d->ip[ni++] = '0';
  for (long i = point < 0 ? point : point; i < (long)nd; i++) d->fp[nf++] = i < 0 ? '0' : digits[i];
  while (nf > 0 && d->fp[nf - 1] == '0') nf--;
  d->ip[ni] = 0, d->fp[nf] = 0;
  if (!strcmp(d->ip, "0") && nf == 0) d->neg = 0;
  return 0;
}

static int ipcmp(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la != lb) return la < lb ? -1 : 1;
  int c = strcmp(a, b);
  return c < 0 ? -1 : c > 0;
}

/* magnitude digit strings +1 / -1 (a > 0 for -1) */
static void ip_inc(char *a) {
  size_t n = strlen(a);
  for (size_t i = n; i-- > 0;) {
    if (a[i] < '9') { a[i]++; return; }
    a[i] = '0';
  }
  memmove(a + 1, a, n + 1);
  a[0] = '1';
}

static void ip_dec(char *a) {
  size_t n = strlen(a);
  for (size_t i = n; i-- > 0;) {
    if (a[i] > '0') { a[i]--; break; }
    a[i] = '9';
  }
  if (a[0] == '0' && a[1]) memmove(a, a + 1, n);
}

/* [0-9]{n} and friends */
static void any_digits(sbuf *o, size_t n) {
  if (n == 0) return;
  if (n == 1) sb_puts(o, " [0-9]");
  else sb_printf(o, " [0-9]{%zu}", n);
}

/* digit strings of equal length L between a and b inclusive */
static void same_len(sbuf *o, const char *a, const char *b, size_t L) {
  if (L == 0) { sb_puts(o, "\"\""); return; }
  if (!strncmp(a, b, L)) { put_literal(o, a, L); return; }
  if (a[0] == b[0]) {
    put_literal(o, a, 1);
    sb_puts(o, " ");
    same_len(o, a + 1, b + 1, L - 1);
    return;
  }
  int a_zero = 1, b_nine = 1;
  for (size_t i = 1; i < L; i++) a_zero &= a[i] == '0', b_nine &= b[i] == '9';
  char lo = a_zero ? a[0] : (char)(a[0] + 1), hi = b_nine ? b[0] : (char)(b[0] - 1);
  int n = 0;
  sb_puts(o, "( ");
  if (!a_zero) {
    char nines[400];
    memset(nines, '9', L - 1);
    put_literal(o, a, 1);
    sb_puts(o, " ");
    same_len(o, a + 1, nines, L - 1);
    n++;
  }
  if (lo <= hi) {
    if (n++) sb_puts(o, " | ");
    if (lo == hi) sb_printf(o, "\"%c\"", lo);
    else sb_printf(o, "[%c-%c]", lo, hi);
    any_digits(o, L - 1);
  }
  if (!b_nine) {
    char zeros[400];
    memset(zeros, '0', L - 1);
    if (n++) sb_puts(o, " | ");
    put_literal(o, b, 1);
    sb_puts(o, " ");
    same_len(o, zeros, b + 1, L - 1);
  }
  sb_puts(o, " )");
}

/* natural numbers in [a, b] (b NULL: unbounded), a <= b, as canonical digit strings */
static void nat_range(sbuf *o, const char *a, const char *b) {
  size_t la = strlen(a), lb = b ? strlen(b) : 0;
  if (b && la == lb) { same_len(o, a, b, la); return; }
  char top[400], low[400];
  sb_puts(o, "( ");
  memset(top, '9', la);
  same_len(o, a, top, la);
  size_t end = b ? lb : la + 1;
  for (size_t L = la + 1; L < end; L++) {
    sb_puts(o, " | [1-9]");
    any_digits(o, L - 1);
  }
  if (b) {
    low[0] = '1';
    memset(low + 1, '0', lb - 1);
    sb_puts(o, " | ");
    same_len(o, low, b, lb);
  } else {
    sb_printf(o, " | [1-9] [0-9]{%zu,}", la);
  }
  sb_puts(o, " )");
}

/* fraction digits after the integer part: whether "no fraction" is allowed (*empty) and
 * the nonempty digit strings allowed (appended to o; returns 0 when there are none).
 * lo/hi: bound fraction digits when the integer part equals the bound's, else NULL. */
static int frac_digits(sbuf *o, const char *lo, int ls, const char *hi, int hs, size_t i, int *empty, int depth) {
  int lt = lo != NULL, ht = hi != NULL;
  int lex = lt && i >= strlen(lo), hex = ht && i >= strlen(hi);
  if (!lt && !ht) { *empty = 1; sb_puts(o, "[0-9]+"); return 1; }
  if (lt && lex && !ht) {
    if (!ls) { *empty = 1; sb_puts(o, "[0-9]+"); return 1; }
    *empty = 0;
    sb_puts(o, "\"0\"* [1-9] [0-9]*");
    return 1;
  }
  if (ht && hex && !lt) {
    *empty = !hs;
    if (hs) return 0;
    sb_puts(o, "\"0\"+");
    return 1;
  }
  if (lt && ht && lex && hex) {
    *empty = !ls && !hs;
    if (!*empty) return 0;
    sb_puts(o, "\"0\"+");
    return 1;
  }
  /* end here: below lo unless lo's remaining digits are zeros; hi is never exceeded */
  *empty = 1;
  if (lt) *empty = lex && !ls;
  if (ht && *empty) *empty = !(hex && hs);
  if (depth > 800) return 0;
  int ld = lt ? (lex ? '0' : lo[i]) : '0', hd = ht ? (hex ? '0' : hi[i]) : '9';
  int n = 0;
  sb_puts(o, "( ");
  if (ld + (lt ? 1 : 0) <= hd - (ht ? 1 : 0)) {
    char a = (char)(ld + (lt ? 1 : 0)), b = (char)(hd - (ht ? 1 : 0));
    if (a == b) sb_printf(o, "\"%c\"", a);
    else sb_printf(o, "[%c-%c]", a, b);
    sb_puts(o, " [0-9]*");
    n++;
  }
  for (int side = 0; side < 2; side++) {
    int tight_here = side == 0 ? lt : ht;
    int dch = side == 0 ? ld : hd;
    if (!tight_here) continue;
    if (side == 1 && lt && ld == hd) continue; /* same digit: handled by side 0 */
    int keep_lo = side == 0 ? 1 : (lt && ld == hd), keep_hi = side == 1 ? 1 : (ht && ld == hd);
    sbuf rest = {0};
    int e;
    int any = frac_digits(&rest, keep_lo ? lo : NULL, ls, keep_hi ? hi : NULL, hs, i + 1, &e, depth + 1);
    if (any || e) {
      if (n++) sb_puts(o, " | ");
      sb_printf(o, "\"%c\"", dch);
      if (any) sb_printf(o, e ? " ( %s )?" : " %s", rest.p);
    }
    sb_free(&rest);
  }
  sb_puts(o, " )");
  return n > 0;
}

/* one integer part followed by its allowed fraction */
static int ip_then_frac(sbuf *o, const char *ipstr, const char *lo, int ls, const char *hi, int hs) {
  sbuf f = {0};
  int e;
  int any = frac_digits(&f, lo, ls, hi, hs, 0, &e, 0);
  if (!any && !e) { sb_free(&f); return 0; }
  put_literal(o, ipstr, strlen(ipstr));
  if (any) sb_printf(o, " ( \".\" %s )%s", f.p, e ? "?" : "");
  sb_free(&f);
  return 1;
}

/* non-negative magnitudes between L and H (either may be NULL), as JSON numbers without
 * sign and exponent; `integer`: no fraction. Returns the number of alternatives. */
static int mag_range(sbuf *o, const dec *L, int ls, const dec *H, int hs, int integer) {
  const char *li = L ? L->ip : "0";
  int n = 0;
  if (integer) {
    char a[400], b[400];
    strcpy(a, li);
    if (L && (L->fp[0] || ls)) ip_inc(a);
    if (H) {
      strcpy(b, H->ip);
      if (!H->fp[0] && hs) {
        if (!strcmp(b, "0")) return 0;
        ip_dec(b);
      }
      if (ipcmp(a, b) > 0) return 0;
    }
    nat_range(o, a, H ? b : NULL);
    return 1;
  }
  if (H && ipcmp(li, H->ip) > 0) return 0;
  if (H && !strcmp(li, H->ip)) return ip_then_frac(o, li, L ? L->fp : "", L ? ls : 0, H->fp, hs);
  sb_puts(o, "( ");
  if (L) n += ip_then_frac(o, li, L->fp, ls, NULL, 0);
  char a[400], b[400];
  strcpy(a, li);
  if (L) ip_inc(a);
  int mid = 1;
  if (H) {
    strcpy(b, H->ip);
    if (!strcmp(b, "0")) mid = 0;
    else ip_dec(b);
    if (mid && ipcmp(a, b) > 0) mid = 0;
  }
  if (mid) {
    if (n++) sb_puts(o, " | ");
    nat_range(o, a, H ? b : NULL);
    sb_puts(o, " ( \".\" [0-9]+ )?");
  }
  if (H) {
    sbuf t = {0};
    if (ip_then_frac(&t, H->ip, NULL, 0, H->fp, hs)) {
      if (n++) sb_puts(o, " | ");
      sb_puts(o, t.p);
    }
    sb_free(&t);
  }
  sb_puts(o, " )");
  return n;
}

/* unsigned magnitudes with fraction and exponent: any, and only those above zero */
static const char num_mag_exp[] = "( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?";
static const char num_pos_exp[] =
    "( [1-9] [0-9]* ( \".\" [0-9]+ )? | \"0\" \".\" \"0\"* [1-9] [0-9]* ) ( [eE] [-+]? [0-9]+ )?";

/* a number literal of an enum or const: every JSON text of the same value without an
 * exponent (2 for 2.0, 2.50 for 2.5, -0 for 0), and the text as written */
void leaf_number_literal(sbuf *o, const char *text) {
  dec d;
  if (dec_parse(text, &d) < 0) { sb_printf(o, "\"%s\"", text); return; }
  int zero = !strcmp(d.ip, "0") && !d.fp[0];
  sb_puts(o, "( ");
  if (zero) sb_puts(o, "\"-\"? ");
  else if (d.neg) sb_puts(o, "\"-\" ");
  sb_printf(o, "\"%s\"", d.ip);
  if (d.fp[0]) sb_printf(o, " \".%s\" \"0\"*", d.fp);
  else sb_puts(o, " ( \".\" \"0\"+ )?");
  if (strpbrk(text, "eE")) sb_printf(o, " | \"%s\"", text);
  sb_puts(o, " )");
}

int leaf_number(schema_base *c, const num_view *v, sbuf *o) {
  if (!v->lo.set && !v->hi.set) {
    sb_puts(o, v->integer ? leaf_integer_rule : leaf_number_rule);
    return 0;
  }
  dec lo, hi;
  const dec *L = NULL, *H = NULL;
  if (v->lo.set) {
    if (dec_parse(v->lo.value->str, &lo) < 0) return schema_fail(c, v->at, "numeric bound %s is out of range", v->lo.value->str);
    L = &lo;
  }
  if (v->hi.set) {
    if (dec_parse(v->hi.value->str, &hi) < 0) return schema_fail(c, v->at, "numeric bound %s is out of range", v->hi.value->str);
    H = &hi;
  }
  int ls = v->lo.exclusive, hs = v->hi.exclusive;
  sbuf alts = {0};
  int n = 0;
  /* a sign whose whole half-line is inside the bounds takes any magnitude, exponent
   * form included (1e-05 >= 0); only the bounded side is written digit by digit */
  int lo_zero = L && !strcmp(L->ip, "0") && !L->fp[0], hi_zero = H && !strcmp(H->ip, "0") && !H->fp[0];
  if (!v->integer && !H && (!L || L->neg || lo_zero)) {
    sb_puts(&alts, L && lo_zero && ls ? num_pos_exp : num_mag_exp);
    n++;
  } else if (!H || !H->neg) {
    dec zero;
    dec_parse("0", &zero);
    const dec *l = L && !L->neg ? L : &zero;
    int lsx = L && !L->neg ? ls : 0;
    sbuf t = {0};
    if (mag_range(&t, l, lsx, H, hs, v->integer)) {
      n++;
      sb_puts(&alts, t.p);
    }
    sb_free(&t);
  }
  /* negative values: "-" and a magnitude between |H| (or 0) and |L| */
  if (!v->integer && !L && (!H || !H->neg)) {
    if (n++) sb_puts(&alts, " | ");
    sb_printf(&alts, "\"-\" %s", H && hi_zero && hs ? num_pos_exp : num_mag_exp);
  } else if (!L || L->neg) {
    dec zero, ml, mh;
    dec_parse("0", &zero);
    const dec *lo_m = &zero;
    int lo_s = 0;
    if (H && H->neg) mh = *H, mh.neg = 0, lo_m = &mh, lo_s = hs;
    else if (H && !strcmp(H->ip, "0") && !H->fp[0] && hs) lo_s = 1;
    const dec *hi_m = NULL;
    if (L) ml = *L, ml.neg = 0, hi_m = &ml;
    sbuf t = {0};
    int k = mag_range(&t, lo_m, lo_s, hi_m, ls, v->integer);
    if (k) {
      if (n++) sb_puts(&alts, " | ");
      sb_printf(&alts, "\"-\" %s", t.p);
    }
    sb_free(&t);
  }
  if (!n || !alts.p) { sb_free(&alts); return 1; }
  sb_printf(o, "( %s )", alts.p);
  sb_free(&alts);
  return 0;
}
