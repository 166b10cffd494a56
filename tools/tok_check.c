/* tok_check.c: run every shared tokenizer case and report.
 *
 *   tok_check [SHARED_DIR]      (default: $MOONLM_SHARED, else ../shared)
 *
 * For each vocab in SHARED/tokenizer (ggml-vocab-NAME.gguf with .inp/.out):
 *   - tokenize each test string (add_bos 0, parse_special 0) and compare with the .out ids;
 *   - detokenize the ids (dummy-prefix space stripped) and compare with the input (NFC of
 *     the input for vocabs that normalize);
 *   - push the ids through the streaming decoder and compare with the same text;
 *   - round-trip 2000 random strings (mixed scripts, emoji, white space, some invalid UTF-8),
 *     and stream the valid ones;
 *   - tokenize the cases from 4 threads at once with the one vocab: same ids.
 * Then the stories260K examples of SHARED/models/README.md (with BOS).
 * Prints per-vocab counts and the first mismatch in detail; exits 1 on any failure.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "unicode.h"

#define SEP "\n__ggml_vocab_test__\n"

static int failures;

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  fclose(f);
  if (b) b[n] = 0;
  *len = (size_t)n;
  return b;
}

static void print_repr(const char *s, size_t n) {
  putchar('"');
  for (size_t i = 0; i < n && i < 200; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n') printf("\\n");
    else if (c == '\t') printf("\\t");
    else if (c == '\r') printf("\\r");
    else if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
    else putchar(c);
  }
  printf(n > 200 ? "\"..." : "\"");
}

static void print_ids(const ml_vocab *v, const int32_t *ids, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    size_t len;
    const char *t = ml_vocab_token_text(v, ids[i], &len);
    printf(" %d", ids[i]);
    if (t) {
      putchar('(');
      print_repr(t, len);
      putchar(')');
    }
  }
  putchar('\n');
}

/* Tokenize into a growing buffer. Returns the count or -1. */
static int64_t tokenize(const ml_vocab *v, const char *s, size_t n, int bos, int special, int32_t **ids) {
  int64_t cap = 8, r;
  for (;;) {
    int32_t *p = realloc(*ids, (size_t)cap * sizeof **ids);
    if (!p) return -1;
    *ids = p;
    r = ml_vocab_tokenize(v, s, n, bos, 0, special, *ids, cap);
    if (r == ML_TOK_ERROR) {
      printf("  tokenize error: %s\n", ml_errmsg());
      return -1;
    }
    if (r >= 0) return r;
    cap = -r;
  }
}

static char *detok(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, size_t *len) {
  int64_t r = ml_vocab_detokenize(v, ids, n, flags, NULL, 0);
  if (r == ML_TOK_ERROR) return NULL;
  size_t cap = (size_t)(r < 0 ? -r : r) + 1;
  char *b = malloc(cap);
  r = ml_vocab_detokenize(v, ids, n, flags, b, cap);
  if (r < 0) {
    free(b);
    return NULL;
  }
  *len = (size_t)r;
  return b;
}

static char *stream(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, size_t *len) {
  ml_decoder *d = ml_decoder_new(v, flags);
  size_t cap = 64, m = 0;
  char *b = malloc(cap);
  const char *p;
  for (int64_t i = 0; i <= n; i++) {
    int64_t r = i < n ? ml_decoder_push(d, ids[i], &p) : ml_decoder_flush(d, &p);
    if (r < 0) break;
    if (m + (size_t)r + 1 > cap) b = realloc(b, cap = 2 * (m + (size_t)r + 1));
    memcpy(b + m, p, (size_t)r);
    m += (size_t)r;
  }
  ml_decoder_free(d);
  *len = m;
  return b;
}

/* The text detokenizing should give back for input s: s itself, or its NFC form. */
static char *expected_text(const ml_vocab *v, const char *s, size_t n, size_t *len) {
  char *out = malloc(4 * n + 1);
  if (!ml_vocab_get_info(v)->nfc) {
    memcpy(out, s, n);
    *len = n;
    return out;
  }
  uint32_t *cp = malloc((n + 1) * 4), *cp2 = malloc((4 * n + 1) * 4);
  size_t k = 0, j = 0;
  for (size_t i = 0; i < n; k++) i += ml_utf8_decode((const uint8_t *)s + i, n - i, &cp[k]);
  size_t k2 = ml_nfc(cp, k, cp2);
  for (size_t i = 0; i < k2; i++) j += ml_utf8_encode(cp2[i], (uint8_t *)out + j);
  free(cp);
  free(cp2);
  *len = j;
  return out;
}

