/* lua_attention.c: tensor.attention(q, k, v, opts), the attention kernel of the forward
 * pass (attention.c) on tensors.
 *
 *   q {heads, n, head_dim}, k and v {kv_heads, n_kv, head_dim} (kv_heads dividing heads:
 *   grouped-query attention), k and v in f32, f16 or q8_0 (other types are converted to f32)
 *   -> {heads, n, head_dim} f32
 *   opts: scale (1/√head_dim), causal (false; query row i sits at position n_kv - n + i),
 *   window (0: none; with causal, row i sees the last `window` positions), softcap (0:
 *   none), mask ({n, n_kv} added to the scores, -inf hides a key), alibi (one slope per
 *   query head, a table or tensor: score -= slope · |position distance|). */
#include <math.h>
#include <string.h>

#include "flash.h"
#include "common.h"
#include "lua_tensor.h"

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

int ml_lua_attention(lua_State *L) {
  ml_tensor *q = ml_lua_check_tensor(L, 1), *k = ml_lua_check_tensor(L, 2), *v = ml_lua_check_tensor(L, 3);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  else {
    lua_settop(L, 3);
    lua_newtable(L);
  }
  lua_settop(L, 4);
  check_shape(L, 1, q, "q");
  check_shape(L, 2, k, "k");
  check_shape(L, 3, v, "v");
  int64_t H = q->shape[0], n = q->shape[1], hd = q->shape[2], Hk = k->shape[0], nkv = k->shape[1];
  if (k->shape[2] != hd || v->shape[2] != hd)
    return luaL_argerror(L, k->shape[2] != hd ? 2 : 3, "head sizes of q, k and v differ");
  if (v->shape[0] != Hk || v->shape[1] != nkv) return luaL_argerror(L, 3, "v must have the shape of k");
  if (Hk == 0 || H % Hk)
    return luaL_argerror(L, 2, lua_pushfstring(L, "%d query heads cannot share %d key/value heads", (int)H, (int)Hk));
  if (k->type != v->type) return luaL_argerror(L, 3, "k and v must have the same type");
  ml_flash_args a;
  memset(&a, 0, sizeof a);
  a.scale = (float)opt_num(L, 4, "scale", 1.0 / sqrt((double)(hd > 0 ? hd : 1)));
  a.softcap = (float)opt_num(L, 4, "softcap", 0);
  double window = opt_num(L, 4, "window", 0);
  if (a.softcap < 0 || window < 0) return luaL_argerror(L, 4, "softcap and window must not be negative");
  a.window = (int64_t)window;
  lua_getfield(L, 4, "causal");
  a.causal = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* the stack from here: 5 mask, 6 alibi, then converted tensors */
  const ml_tensor *mask = opt_tensor(L, 4, "mask");
  if (mask) {
    if (mask->ndim != 2 || mask->shape[0] != n || mask->shape[1] != nkv)
      return luaL_argerror(L, 4, lua_pushfstring(L, "mask must be {%d, %d}", (int)n, (int)nkv));
    mask = f32_contig(L, mask);
    a.mask = ml_tensor_data(mask);
    a.ldmask = nkv;
  }
  lua_getfield(L, 4, "alibi");
  if (!lua_isnil(L, -1)) {
    float *slopes = lua_newuserdatauv(L, sizeof(float) * (size_t)(H > 0 ? H : 1), 0);
    const ml_tensor *st = ml_lua_test_tensor(L, -2);
    int64_t ns = st ? (st->ndim == 1 ? st->shape[0] : -1) : lua_istable(L, -2) ? (int64_t)lua_rawlen(L, -2) : -1;
    if (ns != H) return luaL_argerror(L, 4, lua_pushfstring(L, "alibi must hold one slope per query head (%d)", (int)H));
    for (int64_t h = 0; h < H; h++) {
      if (st) slopes[h] = (float)ml_tensor_get(st, &h);
      else {
        lua_rawgeti(L, -2, (lua_Integer)h + 1);
        if (!lua_isnumber(L, -1)) return luaL_argerror(L, 4, "alibi slopes must be numbers");
        slopes[h] = (float)lua_tonumber(L, -1);
        lua_pop(L, 1);
      }
    }
    a.slopes = slopes;
  }
  const ml_tensor *qc = f32_contig(L, q);
  const ml_tensor *kc, *vc;
  if (k->type == ML_TYPE_F16 || k->type == ML_TYPE_F32 || (k->type == ML_TYPE_Q8_0 && hd % ML_QK == 0)) {
    ml_tensor *t = ml_lua_push_tensor(L);
    if (ml_tensor_contiguous(t, k) < 0) return ml_lua_error(L);
    kc = t;
    t = ml_lua_push_tensor(L);
    if (ml_tensor_contiguous(t, v) < 0) return ml_lua_error(L);
    vc = t;
  } else {
    kc = f32_contig(L, k);
    vc = f32_contig(L, v);
  }
  ml_tensor *out = ml_lua_push_tensor(L);
  int64_t shape[3] = {H, n, hd};
  if (ml_tensor_init(out, ML_TYPE_F32, 3, shape) < 0) return ml_lua_error(L);
  if (n == 0 || hd == 0 || H == 0 || nkv == 0) return 1; /* no keys: zeros */
  ml_flash_seg seg = {0, n, NULL, nkv, 0};
  a.n_head = H;
  a.n_head_kv = Hk;
  a.head_dim = hd;
  a.n_q = n;
  a.q = ml_tensor_data(qc);
  a.ldq = hd;
  a.q_hs = n * hd;
  a.out = ml_tensor_data(out);
  a.ldo = hd;
  a.o_hs = n * hd;
  a.kv_type = kc->type;
  a.k = ml_tensor_data(kc);
  a.v = ml_tensor_data(vc);
  a.row_bytes = ml_type_nbytes(kc->type, hd);
  a.head_bytes = a.row_bytes * (size_t)nkv;
  a.n_seg = 1;
  a.seg = &seg;
  if (ml_flash_run(&a) < 0) return ml_lua_error_at(L, 1);
  return 1;
}
