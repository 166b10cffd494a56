/* lua_tensor_ext.c: the torch7 essentials (ops_ext.h) and the position schemes (rope.h) as
 * tensor methods and functions. Same rules as lua_tensor.c: results are pushed empty
 * first and filled by the core, so an error never leaks; indices are 1-based here. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "forward.h"
#include "kernels/dispatch.h"
#include "threads.h"
#include "lua_tensor.h"
#include "lua_weight.h"
#include "ops.h"
#include "ops_ext.h"
#include "rope.h"

#define CHECK(L, call) \
  do { \
    if ((call) < 0) return ml_lua_error(L); \
  } while (0)
#define CHECK_AT(L, call, arg) \
  do { \
    if ((call) < 0) return ml_lua_error_at(L, (arg)); \
  } while (0)

/* The operand at i: a tensor, a nested table or a number (a 0-d tensor, pushed). */
static ml_tensor *operand(lua_State *L, int i) {
  if (lua_type(L, i) == LUA_TNUMBER) {
    double v = lua_tonumber(L, i);
    ml_tensor *t = ml_lua_push_tensor(L);
    if (ml_tensor_init(t, ML_TYPE_F32, 0, NULL) < 0) ml_lua_error(L);
    ml_tensor_fill(t, v);
    lua_replace(L, i);
    return ml_lua_test_tensor(L, i);
  }
  if (!lua_istable(L, i) && !ml_lua_test_tensor(L, i))
    luaL_argerror(L, i, lua_pushfstring(L, "tensor, table or number expected, got %s", luaL_typename(L, i)));
  return ml_lua_to_tensor(L, i);
}

static void no_more(lua_State *L, int last, const char *what) {
  if (lua_gettop(L) > last) luaL_argerror(L, last + 1, lua_pushfstring(L, "unexpected argument (%s)", what));
}

/* ---- comparisons ---- */

static int compare(lua_State *L, ml_cmpop op) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  no_more(L, 2, "one operand");
  ml_tensor *b = operand(L, 2);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_compare(o, a, b, op));
  return 1;
}

static int m_eq(lua_State *L) { return compare(L, ML_CMP_EQ); }
static int m_ne(lua_State *L) { return compare(L, ML_CMP_NE); }
static int m_lt(lua_State *L) { return compare(L, ML_CMP_LT); }
static int m_le(lua_State *L) { return compare(L, ML_CMP_LE); }
static int m_gt(lua_State *L) { return compare(L, ML_CMP_GT); }
static int m_ge(lua_State *L) { return compare(L, ML_CMP_GE); }

/* equal(a, b) -> same shape and elements; also a == b (Lua's __eq must return a boolean) */
static int t_equal(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1), *b = ml_lua_check_tensor(L, 2);
  int eq;
  CHECK(L, ml_equal(a, b, &eq));
  lua_pushboolean(L, eq);
  return 1;
}

/* __eq: tensors compare by value (equal); a released tensor equals only itself */
static int mm_eq(lua_State *L) {
  ml_tensor *a = ml_lua_test_tensor(L, 1), *b = ml_lua_test_tensor(L, 2);
  int eq = 0;
  if (a && b) CHECK(L, ml_equal(a, b, &eq));
  lua_pushboolean(L, eq);
  return 1;
}

/* where(cond, a, b): a and b tensors, tables or numbers */
static int t_where(lua_State *L) {
  lua_settop(L, 3);
  ml_tensor *c = operand(L, 1), *a = operand(L, 2), *b = operand(L, 3);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_where(o, c, a, b));
  return 1;
}

/* ---- masked_fill, clamp: a copy in f32 then the in-place form ---- */

static ml_tensor *f32_copy(lua_State *L, const ml_tensor *a) {
  ml_tensor *o = ml_lua_push_tensor(L);
  if (ml_tensor_to(o, a, ML_TYPE_F32) < 0) ml_lua_error(L);
  return o;
}

