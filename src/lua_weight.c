/* lua_weight.c: prepared weights (matmul.h's ml_weight) as Lua values: w:pack() packs a weight
 * tensor once, as the model's weights are, so x:linear(pw) runs the packed GEMV / GEMM instead
 * of the dot products over the rows as stored. The same userdata is what the kernel test
 * hooks prepare for a given table (core._weight). */
#include <string.h>

#include "common.h"
#include "kernels/dispatch.h"
#include "lua_tensor.h"
#include "lua_weight.h"
#include "matmul.h"
#include "ops.h"
#include "threads.h"

ml_weight *ml_lua_push_weight(lua_State *L) {
  ml_weight *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  luaL_setmetatable(L, ML_WEIGHT_MT);
  return w;
}

ml_weight *ml_lua_test_weight(lua_State *L, int i) { return luaL_testudata(L, i, ML_WEIGHT_MT); }

static ml_weight *check_weight(lua_State *L, int i) {
  ml_weight *w = luaL_checkudata(L, i, ML_WEIGHT_MT);
  if (!w->w.storage) luaL_argerror(L, i, "weight has been released");
  return w;
}

/* w:pack() -> pw: a prepared copy of the (N, K) weight w for the active kernel level: the
 * x16 packed layout where the level has kernels for the type, else a plain copy (f32, or
 * the ref level); as many bytes again as w either way. Writes to w after pack() are not
 * seen by pw: pack again. */
int ml_lua_tensor_pack(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  ml_weight *w = ml_lua_push_weight(L);
  if (ml_weight_prepare(w, t, ML_WEIGHT_COPY) < 0) return ml_lua_error(L);
  return 1;
}

/* pw:mm(x [, path [, y]]) -> y = x wT; x (M, K) f32 with unit column stride, any row
 * stride; path "auto" | "gemv" | "gemm" | "plain" | "phases"; y (M, N) f32 to write into.
 * For tests and benchmarks (x:linear(pw) is the API). */
static int w_mm(lua_State *L) {
  ml_weight *w = check_weight(L, 1);
  ml_tensor *x = ml_lua_check_tensor(L, 2);
  static const char *const paths[] = {"auto", "gemv", "gemm", "plain", "phases", NULL};
  int path = luaL_checkoption(L, 3, "auto", paths);
  if (x->type != ML_TYPE_F32 || x->ndim != 2 || x->shape[1] != w->K || (x->stride[1] != 1 && w->K > 1))
    return luaL_argerror(L, 2, "expected an f32 (M, K) tensor with contiguous rows");
  int64_t M = x->shape[0], ldx = x->stride[0];
  ml_tensor *y = ml_lua_test_tensor(L, 4);
  if (y) {
    if (y->storage->readonly) ml_lua_check_writable(L, 4);
    if (y->type != ML_TYPE_F32 || y->ndim != 2 || y->shape[0] != M || y->shape[1] != w->N ||
        (y->stride[1] != 1 && w->N > 1))
      return luaL_argerror(L, 4, "expected an f32 (M, N) tensor with contiguous rows");
    lua_pushvalue(L, 4);
  } else {
    y = ml_lua_push_tensor(L);
    int64_t shape[2] = {M, w->N};
    if (ml_tensor_init(y, ML_TYPE_F32, 2, shape) < 0) return ml_lua_error(L);
  }
  if (ml_mm_w_path(w, ml_tensor_data(x), ldx, M, ml_tensor_data(y), y->stride[0], (ml_mm_path)path) < 0)
    return ml_lua_error_at(L, 1);
  return 1;
}


/* Do two prepared weights read the same activation format? Then it is converted once. */
static int same_act(const ml_weight *a, const ml_weight *b) {
  return a->type == b->type && a->K == b->K && (a->packed != NULL) == (b->packed != NULL) && a->k == b->k;
}

/* x:linear_many({ w1, ..., wn } [, { b1, ..., bn } [, { out1, ..., outn }]]) -> y1, ..., yn: x·wiᵀ (+ bi) for up to 8
 * weights (a model's matrices, w:pack()ed weights, or tensors), as x:linear gives each. When
 * every weight is prepared, the activations are converted once per format and all the
 * products run in one thread team (the forward pass's q, k, v or gate, up), which saves
 * a team and a conversion per weight on one-token decodes. outs (a table of contiguous f32
 * tensors {rows of x, N}) are written instead of new tensors and returned: a forward pass
 * that reuses its buffers allocates (and faults in) no memory per call. */
#define ML_LINEAR_MANY 8
static int linear_many(lua_State *L, int has_out);

