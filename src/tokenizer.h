/* tokenizer.h: the vocabulary of a GGUF model, and text <-> token ids.
 *
 * Three tokenizer families, chosen by tokenizer.ggml.model:
 *   "llama"  SentencePiece BPE driven by token scores, byte fallback, dummy-prefix space;
 *   "gpt2"   byte-level BPE driven by merge ranks, with the pre-tokenizer named by
 *            tokenizer.ggml.pre (gpt-2, llama-bpe, qwen2, default, falcon, starcoder,
 *            deepseek-llm, deepseek-coder and their aliases);
 *   "bert"   WordPiece: BERT's normalizer and pre-tokenizer, greedy longest pieces.
 * They reproduce llama.cpp's llama_tokenize and, where llama.cpp departs from the model's
 * own tokenizer (qwen2's NFC, BERT's accents and long words), Hugging Face's ids.
 *
 * An ml_vocab is immutable after loading: any number of threads may use one at once. It
 * retains the ml_gguf it was loaded from and points into its mapping.
 *
 * Sizes follow one convention: a function writing into a caller buffer returns the count
 * written, or -(count needed) when the buffer is too small (nothing useful was written;
 * grow and call again), or ML_TOK_ERROR with ml_errmsg() set for anything else.
 */
#ifndef ML_TOKENIZER_H
#define ML_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#define ML_TOK_ERROR INT64_MIN

typedef struct ml_vocab ml_vocab;

typedef enum ml_vocab_type {
  ML_VOCAB_SPM = 1, /* tokenizer.ggml.model = "llama" */
  ML_VOCAB_BPE = 2, /* tokenizer.ggml.model = "gpt2" */
  ML_VOCAB_WPM = 3  /* tokenizer.ggml.model = "bert" */
} ml_vocab_type;

/* Token attributes (bit set). The first six come from tokenizer.ggml.token_type
 * (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); like llama.cpp, the
 * loader also marks end-of-generation tokens, and control-looking tokens it recognises by
 * text (<|im_end|>, <|eot_id|>, ...) as CONTROL even when the file says otherwise. */
enum {
  ML_TOKEN_NORMAL = 1 << 0,
  ML_TOKEN_UNKNOWN = 1 << 1,
  ML_TOKEN_CONTROL = 1 << 2,
  ML_TOKEN_USER_DEFINED = 1 << 3,
  ML_TOKEN_UNUSED = 1 << 4,
  ML_TOKEN_BYTE = 1 << 5,
  ML_TOKEN_LSTRIP = 1 << 6, /* as a special token in text, eats white space on its left */
  ML_TOKEN_RSTRIP = 1 << 7, /* ... and on its right (phi-3) */
  ML_TOKEN_EOG = 1 << 8     /* ends generation (ml_vocab_is_eog) */
};

/* Read-only facts about a vocabulary. Token ids are -1 when the model has none. */
typedef struct ml_vocab_info {
  ml_vocab_type type;
  int32_t n_tokens;
  int32_t n_merges;        /* merges in use (BPE) */
  const char *model;       /* "llama", "gpt2" or "bert" */
  const char *pre;         /* pre-tokenizer name as given ("" if absent) */
  int32_t bos, eos, eot, eom, unk, pad, sep, nl, mask;
  int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
  int add_bos, add_eos;    /* what tokenize does with add_bos/add_eos = -1 */
  int add_space_prefix;    /* SPM dummy prefix: a space is put in front of the text */
  int clean_spaces;        /* ML_DETOK_CLEAN_SPACES applies to this vocabulary */
  int ignore_merges;       /* a pre-token that is itself a token is emitted as is (llama-bpe) */
  int nfc;                 /* text is normalized to NFC before pre-tokenizing (qwen2) */
  int lowercase;           /* WordPiece: text is lower-cased ... */
  int strip_accents;       /* ... and its accents stripped (tokenizer.ggml.normalizer.*) */
  int n_eog;               /* number of end-of-generation tokens */
  size_t max_token_len;    /* bytes */
} ml_vocab_info;

/* Load from GGUF metadata (tokenizer.ggml.*). Everything is validated: a missing or
 * malformed key, an id out of range or arrays of different lengths give NULL and a message
 * naming the key. The vocab retains g (ml_gguf_retain); the caller keeps its own reference. */
