/* lua_grammar_schema.c: the binding of the JSON Schema compiler:
 *   core.schema_to_gbnf(text, { compact =, max_bytes =, max_ms =, max_repeat = })
 *     -> GBNF text, or nil + message (the schema is invalid, unsupported or over budget)
 * Option names and values are checked by lua/moonlm/grammar_schema.lua. */
#include "grammar_schema.h"
#include "common.h"
#include "lua_internal.h"

#include <stdlib.h>

static int l_schema_to_gbnf(lua_State *L) {
  size_t len, out_len = 0;
  const char *text = luaL_checklstring(L, 1, &len);
  ml_schema_opts o = {0};
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "compact");
    o.compact = lua_toboolean(L, -1);
    lua_getfield(L, 2, "max_bytes");
    if (!lua_isnil(L, -1)) o.max_bytes = (size_t)luaL_checknumber(L, -1);
    lua_getfield(L, 2, "max_ms");
    if (!lua_isnil(L, -1)) o.max_ms = luaL_checknumber(L, -1);
    lua_getfield(L, 2, "max_repeat");
    if (!lua_isnil(L, -1)) o.max_repeat = (size_t)luaL_checknumber(L, -1);
    lua_pop(L, 4);
  }
  char *g = ml_schema_to_gbnf(text, len, &o, &out_len);
  if (!g) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    return 2;
  }
  lua_pushlstring(L, g, out_len);
  free(g);
  return 1;
}

static const luaL_Reg funcs[] = {{"schema_to_gbnf", l_schema_to_gbnf}, {NULL, NULL}};

void ml_lua_open_schema(lua_State *L) { luaL_setfuncs(L, funcs, 0); }
