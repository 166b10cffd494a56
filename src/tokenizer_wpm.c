/* tokenizer_wpm.c: WordPiece (tokenizer.ggml.model "bert"), as Hugging Face's BERT
 * tokenizer does it:
 *   1. normalize (BertNormalizer): drop NUL, U+FFFD and control characters, white space
 *      becomes a word break, CJK ideographs are words of their own; in a lower-casing
 *      vocabulary, accents are stripped (NFD, nonspacing marks removed) and characters
 *      lower-cased;
 *   2. pre-tokenize (BertPreTokenizer): split at white space, and each punctuation
 *      character (Unicode P, or any ASCII punctuation such as $ + < = > ^ ` | ~) is a word;
 *   3. each word is matched greedily, longest piece first, from its start: the first
 *      piece is a word-initial token, the next ones continuation ("##") tokens; a word
 *      with a piece that matches nothing, or longer than 100 characters, is [UNK].
 * llama.cpp's converter stores word-initial tokens with a "▁" in front and continuation
 * tokens without their "##" (the original "##ing" is "ing", "the" is "▁the"), so a word
 * is matched as "▁" + word from its first byte on. Lower-casing and accent stripping
 * follow tokenizer.ggml.normalizer.lowercase / .strip_accents (llama.cpp's keys; accents
 * follow lower-casing unless said otherwise); without the keys, a vocabulary with
 * upper-case letters in its tokens is taken as cased (llama.cpp would lower-case it, and
 * then never produce those tokens). */
#include "tokenizer_impl.h"

#define MAX_WORD_CHARS 100 /* Hugging Face's max_input_chars_per_word */

static int is_cjk(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int is_punct(uint32_t c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126) ||
         (ml_uc_flags(c) & ML_UC_P);
}

/* The word being built: its UTF-8 after "▁" in sc->bytes, its characters counted. */
typedef struct word {
  size_t len;     /* bytes, the 3 of "▁" included */
  size_t n_chars;
} word;

static int word_push(scratch *sc, word *w, uint32_t c) {
  int err = 0;
  if (GROW(sc->bytes, sc->cap_bytes, w->len + 4, err), err) return -1;
  w->len += ml_utf8_encode(c, sc->bytes + w->len);
  w->n_chars++;
  return 0;
}

/* Greedy longest-first pieces of the word in sc->bytes[0, w->len) ("▁" + word). */
static void word_end(const ml_vocab *v, scratch *sc, word *w, outbuf *o) {
  if (w->n_chars == 0) return;
  const uint8_t *b = sc->bytes;
  size_t n = w->len;
  int64_t mark = o->n;
  if (w->n_chars > MAX_WORD_CHARS) goto unknown;
  for (size_t start = 0; start < n;) {
    size_t end = ML_MIN(n, start + v->info.max_token_len);
    int32_t id = -1;
    for (; end > start; end--) {
      if (end < n && (b[end] & 0xC0) == 0x80) continue; /* not a character boundary */
      if ((id = tok_find(v, b + start, end - start)) >= 0) break;
    }
    if (id < 0) goto unknown;
    put(o, id);
    start = end;
  }
  goto done;
unknown:
  o->n = mark;
  if (v->info.unk >= 0) put(o, v->info.unk);
done:
  w->len = 3; /* "▁" stays in front */
  w->n_chars = 0;
}

/* One normalized character into the current word, or as a word of its own. */
static int add_char(const ml_vocab *v, scratch *sc, word *w, uint32_t c, outbuf *o) {
  if (!is_punct(c)) return word_push(sc, w, c);
  word_end(v, sc, w, o);
  if (word_push(sc, w, c)) return -1;
  word_end(v, sc, w, o);
  return 0;
}

int ml_tok_wpm_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, outbuf *o) {
  int err = 0;
  if (GROW(sc->bytes, sc->cap_bytes, 64, err), err) return -1;
  memcpy(sc->bytes, "\xE2\x96\x81", 3);
  word w = {3, 0};
  for (size_t i = 0; i < n;) {
    uint32_t c;
    i += ml_utf8_decode(s + i, n - i, &c);
    uint8_t f = c >= ML_UC_RAW ? 0 : ml_uc_flags(c);
    /* undecodable bytes, NUL, U+FFFD, Cc Cf Cs Co and unassigned (no class) are dropped,
     * even those that are white space (\v, \f, U+0085), except tab, CR and LF */
    int tcrlf = c == '\t' || c == '\n' || c == '\r';
    if (!tcrlf && (c >= ML_UC_RAW || c == 0 || c == 0xFFFD || (f & ML_UC_C) || f == 0)) continue;
    if (tcrlf || (f & ML_UC_WS)) {
      word_end(v, sc, &w, o);
      continue;
    }
    int cjk = is_cjk(c);
    if (cjk) word_end(v, sc, &w, o);
    uint32_t d[4 * 4], l[2];
    size_t nd = 1;
    d[0] = c;
    if (v->info.strip_accents) nd = ml_nfd(&c, 1, d);
    for (size_t k = 0; k < nd; k++) {
      if (v->info.strip_accents && ml_uc_is_mn(d[k])) continue;
      size_t nl = v->info.lowercase ? ml_uc_lower(d[k], l) : (l[0] = d[k], 1);
      for (size_t j = 0; j < nl; j++)
        if (add_char(v, sc, &w, l[j], o)) return -1;
    }
    if (cjk) word_end(v, sc, &w, o);
  }
  word_end(v, sc, &w, o);
  return 0;
}

/* Does the vocabulary lower-case? Only if no ordinary token has an upper-case letter. */
int ml_tok_wpm_lowercase(const ml_vocab *v) {
  for (int32_t id = 0; id < v->info.n_tokens; id++) {
    if (!(v->attr[id] & ML_TOKEN_NORMAL)) continue;
    const uint8_t *t = (const uint8_t *)v->text[id].s;
    size_t n = (size_t)v->text[id].len;
    if (n >= 2 && t[0] == '[' && t[n - 1] == ']') continue; /* [unused0] and the like */
    for (size_t i = 0; i < n;) {
      uint32_t c, l[2];
      i += ml_utf8_decode(t + i, n - i, &c);
      if (c < ML_UC_RAW && (ml_uc_lower(c, l) != 1 || l[0] != c)) return 0;
    }
  }
  return 1;
}
