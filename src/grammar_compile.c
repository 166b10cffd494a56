/* grammar_compile.c: AST -> byte-level DFAs ("machines") with call edges.
 *
 * Every rule that is not recursive is inlined into its users, so the regular parts of a
 * grammar (strings, numbers, white space, literals, whole non-recursive JSON schemas)
 * become plain DFA states and cost one table lookup per byte. Only the root and the rules
 * on a cycle of references stay machines of their own, entered through call edges; at
 * run time a configuration is a set of stacks of machine states (grammar_match.c).
 *
 * Steps: checks on the AST (undefined rules are the parser's; here left recursion and
 * rules that can never finish), Thompson NFA fragments over bytes (code point classes
 * become UTF-8 byte sequences; each non-recursive rule is built once as a template and
 * copied where used; {m,n} copies its operand), byte classes, subset construction per
 * machine, then pruning of states that cannot reach an end and the tables the matcher
 * reads (epsilon-end, first bytes). Every size is checked against the GX_MAX_* budget
 * before it is allocated, so hostile grammars fail with a message instead of exhausting
 * memory or time.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"


typedef struct frag {
  int32_t in, out; /* out: an N_EPS state with out == -1, to be linked */
} frag;

typedef struct cc {
  gx_ast *a;
  nst *t;               /* the templates, once the machines are being built (else NULL: in n) */
  int32_t n_machines;
  nst *n;
  int32_t nn, cap;
  int32_t *machine_of;   /* rule -> machine, -1 inlined */
  int32_t *tmpl_lo, *tmpl_hi; /* rule template fragment [lo, hi); tmpl_lo -1: built in place (used once) */
  frag *tmpl;
  int depth;
  uint8_t *rpool;       /* byte pairs of N_RANGES states */
  int32_t n_rpool, cap_rpool;
  int dead;             /* some fragment can never reach its exit (an empty class) */
  int64_t *est;         /* estimated NFA states of each inlined rule (the inlining policy) */
  int32_t *idepth;
  int32_t *mnode;       /* AST node of each machine's body */
  int32_t nm, cap_m;
  int32_t *node_machine; /* AST node -> machine made for a large repeated subexpression, -1 */
} cc;

#define GX_REP_CALL_MIN 128      /* a repeated subexpression of this many NFA states ... */
#define GX_REP_CALL_TOTAL 65536  /* ... with copies this large in all becomes a machine of its own */

static int64_t estimate(const gx_ast *a, int32_t node, const int32_t *machine_of, const int64_t *est,
                        const int32_t *idepth, int32_t *dmax);

static int32_t add_machine(cc *c, int32_t node) {
  if (c->nm == c->cap_m) {
    int32_t ncap = c->cap_m ? c->cap_m * 2 : 16;
    int32_t *p = realloc(c->mnode, (size_t)ncap * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    c->mnode = p;
    c->cap_m = ncap;
  }
  c->mnode[c->nm] = node;
  return c->nm++;
}

static void *xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz);
  if (!p) ml_seterr("out of memory (grammar)");
  return p;
}

static int too_large(void) {
  ml_seterr("grammar too large: more than %d automaton states after expanding repetitions and rules", GX_MAX_NFA);
  return -1;
}

static int32_t nadd(cc *c, int kind, int lo, int hi, int32_t call) {
  if (c->nn >= GX_MAX_NFA) return too_large();
  if (c->nn == c->cap) {
    int32_t nc = c->cap ? c->cap * 2 : 1024;
    nst *p = realloc(c->n, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    c->n = p;
    c->cap = nc;
  }
  nst *s = &c->n[c->nn];
  s->kind = (uint8_t)kind;
  s->lo = (uint8_t)lo;
  s->hi = (uint8_t)hi;
  s->pad = 0;
  s->out = s->out2 = -1;
  s->call = call;
  return c->nn++;
}

/* Append a copy of states [lo, hi) of src (NULL: the array being built; self-contained:
 * edges stay inside). *delta: what to add to an index of the original to get the copy's.
 * 0 or -1. */
static int copy_range(cc *c, const nst *src, int32_t lo, int32_t hi, int32_t *delta_out) {
  int32_t len = hi - lo;
  if ((int64_t)c->nn + len > GX_MAX_NFA) return too_large();
  while (c->cap < c->nn + len) {
    int32_t nc = c->cap ? c->cap * 2 : 1024;
    nst *p = realloc(c->n, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    c->n = p;
    c->cap = nc;
  }
  if (!src) src = c->n; /* (after the realloc) */
  int32_t delta = c->nn - lo;
  memcpy(c->n + c->nn, src + lo, (size_t)len * sizeof *c->n);
  for (int32_t i = c->nn; i < c->nn + len; i++) {
    if (c->n[i].out >= 0) c->n[i].out += delta;
    if (c->n[i].out2 >= 0) c->n[i].out2 += delta;
  }
  c->nn += len;
  *delta_out = delta;
  return 0;
}

/* ---- code point ranges -> UTF-8 byte-range sequences ---- */

static int uvec_push(uvec *v, const useq *q) {
  if (v->n == v->cap) {
    int32_t nc = v->cap ? v->cap * 2 : 16;
    useq *p = realloc(v->s, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    v->s = p;
    v->cap = nc;
  }
  v->s[v->n++] = *q;
  return 0;
}

int gx_utf8_split(uint32_t lo, uint32_t hi, uvec *out) {
  if (lo > hi) return 0;
  static const uint32_t maxes[] = {0x7F, 0x7FF, 0xFFFF};
  for (int k = 0; k < 3; k++)
    if (lo <= maxes[k] && maxes[k] < hi) {
      if (gx_utf8_split(lo, maxes[k], out) < 0) return -1;
      return gx_utf8_split(maxes[k] + 1, hi, out);
    }
  useq q;
  if (hi < 0x80) {
    q.lo[0] = (uint8_t)lo;
    q.hi[0] = (uint8_t)hi;
    q.len = 1;
    return uvec_push(out, &q);
  }
  for (int i = 1; i < 4; i++) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        if (gx_utf8_split(lo, lo | m, out) < 0) return -1;
        return gx_utf8_split((lo | m) + 1, hi, out);
      }
      if ((hi & m) != m) {
        if (gx_utf8_split(lo, (hi & ~m) - 1, out) < 0) return -1;
        return gx_utf8_split(hi & ~m, hi, out);
      }
    }
  }
  uint8_t a[4], b[4];
  int n = gx_utf8_encode(lo, a);
  gx_utf8_encode(hi, b);
  for (int i = 0; i < n; i++) q.lo[i] = a[i], q.hi[i] = b[i];
  q.len = n;
  return uvec_push(out, &q);
}

