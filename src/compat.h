/* compat.h: the few Lua C API differences between the 5.1 ABI (LuaJIT 2.1, which OpenResty
 * and LÖVE embed, and which already has luaL_setfuncs/testudata/setmetatable/newlib) and
 * 5.4, so the binding is one source for both. */
#ifndef ML_COMPAT_H
#define ML_COMPAT_H

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen(L, (i))
#define lua_absindex(L, i) ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata(L, (sz))

/* LuaJIT's lua_tointegerx accepts 2.5 as 2; ours says 2.5 is not an integer, as 5.4 does. */
static inline lua_Integer ml_tointegerx(lua_State *L, int i, int *isnum) {
  lua_Number n = lua_tonumber(L, i);
  *isnum = lua_type(L, i) == LUA_TNUMBER && n == (lua_Number)(lua_Integer)n;
  return (lua_Integer)n;
}
#undef lua_tointegerx
#define lua_tointegerx(L, i, isnum) ml_tointegerx(L, (i), (isnum))
#endif

#endif
