/* tokenizer_decode.c: token ids back to text: the bytes of one token (ml_vocab_piece),
 * whole sequences with llama.cpp's options (ml_vocab_detokenize), and the streaming decoder
 * that only ever gives out whole UTF-8 characters. */
#include "tokenizer_impl.h"

static int parse_hex_byte(const ml_gguf_str *t) { /* "<0xHH>" -> byte, or -1 */
  if (t->len != 6 || memcmp(t->s, "<0x", 3) != 0 || t->s[5] != '>') return -1;
  int x = 0;
  for (int i = 3; i < 5; i++) {
    char c = t->s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    x = x * 16 + d;
  }
  return x;
}

static void out_byte(char *buf, size_t cap, size_t *j, int *lstrip, char c) {
  if (*lstrip) {
    *lstrip = 0;
    if (c == ' ') return;
  }
  if (*j < cap) buf[*j] = c;
  ++*j;
}

/* The piece of a valid id: written to buf as far as cap allows; returns its full length.
 * lstrip: drop the piece's first byte if it is a space (the SPM dummy prefix). */
static size_t piece(const ml_vocab *v, int32_t id, int special, int lstrip, char *buf, size_t cap) {
  uint16_t a = v->attr[id];
  const ml_gguf_str *t = &v->text[id];
  const uint8_t *s = (const uint8_t *)t->s;
  size_t n = (size_t)t->len, j = 0;
#define OUT(c) out_byte(buf, cap, &j, &lstrip, (char)(c))
  if ((a & (ML_TOKEN_UNKNOWN | ML_TOKEN_CONTROL)) && !special) return 0;
  int raw = (a & (ML_TOKEN_UNKNOWN | ML_TOKEN_CONTROL | ML_TOKEN_USER_DEFINED)) != 0;
  if (!raw && (a & ML_TOKEN_NORMAL)) {
    for (size_t i = 0; i < n;) {
      if (v->info.type != ML_VOCAB_BPE) { /* SPM and WordPiece: "▁" is a space */
        if (i + 2 < n && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
          OUT(' ');
          i += 3;
        } else {
          OUT(s[i++]);
        }
        continue;
      }
      uint32_t c;
      size_t l = ml_utf8_decode(s + i, n - i, &c);
      if (c < 0x144 && v->byte_dec[c] >= 0) {
        OUT(v->byte_dec[c]);
      } else {
        for (size_t k = 0; k < l; k++) OUT(s[i + k]); /* not a byte-level char: as stored */
      }
      i += l;
    }
    return j;
  }
  if (!raw && (a & ML_TOKEN_BYTE)) {
    int b = parse_hex_byte(t);
    if (b >= 0) {
      OUT(b);
      return j;
    }
    raw = 1; /* not "<0xHH>": its text */
  }
  if (!raw) return 0; /* unused or undefined tokens render as nothing */
  for (size_t i = 0; i < n; i++) OUT(s[i]);
#undef OUT
  return j;
}

int ml_tok_is_special(const ml_vocab *v, int32_t id) {
  return (v->attr[id] & (ML_TOKEN_CONTROL | ML_TOKEN_UNKNOWN | ML_TOKEN_USER_DEFINED)) != 0;
}

int64_t ml_vocab_piece(const ml_vocab *v, int32_t id, int flags, char *buf, size_t cap) {
  if (!v || !ml_tok_valid_id(v, id)) {
    ml_misuse(2, "token id %d out of range", (int)id);
    return ML_TOK_ERROR;
  }
  if (!buf) cap = 0;
  size_t n = piece(v, id, flags & ML_DETOK_SPECIAL, 0, buf, cap);
  return n <= cap ? (int64_t)n : -(int64_t)n;
}

/* llama.cpp's clean_up_tokenization: " ?" " !" " ." " ," lose the space, " ' " loses both,
 * " 's" " 'm" " 're" " 've" lose the space. In place; returns the new length. */
static size_t clean_spaces(char *t, size_t n) {
  size_t w = n ? 1 : 0;
  for (size_t i = 1; i < n; i++) {
    char x = t[i];
    if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) w--;
    t[w++] = x;
  }
  n = w;
  w = n ? 1 : 0;
  for (size_t i = 1; i < n; i++) {
    char x = t[i];
    if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
      w--;
      t[++i] = '\0';
    }
    t[w++] = x;
  }
  n = w;
  w = n ? 1 : 0;
  for (size_t i = 1; i < n; i++) {
    char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
      char x1 = t[i + 1];
      if (x1 == 's' || x1 == 'm') w--;
      else if (i + 2 < n && ((x1 == 'r' && t[i + 2] == 'e') || (x1 == 'v' && t[i + 2] == 'e'))) w--;
    }
    t[w++] = x;
  }
  return w;
}

