/* grammar_vocab.c: what grammars need from a vocabulary, built once and shared: each
 * token's bytes, which tokens end generation and which are never text, and the token
 * trie in depth-first order (node i's subtree is the range [i, i + sub[i]), so a walk
 * skips a refused subtree with one addition). Slices (grammar_mask.c uses them for
 * nearly unconstrained states such as the inside of a JSON string): the tokens made only
 * of whole characters of one class, grouped by length, with the rest of the vocabulary
 * in a trie of its own.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar_int.h"
#include "model.h"

#define GV_MAX_TOKEN_BYTES 65535

static void trie_free(gtrie *t) {
  free(t->sub);
  free(t->tok);
  free(t->depth);
  free(t->byte);
  free(t->dup);
  memset(t, 0, sizeof *t);
}

static int cmp_tok(const void *x, const void *y, void *ctx) {
  const ml_gvocab *v = ctx;
  int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
  size_t la = (size_t)(v->off[a + 1] - v->off[a]), lb = (size_t)(v->off[b + 1] - v->off[b]);
  int c = memcmp(v->bytes + v->off[a], v->bytes + v->off[b], la < lb ? la : lb);
  if (c) return c;
  if (la != lb) return la < lb ? -1 : 1;
  return (a > b) - (a < b);
}

/* The trie of the tokens ids[0..n) (text tokens, in the order cmp_tok sorts them). 0 or -1. */
static int trie_build(const ml_gvocab *v, const int32_t *ids, int32_t n, gtrie *t) {
  size_t cap_nodes = 1;
  for (int32_t i = 0; i < n; i++) cap_nodes += (size_t)(v->off[ids[i] + 1] - v->off[ids[i]]);
  if (cap_nodes > INT32_MAX) return ml_seterr("vocabulary too large"), -1;
  memset(t, 0, sizeof *t);
  t->sub = malloc(cap_nodes * sizeof *t->sub);
  t->tok = malloc(cap_nodes * sizeof *t->tok);
  t->depth = malloc(cap_nodes * sizeof *t->depth);
  t->byte = malloc(cap_nodes);
  int32_t *path = malloc((GV_MAX_TOKEN_BYTES + 1) * sizeof *path);
  int32_t *dnode = NULL, *dtok = NULL, ndup = 0, cap_dup = 0;
  if (!t->sub || !t->tok || !t->depth || !t->byte || !path) goto oom;
  int32_t nn = 1, plen = 0; /* path[k]: node at depth k + 1 */
  int32_t none = (int32_t)((v->n_words) * 64);
  t->none = none;
  t->sub[0] = 0;
  t->tok[0] = none;
  t->depth[0] = 0;
  t->byte[0] = 0;
  const uint8_t *prev = NULL;
  size_t prev_len = 0;
  for (int32_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    const uint8_t *s = v->bytes + v->off[id];
    size_t len = (size_t)(v->off[id + 1] - v->off[id]);
    size_t lcp = 0, lim = len < prev_len ? len : prev_len;
    if (prev)
      while (lcp < lim && s[lcp] == prev[lcp]) lcp++;
    if (lcp > (size_t)plen) lcp = (size_t)plen;
    while ((size_t)plen > lcp) {
      int32_t node = path[--plen];
      t->sub[node] = (uint32_t)(nn - node);
    }
    if (len == lcp) { /* same bytes as the previous token: a duplicate */
      int32_t node = path[len - 1];
      if (ndup == cap_dup) {
        cap_dup = cap_dup ? cap_dup * 2 : 64;
        int32_t *a = realloc(dnode, (size_t)cap_dup * sizeof *a), *b = a ? realloc(dtok, (size_t)cap_dup * sizeof *b) : NULL;
        if (a) dnode = a;
        if (b) dtok = b;
        if (!a || !b) goto oom;
      }
      dnode[ndup] = t->tok[node];
      dtok[ndup++] = id;
    } else {
      for (size_t k = lcp; k < len; k++) {
        t->byte[nn] = s[k];
        t->depth[nn] = (uint16_t)(k + 1);
        if ((int32_t)k + 1 > t->max_depth) t->max_depth = (int32_t)k + 1;
        t->tok[nn] = none;
        t->sub[nn] = 1;
        path[plen++] = nn++;
      }
      t->tok[nn - 1] = id;
    }
    prev = s;
    prev_len = len;
  }
  while (plen > 0) {
    int32_t node = path[--plen];
    t->sub[node] = (uint32_t)(nn - node);
  }
  t->sub[0] = (uint32_t)nn;
  t->n = nn;
  if (ndup) {
    t->dup = malloc((size_t)ndup * 2 * sizeof *t->dup);
    if (!t->dup) goto oom;
    for (int32_t i = 0; i < ndup; i++) t->dup[2 * i] = dnode[i], t->dup[2 * i + 1] = dtok[i];
    t->n_dup = ndup;
  }
  free(path);
  free(dnode);
  free(dtok);
  return 0;
oom:
  free(path);
  free(dnode);
  free(dtok);
  trie_free(t);
  ml_seterr("out of memory (token trie)");
  return -1;
}

