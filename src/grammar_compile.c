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

enum { N_EPS, N_RANGE, N_CALL, N_FINAL, N_BOL, N_EOL }; /* BOL/EOL: epsilon edges with a condition */

typedef struct nst {
  uint8_t kind, lo, hi, pad;
  int32_t out, out2; /* -1: none */
  int32_t call;      /* machine */
} nst;

typedef struct frag {
  int32_t in, out; /* out: an N_EPS state with out == -1, to be linked */
} frag;

typedef struct cc {
  gx_ast *a;
  int32_t n_machines;
  nst *n;
  int32_t nn, cap;
  int32_t *machine_of;   /* rule -> machine, -1 inlined */
  int32_t *tmpl_lo, *tmpl_hi; /* rule template fragment [lo, hi), entry lo... */
  frag *tmpl;
  int depth;
} cc;

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

/* Append a copy of states [lo, hi) (self-contained: edges stay inside). Returns the offset
 * to add to an index of the original to get the copy's, or -1. */
static int32_t copy_range(cc *c, int32_t lo, int32_t hi) {
  int32_t len = hi - lo;
  if ((int64_t)c->nn + len > GX_MAX_NFA) return too_large(), -1;
  while (c->cap < c->nn + len) {
    int32_t nc = c->cap ? c->cap * 2 : 1024;
    nst *p = realloc(c->n, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    c->n = p;
    c->cap = nc;
  }
  int32_t delta = c->nn - lo;
  memcpy(c->n + c->nn, c->n + lo, (size_t)len * sizeof *c->n);
  for (int32_t i = c->nn; i < c->nn + len; i++) {
    if (c->n[i].out >= 0) c->n[i].out += delta;
    if (c->n[i].out2 >= 0) c->n[i].out2 += delta;
  }
  c->nn += len;
  return delta;
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

static int build_class(cc *c, const uint32_t *r, int32_t npairs, frag *f) {
  uvec v = {0};
  for (int32_t i = 0; i < npairs; i++)
    if (gx_utf8_split(r[2 * i], r[2 * i + 1], &v) < 0) return free(v.s), -1;
  if (v.n == 0) { /* matches nothing: an entry with no way to the exit */
    f->in = nadd(c, N_EPS, 0, 0, -1);
    f->out = f->in < 0 ? -1 : nadd(c, N_EPS, 0, 0, -1);
    return f->out < 0 ? -1 : 0;
  }
  /* splits first (v.n - 1 of them), then each sequence, then the exit */
  int32_t split0 = c->nn;
  for (int32_t i = 0; i + 1 < v.n; i++)
    if (nadd(c, N_EPS, 0, 0, -1) < 0) return free(v.s), -1;
  int32_t *heads = malloc((size_t)v.n * sizeof *heads), *tails = malloc((size_t)v.n * sizeof *tails);
  if (!heads || !tails) return free(heads), free(tails), free(v.s), ml_seterr("out of memory (grammar)"), -1;
  int rc = 0;
  for (int32_t i = 0; i < v.n && rc == 0; i++) {
    int32_t prev = -1;
    for (int k = 0; k < v.s[i].len; k++) {
      int32_t s = nadd(c, N_RANGE, v.s[i].lo[k], v.s[i].hi[k], -1);
      if (s < 0) {
        rc = -1;
        break;
      }
      if (prev >= 0) c->n[prev].out = s;
      else heads[i] = s;
      prev = s;
    }
    tails[i] = prev;
  }
  int32_t e = rc == 0 ? nadd(c, N_EPS, 0, 0, -1) : -1;
  if (e < 0) rc = -1;
  if (rc == 0) {
    for (int32_t i = 0; i < v.n; i++) c->n[tails[i]].out = e;
    for (int32_t i = 0; i + 1 < v.n; i++) {
      c->n[split0 + i].out = heads[i];
      c->n[split0 + i].out2 = i + 2 < v.n ? split0 + i + 1 : heads[i + 1];
    }
    f->in = v.n > 1 ? split0 : heads[0];
    f->out = e;
  }
  free(heads);
  free(tails);
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
  int32_t t0 = c->nn;
  frag t;
  if (build(c, child, &t) < 0) return -1;
  int32_t t1 = c->nn, size = t1 - t0;
  int64_t copies = (int64_t)lo + (hi < 0 ? (lo == 0 ? 1 : 0) : hi - lo);
  if (copies < 1) copies = 1;
  if ((int64_t)c->nn + (copies - 1) * size + 2 * copies + 2 > GX_MAX_NFA) return too_large();
  /* all copies first, while the template is still self-contained */
  frag *cp = malloc((size_t)copies * sizeof *cp);
  if (!cp) return ml_seterr("out of memory (grammar)"), -1;
  cp[0] = t;
  for (int64_t k = 1; k < copies; k++) {
    int32_t d = copy_range(c, t0, t1);
    if (d < 0) return free(cp), -1;
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
  case GX_CLASS: rc = build_class(c, c->a->ranges + nd.a, nd.b, f); break;
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
    frag *k = rc == 0 ? malloc((size_t)nd.b * sizeof *k) : NULL;
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
    free(k);
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
    } else {
      int32_t d = copy_range(c, c->tmpl_lo[r], c->tmpl_hi[r]);
      if (d < 0) rc = -1;
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

/* ---- byte classes ---- */

static int byte_classes(const cc *c, uint8_t *cls, int32_t *ncls) {
  uint8_t *seen = calloc(256 * 256 / 8, 1);
  if (!seen) return ml_seterr("out of memory (grammar)"), -1;
  int cur[256], nid = 1;
  memset(cur, 0, sizeof cur);
  for (int32_t i = 0; i < c->nn; i++) {
    const nst *s = &c->n[i];
    if (s->kind != N_RANGE) continue;
    int key = s->lo * 256 + s->hi;
    if (seen[key >> 3] & (1 << (key & 7))) continue;
    seen[key >> 3] |= (uint8_t)(1 << (key & 7));
    int map_in[256], map_out[256];
    for (int k = 0; k < 256; k++) map_in[k] = map_out[k] = -1;
    int next = 0;
    for (int b = 0; b < 256; b++) {
      int *m = b >= s->lo && b <= s->hi ? map_in : map_out;
      if (m[cur[b]] < 0) m[cur[b]] = next++;
      cur[b] = m[cur[b]];
    }
    nid = next;
  }
  free(seen);
  for (int b = 0; b < 256; b++) cls[b] = (uint8_t)cur[b];
  *ncls = nid;
  return 0;
}

/* ---- subset construction ---- */

typedef struct dfa {
  ivec sets;      /* concatenated sorted NFA sets */
  ivec set_off;   /* per DFA state (state 0, the dead state, has the empty set) */
  int32_t *ht;    /* hash table of DFA states */
  int32_t hcap;
  int32_t *delta;
  size_t delta_cap;
  ivec call_state, call_machine, call_ret; /* call edges, by source state */
  ivec accept;    /* per state */
  ivec machine;   /* per state */
  int32_t ncls;
  int64_t work;
} dfa;

static uint32_t set_hash(const int32_t *s, int32_t n) {
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < n; i++) h = (h ^ (uint32_t)s[i]) * 16777619u;
  return h ^ (uint32_t)n;
}

static int cmp_i32(const void *x, const void *y) {
  int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
  return (a > b) - (a < b);
}

/* Closure of seeds over epsilon edges: the sorted important states into out. at_start:
 * the text has not begun (^ holds). Past a $ edge nothing may be consumed any more: only
 * the final state counts there. Stack entries are state * 2 + (past $). */
static int closure(const cc *c, const int32_t *seeds, int32_t ns, int at_start, uint32_t *stamp, uint32_t mark,
                   ivec *stack, ivec *out) {
  out->n = 0;
  stack->n = 0;
  for (int32_t i = 0; i < ns; i++)
    if (seeds[i] >= 0 && ivec_push(stack, seeds[i] * 2) < 0) return -1;
  while (stack->n) {
    int32_t e = stack->v[--stack->n], s = e >> 1, eol = e & 1;
    if (stamp[e] == mark) continue;
    stamp[e] = mark;
    const nst *n = &c->n[s];
    int32_t next_eol = eol;
    switch (n->kind) {
    case N_BOL:
      if (!at_start) continue;
      break;
    case N_EOL: next_eol = 1; break;
    case N_EPS: break;
    case N_FINAL:
      if (ivec_push(out, s) < 0) return -1;
      continue;
    default:
      if (!eol && ivec_push(out, s) < 0) return -1;
      continue;
    }
    if (n->out2 >= 0 && ivec_push(stack, n->out2 * 2 + next_eol) < 0) return -1;
    if (n->out >= 0 && ivec_push(stack, n->out * 2 + next_eol) < 0) return -1;
  }
  if (out->n > 1) qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_i32);
  int32_t k = 0; /* a state may be reached both before and past $ */
  for (int32_t i = 0; i < out->n; i++)
    if (k == 0 || out->v[k - 1] != out->v[i]) out->v[k++] = out->v[i];
  out->n = k;
  return 0;
}

static int dfa_too_large(void) {
  ml_seterr("grammar too large: its automaton exceeds %d states or %zu transitions", GX_MAX_DFA, GX_MAX_TABLE);
  return -1;
}

/* The DFA state of an NFA set (added if new). */
static int32_t dfa_state(dfa *d, const ivec *set, int32_t machine) {
  if (set->n == 0) return 0;
  uint32_t h = set_hash(set->v, set->n);
  int32_t n_states = d->set_off.n - 1;
  if ((n_states + 1) * 2 >= d->hcap) {
    int32_t nc = d->hcap ? d->hcap * 2 : 1024;
    int32_t *nt = malloc((size_t)nc * sizeof *nt);
    if (!nt) return ml_seterr("out of memory (grammar)"), -1;
    for (int32_t i = 0; i < nc; i++) nt[i] = -1;
    for (int32_t s = 1; s < n_states; s++) {
      const int32_t *v = d->sets.v + d->set_off.v[s];
      uint32_t k = set_hash(v, d->set_off.v[s + 1] - d->set_off.v[s]) & (uint32_t)(nc - 1);
      while (nt[k] >= 0) k = (k + 1) & (uint32_t)(nc - 1);
      nt[k] = s;
    }
    free(d->ht);
    d->ht = nt;
    d->hcap = nc;
  }
  uint32_t k = h & (uint32_t)(d->hcap - 1);
  for (; d->ht[k] >= 0; k = (k + 1) & (uint32_t)(d->hcap - 1)) {
    int32_t s = d->ht[k];
    int32_t len = d->set_off.v[s + 1] - d->set_off.v[s];
    if (len == set->n && d->machine.v[s] == machine &&
        memcmp(d->sets.v + d->set_off.v[s], set->v, (size_t)len * sizeof *set->v) == 0)
      return s;
  }
  if (n_states >= GX_MAX_DFA || (size_t)(n_states + 1) * (size_t)d->ncls > GX_MAX_TABLE) return dfa_too_large();
  d->work += set->n;
  for (int32_t i = 0; i < set->n; i++)
    if (ivec_push(&d->sets, set->v[i]) < 0) return -1;
  if (ivec_push(&d->set_off, d->sets.n) < 0 || ivec_push(&d->accept, 0) < 0 || ivec_push(&d->machine, machine) < 0)
    return -1;
  size_t need = (size_t)(n_states + 1) * (size_t)d->ncls;
  if (need > d->delta_cap) {
    size_t nc = d->delta_cap ? d->delta_cap * 2 : 4096;
    while (nc < need) nc *= 2;
    int32_t *p = realloc(d->delta, nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    d->delta = p;
    d->delta_cap = nc;
  }
  memset(d->delta + (size_t)n_states * (size_t)d->ncls, 0, (size_t)d->ncls * sizeof *d->delta);
  d->ht[k] = n_states;
  return n_states;
}

/* The byte classes of each distinct (lo, hi) range, listed once. */
typedef struct clsmap {
  uint32_t *stamp; /* closure marks, per NFA state x (past $), shared by the machines */
  uint32_t mark;
  int32_t *off;   /* 65536 + 1: classes of range lo*256+hi at [off, off + n) of list, off -1 unset */
  uint8_t *n;
  uint8_t *list;
  int32_t nlist, cap;
} clsmap;

static const uint8_t *range_classes(clsmap *cm, const uint8_t *cls, int lo, int hi, int *n) {
  int key = lo * 256 + hi;
  if (cm->off[key] < 0) {
    uint8_t seen[256] = {0};
    int k = 0;
    uint8_t tmp[256];
    for (int b = lo; b <= hi; b++)
      if (!seen[cls[b]]) seen[cls[b]] = 1, tmp[k++] = cls[b];
    if (cm->nlist + k > cm->cap) {
      int32_t nc = cm->cap ? cm->cap * 2 : 4096;
      while (nc < cm->nlist + k) nc *= 2;
      uint8_t *p = realloc(cm->list, (size_t)nc);
      if (!p) return NULL;
      cm->list = p;
      cm->cap = nc;
    }
    memcpy(cm->list + cm->nlist, tmp, (size_t)k);
    cm->off[key] = cm->nlist;
    cm->n[key] = (uint8_t)(k - 1);
    cm->nlist += k;
  }
  *n = cm->n[key] + 1;
  return cm->list + cm->off[key];
}

/* Subset construction of one machine. For each DFA state, the targets of each byte class
 * (and of each callee) are gathered in buckets (the NFA states of a set are visited in
 * order, so equal target lists compare equal), each distinct list is closed once. */
static int determinize(cc *c, const uint8_t *cls, clsmap *cm, dfa *d, int32_t machine, int32_t entry, int32_t *start) {
  uint32_t *stamp = cm->stamp;
  ivec stack = {0}, set = {0}, seeds = {0};
  int32_t nkeys = d->ncls + c->n_machines;
  int32_t *head = malloc((size_t)nkeys * sizeof *head), *tail = malloc((size_t)nkeys * sizeof *tail);
  int32_t *res = malloc((size_t)nkeys * sizeof *res), *touched = malloc((size_t)nkeys * sizeof *touched);
  ivec nxt = {0}, val = {0}; /* bucket entries: value and next */
  int32_t *htab = NULL, hcap = 0;
  int rc = -1;
  if (!head || !tail || !res || !touched) {
    ml_seterr("out of memory (grammar)");
    goto done;
  }
  for (int32_t k = 0; k < nkeys; k++) head[k] = -1;
  uint32_t mark = cm->mark;
  if (closure(c, &entry, 1, 1, stamp, ++mark, &stack, &set) < 0) goto done;
  int32_t s0 = dfa_state(d, &set, machine);
  if (s0 < 0) goto done;
  *start = s0;
  for (int32_t ds = s0; ds < d->set_off.n - 1; ds++) {
    if (ds == 0) continue;
    int32_t lo = d->set_off.v[ds], hi = d->set_off.v[ds + 1];
    int acc = 0;
    int32_t ntouched = 0;
    nxt.n = val.n = 0;
    for (int32_t i = lo; i < hi; i++) {
      const nst *n = &c->n[d->sets.v[i]];
      const uint8_t *cl;
      int ncl = 1;
      uint8_t one;
      if (n->kind == N_FINAL) {
        acc = 1;
        continue;
      } else if (n->kind == N_RANGE) {
        cl = range_classes(cm, cls, n->lo, n->hi, &ncl);
        if (!cl) {
          ml_seterr("out of memory (grammar)");
          goto done;
        }
      } else if (n->kind == N_CALL) {
        one = 0; /* marker: key is ncls + machine */
        cl = &one;
      } else {
        continue;
      }
      for (int k = 0; k < ncl; k++) {
        int32_t key = n->kind == N_CALL ? d->ncls + n->call : cl[k];
        if (ivec_push(&val, n->out) < 0 || ivec_push(&nxt, -1) < 0) goto done;
        int32_t e = val.n - 1;
        if (head[key] < 0) {
          head[key] = e;
          touched[ntouched++] = key;
        } else {
          nxt.v[tail[key]] = e;
        }
        tail[key] = e;
      }
    }
    d->accept.v[ds] = acc;
    d->work += val.n + (hi - lo);
    if (d->work > GX_MAX_WORK) {
      ml_seterr("grammar too complex: building its automaton takes more than the compile budget");
      goto done;
    }
    /* equal target lists share one closure: a small hash table of the lists seen */
    int32_t hsize = 64;
    while (hsize < 2 * ntouched) hsize *= 2;
    if (hsize > hcap) {
      int32_t *p2 = realloc(htab, (size_t)hsize * sizeof *htab);
      if (!p2) {
        ml_seterr("out of memory (grammar)");
        goto done;
      }
      htab = p2;
      hcap = hsize;
    }
    for (int32_t k = 0; k < hsize; k++) htab[k] = -1;
    for (int32_t k = 0; k < ntouched; k++) {
      int32_t key = touched[k];
      seeds.n = 0;
      for (int32_t e = head[key]; e >= 0; e = nxt.v[e])
        if (ivec_push(&seeds, val.v[e]) < 0) goto done;
      uint32_t hh = set_hash(seeds.v, seeds.n) & (uint32_t)(hsize - 1);
      int32_t t = -1;
      for (; htab[hh] >= 0; hh = (hh + 1) & (uint32_t)(hsize - 1)) {
        int32_t kj = htab[hh], e1 = head[kj], e2 = head[key];
        while (e1 >= 0 && e2 >= 0 && val.v[e1] == val.v[e2]) e1 = nxt.v[e1], e2 = nxt.v[e2];
        if (e1 < 0 && e2 < 0) {
          t = res[kj];
          break;
        }
      }
      if (t < 0) {
        if (closure(c, seeds.v, seeds.n, 0, stamp, ++mark, &stack, &set) < 0) goto done;
        t = dfa_state(d, &set, machine);
        if (t < 0) goto done;
        htab[hh] = key;
      }
      res[key] = t;
      if (key < d->ncls) {
        d->delta[(size_t)ds * (size_t)d->ncls + (size_t)key] = t;
      } else if (ivec_push(&d->call_state, ds) < 0 || ivec_push(&d->call_machine, key - d->ncls) < 0 ||
                 ivec_push(&d->call_ret, t) < 0) {
        goto done;
      }
    }
    for (int32_t k = 0; k < ntouched; k++) head[touched[k]] = -1;
  }
  rc = 0;
done:
  cm->mark = mark;
  free(stack.v);
  free(set.v);
  free(seeds.v);
  free(nxt.v);
  free(val.v);
  free(head);
  free(tail);
  free(res);
  free(touched);
  free(htab);
  return rc;
}

/* ---- pruning and tables ---- */

static int finish(ml_grammar *g, dfa *d, int32_t nm, const int32_t *mstart) {
  int32_t ns = d->set_off.n - 1, nc = d->ncls;
  int32_t ncall = d->call_state.n;
  /* live: can reach an accepting state (through calls of productive machines) */
  uint8_t *live = calloc((size_t)ns, 1);
  int32_t *roff = calloc((size_t)ns + 1, sizeof *roff), *rto = NULL, *cof = calloc((size_t)nm + 1, sizeof *cof), *cto = NULL;
  ivec work = {0};
  int rc = -1;
  if (!live || !roff || !cof) goto oom;
  /* reverse edges: byte edges t <- s, and call returns r <- s (entries >= 0: byte; < 0: call index) */
  for (int32_t s = 1; s < ns; s++)
    for (int32_t k = 0; k < nc; k++) {
      int32_t t = d->delta[(size_t)s * nc + k];
      if (t) roff[t + 1]++;
    }
  for (int32_t i = 0; i < ncall; i++) roff[d->call_ret.v[i] + 1]++, cof[d->call_machine.v[i] + 1]++;
  for (int32_t s = 0; s < ns; s++) roff[s + 1] += roff[s];
  for (int32_t m = 0; m < nm; m++) cof[m + 1] += cof[m];
  rto = malloc((size_t)roff[ns] * sizeof *rto + 1);
  cto = malloc((size_t)cof[nm] * sizeof *cto + 1);
  int32_t *fill = calloc((size_t)ns + (size_t)nm + 1, sizeof *fill);
  if (!rto || !cto || !fill) {
    free(fill);
    goto oom;
  }
  for (int32_t s = 1; s < ns; s++)
    for (int32_t k = 0; k < nc; k++) {
      int32_t t = d->delta[(size_t)s * nc + k];
      if (t) rto[roff[t] + fill[t]++] = s;
    }
  for (int32_t i = 0; i < ncall; i++) {
    int32_t r = d->call_ret.v[i], m = d->call_machine.v[i];
    rto[roff[r] + fill[r]++] = -1 - i;
    cto[cof[m] + fill[ns + m]++] = i;
  }
  free(fill);
  for (int32_t s = 1; s < ns; s++)
    if (d->accept.v[s]) {
      live[s] = 1;
      if (ivec_push(&work, s) < 0) goto oom;
    }
  while (work.n) {
    int32_t t = work.v[--work.n];
    for (int32_t k = roff[t]; k < roff[t + 1]; k++) {
      int32_t e = rto[k], s;
      if (e >= 0) s = e;
      else {
        int32_t ci = -1 - e;
        s = d->call_state.v[ci];
        if (!live[mstart[d->call_machine.v[ci]]]) continue; /* callee not (yet) productive */
      }
      if (live[s]) continue;
      live[s] = 1;
      if (ivec_push(&work, s) < 0) goto oom;
    }
    /* t is a machine's start: its call sites whose return is live become live */
    int32_t m = d->machine.v[t];
    if (mstart[m] == t)
      for (int32_t k = cof[m]; k < cof[m + 1]; k++) {
        int32_t ci = cto[k], s = d->call_state.v[ci];
        if (live[d->call_ret.v[ci]] && !live[s]) {
          live[s] = 1;
          if (ivec_push(&work, s) < 0) goto oom;
        }
      }
  }
  if (!live[mstart[g->root]]) {
    ml_seterr("the grammar matches no complete text (rule '%s' cannot finish)", "root");
    goto fail;
  }
  /* renumber the live states */
  int32_t *map = calloc((size_t)ns, sizeof *map);
  if (!map) goto oom;
  int32_t n = 1;
  for (int32_t s = 1; s < ns; s++) map[s] = live[s] ? n++ : 0;
  g->n_states = n;
  g->n_cls = nc;
  g->delta = calloc((size_t)n * (size_t)nc, sizeof *g->delta);
  g->flags = calloc((size_t)n, 1);
  g->call_off = calloc((size_t)n + 1, sizeof *g->call_off);
  g->first = calloc((size_t)n * 4, sizeof *g->first);
  g->mstart = malloc((size_t)nm * sizeof *g->mstart);
  g->mstate_machine = calloc((size_t)n, sizeof *g->mstate_machine);
  if (!g->delta || !g->flags || !g->call_off || !g->first || !g->mstart || !g->mstate_machine) {
    free(map);
    goto oom;
  }
  g->n_machines = nm;
  for (int32_t m = 0; m < nm; m++) g->mstart[m] = map[mstart[m]];
  int32_t nlivecalls = 0;
  for (int32_t i = 0; i < ncall; i++) {
    int32_t s = d->call_state.v[i], r = d->call_ret.v[i], m = d->call_machine.v[i];
    if (live[s] && live[r] && live[mstart[m]]) g->call_off[map[s] + 1]++, nlivecalls++;
  }
  for (int32_t s = 0; s < n; s++) g->call_off[s + 1] += g->call_off[s];
  g->calls = malloc((size_t)nlivecalls * sizeof *g->calls + 1);
  int32_t *cfill = calloc((size_t)n, sizeof *cfill);
  if (!g->calls || !cfill) {
    free(cfill);
    free(map);
    goto oom;
  }
  for (int32_t i = 0; i < ncall; i++) { /* calls are grouped by source state already */
    int32_t s = d->call_state.v[i], r = d->call_ret.v[i], m = d->call_machine.v[i];
    if (!(live[s] && live[r] && live[mstart[m]])) continue;
    int32_t ms = map[s];
    gcall *gc = &g->calls[g->call_off[ms] + cfill[ms]++];
    gc->machine = m;
    gc->ret = map[r];
  }
  free(cfill);
  for (int32_t s = 1; s < ns; s++) {
    if (!live[s]) continue;
    int32_t t = map[s];
    uint8_t fl = d->accept.v[s] ? GS_ACCEPT : 0;
    for (int32_t k = 0; k < nc; k++) {
      int32_t u = map[d->delta[(size_t)s * nc + k]];
      g->delta[(size_t)t * nc + k] = u;
      if (u) fl |= GS_BYTES;
    }
    if (g->call_off[t + 1] > g->call_off[t]) fl |= GS_CALLS;
    g->flags[t] = fl;
    g->mstate_machine[t] = d->machine.v[s];
  }
  free(map);
  /* epsilon-end: accept, or a call to a nullable machine returning to an epsilon-end state */
  for (int32_t s = 1; s < n; s++)
    if (g->flags[s] & GS_ACCEPT) g->flags[s] |= GS_EPSEND;
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t s = 1; s < n; s++) {
      if (g->flags[s] & GS_EPSEND) continue;
      for (int32_t k = g->call_off[s]; k < g->call_off[s + 1]; k++) {
        const gcall *gc = &g->calls[k];
        if ((g->flags[g->mstart[gc->machine]] & GS_EPSEND) && (g->flags[gc->ret] & GS_EPSEND)) {
          g->flags[s] |= GS_EPSEND;
          changed = 1;
          break;
        }
      }
    }
  }
  /* first bytes */
  for (int32_t s = 1; s < n; s++)
    for (int b = 0; b < 256; b++)
      if (g->delta[(size_t)s * nc + g->cls[b]]) g->first[(size_t)s * 4 + (b >> 6)] |= 1ull << (b & 63);
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t s = 1; s < n; s++)
      for (int32_t k = g->call_off[s]; k < g->call_off[s + 1]; k++) {
        const gcall *gc = &g->calls[k];
        int32_t st = g->mstart[gc->machine];
        for (int w = 0; w < 4; w++) {
          uint64_t add = g->first[(size_t)st * 4 + w];
          if (g->flags[st] & GS_EPSEND) add |= g->first[(size_t)gc->ret * 4 + w];
          uint64_t *f = &g->first[(size_t)s * 4 + w];
          if ((*f | add) != *f) *f |= add, changed = 1;
        }
      }
  }
  /* follow sets: what comes after a call's return, transitively through callers that
   * may return at once */
  g->follow = calloc((size_t)nm * 4, sizeof *g->follow);
  g->enter = calloc((size_t)nm * 4, sizeof *g->enter);
  if (!g->follow || !g->enter) goto oom;
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t s2 = 1; s2 < n; s2++)
      for (int32_t k = g->call_off[s2]; k < g->call_off[s2 + 1]; k++) {
        const gcall *gc = &g->calls[k];
        uint64_t *f = &g->follow[(size_t)gc->machine * 4];
        int32_t caller = g->mstate_machine[s2];
        for (int w = 0; w < 4; w++) {
          uint64_t add = g->first[(size_t)gc->ret * 4 + w];
          if (g->flags[gc->ret] & GS_EPSEND) add |= g->follow[(size_t)caller * 4 + w];
          if ((f[w] | add) != f[w]) f[w] |= add, changed = 1;
        }
      }
  }
  for (int32_t m = 0; m < nm; m++)
    for (int w = 0; w < 4; w++)
      g->enter[(size_t)m * 4 + w] = g->first[(size_t)g->mstart[m] * 4 + w] |
                                    ((g->flags[g->mstart[m]] & GS_EPSEND) ? g->follow[(size_t)m * 4 + w] : 0);
  g->wdelta = malloc((size_t)n * (size_t)nc * sizeof *g->wdelta);
  if (!g->wdelta) goto oom;
  for (size_t i = 0; i < (size_t)n * (size_t)nc; i++) {
    int32_t t = g->delta[i];
    g->wdelta[i] = t == 0 ? 0 : (g->flags[t] & (GS_CALLS | GS_EPSEND)) ? -t * nc : t * nc;
  }
  g->bytes = (size_t)n * (size_t)nc * 8 + (size_t)n * (1 + 4 + 32 + 4) + (size_t)nlivecalls * sizeof(gcall);
  rc = 0;
  goto fail;