static int masked_fill(lua_State *L, int inplace) {
  ml_tensor *a = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  ml_tensor *mask = operand(L, 2);
  double v = luaL_checknumber(L, 3);
  no_more(L, 3, "mask and value");
  if (inplace) {
    CHECK(L, ml_masked_fill_(a, mask, v));
    lua_settop(L, 1);
    return 1;
  }
  ml_tensor *o = f32_copy(L, a);
  CHECK(L, ml_masked_fill_(o, mask, v));
  return 1;
}

static int m_masked_fill(lua_State *L) { return masked_fill(L, 0); }
static int m_masked_fill_(lua_State *L) { return masked_fill(L, 1); }

static int clamp(lua_State *L, int inplace) {
  ml_tensor *a = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  no_more(L, 3, "min and max");
  double lo = lua_isnoneornil(L, 2) ? NAN : luaL_checknumber(L, 2);
  double hi = lua_isnoneornil(L, 3) ? NAN : luaL_checknumber(L, 3);
  if (lo != lo && hi != hi) return luaL_argerror(L, 2, "min or max expected (nil leaves that side open)");
  if (lo == lo && hi == hi && lo > hi) return luaL_argerror(L, 3, "max is below min");
  if (inplace) {
    CHECK(L, ml_clamp_(a, lo, hi));
    lua_settop(L, 1);
    return 1;
  }
  ml_tensor *o = f32_copy(L, a);
  CHECK(L, ml_clamp_(o, lo, hi));
  return 1;
}

static int m_clamp(lua_State *L) { return clamp(L, 0); }
static int m_clamp_(lua_State *L) { return clamp(L, 1); }

/* ---- sort, cumulative ---- */

/* sort([dim = -1] [, descending = false]) -> values, indices (1-based) */
static int m_sort(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  if (a->ndim == 0) return luaL_argerror(L, 1, "sort needs at least one dimension");
  no_more(L, 3, "dim and descending");
  int dim = ml_lua_check_dim(L, 2, a->ndim, -1, 0);
  if (!lua_isnoneornil(L, 3) && !lua_isboolean(L, 3)) return luaL_argerror(L, 3, "descending must be a boolean");
  int desc = lua_toboolean(L, 3);
  ml_tensor *v = ml_lua_push_tensor(L), *ix = ml_lua_push_tensor(L);
  CHECK(L, ml_sort(v, ix, a, dim, desc, 1));
  return 2;
}

/* cumsum(dim) / cumprod(dim): dim may be left out for a vector */
static int cumulative(lua_State *L, int product) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  no_more(L, 2, "dim");
  if (a->ndim == 0) return luaL_argerror(L, 1, "needs at least one dimension");
  if (a->ndim > 1 && lua_isnoneornil(L, 2)) return luaL_argerror(L, 2, "dimension expected for a tensor of more than one dimension");
  int dim = ml_lua_check_dim(L, 2, a->ndim, 1, 0);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_cumulative(o, a, dim, product));
  return 1;
}

static int m_cumsum(lua_State *L) { return cumulative(L, 0); }
static int m_cumprod(lua_State *L) { return cumulative(L, 1); }

/* ---- gather, scatter ---- */

static int m_gather(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  no_more(L, 3, "dim and index");
  if (a->ndim == 0) return luaL_argerror(L, 1, "gather needs at least one dimension");
  int dim = ml_lua_check_dim(L, 2, a->ndim, 1, 0);
  ml_tensor *ix = ml_lua_to_tensor(L, 3);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_gather(o, a, dim, ix, 1));
  return 1;
}

/* scatter[_](dim, index, src | value), scatter_add[_](dim, index, src) */
static int scatter(lua_State *L, int inplace, int add) {
  ml_tensor *a = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  no_more(L, 4, "dim, index and source");
  if (a->ndim == 0) return luaL_argerror(L, 1, "scatter needs at least one dimension");
  int dim = ml_lua_check_dim(L, 2, a->ndim, 1, 0);
  ml_tensor *ix = ml_lua_to_tensor(L, 3);
  ml_tensor *src = NULL;
  double v = 0;
  if (lua_type(L, 4) == LUA_TNUMBER && !add) v = lua_tonumber(L, 4);
  else src = ml_lua_to_tensor(L, 4);
  ml_tensor *target = a;
  if (!inplace) target = f32_copy(L, a);
  CHECK(L, ml_scatter_(target, dim, ix, src, v, 1, add));
  if (inplace) lua_settop(L, 1);
  return 1;
}

