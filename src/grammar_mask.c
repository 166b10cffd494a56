/* grammar_mask.c: token masks.
 *
 * A mask is the set of tokens whose bytes the configuration can consume. It is computed
 * per stack top and composed down the stack:
 *
 *   W(s)  = the walk of the whole token trie from state s alone, as if s's machine were
 *           the bottom of the stack: the tokens consumed without returning below s, and
 *           the "exits", trie nodes where s's machine may return with bytes left to read.
 *           W(s) depends on s only, so it is computed once per (grammar, vocabulary) on
 *           first use and shared by every matcher (lock-free reads, compare-and-swap
 *           installs).
 *   mask(stack s | P) = W(s) + for each exit node e: the walk of e's subtree from the
 *           caller's state (the frame P); an exit at the root (s may return at once) is
 *           W of the caller, recursively.
 *
 * Exits are rare (a token that closes a rule and goes on in its caller, like `",` after a
 * JSON string) and their subtrees small, so after the first visit of a state a mask costs
 * a copy of a cached bitset plus a few short walks. A walk keeps one configuration per
 * trie depth and skips a refused subtree in one step; a single plain DFA state (the usual
 * case) advances by one table lookup per trie node.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"

typedef struct gw {
  int32_t n_tok;
  uint64_t *dense; /* n_words, or NULL: then list */
  int32_t *list;
  int32_t n_exit;
  int32_t *exits;  /* trie nodes (0: the root) */
  const gtrie *trie;
  size_t bytes;
} gw;

typedef struct gbind {
  struct gbind *next;
  ml_gvocab *v;
  int32_t n_states;
  gw **w;        /* per state, installed with compare-and-swap */
  size_t bytes;  /* atomic */
} gbind;

#define GK_MAX_CACHE ((size_t)512 << 20) /* bytes of W per (grammar, vocabulary) */

gbind *gk_bind(ml_grammar *g, ml_gvocab *v) {
  pthread_mutex_lock(&g->mu);
  gbind *b = g->binds;
  while (b && b->v != v) b = b->next;
  if (!b) {
    b = calloc(1, sizeof *b);
    if (b) b->w = calloc((size_t)g->n_states, sizeof *b->w);
    if (!b || !b->w) {
      free(b);
      b = NULL;
      ml_seterr("out of memory (grammar masks)");
    } else {
      b->v = v;
      b->n_states = g->n_states;
      ml_gvocab_retain(v);
      b->next = g->binds;
      g->binds = b;
    }
  }
  pthread_mutex_unlock(&g->mu);
  return b;
}

static void gw_free(gw *w) {
  if (!w) return;
  ml_free(w->dense);
  free(w->list);
  free(w->exits);
  free(w);
}

void gk_binds_free(ml_grammar *g) {
  gbind *b = g->binds;
  while (b) {
    gbind *next = b->next;
    for (int32_t s = 0; s < b->n_states; s++) gw_free(b->w[s]);
    free(b->w);
    ml_gvocab_release(b->v);
    free(b);
    b = next;
  }
  g->binds = NULL;
}

/* ---- walks ---- */

typedef struct ivec {
  int32_t *v;
  int32_t n, cap;
} ivec;

