/* lua_kvcache.h: lm.kv_cache (lua_kvcache.c), and what T.attention needs to read a view of
 * it in place of its keys and values. */
#ifndef ML_LUA_KVCACHE_H
#define ML_LUA_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "compat.h"
#include "dtype.h"
#include "flash.h"

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
/* lua_attention.c, shared with kv:attend: tensor.attention's options at opt (scale, causal,
 * window, softcap, mask {n, nkv}, alibi: one slope per query head) into a (head_dim set),
 * for H query heads and n rows over nkv keys; what a points to is pushed onto the stack.
 * Then the kernel on a checked a, with a team sized by the work. */
void ml_lua_attention_opts(lua_State *L, int opt, int64_t H, int64_t n, int64_t nkv, ml_flash_args *a);
void ml_lua_attention_run(lua_State *L, const ml_flash_args *a);
/* Scratch of at least `bytes`, kept in the registry under key (one per use) and pushed. */
void *ml_lua_scratch(lua_State *L, const void *key, size_t bytes);
/* kv_cache into the module table on top. */
void ml_lua_open_kvcache(lua_State *L);

#endif
