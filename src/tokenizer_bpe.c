/* tokenizer_bpe.c: byte-level BPE (tokenizer.ggml.model "gpt2"): code points are decoded
 * once (NFC for qwen2), split by the pre-tokenizer (unicode.c), and each piece is merged by
 * rank starting from its bytes, each byte standing for its GPT-2 byte-level character. */
#include "tokenizer_impl.h"

static int bpe_try(const ml_vocab *v, scratch *sc, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  const merge_slot *m = merge_find(v, sc->sid[l], sc->sid[r]);
  if (!m) return 0;
  return ml_tok_heap_push(sc, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)l, sc->sid[l], sc->sid[r], m->result);
}

/* One pre-token w[0..m): merges by rank, lowest first, leftmost on ties. */
static int bpe_word(const ml_vocab *v, scratch *sc, const uint8_t *w, size_t m, outbuf *o) {
  if (v->info.ignore_merges && m <= v->info.max_token_len) {
    int err = 0;
    if (GROW(sc->enc, sc->cap_enc, 2 * m, err), err) return -1;
    size_t j = 0;
    for (size_t i = 0; i < m; i++) {
      memcpy(sc->enc + j, v->byte_enc[w[i]], 2);
      j += v->byte_enc_len[w[i]];
    }
    int32_t id = tok_find(v, sc->enc, j);
    if (id >= 0) {
      put(o, id);
      return 0;
    }
  }
  if (m == 1) {
    ml_tok_put_byte(v, o, w[0]);
    return 0;
  }
  if (ml_tok_grow_sym(sc, m)) return -1;
  int32_t k = (int32_t)m;
  for (int32_t i = 0; i < k; i++) {
    sc->sid[i] = v->byte_tok[w[i]];
    sc->prev[i] = i - 1;
    sc->next[i] = i + 1;
  }
  sc->next[k - 1] = -1;
  sc->n_heap = 0;
  for (int32_t i = 1; i < k; i++)
    if (bpe_try(v, sc, i - 1, i)) return -1;
  while (sc->n_heap) {
    heap_item e = ml_tok_heap_pop(sc);
    int32_t l = (int32_t)(e.key & 0xFFFFFFFF), r = sc->next[l];
    if (r < 0 || sc->sid[l] != e.a || sc->sid[r] != e.b) continue; /* stale */
    sc->sid[l] = e.c;
    sc->sid[r] = -2; /* merged away */
    sc->next[l] = sc->next[r];
    if (sc->next[r] >= 0) sc->prev[sc->next[r]] = l;
    if (bpe_try(v, sc, sc->prev[l], l) || bpe_try(v, sc, l, sc->next[l])) return -1;
  }
  for (int32_t i = 0; i != -1; i = sc->next[i]) {
    if (sc->sid[i] >= 0) put(o, sc->sid[i]);
    else ml_tok_put_byte(v, o, w[i]); /* a byte the vocabulary lacks */
  }
  return 0;
}

int ml_tok_bpe_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, outbuf *o) {
  if (ml_tok_grow_cp(sc, n + 1)) return -1;
  size_t k = 0;
  for (size_t i = 0; i < n; k++) {
    uint32_t c = s[i];
    sc->off[k] = (uint32_t)i;
    if (c < 0x80) i++;
    else i += ml_utf8_decode(s + i, n - i, &c);
    sc->cp[k] = c;
    sc->fl[k] = ml_uc_flags(c);
  }
  sc->off[k] = (uint32_t)n;
  if (v->info.nfc && ml_nfc_needed(sc->cp, sc->fl, k)) {
    int err = 0;
    if (GROW(sc->cp2, sc->cap_cp2, 4 * k, err), err) return -1;
    size_t k2 = ml_nfc(sc->cp, k, sc->cp2), j = 0;
    if (ml_tok_grow_cp(sc, k2 + 1) || (GROW(sc->bytes, sc->cap_bytes, 4 * k2, err), err)) return -1;
    for (size_t i = 0; i < k2; i++) {
      sc->cp[i] = sc->cp2[i];
      sc->fl[i] = ml_uc_flags(sc->cp2[i]);
      sc->off[i] = (uint32_t)j;
      j += ml_utf8_encode(sc->cp2[i], sc->bytes + j);
    }
    sc->off[k2] = (uint32_t)j;
    k = k2;
    s = sc->bytes;
  }
  size_t np = ml_pretok_split(v->pretok, sc->cp, sc->fl, k, sc->ends, sc->tmp);
  uint32_t a = 0;
  for (size_t i = 0; i < np; i++) {
    uint32_t b = sc->ends[i];
    const uint8_t *p = s + sc->off[a];
    size_t n_p = sc->off[b] - sc->off[a];
    uint16_t *slot;
    uint32_t h = 0;
    a = b;
    if (ml_tok_cache_get(sc, p, n_p, o, &slot, &h)) continue;
    int64_t from = o->n;
    if (bpe_word(v, sc, p, n_p, o)) return -1;
    ml_tok_cache_put(sc, slot, h, p, n_p, o, from);
  }
  return 0;
}
