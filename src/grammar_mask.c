/* grammar_mask.c: token masks.
 *
 * A mask is the set of tokens whose bytes the configuration can consume. The work is cut
 * into items (q, s, P): "walk the subtree of trie node q from machine state s, whose
 * caller frames are P". A walk follows s's DFA only, one table lookup per trie node, and
 * skips a refused subtree in one step. Where the DFA reaches a state that calls another
 * machine, or may return to P, the walk goes on with the DFA and leaves a new item for
 * the callee (pushed on P) or for the caller (at that node); so every walk is a plain DFA
 * walk, and the stack is followed only where a token actually crosses a rule boundary.
 *
 * Items at the root are cached:
 *   W(s)  = the tokens accepted from state s as the bottom of the stack (P = a base no
 *           walk goes below), and its "exits", the trie nodes where s's machine may return
 *           with bytes left. W(s) depends on s only, so it is computed once per (grammar,
 *           vocabulary) on first use and shared by every matcher (lock-free reads,
 *           compare-and-swap installs). An item (root, s, P) is W(s) plus, for each exit
 *           node e, the item (e, the caller's state, the rest of P).
 * Exits are rare (a token that closes a rule and goes on in its caller, like `",` after a
 * JSON string) and their subtrees small, so after the first visit of a state a mask costs
 * a copy of a cached bitset plus a few short walks. Items are deduplicated per mask, so an
 * ambiguous grammar costs its distinct (node, state, stack) triples, not its derivations.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"
#include "kernels/dispatch.h"

typedef struct gw {
  int32_t n_tok;
  uint64_t *dense; /* n_words + 1, or NULL: then list */
  int32_t *list;
  int32_t n_exit;
  int32_t *exits;  /* (trie node, trie) pairs: node 0 is the root */
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
#define GK_MAX_NEST 64                   /* W computations inside W computations (<= wstack) */
#define GK_MAX_ITEMS (1 << 22)           /* items of one mask */