typedef struct stats {
  int cases, tok_ok, detok_ok, stream_ok, rand_ok, rand_n, rstream_ok, rstream_n, nfc_changed;
} stats;

/* Threads: each tokenizes every case `reps` times and compares with the expected ids. */
typedef struct job {
  const ml_vocab *v;
  const char *inp, *out;
  size_t il;
  int reps, bad;
} job;

static void *thread_main(void *arg) {
  job *j = arg;
  int32_t *ids = NULL, exp[4096];
  for (int r = 0; r < j->reps; r++) {
    const char *ip = j->inp, *op = j->out, *iend = j->inp + j->il;
    while (ip < iend) {
      const char *sep = strstr(ip, SEP), *eol = strchr(op, '\n');
      if (!sep || !eol) break;
      int ne = 0;
      for (const char *q = op; q < eol;) {
        char *e;
        long x = strtol(q, &e, 10);
        if (e == q) break;
        exp[ne++] = (int32_t)x;
        q = e;
      }
      int64_t k = tokenize(j->v, ip, (size_t)(sep - ip), 0, 0, &ids);
      j->bad += !(k == ne && memcmp(ids, exp, (size_t)ne * 4) == 0);
      ip = sep + strlen(SEP);
      op = eol + 1;
    }
  }
  free(ids);
  return NULL;
}

static int check_threads(const ml_vocab *v, const char *inp, size_t il, const char *out) {
  enum { NT = 4 };
  pthread_t th[NT];
  job jobs[NT];
  int bad = 0;
  for (int i = 0; i < NT; i++) {
    jobs[i] = (job){v, inp, out, il, 20, 0};
    if (pthread_create(&th[i], NULL, thread_main, &jobs[i]) != 0) return -1;
  }
  for (int i = 0; i < NT; i++) {
    pthread_join(th[i], NULL);
    bad += jobs[i].bad;
  }
  return bad;
}

static void check_roundtrip(const ml_vocab *v, const char *s, size_t n, const int32_t *ids, int64_t k,
                            stats *st, int *detok_ok, int *stream_ok, int show) {
  size_t el, dl, sl;
  char *exp = expected_text(v, s, n, &el);
  char *dt = detok(v, ids, k, ML_DETOK_STRIP_SPACE, &dl);
  char *sm = stream(v, ids, k, ML_DETOK_STRIP_SPACE, &sl);
  *detok_ok = dt && dl == el && memcmp(dt, exp, el) == 0;
  *stream_ok = sm && sl == el && memcmp(sm, exp, el) == 0;
  if (show && !*detok_ok) {
    printf("  round trip differs for ");
    print_repr(s, n);
    printf("\n    detokenized ");
    if (dt) print_repr(dt, dl);
    printf("\n    expected    ");
    print_repr(exp, el);
    printf("\n");
  }
  (void)st;
  free(exp);
  free(dt);
  free(sm);
}

/* Deterministic random text: ASCII words, white space runs, digits, punctuation, Latin,
 * Cyrillic, Greek, CJK, Hangul, Khmer, combining marks, emoji with ZWJ, and now and then a
 * stray byte that is not UTF-8. */
static uint64_t rng = 0x243F6A8885A308D3ull;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

