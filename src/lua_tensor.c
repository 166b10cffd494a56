/* lua_tensor.c: the tensor userdata. It checks arguments, calls the core, and raises only
 * after anything it allocated is owned by a userdata (results are pushed empty first, then
 * filled), so a Lua error can never leak a tensor. Dimensions and indices are 1-based here,
 * as in torch7 and Lua; negative ones count from the end. */
#include "lua_tensor.h"
#include "lua_weight.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "matmul.h"
#include "ops.h"

/* ---- plumbing ---- */

/* Storage made on this thread since the last collection step the binding asked for. */
static _Thread_local size_t gc_owed;

ml_tensor *ml_lua_push_tensor(lua_State *L) {
  /* Tensor memory is invisible to the collector, which sees a small userdata per tensor:
   * once the storage made since the last step reaches 8 times the Lua heap (at least
   * 64 KiB, at most 64 MiB), one step as if that storage were Lua memory, which runs up
   * to a whole cycle, so dropped tensors are freed at the pace they are made. A step per
   * tensor cost a cycle every few tensors of a batch (each cycle walks the whole heap:
   * LuaJIT spent 12% of a Lua model's prefill there). */
  size_t owed = gc_owed + ml_storage_take_pending();
  if (owed >= (size_t)1 << 16) {
    size_t heap = (size_t)lua_gc(L, LUA_GCCOUNT, 0) << 13; /* KiB -> 8 x bytes */
    if (owed >= ML_MIN(heap, (size_t)64 << 20)) {
      lua_gc(L, LUA_GCSTEP, (int)ML_MIN(owed >> 10, (size_t)1 << 30));
      owed = 0;
    }
  }
  gc_owed = owed;
  ml_tensor *t = lua_newuserdatauv(L, sizeof(ml_tensor), 0);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, ML_TENSOR_MT);
  return t;
}

/* The tensor metatable holds this address as a light userdata at [1], which only this
 * library can write: checking a value's metatable for it takes two array reads, where
 * luaL_testudata looks the metatable up in the registry by name for every tensor argument
 * of every op (a string lookup: 300 instructions a call, 0.4M per decoded token of a
 * 30-layer model written in Lua). */
static const char tensor_tag = 0;

static ml_tensor *test_udata(lua_State *L, int i) {
  if (lua_type(L, i) != LUA_TUSERDATA || !lua_getmetatable(L, i)) return NULL;
  lua_rawgeti(L, -1, 1);
  const void *tag = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return tag == &tensor_tag ? lua_touserdata(L, i) : NULL;
}

ml_tensor *ml_lua_test_tensor(lua_State *L, int i) {
  ml_tensor *t = test_udata(L, i);
  return t && t->storage ? t : NULL;
}

ml_tensor *ml_lua_check_tensor(lua_State *L, int i) {
  ml_tensor *t = test_udata(L, i);
  if (!t) {
    const char *got = luaL_typename(L, i);
    luaL_argerror(L, i, lua_pushfstring(L, "tensor expected, got %s", got));
  }
  if (!t->storage) luaL_argerror(L, i, "tensor has been released");
  return t;
}

#define READONLY_MSG "read-only tensor (it maps a model file; clone() gives a writable copy)"

ml_tensor *ml_lua_check_writable(lua_State *L, int i) {
  ml_tensor *t = ml_lua_check_tensor(L, i);
  if (t->storage->readonly) luaL_argerror(L, i, READONLY_MSG);
  return t;
}


/* A core call whose inputs are the Lua arguments in order (CHECK), or whose misuse is
 * always about Lua argument `arg` (CHECK_AT); see lua_util.h. */
#define CHECK(L, call) \
  do { \
    if ((call) < 0) return ml_lua_error(L); \
  } while (0)
#define CHECK_AT(L, call, arg) \
  do { \
    if ((call) < 0) return ml_lua_error_at(L, (arg)); \
  } while (0)

ml_type ml_lua_check_dtype(lua_State *L, int i, ml_type def) {
  if (lua_isnoneornil(L, i)) return def;
  const char *name = luaL_checkstring(L, i);
  int t = ml_type_from_name(name);
  if (t < 0) luaL_argerror(L, i, lua_pushfstring(L, "unknown dtype '%s'", name));
  return (ml_type)t;
}

static const char *dtype_name(ml_type t) { return ml_type_traits_get(t)->name; }

/* 1-based (negative from the end) dimension at i -> 0-based; `extra` allows ndim+1 (insertion). */
static int check_dim(lua_State *L, int i, int ndim, int def, int extra) {
  lua_Integer d = lua_isnoneornil(L, i) ? def : luaL_checkinteger(L, i);
  int n = ndim + extra;
  if (d < 0) d += n + 1;
  if (d < 1 || d > n) {
    if (ndim == 0 && !extra) luaL_argerror(L, i, "tensor has no dimensions");
    luaL_argerror(L, i, lua_pushfstring(L, "dimension %d out of range (tensor has %d)", (int)(d <= 0 ? d - n - 1 : d), ndim));
  }
  return (int)d - 1;
}

/* A shape from a table at i, or from the numbers at i..top. Returns the next argument index. */
static int read_shape(lua_State *L, int i, int *ndim, int64_t *shape) {
  int n = 0;
  if (lua_istable(L, i)) {
    size_t len = lua_rawlen(L, i);
    if (len > ML_MAX_DIMS) luaL_argerror(L, i, lua_pushfstring(L, "at most %d dimensions", ML_MAX_DIMS));
    for (size_t k = 1; k <= len; k++) {
      lua_rawgeti(L, i, (lua_Integer)k);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_argerror(L, i, lua_pushfstring(L, "shape entry %d is not an integer", (int)k));
      if (v < 0 && v != -1) luaL_argerror(L, i, lua_pushfstring(L, "negative dimension %s", ml_push_int(L, v)));
      shape[n++] = v;
      lua_pop(L, 1);
    }
    *ndim = n;
    return i + 1;
  }
  while (lua_type(L, i) == LUA_TNUMBER) {
    if (n == ML_MAX_DIMS) luaL_argerror(L, i, lua_pushfstring(L, "at most %d dimensions", ML_MAX_DIMS));
    lua_Integer v = luaL_checkinteger(L, i);
    if (v < 0 && v != -1) luaL_argerror(L, i, lua_pushfstring(L, "negative dimension %s", ml_push_int(L, v)));
    shape[n++] = v;
    i++;
  }
  *ndim = n;
  return i;
}

static void check_no_infer(lua_State *L, int arg, int ndim, const int64_t *shape) {
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) luaL_argerror(L, arg, "negative dimension -1");
}

