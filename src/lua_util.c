/* lua_util.c: argument errors with stable numbering and names (see lua_util.h). */
#include "lua_util.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

static const char names_key = 'n';

void ml_register_names(lua_State *L, const char *prefix) {
  int t = lua_gettop(L);
  lua_pushlightuserdata(L, (void *)&names_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)&names_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  for (lua_pushnil(L); lua_next(L, t);) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      lua_pushfstring(L, "%s%s", prefix, lua_tostring(L, -3));
      lua_rawset(L, t + 1);
    }
    lua_pop(L, 1);
  }
  lua_settop(L, t);
}

/* Is this chunk one of moonlm's own Lua modules (lua/moonlm/...)? */
static int own_chunk(const char *src) {
  static const char *const mods[] = {"init.lua", "generate.lua", "chat.lua", "sampler.lua", "template.lua",
                                     "json.lua", "resty.lua", "love.lua", "resty/", "template/"};
  const char *p = NULL, *q = src;
  while ((q = strstr(q, "moonlm/"))) p = q++; /* the last "moonlm/" */
  if (!p) return 0;
  p += 7;
  for (size_t i = 0; i < sizeof mods / sizeof mods[0]; i++)
    if (strncmp(p, mods[i], strlen(mods[i])) == 0) return 1;
  return 0;
}

/* "chunk:line:" of the first caller outside moonlm's own Lua modules, so an error raised
 * through a thin wrapper (model:tokenize -> the userdata method) points at user code. */
static void push_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Sl", &ar);
    if (ar.currentline <= 0 || own_chunk(ar.source)) continue;
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

int ml_argerror(lua_State *L, int arg, const char *msg) {
  lua_Debug ar;
  const char *name = NULL;
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "nf", &ar);
    lua_pushlightuserdata(L, (void *)&names_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_istable(L, -1)) {
      lua_pushvalue(L, -2);
      lua_rawget(L, -2);
      name = lua_tostring(L, -1); /* stays on the stack until the error */
    }
    if (!name) name = ar.name;
  }
  push_where(L);
  lua_pushfstring(L, "bad argument #%d to '%s' (%s)", arg, name ? name : "?", msg);
  lua_concat(L, 2);
  return lua_error(L);
}

static int typeerror(lua_State *L, int arg, const char *tname) {
  const char *got = lua_isnone(L, arg) ? "no value" : luaL_typename(L, arg);
  return ml_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", tname, got));
}

lua_Integer ml_checkinteger(lua_State *L, int arg) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, arg, &isnum);
  if (!isnum) {
    if (lua_type(L, arg) == LUA_TNUMBER) ml_argerror(L, arg, "number has no integer representation");
    typeerror(L, arg, "integer");
  }
  return v;
}

lua_Integer ml_optinteger(lua_State *L, int arg, lua_Integer def) {
  return lua_isnoneornil(L, arg) ? def : ml_checkinteger(L, arg);
}

lua_Number ml_checknumber(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TNUMBER) typeerror(L, arg, "number");
  return lua_tonumber(L, arg);
}

lua_Number ml_optnumber(lua_State *L, int arg, lua_Number def) {
  return lua_isnoneornil(L, arg) ? def : ml_checknumber(L, arg);
}

const char *ml_checklstring(lua_State *L, int arg, size_t *len) {
  if (lua_type(L, arg) != LUA_TSTRING) typeerror(L, arg, "string");
  size_t n;
  const char *s = lua_tolstring(L, arg, &n);
  /* without a length the caller reads a C string (a path, a name): a zero byte would
   * silently cut it ("m.gguf\0junk" opening m.gguf) */
  if (!len && strlen(s) != n) ml_argerror(L, arg, "string with a zero byte (a path or a name cannot hold one)");
  if (len) *len = n;
  return s;
}

void ml_checktype(lua_State *L, int arg, int t) {
  if (lua_type(L, arg) != t) typeerror(L, arg, lua_typename(L, t));
}

static int raise_msg(lua_State *L) {
  push_where(L);
  lua_pushstring(L, ml_errmsg());
  lua_concat(L, 2);
  return lua_error(L);
}

int ml_lua_error(lua_State *L) {
  int input = ml_errinput();
  if (ml_errclass_get() == ML_ERR_MISUSE && input > 0) return ml_argerror(L, input, ml_errmsg());
  return raise_msg(L);
}

int ml_lua_error_at(lua_State *L, int arg) {
  if (ml_errclass_get() == ML_ERR_MISUSE) return ml_argerror(L, arg, ml_errmsg());
  return raise_msg(L);
}

int ml_lua_fail(lua_State *L, int arg) {
  if (ml_errclass_get() == ML_ERR_MISUSE) return arg > 0 ? ml_lua_error_at(L, arg) : ml_lua_error(L);
  lua_pushnil(L);
  lua_pushstring(L, ml_errmsg());
  return 2;
}

const char *ml_push_int(lua_State *L, lua_Integer v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)v);
  lua_pushstring(L, buf);
  return lua_tostring(L, -1);
}

const char *ml_push_id_range(lua_State *L, lua_Integer id, int64_t n_vocab) {
  char buf[160]; /* lua_pushfstring's %d is an int: 2^32 + 5 would read as 5 */
  snprintf(buf, sizeof buf, "token id %lld out of range (the vocabulary has %lld: 0 to %lld)", (long long)id,
           (long long)n_vocab, (long long)n_vocab - 1);
  lua_pushstring(L, buf);
  return lua_tostring(L, -1);
}

void ml_lua_known_options(lua_State *L, int t, int arg, const char *const *names) {
  if (!lua_istable(L, t)) return;
  t = lua_absindex(L, t);
  for (lua_pushnil(L); lua_next(L, t);) {
    lua_pop(L, 1);
    int ok = 0;
    if (lua_type(L, -1) == LUA_TSTRING)
      for (const char *const *n = names; *n && !ok; n++) ok = strcmp(lua_tostring(L, -1), *n) == 0;
    if (!ok) {
      const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", k));
    }
  }
}