int64_t ml_vocab_detokenize(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, char *buf, size_t cap) {
  if (!v || n < 0 || (!ids && n > 0)) {
    ml_misuse(0, "bad arguments to detokenize");
    return ML_TOK_ERROR;
  }
  for (int64_t i = 0; i < n; i++)
    if (!ml_tok_valid_id(v, ids[i])) {
      ml_misuse(2, "token id %d (at index %lld) out of range", (int)ids[i], (long long)i + 1);
      return ML_TOK_ERROR;
    }
  if (!buf) cap = 0;
  if (flags & ML_DETOK_REMOVE_SPECIAL) {
    if (v->info.add_bos && n > 0 && ids[0] == v->info.bos) ids++, n--;
    if (v->info.add_eos && n > 0 && ids[n - 1] == v->info.eos) n--;
  }
  int strip_mode = (flags & ML_DETOK_STRIP_SPACE) && v->info.add_space_prefix, strip = strip_mode;
  size_t total = 0;
  for (int64_t i = 0; i < n; i++) {
    size_t room = total < cap ? cap - total : 0;
    char *dst = room ? buf + total : NULL;
    int special = ml_tok_is_special(v, ids[i]);
    total += piece(v, ids[i], flags & ML_DETOK_SPECIAL, strip && !special, dst, room);
    strip = special ? strip_mode : 0;
  }
  if (total > cap) return -(int64_t)total;
  if ((flags & ML_DETOK_CLEAN_SPACES) && v->info.clean_spaces) total = clean_spaces(buf, total);
  return (int64_t)total;
}
/* ---- streaming decoder ---- */

struct ml_decoder {
  const ml_vocab *v;
  int flags, strip;
  uint8_t hold[4]; /* an incomplete UTF-8 sequence waiting for its continuation */
  size_t n_hold;
  char *in, *out;
  size_t cap_in, cap_out;
};

ml_decoder *ml_decoder_new(const ml_vocab *v, int flags) {
  if (!v) {
    ml_misuse(1, "no vocabulary");
    return NULL;
  }
  ml_decoder *d = ml_calloc(sizeof *d);
  if (!d) return NULL;
  d->v = v;
  d->flags = flags;
  ml_decoder_reset(d);
  return d;
}

void ml_decoder_reset(ml_decoder *d) {
  d->n_hold = 0;
  d->strip = (d->flags & ML_DETOK_STRIP_SPACE) && d->v->info.add_space_prefix;
}

void ml_decoder_free(ml_decoder *d) {
  if (!d) return;
  free(d->in);
  free(d->out);
  ml_free(d);
}

/* Valid characters of in[0..n) go to d->out, ill-formed parts as U+FFFD; an incomplete
 * tail is held back, or replaced too when final. */
static int64_t decode_utf8(ml_decoder *d, const uint8_t *in, size_t n, int final) {
  int err = 0;
  if (GROW(d->out, d->cap_out, 3 * n + 1, err), err) return ML_TOK_ERROR;
  uint8_t *out = (uint8_t *)d->out;
  size_t j = 0;
  d->n_hold = 0;
  for (size_t i = 0; i < n;) {
    int r = ml_utf8_check(in + i, n - i);
    if (r > 0) {
      memcpy(out + j, in + i, (size_t)r);
      j += (size_t)r;
      i += (size_t)r;
      continue;
    }
    if (r == 0 && !final) {
      d->n_hold = n - i; /* at most 3 bytes */
      memmove(d->hold, in + i, d->n_hold);
      break;
    }
    out[j++] = 0xEF, out[j++] = 0xBF, out[j++] = 0xBD;
    i += r == 0 ? n - i : (size_t)-r;
  }
  return (int64_t)j;
}

int64_t ml_decoder_push(ml_decoder *d, int32_t id, const char **out) {
  *out = "";
  if (!ml_tok_valid_id(d->v, id)) {
    ml_misuse(2, "token id %d out of range", (int)id);
    return ML_TOK_ERROR;
  }
  const ml_vocab *v = d->v;
  int special = ml_tok_is_special(v, id), lstrip = d->strip && !special;
  size_t l = piece(v, id, d->flags & ML_DETOK_SPECIAL, lstrip, NULL, 0);
  int err = 0;
  if (GROW(d->in, d->cap_in, d->n_hold + l + 1, err), err) return ML_TOK_ERROR;
  memcpy(d->in, d->hold, d->n_hold);
  piece(v, id, d->flags & ML_DETOK_SPECIAL, lstrip, d->in + d->n_hold, l);
  d->strip = special ? (d->flags & ML_DETOK_STRIP_SPACE) && v->info.add_space_prefix : 0;
  int64_t r = decode_utf8(d, (const uint8_t *)d->in, d->n_hold + l, 0);
  if (r >= 0) *out = d->out;
  return r;
}

int64_t ml_decoder_flush(ml_decoder *d, const char **out) {
  uint8_t tmp[4];
  size_t n = d->n_hold;
  memcpy(tmp, d->hold, n);
  int64_t r = decode_utf8(d, tmp, n, 1);
  *out = r >= 0 ? d->out : "";
  ml_decoder_reset(d);
  return r;
}
