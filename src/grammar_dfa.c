/* grammar_dfa.c: the DFA of a grammar, made on demand from its NFA.
 *
 * Compiling keeps the NFA (one Thompson automaton per machine) and works out what the
 * matcher needs to know without the DFA: which NFA states lie on a path to their
 * machine's end (the others are pruned, so every DFA state can finish), which may return
 * without consuming, and per machine the bytes it may begin with, may be followed by and
 * may be entered with. A DFA state (a set of NFA states) and a transition are made the
 * first time a matcher or a mask walk needs them, so compiling a large schema costs its
 * NFA, not its DFA (LLGuidance's lexer is lazy for the same reason), and a bounded
 * repetition of 10,000 costs the counts a text reaches.
 *
 * Threads: creation happens under dfa_mu; readers never lock. The table, the state
 * records and the calls live in reserved address space that never moves; a new state is
 * complete (set, flags, first bytes, calls) before the entry or start pointer that leads
 * to it is stored with a release store.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"
#include "grammar_int.h"

typedef struct ivec {
  int32_t *v;
  int32_t n, cap;
} ivec;

static inline int ivec_push(ivec *x, int32_t v) {
  if (ML_LIKELY(x->n < x->cap)) {
    x->v[x->n++] = v;
    return 0;
  }
  if (x->n == x->cap) {
    int32_t nc = x->cap ? x->cap * 2 : 64;
    int32_t *p = realloc(x->v, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar)"), -1;
    x->v = p;
    x->cap = nc;
  }
  x->v[x->n++] = v;
  return 0;
}

#define USEFUL(g, u) (!(g)->useful || (g)->useful[u])
#define EPS_LIKE(s) ((s)->kind == N_EPS || (s)->kind == N_BOL || (s)->kind == N_EOL)
/* may return without consuming: an end, or a call of a nullable machine that can (pad) */
#define NST_EPS(s) ((s)->kind == N_FINAL || ((s)->kind == N_CALL && (s)->pad))

/* Creation state, only touched under dfa_mu. */
typedef struct gdfa {
  ivec sets;       /* members of every state, back to back */
  int32_t *set_off, *set_n; /* per state */
  int32_t *ht;     /* state ids by set */
  int32_t hcap;
  uint32_t *stamp; /* per NFA state x (past $) */
  uint32_t mark;
  ivec stack, set, seeds, pending;
  int32_t n_calls;
  /* closures of single states (no anchors in the grammar), made on first use:
   * memo[u] = offset + 1 in memo_pool (0: not made), memo_n[u] = size */
  int32_t *memo, *memo_n;
  ivec memo_pool, tmp;
  int anchors; /* the grammar has ^ or $: no memo */
} gdfa;