static int m_scatter(lua_State *L) { return scatter(L, 0, 0); }
static int m_scatter_(lua_State *L) { return scatter(L, 1, 0); }
static int m_scatter_add(lua_State *L) { return scatter(L, 0, 1); }
static int m_scatter_add_(lua_State *L) { return scatter(L, 1, 1); }

/* ---- moments, norms, dot ---- */

/* A number for the whole tensor, or a tensor along dim. */
static int push_stat(lua_State *L, ml_tensor *o, int whole) {
  if (whole) {
    double v = ml_tensor_get(o, NULL);
    lua_pop(L, 1);
    lua_pushnumber(L, v);
  }
  return 1;
}

/* var([dim] [, keepdim] [, unbiased = true]) / std(...) */
static int moments(lua_State *L, int root) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  no_more(L, 4, "dim, keepdim and unbiased");
  int whole = lua_isnoneornil(L, 2);
  int dim = whole ? -1 : ml_lua_check_dim(L, 2, a->ndim, 1, 0);
  int keep = lua_toboolean(L, 3), unbiased = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_var(o, a, dim, keep, unbiased, root));
  return push_stat(L, o, whole);
}

static int m_var(lua_State *L) { return moments(L, 0); }
static int m_std(lua_State *L) { return moments(L, 1); }

/* norm([p = 2] [, dim] [, keepdim]); p = math.huge: max |x| */
static int m_norm(lua_State *L) {
  ml_tensor *a = ml_lua_check_tensor(L, 1);
  no_more(L, 4, "p, dim and keepdim");
  double p = luaL_optnumber(L, 2, 2);
  int whole = lua_isnoneornil(L, 3);
  int dim = whole ? -1 : ml_lua_check_dim(L, 3, a->ndim, 1, 0), keep = lua_toboolean(L, 4);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_norm(o, a, p, dim, keep));
  return push_stat(L, o, whole);
}

static int m_dot(lua_State *L) {
  no_more(L, 2, "one operand");
  ml_tensor *a = ml_lua_to_tensor(L, 1), *b = ml_lua_to_tensor(L, 2);
  double d;
  CHECK(L, ml_dot(a, b, &d));
  lua_pushnumber(L, d);
  return 1;
}

/* mm(a, b): matrices only; bmm(a, b): batches of matrices of the same count */
static int products(lua_State *L, int batched) {
  no_more(L, 2, "one operand");
  ml_tensor *a = ml_lua_to_tensor(L, 1), *b = ml_lua_to_tensor(L, 2);
  int want = batched ? 3 : 2;
  for (int i = 0; i < 2; i++) {
    const ml_tensor *t = i ? b : a;
    if (t->ndim != want)
      return luaL_argerror(L, i + 1, lua_pushfstring(L, "%s needs %s, got %d dimensions", batched ? "bmm" : "mm",
                                                     batched ? "3-d tensors (batch, n, m)" : "matrices", t->ndim));
  }
  if (batched && a->shape[0] != b->shape[0])
    return luaL_argerror(L, 2, lua_pushfstring(L, "batch sizes %d and %d differ", (int)a->shape[0], (int)b->shape[0]));
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_matmul(o, a, b));
  return 1;
}

static int m_mm(lua_State *L) { return products(L, 0); }
static int m_bmm(lua_State *L) { return products(L, 1); }

/* ---- conv1d ---- */

static int64_t opt_int(lua_State *L, int t, const char *k, int64_t def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  int64_t v = def;
  if (!lua_isnil(L, -1)) {
    int isnum;
    lua_Integer n = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be an integer", k));
    v = n;
  }
  lua_pop(L, 1);
  return v;
}

