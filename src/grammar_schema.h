/* grammar_schema.h: JSON Schema -> GBNF (llama.cpp's dialect, root rule "root").
 *
 * The compiler either enforces a keyword exactly or refuses the schema with an error that
 * names the keyword and its JSON pointer ("unsupported keyword 'not' at /properties/a"):
 * the grammar it returns never accepts an instance the schema forbids. It may refuse
 * instances the schema allows only where DESIGN.md says so (property order, escapes
 * inside constrained strings, exponents in bounded numbers). */
#ifndef ML_GRAMMAR_SCHEMA_H
#define ML_GRAMMAR_SCHEMA_H

#include <stddef.h>

typedef struct {
  int compact;               /* 0: JSON's whitespace [ \t\n\r]* between tokens; 1: none */
  size_t max_bytes;          /* budget on the grammar's size (0: 4 MB) */
  double max_ms;             /* budget on compile time (0: 2000 ms) */
  size_t max_repeat;         /* largest {m,n} count the grammar may carry (0: 4096) */
} ml_schema_opts;

/* Schema text (JSON) -> malloc'd, NUL-terminated GBNF text, its length in *out_len.
 * NULL + ml_seterr(message) when the schema is invalid, unsupported or over budget. */
char *ml_schema_to_gbnf(const char *schema, size_t len, const ml_schema_opts *opts, size_t *out_len);

#endif