static void *reserve(size_t bytes) {
  if (bytes == 0) bytes = 1;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
  flags |= MAP_NORESERVE;
#endif
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void unreserve(void *p, size_t bytes) {
  if (p) munmap(p, bytes ? bytes : 1);
}

static int cmp_i32(const void *x, const void *y) {
  int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
  return (a > b) - (a < b);
}

/* Closure of seeds over epsilon edges, useful states only: the sorted important states
 * (ranges, calls, ends) into out. at_start: the text has not begun (^ holds). Past a $
 * edge nothing may be consumed: only ends count there. Stack entries: state * 2 + past $. */
static int closure(const ml_grammar *g, gdfa *d, const int32_t *seeds, int32_t ns, int at_start, ivec *out) {
  uint32_t mark = ++d->mark;
  if (mark == 0) { /* wrapped: clear the stamps */
    memset(d->stamp, 0, (size_t)g->n_nfa * 2 * sizeof *d->stamp);
    mark = d->mark = 1;
  }
  ivec *stack = &d->stack;
  out->n = 0;
  stack->n = 0;
  for (int32_t i = 0; i < ns; i++)
    if (seeds[i] >= 0 && USEFUL(g, seeds[i]) && ivec_push(stack, seeds[i] * 2) < 0) return -1;
  while (stack->n) {
    int32_t e = stack->v[--stack->n], s = e >> 1, eol = e & 1;
    if (d->stamp[e] == mark) continue;
    d->stamp[e] = mark;
    const nst *n = &g->nfa[s];
    int32_t next = eol;
    switch (n->kind) {
    case N_BOL:
      if (!at_start) continue;
      break;
    case N_EOL: next = 1; break;
    case N_EPS: break;
    case N_FINAL:
      if (ivec_push(out, s) < 0) return -1;
      continue;
    default:
      if (!eol && ivec_push(out, s) < 0) return -1;
      continue;
    }
    if (n->out2 >= 0 && USEFUL(g, n->out2) && ivec_push(stack, n->out2 * 2 + next) < 0) return -1;
    if (n->out >= 0 && USEFUL(g, n->out) && ivec_push(stack, n->out * 2 + next) < 0) return -1;
  }
  if (out->n > 24) {
    qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_i32);
  } else {
    int32_t *v = out->v;
    for (int32_t i = 1; i < out->n; i++) {
      int32_t x = v[i], j = i - 1;
      while (j >= 0 && v[j] > x) v[j + 1] = v[j], j--;
      v[j + 1] = x;
    }
  }
  int32_t k = 0; /* a state may be reached both before and past $ */
  for (int32_t i = 0; i < out->n; i++)
    if (k == 0 || out->v[k - 1] != out->v[i]) out->v[k++] = out->v[i];
  out->n = k;
  return 0;
}

/* closure(seeds) through the memo of single-state closures: their union, sorted */
static int closure_fast(const ml_grammar *g, gdfa *d, const int32_t *seeds, int32_t ns, ivec *out) {
  if (d->anchors || !d->memo) return closure(g, d, seeds, ns, 0, out);
  ivec *one = &d->tmp;
  out->n = 0;
  for (int32_t i = 0; i < ns; i++) {
    int32_t u = seeds[i];
    if (u < 0 || !USEFUL(g, u)) continue;
    if (d->memo[u] == 0) {
      if (closure(g, d, &u, 1, 0, one) < 0) return -1;
      int32_t at = d->memo_pool.n;
      for (int32_t k = 0; k < one->n; k++)
        if (ivec_push(&d->memo_pool, one->v[k]) < 0) return -1;
      d->memo[u] = at + 1;
      d->memo_n[u] = one->n;
    }
    const int32_t *c = d->memo_pool.v + d->memo[u] - 1;
    for (int32_t k = 0; k < d->memo_n[u]; k++)
      if (ivec_push(out, c[k]) < 0) return -1;
  }
  if (ns > 1) { /* several seeds: sort and drop repeats */
    if (out->n > 24) {
      qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_i32);
    } else {
      int32_t *v = out->v;
      for (int32_t i = 1; i < out->n; i++) {
        int32_t x = v[i], j = i - 1;
        while (j >= 0 && v[j] > x) v[j + 1] = v[j], j--;
        v[j + 1] = x;
      }
    }
    int32_t k = 0;
    for (int32_t i = 0; i < out->n; i++)
      if (k == 0 || out->v[k - 1] != out->v[i]) out->v[k++] = out->v[i];
    out->n = k;
  }
  return 0;
}

static uint32_t set_hash(const int32_t *s, int32_t n) {
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < n; i++) h = (h ^ (uint32_t)s[i]) * 16777619u;
  return h ^ (uint32_t)n;
}

static void or4(uint64_t *a, const uint64_t *b) {
  for (int w = 0; w < 4; w++) a[w] |= b[w];
}

static void set_bytes(uint64_t *a, int lo, int hi) {
  for (int w = lo >> 6; w <= hi >> 6; w++) {
    int a0 = w * 64 > lo ? 0 : lo & 63, a1 = w * 64 + 63 < hi ? 63 : hi & 63;
    a[w] |= (a1 == 63 ? ~0ull : (1ull << (a1 + 1)) - 1) & ~((1ull << a0) - 1);
  }
}