oom:
  ml_seterr("out of memory (grammar)");
fail:
  free(live);
  free(roff);
  free(rto);
  free(cof);
  free(cto);
  free(work.v);
  return rc;
}

static void dfa_free(dfa *d) {
  free(d->sets.v);
  free(d->set_off.v);
  free(d->ht);
  free(d->delta);
  free(d->call_state.v);
  free(d->call_machine.v);
  free(d->call_ret.v);
  free(d->accept.v);
  free(d->machine.v);
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
  dfa d = {0};
  clsmap cm = {0};
  graph all = {0}, left = {0};
  uint8_t *nullable = xcalloc((size_t)nr, 1), *productive = xcalloc((size_t)nr, 1);
  uint8_t *cyclic = xcalloc((size_t)nr, 1), *reach = xcalloc((size_t)nr, 1), *done = xcalloc((size_t)nr, 1);
  int32_t *comp = xcalloc((size_t)nr, sizeof *comp), *order = xcalloc((size_t)nr, sizeof *order);
  int32_t *mrule = NULL, *mentry = NULL, *mstart = NULL;
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
    if (!est || !idepth || !nref) {
      free(est), free(idepth), free(nref);
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
    free(est), free(idepth), free(nref);
    for (int32_t i = 0; i < no; i++) {
      int32_t r = order[i];
      if (c.machine_of[r] >= 0) continue;
      c.tmpl_lo[r] = c.nn;
      if (build(&c, a->rules[r].body, &c.tmpl[r]) < 0) goto fail;
      c.tmpl_hi[r] = c.nn;
    }
  }
  mentry = xcalloc((size_t)nm, sizeof *mentry);
  mstart = xcalloc((size_t)nm, sizeof *mstart);
  if (!mentry || !mstart) goto fail;
  for (int32_t m = 0; m < nm; m++) {
    frag f;
    if (build(&c, a->rules[mrule[m]].body, &f) < 0) goto fail;
    int32_t fin = nadd(&c, N_FINAL, 0, 0, -1);
    if (fin < 0) goto fail;
    c.n[f.out].out = fin;
    mentry[m] = f.in;
  }
  g = xcalloc(1, sizeof *g);
  if (!g) goto fail;
  g->refcount = 1;
  g->root = 0;
  g->n_rules = nr;
  pthread_mutex_init(&g->mu, NULL);
  int32_t ncls;
  if (byte_classes(&c, g->cls, &ncls) < 0) goto fail;
  d.ncls = ncls;
  if (ivec_push(&d.set_off, 0) < 0 || ivec_push(&d.set_off, 0) < 0 || ivec_push(&d.accept, 0) < 0 ||
      ivec_push(&d.machine, -1) < 0)
    goto fail;
  d.delta = calloc((size_t)ncls, sizeof *d.delta);
  d.delta_cap = (size_t)ncls;
  if (!d.delta) goto fail;
  c.n_machines = nm;
  cm.off = malloc(65536 * sizeof *cm.off);
  cm.n = malloc(65536);
  cm.stamp = calloc((size_t)c.nn * 2, sizeof *cm.stamp);
  if (!cm.off || !cm.n || !cm.stamp) goto fail;
  for (int i = 0; i < 65536; i++) cm.off[i] = -1;
  for (int32_t m = 0; m < nm; m++)
    if (determinize(&c, g->cls, &cm, &d, m, mentry[m], &mstart[m]) < 0) goto fail;
  if (finish(g, &d, nm, mstart) < 0) goto fail;
  if (0) {
  fail:
    if (g) {
      ml_grammar_release(g);
      g = NULL;
    }
  }
  dfa_free(&d);
  free(cm.off);
  free(cm.n);
  free(cm.list);
  free(cm.stamp);
  graph_free(&all);
  graph_free(&left);
  free(c.n);
  free(c.machine_of);
  free(c.tmpl_lo);
  free(c.tmpl_hi);
  free(c.tmpl);
  free(nullable), free(productive), free(cyclic), free(reach), free(done), free(comp), free(order);
  free(mrule), free(mentry), free(mstart);
  return g;
}
