/* grammar.h: constrained decoding. A grammar (GBNF, a regular expression or a list of
 * literal choices) is compiled once into byte-level automata; a matcher follows one
 * sequence of tokens through it and says which tokens of a vocabulary may come next.
 *
 *   ml_grammar  compiled, immutable, refcounted, shared by any number of threads and Lua
 *               states (by handle, through the registry).
 *   ml_gvocab   the token bytes of a vocabulary and its token trie, built once per
 *               vocabulary (a model keeps its own) and shared by every grammar and matcher.
 *   ml_matcher  the state of one sequence: masks, accept, rollback, lazy triggers. One
 *               thread at a time.
 *
 * Masks are bitsets of n_vocab bits (uint64_t words, bit i of word i/64 is token i).
 * End-of-generation tokens are allowed exactly when the grammar can end here. Control
 * tokens that are not end-of-generation, and tokens with no bytes, are never allowed.
 * Terminals are Unicode code points matched in their UTF-8 encoding; a token may end in
 * the middle of a character when some allowed character starts with its bytes.
 *
 * Failures return NULL or -1 with ml_errmsg() set; nothing here aborts on input.
 */
#ifndef ML_GRAMMAR_H
#define ML_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct ml_grammar ml_grammar;
typedef struct ml_gvocab ml_gvocab;
typedef struct ml_matcher ml_matcher;

/* ---- grammars ---- */

typedef struct ml_grammar_opts {
  const char *root; /* GBNF start rule (NULL: "root") */
} ml_grammar_opts;

/* GBNF as llama.cpp defines it. Errors name the line and column ("expecting '::=' at line
 * 3, column 9"), undefined rules, left recursion, and grammars beyond the compile budget. */
ml_grammar *ml_grammar_gbnf(const char *text, size_t len, const ml_grammar_opts *opts);
/* A regular expression (ECMAScript syntax, the subset without look-around and back
 * references) that the whole output must match. */
ml_grammar *ml_grammar_regex(const char *pattern, size_t len);
/* One of n literal byte strings. */
ml_grammar *ml_grammar_choice(const char *const *items, const size_t *lens, size_t n);

void ml_grammar_retain(ml_grammar *g);
void ml_grammar_release(ml_grammar *g); /* NULL is fine */
int64_t ml_grammar_handle(const ml_grammar *g);
ml_grammar *ml_registry_grammar(int64_t handle); /* retained, or NULL if gone */

typedef struct ml_grammar_stats {
  int32_t n_rules;    /* rules after parsing (repetitions and groups are not rules) */
  int32_t n_machines; /* automata: the root and the recursive rules */
  int32_t n_nfa;      /* NFA states, all machines */
  int32_t n_states;   /* DFA states made so far (they are made on demand) */
  int32_t n_classes;  /* byte classes */
  size_t bytes;       /* memory of the compiled grammar */
} ml_grammar_stats;
void ml_grammar_get_stats(const ml_grammar *g, ml_grammar_stats *s);

/* ---- vocabularies ---- */

/* The token index of a tokenizer; n_vocab >= the tokenizer's size is the mask width (a
 * model's logits may have more rows than the tokenizer has tokens: those are never
 * allowed). refcount 1; the vocab is not retained (token bytes are copied). */
ml_gvocab *ml_gvocab_from_vocab(const ml_vocab *v, int64_t n_vocab);
/* From raw token byte strings (lens[i] bytes each; a NULL item is a token never allowed)
 * and the ids that end generation. */
ml_gvocab *ml_gvocab_from_tokens(const char *const *toks, const size_t *lens, int32_t n,
                                 const int32_t *eog, int32_t n_eog);
/* A model's own (built on first use, kept until the model goes); retained, or NULL. */
struct ml_model;
ml_gvocab *ml_model_gvocab(struct ml_model *m);
void ml_gvocab_retain(ml_gvocab *v);
void ml_gvocab_release(ml_gvocab *v);
int32_t ml_gvocab_n_vocab(const ml_gvocab *v);
/* The bytes a token contributes (NULL for tokens that are never text). */
const char *ml_gvocab_token(const ml_gvocab *v, int32_t id, size_t *len);
int ml_gvocab_is_eog(const ml_gvocab *v, int32_t id);

/* ---- matchers ---- */

typedef struct ml_matcher_opts {
  /* Lazy: the grammar stays inactive (every token allowed) until a trigger word appears
   * in the output or a trigger token is accepted; from the start of the trigger word (or
   * the trigger token's text) on, the output must match the grammar. */
  int lazy;
  const char *const *trigger_words;
  const size_t *trigger_lens;
  int32_t n_trigger_words;
  const int32_t *trigger_tokens;
  int32_t n_trigger_tokens;
} ml_matcher_opts;

ml_matcher *ml_matcher_new(ml_grammar *g, ml_gvocab *v, const ml_matcher_opts *opts);
void ml_matcher_free(ml_matcher *m);
int32_t ml_matcher_n_vocab(const ml_matcher *m);
size_t ml_matcher_mask_words(const ml_matcher *m); /* uint64_t words of a mask */

/* The allowed next tokens. Returns a pointer to the matcher's own bitset (valid until the
 * next call that changes the state), or NULL with an error. */
const uint64_t *ml_matcher_mask(ml_matcher *m);
/* Advance by one token: 1 accepted, 0 refused (state unchanged), -1 error. */
int ml_matcher_accept(ml_matcher *m, int32_t id);
/* Would id be accepted? (no state change) 1 / 0 / -1. */
int ml_matcher_allows(ml_matcher *m, int32_t id);
/* Advance by raw bytes (one step in the history): 1, 0 (unchanged), -1. */
int ml_matcher_accept_bytes(ml_matcher *m, const char *s, size_t len);
int ml_matcher_can_end(const ml_matcher *m);  /* the output may stop here */
int ml_matcher_is_done(const ml_matcher *m);  /* ... and nothing else may follow */
int ml_matcher_is_active(const ml_matcher *m); /* not a lazy matcher waiting for its trigger */
void ml_matcher_reset(ml_matcher *m);
/* Undo the last n accepts (tokens or byte strings); -1 if fewer than n happened. */
int ml_matcher_rollback(ml_matcher *m, int32_t n);
int32_t ml_matcher_n_accepted(const ml_matcher *m);
/* The bytes that must come next whatever is generated (the grammar allows exactly one
 * continuation, up to where it branches or may end). Returns the length written (at most
 * cap). */
size_t ml_matcher_forced(ml_matcher *m, char *buf, size_t cap);

/* out[i] = bit i (0 or 1), i < n. */
void ml_mask_to_i8(const uint64_t *bits, int8_t *out, int64_t n);
/* logits[i] = -inf for every i < n whose bit is clear. */
void ml_mask_apply(const uint64_t *bits, float *logits, int64_t n);

#endif
