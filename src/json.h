/* json.h: a small JSON reader for the C core. Objects keep their members in document
 * order (JSON Schema's `properties` order carries meaning), strings are decoded to UTF-8,
 * numbers keep the text they were written with next to their double value. One arena
 * owns the whole tree: ml_json_free releases everything at once. */
#ifndef ML_JSON_H
#define ML_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  ML_JSON_NULL,
  ML_JSON_FALSE,
  ML_JSON_TRUE,
  ML_JSON_NUMBER,
  ML_JSON_STRING,
  ML_JSON_ARRAY,
  ML_JSON_OBJECT
} ml_json_kind;

typedef struct ml_json ml_json;
struct ml_json {
  ml_json_kind kind;
  uint32_t n;          /* array/object: children; string: bytes (may hold NULs) */
  const char *str;     /* string: decoded value, NUL-terminated; number: its text */
  const char *key;     /* member of an object: its decoded key, NUL-terminated */
  uint32_t key_len;
  uint32_t index;      /* position in the parent (array index or member number) */
  ml_json **kids;      /* array elements or object members, in document order */
  const ml_json *parent;
  double num;          /* number value */
};

typedef struct ml_json_doc ml_json_doc;

/* Parse `len` bytes of JSON text (one value, surrounding whitespace allowed). Nesting
 * deeper than `max_depth` is refused. NULL + ml_seterr("... at line L column C") on error. */
ml_json_doc *ml_json_parse(const char *text, size_t len, int max_depth);
const ml_json *ml_json_root(const ml_json_doc *doc);
void ml_json_free(ml_json_doc *doc);

/* Member `key` of an object (its last occurrence, as most parsers keep), or NULL. */
const ml_json *ml_json_get(const ml_json *obj, const char *key);
/* Structural equality as JSON Schema's enum/const define it (numbers by value, objects
 * regardless of member order). */
int ml_json_equal(const ml_json *a, const ml_json *b);

#endif