static int ivec_push(ivec *x, int32_t v) {
  if (x->n == x->cap) {
    int32_t nc = x->cap ? x->cap * 2 : 64;
    int32_t *p = realloc(x->v, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (grammar masks)"), -1;
    x->v = p;
    x->cap = nc;
  }
  x->v[x->n++] = v;
  return 0;
}

static void add_dups(const gtrie *t, uint64_t *bits) {
  for (int32_t k = 0; k < t->n_dup; k++) {
    int32_t a = t->dup[2 * k], b = t->dup[2 * k + 1];
    if ((bits[a >> 6] >> (a & 63)) & 1) bits[b >> 6] |= 1ull << (b & 63);
  }
}

static int levels(ml_matcher *m, const gtrie *t) {
  if (m->n_lvl >= t->max_depth + 2) return 0;
  int32_t n = t->max_depth + 2;
  int32_t *a = realloc(m->lvl_off, (size_t)n * sizeof *a);
  if (a) m->lvl_off = a;
  int32_t *b = a ? realloc(m->lvl_n, (size_t)n * sizeof *b) : NULL;
  if (b) m->lvl_n = b;
  int32_t *c = b ? realloc(m->lvl_st, (size_t)n * sizeof *c) : NULL;
  if (c) m->lvl_st = c;
  int32_t *d = c ? realloc(m->lvl_p, (size_t)n * sizeof *d) : NULL;
  if (d) m->lvl_p = d;
  if (!a || !b || !c || !d) return ml_seterr("out of memory (grammar masks)"), -1;
  m->n_lvl = n;
  return 0;
}

/* Walk the subtree of `start` (its own token excluded) from configuration cfg0, marking
 * accepted tokens in bits (the tokens of duplicates are not marked: see add_dups). base:
 * GN_BASE for a relative walk (then exits are collected: nodes with children where the
 * base frame may return), GN_NIL for an absolute one.
 *
 * Each depth has either a simple configuration, one state without calls that cannot
 * return (st = its premultiplied offset in wdelta, p = its parent node), where a child
 * costs one table lookup, or a full one (st = -1, the elements in wcfg at off, cnt). */
static int walk(ml_matcher *m, const gtrie *t, int32_t start, const gelem *cfg0, int32_t n0, int32_t base,
                uint64_t *bits, ivec *exits) {
  const ml_grammar *g = m->g;
  if (levels(m, t) < 0) return -1;
  int32_t *off = m->lvl_off, *cnt = m->lvl_n, *st = m->lvl_st, *par = m->lvl_p;
  gbuf *w = &m->wcfg, *tmp = &m->tmp[2];
  const int32_t nc = g->n_cls;
  const int32_t *wd = g->wdelta;
  const uint8_t *cls = g->cls;
  int32_t d0 = t->depth[start];
  if (gbuf_reserve(w, n0 + 64) < 0) return -1;
  memcpy(w->e, cfg0, (size_t)n0 * sizeof *w->e);
  off[d0] = 0;
  cnt[d0] = n0;
  st[d0] = -1;
  /* (a simple level: off is where the next elements may go) */
  if (n0 == 1 && !(g->flags[cfg0[0].s] & (GS_CALLS | GS_EPSEND))) st[d0] = cfg0[0].s * nc, par[d0] = cfg0[0].p;
  const uint32_t *sub = t->sub;
  const uint16_t *depth = t->depth;
  const uint8_t *byte = t->byte;
  const int32_t *tok = t->tok;
  int32_t end = start + (int32_t)sub[start];
  for (int32_t p = start + 1; p < end;) {
    int32_t d = depth[p];
    int32_t sp = st[d - 1];
    gelem single;
    const gelem *in;
    int32_t nin;
    if (sp >= 0) {
      int32_t x = wd[sp + cls[byte[p]]];
      if (x > 0) { /* the fast path */
        st[d] = x;
        par[d] = par[d - 1];
        off[d] = off[d - 1]; /* a simple level's off is where the next elements may go */
        int32_t k = tok[p];
        bits[k >> 6] |= 1ull << (k & 63);
        p++;
        continue;
      }
      if (x == 0) {
        p += (int32_t)sub[p];
        continue;
      }
      /* a state with calls or a possible return: a full configuration from here on */
      single = (gelem){-x / nc, par[d - 1]};
      in = &single;
      nin = 1;
      int32_t o = off[d - 1];
      off[d] = o;
      if (gbuf_reserve(w, o + 64) < 0) return -1;
      w->e[o] = single;
      cnt[d] = 1;
      st[d] = -1;
    } else {
      int32_t po = off[d - 1], pn = cnt[d - 1];
      tmp->n = 0;
      if (gm_step(m, w->e + po, pn, byte[p], base, tmp) < 0) return -1;
      if (tmp->n == 0) {
        p += (int32_t)sub[p];
        continue;
      }
      int32_t o = po + pn;
      off[d] = o;
      if (gbuf_reserve(w, o + tmp->n + 64) < 0) return -1;
      memcpy(w->e + o, tmp->e, (size_t)tmp->n * sizeof *tmp->e);
      cnt[d] = tmp->n;
      st[d] = -1;
      in = w->e + o;
      nin = tmp->n;
      if (nin == 1 && !(g->flags[in[0].s] & (GS_CALLS | GS_EPSEND))) {
        st[d] = in[0].s * nc;
        par[d] = in[0].p;
        off[d] = o;
      }
    }
    int32_t k = tok[p];
    bits[k >> 6] |= 1ull << (k & 63);
    if (exits && sub[p] > 1)
      for (int32_t i = 0; i < nin; i++)
        if (gm_can_pop_to(m, in[i], GN_BASE)) {
          if (ivec_push(exits, p) < 0) return -1;
          break;
        }
    p++;
  }
  return 0;
}

/* ---- W(s) ---- */

static gw *compute_w(ml_matcher *m, int32_t s) {
  ml_gvocab *v = m->v;
  const gtrie *t = &v->trie;
  uint64_t *bits = ml_calloc((v->n_words + 1) * sizeof *bits);
  ivec ex = {0};
  gw *w = calloc(1, sizeof *w);
  int32_t mark0 = m->ar.len;
  if (!bits || !w) goto oom;
  if ((m->g->flags[s] & GS_EPSEND) && ivec_push(&ex, 0) < 0) goto fail;
  gelem e = {s, GN_BASE};
  if (walk(m, t, 0, &e, 1, GN_BASE, bits, &ex) < 0) goto fail;
  gm_release(m, mark0);
  add_dups(t, bits);
  bits[v->n_words] = 0;
  int64_t n = 0;
  for (size_t i = 0; i < v->n_words; i++) n += __builtin_popcountll(bits[i]);
  w->n_tok = (int32_t)n;
  w->trie = t;
  if (n * 64 < v->n_vocab) { /* sparse: few tokens */
    w->list = malloc((size_t)n * sizeof *w->list + 1);
    if (!w->list) goto oom;
    int32_t k = 0;
    for (size_t i = 0; i < v->n_words; i++)
      for (uint64_t x = bits[i]; x; x &= x - 1) w->list[k++] = (int32_t)(i * 64 + (size_t)__builtin_ctzll(x));
    ml_free(bits);
    w->bytes = (size_t)n * 4;
  } else {
    w->dense = bits;
    w->bytes = v->n_words * 8;
  }
  w->exits = ex.v;
  w->n_exit = ex.n;
  w->bytes += (size_t)ex.n * 4 + sizeof *w;
  return w;
oom:
  ml_seterr("out of memory (grammar masks)");
fail:
  gm_release(m, mark0);
  ml_free(bits);
  free(ex.v);
  free(w);
  return NULL;
}

/* W(s), cached. *owned is set when the result is not cached (caller frees). */
static const gw *get_w(ml_matcher *m, int32_t s, gw **owned) {
  gbind *b = m->bind;
  *owned = NULL;
  gw *w = __atomic_load_n(&b->w[s], __ATOMIC_ACQUIRE);
  if (w) return w;
  w = compute_w(m, s);
  if (!w) return NULL;
  size_t used = __atomic_load_n(&b->bytes, __ATOMIC_RELAXED);
  if (used + w->bytes > GK_MAX_CACHE) {
    *owned = w;
    return w;
  }
  gw *expected = NULL;
  if (__atomic_compare_exchange_n(&b->w[s], &expected, w, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    __atomic_add_fetch(&b->bytes, w->bytes, __ATOMIC_RELAXED);
    return w;
  }
  gw_free(w); /* another thread installed it first */
  return expected;
}

static void or_w(const gw *w, uint64_t *bits, size_t n_words) {
  if (w->dense) {
    for (size_t i = 0; i < n_words; i++) bits[i] |= w->dense[i];
  } else {
    for (int32_t k = 0; k < w->n_tok; k++) bits[w->list[k] >> 6] |= 1ull << (w->list[k] & 63);
  }
}

/* tokens for the stack (s | p) */
static int mask_elem(ml_matcher *m, int32_t s, int32_t p, uint64_t *bits) {
  for (;;) {
    gw *owned;
    const gw *w = get_w(m, s, &owned);
    if (!w) return -1;
    or_w(w, bits, m->v->n_words);
    int root_exit = 0, rc = 0;
    if (p != GN_NIL) {
      const gnode *pn = &m->ar.n[p];
      gelem caller = {pn->state, pn->parent};
      int32_t mark0 = m->ar.len;
      for (int32_t k = 0; k < w->n_exit && rc == 0; k++) {
        if (w->exits[k] == 0) root_exit = 1;
        else rc = walk(m, w->trie, w->exits[k], &caller, 1, GN_NIL, bits, NULL);
      }
      gm_release(m, mark0);
    }
    gw_free(owned);
    if (rc < 0) return -1;
    if (!root_exit) return 0;
    s = m->ar.n[p].state;
    p = m->ar.n[p].parent;
  }
}

int gk_mask(ml_matcher *m, const gelem *cfg, int32_t n, uint64_t *bits) {
  memset(bits, 0, (m->v->n_words + 1) * sizeof *bits);
  for (int32_t i = 0; i < n; i++)
    if (mask_elem(m, cfg[i].s, cfg[i].p, bits) < 0) return -1;
  add_dups(&m->v->trie, bits);
  bits[m->v->n_words] = 0;
  return 0;
}

const uint64_t *ml_matcher_mask(ml_matcher *m) {
  if (m->mask_valid) return m->mask;
  const ghist *h = &m->hist[m->n_hist - 1];
  ml_gvocab *v = m->v;
  if (h->stopped) {
    memset(m->mask, 0, v->n_words * sizeof *m->mask);
  } else if (h->awaiting) {
    memset(m->mask, 0xFF, v->n_words * sizeof *m->mask);
    if (v->n_vocab & 63) m->mask[v->n_words - 1] = (1ull << (v->n_vocab & 63)) - 1;
    m->mask_valid = 1;
    return m->mask;
  } else {
    int32_t n;
    const gelem *c = gm_cfg(m, &n);
    if (gk_mask(m, c, n, m->mask) < 0) return NULL;
  }
  if (ml_matcher_can_end(m))
    for (int32_t k = 0; k < v->n_eog; k++) m->mask[v->eog[k] >> 6] |= 1ull << (v->eog[k] & 63);
  m->mask_valid = 1;
  return m->mask;
}