gbind *gk_bind(ml_grammar *g, ml_gvocab *v) {
  pthread_mutex_lock(&g->mu);
  gbind *b = g->binds;
  while (b && b->v != v) b = b->next;
  if (!b) {
    b = calloc(1, sizeof *b);
    if (b) b->w = calloc((size_t)g->cap_states, sizeof *b->w); /* zero pages until used */
    if (!b || !b->w) {
      free(b);
      b = NULL;
      ml_seterr("out of memory (grammar masks)");
    } else {
      b->v = v;
      b->n_states = g->cap_states;
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
  /* only states the DFA made can have a W: the rest of the table (room for cap_states, up
   * to millions for a large schema) is untouched zero pages, and reading it to find NULLs
   * cost a freed large grammar tens of millions of instructions and page faults */
  int32_t made = __atomic_load_n(&g->n_states, __ATOMIC_ACQUIRE);
  while (b) {
    gbind *next = b->next;
    int32_t n = made < b->n_states ? made : b->n_states;
    for (int32_t s = 0; s < n; s++) gw_free(b->w[s]);
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

/* One computation's items and their set (each (q, s, p) once). */
typedef struct gitem {
  int32_t q, s, p, tr; /* trie node, state, caller frames, trie (gv_trie) */
} gitem;

typedef struct gwork {
  gitem *it;
  int32_t n, cap;
  int32_t *ht; /* indices into it, -1 empty */
  int32_t hcap;
  int32_t total;
} gwork;

static void gwork_free(gwork *w) {
  free(w->it);
  free(w->ht);
}

static uint32_t item_hash(gitem x) {
  uint64_t h = (uint64_t)(uint32_t)x.q * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)x.s * 0xC2B2AE3D27D4EB4Full ^
               (uint64_t)(uint32_t)x.p * 0x165667B19E3779F9ull ^ (uint64_t)(uint32_t)x.tr * 0x27D4EB2F165667C5ull;
  return (uint32_t)(h >> 32);
}

/* add an item unless it was added before in this computation */
static int gwork_add(gwork *w, int32_t q, int32_t s, int32_t p, int32_t tr) {
  gitem x = {q, s, p, tr};
  if (w->total * 2 >= w->hcap) {
    int32_t nc = w->hcap ? w->hcap * 2 : 256;
    int32_t *nh = malloc((size_t)nc * sizeof *nh);
    if (!nh) return ml_seterr("out of memory (grammar masks)"), -1;
    for (int32_t i = 0; i < nc; i++) nh[i] = -1;
    for (int32_t i = 0; i < w->total; i++) {
      uint32_t h = item_hash(w->it[i]) & (uint32_t)(nc - 1);
      while (nh[h] >= 0) h = (h + 1) & (uint32_t)(nc - 1);
      nh[h] = i;
    }
    free(w->ht);
    w->ht = nh;
    w->hcap = nc;
  }
  uint32_t h = item_hash(x) & (uint32_t)(w->hcap - 1);
  for (; w->ht[h] >= 0; h = (h + 1) & (uint32_t)(w->hcap - 1)) {
    gitem y = w->it[w->ht[h]];
    if (y.q == q && y.s == s && y.p == p && y.tr == tr) return 0;
  }
  if (w->total >= GK_MAX_ITEMS) return ml_seterr("grammar too ambiguous for a mask (more than %d walks)", GK_MAX_ITEMS), -1;
  if (w->total == w->cap) {
    int32_t nc = w->cap ? w->cap * 2 : 64;
    gitem *ni = realloc(w->it, (size_t)nc * sizeof *ni);
    if (!ni) return ml_seterr("out of memory (grammar masks)"), -1;
    w->it = ni;
    w->cap = nc;
  }
  /* items are kept (for the set); n counts those not yet processed from the end */
  w->it[w->total] = x;
  w->ht[h] = w->total++;
  return 0;
}

static int exit_push(ivec *exits, int32_t q, int32_t tr) {
  if (!exits) return 0;
  if (ivec_push(exits, q) < 0) return -1;
  return ivec_push(exits, tr);
}

/* Does some child of trie node q start with a byte of set (4 words)? */
static int children_in(const gtrie *t, int32_t q, const uint64_t *set) {
  int32_t end = q + (int32_t)t->sub[q];
  for (int32_t c = q + 1; c < end; c += (int32_t)t->sub[c])
    if ((set[t->byte[c] >> 6] >> (t->byte[c] & 63)) & 1) return 1;
  return 0;
}

/* What happens at trie node q in state t with callers p: a possible return (to the
 * caller's state at q, or an exit when p is the base), and the calls t makes (each a new
 * item at q). Only where some byte left below q can follow the return or begin the call
 * (the follow and enter sets): an identifier that may end at every letter leaves no work
 * where the next byte is another letter. */
static int at_node(ml_matcher *m, gwork *w, int32_t tri, int32_t q, int32_t t, int32_t p, ivec *exits) {
  ml_grammar *g = m->g;
  const gtrie *tr = gv_trie(m->v, tri);
  int fl = g->flags[t];
  if (tr->sub[q] <= 1) return 0; /* no byte left */
  if ((fl & GS_ACCEPT) && p != GN_NIL && children_in(tr, q, g->follow + (size_t)g->mstate_machine[t] * 4)) {
    if (p == GN_BASE) {
      if (exit_push(exits, q, tri) < 0) return -1;
    } else if (gwork_add(w, q, m->ar.n[p].state, m->ar.n[p].parent, tri) < 0) {
      return -1;
    }
  }
  if (fl & GS_CALLS)
    for (int32_t c = g->call_off[t]; c < g->call_off[t] + g->call_n[t]; c++) {
      const gcall *gc = &g->calls[c];
      if (!children_in(tr, q, g->enter + (size_t)gc->machine * 4)) continue;
      int32_t node = gm_node(m, gc->ret, p);
      if (node < 0 || gwork_add(w, q, g->mstart[gc->machine], node, tri) < 0) return -1;
    }
  return 0;
}

/* Walk the subtree of q (q's own token excluded) from state s with callers p, marking the
 * tokens the DFA accepts and leaving items where it calls or may return. */
static int subwalk_range(ml_matcher *m, int32_t tri, int32_t q, int32_t s, int32_t p, uint64_t *bits, gwork *w,
                         ivec *exits, int32_t lo, int32_t end);

static int subwalk(ml_matcher *m, int32_t tri, int32_t q, int32_t s, int32_t p, uint64_t *bits, gwork *w,
                   ivec *exits) {
  const gtrie *t = gv_trie(m->v, tri);
  return subwalk_range(m, tri, q, s, p, bits, w, exits, q + 1, q + (int32_t)t->sub[q]);
}

/* The nodes [lo, end) below q: whole subtrees of q's descendants. */
static int subwalk_range(ml_matcher *m, int32_t tri, int32_t q, int32_t s, int32_t p, uint64_t *bits, gwork *w,
                         ivec *exits, int32_t lo, int32_t end) {
  ml_grammar *g = m->g;
  const gtrie *t = gv_trie(m->v, tri);
  if (m->n_lvl < t->max_depth + 2) {
    int32_t n = t->max_depth + 2;
    int32_t *a = realloc(m->lvl_st, (size_t)n * sizeof *a);
    if (!a) return ml_seterr("out of memory (grammar masks)"), -1;
    m->lvl_st = a;
    m->n_lvl = n;
  }
  int32_t *st = m->lvl_st;
  const int32_t nc = g->n_cls;
  const int32_t *wd = g->table;
  const uint8_t *cls = g->cls;
  const uint32_t *sub = t->sub;
  const uint16_t *depth = t->depth;
  const uint8_t *byte = t->byte;
  const int32_t *tok = t->tok;
  st[depth[q]] = s * nc;
  for (int32_t i = lo; i < end;) {
    int32_t d = depth[i];
    int32_t x = __atomic_load_n(&wd[st[d - 1] + cls[byte[i]]], __ATOMIC_RELAXED);
    if (x == 0) { /* not computed yet */
      x = gd_fill(g, st[d - 1] / nc, cls[byte[i]]);
      if (x == GD_ERR) return -1;
    }
    if (x > 0) {
      st[d] = x;
      int32_t k = tok[i];
      bits[k >> 6] |= 1ull << (k & 63);
      i++;
    } else if (x == GD_DEAD) {
      i += (int32_t)sub[i];
    } else { /* a state that calls or may return: items, then on with its own DFA */
      st[d] = -x;
      int32_t k = tok[i];
      bits[k >> 6] |= 1ull << (k & 63);
      if (sub[i] > 1 && at_node(m, w, tri, i, -x / nc, p, exits) < 0) return -1;
      i++;
    }
  }
  return 0;
}

static const gw *get_w(ml_matcher *m, int32_t s, gw **owned, int nest);

/* Run the items of w from index k0 until none is left. Items at the root of the whole
 * trie use W (unless nested too deep or being computed). Returns to GN_BASE are exits
 * (inside a W computation); to GN_NIL, the end of the grammar (nothing to walk). */
static int run_items(ml_matcher *m, gwork *w, uint64_t *bits, ivec *exits, int nest, int32_t k0) {
  for (int32_t k = k0; k < w->total; k++) {
    gitem x = w->it[k];
    int use_w = x.q == 0 && x.tr == 0 && nest < GK_MAX_NEST;
    for (int i = 0; i < m->n_wstack && use_w; i++) use_w = m->wstack[i] != x.s; /* being computed */
    if (use_w && !__atomic_load_n(&m->bind->w[x.s], __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&m->bind->bytes, __ATOMIC_RELAXED) >= GK_MAX_CACHE)
      use_w = 0; /* the cache is full: no W computed only to be thrown away */
    if (use_w) {
      gw *owned;
      const gw *wq = get_w(m, x.s, &owned, nest + 1);
      if (!wq) return -1;
      if (wq->dense) {
        for (size_t i = 0; i < m->v->n_words; i++) bits[i] |= wq->dense[i];
      } else {
        for (int32_t j = 0; j < wq->n_tok; j++) bits[wq->list[j] >> 6] |= 1ull << (wq->list[j] & 63);
      }
      int rc = 0;
      for (int32_t j = 0; j < wq->n_exit && rc == 0; j++) {
        int32_t e = wq->exits[2 * j], etr = wq->exits[2 * j + 1];
        if (x.p == GN_BASE) rc = exit_push(exits, e, etr);
        else if (x.p != GN_NIL) rc = gwork_add(w, e, m->ar.n[x.p].state, m->ar.n[x.p].parent, etr);
      }
      gw_free(owned);
      if (rc < 0) return -1;
      continue;
    }
    if (at_node(m, w, x.tr, x.q, x.s, x.p, exits) < 0) return -1;
    if (subwalk(m, x.tr, x.q, x.s, x.p, bits, w, exits) < 0) return -1;
  }
  return 0;
}

/* ---- slices: the nearly unconstrained states ---- */

/* Classes worth a slice: the inside of a JSON string (RFC 8259, and llama.cpp's variant
 * without DEL), a line, anything (code point pairs, surrogates excluded). */
#define N_SLICE_CLASSES 4
static const uint32_t SLICE_RANGES[N_SLICE_CLASSES][10] = {
  {0x20, 0x21, 0x23, 0x5B, 0x5D, 0xD7FF, 0xE000, 0x10FFFF},
  {0x20, 0x21, 0x23, 0x5B, 0x5D, 0x7E, 0x80, 0xD7FF, 0xE000, 0x10FFFF},
  {0x00, 0x09, 0x0B, 0xD7FF, 0xE000, 0x10FFFF},
  {0x00, 0xD7FF, 0xE000, 0x10FFFF},
};
static const int32_t SLICE_NPAIRS[N_SLICE_CLASSES] = {4, 5, 3, 2};
static uvec slice_seqs[N_SLICE_CLASSES]; /* their UTF-8 byte-range sequences */
static int slice_seqs_ok;
static pthread_once_t slice_once = PTHREAD_ONCE_INIT;

static void slice_init(void) {
  for (int c = 0; c < N_SLICE_CLASSES; c++)
    for (int32_t i = 0; i < SLICE_NPAIRS[c]; i++)
      if (gx_utf8_split(SLICE_RANGES[c][2 * i], SLICE_RANGES[c][2 * i + 1], &slice_seqs[c]) < 0) return;
  slice_seqs_ok = 1;
}

/* The one state every character of class c takes s to (0: all refused), or -1 when they
 * go to different states, or some byte inside a character reaches a state that calls or
 * may return. With exc: a few ASCII characters (at most 32) may go elsewhere; they are
 * returned in exc (256 bits) and the target is the one of all the others. */
static int32_t uniform_target(ml_grammar *g, int32_t s, int c, uint64_t *exc) {
  int32_t target = -1;
  const uvec *v = &slice_seqs[c];
  if (exc) exc[0] = exc[1] = exc[2] = exc[3] = 0;
  for (int pass = 0; pass < 2; pass++) /* multi-byte characters first: they set the target */
    for (int32_t k = 0; k < v->n; k++) {
      const useq *q = &v->s[k];
      if ((q->len == 1) != (pass == 1)) continue;
      if (q->len == 1 && exc) { /* single bytes one by one: exceptions allowed */
        if (target < 0) return -1;
        for (int b = q->lo[0]; b <= q->hi[0]; b++) {
          int32_t to = gd_step(g, s, (uint8_t)b);
          if (to < 0) return -1;
          if (to != target) exc[b >> 6] |= 1ull << (b & 63);
        }
        continue;
      }
      int32_t st = s;
      for (int i = 0; i < q->len && st; i++) {
        int32_t to = gd_step(g, st, q->lo[i]);
        if (to < 0) return -1;
        int prev = g->cls[q->lo[i]];
        for (int b = q->lo[i] + 1; b <= q->hi[i]; b++)
          if (g->cls[b] != prev) {
            if (gd_step(g, st, (uint8_t)b) != to) return -1;
            prev = g->cls[b];
          }
        if (to && i + 1 < q->len && (g->flags[to] & (GS_CALLS | GS_EPSEND))) return -1;
        st = to;
      }
      if (target < 0) target = st;
      else if (target != st) return -1;
    }
  if (exc && __builtin_popcountll(exc[0]) + __builtin_popcountll(exc[1]) > 32) return -1;
  return target;
}

/* For W(s): a slice whose members s decides by their length alone, except those that
 * begin with a byte of exc (walked instead). On success *alive is the most characters a
 * member may have (INT32_MAX: any). */
static const gslice *slice_for(ml_matcher *m, int32_t s, int32_t *alive, uint64_t *exc) {
  ml_grammar *g = m->g;
  pthread_once(&slice_once, slice_init);
  if (!slice_seqs_ok) return NULL;
  for (int c = 0; c < N_SLICE_CLASSES; c++) {
    int32_t t = uniform_target(g, s, c, exc);
    if (t <= 0) continue;
    const gslice *sl = gv_slice(m->v, SLICE_RANGES[c], SLICE_NPAIRS[c]);
    if (!sl) return NULL;
    /* the chain s -> t -> ...: every state on it plain, until it dies or repeats. s itself
     * repeats only without exceptions: they were allowed for the first character alone
     * (a later '.' of "0.5e" must not follow s's other characters when '.' leaves s) */
    int exc_any = (exc[0] | exc[1] | exc[2] | exc[3]) != 0;
    int32_t L = 1, prev = s;
    for (;;) {
      if (g->flags[t] & (GS_CALLS | GS_EPSEND)) break; /* items would be needed: no slice */
      if (L >= sl->max_len || (t == prev && !(t == s && exc_any))) {
        *alive = INT32_MAX;
        return sl;
      }
      int32_t u = uniform_target(g, t, c, NULL);
      if (u < 0) break;
      if (u == 0) {
        *alive = L;
        return sl;
      }
      prev = t;
      t = u;
      L++;
    }
  }
  return NULL;
}

void gk_prebuild_slices(ml_gvocab *v) {
  for (int c = 0; c < 2; c++) /* the inside of JSON strings: every schema uses it */
    (void)gv_slice(v, SLICE_RANGES[c], SLICE_NPAIRS[c]);
}

static void or_slice(const gslice *sl, int32_t alive, uint64_t *bits, size_t n_words) {
  int32_t L = alive < GV_SLICE_LENS ? alive : GV_SLICE_LENS;
  const uint64_t *u = sl->upto[L];
  for (size_t i = 0; i < n_words; i++) bits[i] |= u[i];
  for (int32_t k = 0; k < sl->n_long && sl->long_len[k] <= alive; k++)
    bits[sl->long_id[k] >> 6] |= 1ull << (sl->long_id[k] & 63);
}

/* ---- W(s) ---- */

static int cmp_pair(const void *x, const void *y) {
  const int32_t *a = x, *b = y;
  if (a[0] != b[0]) return (a[0] > b[0]) - (a[0] < b[0]);
  return (a[1] > b[1]) - (a[1] < b[1]);
}

static gw *compute_w(ml_matcher *m, int32_t s, int nest) {
  ml_gvocab *v = m->v;
  uint64_t *bits = ml_calloc((v->n_words + 1) * sizeof *bits);
  ivec ex = {0};
  gwork w = {0};
  gw *res = calloc(1, sizeof *res);
  int32_t mark0 = m->ar.len;
  if (!bits || !res) goto oom;
  /* the root item itself: its calls and return at the root over the whole trie; its own
   * walk over a slice's rest when the slice's members are decided by their length */
  int32_t alive = 0;
  uint64_t exc[4];
  const gslice *sl = slice_for(m, s, &alive, exc);
  if (gwork_add(&w, 0, s, GN_BASE, 0) < 0 || at_node(m, &w, 0, 0, s, GN_BASE, &ex) < 0) goto fail;
  if (sl) {
    or_slice(sl, alive, bits, v->n_words);
    const gtrie *full = &v->trie, *rest = &sl->rest;
    int any_exc = (exc[0] | exc[1] | exc[2] | exc[3]) != 0;
    if (!any_exc) {
      if (subwalk(m, sl->id + 1, 0, s, GN_BASE, bits, &w, &ex) < 0) goto fail;
    } else {
      /* the rest, but the first bytes that go elsewhere ... */
      for (int32_t i = 1; i < rest->n; i += (int32_t)rest->sub[i]) {
        int b = rest->byte[i];
        if ((exc[b >> 6] >> (b & 63)) & 1) continue;
        if (subwalk_range(m, sl->id + 1, 0, s, GN_BASE, bits, &w, &ex, i, i + (int32_t)rest->sub[i]) < 0) goto fail;
      }
      /* ... whose subtrees of the whole trie are walked instead (their members included) */
      for (int32_t i = 1; i < full->n; i += (int32_t)full->sub[i]) {
        int b = full->byte[i];
        if (!((exc[b >> 6] >> (b & 63)) & 1)) continue;
        for (int32_t j = i; j < i + (int32_t)full->sub[i]; j++) bits[full->tok[j] >> 6] &= ~(1ull << (full->tok[j] & 63));
        if (subwalk_range(m, 0, 0, s, GN_BASE, bits, &w, &ex, i, i + (int32_t)full->sub[i]) < 0) goto fail;
      }
    }
  } else if (subwalk(m, 0, 0, s, GN_BASE, bits, &w, &ex) < 0) {
    goto fail;
  }
  if (run_items(m, &w, bits, &ex, nest, 1) < 0) goto fail;
  gm_release(m, mark0);
  add_dups(&v->trie, bits);
  bits[v->n_words] = 0;
  /* exits: each (node, trie) once */
  if (ex.n > 2) {
    qsort(ex.v, (size_t)ex.n / 2, 2 * sizeof *ex.v, cmp_pair);
    int32_t k = 0;
    for (int32_t i = 0; i < ex.n; i += 2)
      if (k == 0 || ex.v[k - 2] != ex.v[i] || ex.v[k - 1] != ex.v[i + 1]) ex.v[k] = ex.v[i], ex.v[k + 1] = ex.v[i + 1], k += 2;
    ex.n = k;
  }
  int64_t n = 0;
  for (size_t i = 0; i < v->n_words; i++) n += __builtin_popcountll(bits[i]);
  res->n_tok = (int32_t)n;
  if (n * 64 < v->n_vocab) { /* sparse: few tokens */
    res->list = malloc((size_t)n * sizeof *res->list + 1);
    if (!res->list) goto oom;
    int32_t k = 0;
    for (size_t i = 0; i < v->n_words; i++)
      for (uint64_t x = bits[i]; x; x &= x - 1) res->list[k++] = (int32_t)(i * 64 + (size_t)__builtin_ctzll(x));
    ml_free(bits);
    bits = NULL;
    res->bytes = (size_t)n * 4;
  } else {
    res->dense = bits;
    res->bytes = v->n_words * 8;
  }
  res->exits = ex.v;
  res->n_exit = ex.n / 2;
  res->bytes += (size_t)ex.n * 4 + sizeof *res;
  gwork_free(&w);
  return res;
oom:
  ml_seterr("out of memory (grammar masks)");
fail:
  gm_release(m, mark0);
  ml_free(bits);
  free(ex.v);
  gw_free(res);
  gwork_free(&w);
  return NULL;
}

/* W(s), cached. *owned is set when the result is not cached (the caller frees it). */
static const gw *get_w(ml_matcher *m, int32_t s, gw **owned, int nest) {
  gbind *b = m->bind;
  *owned = NULL;
  gw *w = __atomic_load_n(&b->w[s], __ATOMIC_ACQUIRE);
  if (w) return w;
  m->wstack[m->n_wstack++] = s;
  w = compute_w(m, s, nest);
  m->n_wstack--;
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

int gk_mask(ml_matcher *m, const gelem *cfg, int32_t n, uint64_t *bits) {
  memset(bits, 0, (m->v->n_words + 1) * sizeof *bits);
  gwork w = {0};
  int32_t mark0 = m->ar.len;
  int rc = 0;
  for (int32_t i = 0; i < n && rc == 0; i++) rc = gwork_add(&w, 0, cfg[i].s, cfg[i].p, 0);
  if (rc == 0) rc = run_items(m, &w, bits, NULL, 0, 0);
  gm_release(m, mark0);
  gwork_free(&w);
  if (rc < 0) return -1;
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

/* ---- the i8 view of a mask ---- */

/* 8 bits -> 8 bytes of 0/1 (little-endian), for the portable path */
#define SP1(b) ((uint64_t)((b) & 1) | (uint64_t)(((b) >> 1) & 1) << 8 | (uint64_t)(((b) >> 2) & 1) << 16 | \
                (uint64_t)(((b) >> 3) & 1) << 24 | (uint64_t)(((b) >> 4) & 1) << 32 | (uint64_t)(((b) >> 5) & 1) << 40 | \
                (uint64_t)(((b) >> 6) & 1) << 48 | (uint64_t)(((b) >> 7) & 1) << 56)
#define SP4(b) SP1(b), SP1((b) + 1), SP1((b) + 2), SP1((b) + 3)
#define SP16(b) SP4(b), SP4((b) + 4), SP4((b) + 8), SP4((b) + 12)
#define SP64(b) SP16(b), SP16((b) + 16), SP16((b) + 32), SP16((b) + 48)
static const uint64_t spread[256] = {SP64(0), SP64(64), SP64(128), SP64(192)};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f,avx512bw"))) static void to_i8_avx512(const uint64_t *bits, int8_t *out, int64_t n) {
  const __m512i one = _mm512_set1_epi8(1);
  int64_t w = 0;
  for (; (w + 1) * 64 <= n; w++) _mm512_storeu_si512((void *)(out + w * 64), _mm512_maskz_mov_epi8(bits[w], one));
  for (int64_t i = w * 64; i < n; i++) out[i] = (int8_t)((bits[i >> 6] >> (i & 63)) & 1);
}
#endif

void ml_mask_to_i8(const uint64_t *bits, int8_t *out, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (ml_level_active() >= ML_LEVEL_AVX512) { /* the kernel level (MOONLM_ISA) decides */
    to_i8_avx512(bits, out, n);
    return;
  }
#endif
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = spread[(bits[i >> 6] >> (i & 63)) & 0xFF];
    memcpy(out + i, &x, 8);
  }
  for (; i < n; i++) out[i] = (int8_t)((bits[i >> 6] >> (i & 63)) & 1);
}
