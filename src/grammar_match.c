/* grammar_match.c: matchers. A configuration is a set of stacks of machine states; the
 * top of each stack is a gelem (state, parent node) and the frames below are nodes of a
 * hash-consed arena (equal stacks are equal node ids, so configurations compare and
 * deduplicate by value). A step by one byte moves each top through its DFA, entering
 * callees (call edges) and returning to callers (accepting states) as needed; left
 * recursion is refused at compile time, so these epsilon moves always end.
 *
 * The history keeps every configuration since the start (for rollback) and the arena
 * length at that point: the arena only grows while accepting and shrinks back (LIFO) on
 * rollback or when a step is refused, so a matcher's memory follows its sequence.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"

/* ---- scratch buffers ---- */

int gbuf_reserve(gbuf *b, int32_t n) {
  if (n <= b->cap) return 0;
  int32_t nc = b->cap ? b->cap : 64;
  while (nc < n) {
    if (nc > INT32_MAX / 2) return ml_seterr("grammar configuration too large"), -1;
    nc *= 2;
  }
  gelem *p = realloc(b->e, (size_t)nc * sizeof *p);
  if (!p) return ml_seterr("out of memory (matcher)"), -1;
  b->e = p;
  b->cap = nc;
  return 0;
}

static int gbuf_push(gbuf *b, gelem e) {
  if (b->n == b->cap && gbuf_reserve(b, b->n + 1) < 0) return -1;
  b->e[b->n++] = e;
  return 0;
}

/* ---- the arena ---- */

#define GM_MAX_NODES (1 << 26)

static uint32_t node_hash(int32_t state, int32_t parent) {
  uint64_t x = (uint64_t)(uint32_t)state * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)parent * 0xC2B2AE3D27D4EB4Full;
  return (uint32_t)(x >> 32);
}

static int arena_rehash(garena *a, int32_t nb) {
  int32_t *b = malloc((size_t)nb * sizeof *b);
  if (!b) return ml_seterr("out of memory (matcher)"), -1;
  for (int32_t i = 0; i < nb; i++) b[i] = -1;
  for (int32_t i = 2; i < a->len; i++) { /* in creation order: chains stay newest first */
    uint32_t h = node_hash(a->n[i].state, a->n[i].parent) & (uint32_t)(nb - 1);
    a->n[i].next = b[h];
    b[h] = i;
  }
  free(a->bucket);
  a->bucket = b;
  a->nbucket = nb;
  return 0;
}