/* Options at i: a dtype string or a table { dtype = , seed = , ... }. */
static ml_type opt_dtype(lua_State *L, int i, ml_type def) {
  if (lua_type(L, i) == LUA_TSTRING) return ml_lua_check_dtype(L, i, def);
  if (lua_istable(L, i)) {
    lua_getfield(L, i, "dtype");
    ml_type t = def;
    if (!lua_isnil(L, -1)) {
      const char *name = lua_tostring(L, -1);
      int ti = name ? ml_type_from_name(name) : -1;
      if (ti < 0) luaL_argerror(L, i, lua_pushfstring(L, "unknown dtype '%s'", name ? name : luaL_typename(L, -1)));
      t = (ml_type)ti;
    }
    lua_pop(L, 1);
    return t;
  }
  if (!lua_isnoneornil(L, i)) luaL_argerror(L, i, "options table or dtype string expected");
  return def;
}

static int opt_field_number(lua_State *L, int i, const char *k, double *out) {
  if (!lua_istable(L, i)) return 0;
  lua_getfield(L, i, k);
  int have = !lua_isnil(L, -1);
  if (have) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_argerror(L, i, lua_pushfstring(L, "option '%s' must be a number", k));
    *out = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return have;
}

/* ---- from and to Lua tables ---- */

static void table_shape(lua_State *L, int i, int depth, int *ndim, int64_t *shape) {
  if (depth >= ML_MAX_DIMS) luaL_error(L, "nested tables deeper than %d", ML_MAX_DIMS);
  size_t n = lua_rawlen(L, i);
  shape[depth] = (int64_t)n;
  *ndim = depth + 1;
  if (n == 0) return;
  lua_rawgeti(L, i, 1);
  if (lua_istable(L, -1)) table_shape(L, lua_gettop(L), depth + 1, ndim, shape);
  lua_pop(L, 1);
}

static void table_fill(lua_State *L, int i, int depth, int ndim, const int64_t *shape, float **p, int arg) {
  if ((int64_t)lua_rawlen(L, i) != shape[depth])
    luaL_argerror(L, arg, lua_pushfstring(L, "ragged nested table (dimension %d has sizes %d and %d)", depth + 1,
                                          (int)shape[depth], (int)lua_rawlen(L, i)));
  for (int64_t k = 1; k <= shape[depth]; k++) {
    lua_rawgeti(L, i, (lua_Integer)k);
    if (depth == ndim - 1) {
      if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_argerror(L, arg, lua_pushfstring(L, "number expected in nested table, got %s", luaL_typename(L, -1)));
      *(*p)++ = (float)lua_tonumber(L, -1);
    } else {
      if (!lua_istable(L, -1)) luaL_argerror(L, arg, "ragged nested table");
      table_fill(L, lua_gettop(L), depth + 1, ndim, shape, p, arg);
    }
    lua_pop(L, 1);
  }
}

/* Push a new tensor made from the nested table at i. */
static ml_tensor *from_table(lua_State *L, int i, ml_type type) {
  int ndim = 0;
  int64_t shape[ML_MAX_DIMS];
  i = lua_absindex(L, i);
  table_shape(L, i, 0, &ndim, shape);
  ml_tensor *t = ml_lua_push_tensor(L);
  if (ml_tensor_init(t, ML_TYPE_F32, ndim, shape) < 0) ml_lua_error_at(L, i);
  float *p = ml_tensor_data(t);
  table_fill(L, i, 0, ndim, shape, &p, i);
  if (type != ML_TYPE_F32) {
    ml_tensor *c = ml_lua_push_tensor(L);
    if (ml_tensor_to(c, t, type) < 0) ml_lua_error_at(L, i + 1); /* the dtype follows the table */
    lua_remove(L, -2);
    return c;
  }
  return t;
}

/* The tensor at i, converting a nested table or a number (0-d) if needed; may push. */
static ml_tensor *to_tensor(lua_State *L, int i) {
  ml_tensor *t = ml_lua_test_tensor(L, i);
  if (t) return t;
  if (lua_istable(L, i)) {
    ml_tensor *r = from_table(L, i, ML_TYPE_F32);
    lua_replace(L, i);
    return r;
  }
  return ml_lua_check_tensor(L, i);
}

static void push_totable(lua_State *L, const ml_tensor *t, int d, int64_t *idx) {
  if (d == t->ndim) {
    lua_pushnumber(L, ml_tensor_get(t, idx));
    return;
  }
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t k = 0; k < t->shape[d]; k++) {
    idx[d] = k;
    push_totable(L, t, d + 1, idx);
    lua_rawseti(L, -2, (lua_Integer)k + 1);
  }
}

/* ---- constructors (functions of the `tensor` table) ---- */

static int t_new(lua_State *L) {
  if (lua_istable(L, 1)) {
    from_table(L, 1, opt_dtype(L, 2, ML_TYPE_F32));
    return 1;
  }
  if (lua_type(L, 1) == LUA_TNUMBER) {
    ml_type ty = opt_dtype(L, 2, ML_TYPE_F32);
    ml_tensor *t = ml_lua_push_tensor(L);
    CHECK_AT(L, ml_tensor_init(t, ty, 0, NULL), 2); /* only a block type can fail */
    ml_tensor_fill(t, lua_tonumber(L, 1));
    return 1;
  }
  if (ml_lua_test_tensor(L, 1)) { /* copy */
    ml_tensor *s = ml_lua_check_tensor(L, 1);
    ml_tensor *t = ml_lua_push_tensor(L);
    CHECK(L, ml_tensor_to(t, s, opt_dtype(L, 2, s->type)));
    return 1;
  }
  return luaL_argerror(L, 1, "nested table, number or tensor expected");
}

static int filled(lua_State *L, int has_value, double value) {
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  int next = read_shape(L, 1, &ndim, shape);
  check_no_infer(L, 1, ndim, shape);
  if (has_value == 2) value = luaL_checknumber(L, next++);
  ml_type ty = opt_dtype(L, next, ML_TYPE_F32);
  ml_tensor *t = ml_lua_push_tensor(L);
  if (ml_type_traits_get(ty)->blck > 1) { /* build in f32, then quantize */
    ml_tensor f;
    CHECK_AT(L, ml_tensor_init(&f, ML_TYPE_F32, ndim, shape), 1);
    if (has_value) ml_tensor_fill(&f, value);
    int rc = ml_tensor_to(t, &f, ty);
    ml_tensor_release(&f);
    CHECK_AT(L, rc, next);
    return 1;
  }
  CHECK_AT(L, ml_tensor_init(t, ty, ndim, shape), 1);
  if (has_value && value != 0) ml_tensor_fill(t, value);
  return 1;
}

static int t_zeros(lua_State *L) { return filled(L, 1, 0); }
static int t_empty(lua_State *L) { return filled(L, 0, 0); }
static int t_ones(lua_State *L) { return filled(L, 1, 1); }
static int t_full(lua_State *L) { return filled(L, 2, 0); }