/* conv1d(x, w [, b] [, { stride = 1, padding = 0, dilation = 1, groups = 1 }]) */
static int m_conv1d(lua_State *L) {
  ml_tensor *x = ml_lua_to_tensor(L, 1), *w = ml_lua_to_tensor(L, 2), *b = NULL;
  int opt = 3;
  if (!lua_isnoneornil(L, 3) && !(lua_istable(L, 3) && !ml_lua_test_tensor(L, 3) && lua_rawlen(L, 3) == 0)) {
    b = ml_lua_to_tensor(L, 3);
    opt = 4;
  } else if (lua_isnil(L, 3) && lua_gettop(L) >= 4) {
    opt = 4;
  }
  no_more(L, opt, "weight, bias and options");
  if (!lua_isnoneornil(L, opt) && !lua_istable(L, opt)) return luaL_argerror(L, opt, "options table expected");
  static const char *const names[] = {"stride", "padding", "dilation", "groups", NULL};
  ml_lua_known_options(L, opt, opt, names);
  int64_t stride = opt_int(L, opt, "stride", 1), padding = opt_int(L, opt, "padding", 0),
          dilation = opt_int(L, opt, "dilation", 1), groups = opt_int(L, opt, "groups", 1);
  ml_tensor *o = ml_lua_push_tensor(L);
  if (ml_conv1d(o, x, w, b, stride, padding, dilation, groups) < 0) {
    int in = ml_errinput();
    return ml_lua_error_at(L, in <= 3 ? in : opt); /* the options are one argument */
  }
  return 1;
}

/* ---- constructors and random draws ---- */

static int t_eye(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), m = luaL_optinteger(L, 2, n);
  no_more(L, 2, "n and m");
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_eye(o, n, m));
  return 1;
}

static int t_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  no_more(L, 3, "start, stop and count");
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_linspace(o, a, b, n));
  return 1;
}

/* randint(lo, hi, shape [, { seed = }]): integers in [lo, hi], both included (as
 * math.random and torch7's random), i32 */
static int t_randint(lua_State *L) {
  lua_Integer lo = luaL_checkinteger(L, 1), hi = luaL_checkinteger(L, 2);
  int ndim;
  int64_t shape[ML_MAX_DIMS];
  if (!lua_istable(L, 3) && lua_type(L, 3) != LUA_TNUMBER) return luaL_argerror(L, 3, "shape expected");
  int next = ml_lua_read_shape(L, 3, &ndim, shape);
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) return luaL_argerror(L, 3, "negative dimension");
  no_more(L, next, "options");
  if (!lua_isnoneornil(L, next) && !lua_istable(L, next)) return luaL_argerror(L, next, "options table expected");
  static const char *const names[] = {"seed", NULL};
  ml_lua_known_options(L, next, next, names);
  ml_rng local, *r = ml_lua_rng(L, next, &local);
  ml_tensor *o = ml_lua_push_tensor(L);
  if (ml_randint(o, ndim, shape, lo, hi, r) < 0) return ml_lua_error_at(L, ml_errinput() == 1 ? 3 : 1);
  return 1;
}

/* multinomial(probs, n [, { replacement = false, seed = }]) -> 1-based positions, i32 */
static int m_multinomial(lua_State *L) {
  ml_tensor *p = ml_lua_to_tensor(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  no_more(L, 3, "count and options");
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) return luaL_argerror(L, 3, "options table expected");
  static const char *const names[] = {"replacement", "seed", NULL};
  ml_lua_known_options(L, 3, 3, names);
  int repl = 0;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "replacement");
    repl = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  ml_rng local, *r = ml_lua_rng(L, 3, &local);
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_multinomial(o, p, n, repl, r, 1));
  return 1;
}

/* ---- RoPE and ALiBi ---- */

/* The positions at i for n tokens: a number (the first token's, the others follow), or a
 * table / tensor of n positions. In a userdata on the stack. */