int ml_lua_linear_many(lua_State *L) {
  ml_lua_check_tensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int has_b = !lua_isnoneornil(L, 3);
  if (has_b) luaL_checktype(L, 3, LUA_TTABLE);
  if (!lua_isnoneornil(L, 4)) { /* outs: written in place of new tensors */
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_settop(L, 4);
    lua_insert(L, 1); /* outs at 1, then x, ws, bs */
    return linear_many(L, 1);
  }
  lua_settop(L, 3);
  lua_pushnil(L);
  lua_insert(L, 1);
  return linear_many(L, 0);
}

/* the body: stack outs|nil, x, ws, bs|nil */
static int linear_many(lua_State *L, int has_out) {
  ml_tensor *x = ml_lua_check_tensor(L, 2);
  int has_b = !lua_isnil(L, 4);
  int n = (int)lua_rawlen(L, 3);
  if (n < 1 || n > ML_LINEAR_MANY)
    return luaL_argerror(L, 2, lua_pushfstring(L, "1 to %d weights expected, got %d", ML_LINEAR_MANY, n));
  if (has_b && (int)lua_rawlen(L, 4) > n) return luaL_argerror(L, 3, "more biases than weights");
  const ml_weight *pw[ML_LINEAR_MANY];
  ml_tensor *wt[ML_LINEAR_MANY], *bt[ML_LINEAR_MANY];
  int prepared = 1;
  for (int i = 0; i < n; i++) { /* weights at 4 .. n+3, biases at n+4 .. 2n+3 */
    lua_rawgeti(L, 3, i + 1);
    pw[i] = ml_lua_test_weight(L, -1);
    wt[i] = NULL;
    if (!pw[i]) {
      wt[i] = ml_lua_test_tensor(L, -1);
      if (!wt[i]) return luaL_argerror(L, 2, lua_pushfstring(L, "item %d is not a tensor or a packed weight", i + 1));
      pw[i] = ml_lua_get_wlink(L, lua_gettop(L), wt[i]);
    } else if (!pw[i]->w.storage)
      return luaL_argerror(L, 2, lua_pushfstring(L, "item %d: weight has been released", i + 1));
    if (!pw[i]) prepared = 0;
  }
  for (int i = 0; i < n; i++) {
    bt[i] = NULL;
    if (has_b) {
      lua_rawgeti(L, 4, i + 1);
      if (!lua_isnil(L, -1)) {
        bt[i] = ml_lua_test_tensor(L, -1);
        if (!bt[i]) return luaL_argerror(L, 3, lua_pushfstring(L, "item %d is not a tensor", i + 1));
      }
    } else
      lua_pushnil(L);
  }
  int64_t M = x->ndim == 2 ? x->shape[0] : 0, K = x->ndim == 2 ? x->shape[1] : 0;
  int fast = prepared && x->type == ML_TYPE_F32 && x->ndim == 2 && (x->stride[1] == 1 || K == 1) && M > 0;
  for (int i = 0; fast && i < n; i++) fast = pw[i]->K == K && !bt[i];

  if (!fast) { /* one x:linear after the other: the same results, the same errors */
    for (int i = 0; i < n; i++) {
      ml_tensor *o = ml_lua_push_tensor(L);
      int rc = pw[i] ? ml_linear_w(o, x, pw[i], bt[i]) : ml_linear(o, x, wt[i], bt[i]);
      if (rc < 0) return ml_lua_error(L); /* as x:linear: input 2 the weights, 3 the biases */
      if (has_out) { /* into the caller's tensor, which takes the place of the result */
        lua_rawgeti(L, 1, i + 1);
        ml_tensor *d = ml_lua_test_tensor(L, -1);
        if (d && d->storage->readonly) return luaL_argerror(L, 4, lua_pushfstring(L, "out %d is a read-only tensor", i + 1));
        if (!d || d->type != ML_TYPE_F32 || d->ndim != o->ndim || !ml_tensor_is_contiguous(d) ||
            memcmp(d->shape, o->shape, sizeof(int64_t) * (size_t)o->ndim) != 0)
          return luaL_argerror(L, 4, lua_pushfstring(L, "out %d must be a contiguous f32 tensor of the result's shape", i + 1));
        if (ml_tensor_copy_into(d, o) < 0) return ml_lua_error(L);
        lua_remove(L, -2);
      }
    }
    return n;
  }
  int buf[ML_LINEAR_MANY];
  size_t off[ML_LINEAR_MANY], total = 0;
  for (int i = 0; i < n; i++) {
    buf[i] = i;
    for (int j = 0; j < i; j++)
      if (same_act(pw[i], pw[j])) {
        buf[i] = buf[j];
        break;
      }
    off[i] = total;
    if (buf[i] == i) total += (ml_mm_w_act_bytes(pw[i], M) + 63) & ~(size_t)63;
  }
  /* the activation scratch: a userdata, so an error cannot leak it; 64-byte aligned */
  uint8_t *scratch = lua_newuserdatauv(L, total + 64, 0);
  uint8_t *act = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  float *y[ML_LINEAR_MANY];
  double bytes = 0, macs = 0;
  for (int i = 0; i < n; i++) {
    if (has_out) { /* the caller's tensor: f32, {M, N}, contiguous */
      lua_rawgeti(L, 1, i + 1);
      ml_tensor *o = ml_lua_test_tensor(L, -1);
      if (o && o->storage->readonly) return luaL_argerror(L, 4, lua_pushfstring(L, "out %d is a read-only tensor", i + 1));
      if (!o || o->type != ML_TYPE_F32 || o->ndim != 2 || o->shape[0] != M || o->shape[1] != pw[i]->N ||
          !ml_tensor_is_contiguous(o))
        return luaL_argerror(L, 4, lua_pushfstring(L, "out %d must be a contiguous f32 tensor {%d, %d}", i + 1, (int)M,
                                                   (int)pw[i]->N));
      y[i] = ml_tensor_data(o);
    } else {
      ml_tensor *o = ml_lua_push_tensor(L);
      int64_t shape[2] = {M, pw[i]->N};
      /* the products write every element (K > 0: a prepared weight holds whole blocks) */
      if ((K > 0 ? ml_tensor_init_uninit(o, ML_TYPE_F32, 2, shape) : ml_tensor_init(o, ML_TYPE_F32, 2, shape)) < 0)
        return ml_lua_error(L);
      y[i] = ml_tensor_data(o);
    }
    bytes += (double)ml_type_nbytes(pw[i]->type, pw[i]->K) * (double)pw[i]->N;
    macs += (double)M * (double)pw[i]->N * (double)K;
  }
  const float *xd = ml_tensor_data(x);
  int64_t ldx = x->stride[0];
  int ok = 1;
#pragma omp parallel num_threads(ml_threads_for_product(bytes, macs)) reduction(&& : ok)
  {
    int ith = ml_thread_id(), nth = ml_thread_count();
    for (int i = 0; i < n; i++)
      if (buf[i] == i) ok = ml_mm_w_quantize(pw[i], xd, ldx, M, act + off[i], ith, nth) == 0 && ok;
#pragma omp barrier
    for (int i = 0; i < n; i++)
      ok = ml_mm_w_compute(pw[i], act + off[buf[i]], M, y[i], pw[i]->N, ith, nth) == 0 && ok;
  }
  if (!ok) return ml_lua_error_at(L, 2);
  return n;
}

