/* lua_kvcache.h: lm.kv_cache (lua_kvcache.c), and what T.attention needs to read a view of
 * it in place of its keys and values. */
#ifndef ML_LUA_KVCACHE_H
#define ML_LUA_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "compat.h"
#include "dtype.h"

/* A view's keys and values: key j of KV head h at k + cells[j] · row_bytes + h · (bytes of
 * head_dim values of type), for j < n. */
typedef struct ml_lua_kvref {
  ml_type type;
  const uint8_t *k, *v;
  size_t row_bytes;
  const int32_t *cells;
  int64_t n, kv_heads, head_dim;
} ml_lua_kvref;

/* 1 and *r filled if the value at i is a kv view (an argument error if it is stale), else 0. */
int ml_lua_kvview(lua_State *L, int i, ml_lua_kvref *r);
/* kv_cache into the module table on top. */
void ml_lua_open_kvcache(lua_State *L);

#endif