static int64_t *read_positions(lua_State *L, int i, int64_t n, int64_t *n_pos) {
  int64_t *pos;
  if (lua_type(L, i) == LUA_TNUMBER) {
    lua_Integer p0 = luaL_checkinteger(L, i);
    pos = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(n ? n : 1), 0);
    for (int64_t t = 0; t < n; t++) pos[t] = p0 + t;
    *n_pos = n;
    return pos;
  }
  ml_tensor *t = ml_lua_test_tensor(L, i);
  if (!t && !lua_istable(L, i))
    luaL_argerror(L, i, lua_pushfstring(L, "position (integer) or positions (table or tensor) expected, got %s",
                                        luaL_typename(L, i)));
  *n_pos = t ? ml_tensor_numel(t) : (int64_t)lua_rawlen(L, i);
  pos = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(*n_pos ? *n_pos : 1), 0);
  for (int64_t k = 0; k < *n_pos; k++) {
    double d;
    if (t) d = ml_tensor_get_flat(t, k);
    else {
      lua_rawgeti(L, i, (lua_Integer)k + 1);
      d = lua_tonumber(L, -1);
      if (lua_type(L, -1) != LUA_TNUMBER) d = NAN;
      lua_pop(L, 1);
    }
    if (d != floor(d)) luaL_argerror(L, i, lua_pushfstring(L, "position %d is not an integer", (int)k + 1));
    pos[k] = (int64_t)d;
  }
  return pos;
}