/* first bytes of an NFA set (under the analysis' current values) */
static void set_first(const ml_grammar *g, const int32_t *set, int32_t n, uint64_t *f) {
  f[0] = f[1] = f[2] = f[3] = 0;
  for (int32_t i = 0; i < n; i++) {
    const nst *u = &g->nfa[set[i]];
    if (u->kind == N_RANGE) {
      set_bytes(f, u->lo, u->hi);
    } else if (u->kind == N_RANGES) {
      for (int k = 0; k < u->pad; k++) set_bytes(f, g->rpool[u->call + 2 * k], g->rpool[u->call + 2 * k + 1]);
    } else if (u->kind == N_CALL) {
      or4(f, g->mfirst + (size_t)u->call * 4);
      if (g->nullable[u->call]) or4(f, g->cfo + (size_t)u->out2 * 4); /* a call's index */
    }
  }
}

static int set_eps(const ml_grammar *g, const int32_t *set, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    if (NST_EPS(&g->nfa[set[i]])) return 1;
  return 0;
}

/* ---- analysis of the NFA ---- */

/* useful: on a path to the machine's end, through calls of machines that can end */
static int find_useful(ml_grammar *g) {
  int32_t n = g->n_nfa, nm = g->n_machines;
  int32_t *roff = calloc((size_t)n + 1, sizeof *roff), *rto = NULL, *coff = calloc((size_t)nm + 1, sizeof *coff), *cto = NULL;
  int32_t *fill = NULL;
  ivec work = {0};
  int rc = -1;
  if (!roff || !coff) goto done;
  for (int32_t u = 0; u < n; u++) {
    const nst *s = &g->nfa[u];
    if (s->out >= 0) roff[s->out + 1]++;
    if (EPS_LIKE(s) && s->out2 >= 0) roff[s->out2 + 1]++;
    if (s->kind == N_CALL) coff[s->call + 1]++;
  }
  for (int32_t u = 0; u < n; u++) roff[u + 1] += roff[u];
  for (int32_t m = 0; m < nm; m++) coff[m + 1] += coff[m];
  rto = malloc((size_t)roff[n] * sizeof *rto + 1);
  cto = malloc((size_t)coff[nm] * sizeof *cto + 1);
  fill = calloc((size_t)n + (size_t)nm + 1, sizeof *fill);
  if (!rto || !cto || !fill) goto done;
  for (int32_t u = 0; u < n; u++) {
    const nst *s = &g->nfa[u];
    if (s->out >= 0) rto[roff[s->out] + fill[s->out]++] = u;
    if (EPS_LIKE(s) && s->out2 >= 0) rto[roff[s->out2] + fill[s->out2]++] = u;
    if (s->kind == N_CALL) cto[coff[s->call] + fill[n + s->call]++] = u;
  }
  for (int32_t u = 0; u < n; u++)
    if (g->nfa[u].kind == N_FINAL) {
      g->useful[u] = 1;
      if (ivec_push(&work, u) < 0) goto done;
    }
  while (work.n) {
    int32_t t = work.v[--work.n];
    for (int32_t k = roff[t]; k < roff[t + 1]; k++) {
      int32_t p = rto[k];
      if (g->useful[p]) continue;
      if (g->nfa[p].kind == N_CALL && !g->useful[g->mentry[g->nfa[p].call]]) continue; /* callee cannot end (yet) */
      g->useful[p] = 1;
      if (ivec_push(&work, p) < 0) goto done;
    }
    int32_t m = gx_machine_of(g, t);
    if (g->mentry[m] == t) /* the machine can end now: its calls whose way on can end too */
      for (int32_t k = coff[m]; k < coff[m + 1]; k++) {
        int32_t p = cto[k];
        if (!g->useful[p] && g->useful[g->nfa[p].out]) {
          g->useful[p] = 1;
          if (ivec_push(&work, p) < 0) goto done;
        }
      }
  }
  rc = 0;
done:
  if (rc < 0) ml_seterr("out of memory (grammar)");
  free(roff), free(rto), free(coff), free(cto), free(fill), free(work.v);
  return rc;
}