/* ---- fragments ---- */

static int build(cc *c, int32_t node, frag *f);

static int build_bytes(cc *c, const uint8_t *b, int32_t n, frag *f) {
  int32_t first = -1, prev = -1;
  for (int32_t i = 0; i < n; i++) {
    int32_t s = nadd(c, N_RANGE, b[i], b[i], -1);
    if (s < 0) return -1;
    if (prev >= 0) c->n[prev].out = s;
    else first = s;
    prev = s;
  }
  int32_t e = nadd(c, N_EPS, 0, 0, -1);
  if (e < 0) return -1;
  if (prev >= 0) c->n[prev].out = e;
  else first = e;
  f->in = first;
  f->out = e;
  return 0;
}

/* One state taking the byte ranges pairs[0..n) to out: N_RANGE for one range, N_RANGES
 * for several (their pairs in the shared pool: copies of the state share them). */
static int32_t add_ranges(cc *c, const uint8_t *pairs, int n, int32_t out) {
  int32_t first = -1;
  while (n > 0) { /* at most 255 pairs a state: chain splits beyond (never for bytes) */
    int k = n > 255 ? 255 : n;
    int32_t s;
    if (k == 1) {
      s = nadd(c, N_RANGE, pairs[0], pairs[1], -1);
    } else {
      if (c->n_rpool + 2 * k > c->cap_rpool) {
        int32_t nc = c->cap_rpool ? c->cap_rpool * 2 : 256;
        while (nc < c->n_rpool + 2 * k) nc *= 2;
        uint8_t *p = realloc(c->rpool, (size_t)nc);
        if (!p) return ml_seterr("out of memory (grammar)"), -1;
        c->rpool = p;
        c->cap_rpool = nc;
      }
      memcpy(c->rpool + c->n_rpool, pairs, (size_t)2 * (size_t)k);
      s = nadd(c, N_RANGES, 0, 0, c->n_rpool);
      if (s >= 0) c->n[s].pad = (uint8_t)k;
      c->n_rpool += 2 * k;
    }
    if (s < 0) return -1;
    c->n[s].out = out;
    if (first >= 0) { /* more than 255 pairs: a split in front */
      int32_t sp = nadd(c, N_EPS, 0, 0, -1);
      if (sp < 0) return -1;
      c->n[sp].out = first;
      c->n[sp].out2 = s;
      s = sp;
    }
    first = s;
    pairs += 2 * k;
    n -= k;
  }
  return first;
}

/* A code point class as UTF-8: sequences that share their tail share its states, and the
 * first bytes that lead to the same state are one state (the inside of a JSON string is
 * about 15 states, a hex digit one). */
