/* unicode.h: what the tokenizers need from Unicode: UTF-8 decoding that never fails,
 * character classes (the \p{..} and \s of the pre-tokenizer regexes), NFC, and the
 * hand-written pre-tokenizer splitters.
 *
 * Text is handled as an array of code points decoded once. A byte that does not start a
 * well-formed UTF-8 sequence decodes to ML_UC_RAW + byte, a value above U+10FFFF, so that
 * encoding the array again gives back the original bytes; such values have the class of
 * U+FFFD (a symbol), which is what llama.cpp substitutes for them.
 */
#ifndef ML_UNICODE_H
#define ML_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* character class bits (one byte per code point) */
#define ML_UC_L 0x01   /* \p{L}: Lu Ll Lt Lm Lo */
#define ML_UC_N 0x02   /* \p{N}: Nd Nl No */
#define ML_UC_P 0x04   /* \p{P} */
#define ML_UC_S 0x08   /* \p{S} */
#define ML_UC_M 0x10   /* \p{M} */
#define ML_UC_NFC 0x20 /* may change under NFC: ccc != 0 or NFC_Quick_Check != Yes */
#define ML_UC_C 0x40   /* Cc Cf Cs Co (unassigned code points have no class bit) */
#define ML_UC_WS 0x80  /* White_Space (PropList.txt): what \s means here */

#define ML_UC_RAW 0x110000u /* ML_UC_RAW + b: the undecodable byte b */

uint8_t ml_uc_flags(uint32_t cp);

/* Decode one character from s[0..n), n >= 1. Returns the bytes used (1..4); a byte that
 * does not begin a well-formed sequence gives *cp = ML_UC_RAW + byte and 1. */
size_t ml_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* Encode cp (or a raw byte value) into out; returns 1..4. */
size_t ml_utf8_encode(uint32_t cp, uint8_t out[4]);

/* Classify the sequence at s[0..n), n >= 1, for streaming output:
 *  > 0: a complete well-formed character of that many bytes;
 *  = 0: a proper prefix of a well-formed character (more bytes may complete it);
 *  < 0: ill-formed; -(length of the maximal subpart to replace with one U+FFFD). */
int ml_utf8_check(const uint8_t *s, size_t n);

/* NFC. ml_nfc_needed is a quick check: 0 when the text is certainly already NFC.
 * ml_nfc writes the NFC form of in[0..n) to out, which must hold 4 * n code points
 * (the longest canonical decomposition is 4), and returns its length. Raw-byte values
 * pass through as starters that never combine. */
int ml_nfc_needed(const uint32_t *cp, const uint8_t *fl, size_t n);
size_t ml_nfc(const uint32_t *in, size_t n, uint32_t *out);

/* NFD: the full canonical decomposition of in[0..n) in canonical order, into out (room
 * for 4 * n); returns its length. */
size_t ml_nfd(const uint32_t *in, size_t n, uint32_t *out);
/* Is cp a nonspacing mark (Mn)? */
int ml_uc_is_mn(uint32_t cp);
/* The full lower-case mapping of cp (unconditional, as Rust's char::to_lowercase): 1 or 2
 * code points. */
size_t ml_uc_lower(uint32_t cp, uint32_t out[2]);

/* Pre-tokenizers: the regex chains of llama.cpp's llm_tokenizer_bpe, each regex written
 * out by hand. Multi-regex chains apply each regex to every piece of the previous one,
 * keeping matched and unmatched parts. */
typedef enum ml_pretok {
  ML_PRETOK_NONE = 0,     /* the whole text is one piece */
  ML_PRETOK_GPT2,         /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
  ML_PRETOK_LLAMA3,       /* (?i:'s|..)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
  ML_PRETOK_QWEN2,        /* LLAMA3 with \p{N} instead of \p{N}{1,3} */
  ML_PRETOK_DEFAULT,      /* [\p{P}$+<=>^~|]+, GPT2, \p{N}+, [0-9][0-9][0-9] */
  ML_PRETOK_FALCON,       /* [\p{P}$+<=>^~|`]+, GPT2, [0-9][0-9][0-9] */
  ML_PRETOK_STARCODER,    /* \p{N}, GPT2 (also refact, smollm, command-r ...) */
  ML_PRETOK_DEEPSEEK_LLM, /* [\r\n], \s?[Latin/Greek/.. letters]+, \s?[ASCII/fullwidth punct]+, \s+$, [CJK]+, \p{N}+ */
  ML_PRETOK_DEEPSEEK_CODER, /* [\r\n], \s?\p{L}+, \s?\p{P}+, [CJK]+, \p{N} */
  ML_PRETOK_DEEPSEEK3,    /* \p{N}{1,3}, [Han, kana]+, then [punct][A-Za-z]+ | letters and marks |
                             punctuation and symbols | white space (deepseek-v3) */
  ML_PRETOK_GPT4O,        /* o200k: words split where lower case turns to upper, \p{N}{1,3},
                             punctuation runs with trailing newlines and slashes (gpt-4o, llama4) */
  ML_PRETOK_TEKKEN,       /* GPT4O without the contractions and with \p{N} alone (Mistral's tekken) */
  ML_PRETOK_SEED_CODER,   /* QWEN2 without the newlines after a punctuation run */
  ML_PRETOK_QWEN35,       /* QWEN2 with marks: [\p{L}\p{M}]+, and punctuation excluding \p{M} */
  ML_PRETOK_COUNT
} ml_pretok;

/* Split cp[0..n) (fl[i] = ml_uc_flags(cp[i])) into pieces. Writes the end index of each
 * piece, ascending (the last is n), to ends and returns the number of pieces (0 for n == 0).
 * ends and tmp must each hold n + 1 entries. */
size_t ml_pretok_split(ml_pretok kind, const uint32_t *cp, const uint8_t *fl, size_t n,
                       uint32_t *ends, uint32_t *tmp);

#endif
