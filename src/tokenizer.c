/* tokenizer.c: vocabulary loading, tokenizing (SentencePiece BPE and byte-level BPE) and
 * detokenizing, following llama.cpp's llama-vocab semantics.
 *
 * Layout of the work for one call of ml_vocab_tokenize:
 *   1. special-token partition: the text is cut into raw fragments and special tokens
 *      (longest special first, as llama.cpp's tokenizer_st_partition);
 *   2. SPM fragment: spaces become U+2581, a dummy-prefix "▁" goes in front, then adjacent
 *      symbols (UTF-8 characters at first) merge by best score into vocabulary tokens;
 *      what forms no token falls back to <0xXX> byte tokens;
 *   3. BPE fragment: code points are decoded once (NFC for qwen2), split by the
 *      pre-tokenizer (unicode.c), and each piece is BPE-merged by rank starting from its
 *      bytes, each byte standing for its GPT-2 byte-level character.
 * All state lives in a per-call scratch; the vocabulary is never written after loading.
 */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "unicode.h"

#define KEY(s) "tokenizer.ggml." s
#define MAX_TOKENS (1 << 28)
#define MAX_TEXT ((size_t)1 << 30) /* bytes per tokenize call; indices are 32-bit */

typedef struct tok_slot {
  uint32_t hash;
  int32_t id; /* -1: empty */
} tok_slot;

typedef struct merge_slot {
  uint64_t key;   /* (left id << 32) | right id */
  int32_t rank;   /* -1: empty */
  int32_t result; /* id of left + right */
} merge_slot;

struct ml_vocab {
  ml_vocab_info info;
  ml_gguf *g;                 /* retained: token texts point into its mapping */
  const ml_gguf_str *text;    /* (n_tokens) */
  float *score;               /* (n_tokens) 0 when the file has no scores */
  uint16_t *attr;             /* (n_tokens) ML_TOKEN_* */
  uint8_t *ftype;             /* (n_tokens) token_type as stored */
  tok_slot *tok;              /* text -> id, open addressing, tok_mask + 1 slots */
  uint32_t tok_mask;
  merge_slot *merge;          /* (left, right) -> rank, result; merge_mask + 1 slots */
  uint32_t merge_mask;
  int32_t byte_tok[256];      /* token standing for one byte: BPE its byte-level char, SPM <0xXX> */
  uint8_t byte_enc[256][2];   /* BPE: UTF-8 of the byte-level char of each byte */
  uint8_t byte_enc_len[256];
  int16_t byte_dec[0x144];    /* BPE: byte-level char -> byte, -1 */
  int32_t *special;           /* (n_special) ids of control/user-defined/unknown tokens, longest first */
  int32_t n_special;
  uint32_t sp_first[2][257];  /* sp_by_byte[s][sp_first[s][b] .. sp_first[s][b+1]): indices into */
  int32_t *sp_by_byte[2];     /* special[] of the tokens of set s starting with byte b, by priority */
  uint32_t glue[8];            /* SPM: characters found before "▁" inside tokens (llama: "▁") */
  int n_glue;                  /* -1: too many to list, never split */
  ml_pretok pretok;
  char model[16];
  char pre[48];
};

/* ---- hashing ---- */