static double opt_num(lua_State *L, int t, const char *k, double def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  double v = def;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be a number", k));
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* n_rot/2 floats from the tensor or table at i (a userdata-owned copy on the stack) */
static const float *read_floats(lua_State *L, int i, int64_t n, int opt, const char *what) {
  ml_tensor *t = ml_lua_test_tensor(L, i);
  int64_t have = t ? ml_tensor_numel(t) : lua_istable(L, i) ? (int64_t)lua_rawlen(L, i) : -1;
  if (have != n) luaL_argerror(L, opt, lua_pushfstring(L, "%s must hold %d numbers, got %d", what, (int)n, (int)have));
  /* a contiguous f32 tensor (rope_freqs' result) is read in place: it stays on the stack */
  if (t && t->type == ML_TYPE_F32 && ml_tensor_is_contiguous(t)) return ml_tensor_data(t);
  float *f = lua_newuserdatauv(L, sizeof(float) * (size_t)(n ? n : 1), 0);
  for (int64_t k = 0; k < n; k++) {
    if (t) f[k] = (float)ml_tensor_get_flat(t, k);
    else {
      lua_rawgeti(L, i, (lua_Integer)k + 1);
      if (lua_type(L, -1) != LUA_TNUMBER) luaL_argerror(L, opt, lua_pushfstring(L, "%s must hold numbers", what));
      f[k] = (float)lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
  }
  return f;
}

void ml_lua_rope_options(lua_State *L, int opt, int arg, int64_t hd, ml_lua_rope *ro) {
  static const char *const names[] = {"mode", "base", "dims", "scaling", "freqs", NULL};
  if (!lua_isnoneornil(L, opt) && !lua_istable(L, opt)) luaL_argerror(L, arg, "options table expected");
  ml_lua_known_options(L, opt, arg, names);
  ro->neox = 0;
  if (lua_istable(L, opt)) {
    lua_getfield(L, opt, "mode");
    const char *mode = lua_tostring(L, -1);
    if (mode && strcmp(mode, "neox") == 0) ro->neox = 1;
    else if (mode && strcmp(mode, "normal") != 0)
      luaL_argerror(L, arg, lua_pushfstring(L, "mode must be \"normal\" or \"neox\", got \"%s\"", mode));
    else if (!mode && !lua_isnil(L, -1)) luaL_argerror(L, arg, "mode must be \"normal\" or \"neox\"");
    lua_pop(L, 1);
  }
  ro->n_rot = opt_int(L, opt, "dims", hd);
  if (ro->n_rot < 0 || ro->n_rot % 2 || ro->n_rot > hd)
    luaL_argerror(L, arg, lua_pushfstring(L, "dims = %d: an even count up to the head size (%d)", (int)ro->n_rot, (int)hd));
  double base = opt_num(L, opt, "base", 10000);
  if (!(base > 0)) luaL_argerror(L, arg, "base must be positive");
  int64_t half = ro->n_rot / 2;
  ro->mscale = 1;
  double scale = 1;
  const float *factors = NULL;
  int have_scaling = 0;
  if (lua_istable(L, opt)) {
    lua_getfield(L, opt, "scaling");
    int s = lua_gettop(L);
    have_scaling = !lua_isnil(L, s);
    if (have_scaling) {
      if (!lua_istable(L, s)) luaL_argerror(L, arg, "scaling must be a table");
      static const char *const snames[] = {"type", "factor", "factors", "attn_factor", "low_freq_factor",
                                           "high_freq_factor", "original_context_length", NULL};
      lua_pushnil(L);
      while (lua_next(L, s)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
          for (const char *const *n = snames; *n && !ok; n++) ok = strcmp(lua_tostring(L, -1), *n) == 0;
        if (!ok)
          luaL_argerror(L, arg, lua_pushfstring(L, "unknown scaling option '%s'",
                                                lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1)));
      }
      lua_getfield(L, s, "type");
      const char *type = lua_tostring(L, -1);
      if (!type) type = "linear";
      int llama3 = strcmp(type, "llama3") == 0;
      if (!llama3 && strcmp(type, "linear") != 0)
        luaL_argerror(L, arg, lua_pushfstring(L, "scaling type \"%s\" is not supported (linear and llama3 are)", type));
      lua_pop(L, 1);
      double factor = opt_num(L, s, "factor", 1);
      if (!(factor > 0)) luaL_argerror(L, arg, "scaling factor must be positive");
      ro->mscale = (float)opt_num(L, s, "attn_factor", 1);
      lua_getfield(L, s, "factors");
      if (!lua_isnil(L, -1)) {
        if (llama3) luaL_argerror(L, arg, "llama3 scaling computes its factors: give factors or type llama3, not both");
        factors = read_floats(L, lua_gettop(L), half, arg, "scaling.factors");
      }
      if (llama3) {
        double lo = opt_num(L, s, "low_freq_factor", 1), hi = opt_num(L, s, "high_freq_factor", 4),
               orig = opt_num(L, s, "original_context_length", 8192);
        if (!(hi > lo) || !(orig > 0)) luaL_argerror(L, arg, "llama3 scaling needs high_freq_factor > low_freq_factor and a positive original_context_length");
        float *f = lua_newuserdatauv(L, sizeof(float) * (size_t)(half ? half : 1), 0);
        ml_rope_llama3_factors(f, ro->n_rot, base, factor, lo, hi, orig);
        factors = f;
      } else {
        scale = 1.0 / factor;
      }
    }
    lua_getfield(L, opt, "freqs");
    if (!lua_isnil(L, -1)) {
      if (have_scaling || opt_num(L, opt, "base", -1) != -1)
        luaL_argerror(L, arg, "freqs already holds base and scaling: give one or the other");
      ro->inv_freq = read_floats(L, lua_gettop(L), half, arg, "freqs");
      return;
    }
  }
  float *f = lua_newuserdatauv(L, sizeof(float) * (size_t)(half ? half : 1), 0);
  ml_rope_freqs(f, ro->n_rot, base, scale, factors);
  ro->inv_freq = f;
}

/* x:rope(pos [, opts]) / x:rope_(pos [, opts]): x (..., n, head_dim); pos the position of
 * the first token (0-based, the others follow) or one position per token */
static int rope(lua_State *L, int inplace) {
  ml_tensor *x = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  no_more(L, 3, "positions and options");
  lua_settop(L, 3);
  if (x->ndim == 0) return luaL_argerror(L, 1, "rope needs a tensor (..., tokens, head_dim)");
  int64_t hd = x->shape[x->ndim - 1], n = x->ndim >= 2 ? x->shape[x->ndim - 2] : 1, n_pos;
  const int64_t *pos = read_positions(L, 2, n, &n_pos);
  ml_lua_rope ro;
  ml_lua_rope_options(L, 3, 3, hd, &ro);
  ml_tensor *t = x;
  if (!inplace) t = f32_copy(L, x);
  CHECK(L, ml_rope_tensor(t, pos, n_pos, ro.inv_freq, ro.n_rot, ro.neox, ro.mscale));
  if (inplace) lua_settop(L, 1);
  return 1;
}

static int m_rope(lua_State *L) { return rope(L, 0); }
static int m_rope_(lua_State *L) { return rope(L, 1); }

/* rope_freqs{ dims, base, scaling } -> the inverse frequencies (dims/2), for opts.freqs */
static int t_rope_freqs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  no_more(L, 1, "options");
  lua_getfield(L, 1, "dims");
  if (lua_isnil(L, -1)) return luaL_argerror(L, 1, "dims (the rotated size of a head) expected");
  lua_Integer dims = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "mode"); /* the mode belongs to the rotation, not the frequencies */
  if (!lua_isnil(L, -1)) return luaL_argerror(L, 1, "mode is an option of rope, not of rope_freqs");
  lua_pop(L, 1);
  ml_lua_rope ro;
  ml_lua_rope_options(L, 1, 1, dims, &ro);
  int64_t half = ro.n_rot / 2;
  ml_tensor *o = ml_lua_push_tensor(L);
  CHECK(L, ml_tensor_init(o, ML_TYPE_F32, 1, &half));
  memcpy(ml_tensor_data(o), ro.inv_freq, sizeof(float) * (size_t)half);
  return 1;
}

