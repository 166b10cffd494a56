/* lua_gguf.c: GGUF files from Lua: moonlm.save(path, tensors, metadata) and
 * moonlm.load_tensors(path) -> tensors, metadata. Loaded tensors are views into the file's
 * mapping (zero copy); each holds a reference, so the file stays mapped while any is alive.
 * Also the metadata <-> Lua value conversion the model binding reuses. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "lua_gguf.h"
#include "lua_internal.h"
#include "lua_tensor.h"

/* ---- GGUF values -> Lua ---- */

static void push_str(lua_State *L, const ml_gguf_str *s) { lua_pushlstring(L, s->s, (size_t)s->len); }

void ml_lua_push_gguf_value(lua_State *L, const ml_gguf_value *v, uint64_t max_array) {
  switch (v->type) {
  case ML_GGUF_UINT8: case ML_GGUF_UINT16: case ML_GGUF_UINT32: case ML_GGUF_UINT64:
    lua_pushinteger(L, (lua_Integer)v->v.u);
    break;
  case ML_GGUF_INT8: case ML_GGUF_INT16: case ML_GGUF_INT32: case ML_GGUF_INT64:
    lua_pushinteger(L, (lua_Integer)v->v.i);
    break;
  case ML_GGUF_FLOAT32: case ML_GGUF_FLOAT64:
    lua_pushnumber(L, v->v.f);
    break;
  case ML_GGUF_BOOL:
    lua_pushboolean(L, v->v.u != 0);
    break;
  case ML_GGUF_STRING:
    push_str(L, &v->v.str);
    break;
  case ML_GGUF_ARRAY: {
    uint64_t n = v->v.arr.n;
    if (n > max_array) {
      lua_pushfstring(L, "<array of %d %s>", (int)n, ml_gguf_vtype_name(v->v.arr.type));
      break;
    }
    lua_createtable(L, (int)n, 0);
    for (uint64_t i = 0; i < n; i++) {
      switch (v->v.arr.type) {
      case ML_GGUF_STRING: push_str(L, &v->v.arr.strs[i]); break;
      case ML_GGUF_ARRAY: ml_lua_push_gguf_value(L, &v->v.arr.items[i], max_array); break;
      case ML_GGUF_FLOAT32: case ML_GGUF_FLOAT64: lua_pushnumber(L, ml_gguf_arr_float(v, i)); break;
      case ML_GGUF_BOOL: lua_pushboolean(L, ml_gguf_arr_int(v, i) != 0); break;
      default: lua_pushinteger(L, (lua_Integer)ml_gguf_arr_int(v, i)); break;
      }
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  }
  default:
    lua_pushnil(L);
  }
}

void ml_lua_push_gguf_meta(lua_State *L, const ml_gguf *g, uint64_t max_array) {
  lua_createtable(L, 0, (int)g->n_kv);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    push_str(L, &g->kv[i].key);
    ml_lua_push_gguf_value(L, &g->kv[i].value, max_array);
    lua_rawset(L, -3);
  }
}

/* ---- tensors of a mapped file ---- */

static void release_gguf(void *ctx) { ml_gguf_release(ctx); }

ml_storage *ml_gguf_storage(ml_gguf *g) {
  ml_storage *s = ml_storage_external((void *)g->base, g->size, release_gguf, g);
  if (s) {
    s->readonly = 1; /* PROT_READ: a write would be SIGSEGV */
    ml_gguf_retain(g);
  }
  return s;
}

int ml_gguf_tensor_view(ml_tensor *t, ml_storage *s, const ml_gguf *g, const ml_gguf_tensor *info) {
  int64_t shape[ML_GGUF_MAX_DIMS];
  int nd = info->n_dims < 1 ? 1 : info->n_dims;
  for (int i = 0; i < nd; i++) shape[i] = info->ne[nd - 1 - i];
  return ml_tensor_init_on(t, s, g->data_offset + info->offset, info->type, nd, shape);
}

/* Holds the open file while tensors are being made, so an error cannot leak it. */
typedef struct gguf_box { ml_gguf *g; ml_storage *s; } gguf_box;

static void box_release(gguf_box *b) {
  if (b->s) ml_storage_release(b->s);
  if (b->g) ml_gguf_release(b->g);
  b->s = NULL;
  b->g = NULL;
}

static int box_gc(lua_State *L) {
  box_release(lua_touserdata(L, 1));
  return 0;
}