static int t_arange(lua_State *L) {
  /* arange(stop) | arange(start, stop [, step]) : half-open, like numpy */
  double start = 0, stop, step = 1;
  int opt = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    start = luaL_checknumber(L, 1);
    stop = luaL_checknumber(L, 2);
    opt = 3;
    if (lua_type(L, 3) == LUA_TNUMBER) {
      step = luaL_checknumber(L, 3);
      opt = 4;
    }
  } else {
    stop = luaL_checknumber(L, 1);
  }
  if (step == 0 || step != step) luaL_argerror(L, 3, "step must be nonzero");
  double nd = ceil((stop - start) / step);
  if (nd != nd || nd > 1e12) luaL_argerror(L, 2, "range too large");
  int64_t n = nd > 0 ? (int64_t)nd : 0;
  ml_type ty = opt_dtype(L, opt, ML_TYPE_F32);
  ml_tensor *t = ml_lua_push_tensor(L);
  CHECK_AT(L, ml_tensor_init(t, ty, 1, &n), opt); /* a block type whose block n does not fill */
  for (int64_t i = 0; i < n; i++) ml_tensor_set(t, &i, start + (double)i * step);
  return 1;
}

/* Per-state generator for calls without a seed (seeded by manual_seed, or 0 at start). */
static ml_rng *state_rng(lua_State *L) {
  static const char key = 'r';
  lua_pushlightuserdata(L, (void *)&key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  ml_rng *r = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!r) {
    lua_pushlightuserdata(L, (void *)&key);
    r = lua_newuserdatauv(L, sizeof(ml_rng), 0);
    ml_rng_seed(r, 0);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  return r;
}

static int t_manual_seed(lua_State *L) {
  ml_rng_seed(state_rng(L), (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int random_tensor(lua_State *L, int normal) {
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  int next = read_shape(L, 1, &ndim, shape);
  check_no_infer(L, 1, ndim, shape);
  ml_type ty = opt_dtype(L, next, ML_TYPE_F32);
  double seed, a = normal ? 0 : 0, b = 1;
  ml_rng local, *r = state_rng(L);
  if (opt_field_number(L, next, "seed", &seed)) {
    ml_rng_seed(&local, (uint64_t)(int64_t)seed);
    r = &local;
  }
  opt_field_number(L, next, normal ? "mean" : "min", &a);
  opt_field_number(L, next, normal ? "std" : "max", &b);
  ml_tensor f, *t = ml_lua_push_tensor(L);
  CHECK_AT(L, ml_tensor_init(&f, ML_TYPE_F32, ndim, shape), 1);
  if (normal)
    ml_tensor_randn(&f, r, a, b);
  else
    ml_tensor_rand(&f, r, a, b);
  if (ty == ML_TYPE_F32) {
    *t = f;
    return 1;
  }
  int rc = ml_tensor_to(t, &f, ty);
  ml_tensor_release(&f);
  CHECK_AT(L, rc, next);
  return 1;
}

static int t_rand(lua_State *L) { return random_tensor(L, 0); }
static int t_randn(lua_State *L) { return random_tensor(L, 1); }

static int is_tensor(lua_State *L) {
  lua_pushboolean(L, test_udata(L, 1) != NULL);
  return 1;
}

/* cat(list, dim) / stack(list, dim) */
static int list_op(lua_State *L, int stack) {
  lua_settop(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_rawlen(L, 1);
  if (n < 1) luaL_argerror(L, 1, "empty list");
  if (n > 100000) luaL_argerror(L, 1, "too many tensors");
  const ml_tensor **ts = lua_newuserdatauv(L, sizeof(ml_tensor *) * (size_t)n, 0); /* collected on error */
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    ts[i - 1] = ml_lua_test_tensor(L, -1);
    if (!ts[i - 1]) luaL_argerror(L, 1, lua_pushfstring(L, "item %d is not a tensor", i));
  }
  int ndim = ts[0]->ndim;
  int dim = check_dim(L, 2, ndim, 1, stack);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, stack ? ml_stack(o, ts, n, dim) : ml_cat(o, ts, n, dim));
  return 1;
}

static int t_cat(lua_State *L) { return list_op(L, 0); }
static int t_stack(lua_State *L) { return list_op(L, 1); }

/* ---- inspection ---- */

static int push_shape_table(lua_State *L, int n, const int64_t *v) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  luaL_getmetatable(L, "moonlm.shape");
  lua_setmetatable(L, -2);
  return 1;
}

static int m_shape(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  return push_shape_table(L, t->ndim, t->shape);
}

static int m_size(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) return push_shape_table(L, t->ndim, t->shape);
  lua_pushinteger(L, (lua_Integer)t->shape[check_dim(L, 2, t->ndim, 1, 0)]);
  return 1;
}

static int m_stride(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, (lua_Integer)t->stride[check_dim(L, 2, t->ndim, 1, 0)]);
    return 1;
  }
  return push_shape_table(L, t->ndim, t->stride);
}

static int m_numel(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ml_tensor_numel(ml_lua_check_tensor(L, 1)));
  return 1;
}

static int m_dim(lua_State *L) {
  lua_pushinteger(L, ml_lua_check_tensor(L, 1)->ndim);
  return 1;
}

static int m_is_contiguous(lua_State *L) {
  lua_pushboolean(L, ml_tensor_is_contiguous(ml_lua_check_tensor(L, 1)));
  return 1;
}

static int m_nbytes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ml_tensor_nbytes(ml_lua_check_tensor(L, 1)));
  return 1;
}

/* t:bytes() -> the raw bytes of a contiguous tensor, as stored (e.g. GGUF blocks) */
static int m_bytes(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (!ml_tensor_is_contiguous(t)) return luaL_argerror(L, 1, "bytes needs a contiguous tensor");
  lua_pushlstring(L, ml_tensor_data(t), ml_tensor_nbytes(t));
  return 1;
}

/* Read indices at i.. (ndim of them), 1-based with negatives from the end. */
static void read_index(lua_State *L, const ml_tensor *t, int i, int64_t *idx) {
  for (int d = 0; d < t->ndim; d++) {
    lua_Integer k = luaL_checkinteger(L, i + d);
    if (k < 0) k += t->shape[d] + 1;
    if (k < 1 || k > t->shape[d])
      luaL_argerror(L, i + d, lua_pushfstring(L, "index %d out of range (dimension %d has size %d)",
                                              (int)luaL_checkinteger(L, i + d), d + 1, (int)t->shape[d]));
    idx[d] = k - 1;
  }
}

static int m_get(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int64_t idx[ML_MAX_DIMS];
  if (lua_gettop(L) - 1 != t->ndim)
    return luaL_error(L, "get: expected %d indices, got %d", t->ndim, lua_gettop(L) - 1);
  read_index(L, t, 2, idx);
  lua_pushnumber(L, ml_tensor_get(t, idx));
  return 1;
}