static ml_gvocab *gv_new(int32_t n_vocab, size_t total_bytes) {
  ml_gvocab *v = calloc(1, sizeof *v);
  if (!v) return ml_seterr("out of memory (vocabulary)"), NULL;
  v->refcount = 1;
  v->n_vocab = n_vocab;
  v->n_words = ((size_t)n_vocab + 63) / 64;
  v->bytes = malloc(total_bytes + 1);
  v->off = calloc((size_t)n_vocab + 1, sizeof *v->off);
  v->kind = calloc((size_t)n_vocab + 1, 1);
  pthread_mutex_init(&v->mu, NULL);
  if (!v->bytes || !v->off || !v->kind) {
    ml_gvocab_release(v);
    ml_seterr("out of memory (vocabulary)");
    return NULL;
  }
  return v;
}

/* eog list and trie once bytes/off/kind are filled */
static int gv_finish(ml_gvocab *v) {
  int32_t n_text = 0, n_eog = 0;
  for (int32_t i = 0; i < v->n_vocab; i++) {
    if (v->kind[i] == 0) n_text++;
    else if (v->kind[i] == 1) n_eog++;
  }
  v->eog = malloc((size_t)n_eog * sizeof *v->eog + 1);
  int32_t *ids = malloc((size_t)n_text * sizeof *ids + 1);
  if (!v->eog || !ids) return free(ids), ml_seterr("out of memory (vocabulary)"), -1;
  n_text = 0;
  for (int32_t i = 0; i < v->n_vocab; i++) {
    if (v->kind[i] == 0) ids[n_text++] = i;
    else if (v->kind[i] == 1) v->eog[v->n_eog++] = i;
  }
  qsort_r(ids, (size_t)n_text, sizeof *ids, cmp_tok, (void *)v);
  int rc = trie_build(v, ids, n_text, &v->trie);
  v->sorted = ids; /* kept: the rest of a slice is a trie of a subsequence */
  v->n_sorted = n_text;
  v->bytes_used = (size_t)v->off[v->n_vocab] + (size_t)v->n_vocab * 9 + (size_t)v->trie.n * 11;
  return rc;
}

ml_gvocab *ml_gvocab_from_vocab(const ml_vocab *voc, int64_t n_vocab) {
  const ml_vocab_info *info = ml_vocab_get_info(voc);
  if (n_vocab < info->n_tokens) n_vocab = info->n_tokens;
  if (n_vocab > INT32_MAX - 1) return ml_seterr("vocabulary too large"), NULL;
  size_t total = 0;
  char buf[1024];
  for (int32_t id = 0; id < info->n_tokens; id++) {
    int64_t k = ml_vocab_piece(voc, id, 0, buf, sizeof buf);
    total += (size_t)(k < 0 ? -k : k);
  }
  ml_gvocab *v = gv_new((int32_t)n_vocab, total);
  if (!v) return NULL;
  size_t at = 0;
  for (int32_t id = 0; id < (int32_t)n_vocab; id++) {
    v->off[id] = (int64_t)at;
    if (id >= info->n_tokens) {
      v->kind[id] = 2;
      continue;
    }
    int64_t k = ml_vocab_piece(voc, id, 0, (char *)v->bytes + at, total - at);
    if (k < 0) k = 0; /* cannot happen: sized above */
    if (ml_vocab_is_eog(voc, id)) v->kind[id] = 1, k = 0;
    else if (k == 0 || k > GV_MAX_TOKEN_BYTES) v->kind[id] = 2, k = 0;
    at += (size_t)k;
  }
  v->off[n_vocab] = (int64_t)at;
  if (gv_finish(v) < 0) {
    ml_gvocab_release(v);
    return NULL;
  }
  return v;
}