static size_t random_text(char *buf, int allow_invalid) {
  static const uint32_t pools[][2] = {
    {'a', 'z'}, {'A', 'Z'}, {'0', '9'}, {' ', ' '}, {'!', '/'}, {0xC0, 0x17F}, {0x391, 0x3C9},
    {0x410, 0x44F}, {0x4E00, 0x4FFF}, {0xAC00, 0xAD00}, {0x1780, 0x17B3}, {0x300, 0x36F},
    {0x1F600, 0x1F64F}, {0x3040, 0x309F}, {0x600, 0x64A}, {0x900, 0x97F}, {0x2000, 0x206F},
  };
  size_t n = 0, want = rnd(40);
  for (size_t i = 0; i < want; i++) {
    uint32_t r = rnd(100), cp;
    if (r < 40) cp = 'a' + rnd(26);
    else if (r < 50) cp = " \n\t\r"[rnd(r < 47 ? 1 : 4)];
    else if (r < 53) cp = 0x200D;
    else {
      int p = (int)rnd(sizeof pools / sizeof pools[0]);
      cp = pools[p][0] + rnd(pools[p][1] - pools[p][0] + 1);
    }
    if (allow_invalid && rnd(50) == 0) {
      buf[n++] = (char)(0x80 + rnd(0x80));
      continue;
    }
    n += ml_utf8_encode(cp, (uint8_t *)buf + n);
  }
  return n;
}

static void check_vocab(const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf", dir, name);
  ml_gguf *g = ml_gguf_open(path, ML_GGUF_NO_TENSORS);
  if (!g) {
    printf("%-10s cannot open %s: %s\n", name, path, ml_errmsg());
    failures++;
    return;
  }
  ml_vocab *v = ml_vocab_load(g);
  ml_gguf_release(g);
  if (!v) {
    printf("%-10s load failed: %s\n", name, ml_errmsg());
    failures++;
    return;
  }
  size_t il, ol;
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf.inp", dir, name);
  char *inp = read_file(path, &il);
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf.out", dir, name);
  char *out = read_file(path, &ol);
  if (!inp || !out) {
    printf("%-10s missing .inp/.out\n", name);
    failures++;
    free(inp);
    free(out);
    ml_vocab_free(v);
    return;
  }
  stats st = {0};
  int32_t *ids = NULL, exp[4096];
  char *ip = inp, *op = out, *iend = inp + il;
  int shown = 0, rt_shown = 0;
  char nocases[256] = "", nfc_cases[256] = "";
  while (ip < iend) {
    char *sep = strstr(ip, SEP), *eol = strchr(op, '\n');
    if (!sep || !eol) break;
    size_t n = (size_t)(sep - ip);
    int ne = 0;
    for (char *q = op; q < eol;) {
      char *e;
      long x = strtol(q, &e, 10);
      if (e == q) break;
      exp[ne++] = (int32_t)x;
      q = e;
    }
    int64_t k = tokenize(v, ip, n, 0, 0, &ids);
    int ok = k == ne && memcmp(ids, exp, (size_t)ne * 4) == 0;
    st.tok_ok += ok;
    if (!ok && !shown++) {
      printf("  first mismatch, case %d: ", st.cases);
      print_repr(ip, n);
      printf("\n    expected:");
      print_ids(v, exp, ne);
      printf("    got:     ");
      if (k >= 0) print_ids(v, ids, k);
      else printf(" (error)\n");
    }
    int dok, sok;
    size_t el;
    char *e = expected_text(v, ip, n, &el);
    if (el != n || memcmp(e, ip, n) != 0) {
      st.nfc_changed++;
      snprintf(nfc_cases + strlen(nfc_cases), sizeof nfc_cases - strlen(nfc_cases), " %d", st.cases);
    }
    free(e);
    check_roundtrip(v, ip, n, exp, ne, &st, &dok, &sok, !rt_shown);
    if (!dok) {
      rt_shown = 1;
      snprintf(nocases + strlen(nocases), sizeof nocases - strlen(nocases), " %d", st.cases);
    }
    st.detok_ok += dok;
    st.stream_ok += sok;
    st.cases++;
    ip = sep + strlen(SEP);
    op = eol + 1;
  }
  char buf[512];
  for (int i = 0; i < 2000; i++) {
    size_t n = random_text(buf, i % 2);
    int64_t k = tokenize(v, buf, n, 0, 0, &ids);
    int dok = 0, sok = 0;
    if (k >= 0) {
      size_t dl;
      char *dt = detok(v, ids, k, ML_DETOK_STRIP_SPACE, &dl);
      size_t el;
      char *e = expected_text(v, buf, n, &el);
      dok = dt && dl == el && memcmp(dt, e, el) == 0;
      if (!dok && !rt_shown++) {
        printf("  random round trip differs: ");
        print_repr(buf, n);
        printf("\n    got ");
        if (dt) print_repr(dt, dl);
        printf("\n");
      }
      if (i % 2 == 0) { /* valid UTF-8: the stream gives the same text */
        size_t sl;
        char *sm = stream(v, ids, k, ML_DETOK_STRIP_SPACE, &sl);
        sok = sl == el && memcmp(sm, e, el) == 0;
        st.rstream_ok += sok;
        st.rstream_n++;
        free(sm);
      }
      free(dt);
      free(e);
    }
    st.rand_ok += dok;
    st.rand_n++;
  }
  int thread_bad = check_threads(v, inp, il, out);
  int pass = st.tok_ok == st.cases && st.detok_ok == st.cases && st.stream_ok == st.cases &&
             st.rand_ok == st.rand_n && st.rstream_ok == st.rstream_n && thread_bad == 0;
  if (!pass) failures++;
  printf("%-10s tokenize %d/%d  detokenize %d/%d  stream %d/%d  random: round trip %d/%d stream %d/%d"
         "  4 threads: %s\n",
         name, st.tok_ok, st.cases, st.detok_ok, st.cases, st.stream_ok, st.cases, st.rand_ok, st.rand_n,
         st.rstream_ok, st.rstream_n, thread_bad == 0 ? "same ids" : "DIFFER");
  if (nocases[0]) printf("  no round trip for cases%s\n", nocases);
  if (nfc_cases[0]) printf("  NFC changes the input of cases%s: these round-trip to the NFC form\n", nfc_cases);
  free(ids);
  free(inp);
  free(out);
  ml_vocab_free(v);
}

