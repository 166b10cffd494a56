/* fuzz/grammar.c: libFuzzer harness for the grammar engine: the GBNF and regex parsers,
 * the compiler under its budget, and then matchers and masks on what compiles.
 *
 * Input: one mode byte (GBNF, regex, or a choice of the lines), the grammar text, and after
 * a 0xFF byte the text to feed. Over a small vocabulary (every byte, some multi-byte
 * tokens, partial UTF-8, an end token) the text is fed one byte token at a time; at each
 * step every token's mask bit must equal the per-token check (allows), an allowed token
 * must be accepted and a refused one refused with the state unchanged. Then the whole
 * history is rolled back and the first mask must come back. A refused grammar must leave a
 * message. ASan/UBSan catch the rest.
 *
 * Build: make fuzz (build/fuzz/grammar)
 * Run:   mkdir -p /tmp/grammar-corpus && build/fuzz/grammar -rss_limit_mb=2048 -malloc_limit_mb=1024 \
 *          -max_len=4096 -max_total_time=600 /tmp/grammar-corpus fuzz/seeds/grammar
 */
#include "common.h"
#include "grammar.h"

#include <stdlib.h>
#include <string.h>

#define EXPECT(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The registry is not part of this harness: grammars simply get no handle. */
struct ml_grammar;
int ml_registry_add_grammar(struct ml_grammar *g);
void ml_registry_forget(const void *obj);
int ml_registry_add_grammar(struct ml_grammar *g) { return (void)g, 0; }
void ml_registry_forget(const void *obj) { (void)obj; }
/* nor the kernel dispatch: the portable paths */
#include "kernels/dispatch.h"
ml_level ml_level_active(void) { return ML_LEVEL_REF; }

static const char *const EXTRA[] = {"ab", "abc", "\"", "\":", "{\"", "\n  ", "12", "true", "\xC3", "\xC3\xA9",
                                    "\xE3\x81", "\xF0\x9F\x98\x80", "ab" /* a duplicate */, "a\"b", "0.5e"};
#define N_EXTRA (sizeof EXTRA / sizeof EXTRA[0])
#define N_TOK (256 + N_EXTRA + 1)

static ml_gvocab *vocab(void) {
  static ml_gvocab *v;
  if (!v) {
    const char *toks[N_TOK];
    size_t lens[N_TOK];
    static char bytes[256];
    for (int b = 0; b < 256; b++) bytes[b] = (char)b, toks[b] = &bytes[b], lens[b] = 1;
    for (size_t i = 0; i < N_EXTRA; i++) toks[256 + i] = EXTRA[i], lens[256 + i] = strlen(EXTRA[i]);
    toks[N_TOK - 1] = "<eos>";
    lens[N_TOK - 1] = 5;
    int32_t eog = N_TOK - 1;
    v = ml_gvocab_from_tokens(toks, lens, N_TOK, &eog, 1);
    EXPECT(v);
  }
  return v;
}

static int bit(const uint64_t *m, int32_t i) { return (int)((m[i >> 6] >> (i & 63)) & 1); }

static void check_mask(ml_matcher *m) {
  const uint64_t *mask = ml_matcher_mask(m);
  if (!mask) return; /* a budget: allowed to fail, with a message */
  for (int32_t t = 0; t < (int32_t)N_TOK; t++) {
    int a = ml_matcher_allows(m, t);
    if (a < 0) return;
    EXPECT(a == bit(mask, t));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int mode = data[0] % 3;
  const char *text = (const char *)data + 1;
  size_t n = size - 1, glen = n;
  const uint8_t *sep = memchr(text, 0xFF, n);
  if (sep) glen = (size_t)((const char *)sep - text);
  const char *feed = sep ? (const char *)sep + 1 : NULL;
  size_t nfeed = sep ? n - glen - 1 : 0;

  ml_grammar *g = NULL;
  if (mode == 0) {
    g = ml_grammar_gbnf(text, glen, NULL);
  } else if (mode == 1) {
    g = ml_grammar_regex(text, glen);
  } else {
    const char *items[64];
    size_t lens[64], k = 0, start = 0;
    for (size_t i = 0; i <= glen && k < 64; i++)
      if (i == glen || text[i] == '\n') {
        items[k] = text + start;
        lens[k++] = i - start;
        start = i + 1;
      }
    g = ml_grammar_choice(items, lens, k);
  }
  if (!g) {
    EXPECT(ml_errmsg()[0]);
    return 0;
  }
  ml_grammar_stats st;
  ml_grammar_get_stats(g, &st);
  EXPECT(st.n_states >= 1 && st.n_machines >= 1); /* states made so far: at least the start */
  ml_matcher *m = ml_matcher_new(g, vocab(), NULL);
  ml_grammar_release(g); /* the matcher keeps it */
  if (!m) return 0;
  uint64_t first[(N_TOK + 63) / 64 + 1];
  const uint64_t *m0 = ml_matcher_mask(m);
  int have_first = m0 != NULL;
  if (m0) memcpy(first, m0, sizeof first - sizeof first[0]);
  check_mask(m);
  char forced[64];
  size_t nf = ml_matcher_forced(m, forced, sizeof forced);
  EXPECT(nf <= sizeof forced);
  int32_t steps = 0;
  for (size_t i = 0; i < nfeed && i < 64; i++) {
    int32_t t = (uint8_t)feed[i];
    int allowed = ml_matcher_allows(m, t);
    int acc = ml_matcher_accept(m, t);
    if (allowed < 0 || acc < 0) break;
    EXPECT(allowed == acc);
    if (!acc) break;
    steps++;
    check_mask(m);
    if (ml_matcher_is_done(m)) EXPECT(ml_matcher_can_end(m));
  }
  EXPECT(ml_matcher_n_accepted(m) == steps);
  EXPECT(ml_matcher_rollback(m, steps) == 0);
  if (have_first) {
    const uint64_t *again = ml_matcher_mask(m);
    if (again) EXPECT(memcmp(again, first, sizeof first - sizeof first[0]) == 0);
  }
  ml_matcher_free(m);
  return 0;
}