int32_t gm_node(ml_matcher *m, int32_t state, int32_t parent) {
  garena *a = &m->ar;
  uint32_t h = node_hash(state, parent) & (uint32_t)(a->nbucket - 1);
  for (int32_t i = a->bucket[h]; i >= 0; i = a->n[i].next)
    if (a->n[i].state == state && a->n[i].parent == parent) return i;
  if (a->len >= GM_MAX_NODES) return ml_seterr("grammar stack space exhausted (%d frames)", GM_MAX_NODES), -1;
  if (a->len == a->cap) {
    int32_t nc = a->cap * 2;
    gnode *p = realloc(a->n, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (matcher)"), -1;
    a->n = p;
    a->cap = nc;
  }
  int32_t i = a->len++;
  a->n[i].state = state;
  a->n[i].parent = parent;
  a->n[i].next = a->bucket[h];
  a->bucket[h] = i;
  if (a->len > 2 * a->nbucket && arena_rehash(a, a->nbucket * 2) < 0) {
    a->len--; /* undo: the node is at its bucket's head */
    a->bucket[h] = a->n[i].next;
    return -1;
  }
  return i;
}

void gm_release(ml_matcher *m, int32_t len) {
  garena *a = &m->ar;
  while (a->len > len) {
    int32_t i = --a->len;
    uint32_t h = node_hash(a->n[i].state, a->n[i].parent) & (uint32_t)(a->nbucket - 1);
    a->bucket[h] = a->n[i].next; /* newest first: i is the head */
  }
}

/* ---- stepping ---- */

int gm_can_pop_to(const ml_matcher *m, gelem e, int32_t to) {
  const ml_grammar *g = m->g;
  int32_t s = e.s, p = e.p;
  for (;;) {
    if (!(g->flags[s] & GS_EPSEND)) return 0;
    if (p == to) return 1;
    if (p == GN_NIL || p == GN_BASE) return 0;
    s = m->ar.n[p].state;
    p = m->ar.n[p].parent;
  }
}

/* ---- element sets ---- */

static uint32_t elem_hash(gelem e) { return node_hash(e.s, e.p); }

static void gset_clear(gset *t) {
  t->n = 0;
  if (++t->cur == 0) { /* generations wrapped: forget them all */
    if (t->cap) memset(t->gen, 0, (size_t)t->cap * sizeof *t->gen);
    t->cur = 1;
  }
}

static void gset_free(gset *t) {
  free(t->key);
  free(t->gen);
}

static int gset_insert(gset *t, gelem e) { /* 1: added, 0: present; room is assured */
  uint32_t mask = (uint32_t)t->cap - 1;
  for (uint32_t h = elem_hash(e) & mask;; h = (h + 1) & mask) {
    if (t->gen[h] != t->cur) {
      t->gen[h] = t->cur;
      t->key[h] = e;
      t->n++;
      return 1;
    }
    if (t->key[h].s == e.s && t->key[h].p == e.p) return 0;
  }
}

/* Add e: 1 when it was not there, 0 when it was, -1 out of memory. Kept at most half full. */
static int gset_add(gset *t, gelem e) {
  if (2 * (t->n + 1) > t->cap) {
    gset old = *t;
    int32_t nc = t->cap ? t->cap * 2 : 256;
    gelem *k = malloc((size_t)nc * sizeof *k);
    uint32_t *g = calloc((size_t)nc, sizeof *g);
    if (!k || !g) {
      free(k);
      free(g);
      return ml_seterr("out of memory (matcher)"), -1;
    }
    *t = (gset){k, g, 1, 0, nc};
    for (int32_t i = 0; i < old.cap; i++)
      if (old.gen[i] == old.cur) gset_insert(t, old.key[i]);
    gset_free(&old);
  }
  return gset_insert(t, e);
}

/* add e to out unless this step already added it (the configurations of a very ambiguous
 * grammar hold up to GM_MAX_CFG stacks: a scan for each would be quadratic) */
static int out_add(ml_matcher *m, gbuf *out, gelem e) {
  int r = gset_add(&m->out, e);
  return r <= 0 ? r : gbuf_push(out, e);
}

#define GM_MAX_CFG 65536

int gm_step(ml_matcher *m, const gelem *in, int32_t n, uint8_t b, int32_t base, gbuf *out) {
  ml_grammar *g = m->g;
  int32_t out0 = out->n;
  gbuf *work = &m->work;
  gset *seen = &m->seen;
  gset_clear(&m->out);
  for (int32_t k = 0; k < n; k++) {
    gelem e0 = in[k];
    int fl = g->flags[e0.s];
    /* the common case: a plain DFA state */
    if (!(fl & GS_CALLS) && (!(fl & GS_ACCEPT) || e0.p == base || e0.p == GN_NIL || e0.p == GN_BASE)) {
      int32_t t = gd_step(g, e0.s, b);
      if (t < 0 || (t && out_add(m, out, (gelem){t, e0.p}) < 0)) return -1;
      continue;
    }
    work->n = 0;
    gset_clear(seen);
    if (gbuf_push(work, e0) < 0) return -1;
    while (work->n) {
      gelem e = work->e[--work->n];
      int fresh = gset_add(seen, e);
      if (fresh < 0) return -1;
      if (!fresh) continue;
      int f = g->flags[e.s];
      int32_t t = gd_step(g, e.s, b);
      if (t < 0 || (t && out_add(m, out, (gelem){t, e.p}) < 0)) return -1;
      if (f & GS_CALLS)
        for (int32_t c = g->call_off[e.s]; c < g->call_off[e.s] + g->call_n[e.s]; c++) {
          const gcall *gc = &g->calls[c];
          int32_t st = g->mstart[gc->machine];
          if (!gr_first_has(g, st, b) && !(g->flags[st] & GS_EPSEND)) continue;
          int32_t node = gm_node(m, gc->ret, e.p);
          if (node < 0) return -1;
          if (gbuf_push(work, (gelem){st, node}) < 0) return -1;
        }
      if ((f & GS_ACCEPT) && e.p != base && e.p != GN_NIL && e.p != GN_BASE) {
        const gnode *pn = &m->ar.n[e.p];
        if (gbuf_push(work, (gelem){pn->state, pn->parent}) < 0) return -1;
      }
      if (seen->n > GM_MAX_CFG) return ml_seterr("grammar too ambiguous (more than %d stacks)", GM_MAX_CFG), -1;
    }
    if (out->n - out0 > GM_MAX_CFG) return ml_seterr("grammar too ambiguous (more than %d stacks)", GM_MAX_CFG), -1;
  }
  return 0;
}

/* ---- the matcher ---- */

static int hist_push(ml_matcher *m, ghist h) {
  if (m->n_hist == m->cap_hist) {
    int32_t nc = m->cap_hist ? m->cap_hist * 2 : 64;
    ghist *p = realloc(m->hist, (size_t)nc * sizeof *p);
    if (!p) return ml_seterr("out of memory (matcher)"), -1;
    m->hist = p;
    m->cap_hist = nc;
  }
  m->hist[m->n_hist++] = h;
  return 0;
}

static int lbuf_add(ml_matcher *m, const char *s, size_t n) {
  if (n == 0) return 0;
  if (m->lbuf_n + n > m->lbuf_cap) {
    size_t nc = m->lbuf_cap ? m->lbuf_cap * 2 : 256;
    while (nc < m->lbuf_n + n) nc *= 2;
    char *p = realloc(m->lbuf, nc);
    if (!p) return ml_seterr("out of memory (matcher)"), -1;
    m->lbuf = p;
    m->lbuf_cap = nc;
  }
  memcpy(m->lbuf + m->lbuf_n, s, n);
  m->lbuf_n += n;
  return 0;
}

static int start_state(ml_matcher *m) {
  m->pool.n = 0;
  m->n_hist = 0;
  m->lbuf_n = 0;
  gm_release(m, 2);
  if (gbuf_push(&m->pool, (gelem){m->g->mstart[m->g->root], GN_NIL}) < 0) return -1;
  ghist h = {0, 1, m->ar.len, 0, 0, (uint8_t)(m->lazy != 0), 0};
  m->mask_valid = 0;
  return hist_push(m, h);
}

ml_matcher *ml_matcher_new(ml_grammar *g, ml_gvocab *v, const ml_matcher_opts *o) {
  ml_matcher *m = calloc(1, sizeof *m);
  if (!m) return ml_seterr("out of memory (matcher)"), NULL;
  ml_grammar_retain(g);
  ml_gvocab_retain(v);
  m->g = g;
  m->v = v;
  m->ar.cap = 1024;
  m->ar.n = malloc((size_t)m->ar.cap * sizeof *m->ar.n);
  m->ar.nbucket = 512;
  m->ar.bucket = malloc((size_t)m->ar.nbucket * sizeof *m->ar.bucket);
  m->mask = ml_alloc((v->n_words + 1) * sizeof *m->mask);
  if (!m->ar.n || !m->ar.bucket || !m->mask) goto oom;
  for (int32_t i = 0; i < m->ar.nbucket; i++) m->ar.bucket[i] = -1;
  m->ar.n[GN_NIL] = (gnode){-1, -1, -1};
  m->ar.n[GN_BASE] = (gnode){-2, -1, -1};
  m->ar.len = 2;
  m->bind = gk_bind(g, v);
  if (!m->bind) goto fail;
  if (o && o->lazy) {
    m->lazy = 1;
    if (o->n_trigger_words < 0 || o->n_trigger_tokens < 0) {
      ml_seterr("bad trigger count");
      goto fail;
    }
    m->n_trig = o->n_trigger_words;
    m->trig = calloc((size_t)m->n_trig + 1, sizeof *m->trig);
    m->trig_len = calloc((size_t)m->n_trig + 1, sizeof *m->trig_len);
    m->trig_tok = malloc(((size_t)o->n_trigger_tokens + 1) * sizeof *m->trig_tok);
    if (!m->trig || !m->trig_len || !m->trig_tok) goto oom;
    for (int32_t i = 0; i < m->n_trig; i++) {
      if (o->trigger_lens[i] == 0) {
        ml_seterr("empty trigger word");
        goto fail;
      }
      m->trig[i] = malloc(o->trigger_lens[i]);
      if (!m->trig[i]) goto oom;
      memcpy(m->trig[i], o->trigger_words[i], o->trigger_lens[i]);
      m->trig_len[i] = o->trigger_lens[i];
      if (m->trig_len[i] > m->trig_max) m->trig_max = m->trig_len[i];
    }
    for (int32_t i = 0; i < o->n_trigger_tokens; i++) {
      if (o->trigger_tokens[i] < 0 || o->trigger_tokens[i] >= v->n_vocab) {
        ml_seterr("trigger token %d out of range", (int)o->trigger_tokens[i]);
        goto fail;
      }
      m->trig_tok[m->n_trig_tok++] = o->trigger_tokens[i];
    }
    if (m->n_trig == 0 && m->n_trig_tok == 0) {
      ml_seterr("a lazy matcher needs trigger words or trigger tokens");
      goto fail;
    }
  }
  if (start_state(m) < 0) goto fail;
  return m;
oom:
  ml_seterr("out of memory (matcher)");
fail:
  ml_matcher_free(m);
  return NULL;
}

void ml_matcher_free(ml_matcher *m) {
  if (!m) return;
  ml_grammar_release(m->g);
  ml_gvocab_release(m->v);
  free(m->ar.n);
  free(m->ar.bucket);
  free(m->pool.e);
  free(m->hist);
  for (int i = 0; i < 2; i++) free(m->tmp[i].e);
  free(m->lvl_st);
  free(m->work.e);
  gset_free(&m->seen);
  gset_free(&m->out);
  ml_free(m->mask);
  for (int32_t i = 0; i < m->n_trig; i++) free(m->trig[i]);
  free(m->trig);
  free(m->trig_len);
  free(m->trig_tok);
  free(m->lbuf);
  free(m->piece);
  free(m);
}

int32_t ml_matcher_n_vocab(const ml_matcher *m) { return m->v->n_vocab; }
size_t ml_matcher_mask_words(const ml_matcher *m) { return m->v->n_words; }

static const ghist *cur(const ml_matcher *m) { return &m->hist[m->n_hist - 1]; }

int ml_matcher_can_end(const ml_matcher *m) {
  const ghist *h = cur(m);
  if (h->stopped || h->awaiting) return 1;
  int32_t n;
  const gelem *c = gm_cfg(m, &n);
  for (int32_t i = 0; i < n; i++)
    if (gm_can_pop_to(m, c[i], GN_NIL)) return 1;
  return 0;
}

/* bytes that may come next (256 bits) */
static void next_bytes(const ml_matcher *m, const gelem *c, int32_t n, uint64_t out[4]) {
  const ml_grammar *g = m->g;
  out[0] = out[1] = out[2] = out[3] = 0;
  for (int32_t i = 0; i < n; i++) {
    int32_t s = c[i].s, p = c[i].p;
    for (;;) {
      for (int w = 0; w < 4; w++) out[w] |= g->first[(size_t)s * 4 + w];
      if (!(g->flags[s] & GS_EPSEND) || p == GN_NIL || p == GN_BASE) break;
      s = m->ar.n[p].state;
      p = m->ar.n[p].parent;
    }
  }
}

int ml_matcher_is_done(const ml_matcher *m) {
  const ghist *h = cur(m);
  if (h->stopped) return 1;
  if (h->awaiting || !ml_matcher_can_end(m)) return 0;
  int32_t n;
  const gelem *c = gm_cfg(m, &n);
  uint64_t nb[4];
  next_bytes(m, c, n, nb);
  return !(nb[0] | nb[1] | nb[2] | nb[3]);
}

int ml_matcher_is_active(const ml_matcher *m) { return !cur(m)->awaiting; }

/* Step the current configuration by bytes into a new history entry (not pushed when
 * refused). 1 / 0 / -1. */
static int advance(ml_matcher *m, const uint8_t *s, size_t len, ghist *nh) {
  int32_t n;
  const gelem *c0 = gm_cfg(m, &n);
  gbuf *a = &m->tmp[0], *b = &m->tmp[1];
  a->n = 0;
  if (gbuf_reserve(a, n) < 0) return -1;
  memcpy(a->e, c0, (size_t)n * sizeof *a->e);
  a->n = n;
  for (size_t i = 0; i < len; i++) {
    b->n = 0;
    if (gm_step(m, a->e, a->n, s[i], GN_NIL, b) < 0) return -1;
    if (b->n == 0) return 0;
    gbuf *t = a;
    a = b;
    b = t;
  }
  nh->cfg_off = m->pool.n;
  nh->cfg_n = a->n;
  if (gbuf_reserve(&m->pool, m->pool.n + a->n) < 0) return -1;
  memcpy(m->pool.e + m->pool.n, a->e, (size_t)a->n * sizeof *a->e);
  m->pool.n += a->n;
  return 1;
}

static int accept_bytes(ml_matcher *m, const uint8_t *s, size_t len, ghist *nh) {
  int32_t mark = m->ar.len;
  int32_t pool_n = m->pool.n;
  int r = advance(m, s, len, nh);
  if (r <= 0) {
    gm_release(m, mark);
    m->pool.n = pool_n;
    return r;
  }
  nh->arena_len = m->ar.len;
  if (hist_push(m, *nh) < 0) {
    gm_release(m, mark);
    m->pool.n = pool_n;
    return -1;
  }
  m->mask_valid = 0;
  return 1;
}

static ghist same_as_cur(const ml_matcher *m) {
  ghist h = *cur(m);
  return h;
}

/* Lazy matchers: look for a trigger in the trigger buffer plus the new text. */
static int lazy_accept(ml_matcher *m, int32_t id, const uint8_t *piece, size_t len) {
  const ghist *h = cur(m);
  for (int32_t i = 0; i < m->n_trig_tok; i++)
    if (id >= 0 && m->trig_tok[i] == id) {
      ghist nh = same_as_cur(m);
      nh.awaiting = 0;
      nh.lazy_off = (int32_t)m->lbuf_n;
      nh.lazy_n = 0;
      return accept_bytes(m, piece, len, &nh);
    }
  /* the buffer: what the last entry kept, then this text */
  size_t keep = h->lazy_n, total = keep + len;
  char *buf = malloc(total + 1);
  if (!buf) return ml_seterr("out of memory (matcher)"), -1;
  if (keep) memcpy(buf, m->lbuf + h->lazy_off, keep);
  if (len) memcpy(buf + keep, piece, len);
  size_t best = total;
  for (int32_t i = 0; i < m->n_trig; i++) {
    if (m->trig_len[i] > total) continue;
    for (size_t at = 0; at + m->trig_len[i] <= total && at < best; at++)
      if (memcmp(buf + at, m->trig[i], m->trig_len[i]) == 0) {
        best = at;
        break;
      }
  }
  int rc;
  if (best < total) {
    ghist nh = same_as_cur(m);
    nh.awaiting = 0;
    nh.lazy_off = (int32_t)m->lbuf_n;
    nh.lazy_n = 0;
    rc = accept_bytes(m, (const uint8_t *)buf + best, total - best, &nh);
  } else {
    /* still waiting: keep the last trig_max - 1 bytes */
    size_t k = m->trig_max > 0 ? m->trig_max - 1 : 0;
    if (k > total) k = total;
    ghist nh = same_as_cur(m);
    nh.lazy_off = (int32_t)m->lbuf_n;
    nh.lazy_n = (int32_t)k;
    rc = lbuf_add(m, buf + total - k, k);
    if (rc == 0) rc = hist_push(m, nh) < 0 ? -1 : 1;
    m->mask_valid = 0;
  }
  free(buf);
  return rc;
}

int ml_matcher_accept_bytes(ml_matcher *m, const char *s, size_t len) {
  const ghist *h = cur(m);
  if (h->stopped) return 0;
  if (h->awaiting) return lazy_accept(m, -1, (const uint8_t *)s, len);
  ghist nh = same_as_cur(m);
  return accept_bytes(m, (const uint8_t *)s, len, &nh);
}

int ml_matcher_accept(ml_matcher *m, int32_t id) {
  const ghist *h = cur(m);
  if (id < 0 || id >= m->v->n_vocab) return ml_seterr("token id %d out of range", (int)id), -1;
  if (h->stopped) return 0;
  const uint8_t *piece = m->v->bytes + m->v->off[id];
  size_t len = (size_t)(m->v->off[id + 1] - m->v->off[id]);
  if (h->awaiting) {
    if (m->v->kind[id] == 1) { /* generation ends before the grammar started */
      ghist nh = same_as_cur(m);
      nh.stopped = 1;
      if (hist_push(m, nh) < 0) return -1;
      m->mask_valid = 0;
      return 1;
    }
    return lazy_accept(m, id, piece, len);
  }
  if (m->v->kind[id] == 1) {
    if (!ml_matcher_can_end(m)) return 0;
    ghist nh = same_as_cur(m);
    nh.stopped = 1;
    if (hist_push(m, nh) < 0) return -1;
    m->mask_valid = 0;
    return 1;
  }
  if (m->v->kind[id] != 0) return 0;
  ghist nh = same_as_cur(m);
  return accept_bytes(m, piece, len, &nh);
}

int ml_matcher_allows(ml_matcher *m, int32_t id) {
  if (id < 0 || id >= m->v->n_vocab) return ml_seterr("token id %d out of range", (int)id), -1;
  const ghist *h = cur(m);
  if (h->stopped) return m->v->kind[id] == 1;
  if (h->awaiting) return 1;
  if (m->v->kind[id] == 1) return ml_matcher_can_end(m);
  if (m->v->kind[id] != 0) return 0;
  int32_t mark = m->ar.len, pool_n = m->pool.n;
  ghist nh;
  int r = advance(m, m->v->bytes + m->v->off[id], (size_t)(m->v->off[id + 1] - m->v->off[id]), &nh);
  gm_release(m, mark);
  m->pool.n = pool_n;
  return r;
}

void ml_matcher_reset(ml_matcher *m) {
  start_state(m); /* cannot fail: the buffers exist */
}

int ml_matcher_rollback(ml_matcher *m, int32_t n) {
  if (n < 0 || n > m->n_hist - 1) return ml_seterr("cannot roll back %d tokens (%d accepted)", (int)n, (int)(m->n_hist - 1)), -1;
  if (n == 0) return 0;
  m->n_hist -= n;
  const ghist *h = cur(m);
  m->pool.n = h->cfg_off + h->cfg_n;
  m->lbuf_n = (size_t)h->lazy_off + (size_t)h->lazy_n;
  gm_release(m, h->arena_len);
  m->mask_valid = 0;
  return 0;
}

int32_t ml_matcher_n_accepted(const ml_matcher *m) { return m->n_hist - 1; }

size_t ml_matcher_forced(ml_matcher *m, char *buf, size_t cap) {
  const ghist *h = cur(m);
  if (h->stopped || h->awaiting) return 0;
  int32_t mark = m->ar.len;
  int32_t n;
  const gelem *c0 = gm_cfg(m, &n);
  gbuf *a = &m->tmp[0], *b = &m->tmp[1];
  if (gbuf_reserve(a, n) < 0) return 0;
  memcpy(a->e, c0, (size_t)n * sizeof *a->e);
  a->n = n;
  size_t k = 0;
  while (k < cap) {
    int can_end = 0;
    for (int32_t i = 0; i < a->n && !can_end; i++) can_end = gm_can_pop_to(m, a->e[i], GN_NIL);
    if (can_end) break;
    uint64_t nb[4];
    next_bytes(m, a->e, a->n, nb);
    int cnt = __builtin_popcountll(nb[0]) + __builtin_popcountll(nb[1]) + __builtin_popcountll(nb[2]) + __builtin_popcountll(nb[3]);
    if (cnt != 1) break;
    int byte = 0;
    for (int w = 0; w < 4; w++)
      if (nb[w]) byte = w * 64 + __builtin_ctzll(nb[w]);
    b->n = 0;
    if (gm_step(m, a->e, a->n, (uint8_t)byte, GN_NIL, b) < 0 || b->n == 0) break;
    buf[k++] = (char)byte;
    gbuf *t = a;
    a = b;
    b = t;
  }
  gm_release(m, mark);
  return k;
}

void ml_mask_apply(const uint64_t *bits, float *logits, int64_t n) {
  const float ninf = -__builtin_inff();
  for (int64_t w = 0; w * 64 < n; w++) {
    uint64_t x = bits[w];
    if (x == ~0ull && (w + 1) * 64 <= n) continue;
    int64_t end = (w + 1) * 64 < n ? (w + 1) * 64 : n;
    for (int64_t i = w * 64; i < end; i++)
      if (!((x >> (i & 63)) & 1)) logits[i] = ninf;
  }
}