ml_gvocab *ml_gvocab_from_tokens(const char *const *toks, const size_t *lens, int32_t n, const int32_t *eog,
                                 int32_t n_eog) {
  if (n < 0 || n > INT32_MAX - 1) return ml_seterr("bad vocabulary size"), NULL;
  size_t total = 0;
  for (int32_t i = 0; i < n; i++)
    if (toks[i] && lens[i] <= GV_MAX_TOKEN_BYTES) total += lens[i];
  ml_gvocab *v = gv_new(n, total);
  if (!v) return NULL;
  size_t at = 0;
  for (int32_t i = 0; i < n; i++) {
    v->off[i] = (int64_t)at;
    if (!toks[i] || lens[i] == 0 || lens[i] > GV_MAX_TOKEN_BYTES) {
      v->kind[i] = 2;
      continue;
    }
    memcpy(v->bytes + at, toks[i], lens[i]);
    at += lens[i];
  }
  v->off[n] = (int64_t)at;
  for (int32_t k = 0; k < n_eog; k++) {
    if (eog[k] < 0 || eog[k] >= n) {
      ml_seterr("end-of-generation token %d out of range", (int)eog[k]);
      ml_gvocab_release(v);
      return NULL;
    }
    v->kind[eog[k]] = 1;
  }
  /* an eog token contributes no bytes */
  if (gv_finish(v) < 0) {
    ml_gvocab_release(v);
    return NULL;
  }
  return v;
}

void ml_gvocab_retain(ml_gvocab *v) { __atomic_add_fetch(&v->refcount, 1, __ATOMIC_RELAXED); }