static int build_class(cc *c, const uint32_t *r, int32_t npairs, frag *f) {
  uvec v = {0};
  for (int32_t i = 0; i < npairs; i++)
    if (gx_utf8_split(r[2 * i], r[2 * i + 1], &v) < 0) return free(v.s), -1;
  if (v.n == 0) { /* matches nothing: an entry with no way to the exit */
    c->dead = 1;
    f->in = nadd(c, N_EPS, 0, 0, -1);
    f->out = f->in < 0 ? -1 : nadd(c, N_EPS, 0, 0, -1);
    return f->out < 0 ? -1 : 0;
  }
  int32_t exit = nadd(c, N_EPS, 0, 0, -1);
  if (exit < 0) return free(v.s), -1;
  /* tails: (lo, hi, next) -> state, a few dozen at most */
  int32_t nt = 0, cap_t = 4 * v.n + 4;
  int32_t *tk = malloc((size_t)cap_t * 4 * sizeof *tk); /* lo, hi, next, state */
  /* groups of first bytes by where they lead */
  int32_t ng = 0;
  int32_t *gnext = malloc((size_t)v.n * sizeof *gnext);
  uint8_t *gpairs = malloc((size_t)v.n * (size_t)v.n * 2 + 2);
  int32_t *gcount = calloc((size_t)v.n, sizeof *gcount);
  int rc = 0;
  if (!tk || !gnext || !gpairs || !gcount) rc = (ml_seterr("out of memory (grammar)"), -1);
  for (int32_t i = 0; i < v.n && rc == 0; i++) {
    const useq *q = &v.s[i];
    int32_t next = exit;
    for (int k = q->len - 1; k >= 1 && rc == 0; k--) {
      int32_t found = -1;
      for (int32_t j = 0; j < nt && found < 0; j++)
        if (tk[4 * j] == q->lo[k] && tk[4 * j + 1] == q->hi[k] && tk[4 * j + 2] == next) found = tk[4 * j + 3];
      if (found < 0) {
        uint8_t pr[2] = {q->lo[k], q->hi[k]};
        found = add_ranges(c, pr, 1, next);
        if (found < 0) rc = -1;
        else {
          tk[4 * nt] = q->lo[k], tk[4 * nt + 1] = q->hi[k], tk[4 * nt + 2] = next, tk[4 * nt + 3] = found;
          nt++;
        }
      }
      next = found;
    }
    if (rc < 0) break;
    int32_t gi = 0;
    while (gi < ng && gnext[gi] != next) gi++;
    if (gi == ng) gnext[ng++] = next;
    uint8_t *gp = gpairs + (size_t)gi * (size_t)v.n * 2;
    gp[2 * gcount[gi]] = q->lo[0];
    gp[2 * gcount[gi] + 1] = q->hi[0];
    gcount[gi]++;
  }
  int32_t entry = -1;
  for (int32_t gi = ng - 1; gi >= 0 && rc == 0; gi--) { /* first-byte states, split in front */
    int32_t s = add_ranges(c, gpairs + (size_t)gi * (size_t)v.n * 2, gcount[gi], gnext[gi]);
    if (s < 0) {
      rc = -1;
    } else if (entry < 0) {
      entry = s;
    } else {
      int32_t sp = nadd(c, N_EPS, 0, 0, -1);
      if (sp < 0) rc = -1;
      else c->n[sp].out = s, c->n[sp].out2 = entry, entry = sp;
    }
  }
  if (rc == 0) {
    f->in = entry;
    f->out = exit;
  }
  free(tk);
  free(gnext);
  free(gpairs);
  free(gcount);
  free(v.s);
  return rc;
}

static int build_rep(cc *c, int32_t child, int32_t lo, int32_t hi, frag *f) {
  if (hi == 0) {
    int32_t e = nadd(c, N_EPS, 0, 0, -1);
    if (e < 0) return -1;
    f->in = f->out = e;
    return 0;
  }
  int64_t copies = (int64_t)lo + (hi < 0 ? (lo == 0 ? 1 : 0) : hi - lo);
  if (copies < 1) copies = 1;
  int32_t t0 = c->nn;
  frag t;
  if (build(c, child, &t) < 0) return -1;
  if (copies >= 2 && c->nn - t0 >= GX_REP_CALL_MIN && (int64_t)(c->nn - t0) * copies > GX_REP_CALL_TOTAL) {
    /* a large subexpression repeated many times (an array of objects up to maxItems):
     * a machine of its own, called from each copy, rather than copies of its states
     * (small ones, like a string's characters, stay plain DFA states) */
    c->nn = t0;
    if (!c->node_machine) {
      c->node_machine = malloc((size_t)c->a->n_nodes * sizeof *c->node_machine);
      if (!c->node_machine) return ml_seterr("out of memory (grammar)"), -1;
      for (int32_t i = 0; i < c->a->n_nodes; i++) c->node_machine[i] = -1;
    }
    if (c->node_machine[child] < 0 && (c->node_machine[child] = add_machine(c, child)) < 0) return -1;
    int32_t s = nadd(c, N_CALL, 0, 0, c->node_machine[child]), x = s < 0 ? -1 : nadd(c, N_EPS, 0, 0, -1);
    if (x < 0) return -1;
    c->n[s].out = x;
    t.in = s;
    t.out = x;
  }
  int32_t t1 = c->nn, size = t1 - t0;
  if ((int64_t)c->nn + (copies - 1) * size + 2 * copies + 2 > GX_MAX_NFA) return too_large();
  /* all copies first, while the template is still self-contained */
  frag *cp = malloc((size_t)copies * sizeof *cp);
  if (!cp) return ml_seterr("out of memory (grammar)"), -1;
  cp[0] = t;
  for (int64_t k = 1; k < copies; k++) {
    int32_t d;
    if (copy_range(c, NULL, t0, t1, &d) < 0) return free(cp), -1;
    cp[k].in = t.in + d;
    cp[k].out = t.out + d;
  }
  int32_t exit = nadd(c, N_EPS, 0, 0, -1);
  if (exit < 0) return free(cp), -1;
  int32_t entry = -1, tail = -1; /* tail: the exit state of the part built so far */
  int64_t k = 0;
  for (; k < lo; k++) { /* mandatory copies, chained */
    if (tail >= 0) c->n[tail].out = cp[k].in;
    else entry = cp[k].in;
    tail = cp[k].out;
  }
  if (hi < 0) {
    if (lo >= 1) { /* loop on the last mandatory copy */
      c->n[tail].out = cp[lo - 1].in;
      c->n[tail].out2 = exit;
    } else { /* star: split -> copy -> split */
      int32_t s = nadd(c, N_EPS, 0, 0, -1);
      if (s < 0) return free(cp), -1;
      c->n[s].out = cp[0].in;
      c->n[s].out2 = exit;
      c->n[cp[0].out].out = s;
      entry = s;
    }
  } else {
    for (; k < copies; k++) { /* optional copies: split -> copy -> next split | exit */
      int32_t s = nadd(c, N_EPS, 0, 0, -1);
      if (s < 0) return free(cp), -1;
      c->n[s].out = cp[k].in;
      c->n[s].out2 = exit;
      if (tail >= 0) c->n[tail].out = s;
      else entry = s;
      tail = cp[k].out;
    }
    c->n[tail].out = exit;
  }
  free(cp);
  f->in = entry;
  f->out = exit;
  return 0;
}

