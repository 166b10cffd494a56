/* grammar_schema_int.h: what the two halves of the JSON Schema compiler share.
 * grammar_schema.c walks schemas (types, objects, arrays, combinators, $ref);
 * grammar_schema_leaf.c turns the regular leaves (strings, patterns, formats, numbers,
 * literals) into GBNF expressions. */
#ifndef ML_GRAMMAR_SCHEMA_INT_H
#define ML_GRAMMAR_SCHEMA_INT_H

#include "grammar_schema.h"
#include "json.h"

#include <stdint.h>

/* growing text buffer; `oom` sticks once an allocation failed */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

void sb_put(sbuf *b, const char *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(sbuf *b);

/* a set of Unicode code points as sorted, disjoint, non-adjacent ranges */
typedef struct {
  uint32_t lo, hi;
} crange;
typedef struct {
  crange *r;
  int n, cap;
} cset;

/* what a string must satisfy (one JSON Schema "view" of the string type) */
typedef struct {
  uint64_t min_len, max_len;          /* code points; max_len UINT64_MAX: unbounded */
  const ml_json *pattern, *pattern_at; /* the pattern string and the schema holding it */
  const ml_json *format, *format_at;
  const ml_json *len_at;             /* schema holding minLength/maxLength */
} str_view;

/* a numeric bound as written in the schema */
typedef struct {
  int set, exclusive;
  const ml_json *value;
} num_bound;

typedef struct {
  num_bound lo, hi;
  int integer;                       /* only integers */
  const ml_json *at;                 /* schema to blame in errors */
} num_view;

/* the compiler's state, shared by both halves */
typedef struct {
  ml_schema_opts opts;
  int failed;
  double t0;
} schema_base;

/* Leaf emitters: append a GBNF expression (no rule definitions) to `o`.
 * Return 0 on success, 1 when the language is empty, -1 on error (ml_seterr done). */
int leaf_string(schema_base *c, const str_view *v, sbuf *o);
int leaf_number(schema_base *c, const num_view *v, sbuf *o);
/* a JSON string literal with the exact bytes `s` (json.dumps style, UTF-8 kept) */
void leaf_string_literal(sbuf *o, const char *s, size_t n);
/* a number literal: every JSON text of the value of `text` without exponent, and `text` */
void leaf_number_literal(sbuf *o, const char *text);
/* a JSON string whose decoded value is none of `names` (n of them) */
int leaf_key_not_in(schema_base *c, const ml_json *const *names, int n, sbuf *o);
/* does string `s` satisfy v (lengths and pattern)? 1 yes, 0 no, -1 cannot tell (error) */
int leaf_string_check(schema_base *c, const str_view *v, const char *s, size_t n);
/* the GBNF of one JSON string character of any value */
extern const char leaf_char_rule[];
extern const char leaf_number_rule[];
extern const char leaf_integer_rule[];

/* JSON pointer of a schema node ("/properties/a"), into buf */
const char *schema_pointer(const ml_json *node, char *buf, size_t size);
int schema_fail(schema_base *c, const ml_json *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
