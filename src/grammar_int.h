/* grammar_int.h: what the grammar files share. The pipeline:
 *
 *   text --grammar_gbnf.c / grammar_regex.c--> gx_ast (rules of expressions over code
 *   points and bytes) --grammar_compile.c--> ml_grammar (DFAs over bytes, one per machine,
 *   with call edges between machines) --grammar_match.c--> configurations (sets of stacks)
 *   --grammar_mask.c--> token masks, walking grammar_vocab.c's token trie.
 */
#ifndef ML_GRAMMAR_INT_H
#define ML_GRAMMAR_INT_H

#include <pthread.h>
#include <stdint.h>

#include "common.h"
#include "grammar.h"

/* ---- limits (the compile budget) ---- */
#define GX_MAX_TEXT ((size_t)16 << 20)   /* grammar text bytes */
#define GX_MAX_NEST 400                  /* nested groups / inlined references */
#define GX_MAX_REPEAT 1000000            /* a repetition count */
#define GX_MAX_NFA (3 << 20)             /* NFA states after expansion */
#define GX_MAX_DFA (1 << 19)             /* DFA states, all machines */
#define GX_MAX_WORK ((int64_t)8 << 20)   /* subset construction steps */
#define GX_MAX_TABLE ((size_t)48 << 20)  /* DFA transition entries (states x classes) */

/* ---- the AST ---- */
typedef enum gx_kind {
  GX_EMPTY, /* matches "" */
  GX_BYTES, /* literal bytes: a = offset into bytes, b = length */
  GX_CLASS, /* code points: a = offset into ranges (pairs lo, hi), b = pair count */
  GX_SEQ,   /* a = offset into kids, b = count */
  GX_ALT,   /* a = offset into kids, b = count */
  GX_REP,   /* a = child, b = min, c = max (-1: unbounded) */
  GX_REF,   /* a = rule */
  GX_BOL,   /* regex ^: matches "" at the start of the text only */
  GX_EOL    /* regex $: matches "" at the end of the text only */
} gx_kind;

typedef struct gx_node {
  int32_t kind, a, b, c;
  int32_t pos; /* byte offset in the source, for errors */
} gx_node;

typedef struct gx_rule {
  int32_t name, name_len; /* offset into names */
  int32_t body;           /* node, -1 while undefined */
  int32_t pos;            /* first reference or the definition */
} gx_rule;

typedef struct gx_ast {
  gx_node *nodes;
  int32_t n_nodes, cap_nodes;
  int32_t *kids;
  int32_t n_kids, cap_kids;
  uint32_t *ranges;
  int32_t n_ranges, cap_ranges; /* in uint32 (two per pair) */
  uint8_t *bytes;
  int32_t n_bytes, cap_bytes;
  gx_rule *rules;
  int32_t n_rules, cap_rules;
  char *names;
  int32_t n_names, cap_names;
  int32_t *rhash; /* open addressing over rule ids, size hcap */
  int32_t hcap;
  const char *src; /* the source text, for error positions */
  size_t src_len;
  const char *what; /* "gbnf", "regex" */
} gx_ast;

void gx_ast_free(gx_ast *a);
int32_t gx_node_new(gx_ast *a, int kind, int32_t x, int32_t y, int32_t z, int32_t pos);
int32_t gx_kids_add(gx_ast *a, const int32_t *k, int32_t n); /* returns offset */
int32_t gx_ranges_add(gx_ast *a, const uint32_t *r, int32_t npairs);
int32_t gx_bytes_add(gx_ast *a, const void *b, int32_t n);
int32_t gx_rule_get(gx_ast *a, const char *name, int32_t len, int32_t pos); /* -1: oom */
/* Code point set from pairs (any order, overlapping): sorted, merged, surrogates removed;
 * negate: complement within 0..0x10FFFF. Returns the node or -1. */
int32_t gx_class_node(gx_ast *a, uint32_t *pairs, int32_t npairs, int negate, int32_t pos);
/* Record an error at a source position: "<msg> at line L, column C". Returns -1. */
int gx_err(const gx_ast *a, int32_t pos, const char *fmt, ...) ML_PRINTF(3, 4);
/* Decode one UTF-8 character strictly; its length, or 0 if invalid/truncated. */
int gx_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
int gx_utf8_encode(uint32_t cp, uint8_t *out);