static uint64_t mix64(uint64_t x) { /* murmur3's finalizer: every bit reaches the low bits */
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static uint32_t hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 0x9E3779B97F4A7C15ull * (n + 1), x;
  while (n >= 8) {
    memcpy(&x, s, 8);
    h = (h ^ x) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  x = 0;
  if (n) memcpy(&x, s, n);
  return (uint32_t)mix64(h ^ x);
}

static uint32_t table_size(uint64_t n) { /* power of two >= 1.5 n, at least 16 */
  uint32_t s = 16;
  while (s < n + n / 2) s <<= 1;
  return s;
}

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

static int32_t tok_find_h(const ml_vocab *v, const void *s, size_t n, uint32_t h) {
  uint32_t i = h & v->tok_mask;
  for (;;) {
    const tok_slot *e = &v->tok[i];
    if (e->id < 0) return -1;
    if (e->hash == h && v->text[e->id].len == n && memcmp(v->text[e->id].s, s, n) == 0) return e->id;
    i = (i + 1) & v->tok_mask;
  }
}

static int32_t tok_find(const ml_vocab *v, const void *s, size_t n) { return tok_find_h(v, s, n, hash_bytes(s, n)); }

/* Loading looks up hundreds of thousands of strings at random places of the index, of the
 * token table and of the file: a few cache misses each. These two steps bring the lines in
 * for a batch of lookups first, so the misses overlap. */
static void prefetch_slot(const ml_vocab *v, uint32_t h) { PREFETCH(&v->tok[h & v->tok_mask]); }
static void prefetch_text(const ml_vocab *v, uint32_t h, int deep) {
  const tok_slot *e = &v->tok[h & v->tok_mask];
  if (e->id < 0) return;
  if (deep) PREFETCH(v->text[e->id].s);
  else PREFETCH(&v->text[e->id]);
}

static const merge_slot *merge_find(const ml_vocab *v, int32_t a, int32_t b) {
  if (a < 0 || b < 0 || !v->merge) return NULL;
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  uint32_t i = (uint32_t)mix64(key) & v->merge_mask;
  for (;;) {
    const merge_slot *e = &v->merge[i];
    if (e->rank < 0) return NULL;
    if (e->key == key) return e;
    i = (i + 1) & v->merge_mask;
  }
}

/* ---- loading ---- */

static int value_int(const ml_gguf_value *val, int64_t *out) {
  switch (val->type) {
  case ML_GGUF_UINT8: case ML_GGUF_UINT16: case ML_GGUF_UINT32: case ML_GGUF_UINT64:
    if (val->v.u > INT64_MAX) return -1;
    *out = (int64_t)val->v.u;
    return 0;
  case ML_GGUF_INT8: case ML_GGUF_INT16: case ML_GGUF_INT32: case ML_GGUF_INT64:
    *out = val->v.i;
    return 0;
  default: return -1;
  }
}

static int is_int_type(ml_gguf_vtype t) {
  return t == ML_GGUF_UINT8 || t == ML_GGUF_INT8 || t == ML_GGUF_UINT16 || t == ML_GGUF_INT16 ||
         t == ML_GGUF_UINT32 || t == ML_GGUF_INT32 || t == ML_GGUF_UINT64 || t == ML_GGUF_INT64;
}

/* The array under key, of strings or of numbers; NULL if absent, or if malformed with the
 * error set and *bad = 1. */
static const ml_gguf_value *get_array(const ml_gguf *g, const char *key, int want_str, int *bad) {
  const ml_gguf_kv *kv = ml_gguf_find(g, key);
  *bad = 0;
  if (!kv) return NULL;
  const ml_gguf_value *val = &kv->value;
  int ok = val->type == ML_GGUF_ARRAY &&
           (want_str ? val->v.arr.type == ML_GGUF_STRING
                     : (is_int_type(val->v.arr.type) || val->v.arr.type == ML_GGUF_FLOAT32 ||
                        val->v.arr.type == ML_GGUF_FLOAT64));
  if (!ok) {
    ml_seterr("%s: expected an array of %s, found %s", key, want_str ? "strings" : "numbers",
              val->type == ML_GGUF_ARRAY ? "another array" : ml_gguf_vtype_name(val->type));
    *bad = 1;
    return NULL;
  }
  return val;
}

static void copy_str(char *dst, size_t cap, const ml_gguf_str *s) {
  size_t n = s ? (size_t)ML_MIN(s->len, (uint64_t)(cap - 1)) : 0;
  if (n) memcpy(dst, s->s, n);
  dst[n] = 0;
}

/* Pre-tokenizer names (llama.cpp's tokenizer.ggml.pre values) and what they imply. */
enum { PRE_IGNORE_MERGES = 1, PRE_ADD_BOS = 2, PRE_KEEP_SPACES = 4, PRE_NFC = 8 };
static const struct pre_def {
  const char *name;
  ml_pretok kind;
  int flags;
} pre_defs[] = {
  {"default", ML_PRETOK_DEFAULT, 0},
  {"llama3", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"llama-v3", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"llama-bpe", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"falcon3", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"falcon-h1", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"pixtral", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"midm-2.0", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"lfm2", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"dbrx", ML_PRETOK_LLAMA3, 0},
  {"smaug-bpe", ML_PRETOK_LLAMA3, 0},
  {"glm4", ML_PRETOK_LLAMA3, 0},
  {"chatglm-bpe", ML_PRETOK_LLAMA3, 0},
  {"qwen2", ML_PRETOK_QWEN2, PRE_KEEP_SPACES | PRE_NFC},
  {"deepseek-r1-qwen", ML_PRETOK_QWEN2, PRE_KEEP_SPACES | PRE_NFC},
  {"megrez", ML_PRETOK_QWEN2, 0},
  {"stablelm2", ML_PRETOK_QWEN2, 0},
  {"hunyuan", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"deepseek-llm", ML_PRETOK_DEEPSEEK_LLM, PRE_KEEP_SPACES},
  {"deepseek-coder", ML_PRETOK_DEEPSEEK_CODER, PRE_KEEP_SPACES},
  {"falcon", ML_PRETOK_FALCON, 0},
  {"gpt-2", ML_PRETOK_GPT2, 0},
  {"phi-2", ML_PRETOK_GPT2, 0},
  {"mpt", ML_PRETOK_GPT2, 0},
  {"olmo", ML_PRETOK_GPT2, 0},
  {"jais", ML_PRETOK_GPT2, 0},
  {"jina-es", ML_PRETOK_GPT2, 0},
  {"jina-de", ML_PRETOK_GPT2, 0},
  {"jina-v1-en", ML_PRETOK_GPT2, 0},
  {"jina-v2-es", ML_PRETOK_GPT2, 0},
  {"jina-v2-de", ML_PRETOK_GPT2, 0},
  {"jina-v2-code", ML_PRETOK_GPT2, 0},
  {"roberta-bpe", ML_PRETOK_GPT2, 0},
  {"gigachat", ML_PRETOK_GPT2, 0},
  {"exaone4", ML_PRETOK_GPT2, 0},
  {"trillion", ML_PRETOK_GPT2, PRE_KEEP_SPACES},
  {"granite-docling", ML_PRETOK_GPT2, PRE_KEEP_SPACES},
  {"starcoder", ML_PRETOK_STARCODER, 0},
  {"refact", ML_PRETOK_STARCODER, 0},
  {"codeshell", ML_PRETOK_STARCODER, 0},
  {"exaone", ML_PRETOK_STARCODER, 0},
  {"minerva-7b", ML_PRETOK_STARCODER, 0},
  {"command-r", ML_PRETOK_STARCODER, PRE_KEEP_SPACES},
  {"smollm", ML_PRETOK_STARCODER, PRE_KEEP_SPACES},
};

static int load_model(ml_vocab *v) {
  const ml_gguf_str *model = ml_gguf_get_str(v->g, KEY("model"));
  if (!model) {
    ml_seterr(ml_gguf_find(v->g, KEY("model")) ? KEY("model") " is not a string"
                                                : "no tokenizer in this file (" KEY("model") " missing)");
    return -1;
  }
  copy_str(v->model, sizeof v->model, model);
  v->info.model = v->model;
  v->info.pre = v->pre;
  const ml_gguf_str *pre = ml_gguf_get_str(v->g, KEY("pre"));
  copy_str(v->pre, sizeof v->pre, pre);
  if (model->len == 5 && memcmp(model->s, "llama", 5) == 0) {
    v->info.type = ML_VOCAB_SPM;
    v->info.add_bos = 1;
    v->info.add_space_prefix = 1;
    v->pretok = ML_PRETOK_NONE;
    return 0;
  }
  if (!(model->len == 4 && memcmp(model->s, "gpt2", 4) == 0)) {
    ml_seterr("unsupported tokenizer model '%.*s' (" KEY("model") "; supported: llama, gpt2)",
              (int)ML_MIN(model->len, 64), model->s);
    return -1;
  }
  v->info.type = ML_VOCAB_BPE;
  v->info.clean_spaces = 1;
  if (!pre) { /* llama.cpp warns and uses "default" */
    v->pretok = ML_PRETOK_DEFAULT;
    return 0;
  }
  for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++) {
    const struct pre_def *d = &pre_defs[i];
    if (strlen(d->name) != pre->len || memcmp(d->name, pre->s, pre->len) != 0) continue;
    v->pretok = d->kind;
    v->info.ignore_merges = (d->flags & PRE_IGNORE_MERGES) != 0;
    v->info.add_bos = (d->flags & PRE_ADD_BOS) != 0;
    v->info.clean_spaces = !(d->flags & PRE_KEEP_SPACES);
    v->info.nfc = (d->flags & PRE_NFC) != 0;
    return 0;
  }
  ml_seterr("unsupported pre-tokenizer '%.*s' (" KEY("pre") ")", (int)ML_MIN(pre->len, 64), pre->s);
  return -1;
}