/* eps, nullable, first, follow, enter: fixpoints over the closures of the machines'
 * entries and of what follows each call */
static int analyze(ml_grammar *g) {
  gdfa *d = g->dfa;
  int32_t n = g->n_nfa, nm = g->n_machines, ncall = 0;
  for (int32_t u = 0; u < n; u++) /* calls keep their index in out2 (no edge of theirs) */
    if (g->nfa[u].kind == N_CALL) g->nfa[u].out2 = USEFUL(g, u) ? ncall++ : -1, g->nfa[u].pad = 0;
  g->cfo = calloc((size_t)ncall * 4 + 4, sizeof *g->cfo);
  int32_t *calls = malloc((size_t)ncall * sizeof *calls + 1);
  ivec sets = {0};
  int32_t *off = malloc(((size_t)ncall + (size_t)nm + 1) * sizeof *off);
  int rc = -1;
  if (!g->cfo || !calls || !off) goto oom;
  for (int32_t u = 0; u < n; u++)
    if (g->nfa[u].kind == N_CALL && g->nfa[u].out2 >= 0) calls[g->nfa[u].out2] = u;
  if (ivec_push(&sets, 0) < 0) goto fail; /* (never NULL below) */
  sets.n = 0;
  /* the closures, once: machines' entries [0, nm), then what follows each call */
  for (int32_t k = 0; k < nm + ncall; k++) {
    int32_t seed = k < nm ? g->mentry[k] : g->nfa[calls[k - nm]].out;
    if (closure(g, d, &seed, 1, k < nm, &d->set) < 0) goto fail;
    off[k] = sets.n;
    for (int32_t i = 0; i < d->set.n; i++)
      if (ivec_push(&sets, d->set.v[i]) < 0) goto fail;
  }
  off[nm + ncall] = sets.n;
#define SET(k) (sets.v + off[k]), (off[(k) + 1] - off[k])
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t m = 0; m < nm; m++)
      if (!g->nullable[m] && set_eps(g, SET(m))) g->nullable[m] = 1, changed = 1;
    for (int32_t c = 0; c < ncall; c++) {
      int32_t u = calls[c];
      if (!g->nfa[u].pad && g->nullable[g->nfa[u].call] && set_eps(g, SET(nm + c))) g->nfa[u].pad = 1, changed = 1;
    }
  }
  for (int changed = 1; changed;) {
    changed = 0;
    uint64_t f[4];
    for (int32_t k = 0; k < nm + ncall; k++) {
      set_first(g, SET(k), f);
      uint64_t *dst = k < nm ? g->mfirst + (size_t)k * 4 : g->cfo + (size_t)(k - nm) * 4;
      for (int w = 0; w < 4; w++)
        if ((dst[w] | f[w]) != dst[w]) dst[w] |= f[w], changed = 1;
    }
  }
  for (int changed = 1; changed;) {
    changed = 0;
    for (int32_t c = 0; c < ncall; c++) {
      int32_t u = calls[c];
      uint64_t *dst = g->follow + (size_t)g->nfa[u].call * 4;
      uint64_t add[4];
      memcpy(add, g->cfo + (size_t)c * 4, sizeof add);
      if (set_eps(g, SET(nm + c))) or4(add, g->follow + (size_t)gx_machine_of(g, u) * 4);
      for (int w = 0; w < 4; w++)
        if ((dst[w] | add[w]) != dst[w]) dst[w] |= add[w], changed = 1;
    }
  }
#undef SET
  for (int32_t m = 0; m < nm; m++)
    for (int w = 0; w < 4; w++)
      g->enter[(size_t)m * 4 + w] = g->mfirst[(size_t)m * 4 + w] | (g->nullable[m] ? g->follow[(size_t)m * 4 + w] : 0);
  rc = 0;
  goto fail;
oom:
  ml_seterr("out of memory (grammar)");
fail:
  free(calls);
  free(sets.v);
  free(off);
  return rc;
}

