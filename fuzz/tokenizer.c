/* fuzz/tokenizer.c: libFuzzer harness for the tokenizers and the vocabulary loader.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Isrc \
 *     [-DML_TOK_CACHE_MIN_TEXT=1] fuzz/tokenizer.c src/tokenizer.c src/unicode.c src/gguf.c \
 *     src/error.c src/dtype.c src/quant.c -o fuzz_tokenizer
 *   MOONLM_SHARED=/path/to/shared ./fuzz_tokenizer      (default ../shared)
 * (-DML_TOK_CACHE_MIN_TEXT=1 turns the tokenizer's per-call word cache on for any text, so
 * fuzz inputs, which are short, exercise it.)
 *
 * The vocabularies of SHARED/tokenizer (SPM, byte-level BPE, qwen2 with NFC), stories260K
 * and ref-arch's BERT (WordPiece) are loaded once, and gpt-2's again under the pre-tokenizer
 * names default, falcon, starcoder, deepseek-llm, deepseek-coder, deepseek-v3 and gpt-4o
 * (written to a temporary file). Input byte 0 picks the mode and vocabulary, byte 1 options:
 *   text mode: the rest is text. It is tokenized (parse_special on or off, BOS/EOS, buffers
 *     too small first), detokenized (with each flag, buffers too small), decoded as a stream,
 *     and checked: ids in range, sizes consistent, text round-trips (to its NFC form where
 *     the vocabulary normalizes), the stream is valid UTF-8 and equals the detokenized text.
 *     The input's bytes are also replayed as arbitrary token ids through the decoder.
 *   load mode: the rest describes tokenizer metadata (tokens, types, scores, merges, ids,
 *     flags) serialized as a GGUF in memory; loading must fail cleanly or give a vocabulary
 *     that tokenizes the same bytes without breaking the invariants.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* mkstemp, unlink */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "unicode.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define EXPECT(c) do { if (!(c)) { fprintf(stderr, "failed: %s (line %d)\n", #c, __LINE__); __builtin_trap(); } } while (0)

static ml_vocab *vocabs[16];
static int strips[16]; /* vocab has LSTRIP/RSTRIP specials: parse_special text does not round-trip */
static int n_vocabs;

static void add_vocab(ml_vocab *v, const char *what) {
  if (!v) {
    fprintf(stderr, "fuzz/tokenizer: cannot load %s: %s (set MOONLM_SHARED)\n", what, ml_errmsg());
    exit(1);
  }
  for (int32_t id = 0; id < ml_vocab_get_info(v)->n_tokens; id++)
    if (ml_vocab_token_attr(v, id) & (ML_TOKEN_LSTRIP | ML_TOKEN_RSTRIP)) strips[n_vocabs] = 1;
  vocabs[n_vocabs++] = v;
}

/* The gpt-2 vocabulary under another pre-tokenizer name, to cover the other regex chains. */
static ml_vocab *relabel(const ml_gguf *g, const char *pre) {
  char path[] = "/tmp/moonlm-fuzz-vocab-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  close(fd);
  ml_gguf_writer *w = ml_gguf_writer_new();
  for (uint64_t i = 0; i < g->n_kv; i++) {
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)g->kv[i].key.len, g->kv[i].key.s);
    ml_gguf_set_value(w, key, &g->kv[i].value);
  }
  ml_gguf_set_str(w, "tokenizer.ggml.pre", pre, strlen(pre));
  int rc = ml_gguf_writer_write(w, path);
  ml_gguf_writer_free(w);
  ml_gguf *g2 = rc == 0 ? ml_gguf_open(path, ML_GGUF_NO_TENSORS) : NULL;
  unlink(path);
  ml_vocab *v = g2 ? ml_vocab_load(g2) : NULL;
  ml_gguf_release(g2);
  return v;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *dir = getenv("MOONLM_SHARED");
  if (!dir) dir = "../shared";
  static const char *const files[] = {
    "tokenizer/ggml-vocab-llama-spm.gguf", "tokenizer/ggml-vocab-phi-3.gguf",
    "tokenizer/ggml-vocab-gpt-2.gguf", "tokenizer/ggml-vocab-llama-bpe.gguf",
    "tokenizer/ggml-vocab-qwen2.gguf", "models/stories260K.gguf", "ref-arch/bert-f32.gguf"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    ml_gguf *g = ml_gguf_open(path, ML_GGUF_NO_TENSORS);
    add_vocab(g ? ml_vocab_load(g) : NULL, path);
    if (g && strstr(files[i], "gpt-2")) {
      static const char *const pres[] = {"default", "falcon", "starcoder", "deepseek-llm", "deepseek-coder",
                                         "deepseek-v3", "gpt-4o"};
      for (size_t j = 0; j < sizeof pres / sizeof pres[0]; j++) add_vocab(relabel(g, pres[j]), pres[j]);
    }
    ml_gguf_release(g);
  }
  return 0;
}

