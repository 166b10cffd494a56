/* tokenize.c: ml_vocab_tokenize. The text is cut into raw fragments and special tokens
 * (longest special first, as llama.cpp's tokenizer_st_partition); each raw fragment goes,
 * in chunks of about 64 KiB cut where no token can span, to its family's tokenizer
 * (tokenizer_spm.c, _bpe.c, _wpm.c). All state lives in a per-call scratch (and a memo of
 * short pieces for long texts); the vocabulary is never written after loading. */
#include "tokenizer_impl.h"

#define MAX_TEXT ((size_t)1 << 30) /* bytes per tokenize call; indices are 32-bit */

/* p resized to hold at least `need` elements of `size` bytes (contents kept), or p itself
 * with *err set if that fails. Used through GROW, which assigns the result back. */
void *ml_tok_grow(void *p, size_t *cap, size_t need, size_t size, int *err) {
  if (need <= *cap) return p;
  size_t n = ML_MAX(need, *cap + *cap / 2);
  n = ML_MAX(n, (size_t)64);
  void *q = realloc(p, n * size);
  if (!q) {
    ml_seterr("out of memory (%zu bytes of tokenizer scratch)", n * size);
    *err = 1;
    return p;
  }
  *cap = n;
  return q;
}


int ml_tok_grow_cp(scratch *sc, size_t need) {
  size_t c[5] = {sc->cap_cp, sc->cap_cp, sc->cap_cp, sc->cap_cp, sc->cap_cp};
  int err = 0;
  if (need <= sc->cap_cp) return 0;
  GROW(sc->cp, c[0], need, err);
  GROW(sc->off, c[1], need, err);
  GROW(sc->ends, c[2], need, err);
  GROW(sc->tmp, c[3], need, err);
  GROW(sc->fl, c[4], need, err);
  if (err) return -1;
  sc->cap_cp = ML_MIN(ML_MIN(ML_MIN(c[0], c[1]), ML_MIN(c[2], c[3])), c[4]);
  return 0;
}

int ml_tok_grow_sym(scratch *sc, size_t need) {
  size_t c[5] = {sc->cap_sym, sc->cap_sym, sc->cap_sym, sc->cap_sym, sc->cap_sym};
  int err = 0;
  if (need <= sc->cap_sym) return 0;
  GROW(sc->sid, c[0], need, err);
  GROW(sc->prev, c[1], need, err);
  GROW(sc->next, c[2], need, err);
  GROW(sc->start, c[3], need, err);
  GROW(sc->len, c[4], need, err);
  if (err) return -1;
  sc->cap_sym = ML_MIN(ML_MIN(ML_MIN(c[0], c[1]), ML_MIN(c[2], c[3])), c[4]);
  return 0;
}

static void scratch_free(scratch *sc) {
  free(sc->cache);
  free(sc->bytes); free(sc->enc); free(sc->cp); free(sc->off); free(sc->ends); free(sc->tmp);
  free(sc->fl); free(sc->cp2); free(sc->sid); free(sc->prev); free(sc->next); free(sc->start);
  free(sc->len); free(sc->heap); free(sc->frags); free(sc->occ); free(sc->mask);
}

int ml_tok_heap_push(scratch *sc, uint64_t key, int32_t a, int32_t b, int32_t c) {
  int err = 0;
  if (GROW(sc->heap, sc->cap_heap, sc->n_heap + 1, err), err) return -1;
  heap_item *h = sc->heap;
  size_t i = sc->n_heap++;
  while (i > 0) {
    size_t up = (i - 1) / 2;
    if (h[up].key <= key) break;
    h[i] = h[up];
    i = up;
  }
  h[i] = (heap_item){key, a, b, c};
  return 0;
}

heap_item ml_tok_heap_pop(scratch *sc) {
  heap_item *h = sc->heap, top = h[0], last = h[--sc->n_heap];
  size_t i = 0, n = sc->n_heap;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1].key < h[c].key) c++;
    if (last.key <= h[c].key) break;
    h[i] = h[c];
    i = c;
  }
  if (n) h[i] = last;
  return top;
}

/* The cache slot for piece p[0..n) with hash h: its entry, or the empty slot to fill. */
static uint16_t *cache_slot(piece_cache *c, const uint8_t *p, size_t n, uint32_t h) {
  for (uint32_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
    uint16_t k = c->slot[i];
    if (!k || (c->e[k - 1].hash == h && c->e[k - 1].len == n && memcmp(c->text + c->e[k - 1].text, p, n) == 0))
      return &c->slot[i];
  }
}

/* Emit the cached ids of p[0..n) and return 1, or return 0 (then *slot, *h are for cache_put). */
int ml_tok_cache_get(scratch *sc, const uint8_t *p, size_t n, outbuf *o, uint16_t **slot, uint32_t *h) {
  piece_cache *c = sc->cache;
  *slot = NULL;
  if (!c || n > CACHE_PIECE) return 0;
  *h = hash_bytes(p, n);
  *slot = cache_slot(c, p, n, *h);
  if (!**slot) return 0;
  unsigned k = **slot - 1u;
  for (unsigned i = 0; i < c->e[k].n; i++) put(o, c->id[c->e[k].ids + i]);
  return 1;
}

