/* fuzz/schema.c: libFuzzer harness for the JSON Schema compiler (and the JSON reader under
 * it). Compiles the input as a schema twice (JSON whitespace and compact) under small
 * budgets; a result must be one NUL-terminated grammar whose root rule comes first, and a
 * refusal must leave a message. ASan/UBSan catch the rest.
 *
 * Build: make fuzz (build/fuzz/schema)
 * Run:   mkdir -p /tmp/schema-corpus && build/fuzz/schema -rss_limit_mb=2048 -malloc_limit_mb=512 \
 *          -max_len=16384 -max_total_time=600 /tmp/schema-corpus fuzz/seeds/schema
 */
#include "grammar_schema.h"
#include "common.h"

#include <stdlib.h>
#include <string.h>

#define EXPECT(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int compact = 0; compact < 2; compact++) {
    ml_schema_opts o = {compact, 1 << 20, 300, 200};
    size_t len = 0;
    char *g = ml_schema_to_gbnf((const char *)data, size, &o, &len);
    if (g) {
      EXPECT(len == strlen(g));
      EXPECT(len <= o.max_bytes);
      EXPECT(!strncmp(g, "root ::= ", 9));
      free(g);
    } else {
      EXPECT(ml_errmsg()[0]);
    }
  }
  return 0;
}
