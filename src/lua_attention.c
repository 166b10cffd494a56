/* lua_attention.c: tensor.attention(q, k, v, opts), the attention kernel of the forward
 * pass (attention.c) on tensors.
 *
 *   q {heads, n, head_dim}, k and v {kv_heads, n_kv, head_dim} (kv_heads dividing heads:
 *   grouped-query attention), k and v in f32, f16 or q8_0 (other types are converted to f32)
 *   -> {heads, n, head_dim} f32
 *   opts: scale (1/√head_dim), causal (false; query row i sits at position n_kv - n + i),
 *   window (0: none; with causal, row i sees the last `window` positions), softcap (0:
 *   none), mask ({n, n_kv} added to the scores, -inf hides a key), alibi (one slope per
 *   query head, a table or tensor: score -= slope · |position distance|).
 *
 *   opts.heads = H: q is {n, H · head_dim} (rows as a product writes them, any row stride),
 *   and so is the result, which saves the transposes around the call.
 *
 *   tensor.attention(q, view [, opts]) (or (q, view, view, opts)): the keys and values a
 *   view of lm.kv_cache holds (kv:view(layer, seq)), read where they are, in the cache's
 *   type, without a copy; n_kv is the view's length. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "flash.h"
#include "common.h"
#include "lua_kvcache.h"
#include "lua_tensor.h"
#include "threads.h"

static const ml_tensor *opt_tensor(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const ml_tensor *x = lua_isnil(L, -1) ? NULL : ml_lua_test_tensor(L, -1);
  if (!lua_isnil(L, -1) && !x && !lua_istable(L, -1))
    luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be a tensor", k));
  return x; /* stays on the stack: the caller keeps it alive */
}

static double opt_num(lua_State *L, int t, const char *k, double def) {
  lua_getfield(L, t, k);
  double v = def;
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be a number", k));
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* An f32 contiguous copy (or view) of x on the stack, owned by a tensor userdata. */
static ml_tensor *f32_contig(lua_State *L, const ml_tensor *x) {
  ml_tensor *t = ml_lua_push_tensor(L);
  if (x->type == ML_TYPE_F32) {
    if (ml_tensor_contiguous(t, x) < 0) ml_lua_error(L);
  } else if (ml_tensor_to(t, x, ML_TYPE_F32) < 0)
    ml_lua_error(L);
  return t;
}

static void check_shape(lua_State *L, int arg, const ml_tensor *t, const char *what) {
  if (t->ndim != 3)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must have 3 dimensions {heads, tokens, head_dim}, got %d", what,
                                          t->ndim));
}

/* The keys and values: a kv_view at 2 (v at 3 the same view or left out), or tensors k and
 * v at 2 and 3 (contiguous copies pushed when needed). Leaves the options table at 4. */
static void kv_source(lua_State *L, int64_t hd, ml_flash_args *a, ml_flash_seg *seg) {
  ml_lua_kvref r;
  if (ml_lua_kvview(L, 2, &r)) {
    if (lua_istable(L, 3)) { /* (q, view, opts) */
      lua_settop(L, 3);
      lua_pushvalue(L, 2);
      lua_insert(L, 3);
    }
    else if (!lua_isnoneornil(L, 3) && !lua_rawequal(L, 2, 3))
      luaL_argerror(L, 3, "with a kv_view as k, v must be the same view (or left out)");
    lua_settop(L, 4);
    if (r.head_dim != hd)
      luaL_argerror(L, 2, lua_pushfstring(L, "head sizes of q (%d) and the kv_view (%d) differ", (int)hd, (int)r.head_dim));
    a->n_head_kv = r.kv_heads;
    a->kv_type = r.type;
    a->k = r.k;
    a->v = r.v;
    a->row_bytes = r.row_bytes;
    a->head_bytes = ml_type_nbytes(r.type, hd);
    *seg = (ml_flash_seg){0, 0, r.cells, r.n, 0};
    return;
  }
  const ml_tensor *k = ml_lua_check_tensor(L, 2), *v = ml_lua_check_tensor(L, 3);
  lua_settop(L, 4);
  check_shape(L, 2, k, "k");
  check_shape(L, 3, v, "v");
  int64_t Hk = k->shape[0], nkv = k->shape[1];
  if (k->shape[2] != hd || v->shape[2] != hd) luaL_argerror(L, k->shape[2] != hd ? 2 : 3, "head sizes of q, k and v differ");
  if (v->shape[0] != Hk || v->shape[1] != nkv) luaL_argerror(L, 3, "v must have the shape of k");
  if (k->type != v->type) luaL_argerror(L, 3, "k and v must have the same type");
  /* the converted copies go to 5 and 6, after the options */
  lua_pushnil(L);
  lua_pushnil(L);
  const ml_tensor *kc, *vc;
  if (k->type == ML_TYPE_F16 || k->type == ML_TYPE_F32 || (k->type == ML_TYPE_Q8_0 && hd % ML_QK == 0)) {
    ml_tensor *t = ml_lua_push_tensor(L);
    if (ml_tensor_contiguous(t, k) < 0) ml_lua_error(L);
    lua_replace(L, 5);
    kc = t;
    t = ml_lua_push_tensor(L);
    if (ml_tensor_contiguous(t, v) < 0) ml_lua_error(L);
    lua_replace(L, 6);
    vc = t;
  } else {
    kc = f32_contig(L, k);
    lua_replace(L, 5);
    vc = f32_contig(L, v);
    lua_replace(L, 6);
  }
  a->n_head_kv = Hk;
  a->kv_type = kc->type;
  a->k = ml_tensor_data(kc);
  a->v = ml_tensor_data(vc);
  a->row_bytes = ml_type_nbytes(kc->type, hd);
  a->head_bytes = a->row_bytes * (size_t)nkv;
  *seg = (ml_flash_seg){0, 0, NULL, nkv, 0};
}