static int load_tokens(ml_vocab *v) {
  int bad;
  const ml_gguf_value *toks = get_array(v->g, KEY("tokens"), 1, &bad);
  if (!toks) {
    if (!bad) ml_seterr(KEY("tokens") " missing");
    return -1;
  }
  uint64_t n = toks->v.arr.n;
  if (n == 0 || n > MAX_TOKENS) {
    ml_seterr(KEY("tokens") ": %llu tokens (expected 1 to %d)", (unsigned long long)n, MAX_TOKENS);
    return -1;
  }
  v->info.n_tokens = (int32_t)n;
  v->text = toks->v.arr.strs;
  for (uint64_t i = 0; i < n; i++)
    if (v->text[i].len > v->info.max_token_len) v->info.max_token_len = (size_t)v->text[i].len;

  const ml_gguf_value *scores = get_array(v->g, KEY("scores"), 0, &bad);
  if (bad) return -1;
  const ml_gguf_value *types = get_array(v->g, KEY("token_type"), 0, &bad);
  if (bad) return -1;
  if (scores && scores->v.arr.n != n) {
    ml_seterr(KEY("scores") " has %llu entries but " KEY("tokens") " has %llu",
              (unsigned long long)scores->v.arr.n, (unsigned long long)n);
    return -1;
  }
  if (types && !is_int_type(types->v.arr.type)) {
    ml_seterr(KEY("token_type") ": expected integers, found %s", ml_gguf_vtype_name(types->v.arr.type));
    return -1;
  }
  if (types && types->v.arr.n != n) {
    ml_seterr(KEY("token_type") " has %llu entries but " KEY("tokens") " has %llu",
              (unsigned long long)types->v.arr.n, (unsigned long long)n);
    return -1;
  }
  v->score = ml_calloc(n * sizeof *v->score);
  v->attr = ml_calloc(n * sizeof *v->attr);
  v->ftype = ml_calloc(n);
  if (!v->score || !v->attr || !v->ftype) return -1;
  static const uint16_t from_type[7] = {0, ML_TOKEN_NORMAL, ML_TOKEN_UNKNOWN, ML_TOKEN_CONTROL,
                                        ML_TOKEN_USER_DEFINED, ML_TOKEN_UNUSED, ML_TOKEN_BYTE};
  for (uint64_t i = 0; i < n; i++) {
    if (scores) v->score[i] = (float)ml_gguf_arr_float(scores, i);
    int64_t t = types ? ml_gguf_arr_int(types, i) : 1;
    v->ftype[i] = (uint8_t)(t >= 0 && t <= 6 ? t : 0);
    v->attr[i] = from_type[v->ftype[i]];
  }
  return 0;
}

static void index_insert(ml_vocab *v, int32_t id, uint32_t h) {
  const ml_gguf_str *t = &v->text[id];
  uint32_t i = h & v->tok_mask;
  for (;;) {
    tok_slot *e = &v->tok[i];
    if (e->id < 0) {
      e->hash = h;
      e->id = id;
      return;
    }
    /* a duplicate text keeps its first id, as a first-come map would */
    if (e->hash == h && v->text[e->id].len == t->len && memcmp(v->text[e->id].s, t->s, t->len) == 0) return;
    i = (i + 1) & v->tok_mask;
  }
}

enum { BATCH = 32 };