static int valid_utf8(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    int r = ml_utf8_check((const uint8_t *)s + i, n - i);
    if (r <= 0) return 0;
    i += (size_t)r;
  }
  return 1;
}

/* What detokenizing the tokens of s should give: s, or its NFC form. */
static char *expected(const ml_vocab *v, const uint8_t *s, size_t n, size_t *len) {
  char *out = malloc(4 * n + 1);
  if (!ml_vocab_get_info(v)->nfc) {
    memcpy(out, s, n);
    *len = n;
    return out;
  }
  uint32_t *cp = malloc((n + 1) * 4), *cp2 = malloc((4 * n + 1) * 4);
  size_t k = 0, j = 0;
  for (size_t i = 0; i < n; k++) i += ml_utf8_decode(s + i, n - i, &cp[k]);
  size_t k2 = ml_nfc(cp, k, cp2);
  for (size_t i = 0; i < k2; i++) j += ml_utf8_encode(cp2[i], (uint8_t *)out + j);
  free(cp);
  free(cp2);
  *len = j;
  return out;
}

static int32_t *tokenize(const ml_vocab *v, const uint8_t *s, size_t n, int bos, int eos, int special,
                         int64_t small, int64_t *count) {
  int64_t r = ml_vocab_tokenize(v, (const char *)s, n, bos, eos, special, NULL, 0);
  EXPECT(r != ML_TOK_ERROR && r <= 0);
  int64_t need = -r;
  int32_t *ids = malloc((size_t)(need + 1) * sizeof *ids);
  if (small < need) { /* a too-small buffer reports the same need */
    EXPECT(ml_vocab_tokenize(v, (const char *)s, n, bos, eos, special, ids, small) == -need);
  }
  EXPECT(ml_vocab_tokenize(v, (const char *)s, n, bos, eos, special, ids, need) == need);
  for (int64_t i = 0; i < need; i++) EXPECT(ids[i] >= 0 && ids[i] < ml_vocab_get_info(v)->n_tokens);
  *count = need;
  return ids;
}

static char *detokenize(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, size_t small, size_t *len) {
  int64_t r = ml_vocab_detokenize(v, ids, n, flags, NULL, 0);
  EXPECT(r != ML_TOK_ERROR && r <= 0);
  size_t need = (size_t)-r;
  char *b = malloc(need + 1);
  if (small < need) {
    int64_t r2 = ml_vocab_detokenize(v, ids, n, flags, b, small);
    EXPECT(r2 == -(int64_t)need);
  }
  r = ml_vocab_detokenize(v, ids, n, flags, b, need);
  EXPECT(r >= 0 && (size_t)r <= need);
  *len = (size_t)r;
  return b;
}

/* Stream ids through a decoder; every chunk must be valid UTF-8. */
static char *stream(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, size_t *len) {
  ml_decoder *d = ml_decoder_new(v, flags);
  EXPECT(d);
  size_t cap = 16, m = 0;
  char *b = malloc(cap);
  for (int64_t i = 0; i <= n; i++) {
    const char *p;
    int64_t r = i < n ? ml_decoder_push(d, ids[i], &p) : ml_decoder_flush(d, &p);
    EXPECT(r >= 0);
    EXPECT(valid_utf8(p, (size_t)r));
    if (m + (size_t)r > cap) b = realloc(b, cap = 2 * (m + (size_t)r));
    memcpy(b + m, p, (size_t)r);
    m += (size_t)r;
  }
  ml_decoder_free(d);
  *len = m;
  return b;
}

static int has_user_defined(const ml_vocab *v, const int32_t *ids, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (ml_vocab_token_attr(v, ids[i]) & ML_TOKEN_USER_DEFINED) return 1;
  return 0;
}