/* Remember the ids o->ids[from .. o->n) just produced for p[0..n). */
void ml_tok_cache_put(scratch *sc, uint16_t *slot, uint32_t h, const uint8_t *p, size_t n, const outbuf *o,
                      int64_t from) {
  piece_cache *c = sc->cache;
  int64_t m = o->n - from;
  if (!slot || o->n > o->cap || m > CACHE_PIECE || c->n_e == CACHE_ENTRIES || c->n_text + n > CACHE_TEXT ||
      c->n_id + (size_t)m > CACHE_IDS)
    return; /* ids not kept (output buffer too small), or the cache is full */
  unsigned k = c->n_e++;
  c->e[k].hash = h;
  c->e[k].text = c->n_text;
  c->e[k].ids = c->n_id;
  c->e[k].len = (uint8_t)n;
  c->e[k].n = (uint8_t)m;
  if (n) memcpy(c->text + c->n_text, p, n);
  if (m) memcpy(c->id + c->n_id, o->ids + from, (size_t)m * sizeof *o->ids);
  c->n_text += (uint32_t)n;
  c->n_id += (uint32_t)m;
  *slot = (uint16_t)(k + 1);
}

void ml_tok_put_byte(const ml_vocab *v, outbuf *o, uint8_t b) {
  int32_t id = v->byte_tok[b];
  if (id < 0) id = v->info.unk; /* a vocabulary without this byte: unknown, or nothing */
  if (id >= 0) put(o, id);
}

/* ---- special-token partition ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int add_frag(scratch *sc, uint32_t start, uint32_t len, int32_t token) {
  int err = 0;
  if (GROW(sc->frags, sc->cap_frags, sc->n_frags + 1, err), err) return -1;
  sc->frags[sc->n_frags++] = (frag){start, len, token};
  return 0;
}

/* Raw runs (mask 0) of [a, b) as fragments; white space eaten by LSTRIP/RSTRIP is skipped. */
static int add_raw(scratch *sc, const uint8_t *mask, size_t a, size_t b) {
  while (a < b) {
    while (a < b && mask[a]) a++;
    size_t e = a;
    while (e < b && !mask[e]) e++;
    if (e > a && add_frag(sc, (uint32_t)a, (uint32_t)(e - a), -1)) return -1;
    a = e;
  }
  return 0;
}

static int is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Cut s[0..n) into raw fragments and special tokens. Like llama.cpp, each special token in
 * turn (longest first) is searched in what is still raw, left to right. All occurrences
 * are found in one pass; replaying them in (priority, position) order gives the same cut. */
static int partition(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, int parse_special) {
  int err = 0;
  sc->n_frags = sc->n_occ = 0;
  if (n == 0) return 0;
  const uint32_t *first = v->sp_first[parse_special != 0];
  const int32_t *by_byte = v->sp_by_byte[parse_special != 0];
  for (size_t p = 0; p < n; p++) {
    for (uint32_t k = first[s[p]], end = first[s[p] + 1]; k < end; k++) {
      int32_t r = by_byte[k], id = v->special[r];
      size_t l = (size_t)v->text[id].len;
      if (l > n - p || memcmp(v->text[id].s, s + p, l) != 0) continue;
      if (GROW(sc->occ, sc->cap_occ, sc->n_occ + 1, err), err) return -1;
      sc->occ[sc->n_occ++] = (uint64_t)r << 32 | p;
    }
  }
  if (sc->n_occ == 0) return add_frag(sc, 0, (uint32_t)n, -1);

  qsort(sc->occ, sc->n_occ, 8, cmp_u64);
  if (GROW(sc->mask, sc->cap_mask, n, err), err) return -1;
  uint8_t *mask = sc->mask;
  memset(mask, 0, n);
  size_t n_acc = 0;
  for (size_t i = 0; i < sc->n_occ; i++) {
    size_t p = sc->occ[i] & 0xFFFFFFFF;
    int32_t id = v->special[sc->occ[i] >> 32];
    size_t l = (size_t)v->text[id].len, q;
    for (q = p; q < p + l && !mask[q]; q++) {}
    if (q < p + l) continue; /* overlaps a longer (or earlier) special token */
    memset(mask + p, 1, l);
    if (v->attr[id] & ML_TOKEN_LSTRIP)
      for (q = p; q > 0 && !mask[q - 1] && is_space(s[q - 1]); q--) mask[q - 1] = 2;
    if (v->attr[id] & ML_TOKEN_RSTRIP)
      for (q = p + l; q < n && !mask[q] && is_space(s[q]); q++) mask[q] = 2;
    sc->occ[n_acc++] = (uint64_t)p << 32 | (uint32_t)id; /* reuse: accepted, by position */
  }
  qsort(sc->occ, n_acc, 8, cmp_u64);
  size_t pos = 0;
  for (size_t i = 0; i < n_acc; i++) {
    size_t p = sc->occ[i] >> 32;
    int32_t id = (int32_t)(sc->occ[i] & 0xFFFFFFFF);
    if (add_raw(sc, mask, pos, p) || add_frag(sc, (uint32_t)p, (uint32_t)v->text[id].len, id)) return -1;
    pos = p + (size_t)v->text[id].len;
  }
  return add_raw(sc, mask, pos, n);
}
/* ---- tokenize ---- */