static int build_token_index(ml_vocab *v) {
  int32_t n = v->info.n_tokens;
  uint32_t size = table_size((uint64_t)n), h[BATCH];
  v->tok = ml_alloc((size_t)size * sizeof *v->tok);
  if (!v->tok) return -1;
  memset(v->tok, 0xFF, (size_t)size * sizeof *v->tok);
  v->tok_mask = size - 1;
  for (int32_t b = 0; b < n; b += BATCH) {
    int32_t e = ML_MIN(n, b + BATCH);
    for (int32_t id = b; id < e; id++) {
      h[id - b] = hash_bytes(v->text[id].s, v->text[id].len);
      prefetch_slot(v, h[id - b]);
    }
    for (int32_t id = b; id < e; id++)
      if (v->text[id].len) index_insert(v, id, h[id - b]); /* an empty token is never produced */
  }
  return 0;
}

static void merge_insert(ml_vocab *v, int32_t a, int32_t b, int32_t c, int32_t rank) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  uint32_t i = (uint32_t)mix64(key) & v->merge_mask;
  while (v->merge[i].rank >= 0 && v->merge[i].key != key) i = (i + 1) & v->merge_mask;
  if (v->merge[i].rank >= 0) return; /* repeated pair: the first rank wins */
  v->merge[i].key = key;
  v->merge[i].rank = rank;
  v->merge[i].result = c;
  v->info.n_merges++;
}

/* tokenizer.ggml.merges[r] = "left right" -> (left id, right id) gives rank r and the id of
 * left + right. The lookups of a batch of merges are prefetched together. */
static int build_merges(ml_vocab *v) {
  int bad;
  const ml_gguf_value *mg = get_array(v->g, KEY("merges"), 1, &bad);
  if (!mg) {
    if (!bad) ml_seterr(KEY("merges") " missing (required by the gpt2 tokenizer)");
    return -1;
  }
  uint64_t n = mg->v.arr.n;
  if (n > MAX_TOKENS) {
    ml_seterr(KEY("merges") ": too many entries (%llu)", (unsigned long long)n);
    return -1;
  }
  uint32_t size = table_size(n);
  size_t width = v->info.max_token_len + 1;
  v->merge = ml_alloc((size_t)size * sizeof *v->merge);
  char *cat = ml_alloc(BATCH * width); /* left + right of each merge of a batch */
  if (!v->merge || !cat) {
    ml_free(cat);
    return -1;
  }
  for (uint32_t i = 0; i < size; i++) v->merge[i].rank = -1;
  v->merge_mask = size - 1;
  struct {
    const char *part[3];
    size_t len[3];
    uint32_t h[3];
  } q[BATCH];
  for (uint64_t r0 = 0; r0 < n; r0 += BATCH) {
    int m = (int)ML_MIN((uint64_t)BATCH, n - r0);
    for (int k = 0; k < m; k++) {
      const ml_gguf_str *s = &mg->v.arr.strs[r0 + (uint64_t)k];
      const char *sp = s->len > 1 ? memchr(s->s + 1, ' ', s->len - 1) : NULL;
      q[k].part[0] = NULL;
      if (!sp) continue; /* llama.cpp splits at the first space after the first byte */
      size_t ll = (size_t)(sp - s->s), rl = s->len - ll - 1;
      if (ll + rl > v->info.max_token_len) continue; /* the result cannot be a token */
      char *c = cat + (size_t)k * width;
      memcpy(c, s->s, ll);
      memcpy(c + ll, sp + 1, rl);
      q[k].part[0] = s->s, q[k].len[0] = ll;
      q[k].part[1] = sp + 1, q[k].len[1] = rl;
      q[k].part[2] = c, q[k].len[2] = ll + rl;
      for (int j = 0; j < 3; j++) prefetch_slot(v, q[k].h[j] = hash_bytes(q[k].part[j], q[k].len[j]));
    }
    for (int pass = 0; pass < 2; pass++)
      for (int k = 0; k < m; k++)
        if (q[k].part[0])
          for (int j = 0; j < 3; j++) prefetch_text(v, q[k].h[j], pass);
    for (int k = 0; k < m; k++) {
      if (!q[k].part[0]) continue;
      int32_t id[3];
      for (int j = 0; j < 3; j++) id[j] = tok_find_h(v, q[k].part[j], q[k].len[j], q[k].h[j]);
      /* merges whose parts or result are not tokens cannot apply (Hugging Face refuses such files) */
      if (id[0] >= 0 && id[1] >= 0 && id[2] >= 0) merge_insert(v, id[0], id[1], id[2], (int32_t)(r0 + (uint64_t)k));
    }
  }
  ml_free(cat);
  return 0;
}