static const char *or_default(const char *s, const char *def) { return s ? s : def; }

static void setstr(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* pw:info() -> { dtype, shape, table, packed, packed_bytes, prepare_seconds, dot, gemv, gemm } */
static int w_info(lua_State *L) {
  ml_weight *w = check_weight(L, 1);
  lua_newtable(L);
  setstr(L, "dtype", ml_type_traits_get(w->type)->name);
  lua_createtable(L, 2, 0);
  lua_pushinteger(L, (lua_Integer)w->N);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, (lua_Integer)w->K);
  lua_rawseti(L, -2, 2);
  lua_setfield(L, -2, "shape");
  setstr(L, "table", w->k->name);
  lua_pushboolean(L, w->packed != NULL);
  lua_setfield(L, -2, "packed");
  lua_pushinteger(L, (lua_Integer)w->packed_bytes);
  lua_setfield(L, -2, "packed_bytes");
  lua_pushnumber(L, w->prepare_seconds);
  lua_setfield(L, -2, "prepare_seconds");
  setstr(L, "dot", or_default(w->k->by_dot[w->type], "ref"));
  setstr(L, "gemv", w->k->gemv[w->type] ? or_default(w->k->by_gemv[w->type], "ref") : "none");
  setstr(L, "gemm", w->k->gemm[w->type] ? or_default(w->k->by_gemm[w->type], "ref") : "none");
  return 1;
}

static int w_tostring(lua_State *L) {
  ml_weight *w = luaL_checkudata(L, 1, ML_WEIGHT_MT);
  if (!w->w.storage) lua_pushliteral(L, "[released packed weight]");
  else
    lua_pushfstring(L, "[packed %s weight of shape {%d, %d}, %s]", ml_type_traits_get(w->type)->name, (int)w->N,
                    (int)w->K, w->packed ? w->k->name : "not packed");
  return 1;
}

static int w_gc(lua_State *L) {
  ml_weight_release(luaL_checkudata(L, 1, ML_WEIGHT_MT));
  return 0;
}

static const luaL_Reg methods[] = {{"mm", w_mm}, {"info", w_info}, {"close", w_gc}, {"release", w_gc}, {NULL, NULL}};

void ml_lua_open_weight(lua_State *L) {
  if (luaL_newmetatable(L, ML_WEIGHT_MT)) {
    luaL_newlib(L, methods);
    ml_register_names(L, "");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, w_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