/* Where text s[0..n) may be cut into independently tokenized chunks, at or after `from`:
 * BPE: in "X\nL" (X printable ASCII, not a space; L an ASCII letter) after the newline.
 * Every pre-tokenizer chain ends a piece there whether L or the end of the text follows
 * (the newline is a one-character white space run), and NFC cannot join across it.
 * SPM: before a space whose left neighbour is an ASCII character that never precedes
 * "▁" in a token (see spm_fragment). WordPiece: at a space (always a word break). n if
 * there is no such place. */
static size_t next_cut(const ml_vocab *v, const uint8_t *s, size_t n, size_t from) {
  for (size_t b = ML_MAX(from, (size_t)2); b < n; b++) {
    uint8_t p = s[b - 1], c = s[b];
    if (v->info.type == ML_VOCAB_BPE) {
      if (p == '\n' && s[b - 2] > ' ' && s[b - 2] < 0x7F && (c | 0x20) >= 'a' && (c | 0x20) <= 'z') return b;
    } else if (v->info.type == ML_VOCAB_WPM) {
      if (c == ' ') return b;
    } else if (c == ' ' && p < 0x80 && p != ' ' && !ml_tok_is_glue(v, p)) {
      return b;
    }
  }
  return n;
}

/* A raw fragment, in chunks of about CHUNK bytes so that scratch stays small. */
enum { CHUNK = 1 << 16 };

static int raw_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, int prefix, outbuf *o) {
  for (size_t a = 0, b; a < n; a = b) {
    b = n - a > 2 * CHUNK ? a + next_cut(v, s + a, n - a, CHUNK) : n;
    int rc = v->info.type == ML_VOCAB_SPM   ? ml_tok_spm_fragment(v, sc, s + a, b - a, prefix && a == 0, o)
             : v->info.type == ML_VOCAB_BPE ? ml_tok_bpe_fragment(v, sc, s + a, b - a, o)
                                            : ml_tok_wpm_fragment(v, sc, s + a, b - a, o);
    if (rc) return rc;
  }
  return 0;
}

int64_t ml_vocab_tokenize(const ml_vocab *v, const char *text, size_t len, int add_bos, int add_eos,
                          int parse_special, int32_t *out, int64_t n_max) {
  if (!v) {
    ml_misuse(1, "no vocabulary");
    return ML_TOK_ERROR;
  }
  if (!text && len) {
    ml_misuse(2, "text is NULL");
    return ML_TOK_ERROR;
  }
  if (len > MAX_TEXT) {
    ml_misuse(2, "text too long to tokenize at once (%zu bytes, at most %zu)", len, MAX_TEXT);
    return ML_TOK_ERROR;
  }
  if (n_max < 0 || (!out && n_max > 0)) {
    ml_misuse(0, "bad output buffer");
    return ML_TOK_ERROR;
  }
  if (add_bos < 0) add_bos = v->info.add_bos;
  if (add_eos < 0) add_eos = v->info.add_eos;
  int prefix = v->info.add_space_prefix && !(parse_special & ML_TOK_NO_PREFIX);
  parse_special &= 1;
  const uint8_t *s = (const uint8_t *)text;
  outbuf o = {out, n_max, 0};
  scratch sc;
  memset(&sc, 0, sizeof sc);
  int rc = 0;
  if (add_bos && v->info.bos >= 0) put(&o, v->info.bos);
  if (len >= ML_TOK_CACHE_MIN_TEXT && (sc.cache = malloc(sizeof *sc.cache)) != NULL) {
    memset(sc.cache->slot, 0, sizeof sc.cache->slot);
    sc.cache->n_e = sc.cache->n_text = sc.cache->n_id = 0;
  }
  if (partition(v, &sc, s, len, parse_special)) rc = -1;
  int prev_special = 1; /* SPM: a raw fragment at the start or after a special token gets the dummy prefix */
  for (size_t i = 0; rc == 0 && i < sc.n_frags; i++) {
    const frag *f = &sc.frags[i];
    if (f->token >= 0) {
      put(&o, f->token);
      prev_special = 1;
      continue;
    }
    rc = raw_fragment(v, &sc, s + f->start, f->len, prefix && prev_special, &o);
    prev_special = 0;
  }
  if (add_eos && v->info.eos >= 0) put(&o, v->info.eos);
  scratch_free(&sc);
  if (rc) return ML_TOK_ERROR;
  return o.n <= n_max ? o.n : -o.n;
}