void ml_gvocab_release(ml_gvocab *v) {
  if (!v || __atomic_sub_fetch(&v->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  trie_free(&v->trie);
  for (int i = 0; i < v->n_slices; i++) {
    gslice *s = v->slices[i];
    free(s->ranges);
    for (int k = 0; k <= GV_SLICE_LENS; k++) ml_free(s->upto[k]);
    free(s->long_id);
    free(s->long_len);
    trie_free(&s->rest);
    free(s);
  }
  pthread_mutex_destroy(&v->mu);
  free(v->bytes);
  free(v->off);
  free(v->kind);
  free(v->eog);
  free(v->sorted);
  free(v);
}

int32_t ml_gvocab_n_vocab(const ml_gvocab *v) { return v->n_vocab; }

const char *ml_gvocab_token(const ml_gvocab *v, int32_t id, size_t *len) {
  if (id < 0 || id >= v->n_vocab || v->kind[id] != 0) {
    *len = 0;
    return NULL;
  }
  *len = (size_t)(v->off[id + 1] - v->off[id]);
  return (const char *)v->bytes + v->off[id];
}

int ml_gvocab_is_eog(const ml_gvocab *v, int32_t id) { return id >= 0 && id < v->n_vocab && v->kind[id] == 1; }

static int in_class(const uint32_t *r, int32_t n, uint32_t c) {
  int32_t lo = 0, hi = n - 1;
  while (lo <= hi) {
    int32_t mid = (lo + hi) / 2;
    if (c < r[2 * mid]) hi = mid - 1;
    else if (c > r[2 * mid + 1]) lo = mid + 1;
    else return 1;
  }
  return 0;
}

/* length in characters if the token is whole characters of the class, else 0 */
static int32_t member_len(const ml_gvocab *v, int32_t id, const uint32_t *r, int32_t n) {
  const uint8_t *s = v->bytes + v->off[id];
  size_t len = (size_t)(v->off[id + 1] - v->off[id]), i = 0;
  int32_t chars = 0;
  while (i < len) {
    uint32_t c;
    int k = gx_utf8_decode(s + i, len - i, &c);
    if (!k || !in_class(r, n, c)) return 0;
    i += (size_t)k;
    chars++;
  }
  return chars;
}

static gslice *slice_build(ml_gvocab *v, const uint32_t *ranges, int32_t npairs) {
  gslice *sl = calloc(1, sizeof *sl);
  int32_t *lens = malloc((size_t)v->n_vocab * sizeof *lens + 1), *rest = malloc((size_t)v->n_vocab * sizeof *rest + 1);
  if (!sl || !lens || !rest) goto oom;
  sl->ranges = malloc((size_t)npairs * 2 * sizeof *sl->ranges + 1);
  if (!sl->ranges) goto oom;
  memcpy(sl->ranges, ranges, (size_t)npairs * 2 * sizeof *ranges);
  sl->n_ranges = npairs;
  int32_t n_rest = 0;
  for (int32_t id = 0; id < v->n_vocab; id++) {
    lens[id] = v->kind[id] == 0 ? member_len(v, id, ranges, npairs) : 0;
    if (lens[id] > GV_SLICE_MAX_CHARS) lens[id] = 0; /* rare long tokens (runs of spaces): walked with the rest */
    if (lens[id] > sl->max_len) sl->max_len = lens[id];
    if (lens[id] > GV_SLICE_LENS) sl->n_long++;
  }
  for (int32_t i = 0; i < v->n_sorted; i++) /* the rest, in trie order */
    if (lens[v->sorted[i]] == 0) rest[n_rest++] = v->sorted[i];
  for (int L = 1; L <= GV_SLICE_LENS; L++) {
    sl->upto[L] = ml_calloc((v->n_words + 1) * sizeof(uint64_t));
    if (!sl->upto[L]) goto oom;
  }
  sl->long_id = malloc((size_t)sl->n_long * sizeof *sl->long_id + 1);
  sl->long_len = malloc((size_t)sl->n_long * sizeof *sl->long_len + 1);
  if (!sl->long_id || !sl->long_len) goto oom;
  int32_t nl = 0;
  for (int32_t id = 0; id < v->n_vocab; id++) {
    int32_t L = lens[id];
    if (L == 0) continue;
    if (L <= GV_SLICE_LENS) sl->upto[L][id >> 6] |= 1ull << (id & 63);
    else sl->long_id[nl] = id, sl->long_len[nl++] = L;
  }
  for (int L = 2; L <= GV_SLICE_LENS; L++)
    for (size_t w = 0; w < v->n_words; w++) sl->upto[L][w] |= sl->upto[L - 1][w];
  for (int32_t i = 1; i < nl; i++) /* by length */
    for (int32_t j = i; j > 0 && sl->long_len[j - 1] > sl->long_len[j]; j--) {
      int32_t a = sl->long_len[j], b = sl->long_id[j];
      sl->long_len[j] = sl->long_len[j - 1], sl->long_id[j] = sl->long_id[j - 1];
      sl->long_len[j - 1] = a, sl->long_id[j - 1] = b;
    }
  if (trie_build(v, rest, n_rest, &sl->rest) < 0) goto fail;
  free(lens);
  free(rest);
  return sl;
oom:
  ml_seterr("out of memory (vocabulary slice)");
fail:
  if (sl) {
    free(sl->ranges);
    for (int L = 0; L <= GV_SLICE_LENS; L++) ml_free(sl->upto[L]);
    free(sl->long_id);
    free(sl->long_len);
    free(sl);
  }
  free(lens);
  free(rest);
  return NULL;
}

const gslice *gv_slice(ml_gvocab *v, const uint32_t *ranges, int32_t npairs) {
  int n = __atomic_load_n(&v->n_slices, __ATOMIC_ACQUIRE);
  for (int i = 0; i < n; i++) {
    const gslice *sl = v->slices[i];
    if (sl->n_ranges == npairs && memcmp(sl->ranges, ranges, (size_t)npairs * 2 * sizeof *ranges) == 0) return sl;
  }
  pthread_mutex_lock(&v->mu);
  gslice *found = NULL;
  n = v->n_slices;
  for (int i = 0; i < n && !found; i++) /* made by another thread meanwhile? */
    if (v->slices[i]->n_ranges == npairs && memcmp(v->slices[i]->ranges, ranges, (size_t)npairs * 2 * sizeof *ranges) == 0)
      found = v->slices[i];
  if (!found && n < GV_MAX_SLICES) {
    found = slice_build(v, ranges, npairs);
    if (found) {
      found->id = n;
      v->slices[n] = found;
      __atomic_store_n(&v->n_slices, n + 1, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&v->mu);
  return found;
}

ml_gvocab *ml_model_gvocab(ml_model *m) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  if (!m->vocab) return ml_seterr("this model has no tokenizer"), NULL;
  pthread_mutex_lock(&mu);
  if (!m->gvocab) {
    m->gvocab = ml_gvocab_from_vocab(m->vocab, m->hp.n_vocab);
    if (m->gvocab) gk_prebuild_slices(m->gvocab);
  }
  ml_gvocab *v = m->gvocab;
  if (v) ml_gvocab_retain(v);
  pthread_mutex_unlock(&mu);
  return v;
}
