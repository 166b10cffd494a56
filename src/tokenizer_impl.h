/* tokenizer_impl.h: the inside of a vocabulary, shared by the tokenizer files (nothing here
 * leaves the module):
 *   tokenizer.c         loading: tokens, merges, special tokens, per-model quirks; queries
 *   tokenize.c          ml_vocab_tokenize: special-token partition, chunks, per-call scratch
 *   tokenizer_spm.c     SentencePiece BPE by score, byte fallback
 *   tokenizer_bpe.c     byte-level BPE by merge rank, after the pre-tokenizer split
 *   tokenizer_wpm.c     WordPiece (BERT)
 *   tokenizer_decode.c  pieces, detokenize and the streaming UTF-8 decoder
 */
#ifndef ML_TOKENIZER_IMPL_H
#define ML_TOKENIZER_IMPL_H

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer.h"
#include "unicode.h"

#define KEY(s) "tokenizer.ggml." s

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

static inline uint64_t mix64(uint64_t x) { /* murmur3's finalizer: every bit reaches the low bits */
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static inline uint32_t hash_bytes(const void *p, size_t n) {
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

static inline int32_t tok_find_h(const ml_vocab *v, const void *s, size_t n, uint32_t h) {
  uint32_t i = h & v->tok_mask;
  for (;;) {
    const tok_slot *e = &v->tok[i];
    if (e->id < 0) return -1;
    if (e->hash == h && v->text[e->id].len == n && memcmp(v->text[e->id].s, s, n) == 0) return e->id;
    i = (i + 1) & v->tok_mask;
  }
}

static inline int32_t tok_find(const ml_vocab *v, const void *s, size_t n) { return tok_find_h(v, s, n, hash_bytes(s, n)); }

static inline const merge_slot *merge_find(const ml_vocab *v, int32_t a, int32_t b) {
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

static inline void put(outbuf *o, int32_t id) {
  if (o->n < o->cap) o->ids[o->n] = id;
  o->n++;
}

/* Scratch helpers (tokenize.c). GROW(ptr, cap, need, err) grows an array in place. */
void *ml_tok_grow(void *p, size_t *cap, size_t need, size_t size, int *err);
#define GROW(ptr, cap, need, err) ((ptr) = ml_tok_grow((ptr), &(cap), (need), sizeof *(ptr), &(err)))
int ml_tok_grow_cp(scratch *sc, size_t need);
int ml_tok_grow_sym(scratch *sc, size_t need);
int ml_tok_heap_push(scratch *sc, uint64_t key, int32_t a, int32_t b, int32_t c);
heap_item ml_tok_heap_pop(scratch *sc);
int ml_tok_cache_get(scratch *sc, const uint8_t *p, size_t n, outbuf *o, uint16_t **slot, uint32_t *h);
void ml_tok_cache_put(scratch *sc, uint16_t *slot, uint32_t h, const uint8_t *p, size_t n, const outbuf *o,
                      int64_t from);
void ml_tok_put_byte(const ml_vocab *v, outbuf *o, uint8_t b);

/* tokenizer.c */
int ml_tok_valid_id(const ml_vocab *v, int32_t id);
int ml_tok_is_glue(const ml_vocab *v, uint32_t cp); /* SPM: may precede "▁" inside a token */

/* One raw fragment (no special tokens in it) into ids, per family. prefix: SPM's dummy
 * space goes in front. */
int ml_tok_spm_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, int prefix, outbuf *o);
int ml_tok_bpe_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, outbuf *o);
int ml_tok_wpm_fragment(const ml_vocab *v, scratch *sc, const uint8_t *s, size_t n, outbuf *o);
int ml_tok_wpm_lowercase(const ml_vocab *v); /* does this WordPiece vocabulary lower-case? */

/* tokenizer_decode.c */
int ml_tok_is_special(const ml_vocab *v, int32_t id);

#endif