/* alibi_slopes(n_head, max_bias) -> {n_head} */
static int t_alibi_slopes(lua_State *L) {
  lua_Integer h = luaL_checkinteger(L, 1);
  double mb = luaL_checknumber(L, 2);
  no_more(L, 2, "heads and max_bias");
  if (h < 1) return luaL_argerror(L, 1, "at least one head");
  if (!(mb > 0)) return luaL_argerror(L, 2, "max_bias must be positive");
  ml_tensor *o = ml_lua_push_tensor(L);
  int64_t n = h;
  CHECK(L, ml_tensor_init(o, ML_TYPE_F32, 1, &n));
  ml_alibi_slopes(ml_tensor_data(o), h, mb);
  return 1;
}

/* alibi(slopes, n_q, n_kv) -> {heads, n_q, n_kv}: the bias ALiBi adds to the scores */
static int t_alibi(lua_State *L) {
  ml_tensor *s = ml_lua_to_tensor(L, 1);
  lua_Integer nq = luaL_checkinteger(L, 2), nkv = luaL_checkinteger(L, 3);
  no_more(L, 3, "slopes, query rows and keys");
  if (s->ndim != 1) return luaL_argerror(L, 1, "one slope per head expected (a vector)");
  ml_tensor f, *o;
  CHECK_AT(L, ml_tensor_f32(&f, s), 1);
  o = ml_lua_push_tensor(L);
  int rc = ml_alibi_bias(o, ml_tensor_data(&f), s->shape[0], nq, nkv);
  ml_tensor_release(&f);
  if (rc < 0) return ml_lua_error_at(L, ml_errinput() == 3 ? 3 : 2);
  return 1;
}

/* g:silu_mul_(u): g = silu(g) * u in place (SwiGLU's gate times up), with the row kernel of
 * the active level the forward pass uses; g and u contiguous f32 of one size. */
static int m_silu_mul_(lua_State *L) {
  ml_tensor *g = ml_lua_check_writable(L, 1), *u = ml_lua_check_tensor(L, 2);
  no_more(L, 2, "one operand");
  if (g->type != ML_TYPE_F32 || !ml_tensor_is_contiguous(g))
    return luaL_argerror(L, 1, "silu_mul_ needs a contiguous f32 tensor");
  if (u->type != ML_TYPE_F32 || !ml_tensor_is_contiguous(u) || ml_tensor_numel(u) != ml_tensor_numel(g))
    return luaL_argerror(L, 2, "a contiguous f32 tensor of the size of self expected");
  int64_t n = ml_tensor_numel(g);
  float *gd = ml_tensor_data(g);
  const float *ud = ml_tensor_data(u);
  const ml_rowops *ro = ml_rowops_get();
  int nth = ml_threads_for(ML_WORK_ROWS, (double)n);
#pragma omp parallel num_threads(nth)
  {
    /* slices of whole 64-element blocks: the kernels' vector bodies and scalar tails then
     * fall on the same elements whatever the thread count, so the result does not depend on it */
    int ith = ml_thread_id(), tn = ml_thread_count();
    int64_t per = ((n + tn - 1) / tn + 63) / 64 * 64, e0 = ML_MIN(n, per * ith), e1 = ML_MIN(n, e0 + per);
    if (e1 > e0) ro->silu_mul(gd + e0, ud + e0, e1 - e0);
  }
  lua_settop(L, 1);
  return 1;
}