/* Parsers: 0 or -1 with ml_errmsg set. The root rule id goes to *root. */
int gx_parse_gbnf(gx_ast *a, const char *text, size_t len, const char *root, int32_t *root_rule);
int gx_parse_regex(gx_ast *a, const char *pat, size_t len, int32_t *root_rule);

/* ---- the compiled grammar ---- */

/* NFA states (Thompson, over bytes): epsilon splits, byte ranges, calls of a machine,
 * the end of a machine, and regex anchors (epsilon edges with a condition). */
enum { N_EPS, N_RANGE, N_CALL, N_FINAL, N_BOL, N_EOL, N_RANGES };
typedef struct nst {
  uint8_t kind, lo, hi, pad; /* N_RANGE: bytes lo..hi; N_RANGES: pad (lo, hi) pairs */
  int32_t out, out2; /* -1: none (out2: an edge of N_EPS, N_BOL, N_EOL only) */
  int32_t call;      /* machine (N_CALL), or offset of the pairs in rpool (N_RANGES) */
} nst;

/* Does NFA state u (N_RANGE or N_RANGES) take byte b? */
static inline int nst_takes(const uint8_t *rpool, const nst *u, int b) {
  if (u->kind == N_RANGE) return u->lo <= b && b <= u->hi;
  const uint8_t *r = rpool + u->call;
  for (int i = 0; i < u->pad; i++)
    if (r[2 * i] <= b && b <= r[2 * i + 1]) return 1;
  return 0;
}

enum {
  GS_ACCEPT = 1,  /* the machine may return here */
  GS_CALLS = 2,   /* has call edges */
  GS_EPSEND = 4,  /* may return without consuming (accept, or nullable calls to an accepting state) */
  GS_BYTES = 8    /* has byte transitions */
};

typedef struct gcall {
  int32_t machine, ret; /* callee, and the caller's state once it returns */
} gcall;

/* DFA transition table entries: 0 not computed yet, GD_DEAD no transition, t * n_cls for
 * a plain target state t, -t * n_cls for a target that calls or may return. */
#define GD_DEAD INT32_MIN
#define GD_ERR (INT32_MIN + 1) /* gd_fill failed (never stored) */

struct gdfa;

struct ml_grammar {
  int refcount; /* atomic */
  int64_t handle;
  int32_t n_rules;
  int32_t root;       /* root machine */
  /* the NFA, immutable after compiling */
  nst *nfa;
  int32_t n_nfa;
  uint8_t *rpool;     /* byte pairs of the N_RANGES states */
  int32_t n_machines;
  int32_t *mentry;    /* NFA entry of each machine */
  int32_t *mlo;       /* machine m's NFA states are [mlo[m], mlo[m + 1]) */
  uint8_t *useful;    /* NFA states on some path to the end of their machine (NULL: all) */
  int all_useful;     /* known at compile time: every state is */
  /* (N_CALL states keep their call's index in out2, and in pad whether they may return
   * without consuming) */
  uint64_t *cfo;      /* per call, 4 words: bytes that may come first after it returns */
  uint8_t *nullable;  /* per machine */
  uint64_t *mfirst;   /* per machine, 4 words: bytes it may begin with */
  uint64_t *follow;   /* per machine, 4 words: bytes that may come right after it returns */
  uint64_t *enter;    /* per machine, 4 words: bytes a call to it may begin with (first bytes,
                         and its follow when it may return at once) */
  int32_t n_cls;
  uint8_t cls[256];   /* byte -> class */
  uint8_t rep[256];   /* class -> one of its bytes */
  /* the DFA, made on demand (grammar_dfa.c): states and entries are created under dfa_mu
   * and published with release stores; everything below is read without a lock and
   * never moves (reserved address space) */
  int32_t cap_states;
  int32_t n_states;   /* atomic; state 0 is unused (dead is GD_DEAD) */
  int32_t *table;     /* cap_states x n_cls */
  uint8_t *flags;     /* GS_* */
  uint64_t *first;    /* 4 words per state: bytes consumable first (directly or through calls) */
  int32_t *mstate_machine;
  int32_t *call_off, *call_n; /* the state's calls: calls[call_off .. + call_n) */
  gcall *calls;
  int32_t cap_calls;
  int32_t *mstart;    /* start state per machine */
  struct gdfa *dfa;
  pthread_mutex_t dfa_mu;
  size_t bytes;
  /* per-vocabulary mask caches (grammar_mask.c) */
  pthread_mutex_t mu;
  struct gbind *binds;
};