static gguf_box *push_box(lua_State *L) {
  gguf_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, "moonlm.gguf_box")) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/* load_tensors(path) -> { name = tensor }, metadata | nil, err */
static int l_load_tensors(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  gguf_box *b = push_box(L);
  b->g = ml_gguf_open(path, 0);
  if (!b->g) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    return 2;
  }
  b->s = ml_gguf_storage(b->g);
  if (!b->s) return ml_lua_error(L);
  lua_createtable(L, 0, (int)b->g->n_tensors);
  for (uint64_t i = 0; i < b->g->n_tensors; i++) {
    const ml_gguf_tensor *info = &b->g->tensors[i];
    push_str(L, &info->name);
    ml_tensor *t = ml_lua_push_tensor(L);
    if (ml_gguf_tensor_view(t, b->s, b->g, info) < 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s: tensor '%s': %s", path, lua_tostring(L, -3), ml_errmsg());
      return 2;
    }
    lua_rawset(L, -3);
  }
  ml_lua_push_gguf_meta(L, b->g, (uint64_t)-1);
  box_release(b); /* drops only the box's references; the tensors keep theirs */
  return 2;
}

/* ---- Lua -> GGUF metadata ---- */

static int is_int(lua_State *L, int i, int64_t *out) {
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, i)) {
    *out = (int64_t)lua_tointeger(L, i);
    return 1;
  }
  return 0;
#else
  double d = lua_tonumber(L, i);
  if (d == (double)(int64_t)d && d > -9.2e18 && d < 9.2e18) {
    *out = (int64_t)d;
    return 1;
  }
  return 0;
#endif
}

static const struct { const char *name; ml_gguf_vtype t; } vtypes[] = {
  {"u8", ML_GGUF_UINT8}, {"i8", ML_GGUF_INT8}, {"u16", ML_GGUF_UINT16}, {"i16", ML_GGUF_INT16},
  {"u32", ML_GGUF_UINT32}, {"i32", ML_GGUF_INT32}, {"f32", ML_GGUF_FLOAT32}, {"bool", ML_GGUF_BOOL},
  {"string", ML_GGUF_STRING}, {"u64", ML_GGUF_UINT64}, {"i64", ML_GGUF_INT64}, {"f64", ML_GGUF_FLOAT64},
  {NULL, 0}};

static int vtype_of(const char *name) {
  for (int i = 0; vtypes[i].name; i++)
    if (strcmp(vtypes[i].name, name) == 0) return (int)vtypes[i].t;
  return -1;
}

static size_t vsize(ml_gguf_vtype t) {
  switch (t) {
  case ML_GGUF_UINT8: case ML_GGUF_INT8: case ML_GGUF_BOOL: return 1;
  case ML_GGUF_UINT16: case ML_GGUF_INT16: return 2;
  case ML_GGUF_UINT32: case ML_GGUF_INT32: case ML_GGUF_FLOAT32: return 4;
  default: return 8;
  }
}

static void put_scalar(void *p, ml_gguf_vtype t, double d, int64_t i) {
  switch (t) {
  case ML_GGUF_UINT8: case ML_GGUF_INT8: case ML_GGUF_BOOL: { uint8_t v = (uint8_t)i; memcpy(p, &v, 1); break; }
  case ML_GGUF_UINT16: case ML_GGUF_INT16: { uint16_t v = (uint16_t)i; memcpy(p, &v, 2); break; }
  case ML_GGUF_UINT32: case ML_GGUF_INT32: { uint32_t v = (uint32_t)i; memcpy(p, &v, 4); break; }
  case ML_GGUF_FLOAT32: { float v = (float)d; memcpy(p, &v, 4); break; }
  case ML_GGUF_FLOAT64: memcpy(p, &d, 8); break;
  default: memcpy(p, &i, 8); break;
  }
}

/* Element type a Lua array gets without an explicit type: strings; i32 when all integers
 * (as token_type arrays are); f32 otherwise (as scores are); bool. */
