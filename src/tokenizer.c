/* tokenizer.c: loading a vocabulary from GGUF metadata (tokens, scores and types, the
 * text -> id index, BPE merges, byte tables, special and end-of-generation tokens, the
 * per-model quirks llama.cpp applies), and the per-token queries. Tokenizing is in
 * tokenize.c and the family files, detokenizing in tokenizer_decode.c (see
 * tokenizer_impl.h). */
#include "tokenizer_impl.h"

#define MAX_TOKENS (1 << 28)

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

static uint32_t table_size(uint64_t n) { /* power of two >= 1.5 n, at least 16 */
  uint32_t s = 16;
  while (s < n + n / 2) s <<= 1;
  return s;
}

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
  /* names newer llama.cpp gives to the same regex sets */
  {"jina-v5-nano", ML_PRETOK_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
  {"a.x-4.0", ML_PRETOK_GPT2, 0},
  {"mellum", ML_PRETOK_GPT2, 0},
  {"modern-bert", ML_PRETOK_GPT2, 0},
  {"kormo", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"f2llmv2", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"solar-open", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"grok-2", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"mellum2", ML_PRETOK_STARCODER, 0},
  {"deepseek-v3", ML_PRETOK_DEEPSEEK3, PRE_KEEP_SPACES},
  {"hunyuan-dense", ML_PRETOK_DEEPSEEK3, PRE_KEEP_SPACES},
  {"joyai-llm", ML_PRETOK_DEEPSEEK3, PRE_KEEP_SPACES},
  {"hy_v4", ML_PRETOK_DEEPSEEK3, PRE_KEEP_SPACES},
  {"gpt-4o", ML_PRETOK_GPT4O, PRE_KEEP_SPACES},
  {"llama4", ML_PRETOK_GPT4O, PRE_KEEP_SPACES},
  {"kanana2", ML_PRETOK_GPT4O, PRE_KEEP_SPACES},
  {"talkie", ML_PRETOK_GPT4O, PRE_KEEP_SPACES},
  {"minimax-m2", ML_PRETOK_GPT4O, PRE_KEEP_SPACES},
  /* Ling's regex differs from qwen2's only by possessive quantifiers and \s*[\r\n] for
   * \s*[\r\n]+, which match the same pieces here */
  {"bailingmoe", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"bailingmoe2", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"llada-moe", ML_PRETOK_QWEN2, PRE_KEEP_SPACES},
  {"qwen35", ML_PRETOK_QWEN35, PRE_KEEP_SPACES | PRE_NFC},
  {"seed-coder", ML_PRETOK_SEED_CODER, PRE_KEEP_SPACES},
  {"tekken", ML_PRETOK_TEKKEN, PRE_IGNORE_MERGES | PRE_ADD_BOS | PRE_KEEP_SPACES},
};

/* Pre-tokenizers llama.cpp knows whose regex sets moonlm does not implement yet: refused
 * by name, so the error says what is missing rather than "unknown". */
static const char *const pre_missing[] = {
  "kimi-k2", "ufakzeka", "minicpm5", "spark2_5", "youtu", "jais-2", "chameleon", "poro-chat", "bloom", "gpt3-finnish", "viking", "superbpe", "tiny_aya",
  "cohere2moe", "granite-embed-multi-97m", "granite-embed-multi-311m", "afmoe", "laguna", "exaone-moe", "gemma4",
  "sarvam-moe", "whitespace", NULL,
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
  if (model->len == 4 && memcmp(model->s, "bert", 4) == 0) {
    v->info.type = ML_VOCAB_WPM;
    v->info.add_bos = v->info.add_eos = 1; /* [CLS] text [SEP] */
    v->info.add_space_prefix = 1;          /* word-initial tokens begin with "▁" */
    v->info.clean_spaces = 1;              /* " ," -> "," when asked, as llama.cpp */
    v->pretok = ML_PRETOK_NONE;
    return 0;
  }
  if (!(model->len == 4 && memcmp(model->s, "gpt2", 4) == 0)) {
    ml_seterr("unsupported tokenizer model '%.*s' (" KEY("model") "; supported: llama, gpt2, bert)",
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
  for (const char *const *m = pre_missing; *m; m++)
    if (strlen(*m) == pre->len && memcmp(*m, pre->s, pre->len) == 0) {
      ml_seterr("pre-tokenizer '%s' (" KEY("pre") ") is not supported by moonlm yet: its regex set is not "
                "implemented, and another one would give different ids", *m);
      return -1;
    }
  ml_seterr("unknown pre-tokenizer '%.*s' (" KEY("pre") ")", (int)ML_MIN(pre->len, 64), pre->s);
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
  } else if (in->type == ML_VOCAB_WPM) { /* BERT's [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 */
    in->pad = 0 < n ? 0 : -1;
    in->unk = 100 < n ? 100 : -1;
    in->bos = 101 < n ? 101 : -1;
    in->sep = 102 < n ? 102 : -1;
    in->mask = 103 < n ? 103 : -1;
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
    {KEY("cls_token_id"), &in->bos}, /* BERT: [CLS] opens the text */
    {KEY("fim_rep_token_id"), &in->fim_rep}, {KEY("fim_sep_token_id"), &in->fim_sep},
  };
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
    if (read_id(v, ids[i].key, ids[i].id) != 0) return -1;
  if (in->type == ML_VOCAB_WPM) { /* the text ends with [SEP] */
    in->eos = in->sep;
    if (in->unk < 0) {
      ml_seterr("a WordPiece vocabulary needs an unknown token (" KEY("unknown_token_id") ")");
      return -1;
    }
  }
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

int ml_tok_is_glue(const ml_vocab *v, uint32_t cp) {
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
      if (cp != 0x2581 || i == 3 || ml_tok_is_glue(v, prev)) continue;
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
  if (v->info.type == ML_VOCAB_WPM) {
    /* llama.cpp's keys; without them, a vocabulary with upper-case letters is cased */
    v->info.lowercase = ml_gguf_get_bool(v->g, KEY("normalizer.lowercase"), -1);
    if (v->info.lowercase < 0) v->info.lowercase = ml_tok_wpm_lowercase(v);
    v->info.strip_accents = ml_gguf_get_bool(v->g, KEY("normalizer.strip_accents"), v->info.lowercase);
  }
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

int ml_tok_valid_id(const ml_vocab *v, int32_t id) { return id >= 0 && id < v->info.n_tokens; }

const char *ml_vocab_token_text(const ml_vocab *v, int32_t id, size_t *len) {
  if (!ml_tok_valid_id(v, id)) return NULL;
  if (len) *len = (size_t)v->text[id].len;
  return v->text[id].s;
}

float ml_vocab_token_score(const ml_vocab *v, int32_t id) { return ml_tok_valid_id(v, id) ? v->score[id] : 0.0f; }
int ml_vocab_token_type(const ml_vocab *v, int32_t id) { return ml_tok_valid_id(v, id) ? v->ftype[id] : 0; }
uint32_t ml_vocab_token_attr(const ml_vocab *v, int32_t id) { return ml_tok_valid_id(v, id) ? v->attr[id] : 0; }
int ml_vocab_is_eog(const ml_vocab *v, int32_t id) { return ml_tok_valid_id(v, id) && (v->attr[id] & ML_TOKEN_EOG); }

int32_t ml_vocab_find(const ml_vocab *v, const char *text, size_t len) {
  return text && len ? tok_find(v, text, len) : -1;
}