static int m_set(lua_State *L) {
  ml_tensor *t = ml_lua_check_writable(L, 1);
  int64_t idx[ML_MAX_DIMS];
  if (lua_gettop(L) - 2 != t->ndim)
    return luaL_error(L, "set: expected %d indices and a value, got %d arguments", t->ndim, lua_gettop(L) - 1);
  double v = luaL_checknumber(L, t->ndim + 2);
  if (ml_type_traits_get(t->type)->blck > 1)
    return luaL_error(L, "set: cannot write single elements of a %s tensor (dequantize first)", dtype_name(t->type));
  read_index(L, t, 2, idx);
  ml_tensor_set(t, idx, v);
  lua_settop(L, 1);
  return 1;
}

static int m_totable(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int64_t idx[ML_MAX_DIMS];
  if (t->ndim == 0) {
    lua_pushnumber(L, ml_tensor_get(t, idx));
    return 1;
  }
  push_totable(L, t, 0, idx);
  return 1;
}

static int m_item(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (ml_tensor_numel(t) != 1) return luaL_argerror(L, 1, "item() needs a tensor with one element");
  lua_pushnumber(L, ml_tensor_get_flat(t, 0));
  return 1;
}

/* ---- printing ---- */

typedef struct fmt {
  luaL_Buffer b;
  int ints, sci, width;
} fmt;

static void fmt_num(fmt *f, double v) {
  char s[64];
  if (f->ints)
    snprintf(s, sizeof s, "%*.0f", f->width, v);
  else if (f->sci)
    snprintf(s, sizeof s, "%*.4e", f->width, v);
  else
    snprintf(s, sizeof s, "%*.4f", f->width, v);
  luaL_addstring(&f->b, s);
}

#define EDGE 3

static void fmt_dim(fmt *f, const ml_tensor *t, int d, int64_t *idx, int summarize, int indent) {
  if (d == t->ndim) {
    fmt_num(f, ml_tensor_get(t, idx));
    return;
  }
  luaL_addchar(&f->b, '[');
  int64_t n = t->shape[d];
  for (int64_t k = 0; k < n; k++) {
    if (summarize && n > 2 * EDGE && k == EDGE) {
      luaL_addstring(&f->b, d == t->ndim - 1 ? " ..." : "\n");
      if (d != t->ndim - 1) {
        for (int s = 0; s <= indent; s++) luaL_addchar(&f->b, ' ');
        luaL_addstring(&f->b, "...");
      }
      k = n - EDGE;
    }
    if (k > 0 || (summarize && n > 2 * EDGE && k == n - EDGE)) {
      if (d == t->ndim - 1)
        luaL_addchar(&f->b, ' ');
      else {
        for (int r = d; r < t->ndim - 1; r++) luaL_addchar(&f->b, '\n');
        for (int s = 0; s <= indent; s++) luaL_addchar(&f->b, ' ');
      }
    }
    idx[d] = k;
    fmt_dim(f, t, d + 1, idx, summarize, indent + 1);
  }
  luaL_addchar(&f->b, ']');
}

static int m_tostring(lua_State *L) {
  ml_tensor *t = luaL_checkudata(L, 1, ML_TENSOR_MT);
  if (!t->storage) {
    lua_pushstring(L, "moonlm.tensor (released)");
    return 1;
  }
  fmt f;
  int64_t n = ml_tensor_numel(t), idx[ML_MAX_DIMS];
  int summarize = n > 1000;
  /* choose one format for all printed values */
  double amax = 0, amin = INFINITY;
  f.ints = 1;
  int64_t step = summarize ? n / 997 + 1 : 1;
  for (int64_t i = 0; i < n; i += step) {
    double v = ml_tensor_get_flat(t, i), a = fabs(v);
    if (v != floor(v) || a >= 1e15) f.ints = 0;
    if (a == a && a != INFINITY) {
      amax = a > amax ? a : amax;
      if (a > 0 && a < amin) amin = a;
    }
  }
  f.sci = !f.ints && (amax >= 1e5 || (amin < 1e-4 && amax < 1e-2));
  char s[64];
  f.width = f.ints ? snprintf(s, sizeof s, "%.0f", -amax) : f.sci ? 11 : snprintf(s, sizeof s, "%.4f", -amax);
  luaL_buffinit(L, &f.b);
  if (n > 0 || t->ndim == 0) fmt_dim(&f, t, 0, idx, summarize, 0);
  else luaL_addstring(&f.b, "[]");
  luaL_addchar(&f.b, '\n');
  snprintf(s, sizeof s, "[%s tensor of shape {", dtype_name(t->type));
  luaL_addstring(&f.b, s);
  for (int d = 0; d < t->ndim; d++) {
    snprintf(s, sizeof s, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    luaL_addstring(&f.b, s);
  }
  luaL_addstring(&f.b, "}]");
  luaL_pushresult(&f.b);
  return 1;
}

/* ---- lifetime ---- */

static int m_gc(lua_State *L) {
  ml_tensor *t = test_udata(L, 1);
  if (!t) t = luaL_checkudata(L, 1, ML_TENSOR_MT); /* the error */
  ml_tensor_release(t);
  return 0;
}

static int m_len(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->ndim == 0) return luaL_argerror(L, 1, "a 0-d tensor has no length");
  lua_pushinteger(L, (lua_Integer)t->shape[0]);
  return 1;
}

/* ---- views ---- */

static int m_view(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  read_shape(L, 2, &ndim, shape);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_reshape_view(o, t, ndim, shape));
  return 1;
}

static int m_reshape(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  read_shape(L, 2, &ndim, shape);
  ml_tensor *o = ml_lua_push_tensor(L);
  if (ml_tensor_is_contiguous(t)) {
    CHECK(L, ml_tensor_reshape_view(o, t, ndim, shape));
    return 1;
  }
  ml_tensor c;
  CHECK(L, ml_tensor_clone(&c, t));
  int rc = ml_tensor_reshape_view(o, &c, ndim, shape);
  ml_tensor_release(&c);
  CHECK(L, rc);
  return 1;
}

static int m_narrow(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int dim = check_dim(L, 2, t->ndim, 1, 0);
  lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
  if (start < 0) start += t->shape[dim] + 1;
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_narrow(o, t, dim, start - 1, len));
  return 1;
}

/* slice(dim, i [, j]): elements i..j inclusive, negatives from the end, as string.sub */
static int m_slice(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int dim = check_dim(L, 2, t->ndim, 1, 0);
  int64_t n = t->shape[dim];
  lua_Integer i = luaL_optinteger(L, 3, 1), j = luaL_optinteger(L, 4, -1);
  if (i < 0) i += n + 1;
  if (j < 0) j += n + 1;
  if (i < 1) i = 1;
  if (j > n) j = n;
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_narrow(o, t, dim, i - 1, j >= i ? j - i + 1 : 0));
  return 1;
}