static int build(cc *c, int32_t node, frag *f) {
  const gx_node nd = c->a->nodes[node];
  if (++c->depth > 3 * GX_MAX_NEST + 16) {
    c->depth--;
    return gx_err(c->a, nd.pos, "expression nested too deeply");
  }
  int rc = 0;
  switch (nd.kind) {
  case GX_EMPTY: {
    int32_t e = nadd(c, N_EPS, 0, 0, -1);
    if (e < 0) rc = -1;
    f->in = f->out = e;
    break;
  }
  case GX_BOL:
  case GX_EOL: {
    int32_t s = nadd(c, nd.kind == GX_BOL ? N_BOL : N_EOL, 0, 0, -1), e = s < 0 ? -1 : nadd(c, N_EPS, 0, 0, -1);
    if (e < 0) rc = -1;
    else c->n[s].out = e, f->in = s, f->out = e;
    break;
  }
  case GX_BYTES: rc = build_bytes(c, c->a->bytes + nd.a, nd.b, f); break;
  case GX_CLASS: rc = build_class(c, nd.b ? c->a->ranges + nd.a : NULL, nd.b, f); break;
  case GX_SEQ: {
    frag prev = {-1, -1};
    for (int32_t i = 0; i < nd.b && rc == 0; i++) {
      frag k;
      rc = build(c, c->a->kids[nd.a + i], &k);
      if (rc < 0) break;
      if (i == 0) f->in = k.in;
      else c->n[prev.out].out = k.in;
      prev = k;
    }
    f->out = prev.out;
    break;
  }
  case GX_ALT: {
    int32_t split0 = c->nn;
    for (int32_t i = 0; i + 1 < nd.b && rc == 0; i++)
      if (nadd(c, N_EPS, 0, 0, -1) < 0) rc = -1;
    frag ks[16]; /* most alternations are short: no allocation for them */
    frag *k = rc != 0 ? NULL : nd.b <= 16 ? ks : malloc((size_t)nd.b * sizeof *k);
    if (rc == 0 && !k) rc = (ml_seterr("out of memory (grammar)"), -1);
    for (int32_t i = 0; i < nd.b && rc == 0; i++) rc = build(c, c->a->kids[nd.a + i], &k[i]);
    int32_t e = rc == 0 ? nadd(c, N_EPS, 0, 0, -1) : -1;
    if (rc == 0 && e < 0) rc = -1;
    if (rc == 0) {
      for (int32_t i = 0; i < nd.b; i++) c->n[k[i].out].out = e;
      for (int32_t i = 0; i + 1 < nd.b; i++) {
        c->n[split0 + i].out = k[i].in;
        c->n[split0 + i].out2 = i + 2 < nd.b ? split0 + i + 1 : k[i + 1].in;
      }
      f->in = nd.b > 1 ? split0 : k[0].in;
      f->out = e;
    }
    if (k != ks) free(k);
    break;
  }
  case GX_REP: rc = build_rep(c, nd.a, nd.b, nd.c, f); break;
  case GX_REF: {
    int32_t r = nd.a, m = c->machine_of[r];
    if (m >= 0) {
      int32_t s = nadd(c, N_CALL, 0, 0, m), e = s < 0 ? -1 : nadd(c, N_EPS, 0, 0, -1);
      if (e < 0) rc = -1;
      else {
        c->n[s].out = e;
        f->in = s;
        f->out = e;
      }
    } else if (c->tmpl_lo[r] < 0) { /* used once: built here, no template */
      rc = build(c, c->a->rules[r].body, f);
    } else {
      int32_t d;
      if (copy_range(c, c->t, c->tmpl_lo[r], c->tmpl_hi[r], &d) < 0) rc = -1;
      else {
        f->in = c->tmpl[r].in + d;
        f->out = c->tmpl[r].out + d;
      }
    }
    break;
  }
  default: rc = (ml_seterr("internal error: bad grammar node"), -1);
  }
  c->depth--;
  return rc;
}

/* ---- analysis of the AST ---- */

#define GX_INLINE_MAX 4096 /* NFA states above which a rule used more than once is not inlined */
#define GX_INLINE_DEPTH 48 /* longest chain of inlined references */

/* Estimated NFA states of a node once built (saturating), and the deepest chain of inlined
 * references under it. */
static int64_t estimate(const gx_ast *a, int32_t node, const int32_t *machine_of, const int64_t *est,
                        const int32_t *idepth, int32_t *dmax) {
  const gx_node *n = &a->nodes[node];
  const int64_t cap = (int64_t)1 << 40;
  int64_t x = 0;
  switch (n->kind) {
  case GX_BYTES: return n->b + 1;
  case GX_CLASS: return 8 * (int64_t)n->b + 2;
  case GX_SEQ:
  case GX_ALT:
    for (int32_t i = 0; i < n->b; i++) {
      x += estimate(a, a->kids[n->a + i], machine_of, est, idepth, dmax) + 1;
      if (x > cap) x = cap;
    }
    return x;
  case GX_REP: {
    int64_t k = estimate(a, n->a, machine_of, est, idepth, dmax) + 2;
    int64_t copies = n->c < 0 ? (n->b > 0 ? n->b : 1) : n->c;
    return copies > 0 && k > cap / copies ? cap : k * copies + 2;
  }
  case GX_REF:
    if (machine_of[n->a] >= 0) return 2;
    if (idepth[n->a] > *dmax) *dmax = idepth[n->a];
    return est[n->a];
  default: return 1;
  }
}