/* ---- states ---- */

static int dfa_full(const ml_grammar *g) {
  ml_seterr("grammar too large: its automaton exceeds %d states", g->cap_states - 1);
  return -1;
}

/* The state of an NFA set (made if new; its calls are resolved by finish_pending). */
static int32_t state_of(ml_grammar *g, const int32_t *set, int32_t n) {
  gdfa *d = g->dfa;
  if (n == 0) return 0;
  int32_t ns = g->n_states;
  if (ns * 2 >= d->hcap) {
    int32_t nc = d->hcap ? d->hcap * 2 : 1024;
    int32_t *nt = malloc((size_t)nc * sizeof *nt);
    if (!nt) return ml_seterr("out of memory (grammar)"), -1;
    for (int32_t i = 0; i < nc; i++) nt[i] = -1;
    for (int32_t s = 1; s < ns; s++) {
      uint32_t k = set_hash(d->sets.v + d->set_off[s], d->set_n[s]) & (uint32_t)(nc - 1);
      while (nt[k] >= 0) k = (k + 1) & (uint32_t)(nc - 1);
      nt[k] = s;
    }
    free(d->ht);
    d->ht = nt;
    d->hcap = nc;
  }
  uint32_t k = set_hash(set, n) & (uint32_t)(d->hcap - 1);
  for (; d->ht[k] >= 0; k = (k + 1) & (uint32_t)(d->hcap - 1)) {
    int32_t s = d->ht[k];
    if (d->set_n[s] == n && memcmp(d->sets.v + d->set_off[s], set, (size_t)n * sizeof *set) == 0) return s;
  }
  if (ns >= g->cap_states) return dfa_full(g);
  int32_t off = d->sets.n;
  for (int32_t i = 0; i < n; i++)
    if (ivec_push(&d->sets, set[i]) < 0) return -1;
  d->set_off[ns] = off;
  d->set_n[ns] = n;
  d->ht[k] = ns;
  const int32_t *mem = d->sets.v + off;
  uint8_t fl = 0;
  for (int32_t i = 0; i < n; i++) {
    int kind = g->nfa[mem[i]].kind;
    if (kind == N_FINAL) fl |= GS_ACCEPT;
    else if (kind == N_CALL) fl |= GS_CALLS;
    else if (kind == N_RANGE || kind == N_RANGES) fl |= GS_BYTES;
    if (NST_EPS(&g->nfa[mem[i]])) fl |= GS_EPSEND;
  }
  g->flags[ns] = fl;
  set_first(g, mem, n, g->first + (size_t)ns * 4);
  g->mstate_machine[ns] = gx_machine_of(g, mem[0]);
  g->call_off[ns] = 0;
  g->call_n[ns] = 0;
  if ((fl & GS_CALLS) && ivec_push(&d->pending, ns) < 0) return -1;
  __atomic_store_n(&g->n_states, ns + 1, __ATOMIC_RELEASE);
  return ns;
}

/* The calls of the states made since the last call, and of those they make. */
static int finish_pending(ml_grammar *g) {
  gdfa *d = g->dfa;
  while (d->pending.n) {
    int32_t s = d->pending.v[--d->pending.n];
    /* group the call members by machine: members are sorted by NFA id, so collect the
     * machines first (few), then the outs of each */
    int32_t first_call = d->n_calls;
    for (int32_t i = 0; i < d->set_n[s]; i++) {
      const nst *u = &g->nfa[d->sets.v[d->set_off[s] + i]];
      if (u->kind != N_CALL) continue;
      int seen = 0;
      for (int32_t c = first_call; c < d->n_calls && !seen; c++) seen = g->calls[c].machine == u->call;
      if (seen) continue;
      if (d->n_calls >= g->cap_calls) {
        ml_seterr("grammar too large: more than %d call edges", g->cap_calls);
        return -1;
      }
      d->seeds.n = 0;
      for (int32_t j = i; j < d->set_n[s]; j++) {
        const nst *v = &g->nfa[d->sets.v[d->set_off[s] + j]];
        if (v->kind == N_CALL && v->call == u->call && ivec_push(&d->seeds, v->out) < 0) return -1;
      }
      if (closure_fast(g, d, d->seeds.v, d->seeds.n, &d->set) < 0) return -1;
      int32_t ret = state_of(g, d->set.v, d->set.n);
      if (ret < 0) return -1;
      if (ret == 0) continue; /* cannot happen: calls are useful only when something follows */
      g->calls[d->n_calls].machine = u->call;
      g->calls[d->n_calls].ret = ret;
      d->n_calls++;
    }
    g->call_off[s] = first_call;
    g->call_n[s] = d->n_calls - first_call;
  }
  return 0;
}