static int m_select(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int dim = check_dim(L, 2, t->ndim, 1, 0);
  lua_Integer i = luaL_checkinteger(L, 3);
  if (i < 0) i += t->shape[dim] + 1;
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_select(o, t, dim, i - 1));
  return 1;
}

static int m_transpose(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->ndim < 2 && lua_isnoneornil(L, 2)) return luaL_argerror(L, 1, "transpose needs at least 2 dimensions");
  int d0 = check_dim(L, 2, t->ndim, t->ndim - 1, 0), d1 = check_dim(L, 3, t->ndim, t->ndim, 0);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_transpose(o, t, d0, d1));
  return 1;
}

static int m_permute(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int ndim, perm[ML_MAX_DIMS];
  int64_t p[ML_MAX_DIMS];
  read_shape(L, 2, &ndim, p);
  if (ndim != t->ndim) return luaL_argerror(L, 2, lua_pushfstring(L, "expected %d dimensions, got %d", t->ndim, ndim));
  for (int i = 0; i < ndim; i++) perm[i] = (int)p[i] - 1;
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_permute(o, t, perm));
  return 1;
}

static int m_expand(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  read_shape(L, 2, &ndim, shape);
  for (int i = 0; i < ndim; i++) /* -1 keeps the size */
    if (shape[i] == -1) {
      int j = i - (ndim - t->ndim);
      if (j < 0) return luaL_argerror(L, 2, "-1 is not allowed for a new leading dimension");
      shape[i] = t->shape[j];
    }
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_expand(o, t, ndim, shape));
  return 1;
}

static int m_squeeze(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  ml_tensor v = *t;
  int k = 0, only = lua_isnoneornil(L, 2) ? -1 : check_dim(L, 2, t->ndim, 1, 0);
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] == 1 && (only < 0 || only == i)) continue;
    v.shape[k] = t->shape[i];
    v.stride[k++] = t->stride[i];
  }
  v.ndim = k;
  ml_tensor *o = ml_lua_push_tensor(L);
  ml_tensor_view_of(o, &v);
  return 1;
}

static int m_unsqueeze(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->ndim >= ML_MAX_DIMS) return luaL_argerror(L, 1, "too many dimensions");
  int dim = check_dim(L, 2, t->ndim, 1, 1);
  ml_tensor v = *t;
  v.ndim = t->ndim + 1;
  for (int i = t->ndim; i > dim; i--) {
    v.shape[i] = t->shape[i - 1];
    v.stride[i] = t->stride[i - 1];
  }
  v.shape[dim] = 1;
  v.stride[dim] = dim < t->ndim ? t->stride[dim] * t->shape[dim] : 1;
  ml_tensor *o = ml_lua_push_tensor(L);
  ml_tensor_view_of(o, &v);
  return 1;
}

static int m_contiguous(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (ml_tensor_is_contiguous(t)) {
    lua_settop(L, 1);
    return 1;
  }
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_clone(o, t));
  return 1;
}

static int m_clone(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_clone(o, t));
  return 1;
}

static int m_to(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  ml_type ty = ml_lua_check_dtype(L, 2, t->type);
  luaL_checkstring(L, 2);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_to(o, t, ty));
  return 1;
}

static int m_quantize(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  luaL_checkstring(L, 2);
  ml_type ty = ml_lua_check_dtype(L, 2, t->type);
  if (!ml_type_traits_get(ty)->from_float)
    return luaL_argerror(L, 2, lua_pushfstring(L, "cannot quantize to %s", dtype_name(ty)));
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_to(o, t, ty));
  return 1;
}

static int m_dequantize(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_to(o, t, ML_TYPE_F32));
  return 1;
}

static int m_copy_(lua_State *L) {
  ml_tensor *t = ml_lua_check_writable(L, 1);
  ml_tensor *s = to_tensor(L, 2), e;
  CHECK_AT(L, ml_tensor_expand(&e, s, t->ndim, t->shape), 2);
  int rc = ml_tensor_copy_into(t, &e);
  ml_tensor_release(&e);
  CHECK(L, rc);
  lua_settop(L, 1);
  return 1;
}

static int m_fill_(lua_State *L) {
  ml_tensor *t = ml_lua_check_writable(L, 1);
  double v = luaL_checknumber(L, 2);
  if (ml_type_traits_get(t->type)->blck > 1) return luaL_argerror(L, 1, "cannot fill a quantized tensor in place");
  ml_tensor_fill(t, v);
  lua_settop(L, 1);
  return 1;
}

static int m_zero_(lua_State *L) {
  lua_settop(L, 1);
  lua_pushnumber(L, 0);
  return m_fill_(L);
}

/* t[i] (a view, or a number for 1-d), t.dtype, t.ndim, methods */
static int m_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    ml_tensor *t = ml_lua_check_tensor(L, 1);
    if (t->ndim == 0) return luaL_error(L, "cannot index a 0-d tensor");
    int isnum;
    lua_Integer i = lua_tointegerx(L, 2, &isnum);
    if (!isnum) return luaL_error(L, "tensor index must be an integer");
    if (i < 0) i += t->shape[0] + 1;
    if (i < 1 || i > t->shape[0])
      return luaL_error(L, "index %s out of range (dimension 1 has size %d)", ml_push_int(L, lua_tointeger(L, 2)),
                        (int)t->shape[0]);
    if (t->ndim == 1) {
      int64_t idx = i - 1;
      lua_pushnumber(L, ml_tensor_get(t, &idx));
      return 1;
    }
    ml_tensor *o = ml_lua_push_tensor(L);
    CHECK(L, ml_tensor_select(o, t, 0, i - 1));
    return 1;
  }
  /* methods first, from the upvalue: a forward pass written in Lua looks one up for every
   * op (a metatable and a field by name each time cost LuaJIT a string lookup per call) */
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  if (!lua_isnil(L, -1)) return 1;
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "dtype") == 0) {
    lua_pushstring(L, dtype_name(ml_lua_check_tensor(L, 1)->type));
    return 1;
  }
  if (k && strcmp(k, "ndim") == 0) {
    lua_pushinteger(L, ml_lua_check_tensor(L, 1)->ndim);
    return 1;
  }
  return 1; /* nil */
}