static void fuzz_text(int vi, uint8_t opt, const uint8_t *s, size_t n) {
  const ml_vocab *v = vocabs[vi];
  const ml_vocab_info *in = ml_vocab_get_info(v);
  int special = opt & 1, bos = (opt >> 1) & 1, eos = (opt >> 2) & 1;
  int64_t k;
  int32_t *ids = tokenize(v, s, n, bos, eos, special, (opt >> 3) & 7, &k);

  /* round trip: plain text always; specials too where no token eats white space */
  size_t el, dl, sl;
  char *exp = expected(v, s, n, &el);
  int flags = ML_DETOK_STRIP_SPACE | (special ? ML_DETOK_SPECIAL : 0);
  int lead = bos && in->bos >= 0, trail = eos && in->eos >= 0; /* the ids added around the text */
  char *dt = detokenize(v, ids + lead, k - lead - trail, flags, (opt >> 5) & 7, &dl);
  /* WordPiece lower-cases, strips accents and drops white space: no round trip */
  if (in->type != ML_VOCAB_WPM && (!special || (!strips[vi] && !in->nfc))) {
    if (in->nfc && has_user_defined(v, ids, k)) {
      /* user-defined tokens are matched before normalising, as the reference does, so NFC
       * applies to the text between them: only the text's NFC form is the same */
      size_t nl;
      char *nd = expected(v, (const uint8_t *)dt, dl, &nl);
      EXPECT(nl == el && memcmp(nd, exp, el) == 0);
      free(nd);
    } else {
      EXPECT(dl == el && memcmp(dt, exp, el) == 0);
    }
  }
  char *sm = stream(v, ids + lead, k - lead - trail, flags, &sl);
  if (valid_utf8(dt, dl)) EXPECT(sl == dl && memcmp(sm, dt, dl) == 0);
  free(exp);
  free(dt);
  free(sm);

  /* every flag combination and piece on these ids: no crash, consistent sizes */
  for (int f = 0; f < 16; f++) free(detokenize(v, ids, k, f, (size_t)f, &dl));
  for (int64_t i = 0; i < k && i < 64; i++) {
    char buf[8];
    int64_t a = ml_vocab_piece(v, ids[i], opt & 1, NULL, 0), b = ml_vocab_piece(v, ids[i], opt & 1, buf, sizeof buf);
    EXPECT(a <= 0 && (b == -a || b == a));
  }
  free(ids);

  /* the input's bytes as arbitrary ids: the stream stays valid UTF-8 */
  int64_t m = (int64_t)(n / 3);
  ids = malloc((size_t)(m + 1) * sizeof *ids);
  for (int64_t i = 0; i < m; i++)
    ids[i] = (int32_t)((s[3 * i] | s[3 * i + 1] << 8 | (uint32_t)s[3 * i + 2] << 16) % (uint32_t)in->n_tokens);
  free(stream(v, ids, m, opt & 5, &sl));
  free(detokenize(v, ids, m, opt & 15, 0, &dl));
  EXPECT(ml_vocab_detokenize(v, (int32_t[]){in->n_tokens}, 1, 0, NULL, 0) == ML_TOK_ERROR);
  free(ids);
}

/* ---- load mode: a GGUF written in memory ---- */

typedef struct wbuf {
  uint8_t *p;
  size_t n, cap;
} wbuf;

static void put_bytes(wbuf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) b->p = realloc(b->p, b->cap = 2 * (b->n + n) + 64);
  memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void put_u32(wbuf *b, uint32_t x) { put_bytes(b, &x, 4); }
static void put_u64(wbuf *b, uint64_t x) { put_bytes(b, &x, 8); }
static void put_str(wbuf *b, const void *s, size_t n) {
  put_u64(b, n);
  put_bytes(b, s, n);
}
static void put_key(wbuf *b, const char *k, uint32_t type) {
  put_str(b, k, strlen(k));
  put_u32(b, type);
}

typedef struct reader {
  const uint8_t *p;
  size_t n;
} reader;