static int infer_array_type(lua_State *L, int i, size_t n) {
  int t = -1;
  for (size_t k = 1; k <= n; k++) {
    lua_rawgeti(L, i, (lua_Integer)k);
    int64_t iv;
    int et = lua_type(L, -1) == LUA_TSTRING ? ML_GGUF_STRING
           : lua_type(L, -1) == LUA_TBOOLEAN ? ML_GGUF_BOOL
           : lua_type(L, -1) == LUA_TNUMBER ? (is_int(L, -1, &iv) ? ML_GGUF_INT32 : ML_GGUF_FLOAT32)
           : -2;
    lua_pop(L, 1);
    if (et == -2) return -2;
    if (t == -1 || t == et) t = et;
    else if ((t == ML_GGUF_INT32 && et == ML_GGUF_FLOAT32) || (t == ML_GGUF_FLOAT32 && et == ML_GGUF_INT32)) t = ML_GGUF_FLOAT32;
    else return -2;
  }
  return t < 0 ? ML_GGUF_INT32 : t;
}

/* Set key from the Lua value at i: plain values, arrays, or { gguf_type = "u32", value = v }
 * (for arrays: gguf_type = "f32" etc. types the elements). Returns 0 or a Lua error. */
static int set_meta(lua_State *L, ml_gguf_writer *w, const char *key, int i) {
  i = lua_absindex(L, i);
  int forced = -1;
  if (lua_istable(L, i)) {
    lua_getfield(L, i, "gguf_type");
    if (!lua_isnil(L, -1)) {
      const char *tn = lua_tostring(L, -1);
      forced = tn ? vtype_of(tn) : -1;
      if (forced < 0) return luaL_error(L, "metadata '%s': unknown gguf_type '%s'", key, tn ? tn : "?");
      lua_getfield(L, i, "value");
      lua_replace(L, i);
    }
    lua_pop(L, 1);
  }
  int rc = 0;
  int64_t iv;
  switch (lua_type(L, i)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, i, &len);
    rc = ml_gguf_set_str(w, key, s, len);
    break;
  }
  case LUA_TBOOLEAN:
    rc = ml_gguf_set_bool(w, key, lua_toboolean(L, i));
    break;
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, i);
    int isint = is_int(L, i, &iv);
    int t = forced >= 0 ? forced : !isint ? ML_GGUF_FLOAT32 : (iv >= 0 && iv <= 0xffffffffLL) ? ML_GGUF_UINT32
          : (iv >= INT32_MIN && iv < 0) ? ML_GGUF_INT32 : ML_GGUF_INT64;
    if (!isint) iv = (int64_t)d;
    if (t == ML_GGUF_STRING) return luaL_error(L, "metadata '%s': a number cannot be a string", key);
    ml_gguf_value v;
    memset(&v, 0, sizeof v);
    v.type = (ml_gguf_vtype)t;
    if (t == ML_GGUF_FLOAT32 || t == ML_GGUF_FLOAT64) v.v.f = t == ML_GGUF_FLOAT32 ? (double)(float)d : d;
    else if (t == ML_GGUF_INT8 || t == ML_GGUF_INT16 || t == ML_GGUF_INT32 || t == ML_GGUF_INT64) v.v.i = iv;
    else v.v.u = (uint64_t)iv;
    rc = ml_gguf_set_value(w, key, &v);
    break;
  }
  case LUA_TTABLE: {
    size_t n = lua_rawlen(L, i);
    int et = forced >= 0 ? forced : infer_array_type(L, i, n);
    if (et == -2) return luaL_error(L, "metadata '%s': arrays must hold strings, numbers or booleans of one kind", key);
    if (et == ML_GGUF_STRING) {
      const char **strs = lua_newuserdatauv(L, sizeof(char *) * (n ? n : 1), 0);
      size_t *lens = lua_newuserdatauv(L, sizeof(size_t) * (n ? n : 1), 0);
      for (size_t k = 0; k < n; k++) {
        lua_rawgeti(L, i, (lua_Integer)k + 1);
        strs[k] = lua_tolstring(L, -1, &lens[k]);
        if (!strs[k]) return luaL_error(L, "metadata '%s': item %d is not a string", key, (int)k + 1);
        lua_pop(L, 1); /* still referenced by the table */
      }
      rc = ml_gguf_set_arr_str(w, key, strs, lens, n);
      lua_pop(L, 2);
    } else {
      size_t es = vsize((ml_gguf_vtype)et);
      unsigned char *data = lua_newuserdatauv(L, es * (n ? n : 1), 0);
      for (size_t k = 0; k < n; k++) {
        lua_rawgeti(L, i, (lua_Integer)k + 1);
        if (lua_type(L, -1) != LUA_TNUMBER && lua_type(L, -1) != LUA_TBOOLEAN)
          return luaL_error(L, "metadata '%s': item %d is not a number", key, (int)k + 1);
        double d = lua_type(L, -1) == LUA_TBOOLEAN ? lua_toboolean(L, -1) : lua_tonumber(L, -1);
        put_scalar(data + k * es, (ml_gguf_vtype)et, d, (int64_t)d);
        lua_pop(L, 1);
      }
      rc = ml_gguf_set_arr(w, key, (ml_gguf_vtype)et, data, n);
      lua_pop(L, 1);
    }
    break;
  }
  default:
    return luaL_error(L, "metadata '%s': cannot store a %s", key, luaL_typename(L, i));
  }
  if (rc < 0) return ml_lua_error(L);
  return 0;
}