static int m_newindex(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->storage->readonly) return luaL_error(L, "cannot assign into a " READONLY_MSG);
  int isnum;
  lua_Integer i = lua_tointegerx(L, 2, &isnum);
  if (!isnum || lua_type(L, 2) != LUA_TNUMBER) return luaL_error(L, "tensor index must be an integer");
  if (t->ndim == 0) return luaL_error(L, "cannot index a 0-d tensor");
  if (i < 0) i += t->shape[0] + 1;
  if (i < 1 || i > t->shape[0])
    return luaL_error(L, "index %s out of range (dimension 1 has size %d)", ml_push_int(L, lua_tointeger(L, 2)),
                      (int)t->shape[0]);
  if (ml_type_traits_get(t->type)->blck > 1)
    return luaL_error(L, "cannot assign into a %s tensor (dequantize first)", dtype_name(t->type));
  ml_tensor row;
  CHECK(L, ml_tensor_select(&row, t, 0, i - 1));
  if (lua_type(L, 3) == LUA_TNUMBER) {
    ml_tensor_fill(&row, lua_tonumber(L, 3));
    ml_tensor_release(&row);
    return 0;
  }
  ml_tensor *s = ml_lua_test_tensor(L, 3);
  if (!s && lua_istable(L, 3)) s = to_tensor(L, 3);
  if (!s) {
    ml_tensor_release(&row);
    return luaL_error(L, "cannot assign a %s to a tensor row", luaL_typename(L, 3));
  }
  ml_tensor e;
  int rc = ml_tensor_expand(&e, s, row.ndim, row.shape);
  if (rc == 0) {
    rc = ml_tensor_copy_into(&row, &e);
    ml_tensor_release(&e);
  }
  ml_tensor_release(&row);
  CHECK_AT(L, rc, 3); /* the value assigned does not fit the row */
  return 0;
}

/* ---- math ---- */

/* torch7 gave add and sub more arguments (x:add(v, y), x:sub(i, j)): say what they are here
 * rather than ignore them */
static int extra_operands(lua_State *L, ml_binop op) {
  if (op == ML_OP_SUB)
    return luaL_argerror(L, 3, "sub takes one operand (x - y); torch7's x:sub(i, j) is x:slice(1, i, j) here");
  if (op == ML_OP_ADD)
    return luaL_argerror(L, 3, "add takes one operand; torch7's x:add(v, y) is x:add(y * v) here");
  return luaL_argerror(L, 3, "one operand expected");
}

static int binary(lua_State *L, ml_binop op, int inplace, int meta) {
  if (!meta && lua_gettop(L) > 2) return extra_operands(L, op);
  if (meta && lua_type(L, 1) == LUA_TNUMBER) { /* 2 - t */
    ml_tensor *b = ml_lua_check_tensor(L, 2);
    ml_tensor *o = ml_lua_push_tensor(L);
    CHECK(L, ml_binary_scalar(o, b, lua_tonumber(L, 1), op, 1));
    return 1;
  }
  ml_tensor *a = meta ? to_tensor(L, 1) : inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    double s = lua_tonumber(L, 2);
    if (inplace) {
      CHECK(L, ml_binary_scalar_(a, s, op));
      lua_settop(L, 1);
      return 1;
    }
    ml_tensor *o = ml_lua_push_tensor(L);
    CHECK(L, ml_binary_scalar(o, a, s, op, 0));
    return 1;
  }
  if (!lua_istable(L, 2) && !test_udata(L, 2))
    return luaL_argerror(L, 2, lua_pushfstring(L, "tensor or number expected, got %s", luaL_typename(L, 2)));
  ml_tensor *b = to_tensor(L, 2);
  if (inplace) {
    CHECK(L, ml_binary_(a, b, op));
    lua_settop(L, 1);
    return 1;
  }
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_binary(o, a, b, op));
  return 1;
}

#define BIN(name, op) \
  static int m_##name(lua_State *L) { return binary(L, op, 0, 0); } \
  static int m_##name##_(lua_State *L) { return binary(L, op, 1, 0); }
#define META(name, op) \
  static int mm_##name(lua_State *L) { return binary(L, op, 0, 1); }
BIN(add, ML_OP_ADD)
BIN(sub, ML_OP_SUB)
BIN(mul, ML_OP_MUL)
BIN(div, ML_OP_DIV)
BIN(pow, ML_OP_POW)
BIN(maximum, ML_OP_MAXIMUM)
BIN(minimum, ML_OP_MINIMUM)
META(add, ML_OP_ADD)
META(sub, ML_OP_SUB)
META(mul, ML_OP_MUL)
META(div, ML_OP_DIV)
META(pow, ML_OP_POW)

static int unary(lua_State *L, ml_unop op, int inplace) {
  ml_tensor *a = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  if (inplace) {
    CHECK(L, ml_unary_(a, op));
    lua_settop(L, 1);
    return 1;
  }
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_unary(o, a, op));
  return 1;
}

#define UN(name, op) \
  static int m_##name(lua_State *L) { return unary(L, op, 0); } \
  static int m_##name##_(lua_State *L) { return unary(L, op, 1); }
UN(neg, ML_OP_NEG)
UN(exp, ML_OP_EXP)
UN(log, ML_OP_LOG)
UN(sqrt, ML_OP_SQRT)
UN(rsqrt, ML_OP_RSQRT)
UN(tanh, ML_OP_TANH)
UN(relu, ML_OP_RELU)
UN(silu, ML_OP_SILU)
UN(gelu, ML_OP_GELU)
UN(sigmoid, ML_OP_SIGMOID)
UN(abs, ML_OP_ABS)
UN(square, ML_OP_SQUARE)

static int m_unm(lua_State *L) { return unary(L, ML_OP_NEG, 0); }

/* sum/mean/...: (dim [, keepdim]); without dim, a number over all elements */
static int reduce(lua_State *L, ml_redop op) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    ml_tensor o;
    CHECK(L, ml_reduce(&o, a, -1, 0, op));
    double v = ml_tensor_get(&o, NULL);
    ml_tensor_release(&o);
    if (op == ML_RED_ARGMAX || op == ML_RED_ARGMIN) v += 1;
    lua_pushnumber(L, v);
    return 1;
  }
  int dim = check_dim(L, 2, a->ndim, 1, 0);
  int keep = lua_toboolean(L, 3);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_reduce(o, a, dim, keep, op));
  if (op == ML_RED_ARGMAX || op == ML_RED_ARGMIN || op == ML_RED_MAX || op == ML_RED_MIN) {
    int32_t *p;
    if (op == ML_RED_MAX || op == ML_RED_MIN) { /* values, indices as torch does */
      ml_tensor *oi = ml_lua_push_tensor(L);
      CHECK(L, ml_reduce(oi, a, dim, keep, op == ML_RED_MAX ? ML_RED_ARGMAX : ML_RED_ARGMIN));
      p = ml_tensor_data(oi);
      for (int64_t i = 0, n = ml_tensor_numel(oi); i < n; i++) p[i] += 1;
      return 2;
    }
    p = ml_tensor_data(o);
    for (int64_t i = 0, n = ml_tensor_numel(o); i < n; i++) p[i] += 1;
  }
  return 1;
}