/* A code point range as UTF-8 byte-range sequences (grammar_compile.c): appended to out. */
typedef struct useq {
  uint8_t lo[4], hi[4];
  int len;
} useq;
typedef struct uvec {
  useq *s;
  int32_t n, cap;
} uvec;
int gx_utf8_split(uint32_t lo, uint32_t hi, uvec *out);

/* AST -> grammar (grammar_compile.c); the NFA is handed to gd_init. */
ml_grammar *gx_compile(gx_ast *a, int32_t root_rule);

/* The machine of NFA state u. */
static inline int32_t gx_machine_of(const ml_grammar *g, int32_t u) {
  int32_t lo = 0, hi = g->n_machines - 1;
  while (lo < hi) {
    int32_t mid = (lo + hi + 1) / 2;
    if (g->mlo[mid] <= u) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/* grammar_dfa.c: analysis of the NFA and the DFA made on demand. */
int gd_init(ml_grammar *g);   /* after nfa/mentry/nmachine/classes are set: 0 or -1 */
void gd_free(ml_grammar *g);
/* The table entry of (state, class), computing it if needed: an entry as stored, or GD_ERR
 * (budget or memory, error set). */
int32_t gd_fill(ml_grammar *g, int32_t s, int c);
/* The state after byte b from s: > 0, 0 for none, -1 on error. */
static inline int32_t gd_step(ml_grammar *g, int32_t s, uint8_t b) {
  int c = g->cls[b];
  int32_t x = __atomic_load_n(&g->table[(size_t)s * (size_t)g->n_cls + (size_t)c], __ATOMIC_ACQUIRE);
  if (x == 0) x = gd_fill(g, s, c);
  if (x == GD_DEAD) return 0;
  if (x == GD_ERR) return -1;
  return (x > 0 ? x : -x) / g->n_cls;
}
static inline int gr_first_has(const ml_grammar *g, int32_t s, uint8_t b) {
  return (int)((g->first[(size_t)s * 4 + (b >> 6)] >> (b & 63)) & 1);
}

/* ---- vocabularies and their tries (grammar_vocab.c) ---- */

/* A token trie laid out in depth-first order: node i's subtree is [i, i + sub[i]). */
typedef struct gtrie {
  int32_t n;
  int32_t max_depth;
  int32_t none;     /* tok of a node that ends no token: a bit past the mask (masks have a spare word) */
  uint32_t *sub;
  int32_t *tok;     /* token ending here, or none */
  uint16_t *depth;  /* bytes from the root */
  uint8_t *byte;    /* the byte leading here */
  int32_t n_dup;    /* tokens with the same bytes as another: (first, other) pairs */
  int32_t *dup;
} gtrie;

/* A slice: the tokens made only of whole characters of one class (the inside of a JSON
 * string, a line of text), by length in characters, and the rest of the vocabulary in a
 * trie of its own. A state that every character of the class takes to one same next state
 * (and so on along a chain) accepts the members by length alone. */
#define GV_SLICE_LENS 16
#define GV_SLICE_MAX_CHARS 32 /* longer members go to the rest: a state's chain is checked this far */
typedef struct gslice {
  int id;                     /* its index in the vocabulary's slices */
  uint32_t *ranges;           /* code point pairs */
  int32_t n_ranges;
  int32_t max_len;            /* longest member, in characters */
  uint64_t *upto[GV_SLICE_LENS + 1]; /* upto[L]: members of 1..L characters (n_words + 1 each) */
  int32_t n_long;             /* members longer than GV_SLICE_LENS, by length */
  int32_t *long_id;
  int32_t *long_len;
  gtrie rest;
} gslice;

#define GV_MAX_SLICES 16

struct ml_gvocab {
  int refcount; /* atomic */
  int32_t n_vocab;
  size_t n_words;
  uint8_t *bytes;
  int64_t *off;     /* n_vocab + 1 */
  uint8_t *kind;    /* 0 text, 1 end of generation, 2 never */
  int32_t *eog;
  int32_t n_eog;
  gtrie trie;
  int32_t *sorted;  /* the text tokens in trie order */
  int32_t n_sorted;
  pthread_mutex_t mu;
  gslice *slices[GV_MAX_SLICES];
  int n_slices;     /* atomic */
  size_t bytes_used;
};

/* The slice of a class (sorted, merged code point pairs; made on first use), or NULL when
 * GV_MAX_SLICES are made already or memory is short. */
const gslice *gv_slice(ml_gvocab *v, const uint32_t *ranges, int32_t npairs);
/* The trie of index tr: 0 the whole vocabulary, k > 0 the rest of slice k - 1. */
static inline const gtrie *gv_trie(const ml_gvocab *v, int tr) { return tr == 0 ? &v->trie : &v->slices[tr - 1]->rest; }

/* ---- matchers (grammar_match.c) and masks (grammar_mask.c) ---- */

/* A stack node: a frame waiting in state `state` for its callee to return. Node 0 is the
 * bottom (the root returned: the grammar may end), node 1 the base of a relative walk. */
typedef struct gnode {
  int32_t state, parent, next;
} gnode;
#define GN_NIL 0
#define GN_BASE 1

/* A configuration element: the top of one stack. */
typedef struct gelem {
  int32_t s, p;
} gelem;

typedef struct garena {
  gnode *n;
  int32_t len, cap;
  int32_t *bucket;
  int32_t nbucket;
} garena;

/* Growable scratch arrays of elements (configurations and worklists). */
typedef struct gbuf {
  gelem *e;
  int32_t n, cap;
} gbuf;

/* A set of elements for deduplication (open addressing; cleared in O(1) by moving to the
 * next generation: a slot is a member only when its generation is the current one). */
typedef struct gset {
  gelem *key;
  uint32_t *gen;
  uint32_t cur;
  int32_t n, cap; /* cap: 0 or a power of two */
} gset;

typedef struct ghist {
  int32_t cfg_off, cfg_n;
  int32_t arena_len;
  int32_t lazy_off, lazy_n; /* trigger buffer snapshot */
  uint8_t awaiting, stopped;
} ghist;

struct ml_matcher {
  ml_grammar *g;
  ml_gvocab *v;
  struct gbind *bind;
  garena ar;
  gbuf pool;   /* configurations of the history, back to back */
  ghist *hist; /* hist[0] is the start */
  int32_t n_hist, cap_hist;
  gbuf tmp[2]; /* step scratch */
  int32_t *lvl_st; /* walk: the state at each trie depth (premultiplied by n_cls) */
  int32_t n_lvl;
  int32_t wstack[64]; /* states whose W this matcher is computing (nested) */
  int n_wstack;
  gbuf work;
  gset seen, out; /* gm_step: the elements a worklist has met, and those already in out */
  uint64_t *mask;
  int mask_valid;
  /* lazy */
  int lazy;
  char **trig;
  size_t *trig_len;
  int32_t n_trig;
  size_t trig_max;
  int32_t *trig_tok;
  int32_t n_trig_tok;
  char *lbuf; /* trigger buffers of the history, back to back */
  size_t lbuf_n, lbuf_cap;
  char *piece;
  size_t piece_cap;
};

/* Arena */
int32_t gm_node(ml_matcher *m, int32_t state, int32_t parent); /* -1: out of memory */
void gm_release(ml_matcher *m, int32_t len);

/* Step every element of in[0..n) by byte b into out (deduplicated). base: the node where
 * pops stop (GN_BASE for relative walks, GN_NIL otherwise). 0 or -1 (out of memory). */
int gm_step(ml_matcher *m, const gelem *in, int32_t n, uint8_t b, int32_t base, gbuf *out);
/* Can element e return down to node `to` without consuming? */
int gm_can_pop_to(const ml_matcher *m, gelem e, int32_t to);
int gbuf_reserve(gbuf *b, int32_t n);

/* Current configuration */
static inline const gelem *gm_cfg(const ml_matcher *m, int32_t *n) {
  const ghist *h = &m->hist[m->n_hist - 1];
  *n = h->cfg_n;
  return m->pool.e + h->cfg_off;
}

/* Mask of a configuration into bits (n_words words). 0 or -1. */
int gk_mask(ml_matcher *m, const gelem *cfg, int32_t n, uint64_t *bits);
struct gbind *gk_bind(ml_grammar *g, ml_gvocab *v); /* retained by the grammar; NULL: oom */
void gk_prebuild_slices(ml_gvocab *v); /* the slices every JSON grammar uses (best effort) */
void gk_binds_free(ml_grammar *g);

#endif
