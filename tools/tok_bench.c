/* tok_bench.c: tokenizer throughput and vocabulary load time.
 *
 *   tok_bench [SHARED_DIR]      (default: $MOONLM_SHARED, else ../shared)
 *
 * Builds about 1 MB of mixed text deterministically (English prose, C and Python code,
 * Chinese and Japanese, and the llama-bpe test strings), tokenizes it single-threaded with
 * each vocabulary (best of 5) and prints MB/s, for one call over the whole text and for
 * calls of 4 KB (below the size where the per-call word cache starts, so every word is
 * merged from scratch); then times loading the qwen2 vocabulary (151,936 tokens, 151,387
 * merges): opening the GGUF and building the tokenizer.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "gguf.h"
#include "tokenizer.h"

static const char *const english[] = {
  "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps "
  "as his father had taught him: one hundred and twelve, no more and no less. ",
  "Markets opened lower on Tuesday after the central bank said it would keep interest rates "
  "unchanged for the third consecutive meeting, citing persistent inflation in services. ",
  "She didn't know whether the train would arrive on time; the board said 7:45, but it had "
  "said that for the last twenty minutes. \"We'll see,\" she muttered, and opened her book.\n",
  "In 1969, roughly 650 million people watched the first Moon landing on television. The "
  "Apollo 11 crew spent about 21.5 hours on the lunar surface before returning to orbit.\n\n",
  "Preheat the oven to 220 C. Mix 500 g of flour, 10 g of salt and 7 g of dry yeast; add "
  "350 ml of warm water and knead for ten minutes until the dough is smooth and elastic. ",
};

static const char *const code[] = {
  "static int sum(const int *a, size_t n) {\n    int s = 0;\n    for (size_t i = 0; i < n; i++)\n"
  "        s += a[i];\n    return s;\n}\n\n",
  "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
  "print([fibonacci(i) for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
  "local function map(t, f)\n  local r = {}\n  for i, v in ipairs(t) do r[i] = f(v) end\n  return r\nend\n",
  "<div class=\"card\"><h2>{{ title }}</h2><p>{{ body | escape }}</p></div>\n",
  "SELECT name, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;\n",
};

static const char *const cjk[] = {
  "今天的天气很好，我们一起去公园散步吧。小明说他想吃冰淇淋，但是妈妈说要先吃午饭。",
  "机器学习是人工智能的一个分支，它使计算机能够从数据中学习而无需明确编程。",
  "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。桜の季節には多くの観光客が訪れます。",
  "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
  "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.",
};

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

static char *read_all(const char *path, size_t *len) {
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

/* About `target` bytes of mixed text. */
static char *make_text(const char *dir, size_t target, size_t *len) {
  char path[1024];
  size_t il = 0;
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-llama-bpe.gguf.inp", dir);
  char *inp = read_all(path, &il); /* the test strings, separators and all */
  char *t = malloc(target + 8192);
  size_t n = 0;
  while (n < target) {
    uint32_t r = rnd(100);
    const char *s;
    char num[32];
    if (r < 50) s = english[rnd(5)];
    else if (r < 75) s = code[rnd(5)];
    else if (r < 90) s = cjk[rnd(5)];
    else if (inp && il > 512) {
      size_t a = rnd((uint32_t)(il - 512)), l = 64 + rnd(448);
      memcpy(t + n, inp + a, l);
      n += l;
      continue;
    } else s = english[0];
    size_t l = strlen(s);
    memcpy(t + n, s, l);
    n += l;
    if (rnd(4) == 0) n += (size_t)snprintf(num, sizeof num, "%u ", rnd(100000)), memcpy(t + n - strlen(num), num, strlen(num));
  }
  free(inp);
  *len = n;
  return t;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static ml_vocab *load(const char *dir, const char *name, double *t_open, double *t_vocab) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf", dir, name);
  double t0 = now();
  ml_gguf *g = ml_gguf_open(path, ML_GGUF_NO_TENSORS);
  double t1 = now();
  ml_vocab *v = g ? ml_vocab_load(g) : NULL;
  double t2 = now();
  ml_gguf_release(g);
  if (!v) fprintf(stderr, "%s: %s\n", name, ml_errmsg());
  if (t_open) *t_open = t1 - t0;
  if (t_vocab) *t_vocab = t2 - t1;
  return v;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : getenv("MOONLM_SHARED");
  if (!dir) dir = "../shared";
  size_t n;
  char *text = make_text(dir, 1 << 20, &n);
  int32_t *ids = malloc(n * sizeof *ids);
  printf("text: %zu bytes of English, code, CJK and test strings\n", n);
  static const char *const names[] = {"gpt-2", "llama-spm", "llama-bpe", "qwen2"};
  int status = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    ml_vocab *v = load(dir, names[i], NULL, NULL);
    if (!v) {
      status = 1;
      continue;
    }
    /* one call for the whole text; then calls of under 4 KB, where the per-call piece
     * cache is off, so every word is merged again (the worst case) */
    double best = 1e9, best_small = 1e9;
    int64_t k = 0, k2 = 0;
    for (int rep = 0; rep < 5; rep++) {
      double t0 = now();
      k = ml_vocab_tokenize(v, text, n, 0, 0, 0, ids, (int64_t)n);
      double t1 = now();
      k2 = 0;
      for (size_t a = 0; a < n; a += 4000) {
        int64_t r = ml_vocab_tokenize(v, text + a, ML_MIN((size_t)4000, n - a), 0, 0, 0, ids, (int64_t)n);
        k2 += r > 0 ? r : 0;
      }
      double t2 = now();
      if (t1 - t0 < best) best = t1 - t0;
      if (t2 - t1 < best_small) best_small = t2 - t1;
    }
    printf("%-10s %8lld tokens  %6.1f MB/s  %5.0f ns/token   in 4 KB calls: %6.1f MB/s\n", names[i],
           (long long)k, (double)n / best / 1e6, best * 1e9 / (double)k, (double)n / best_small / 1e6);
    (void)k2;
    ml_vocab_free(v);
  }
  double best_open = 1e9, best_vocab = 1e9;
  for (int rep = 0; rep < 5; rep++) {
    double to, tv;
    ml_vocab *v = load(dir, "qwen2", &to, &tv);
    ml_vocab_free(v);
    if (to < best_open) best_open = to;
    if (tv < best_vocab) best_vocab = tv;
  }
  printf("qwen2 load: GGUF open %.1f ms + vocab build %.1f ms = %.1f ms (best of 5)\n", best_open * 1e3,
         best_vocab * 1e3, (best_open + best_vocab) * 1e3);
  free(ids);
  free(text);
  return status;
}