static int m_sum(lua_State *L) { return reduce(L, ML_RED_SUM); }
static int m_mean(lua_State *L) { return reduce(L, ML_RED_MEAN); }
static int m_max(lua_State *L) { return reduce(L, ML_RED_MAX); }
static int m_min(lua_State *L) { return reduce(L, ML_RED_MIN); }
static int m_argmax(lua_State *L) { return reduce(L, ML_RED_ARGMAX); }
static int m_argmin(lua_State *L) { return reduce(L, ML_RED_ARGMIN); }

static int m_softmax(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (a->ndim == 0) return luaL_argerror(L, 1, "softmax needs at least one dimension");
  int dim = check_dim(L, 2, a->ndim, -1, 0);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_softmax(o, a, dim));
  return 1;
}

static int m_log_softmax(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (a->ndim == 0) return luaL_argerror(L, 1, "log_softmax needs at least one dimension");
  int dim = check_dim(L, 2, a->ndim, -1, 0);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_log_softmax(o, a, dim));
  return 1;
}

static ml_tensor *opt_tensor(lua_State *L, int i) {
  if (lua_isnoneornil(L, i)) return NULL;
  return to_tensor(L, i);
}

/* rmsnorm([weight] [, eps]) */
static int m_rmsnorm(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  int wi = lua_type(L, 2) == LUA_TNUMBER ? 0 : 2;
  ml_tensor *w = wi ? opt_tensor(L, 2) : NULL;
  double eps = luaL_optnumber(L, wi ? 3 : 2, 1e-5);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_rmsnorm(o, a, w, eps));
  return 1;
}

/* layernorm([weight [, bias]] [, eps]) */
static int m_layernorm(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  ml_tensor *w = NULL, *b = NULL;
  int i = 2;
  if (lua_type(L, i) != LUA_TNUMBER && !lua_isnoneornil(L, i)) w = to_tensor(L, i++);
  else if (lua_isnil(L, i) && lua_gettop(L) > i) i++;
  if (lua_type(L, i) != LUA_TNUMBER && !lua_isnoneornil(L, i)) b = to_tensor(L, i++);
  else if (lua_isnil(L, i) && lua_gettop(L) > i) i++;
  double eps = luaL_optnumber(L, i, 1e-5);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_layernorm(o, a, w, b, eps));
  return 1;
}

static int m_matmul(lua_State *L) {
  ml_tensor *a = to_tensor(L, 1), *b = to_tensor(L, 2);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_matmul(o, a, b));
  return 1;
}

/* The registry's table of weight links: tensor userdata (weak keys) -> link userdata. */
static const char wlink_key = 'w';

void ml_lua_set_wlink(lua_State *L, int tensor, int link) {
  tensor = lua_absindex(L, tensor);
  link = lua_absindex(L, link);
  lua_pushlightuserdata(L, (void *)&wlink_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushlightuserdata(L, (void *)&wlink_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, tensor);
  lua_pushvalue(L, link);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

const ml_weight *ml_lua_get_wlink(lua_State *L, int tensor, const ml_tensor *t) {
  lua_pushlightuserdata(L, (void *)&wlink_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_pushvalue(L, tensor);
  lua_rawget(L, -2);
  ml_lua_wlink *l = lua_touserdata(L, -1);
  lua_pop(L, 2);
  if (!l) return NULL;
  if (!l->resolved) {
    l->pw = l->resolve(l, t);
    l->resolved = 1;
  }
  return l->pw;
}

/* x:linear(w [, b]): w a tensor (a model's matrix runs the model's prepared copy), or a
 * weight packed by w:pack() */
static int m_linear(lua_State *L) {
  ml_tensor *x = to_tensor(L, 1);
  const ml_weight *pw = ml_lua_test_weight(L, 2);
  ml_tensor *w = pw ? NULL : to_tensor(L, 2), *b = opt_tensor(L, 3);
  if (!pw) pw = ml_lua_get_wlink(L, 2, w);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, pw ? ml_linear_w(o, x, pw, b) : ml_linear(o, x, w, b));
  return 1;
}

static int m_topk(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (a->ndim == 0) return luaL_argerror(L, 1, "topk needs at least one dimension");
  lua_Integer k = luaL_checkinteger(L, 2);
  int dim = check_dim(L, 3, a->ndim, -1, 0);
  int largest = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
  ml_tensor *v = ml_lua_push_tensor(L), *ix = ml_lua_push_tensor(L);
  CHECK(L, ml_topk(v, ix, a, k, dim, largest));
  int32_t *p = ml_tensor_data(ix);
  for (int64_t i = 0, n = ml_tensor_numel(ix); i < n; i++) p[i] += 1;
  return 2;
}

/* ids from a table of integers or an integer-valued tensor; `base` is subtracted (1 for
 * 1-based indices, 0 for token ids). Returns a userdata-owned array on the stack. */
static int64_t *read_ids(lua_State *L, int i, int64_t *n, int base) {
  ml_tensor *t = ml_lua_test_tensor(L, i);
  if (t) {
    *n = ml_tensor_numel(t);
    int64_t *ids = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(*n ? *n : 1), 0);
    for (int64_t k = 0; k < *n; k++) ids[k] = (int64_t)ml_tensor_get_flat(t, k) - base;
    return ids;
  }
  luaL_checktype(L, i, LUA_TTABLE);
  *n = (int64_t)lua_rawlen(L, i);
  int64_t *ids = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(*n ? *n : 1), 0);
  for (int64_t k = 0; k < *n; k++) {
    lua_rawgeti(L, i, (lua_Integer)k + 1);
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_argerror(L, i, lua_pushfstring(L, "item %d is not an integer", (int)k + 1));
    ids[k] = v - base;
    lua_pop(L, 1);
  }
  return ids;
}

/* index_select(dim, indices): 1-based indices */
static int m_index_select(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  int dim = check_dim(L, 2, a->ndim, 1, 0);
  int64_t n, *ids = read_ids(L, 3, &n, 1);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_index_select(o, a, dim, ids, n));
  return 1;
}

/* x:pairwise_dot([diagonal]): (..., n, d) -> (..., pairs), see ml_pairwise_dot */
static int m_pairwise_dot(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  int diagonal = lua_toboolean(L, 2);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_pairwise_dot(o, a, diagonal));
  return 1;
}
/* embedding(ids): rows of a 2-d table picked by 0-based ids (token ids), as f32 */
static int m_embedding(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (a->ndim != 2) return luaL_argerror(L, 1, "embedding table must be 2-d (rows, dim)");
  int64_t n, *ids = read_ids(L, 2, &n, 0);
  ml_tensor sel, *o = ml_lua_push_tensor(L);
  if (ml_index_select(&sel, a, 0, ids, n) < 0) return ml_lua_error_at(L, 2);
  int rc = ml_tensor_f32(o, &sel);
  ml_tensor_release(&sel);
  CHECK(L, rc);
  return 1;
}