/* Scratch kept in the registry of this Lua state under key and grown when a call needs
 * more: a new userdata per call would hand the collector ~100 KB per layer and token. Left
 * on the stack (the caller's result is pushed before it, and taken back above it). */
void *ml_lua_scratch(lua_State *L, const void *key, size_t bytes) {
  lua_pushlightuserdata(L, (void *)key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_type(L, -1) == LUA_TUSERDATA && lua_rawlen(L, -1) >= bytes) return lua_touserdata(L, -1);
  lua_pop(L, 1);
  void *w = lua_newuserdatauv(L, bytes, 0);
  lua_pushlightuserdata(L, (void *)key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return w;
}

void ml_lua_attention_opts(lua_State *L, int opt, int64_t H, int64_t n, int64_t nkv, ml_flash_args *a) {
  int64_t hd = a->head_dim > 0 ? a->head_dim : 1;
  a->scale = (float)opt_num(L, opt, "scale", 1.0 / sqrt((double)hd));
  a->softcap = (float)opt_num(L, opt, "softcap", 0);
  double window = opt_num(L, opt, "window", 0);
  if (a->softcap < 0 || window < 0) luaL_argerror(L, opt, "softcap and window must not be negative");
  a->window = (int64_t)window;
  lua_getfield(L, opt, "causal");
  a->causal = lua_toboolean(L, -1);
  lua_pop(L, 1);
  const ml_tensor *mask = opt_tensor(L, opt, "mask"); /* stays on the stack */
  if (mask) {
    if (mask->ndim != 2 || mask->shape[0] != n || mask->shape[1] != nkv)
      luaL_argerror(L, opt, lua_pushfstring(L, "mask must be {%d, %d}", (int)n, (int)nkv));
    mask = f32_contig(L, mask);
    a->mask = ml_tensor_data(mask);
    a->ldmask = nkv;
  }
  lua_getfield(L, opt, "alibi");
  if (!lua_isnil(L, -1)) {
    float *slopes = lua_newuserdatauv(L, sizeof(float) * (size_t)(H > 0 ? H : 1), 0);
    const ml_tensor *st = ml_lua_test_tensor(L, -2);
    int64_t ns = st ? (st->ndim == 1 ? st->shape[0] : -1) : lua_istable(L, -2) ? (int64_t)lua_rawlen(L, -2) : -1;
    if (ns != H) luaL_argerror(L, opt, lua_pushfstring(L, "alibi must hold one slope per query head (%d)", (int)H));
    for (int64_t h = 0; h < H; h++) {
      if (st) slopes[h] = (float)ml_tensor_get(st, &h);
      else {
        lua_rawgeti(L, -2, (lua_Integer)h + 1);
        if (!lua_isnumber(L, -1)) luaL_argerror(L, opt, "alibi slopes must be numbers");
        slopes[h] = (float)lua_tonumber(L, -1);
        lua_pop(L, 1);
      }
    }
    a->slopes = slopes;
  }
}

void ml_lua_attention_run(lua_State *L, const ml_flash_args *a) {
  static const char key = 0;
  /* a team only for work worth it: a decode step of a small model is a few thousand
   * multiply-adds, which one thread does faster than two meet at the kernel's barriers */
  int64_t nkv = 0;
  for (int i = 0; i < a->n_seg; i++) nkv = ML_MAX(nkv, a->seg[i].n_kv);
  double macs = 2.0 * (double)a->n_head * (double)a->n_q * (double)nkv * (double)a->head_dim;
  int nth = ml_threads_for(ML_WORK_MACS, macs);
  void *work = ml_lua_scratch(L, &key, ml_flash_work_bytes(a, nth) + 64);
  work = (void *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
  if (nth == 1) ml_flash(a, work); /* outside any region, as flash.h allows: no team to start */
  else {
#pragma omp parallel num_threads(nth)
    ml_flash(a, work);
  }
  lua_pop(L, 1);
}

int ml_lua_attention(lua_State *L) {
  ml_tensor *q = ml_lua_check_tensor(L, 1);
  /* rows: q {n, heads · head_dim} as a product wrote it (opts.heads), and the result too */
  int oi = lua_istable(L, 3) ? 3 : 4;
  double heads = lua_istable(L, oi) ? opt_num(L, oi, "heads", 0) : 0;
  int rows = heads != 0;
  int64_t H, n, hd;
  if (rows) {
    if (heads < 1 || heads != floor(heads)) return luaL_argerror(L, oi, "heads must be a whole number >= 1");
    H = (int64_t)heads;
    if (q->ndim != 2 || q->shape[1] % H || q->type != ML_TYPE_F32 || (q->stride[1] != 1 && q->shape[1] > 1))
      return luaL_argerror(L, 1, lua_pushfstring(L, "with heads = %d, q must be f32 rows {n, %d · head_dim}", (int)H,
                                                 (int)H));
    n = q->shape[0];
    hd = q->shape[1] / H;
  } else {
    check_shape(L, 1, q, "q");
    H = q->shape[0], n = q->shape[1], hd = q->shape[2];
  }
  ml_flash_args a;
  memset(&a, 0, sizeof a);
  ml_flash_seg seg;
  kv_source(L, hd, &a, &seg); /* stack: q k v opts [kc vc] */
  if (lua_isnil(L, 4)) {
    lua_newtable(L);
    lua_replace(L, 4);
  } else
    luaL_checktype(L, 4, LUA_TTABLE);
  int64_t Hk = a.n_head_kv, nkv = seg.n_kv;
  if (Hk == 0 || H % Hk)
    return luaL_argerror(L, 2, lua_pushfstring(L, "%d query heads cannot share %d key/value heads", (int)H, (int)Hk));
  a.head_dim = hd;
  ml_lua_attention_opts(L, 4, H, n, nkv, &a);
  const ml_tensor *qc = rows ? q : f32_contig(L, q);
  ml_tensor *out = ml_lua_push_tensor(L);
  int64_t shape[3] = {H, n, hd}, rshape[2] = {n, H * hd};
  /* the kernel writes every row of every head (a row that sees no key: zeros) */
  if ((rows ? ml_tensor_init_uninit(out, ML_TYPE_F32, 2, rshape) : ml_tensor_init_uninit(out, ML_TYPE_F32, 3, shape)) < 0)
    return ml_lua_error(L);
  if (n == 0 || hd == 0 || H == 0 || nkv == 0) { /* no keys: zeros */
    memset(ml_tensor_data(out), 0, ml_tensor_nbytes(out));
    return 1;
  }
  seg.n = n;
  a.n_head = H;
  a.n_q = n;
  a.q = ml_tensor_data(qc);
  a.out = ml_tensor_data(out);
  if (rows) { /* heads side by side in a row */
    a.ldq = qc->stride[0];
    a.q_hs = hd;
    a.ldo = H * hd;
    a.o_hs = hd;
  } else {
    a.ldq = hd;
    a.q_hs = n * hd;
    a.ldo = hd;
    a.o_hs = n * hd;
  }
  a.n_seg = 1;
  a.seg = &seg;
  if (ml_flash_check(&a) < 0) return ml_lua_error_at(L, 1);
  ml_lua_attention_run(L, &a);
  return 1;
}