typedef struct graph {
  int32_t *off, *to; /* CSR */
} graph;


typedef struct ivec {
  int32_t *v;
  int32_t n, cap;
} ivec;

static int ivec_push(ivec *x, int32_t v) {
  if (x->n == x->cap) {
    int32_t nc = x->cap ? x->cap * 2 : 16;
    int32_t *p = realloc(x->v, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    x->v = p;
    x->cap = nc;
  }
  x->v[x->n++] = v;
  return 0;
}

/* nullable / productive of a node given the rule values (recursion over the AST only) */
static int node_prop(const gx_ast *a, int32_t node, const uint8_t *rule_val, int productive) {
  const gx_node *n = &a->nodes[node];
  switch (n->kind) {
  case GX_EMPTY: case GX_BOL: case GX_EOL: return 1;
  case GX_BYTES: case GX_CLASS: return productive;
  case GX_SEQ:
    for (int32_t i = 0; i < n->b; i++)
      if (!node_prop(a, a->kids[n->a + i], rule_val, productive)) return 0;
    return 1;
  case GX_ALT:
    for (int32_t i = 0; i < n->b; i++)
      if (node_prop(a, a->kids[n->a + i], rule_val, productive)) return 1;
    return 0;
  case GX_REP: return n->b == 0 || n->c == 0 || node_prop(a, n->a, rule_val, productive);
  case GX_REF: return rule_val[n->a];
  }
  return 0;
}

/* nullable (productive = 0) or productive (1) for every rule: a worklist over the
 * reverse references, so a long chain of rules costs its length, not its square */
static int rule_fixpoint(const gx_ast *a, const graph *all, uint8_t *val, int productive) {
  int32_t n = a->n_rules;
  int32_t *roff = calloc((size_t)n + 2, sizeof *roff), *rto = NULL, *work = malloc(((size_t)n + 1) * sizeof *work);
  uint8_t *queued = calloc((size_t)n + 1, 1);
  if (!roff || !work || !queued) goto oom;
  int32_t ne = all->off[n];
  for (int32_t i = 0; i < ne; i++) roff[all->to[i] + 1]++;
  for (int32_t r = 0; r < n; r++) roff[r + 1] += roff[r];
  rto = malloc((size_t)ne * sizeof *rto + 1);
  int32_t *fill = calloc((size_t)n + 1, sizeof *fill);
  if (!rto || !fill) {
    free(fill);
    goto oom;
  }
  for (int32_t r = 0; r < n; r++)
    for (int32_t i = all->off[r]; i < all->off[r + 1]; i++) rto[roff[all->to[i]] + fill[all->to[i]]++] = r;
  free(fill);
  int32_t nw = 0;
  for (int32_t r = 0; r < n; r++) work[nw++] = r, queued[r] = 1;
  while (nw) {
    int32_t r = work[--nw];
    queued[r] = 0;
    if (val[r] || a->rules[r].body < 0 || !node_prop(a, a->rules[r].body, val, productive)) continue;
    val[r] = 1;
    for (int32_t i = roff[r]; i < roff[r + 1]; i++)
      if (!val[rto[i]] && !queued[rto[i]]) queued[rto[i]] = 1, work[nw++] = rto[i];
  }
  free(roff), free(rto), free(work), free(queued);
  return 0;
oom:
  free(roff), free(rto), free(work), free(queued);
  return ml_seterr("out of memory (grammar)"), -1;
}

/* references of a node: all of them (left = 0), or those that may come first (left = 1) */
static int node_refs(const gx_ast *a, int32_t node, const uint8_t *nullable, int left, ivec *out) {
  const gx_node *n = &a->nodes[node];
  switch (n->kind) {
  case GX_SEQ:
    for (int32_t i = 0; i < n->b; i++) {
      int32_t k = a->kids[n->a + i];
      if (node_refs(a, k, nullable, left, out) < 0) return -1;
      if (left && !node_prop(a, k, nullable, 0)) break;
    }
    return 0;
  case GX_ALT:
    for (int32_t i = 0; i < n->b; i++)
      if (node_refs(a, a->kids[n->a + i], nullable, left, out) < 0) return -1;
    return 0;
  case GX_REP: return n->c == 0 ? 0 : node_refs(a, n->a, nullable, left, out);
  case GX_REF: return ivec_push(out, n->a);
  default: return 0;
  }
}


static int graph_build(const gx_ast *a, const uint8_t *nullable, int left, graph *g) {
  ivec all = {0};
  g->off = xcalloc((size_t)a->n_rules + 1, sizeof *g->off);
  if (!g->off) return -1;
  for (int32_t r = 0; r < a->n_rules; r++) {
    g->off[r] = all.n;
    if (node_refs(a, a->rules[r].body, nullable, left, &all) < 0) return free(all.v), -1;
  }
  g->off[a->n_rules] = all.n;
  g->to = all.v;
  return 0;
}

static void graph_free(graph *g) {
  free(g->off);
  free(g->to);
}

/* Tarjan's strongly connected components, iteratively. comp[r] = component id;
 * cyclic[r] = r is on a cycle. Reachability from root is marked in reach[]. */
static int scc(const gx_ast *a, const graph *g, int32_t root, int32_t *comp, uint8_t *cyclic, uint8_t *reach) {
  int32_t n = a->n_rules;
  int32_t *idx = malloc((size_t)n * sizeof *idx), *low = malloc((size_t)n * sizeof *low);
  int32_t *stk = malloc((size_t)n * sizeof *stk), *cs = malloc((size_t)n * sizeof *cs), *ci = malloc((size_t)n * sizeof *ci);
  uint8_t *on = calloc((size_t)n + 1, 1);
  if (!idx || !low || !stk || !cs || !ci || !on) {
    free(idx), free(low), free(stk), free(cs), free(ci), free(on);
    return ml_seterr("out of memory (grammar)"), -1;
  }
  for (int32_t i = 0; i < n; i++) idx[i] = -1, comp[i] = -1;
  int32_t counter = 0, sp = 0, csp = 0, ncomp = 0;
  idx[root] = low[root] = counter++;
  stk[sp++] = root;
  on[root] = 1;
  reach[root] = 1;
  cs[csp] = root;
  ci[csp++] = g->off[root];
  while (csp > 0) {
    int32_t v = cs[csp - 1];
    if (ci[csp - 1] < g->off[v + 1]) {
      int32_t w = g->to[ci[csp - 1]++];
      if (w == v) cyclic[v] = 1;
      if (idx[w] < 0) {
        idx[w] = low[w] = counter++;
        stk[sp++] = w;
        on[w] = 1;
        reach[w] = 1;
        cs[csp] = w;
        ci[csp++] = g->off[w];
      } else if (on[w] && idx[w] < low[v]) {
        low[v] = idx[w];
      }
    } else {
      csp--;
      if (csp > 0) {
        int32_t u = cs[csp - 1];
        if (low[v] < low[u]) low[u] = low[v];
      }
      if (low[v] == idx[v]) {
        int32_t size = 0, w;
        int32_t base = sp;
        do {
          w = stk[--sp];
          on[w] = 0;
          comp[w] = ncomp;
          size++;
        } while (w != v);
        if (size > 1)
          for (int32_t k = sp; k < base; k++) cyclic[stk[k]] = 1;
        ncomp++;
      }
    }
  }
  free(idx), free(low), free(stk), free(cs), free(ci), free(on);
  return 0;
}

/* ---- the NFA the grammar keeps ---- */

/* Keep the machines' states (each machine's range, edges inside it), renumbered in order,
 * with the machine of each; the templates were only copied from. */
static int compact(cc *c, const int32_t *mentry, const int32_t *mlo, int32_t nm, ml_grammar *g) {
  int32_t n = c->nn;
  g->mlo = malloc(((size_t)nm + 1) * sizeof *g->mlo);
  g->mentry = malloc((size_t)nm * sizeof *g->mentry + 1);
  g->rpool = malloc((size_t)c->n_rpool + 1);
  if (!g->mlo || !g->mentry || !g->rpool) return ml_seterr("out of memory (grammar)"), -1;
  nst *p = realloc(c->n, (size_t)n * sizeof *p + 1); /* the machines' array, trimmed */
  g->nfa = p ? p : c->n;
  c->n = NULL;
  memcpy(g->mlo, mlo, ((size_t)nm + 1) * sizeof *mlo);
  memcpy(g->mentry, mentry, (size_t)nm * sizeof *mentry);
  if (c->n_rpool) memcpy(g->rpool, c->rpool, (size_t)c->n_rpool);
  g->n_nfa = n;
  g->n_machines = nm;
  return 0;
}

/* Byte classes: bytes that every range of the NFA treats alike, and one byte of each.
 * The range ends cut the bytes into intervals (each inside or outside every range); the
 * classes are then refined over intervals, once per distinct range. */
static void byte_classes(ml_grammar *g) {
  /* the distinct ranges (lo * 256 + hi), in one pass over the states */
  uint8_t seen[256 * 256 / 8];
  memset(seen, 0, sizeof seen);
  for (int32_t i = 0; i < g->n_nfa; i++) {
    const nst *s = &g->nfa[i];
    if (s->kind == N_RANGE) {
      int key = s->lo * 256 + s->hi;
      seen[key >> 3] |= (uint8_t)(1 << (key & 7));
    } else if (s->kind == N_RANGES) {
      for (int k = 0; k < s->pad; k++) {
        int key = g->rpool[s->call + 2 * k] * 256 + g->rpool[s->call + 2 * k + 1];
        seen[key >> 3] |= (uint8_t)(1 << (key & 7));
      }
    }
  }
  uint8_t cut[257];
  memset(cut, 0, sizeof cut);
  for (int key = 0; key < 256 * 256; key++)
    if (seen[key >> 3] & (1 << (key & 7))) cut[key >> 8] = cut[(key & 255) + 1] = 1;
  int iv[256], nint = 0; /* interval of each byte */
  for (int b = 0; b < 256; b++) {
    if (b && cut[b]) nint++;
    iv[b] = nint;
  }
  nint++;
  int cur[256], nid = 1, map_in[256], map_out[256];
  memset(cur, 0, sizeof cur);
  for (int key = 0; key < 256 * 256; key++) {
    if (!seen[key >> 3]) { key |= 7; continue; }
    if (!(seen[key >> 3] & (1 << (key & 7)))) continue;
    int lo = key >> 8, hi = key & 255;
    {
      int a = iv[lo], z = iv[hi];
      for (int j = 0; j < nid; j++) map_in[j] = map_out[j] = -1;
      int next = 0;
      for (int t = 0; t < nint; t++) {
        int *mp = t >= a && t <= z ? map_in : map_out;
        if (mp[cur[t]] < 0) mp[cur[t]] = next++;
        cur[t] = mp[cur[t]];
      }
      nid = next;
    }
  }
  for (int b = 255; b >= 0; b--) {
    g->cls[b] = (uint8_t)cur[iv[b]];
    g->rep[cur[iv[b]]] = (uint8_t)b;
  }
  g->n_cls = nid;
}

/* A cycle in the graph of references that may come first: left recursion. */
static int check_left_recursion(const gx_ast *a, const graph *g, const uint8_t *reach) {
  int32_t n = a->n_rules;
  uint8_t *color = calloc((size_t)n + 1, 1);
  int32_t *st = malloc(((size_t)n + 1) * sizeof *st), *it = malloc(((size_t)n + 1) * sizeof *it);
  if (!color || !st || !it) return free(color), free(st), free(it), ml_seterr("out of memory (grammar)"), -1;
  int rc = 0;
  for (int32_t r0 = 0; r0 < n && rc == 0; r0++) {
    if (color[r0] || !reach[r0]) continue;
    int32_t sp = 0;
    st[sp] = r0;
    it[sp++] = g->off[r0];
    color[r0] = 1;
    while (sp > 0 && rc == 0) {
      int32_t v = st[sp - 1];
      if (it[sp - 1] < g->off[v + 1]) {
        int32_t w = g->to[it[sp - 1]++];
        if (color[w] == 1) {
          rc = gx_err(a, a->nodes[a->rules[w].body].pos, "left recursion: rule '%s' can begin with itself",
                      a->names + a->rules[w].name);
        } else if (color[w] == 0) {
          color[w] = 1;
          st[sp] = w;
          it[sp++] = g->off[w];
        }
      } else {
        color[v] = 2;
        sp--;
      }
    }
  }
  free(color);
  free(st);
  free(it);
  return rc;
}

ml_grammar *gx_compile(gx_ast *a, int32_t root_rule) {
  int32_t nr = a->n_rules;
  ml_grammar *g = NULL;
  cc c = {0};
  graph all = {0}, left = {0};
  uint8_t *nullable = xcalloc((size_t)nr, 1), *productive = xcalloc((size_t)nr, 1);
  uint8_t *cyclic = xcalloc((size_t)nr, 1), *reach = xcalloc((size_t)nr, 1), *done = xcalloc((size_t)nr, 1);
  int32_t *comp = xcalloc((size_t)nr, sizeof *comp), *order = xcalloc((size_t)nr, sizeof *order);
  int32_t *mrule = NULL, *mentry = NULL, *mlo = NULL, cap_ml = 0;
  if (!nullable || !productive || !cyclic || !reach || !done || !comp || !order) goto fail;
  if (graph_build(a, nullable, 0, &all) < 0) goto fail; /* (all references: nullable unused) */
  if (rule_fixpoint(a, &all, nullable, 0) < 0 || rule_fixpoint(a, &all, productive, 1) < 0) goto fail;
  if (graph_build(a, nullable, 1, &left) < 0) goto fail;
  if (scc(a, &all, root_rule, comp, cyclic, reach) < 0) goto fail;
  if (check_left_recursion(a, &left, reach) < 0) goto fail;
  if (!productive[root_rule]) {
    ml_seterr("the grammar matches no complete text (rule '%s' cannot finish)", a->names + a->rules[root_rule].name);
    goto fail;
  }
  /* machines: the root and every reachable rule on a cycle */
  c.a = a;
  c.machine_of = xcalloc((size_t)nr, sizeof *c.machine_of);
  c.tmpl_lo = xcalloc((size_t)nr, sizeof *c.tmpl_lo);
  c.tmpl_hi = xcalloc((size_t)nr, sizeof *c.tmpl_hi);
  c.tmpl = xcalloc((size_t)nr, sizeof *c.tmpl);
  mrule = xcalloc((size_t)nr, sizeof *mrule);
  if (!c.machine_of || !c.tmpl_lo || !c.tmpl_hi || !c.tmpl || !mrule) goto fail;
  int32_t nm = 0;
  mrule[nm] = root_rule;
  c.machine_of[root_rule] = nm++;
  for (int32_t r = 0; r < nr; r++) {
    if (r == root_rule) continue;
    if (reach[r] && cyclic[r]) {
      c.machine_of[r] = nm;
      mrule[nm++] = r;
    } else {
      c.machine_of[r] = -1;
    }
  }
  /* templates of the inlined rules, callees first (post-order over inline references) */
  {
    int32_t no = 0, sp = 0;
    int32_t *st = xcalloc((size_t)nr + 1, sizeof *st), *it = xcalloc((size_t)nr + 1, sizeof *it);
    if (!st || !it) {
      free(st);
      free(it);
      goto fail;
    }
    for (int32_t r0 = 0; r0 < nr; r0++) {
      if (!reach[r0] || done[r0]) continue;
      st[sp] = r0;
      it[sp++] = all.off[r0];
      done[r0] = 1;
      while (sp > 0) {
        int32_t v = st[sp - 1];
        if (it[sp - 1] < all.off[v + 1]) {
          int32_t w = all.to[it[sp - 1]++];
          if (!done[w] && c.machine_of[w] < 0) {
            done[w] = 1;
            st[sp] = w;
            it[sp++] = all.off[w];
          }
        } else {
          if (c.machine_of[v] < 0) order[no++] = v;
          sp--;
        }
      }
    }
    free(st);
    free(it);
    /* Inlining policy, callees first: a rule stays a machine of its own when its inlined
     * copies would be large (estimated NFA states x references) or its chain of inlined
     * references deep (a chain of 50,000 rules must not become 50,000 nested copies). */
    int64_t *est = xcalloc((size_t)nr, sizeof *est);
    int32_t *idepth = xcalloc((size_t)nr, sizeof *idepth), *nref = xcalloc((size_t)nr, sizeof *nref);
    c.est = est, c.idepth = idepth;
    if (!est || !idepth || !nref) {
      free(nref);
      goto fail;
    }
    for (int32_t r = 0; r < nr; r++)
      if (reach[r])
        for (int32_t i = all.off[r]; i < all.off[r + 1]; i++) nref[all.to[i]]++;
    for (int32_t i = 0; i < no; i++) {
      int32_t r = order[i];
      int32_t dmax = 0;
      est[r] = estimate(a, a->rules[r].body, c.machine_of, est, idepth, &dmax);
      idepth[r] = dmax + 1;
      if ((est[r] > GX_INLINE_MAX && nref[r] > 1) || idepth[r] > GX_INLINE_DEPTH) {
        c.machine_of[r] = nm;
        mrule[nm++] = r;
        est[r] = 2;
        idepth[r] = 0;
      }
    }
    /* the rules' machines first: machines made for large repetitions while building
     * come after them */
    for (int32_t m = 0; m < nm; m++)
      if (add_machine(&c, a->rules[mrule[m]].body) < 0) {
        free(nref);
        goto fail;
      }
    for (int32_t i = 0; i < no; i++) {
      int32_t r = order[i];
      if (c.machine_of[r] >= 0) continue;
      if (nref[r] <= 1) { /* built where it is used */
        c.tmpl_lo[r] = -1;
        continue;
      }
      c.tmpl_lo[r] = c.nn;
      c.est = est, c.idepth = idepth;
      if (build(&c, a->rules[r].body, &c.tmpl[r]) < 0) {
        free(nref);
        goto fail;
      }
      c.tmpl_hi[r] = c.nn;
    }
    c.est = est, c.idepth = idepth; /* kept for the machines (freed at the end) */
    free(nref);
  }
  /* the templates move aside: the machines' array becomes the grammar's NFA as it is */
  c.t = c.n;
  c.n = NULL;
  c.nn = c.cap = 0;
  for (int32_t m = 0; m < c.nm; m++) { /* each machine: a contiguous range [mlo[m], mlo[m + 1]) */
    frag f;
    int32_t at = c.nn;
    if (build(&c, c.mnode[m], &f) < 0) goto fail; /* may add machines (large repetitions) */
    int32_t fin = nadd(&c, N_FINAL, 0, 0, -1);
    if (fin < 0) goto fail;
    c.n[f.out].out = fin;
    if (m >= cap_ml) {
      int32_t ncap = cap_ml ? cap_ml * 2 : 16;
      while (ncap <= c.nm) ncap *= 2;
      int32_t *p1 = realloc(mentry, (size_t)ncap * sizeof *p1);
      if (p1) mentry = p1;
      int32_t *p2 = p1 ? realloc(mlo, ((size_t)ncap + 1) * sizeof *p2) : NULL;
      if (p2) mlo = p2;
      if (!p1 || !p2) {
        ml_seterr("out of memory (grammar)");
        goto fail;
      }
      cap_ml = ncap;
    }
    mentry[m] = f.in;
    mlo[m] = at;
    mlo[m + 1] = c.nn;
  }
  nm = c.nm;
  g = xcalloc(1, sizeof *g);
  if (!g) goto fail;
  g->refcount = 1;
  g->root = 0;
  g->n_rules = nr;
  pthread_mutex_init(&g->mu, NULL);
  if (compact(&c, mentry, mlo, nm, g) < 0) goto fail;
  byte_classes(g);
  /* nothing can be dead when no class is empty and every rule reached can finish: then
   * gd_init need not look for it */
  g->all_useful = !c.dead;
  for (int32_t r = 0; r < nr && g->all_useful; r++)
    if (reach[r] && !productive[r]) g->all_useful = 0;
  if (gd_init(g) < 0) goto fail;
  g->bytes = (size_t)g->n_nfa * (sizeof(nst) + 10) + (size_t)nm * 100;
  if (0) {
  fail:
    if (g) {
      ml_grammar_release(g);
      g = NULL;
    }
  }
  graph_free(&all);
  graph_free(&left);
  free(c.n);
  free(c.t);
  free(c.machine_of);
  free(c.tmpl_lo);
  free(c.tmpl_hi);
  free(c.tmpl);
  free(nullable), free(productive), free(cyclic), free(reach), free(done), free(comp), free(order);
  free(mrule), free(mentry), free(mlo);
  free(c.rpool);
  free(c.est), free(c.idepth), free(c.mnode), free(c.node_machine);
  return g;
}