/* x:gelu_ggml() / x:gelu_ggml_(): GELU as ggml (and so llama.cpp and the forward pass)
 * computes it: the tanh form looked up in a table over f16 inputs, so the input and the
 * result are rounded to f16 (x:gelu is the tanh form in f32). In place needs a contiguous
 * f32 tensor. */
static int gelu_ggml(lua_State *L, int inplace) {
  ml_tensor *a = inplace ? ml_lua_check_writable(L, 1) : ml_lua_check_tensor(L, 1);
  no_more(L, 1, "none");
  ml_tensor *t = a;
  if (inplace) {
    if (a->type != ML_TYPE_F32 || !ml_tensor_is_contiguous(a))
      return luaL_argerror(L, 1, "gelu_ggml_ needs a contiguous f32 tensor (gelu_ggml makes a copy)");
  } else
    t = f32_copy(L, a);
  ml_gelu_rows(ml_tensor_data(t), ml_tensor_numel(t));
  return 1;
}

static int m_gelu_ggml(lua_State *L) { return gelu_ggml(L, 0); }
static int m_gelu_ggml_(lua_State *L) { return gelu_ggml(L, 1); }

/* ---- registration ---- */

static const luaL_Reg methods[] = {
  {"eq", m_eq}, {"ne", m_ne}, {"lt", m_lt}, {"le", m_le}, {"gt", m_gt}, {"ge", m_ge},
  {"masked_fill", m_masked_fill}, {"masked_fill_", m_masked_fill_}, {"clamp", m_clamp}, {"clamp_", m_clamp_},
  {"sort", m_sort}, {"cumsum", m_cumsum}, {"cumprod", m_cumprod}, {"gather", m_gather},
  {"scatter", m_scatter}, {"scatter_", m_scatter_}, {"scatter_add", m_scatter_add}, {"scatter_add_", m_scatter_add_},
  {"var", m_var}, {"std", m_std}, {"norm", m_norm}, {"dot", m_dot}, {"mm", m_mm}, {"bmm", m_bmm},
  {"conv1d", m_conv1d}, {"multinomial", m_multinomial}, {"rope", m_rope}, {"rope_", m_rope_},
  {"linear_many", ml_lua_linear_many}, {"gelu_ggml", m_gelu_ggml}, {"gelu_ggml_", m_gelu_ggml_},
  {"silu_mul_", m_silu_mul_}, {NULL, NULL}};

static const luaL_Reg functions[] = {
  {"equal", t_equal}, {"where", t_where}, {"eye", t_eye}, {"linspace", t_linspace}, {"randint", t_randint},
  {"multinomial", m_multinomial}, {"dot", m_dot}, {"mm", m_mm}, {"bmm", m_bmm}, {"conv1d", m_conv1d},
  {"rope", m_rope}, {"rope_freqs", t_rope_freqs}, {"alibi_slopes", t_alibi_slopes}, {"alibi", t_alibi},
  {NULL, NULL}};

void ml_lua_open_tensor_ext(lua_State *L) {
  luaL_setfuncs(L, functions, 0);
  ml_register_names(L, "");
  luaL_getmetatable(L, ML_TENSOR_MT);
  lua_pushcfunction(L, mm_eq);
  lua_setfield(L, -2, "__eq");
  lua_getfield(L, -1, "methods");
  luaL_setfuncs(L, methods, 0);
  ml_register_names(L, "");
  lua_pop(L, 2);
}