static int m_close(lua_State *L) { return m_gc(L); }

static const luaL_Reg methods[] = {
  {"shape", m_shape}, {"size", m_size}, {"stride", m_stride}, {"numel", m_numel}, {"dim", m_dim},
  {"is_contiguous", m_is_contiguous}, {"nbytes", m_nbytes}, {"bytes", m_bytes}, {"get", m_get}, {"set", m_set},
  {"totable", m_totable}, {"item", m_item}, {"view", m_view}, {"reshape", m_reshape},
  {"narrow", m_narrow}, {"slice", m_slice}, {"select", m_select}, {"transpose", m_transpose},
  {"t", m_transpose}, {"permute", m_permute}, {"expand", m_expand}, {"squeeze", m_squeeze},
  {"unsqueeze", m_unsqueeze}, {"contiguous", m_contiguous}, {"clone", m_clone}, {"to", m_to},
  {"quantize", m_quantize}, {"dequantize", m_dequantize}, {"copy_", m_copy_}, {"fill_", m_fill_},
  {"zero_", m_zero_},
  {"add", m_add}, {"sub", m_sub}, {"mul", m_mul}, {"div", m_div}, {"pow", m_pow},
  {"maximum", m_maximum}, {"minimum", m_minimum},
  {"add_", m_add_}, {"sub_", m_sub_}, {"mul_", m_mul_}, {"div_", m_div_}, {"pow_", m_pow_},
  {"maximum_", m_maximum_}, {"minimum_", m_minimum_},
  {"neg", m_neg}, {"exp", m_exp}, {"log", m_log}, {"sqrt", m_sqrt}, {"rsqrt", m_rsqrt}, {"tanh", m_tanh},
  {"relu", m_relu}, {"silu", m_silu}, {"gelu", m_gelu}, {"sigmoid", m_sigmoid}, {"abs", m_abs},
  {"square", m_square},
  {"neg_", m_neg_}, {"exp_", m_exp_}, {"log_", m_log_}, {"sqrt_", m_sqrt_}, {"rsqrt_", m_rsqrt_},
  {"tanh_", m_tanh_}, {"relu_", m_relu_}, {"silu_", m_silu_}, {"gelu_", m_gelu_},
  {"sigmoid_", m_sigmoid_}, {"abs_", m_abs_}, {"square_", m_square_},
  {"sum", m_sum}, {"mean", m_mean}, {"max", m_max}, {"min", m_min}, {"argmax", m_argmax},
  {"argmin", m_argmin}, {"softmax", m_softmax}, {"log_softmax", m_log_softmax},
  {"rmsnorm", m_rmsnorm}, {"layernorm", m_layernorm}, {"matmul", m_matmul}, {"linear", m_linear},
  {"pack", ml_lua_tensor_pack}, {"topk", m_topk}, {"index_select", m_index_select}, {"embedding", m_embedding},
  {"pairwise_dot", m_pairwise_dot}, {"attention", ml_lua_attention},
  {"close", m_close}, {"release", m_close},
  {NULL, NULL}};

static const luaL_Reg metamethods[] = {
  {"__newindex", m_newindex}, {"__gc", m_gc}, {"__close", m_close},
  {"__tostring", m_tostring}, {"__len", m_len}, {"__add", mm_add}, {"__sub", mm_sub},
  {"__mul", mm_mul}, {"__div", mm_div}, {"__pow", mm_pow}, {"__unm", m_unm},
  {NULL, NULL}};

static const luaL_Reg functions[] = {
  {"new", t_new}, {"zeros", t_zeros}, {"ones", t_ones}, {"full", t_full}, {"empty", t_empty},
  {"arange", t_arange}, {"rand", t_rand}, {"randn", t_randn}, {"manual_seed", t_manual_seed},
  {"cat", t_cat}, {"stack", t_stack}, {"is_tensor", is_tensor}, {"matmul", m_matmul},
  {"linear", m_linear}, {"attention", ml_lua_attention},
  {NULL, NULL}};

/* shape tables print as {2, 3} and compare by value */
static int shape_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '{');
  for (size_t i = 1, n = lua_rawlen(L, 1); i <= n; i++) {
    if (i > 1) luaL_addstring(&b, ", ");
    lua_rawgeti(L, 1, (lua_Integer)i);
    lua_pushfstring(L, "%d", (int)lua_tointeger(L, -1));
    luaL_addvalue(&b);
    lua_pop(L, 1);
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
  return 1;
}

static int shape_eq(lua_State *L) {
  size_t n = lua_rawlen(L, 1);
  int eq = lua_istable(L, 2) && lua_rawlen(L, 2) == n;
  for (size_t i = 1; eq && i <= n; i++) {
    lua_rawgeti(L, 1, (lua_Integer)i);
    lua_rawgeti(L, 2, (lua_Integer)i);
    eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  lua_pushboolean(L, eq);
  return 1;
}

int ml_lua_check_dim(lua_State *L, int i, int ndim, int def, int extra) { return check_dim(L, i, ndim, def, extra); }
ml_tensor *ml_lua_to_tensor(lua_State *L, int i) { return to_tensor(L, i); }
int ml_lua_read_shape(lua_State *L, int i, int *ndim, int64_t *shape) { return read_shape(L, i, ndim, shape); }

ml_rng *ml_lua_rng(lua_State *L, int i, ml_rng *local) {
  double seed;
  if (opt_field_number(L, i, "seed", &seed)) {
    ml_rng_seed(local, (uint64_t)(int64_t)seed);
    return local;
  }
  return state_rng(L);
}

void ml_lua_open_tensor(lua_State *L) {
  luaL_newmetatable(L, "moonlm.shape");
  lua_pushcfunction(L, shape_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, shape_eq);
  lua_setfield(L, -2, "__eq");
  lua_pop(L, 1);

  luaL_newmetatable(L, ML_TENSOR_MT);
  lua_pushlightuserdata(L, (void *)&tensor_tag);
  lua_rawseti(L, -2, 1);
  luaL_setfuncs(L, metamethods, 0);
  ml_register_names(L, "");
  luaL_newlib(L, methods);
  ml_register_names(L, "");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, m_index, 1); /* __index reads the methods table as its upvalue */
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -2, "methods");
  lua_pushliteral(L, "moonlm.tensor");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);

  luaL_newlib(L, functions);
  ml_register_names(L, "");
  luaL_getmetatable(L, ML_TENSOR_MT);
  lua_getfield(L, -1, "methods");
  lua_setfield(L, -3, "methods"); /* tensor.methods: for Lua code to add methods */
  lua_pop(L, 1);
  ml_lua_open_tensor_ext(L);
}