static uint8_t rd8(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

/* The next item: bytes up to a 0xFF separator (at most 24). */
static size_t rditem(reader *r, const uint8_t **s) {
  size_t k = 0;
  *s = r->p;
  while (k < r->n && k < 24 && r->p[k] != 0xFF) k++;
  size_t used = k < r->n ? k + 1 : k;
  r->p += used;
  r->n -= used;
  return k;
}

static void fuzz_load(uint8_t opt, const uint8_t *data, size_t size) {
  static const char *const models[] = {"llama", "gpt2", "bert", ""};
  static const char *const pres[] = {"default", "gpt-2", "llama-bpe", "qwen2", "falcon", "starcoder",
                                     "deepseek-llm", "deepseek-coder", "smollm", "mpt", "refact", "x"};
  reader r = {data, size};
  wbuf b = {0};
  uint64_t n_kv = 0;
  put_bytes(&b, "GGUF", 4);
  put_u32(&b, 3);
  put_u64(&b, 0);
  size_t nkv_at = b.n;
  put_u64(&b, 0);

  const char *model = models[opt & 3];
  put_key(&b, "tokenizer.ggml.model", ML_GGUF_STRING);
  put_str(&b, model, strlen(model));
  n_kv++;
  if (opt & 4) {
    const char *pre = pres[rd8(&r) % (sizeof pres / sizeof pres[0])];
    put_key(&b, "tokenizer.ggml.pre", ML_GGUF_STRING);
    put_str(&b, pre, strlen(pre));
    n_kv++;
  }
  uint32_t nt = rd8(&r) % 48 + (opt & 8 ? 0 : 1);
  put_key(&b, "tokenizer.ggml.tokens", ML_GGUF_ARRAY);
  put_u32(&b, ML_GGUF_STRING);
  put_u64(&b, nt + (opt & 16 ? 256 : 0));
  for (uint32_t i = 0; i < nt; i++) {
    const uint8_t *s;
    size_t k = rditem(&r, &s);
    put_str(&b, s, k);
  }
  if (opt & 16) /* byte tokens, in whichever spelling the model uses */
    for (int i = 0; i < 256; i++) {
      char t[8];
      uint8_t u[4];
      if (opt & 1) put_str(&b, u, ml_utf8_encode(i < 33 ? 256u + (uint32_t)i : (uint32_t)i, u));
      else put_str(&b, t, (size_t)snprintf(t, sizeof t, "<0x%02X>", i));
    }
  nt += opt & 16 ? 256 : 0;
  n_kv++;
  uint8_t what = rd8(&r);
  if (what & 1) { /* scores, maybe of the wrong length */
    uint32_t ns = nt + (what & 2 ? rd8(&r) % 3 : 0);
    put_key(&b, "tokenizer.ggml.scores", ML_GGUF_ARRAY);
    put_u32(&b, ML_GGUF_FLOAT32);
    put_u64(&b, ns);
    for (uint32_t i = 0; i < ns; i++) {
      float f = (float)(int8_t)rd8(&r) / 4.0f;
      put_bytes(&b, &f, 4);
    }
    n_kv++;
  }
  if (what & 4) { /* token types */
    uint32_t ns = nt - (nt && (what & 8) ? 1 : 0);
    put_key(&b, "tokenizer.ggml.token_type", ML_GGUF_ARRAY);
    put_u32(&b, what & 16 ? ML_GGUF_STRING : ML_GGUF_INT32);
    put_u64(&b, ns);
    for (uint32_t i = 0; i < ns; i++) {
      if (what & 16) put_str(&b, "x", 1);
      else put_u32(&b, rd8(&r) % 8);
    }
    n_kv++;
  }
  if (what & 32) { /* merges */
    uint32_t nm = rd8(&r) % 32;
    put_key(&b, "tokenizer.ggml.merges", ML_GGUF_ARRAY);
    put_u32(&b, ML_GGUF_STRING);
    put_u64(&b, nm);
    for (uint32_t i = 0; i < nm; i++) {
      const uint8_t *s;
      size_t k = rditem(&r, &s);
      put_str(&b, s, k);
    }
    n_kv++;
  }
  static const char *const ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
                                    "tokenizer.ggml.padding_token_id"};
  uint8_t which = rd8(&r);
  for (int i = 0; i < 5; i++)
    if (which & (1 << i)) {
      uint8_t x = rd8(&r);
      put_key(&b, ids[i], x & 1 ? ML_GGUF_UINT32 : ML_GGUF_STRING);
      if (x & 1) put_u32(&b, x == 0xFF ? 0xFFFFFFFFu : (uint32_t)(x >> 1) % (nt + 2));
      else put_str(&b, "1", 1);
      n_kv++;
    }
  if (which & 0x20) {
    put_key(&b, "tokenizer.ggml.add_bos_token", ML_GGUF_BOOL);
    uint8_t t = rd8(&r) & 1;
    put_bytes(&b, &t, 1);
    n_kv++;
  }
  if (which & 0x40) {
    put_key(&b, "tokenizer.ggml.add_space_prefix", ML_GGUF_BOOL);
    uint8_t t = rd8(&r) & 1;
    put_bytes(&b, &t, 1);
    n_kv++;
  }
  memcpy(b.p + nkv_at, &n_kv, 8);

  ml_gguf *g = ml_gguf_from_memory(b.p, b.n, ML_GGUF_NO_TENSORS);
  ml_vocab *v = g ? ml_vocab_load(g) : NULL;
  ml_gguf_release(g); /* the vocab keeps its own reference */
  if (!v) {
    EXPECT(ml_errmsg()[0]);
  } else {
    const ml_vocab_info *in = ml_vocab_get_info(v);
    EXPECT(in->n_tokens == (int32_t)nt);
    for (int s = 0; s < 2; s++) {
      int64_t k;
      int32_t *t = tokenize(v, r.p, r.n, -1, -1, s, 1, &k);
      size_t dl;
      free(detokenize(v, t, k, ML_DETOK_SPECIAL | ML_DETOK_STRIP_SPACE, 0, &dl));
      free(stream(v, t, k, ML_DETOK_SPECIAL, &dl));
      free(t);
    }
    ml_vocab_free(v);
  }
  free(b.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t sel = data[0], opt = data[1];
  if (sel >= 0xE0) fuzz_load(opt, data + 2, size - 2);
  else fuzz_text(sel % n_vocabs, opt, data + 2, size - 2);
  return 0;
}