static void check_stories(const char *dir) {
  static const struct {
    const char *text;
    int32_t ids[16];
    int n;
  } ex[] = {
    {"Once upon a time", {1, 403, 407, 261, 378}, 5},
    {"Lily and Tom went to the park.", {1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433, 426}, 13},
    {"Hello world", {1, 346, 306, 414, 263, 304, 341}, 7},
  };
  char path[1024];
  snprintf(path, sizeof path, "%s/models/stories260K.gguf", dir);
  ml_gguf *g = ml_gguf_open(path, 0);
  ml_vocab *v = g ? ml_vocab_load(g) : NULL;
  ml_gguf_release(g);
  if (!v) {
    printf("stories260K: %s\n", ml_errmsg());
    failures++;
    return;
  }
  int ok = 0, rt = 0, n = (int)(sizeof ex / sizeof ex[0]);
  int32_t *ids = NULL;
  for (int i = 0; i < n; i++) {
    int64_t k = tokenize(v, ex[i].text, strlen(ex[i].text), -1, 0, &ids);
    int good = k == ex[i].n && memcmp(ids, ex[i].ids, (size_t)k * 4) == 0;
    ok += good;
    if (!good) {
      printf("  stories260K mismatch for \"%s\"\n    expected:", ex[i].text);
      print_ids(v, ex[i].ids, ex[i].n);
      printf("    got:     ");
      if (k >= 0) print_ids(v, ids, k);
    }
    size_t dl;
    char *d = detok(v, ids, k, ML_DETOK_STRIP_SPACE | ML_DETOK_REMOVE_SPECIAL, &dl);
    rt += d && dl == strlen(ex[i].text) && memcmp(d, ex[i].text, dl) == 0;
    free(d);
  }
  const ml_vocab_info *in = ml_vocab_get_info(v);
  int facts = in->n_tokens == 512 && in->bos == 1 && in->eos == 2 && in->unk == 0 && in->add_bos == 1 &&
              in->add_eos == 0 && in->sep == -1 && in->pad == -1;
  printf("stories260K tokenize %d/%d  detokenize %d/%d  metadata %s\n", ok, n, rt, n, facts ? "ok" : "WRONG");
  if (ok != n || rt != n || !facts) failures++;
  free(ids);
  ml_vocab_free(v);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : getenv("MOONLM_SHARED");
  if (!dir) dir = "../shared";
  static const char *const names[] = {"llama-spm", "phi-3", "gpt-2", "llama-bpe", "qwen2"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) check_vocab(dir, names[i]);
  check_stories(dir);
  printf(failures ? "FAILED (%d)\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
