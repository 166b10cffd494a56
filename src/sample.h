/* sample.h: sampling over one row of logits for a whole vocabulary, so the Lua sampler
 * (lua/moonlm/sampler.lua) only ever handles a few candidates per token. No Lua here.
 *
 * A row goes through, in this order (llama.cpp's default chain):
 *   allow      a token mask (a grammar's bitset over the vocabulary): a token whose bit is
 *              clear is banned (-inf) before anything else
 *   bias       logit_bias: logit += bias
 *   penalties  over the last penalty_last_n ids of the history: repeat (positive logits
 *              divided by it, negative ones multiplied), then - count * frequency - presence
 * then one of
 *   ml_sample_top    the k best adjusted logits, sorted best first (ties: the lower id), or
 *                    only the head of them whose probability mass reaches a top_p hint
 *   ml_sample_draw   top_p -> min_p -> temperature -> draw, over the whole vocabulary.
 * The logits are never written: the few tokens bias and penalties change are kept aside.
 *
 *   ml_sample_adjust a = { .allow = mask, .bias_id = ids, .bias = b, .n_bias = 2, ... };
 *   void *work = <ml_sample_work_bytes(n, &a) bytes, 8-byte aligned, reused call to call>;
 *   ml_sample_row r;
 *   if (ml_sample_prepare(&r, logits, n, &a, work) < 0) ...;   // misuse of a (ids out of range)
 *   int64_t m = ml_sample_top(&r, 40, 1.0, cands, &z);          // or
 *   int64_t id = ml_sample_draw(&r, &cuts, u, &p);
 *
 * Every function here is deterministic: the same logits, options and uniform number u give
 * the same token on every machine with the same kernel level (the exponentials are a row op
 * of the level).
 */
#ifndef ML_SAMPLE_H
#define ML_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ml_cand {
  float v;    /* the value it was ranked by (NaN ranked and reported as -inf) */
  int32_t id; /* its index */
} ml_cand;

/* The k best of the n values x[0], x[st], x[2 st], ...: the largest (or the smallest, with
 * largest = 0), NaN ranking last, ties going to the lower index; into out[0..min(k, n)),
 * best first. Returns min(k, n). The one top-k of the library (ops.c's topk uses it). */
int64_t ml_top_k(const float *x, int64_t st, int64_t n, int64_t k, int largest, ml_cand *out);

/* How a row's logits are adjusted before anything is cut (all fields optional: zeros and
 * NULLs adjust nothing; repeat = 0 counts as 1). */
typedef struct ml_sample_adjust {
  const uint32_t *allow;    /* NULL, or ceil(n / 32) words: token i is allowed when bit
                               i % 32 of word i / 32 is set */
  const int32_t *bias_id;   /* n_bias token ids (each in [0, n); repeats add up) */
  const float *bias;        /* and what is added to their logits */
  int64_t n_bias;
  const int32_t *history;   /* the ids generated so far, oldest first (ids outside [0, n) are
                               skipped but take their place in the window) */
  int64_t n_history;
  int64_t last_n;           /* the penalty window: the last last_n ids (< 0: all of them) */
  double repeat, frequency, presence; /* 1, 0, 0: no penalty */
} ml_sample_adjust;

/* A prepared row (points into the logits, the adjustment and the work memory). */
typedef struct ml_sample_row {
  const float *x;
  int64_t n;
  const uint32_t *allow;
  int64_t nadj;          /* tokens whose logit bias or penalties changed */
  const int32_t *ids;    /* their ids */
  const float *adj;      /* and their adjusted logits */
  const uint8_t *touched; /* n flags (NULL when nadj = 0): 1 for those tokens */
  float *v;              /* work: n floats (the adjusted row, when one is needed) */
  void *draw_work;       /* work for ml_sample_draw */
} ml_sample_row;

/* Bytes of work memory a row of n logits with this adjustment needs, for either function. */
size_t ml_sample_work_bytes(int64_t n, const ml_sample_adjust *a);

/* Applies a (which may be NULL) to the n logits x. Returns 0, or -1 with a misuse of input 2
 * (a bias id out of range). */
int ml_sample_prepare(ml_sample_row *r, const float *x, int64_t n, const ml_sample_adjust *a, void *work);

/* Token i's logit after the mask, bias and penalties. */
float ml_sample_value(const ml_sample_row *r, int64_t i);

/* The k best adjusted logits into out (k entries), sorted. With top_p_hint < 1 (and k = n, and
 * n > 64), only the shortest head whose probability mass (softmax at temperature 1) reaches
 * the hint, and *z = sum(exp(v - out[0].v)) over the whole vocabulary, for the Lua side's
 * probabilities of the full distribution; otherwise *z = 0. Returns how many are in out. */
int64_t ml_sample_top(const ml_sample_row *r, int64_t k, double top_p_hint, ml_cand *out, double *z);

/* The whole-vocabulary chain: top_p -> min_p -> temperature -> a draw with u in [0, 1).
 * temperature <= 0 is greedy (the best adjusted logit, lowest id among equals). Returns the
 * token and its probability under the final distribution in *prob, or -1 when there is no
 * distribution: every token banned (-inf, NaN) or a logit of +inf. */
typedef struct ml_sample_cuts {
  double top_p, min_p, temperature;
} ml_sample_cuts;
int64_t ml_sample_draw(const ml_sample_row *r, const ml_sample_cuts *c, double u, double *prob);

/* Log-probabilities over the whole vocabulary, as OpenAI's logprobs: the log-softmax at
 * temperature 1 of the adjusted row (mask, bias, penalties), before temperature and any cut.
 * *lp is token id's (-inf if banned); top[0..k) the k most likely tokens, best first (ties:
 * the lower id), their log-probability in .v; banned tokens are never listed, so fewer than k
 * may come back. Both rounded to float. Returns how many are in top. */
int64_t ml_sample_logprobs(const ml_sample_row *r, int64_t id, int64_t k, double *lp, ml_cand *top);

#endif