static int32_t encode(const ml_grammar *g, int32_t t) {
  if (t == 0) return GD_DEAD;
  return (g->flags[t] & (GS_CALLS | GS_EPSEND)) ? -t * g->n_cls : t * g->n_cls;
}

/* One entry: the targets of the state's ranges that take a byte of class c, closed. (A
 * whole row at once costs more: a walk needs few of a deep state's classes.) */
int32_t gd_fill(ml_grammar *g, int32_t s, int c) {
  size_t at = (size_t)s * (size_t)g->n_cls + (size_t)c;
  pthread_mutex_lock(&g->dfa_mu);
  int32_t x = g->table[at];
  if (x != 0) { /* another thread was first */
    pthread_mutex_unlock(&g->dfa_mu);
    return x;
  }
  gdfa *d = g->dfa;
  int rep = g->rep[c];
  d->seeds.n = 0;
  int32_t off = d->set_off[s], n = d->set_n[s];
  int rc = 0;
  for (int32_t i = 0; i < n && rc == 0; i++) {
    const nst *u = &g->nfa[d->sets.v[off + i]];
    if ((u->kind == N_RANGE || u->kind == N_RANGES) && nst_takes(g->rpool, u, rep)) rc = ivec_push(&d->seeds, u->out);
  }
  int32_t t = -1;
  if (rc == 0 && closure_fast(g, d, d->seeds.v, d->seeds.n, &d->set) == 0) t = state_of(g, d->set.v, d->set.n);
  if (t >= 0 && finish_pending(g) < 0) t = -1;
  if (t < 0) {
    d->pending.n = 0;
    pthread_mutex_unlock(&g->dfa_mu);
    return GD_ERR;
  }
  x = encode(g, t);
  __atomic_store_n(&g->table[at], x, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&g->dfa_mu);
  return x;
}

/* ---- set up and tear down ---- */