typedef struct writer_box { ml_gguf_writer *w; } writer_box;

static int wbox_gc(lua_State *L) {
  writer_box *b = lua_touserdata(L, 1);
  ml_gguf_writer_free(b->w);
  b->w = NULL;
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* save(path, { name = tensor, ... } [, metadata]) -> true | nil, err */
static int l_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  writer_box *b = lua_newuserdatauv(L, sizeof *b, 0); /* 4 */
  b->w = NULL;
  if (luaL_newmetatable(L, "moonlm.gguf_writer")) {
    lua_pushcfunction(L, wbox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  b->w = ml_gguf_writer_new();
  if (!b->w) return ml_lua_error(L);
  /* metadata, keys sorted so files are reproducible */
  if (lua_istable(L, 3)) {
    lua_newtable(L); /* 5: key list */
    int n = 0;
    for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1)) {
      if (lua_type(L, -2) != LUA_TSTRING) return luaL_argerror(L, 3, "metadata keys must be strings");
      lua_pushvalue(L, -2);
      lua_rawseti(L, 5, ++n);
    }
    const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
    for (int k = 0; k < n; k++) {
      lua_rawgeti(L, 5, k + 1);
      keys[k] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
    qsort(keys, (size_t)n, sizeof(char *), cmp_str);
    for (int k = 0; k < n; k++) {
      lua_getfield(L, 3, keys[k]);
      set_meta(L, b->w, keys[k], -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 2);
  }
  /* tensors: contiguous versions are kept alive in `keep` until the file is written */
  lua_newtable(L); /* 5: names */
  lua_newtable(L); /* 6: keep */
  int n = 0;
  for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING) return luaL_argerror(L, 2, "tensor names must be strings");
    if (!ml_lua_test_tensor(L, -1))
      return luaL_argerror(L, 2, lua_pushfstring(L, "'%s' is not a tensor", lua_tostring(L, -2)));
    lua_pushvalue(L, -2);
    lua_rawseti(L, 5, ++n);
  }
  const char **names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
  for (int k = 0; k < n; k++) {
    lua_rawgeti(L, 5, k + 1);
    names[k] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  qsort(names, (size_t)n, sizeof(char *), cmp_str);
  for (int k = 0; k < n; k++) {
    lua_getfield(L, 2, names[k]);
    ml_tensor *t = ml_lua_check_tensor(L, -1);
    if (t->ndim > ML_GGUF_MAX_DIMS)
      return luaL_argerror(L, 2, lua_pushfstring(L, "'%s' has %d dimensions; GGUF allows %d", names[k], t->ndim, ML_GGUF_MAX_DIMS));
    if (!ml_tensor_is_contiguous(t)) {
      ml_tensor *c = ml_lua_push_tensor(L);
      if (ml_tensor_clone(c, t) < 0) return ml_lua_error(L);
      t = c;
    }
    lua_rawseti(L, 6, k + 1);
    int64_t ne[ML_GGUF_MAX_DIMS];
    int nd = t->ndim ? t->ndim : 1;
    for (int d = 0; d < nd; d++) ne[d] = t->ndim ? t->shape[t->ndim - 1 - d] : 1;
    if (ml_gguf_add_tensor(b->w, names[k], t->type, nd, ne, ml_tensor_data(t)) < 0) return ml_lua_error(L);
  }
  if (ml_gguf_writer_write(b->w, path) < 0) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg funcs[] = {{"save", l_save}, {"load_tensors", l_load_tensors}, {NULL, NULL}};

void ml_lua_open_gguf(lua_State *L) { luaL_setfuncs(L, funcs, 0); }