ml_vocab *ml_vocab_load(ml_gguf *g);
void ml_vocab_free(ml_vocab *v); /* NULL is fine */

const ml_vocab_info *ml_vocab_get_info(const ml_vocab *v);

/* Per-token data; ids out of range give NULL / 0. The text is the token as stored in the
 * vocabulary (SPM "▁Hello", byte-level "ĠHello"), not NUL-terminated. */
const char *ml_vocab_token_text(const ml_vocab *v, int32_t id, size_t *len);
float ml_vocab_token_score(const ml_vocab *v, int32_t id);
int ml_vocab_token_type(const ml_vocab *v, int32_t id);       /* as stored: 1..6, 0 undefined */
uint32_t ml_vocab_token_attr(const ml_vocab *v, int32_t id);  /* ML_TOKEN_* */
int ml_vocab_is_eog(const ml_vocab *v, int32_t id);
/* The id whose stored text is exactly text[0..len), or -1. */
int32_t ml_vocab_find(const ml_vocab *v, const char *text, size_t len);

/* Tokenize text[0..len) (any bytes, up to 1 GiB; invalid UTF-8 is kept: SPM falls back to
 * byte tokens, BPE maps the bytes). add_bos / add_eos: 1 yes, 0 no, -1 the vocabulary's
 * default. parse_special: control and user-defined tokens written in the text become those
 * tokens (longest first); when 0, only user-defined tokens are (as llama.cpp and Hugging
 * Face do). Writes at most n_max ids to out (out may be NULL when n_max is 0); the ids
 * written are the first n_max of the full result. */
int64_t ml_vocab_tokenize(const ml_vocab *v, const char *text, size_t len, int add_bos, int add_eos,
                          int parse_special, int32_t *out, int64_t n_max);
/* parse_special may also carry ML_TOK_NO_PREFIX: no SPM dummy prefix, for text that
 * continues other text (tokens a grammar forces in the middle of an output). */
enum { ML_TOK_NO_PREFIX = 2 };

/* Detokenizing flags. */
enum {
  ML_DETOK_SPECIAL = 1,        /* render control/unknown tokens as their text (else nothing) */
  ML_DETOK_REMOVE_SPECIAL = 2, /* drop a leading BOS if the vocab adds BOS, a trailing EOS if it adds EOS */
  ML_DETOK_STRIP_SPACE = 4,    /* undo the SPM dummy prefix: drop one leading space from the
                                  text at the start and after each special token */
  ML_DETOK_CLEAN_SPACES = 8    /* " ," -> "," and the like, if the vocab wants it (llama.cpp) */
};

/* The bytes of one token (may be a partial UTF-8 character). flags: ML_DETOK_SPECIAL. */
int64_t ml_vocab_piece(const ml_vocab *v, int32_t id, int flags, char *buf, size_t cap);
/* Concatenated pieces of ids[0..n) with the ML_DETOK_* flags. Bytes as produced, which are
 * valid UTF-8 whenever the ids came from tokenizing valid UTF-8. */
int64_t ml_vocab_detokenize(const ml_vocab *v, const int32_t *ids, int64_t n, int flags, char *buf,
                            size_t cap);

/* Streaming detokenizer: push ids one at a time and get text that is always valid UTF-8.
 * Bytes of a character split across tokens are held back until it completes; a byte
 * sequence that can no longer become valid is replaced by U+FFFD as soon as that is
 * known; flush gives what is held back (incomplete sequences as U+FFFD) and resets.
 * flags: ML_DETOK_SPECIAL, ML_DETOK_STRIP_SPACE. The returned pointer is owned by the
 * decoder and valid until its next call. The vocab must outlive the decoder. */
typedef struct ml_decoder ml_decoder;
ml_decoder *ml_decoder_new(const ml_vocab *v, int flags);
int64_t ml_decoder_push(ml_decoder *d, int32_t id, const char **out); /* bytes ready, or ML_TOK_ERROR */
int64_t ml_decoder_flush(ml_decoder *d, const char **out);
void ml_decoder_reset(ml_decoder *d);
void ml_decoder_free(ml_decoder *d);

#endif
