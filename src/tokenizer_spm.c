/* tokenizer_spm.c: SentencePiece BPE (tokenizer.ggml.model "llama"): spaces become U+2581,
 * a dummy-prefix "▁" goes in front, then adjacent symbols (UTF-8 characters at first) merge
 * by best score into vocabulary tokens; what forms no token falls back to <0xXX> byte
 * tokens (llama.cpp's llm_tokenizer_spm). */
#include "tokenizer_impl.h"

static uint32_t score_key(float f) { /* order-preserving float -> uint32 */
  uint32_t u;
  if (f == 0.0f) f = 0.0f; /* -0 ranks as +0 */
  memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

static int spm_try(const ml_vocab *v, scratch *sc, const uint8_t *t, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  uint32_t size = sc->len[l] + sc->len[r];
  if (size > v->info.max_token_len) return 0;
  int32_t id = tok_find(v, t + sc->start[l], size);
  if (id < 0) return 0;
  /* best score first, then leftmost */
  return ml_tok_heap_push(sc, (uint64_t)~score_key(v->score[id]) << 32 | (uint32_t)l, r, (int32_t)size, id);
}

/* Merge symbols [a, b) by score; emit their tokens. */
static int spm_segment(const ml_vocab *v, scratch *sc, const uint8_t *t, int32_t a, int32_t b, outbuf *o) {
  for (int32_t i = a; i < b; i++) {
    sc->sid[i] = -1;
    sc->prev[i] = i - 1;
    sc->next[i] = i + 1;
  }
  sc->prev[a] = -1;
  sc->next[b - 1] = -1;
  sc->n_heap = 0;
  for (int32_t i = a + 1; i < b; i++)
    if (spm_try(v, sc, t, i - 1, i)) return -1;
  while (sc->n_heap) {
    heap_item e = ml_tok_heap_pop(sc);
    int32_t l = (int32_t)(e.key & 0xFFFFFFFF), r = e.a;
    if (!sc->len[l] || !sc->len[r] || sc->len[l] + sc->len[r] != (uint32_t)e.b) continue; /* stale */
    sc->len[l] += sc->len[r];
    sc->len[r] = 0;
    sc->sid[l] = e.c;
    sc->next[l] = sc->next[r];
    if (sc->next[r] >= 0) sc->prev[sc->next[r]] = l;
    if (spm_try(v, sc, t, sc->prev[l], l) || spm_try(v, sc, t, l, sc->next[l])) return -1;
  }
  for (int32_t i = a; i != -1; i = sc->next[i]) {
    int32_t id = sc->sid[i] >= 0 ? sc->sid[i] : tok_find(v, t + sc->start[i], sc->len[i]);
    if (id >= 0) {
      put(o, id);
      continue;
    }
    for (uint32_t j = 0; j < sc->len[i]; j++) ml_tok_put_byte(v, o, t[sc->start[i] + j]);
  }
  return 0;
}

int ml_tok_spm_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, int prefix, outbuf *o) {
  size_t spaces = 0;
  for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
  size_t m = n + 2 * spaces + (prefix ? 3 : 0), j = 0;
  int err = 0;
  if (GROW(sc->bytes, sc->cap_bytes, m, err), err || ml_tok_grow_sym(sc, m)) return -1;
  uint8_t *t = sc->bytes;
  if (prefix) t[j++] = 0xE2, t[j++] = 0x96, t[j++] = 0x81;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == ' ') t[j++] = 0xE2, t[j++] = 0x96, t[j++] = 0x81; /* U+2581 */
    else t[j++] = s[i];
  }

  /* Symbols are UTF-8 characters. A byte that starts no well-formed character is a symbol
   * of its own (llama.cpp would swallow the next bytes by the lead byte's length, losing
   * round trips on invalid input; on valid input the two agree). */
  int32_t k = 0;
  for (size_t i = 0; i < m; k++) {
    int r = t[i] < 0x80 ? 1 : ml_utf8_check(t + i, m - i);
    size_t l = r > 0 ? (size_t)r : 1;
    sc->start[k] = (uint32_t)i;
    sc->len[k] = (uint32_t)l;
    i += l;
  }
  /* Merges never join across a "▁" whose left neighbour precedes "▁" in no token: no token
   * spans that point, so the text before and after it can be merged separately. Same
   * result, but small heaps (llama: one segment per word). */
  for (int32_t a = 0, b; a < k; a = b) {
    for (b = a + 1; b < k; b++) {
      const uint8_t *c = t + sc->start[b];
      if (sc->len[b] == 3 && c[0] == 0xE2 && c[1] == 0x96 && c[2] == 0x81) {
        uint32_t cp;
        ml_utf8_decode(t + sc->start[b - 1], sc->len[b - 1], &cp);
        if (!ml_tok_is_glue(v, cp)) break;
      }
    }
    const uint8_t *p = t + sc->start[a];
    size_t n_p = sc->start[b - 1] + sc->len[b - 1] - sc->start[a];
    uint16_t *slot;
    uint32_t h = 0;
    if (ml_tok_cache_get(sc, p, n_p, o, &slot, &h)) continue;
    int64_t from = o->n;
    if (spm_segment(v, sc, t, a, b, o)) return -1;
    ml_tok_cache_put(sc, slot, h, p, n_p, o, from);
  }
  return 0;
}
