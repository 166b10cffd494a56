/* lua_util.h: argument checking for the binding, with one error format everywhere:
 *   bad argument #2 to 'matmul' (inner dimensions 64 and 48 differ)
 * Positions count every argument, self included (a:matmul(b): b is #2), in Lua 5.4 and
 * LuaJIT alike, and the function is named even where LuaJIT's call info cannot name it.
 * The luaL_check* names used in the binding files map to these. */
#ifndef ML_LUA_UTIL_H
#define ML_LUA_UTIL_H

#include <stdint.h>

#include "compat.h"

int ml_argerror(lua_State *L, int arg, const char *msg);
lua_Integer ml_checkinteger(lua_State *L, int arg);
lua_Integer ml_optinteger(lua_State *L, int arg, lua_Integer def);
lua_Number ml_checknumber(lua_State *L, int arg);
lua_Number ml_optnumber(lua_State *L, int arg, lua_Number def);
const char *ml_checklstring(lua_State *L, int arg, size_t *len);
void ml_checktype(lua_State *L, int arg, int t);
/* "token id <id> out of range (the vocabulary has n: 0 to n-1)" on the stack, the id as given */
const char *ml_push_id_range(lua_State *L, lua_Integer id, int64_t n_vocab);
/* v in decimal on the stack, for a message that shows a number as given (lua_pushfstring's
 * %d is an int in every Lua: 2^32 + 5 would read as 5) */
const char *ml_push_int(lua_State *L, lua_Integer v);
/* Refuses a key of the table at t that is not one of names (NULL-ended): "unknown option
 * 'k'" at argument arg, so that a misspelt option is never silently ignored. Not a table:
 * nothing to check (the caller checks the type). */
void ml_lua_known_options(lua_State *L, int t, int arg, const char *const *names);
/* Remember names of the functions in the table on top (for error messages). */
void ml_register_names(lua_State *L, const char *prefix);
/* The core's last error (common.h), worded for Lua. A misuse is raised as
 * "bad argument #n to 'f' (msg)"; a failure is raised as its message (ml_lua_error*) or
 * returned as nil, msg (ml_lua_fail, which pushes both and returns 2).
 *   ml_lua_error     n = the misused input's position: for functions whose Lua arguments
 *                    are the core function's inputs in the same order (a misuse that names
 *                    no input is raised as its message)
 *   ml_lua_error_at  n = arg, whatever input the core named
 *   ml_lua_fail      n = arg, or as ml_lua_error when arg is 0 */
int ml_lua_error(lua_State *L);
int ml_lua_error_at(lua_State *L, int arg);
int ml_lua_fail(lua_State *L, int arg);

#define luaL_argerror(L, a, m) ml_argerror(L, (a), (m))
#define luaL_checkinteger(L, a) ml_checkinteger(L, (a))
#define luaL_optinteger(L, a, d) ml_optinteger(L, (a), (d))
#define luaL_checknumber(L, a) ml_checknumber(L, (a))
#define luaL_optnumber(L, a, d) ml_optnumber(L, (a), (d))
#undef luaL_checkstring
#define luaL_checkstring(L, a) ml_checklstring(L, (a), NULL)
#define luaL_checklstring(L, a, l) ml_checklstring(L, (a), (l))
#define luaL_checktype(L, a, t) ml_checktype(L, (a), (t))

#endif