int gd_init(ml_grammar *g) {
  int32_t n = g->n_nfa, nm = g->n_machines, nc = g->n_cls;
  g->dfa = calloc(1, sizeof *g->dfa);
  g->useful = g->all_useful ? NULL : calloc((size_t)n, 1);
  g->nullable = calloc((size_t)nm, 1);
  g->mfirst = calloc((size_t)nm * 4, sizeof *g->mfirst);
  g->follow = calloc((size_t)nm * 4, sizeof *g->follow);
  g->enter = calloc((size_t)nm * 4, sizeof *g->enter);
  g->mstart = calloc((size_t)nm, sizeof *g->mstart);
  if (!g->dfa || (!g->all_useful && !g->useful) || !g->nullable || !g->mfirst || !g->follow || !g->enter || !g->mstart)
    goto oom;
  gdfa *d = g->dfa;
  pthread_mutex_init(&g->dfa_mu, NULL);
  d->stamp = calloc((size_t)n * 2, sizeof *d->stamp);
  d->memo = calloc((size_t)n, sizeof *d->memo); /* zero pages until used */
  d->memo_n = malloc((size_t)n * sizeof *d->memo_n + 1);
  if (!d->stamp || !d->memo || !d->memo_n) goto oom;
  /* one pass: anchors anywhere, and the important states (the DFA's room below) */
  int64_t imp = 0;
  for (int32_t u = 0; u < n; u++) {
    int k = g->nfa[u].kind;
    d->anchors |= k == N_BOL || k == N_EOL;
    imp += k == N_RANGE || k == N_RANGES || k == N_CALL || k == N_FINAL;
  }
  if (!g->all_useful && find_useful(g) < 0) return -1;
  if (analyze(g) < 0) return -1;
  if (!USEFUL(g, g->mentry[g->root])) {
    ml_seterr("the grammar matches no complete text (rule 'root' cannot finish)");
    return -1;
  }
  /* room for the states: a DFA is rarely much larger than its NFA's important states;
   * past the room, a clean error at run time */
  int64_t cap = 8 * imp + 1024;
  if (cap > GX_MAX_DFA) cap = GX_MAX_DFA;
  if (cap > (int64_t)(GX_MAX_TABLE / (size_t)nc)) cap = (int64_t)(GX_MAX_TABLE / (size_t)nc);
  g->cap_states = (int32_t)cap;
  g->cap_calls = (int32_t)(cap * 2 + 1024);
  g->table = reserve((size_t)cap * (size_t)nc * sizeof *g->table);
  g->flags = reserve((size_t)cap);
  g->first = reserve((size_t)cap * 4 * sizeof *g->first);
  g->mstate_machine = reserve((size_t)cap * sizeof *g->mstate_machine);
  g->call_off = reserve((size_t)cap * sizeof *g->call_off);
  g->call_n = reserve((size_t)cap * sizeof *g->call_n);
  g->calls = reserve((size_t)g->cap_calls * sizeof *g->calls);
  d->set_off = malloc((size_t)cap * sizeof *d->set_off);
  d->set_n = malloc((size_t)cap * sizeof *d->set_n);
  if (!g->table || !g->flags || !g->first || !g->mstate_machine || !g->call_off || !g->call_n || !g->calls ||
      !d->set_off || !d->set_n)
    goto oom;
  g->n_states = 1; /* 0 is no state */
  for (int32_t m = 0; m < nm; m++) {
    if (!USEFUL(g, g->mentry[m])) continue; /* never called: calls to it were pruned */
    if (closure(g, d, &g->mentry[m], 1, m == g->root, &d->set) < 0) return -1;
    int32_t s = state_of(g, d->set.v, d->set.n);
    if (s <= 0) { if (s == 0) ml_seterr("internal error: machine %d (entry %d) has no start", (int)m, (int)g->mentry[m]); return -1; }
    if (finish_pending(g) < 0) return -1;
    g->mstart[m] = s;
  }
  return 0;
oom:
  ml_seterr("out of memory (grammar)");
  return -1;
}

void gd_free(ml_grammar *g) {
  size_t cap = (size_t)g->cap_states, nc = (size_t)g->n_cls;
  if (g->dfa) pthread_mutex_destroy(&g->dfa_mu);
  unreserve(g->table, cap * nc * sizeof *g->table);
  unreserve(g->flags, cap);
  unreserve(g->first, cap * 4 * sizeof *g->first);
  unreserve(g->mstate_machine, cap * sizeof *g->mstate_machine);
  unreserve(g->call_off, cap * sizeof *g->call_off);
  unreserve(g->call_n, cap * sizeof *g->call_n);
  unreserve(g->calls, (size_t)g->cap_calls * sizeof *g->calls);
  if (g->dfa) {
    gdfa *d = g->dfa;
    free(d->sets.v);
    free(d->set_off);
    free(d->set_n);
    free(d->ht);
    free(d->stamp);
    free(d->memo);
    free(d->memo_n);
    free(d->memo_pool.v);
    free(d->tmp.v);
    free(d->stack.v);
    free(d->set.v);
    free(d->seeds.v);
    free(d->pending.v);
    free(d);
  }
  free(g->nfa);
  free(g->rpool);
  free(g->mentry);
  free(g->mlo);
  free(g->useful);
  free(g->cfo);
  free(g->nullable);
  free(g->mfirst);
  free(g->follow);
  free(g->enter);
  free(g->mstart);
}