static void build_byte_tables(ml_vocab *v) {
  for (int i = 0; i < 0x144; i++) v->byte_dec[i] = -1;
  int extra = 0;
  for (int b = 0; b < 256; b++) {
    /* GPT-2 bytes_to_unicode: printable Latin-1 stands for itself, the rest is moved to
     * U+0100 and up in byte order */
    int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
    uint8_t u[4];
    v->byte_enc_len[b] = (uint8_t)ml_utf8_encode(cp, u);
    memcpy(v->byte_enc[b], u, 2);
    v->byte_dec[cp] = (int16_t)b;
    if (v->info.type == ML_VOCAB_BPE) {
      v->byte_tok[b] = tok_find(v, u, v->byte_enc_len[b]);
    } else {
      static const char hex[] = "0123456789ABCDEF";
      char t[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
      char c = (char)b;
      v->byte_tok[b] = tok_find(v, t, 6);
      if (v->byte_tok[b] < 0) v->byte_tok[b] = tok_find(v, &c, 1); /* the byte as a one-char token */
    }
  }
}

static int read_id(ml_vocab *v, const char *key, int32_t *id) {
  const ml_gguf_kv *kv = ml_gguf_find(v->g, key);
  int64_t x;
  if (!kv) return 0;
  if (value_int(&kv->value, &x) != 0) {
    ml_seterr("%s: expected an integer, found %s", key, ml_gguf_vtype_name(kv->value.type));
    return -1;
  }
  if (x == -1 || x == 0xFFFFFFFF) { /* written for "none" */
    *id = -1;
    return 0;
  }
  if (x < 0 || x >= v->info.n_tokens) {
    ml_seterr("%s = %lld is out of range (the vocabulary has %d tokens)", key, (long long)x, v->info.n_tokens);
    return -1;
  }
  *id = (int32_t)x;
  return 0;
}

static int load_special_ids(ml_vocab *v) {
  ml_vocab_info *in = &v->info;
  int32_t n = in->n_tokens;
  in->bos = in->eos = in->eot = in->eom = in->unk = in->pad = in->sep = in->nl = in->mask = -1;
  in->fim_pre = in->fim_suf = in->fim_mid = in->fim_pad = in->fim_rep = in->fim_sep = -1;
  if (in->type == ML_VOCAB_SPM) { /* llama.cpp's defaults, when in range */
    in->unk = 0 < n ? 0 : -1;
    in->bos = 1 < n ? 1 : -1;
    in->eos = 2 < n ? 2 : -1;
  }
  const struct { const char *key; int32_t *id; } ids[] = {
    {KEY("bos_token_id"), &in->bos}, {KEY("eos_token_id"), &in->eos},
    {KEY("eot_token_id"), &in->eot}, {KEY("eom_token_id"), &in->eom},
    {KEY("unknown_token_id"), &in->unk}, {KEY("seperator_token_id"), &in->sep},
    {KEY("padding_token_id"), &in->pad}, {KEY("mask_token_id"), &in->mask},
    {KEY("prefix_token_id"), &in->fim_pre}, {KEY("suffix_token_id"), &in->fim_suf},
    {KEY("middle_token_id"), &in->fim_mid},
    {KEY("fim_pre_token_id"), &in->fim_pre}, {KEY("fim_suf_token_id"), &in->fim_suf},
    {KEY("fim_mid_token_id"), &in->fim_mid}, {KEY("fim_pad_token_id"), &in->fim_pad},
    {KEY("fim_rep_token_id"), &in->fim_rep}, {KEY("fim_sep_token_id"), &in->fim_sep},
  };
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
    if (read_id(v, ids[i].key, ids[i].id) != 0) return -1;
  int b = ml_gguf_get_bool(v->g, KEY("add_bos_token"), -1);
  if (b >= 0) in->add_bos = b;
  b = ml_gguf_get_bool(v->g, KEY("add_eos_token"), -1);
  if (b >= 0) in->add_eos = b;
  b = ml_gguf_get_bool(v->g, KEY("add_space_prefix"), -1);
  if (b >= 0) in->add_space_prefix = b;
  if (in->bos < 0) in->add_bos = 0;
  if (in->eos < 0) in->add_eos = 0;
  return 0;
}

static int is_glue(const ml_vocab *v, uint32_t cp) {
  if (v->n_glue < 0) return 1;
  for (int i = 0; i < v->n_glue; i++)
    if (v->glue[i] == cp) return 1;
  return 0;
}

/* SPM: collect the characters that precede "▁" inside some token (see spm_fragment). */
static void find_glue(ml_vocab *v) {
  for (int32_t id = 0; id < v->info.n_tokens && v->n_glue >= 0; id++) {
    const uint8_t *s = (const uint8_t *)v->text[id].s;
    size_t n = (size_t)v->text[id].len;
    uint32_t prev = 0, cp;
    for (size_t i = 0; i < n; prev = cp) {
      i += ml_utf8_decode(s + i, n - i, &cp);
      if (cp != 0x2581 || i == 3 || is_glue(v, prev)) continue;
      if (v->n_glue == (int)(sizeof v->glue / sizeof v->glue[0])) {
        v->n_glue = -1;
        break;
      }
      v->glue[v->n_glue++] = prev;
    }
  }
}

/* Texts by which llama.cpp recognises tokens the metadata does not name. */
static const char *const eot_texts[] = {
  "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
  "<EOT>", "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
  "<end_of_utterance>", NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_texts[] = {
  "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
  "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const fim_suf_texts[] = {
  "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
  "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const fim_mid_texts[] = {
  "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
  "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const eog_texts[] = {
  "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
  "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
  "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
  "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~[", NULL};

static int32_t find_cstr(const ml_vocab *v, const char *s) { return tok_find(v, s, strlen(s)); }

/* If *id is unset, the first listed text that is a token becomes it, typed control. */
static void detect(ml_vocab *v, int32_t *id, const char *const *texts) {
  if (*id >= 0) return;
  for (; *texts; texts++) {
    int32_t t = find_cstr(v, *texts);
    if (t >= 0) {
      *id = t;
      v->attr[t] |= ML_TOKEN_CONTROL;
      return;
    }
  }
}

static void mark_eog(ml_vocab *v) {
  ml_vocab_info *in = &v->info;
  detect(v, &in->eot, eot_texts);
  detect(v, &in->eom, eom_texts);
  detect(v, &in->fim_pre, fim_pre_texts);
  detect(v, &in->fim_suf, fim_suf_texts);
  detect(v, &in->fim_mid, fim_mid_texts);
  detect(v, &in->fim_pad, fim_pad_texts);
  detect(v, &in->fim_rep, fim_rep_texts);
  detect(v, &in->fim_sep, fim_sep_texts);
  for (const char *const *t = eog_texts; *t; t++) {
    int32_t id = find_cstr(v, *t);
    if (id >= 0) v->attr[id] |= ML_TOKEN_EOG | ML_TOKEN_CONTROL;
  }
  const int32_t always[] = {in->fim_pad, in->fim_rep, in->fim_sep, in->eos, in->eot, in->eom};
  for (size_t i = 0; i < sizeof always / sizeof always[0]; i++)
    if (always[i] >= 0) v->attr[always[i]] |= ML_TOKEN_EOG;

  /* gpt-oss (<|return|> <|call|>) and solar-open (<|calls|> <|flush|>) end turns with those;
   * their <|end|> only ends a message */
  int32_t ret = find_cstr(v, "<|return|>"), call = find_cstr(v, "<|call|>"), end = find_cstr(v, "<|end|>");
  int32_t calls = find_cstr(v, "<|calls|>"), flush = find_cstr(v, "<|flush|>");
  if (end >= 0 && ((ret >= 0 && call >= 0) || (calls >= 0 && flush >= 0))) v->attr[end] = ML_TOKEN_USER_DEFINED;
  /* gemma 4 (<|tool_response>): </s> is ordinary text */
  int32_t s_end = find_cstr(v, "</s>");
  if (s_end >= 0 && find_cstr(v, "<|tool_response>") >= 0) v->attr[s_end] = ML_TOKEN_NORMAL;
  /* gpt-oss: these structure tokens are always rendered */
  static const char *const shown[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
  for (const char *const *t = shown; *t; t++) {
    int32_t id = find_cstr(v, *t);
    if (id >= 0) v->attr[id] = ML_TOKEN_USER_DEFINED;
  }
  for (int32_t id = 0; id < in->n_tokens; id++) in->n_eog += (v->attr[id] & ML_TOKEN_EOG) != 0;
}

static int cmp_special(const void *a, const void *b) {
  const int64_t *x = a, *y = b; /* (len << 32 | id), longest first, then lower id */
  int64_t lx = *x >> 32, ly = *y >> 32;
  if (lx != ly) return lx > ly ? -1 : 1;
  return (*x & 0xFFFFFFFF) < (*y & 0xFFFFFFFF) ? -1 : 1;
}

static int build_specials(ml_vocab *v) {
  int32_t n = v->info.n_tokens, k = 0;
  for (int32_t id = 0; id < n; id++)
    if ((v->attr[id] & (ML_TOKEN_CONTROL | ML_TOKEN_USER_DEFINED | ML_TOKEN_UNKNOWN)) && v->text[id].len) k++;
  int64_t *order = ml_alloc((size_t)(k ? k : 1) * sizeof *order);
  v->special = ml_alloc((size_t)(k ? k : 1) * sizeof *v->special);
  v->sp_by_byte[0] = ml_alloc((size_t)(k ? k : 1) * sizeof *v->sp_by_byte[0]);
  v->sp_by_byte[1] = ml_alloc((size_t)(k ? k : 1) * sizeof *v->sp_by_byte[1]);
  if (!order || !v->special || !v->sp_by_byte[0] || !v->sp_by_byte[1]) {
    ml_free(order);
    return -1;
  }
  k = 0;
  for (int32_t id = 0; id < n; id++)
    if ((v->attr[id] & (ML_TOKEN_CONTROL | ML_TOKEN_USER_DEFINED | ML_TOKEN_UNKNOWN)) && v->text[id].len)
      order[k++] = (int64_t)v->text[id].len << 32 | id;
  qsort(order, (size_t)k, sizeof *order, cmp_special);
  for (int32_t i = 0; i < k; i++) v->special[i] = (int32_t)(order[i] & 0xFFFFFFFF);
  ml_free(order);
  v->n_special = k;
  /* Bucket by first byte, keeping priority order inside each bucket; set 0 holds what is
   * matched without parse_special (user-defined tokens that are neither control nor
   * unknown), set 1 every special token. */
  memset(v->sp_first, 0, sizeof v->sp_first);
  for (int set = 0; set < 2; set++) {
    uint32_t *first = v->sp_first[set], fill[256];
    for (int32_t i = 0; i < k; i++)
      if (set || !(v->attr[v->special[i]] & (ML_TOKEN_CONTROL | ML_TOKEN_UNKNOWN)))
        first[(uint8_t)v->text[v->special[i]].s[0] + 1]++;
    for (int b = 0; b < 256; b++) first[b + 1] += first[b];
    memcpy(fill, first, sizeof fill);
    for (int32_t i = 0; i < k; i++)
      if (set || !(v->attr[v->special[i]] & (ML_TOKEN_CONTROL | ML_TOKEN_UNKNOWN)))
        v->sp_by_byte[set][fill[(uint8_t)v->text[v->special[i]].s[0]]++] = i;
  }
  return 0;
}

/* Per-model attribute quirks llama.cpp applies by name. */
static void model_quirks(ml_vocab *v) {
  char name[64];
  copy_str(name, sizeof name, ml_gguf_get_str(v->g, "general.name"));
  for (char *p = name; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
  if (strstr(name, "phi-3") || strstr(name, "phi3")) {
    for (int32_t i = 0; i < v->n_special; i++) v->attr[v->special[i]] |= ML_TOKEN_RSTRIP;
    int32_t id = find_cstr(v, "</s>");
    if (id >= 0) v->attr[id] |= ML_TOKEN_RSTRIP;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>", NULL};
    for (const char *const *t = keep; *t; t++)
      if ((id = find_cstr(v, *t)) >= 0) v->attr[id] &= (uint16_t)~ML_TOKEN_RSTRIP;
  }
  if (strstr(v->pre, "jina-v2-de") || strstr(v->pre, "jina-v2-es") || strstr(v->pre, "jina-v2-code")) {
    int32_t id = find_cstr(v, "<mask>");
    if (id >= 0) v->attr[id] |= ML_TOKEN_LSTRIP;
  }
}

ml_vocab *ml_vocab_load(ml_gguf *g) {
  if (!g) {
    ml_misuse(1, "no GGUF to load a vocabulary from");
    return NULL;
  }
  ml_vocab *v = ml_calloc(sizeof *v);
  if (!v) return NULL;
  ml_gguf_retain(g);
  v->g = g;
  int rc = load_model(v) || load_tokens(v) || build_token_index(v) ||
           (v->info.type == ML_VOCAB_BPE && build_merges(v)) || load_special_ids(v);
  if (rc) {
    ml_vocab_free(v);
    return NULL;
  }
  build_byte_tables(v);
  if (v->info.type == ML_VOCAB_SPM) find_glue(v);
  v->info.nl = v->byte_tok['\n'] >= 0 ? v->byte_tok['\n'] : v->info.pad;
  mark_eog(v);
  if (build_specials(v) != 0) {
    ml_vocab_free(v);
    return NULL;
  }
  model_quirks(v);
  return v;
}

void ml_vocab_free(ml_vocab *v) {
  if (!v) return;
  ml_free(v->score);
  ml_free(v->attr);
  ml_free(v->ftype);
  ml_free(v->tok);
  ml_free(v->merge);
  ml_free(v->special);
  ml_free(v->sp_by_byte[0]);
  ml_free(v->sp_by_byte[1]);
  ml_gguf_release(v->g);
  ml_free(v);
}

/* ---- queries ---- */

const ml_vocab_info *ml_vocab_get_info(const ml_vocab *v) { return &v->info; }

static int valid_id(const ml_vocab *v, int32_t id) { return id >= 0 && id < v->info.n_tokens; }

const char *ml_vocab_token_text(const ml_vocab *v, int32_t id, size_t *len) {
  if (!valid_id(v, id)) return NULL;
  if (len) *len = (size_t)v->text[id].len;
  return v->text[id].s;
}

float ml_vocab_token_score(const ml_vocab *v, int32_t id) { return valid_id(v, id) ? v->score[id] : 0.0f; }
int ml_vocab_token_type(const ml_vocab *v, int32_t id) { return valid_id(v, id) ? v->ftype[id] : 0; }
uint32_t ml_vocab_token_attr(const ml_vocab *v, int32_t id) { return valid_id(v, id) ? v->attr[id] : 0; }
int ml_vocab_is_eog(const ml_vocab *v, int32_t id) { return valid_id(v, id) && (v->attr[id] & ML_TOKEN_EOG); }

int32_t ml_vocab_find(const ml_vocab *v, const char *text, size_t len) {
  return text && len ? tok_find(v, text, len) : -1;
}

/* ---- per-call scratch ---- */

typedef struct heap_item {
  uint64_t key; /* min-heap order: SPM (~score, left), BPE (rank, left) */
  int32_t a, b, c;
} heap_item;

typedef struct frag {
  uint32_t start, len;
  int32_t token; /* >= 0: a special token; -1: raw text [start, start + len) */
} frag;

typedef struct scratch {
  uint8_t *bytes; size_t cap_bytes; /* SPM escaped text, BPE text after NFC */
  uint8_t *enc; size_t cap_enc;     /* byte-level encoding of one pre-token */
  uint32_t *cp, *off, *ends, *tmp;  /* (cap_cp) decoded fragment */
  uint8_t *fl;
  size_t cap_cp;
  uint32_t *cp2; size_t cap_cp2;    /* NFC output */
  int32_t *sid, *prev, *next;       /* (cap_sym) merge symbols */
  uint32_t *start, *len;
  size_t cap_sym;
  heap_item *heap; size_t n_heap, cap_heap;
  frag *frags; size_t n_frags, cap_frags;
  uint64_t *occ; size_t n_occ, cap_occ;
  uint8_t *mask; size_t cap_mask;
  struct piece_cache *cache;        /* NULL: off (short texts) */
} scratch;

/* Per-call memo of short pieces (BPE pre-tokens, SPM segments) -> ids. Words repeat, and a
 * piece's tokens depend only on its bytes. Bounded: it stops growing when full. */
enum {
  CACHE_SLOTS = 8192, CACHE_ENTRIES = 4096, CACHE_TEXT = 65536, CACHE_IDS = 16384,
  CACHE_PIECE = 32 /* longest piece cached, bytes */
};
#ifndef ML_TOK_CACHE_MIN_TEXT
#define ML_TOK_CACHE_MIN_TEXT 4096 /* shorter texts are not worth a cache (fuzzing sets 1) */
#endif
typedef struct piece_cache {
  uint16_t slot[CACHE_SLOTS]; /* entry + 1, 0: empty */
  struct {
    uint32_t hash, text, ids; /* offsets into text[] and id[] */
    uint8_t len, n;           /* bytes, ids */
  } e[CACHE_ENTRIES];
  uint8_t text[CACHE_TEXT];
  int32_t id[CACHE_IDS];
  uint32_t n_e, n_text, n_id;
} piece_cache;

typedef struct outbuf {
  int32_t *ids;
  int64_t cap, n;
} outbuf;

static void put(outbuf *o, int32_t id) {
  if (o->n < o->cap) o->ids[o->n] = id;
  o->n++;
}

/* p resized to hold at least `need` elements of `size` bytes (contents kept), or p itself
 * with *err set if that fails. Used through GROW, which assigns the result back. */
static void *grow(void *p, size_t *cap, size_t need, size_t size, int *err) {
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

#define GROW(ptr, cap, need, err) ((ptr) = grow((ptr), &(cap), (need), sizeof *(ptr), &(err)))

static int grow_cp(scratch *sc, size_t need) {
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

static int grow_sym(scratch *sc, size_t need) {
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

static int heap_push(scratch *sc, uint64_t key, int32_t a, int32_t b, int32_t c) {
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

static heap_item heap_pop(scratch *sc) {
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
static int cache_get(scratch *sc, const uint8_t *p, size_t n, outbuf *o, uint16_t **slot, uint32_t *h) {
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
static void cache_put(scratch *sc, uint16_t *slot, uint32_t h, const uint8_t *p, size_t n, const outbuf *o,
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

static void put_byte(const ml_vocab *v, outbuf *o, uint8_t b) {
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

/* ---- SentencePiece BPE ---- */

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
  return heap_push(sc, (uint64_t)~score_key(v->score[id]) << 32 | (uint32_t)l, r, (int32_t)size, id);
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
    heap_item e = heap_pop(sc);
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
    for (uint32_t j = 0; j < sc->len[i]; j++) put_byte(v, o, t[sc->start[i] + j]);
  }
  return 0;
}

static int spm_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, int prefix, outbuf *o) {
  size_t spaces = 0;
  for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
  size_t m = n + 2 * spaces + (prefix ? 3 : 0), j = 0;
  int err = 0;
  if (GROW(sc->bytes, sc->cap_bytes, m, err), err || grow_sym(sc, m)) return -1;
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
        if (!is_glue(v, cp)) break;
      }
    }
    const uint8_t *p = t + sc->start[a];
    size_t n_p = sc->start[b - 1] + sc->len[b - 1] - sc->start[a];
    uint16_t *slot;
    uint32_t h = 0;
    if (cache_get(sc, p, n_p, o, &slot, &h)) continue;
    int64_t from = o->n;
    if (spm_segment(v, sc, t, a, b, o)) return -1;
    cache_put(sc, slot, h, p, n_p, o, from);
  }
  return 0;
}

/* ---- byte-level BPE ---- */

static int bpe_try(const ml_vocab *v, scratch *sc, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  const merge_slot *m = merge_find(v, sc->sid[l], sc->sid[r]);
  if (!m) return 0;
  return heap_push(sc, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)l, sc->sid[l], sc->sid[r], m->result);
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
    put_byte(v, o, w[0]);
    return 0;
  }
  if (grow_sym(sc, m)) return -1;
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
    heap_item e = heap_pop(sc);
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
    else put_byte(v, o, w[i]); /* a byte the vocabulary lacks */
  }
  return 0;
}

static int bpe_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, outbuf *o) {
  if (grow_cp(sc, n + 1)) return -1;
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
    if (grow_cp(sc, k2 + 1) || (GROW(sc->bytes, sc->cap_bytes, 4 * k2, err), err)) return -1;
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
    if (cache_get(sc, p, n_p, o, &slot, &h)) continue;
    int64_t from = o->n;
    if (bpe_word(v, sc, p, n_p, o)) return -1;
    cache_put(sc, slot, h, p, n_p, o, from);
  }
  return 0;
}

/* ---- tokenize ---- */

/* Where text s[0..n) may be cut into independently tokenized chunks, at or after `from`:
 * BPE: in "X\nL" (X printable ASCII, not a space; L an ASCII letter) after the newline.
 * Every pre-tokenizer chain ends a piece there whether L or the end of the text follows
 * (the newline is a one-character white space run), and NFC cannot join across it.
 * SPM: before a space whose left neighbour is an ASCII character that never precedes
 * "▁" in a token (see spm_fragment). n if there is no such place. */
static size_t next_cut(const ml_vocab *v, const uint8_t *s, size_t n, size_t from) {
  for (size_t b = ML_MAX(from, (size_t)2); b < n; b++) {
    uint8_t p = s[b - 1], c = s[b];
    if (v->info.type == ML_VOCAB_BPE) {
      if (p == '\n' && s[b - 2] > ' ' && s[b - 2] < 0x7F && (c | 0x20) >= 'a' && (c | 0x20) <= 'z') return b;
    } else if (c == ' ' && p < 0x80 && p != ' ' && !is_glue(v, p)) {
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
    int rc = v->info.type == ML_VOCAB_SPM ? spm_fragment(v, sc, s + a, b - a, prefix && a == 0, o)
                                          : bpe_fragment(v, sc, s + a, b - a, o);
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
    rc = raw_fragment(v, &sc, s + f->start, f->len, v->info.add_space_prefix && prev_special, &o);
    prev_special = 0;
  }
  if (add_eos && v->info.eos >= 0) put(&o, v->info.eos);
  scratch_free(&sc);
  if (rc) return ML_TOK_ERROR;
  return o.n <= n_max ? o.n : -o.n;
}

/* ---- detokenize ---- */

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
      if (v->info.type == ML_VOCAB_SPM) {
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

static int is_special_tok(const ml_vocab *v, int32_t id) {
  return (v->attr[id] & (ML_TOKEN_CONTROL | ML_TOKEN_UNKNOWN | ML_TOKEN_USER_DEFINED)) != 0;
}

int64_t ml_vocab_piece(const ml_vocab *v, int32_t id, int flags, char *buf, size_t cap) {
  if (!v || !valid_id(v, id)) {
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
    if (!valid_id(v, ids[i])) {
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
    int special = is_special_tok(v, ids[i]);
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
  if (!valid_id(d->v, id)) {
    ml_misuse(2, "token id %d out of range", (int)id);
    return ML_TOK_ERROR;
  }
  const ml_vocab *v = d->v;
  int special = is_special_tok(v, id), lstrip = d->strip && !special;
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
