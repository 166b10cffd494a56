/* lua_sample.c: the binding of sample.c (the whole-vocabulary part of sampling, so the Lua
 * sampler only sees a handful of candidates per token): reads the options, calls the core.
 * Also the seeded generator samplers draw from (same seed, same draws on every machine). */
#include <string.h>

#include "common.h"
#include "lua_internal.h"
#include "lua_tensor.h"
#include "grammar.h"
#include "sample.h"

#define ML_NO_FINITE "no token has finite probability (every logit is -inf or NaN after bias and masks, or one is +inf)"

/* A buffer of at least `bytes` kept in the registry of this Lua state and reused from call
 * to call (pages stay mapped and warm: a fresh half-megabyte per token cost page faults).
 * It is pushed on the stack; C functions never yield, so no two calls share it. */
static void *scratch(lua_State *L, size_t bytes) {
  static const char key[] = "moonlm.sample.scratch";
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  if (lua_isuserdata(L, -1) && lua_rawlen(L, -1) >= bytes) return lua_touserdata(L, -1);
  lua_pop(L, 1);
  void *p = lua_newuserdatauv(L, bytes, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return p;
}

static size_t up8(size_t n) { return (n + 7) & ~(size_t)7; }

/* candidates(logits, { top_k = 40, bias = {[id] = b}, history = {ids}, penalty_last_n = 64,
 *   repeat_penalty = 1, frequency_penalty = 0, presence_penalty = 0, top_p_hint = 1,
 *   allow = mask })
 *   -> ids (0-based), values: the top_k best adjusted logits in descending order (all of
 *   them when top_k is 0, or, with top_p_hint < 1, the shortest head whose probability mass
 *   reaches it), ties broken by the lower id. When only a head is returned, a third value is
 *   sum(exp(v - best)) over the whole vocabulary, for probabilities of the full distribution.
 * With `draw = u` (a uniform number in [0, 1)) and top_k = 0, the chain top_p -> min_p ->
 * temperature -> draw runs over the whole vocabulary, and the result is id, probability
 * instead (options temperature [1], top_p [1], min_p [0]). `allow` is a token mask applied
 * before anything else: a string of ceil(n / 8) bytes, token i allowed when bit i % 8 of byte
 * i / 8 is set (others are banned: -inf); `grammar = matcher` (lm.grammar) bans what the
 * matcher does not allow next, unless it is a lazy matcher still waiting for its trigger.
 * With `logprobs = k` and `logprob_id = id` the result
 * is the log-probability of id and the k most likely tokens instead: lp, ids, lps
 * (ml_sample_logprobs). The work is sample.c's; this only reads the options. */
static int l_candidates(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->type != ML_TYPE_F32 || t->ndim != 1 || t->stride[0] != 1)
    return luaL_argerror(L, 1, "logits must be a contiguous 1-d f32 tensor (one row)");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  int64_t n = t->shape[0];
  double top_k = 40, last_n = 64, rep = 1, freq = 0, pres = 0, hint_p = 1;
  double draw_u = -1, temp = 1, top_p = 1, min_p = 0, lp_k = -1, lp_id = -1;
#define NUM(field, var) \
  lua_getfield(L, 2, field); \
  if (!lua_isnil(L, -1)) var = luaL_checknumber(L, -1); \
  lua_pop(L, 1)
  if (lua_istable(L, 2)) {
    NUM("top_k", top_k);
    NUM("penalty_last_n", last_n);
    NUM("repeat_penalty", rep);
    NUM("frequency_penalty", freq);
    NUM("presence_penalty", pres);
    NUM("top_p_hint", hint_p);
    NUM("draw", draw_u);
    NUM("temperature", temp);
    NUM("top_p", top_p);
    NUM("min_p", min_p);
    NUM("logprobs", lp_k);
    NUM("logprob_id", lp_id);
  }
#undef NUM
  int64_t k = top_k <= 0 || top_k > (double)n ? n : (int64_t)top_k;
  ml_sample_adjust a;
  memset(&a, 0, sizeof a);
  a.repeat = rep;
  a.frequency = freq;
  a.presence = pres;
  a.last_n = last_n < 0 ? -1 : (int64_t)last_n;
  /* the bias pairs and the penalty window of the history, read into C arrays */
  int64_t nb = 0, nh = 0, h0 = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "bias");    /* 3 */
    lua_getfield(L, 2, "history"); /* 4 */
    if (lua_istable(L, 3))
      for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1)) nb++;
    nh = lua_istable(L, 4) ? (int64_t)lua_rawlen(L, 4) : 0;
    int penal = rep != 1 || freq != 0 || pres != 0;
    h0 = !penal ? nh : last_n < 0 || (double)nh <= last_n ? 0 : nh - (int64_t)last_n;
  }
  const char *mask = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "allow"); /* 5 */
    if (!lua_isnil(L, 5)) {
      size_t len;
      if (lua_type(L, 5) != LUA_TSTRING) return luaL_argerror(L, 2, "allow must be a string (a bitset of the tokens)");
      mask = lua_tolstring(L, 5, &len);
      if ((int64_t)len != (n + 7) / 8)
        return luaL_argerror(L, 2, lua_pushfstring(L, "allow has %d bytes, the vocabulary needs %d", (int)len, (int)((n + 7) / 8)));
    }
  }
  ml_matcher *gm = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "grammar"); /* 6 */
    if (!lua_isnil(L, 6)) {
      gm = ml_lua_test_matcher(L, 6);
      if (!gm) return luaL_argerror(L, 2, "grammar must be an open matcher (g:matcher(model))");
      if (ml_matcher_n_vocab(gm) != n)
        return luaL_argerror(L, 2, lua_pushfstring(L, "the matcher is for %d tokens, the logits have %d", (int)ml_matcher_n_vocab(gm), (int)n));
      if (!ml_matcher_is_active(gm)) gm = NULL;
    }
  }
  const uint32_t *gbits = NULL;
  if (gm) {
    /* n bits in 64-bit words: on a little-endian machine the same bits as 32-bit words */
    gbits = (const uint32_t *)ml_matcher_mask(gm);
    if (!gbits) return ml_lua_error(L);
  }
  a.n_bias = nb;
  a.n_history = nh - h0;
  size_t work = up8(ml_sample_work_bytes(n, &a)), ib = up8(sizeof(int32_t) * (size_t)nb);
  size_t fb = up8(sizeof(float) * (size_t)nb), hb = up8(sizeof(int32_t) * (size_t)a.n_history);
  size_t mb = mask ? up8(sizeof(uint32_t) * (size_t)((n + 31) / 32)) : 0;
  if (lp_k >= 0 && lp_k > (double)n) lp_k = (double)n;
  int64_t nout = lp_k >= 0 ? (int64_t)lp_k : k;
  uint8_t *p = scratch(L, work + ib + fb + hb + mb + sizeof(ml_cand) * (size_t)(nout ? nout : 1));
  int32_t *bias_id = (int32_t *)(p + work), *hist = (int32_t *)(p + work + ib);
  float *bias = (float *)(p + work + ib + hb);
  uint32_t *allow = (uint32_t *)(p + work + ib + hb + fb);
  ml_cand *out = (ml_cand *)(p + work + ib + hb + fb + mb);
  if (mask) { /* bytes to words, bit i of the mask staying bit i */
    for (int64_t w = 0; w < (n + 31) / 32; w++) {
      uint32_t x = 0;
      for (int b = 0; b < 4 && 4 * w + b < (n + 7) / 8; b++) x |= (uint32_t)(uint8_t)mask[4 * w + b] << (8 * b);
      allow[w] = x;
    }
    if (gbits) /* both: a token must pass the mask and the grammar */
      for (int64_t w = 0; w < (n + 31) / 32; w++) allow[w] &= gbits[w];
    a.allow = allow;
  } else if (gbits) {
    a.allow = gbits;
  }
  if (nb) {
    int64_t b = 0;
    for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1), b++) {
      /* the sampler's option, named as its user wrote it (this function is internal) */
      int ok;
      lua_Integer id = lua_tointegerx(L, -2, &ok);
      if (!ok) lua_pushfstring(L, "a key that is not a token id (%s)", luaL_typename(L, -2));
      else if (id < 0 || id >= n) ml_push_id_range(L, id, n);
      else if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) != lua_tonumber(L, -1))
        lua_pushfstring(L, "the bias of token %d is not a number (or NaN)", (int)id);
      else ok = 2;
      if (ok != 2) return lua_pushfstring(L, "option 'logit_bias': %s", lua_tostring(L, -1)), lua_error(L);
      bias_id[b] = (int32_t)id;
      bias[b] = (float)lua_tonumber(L, -1);
    }
  }
  for (int64_t i = h0; i < nh; i++) { /* the penalty window: the ids the penalties read */
    lua_rawgeti(L, 4, (lua_Integer)i + 1);
    int ok;
    lua_Integer id = lua_tointegerx(L, -1, &ok);
    if (!ok) return lua_pushfstring(L, "history item %d is not a token id", (int)i + 1), lua_error(L);
    if (id < 0 || id >= n)
      return lua_pushfstring(L, "history item %d: %s", (int)i + 1, ml_push_id_range(L, id, n)), lua_error(L);
    lua_pop(L, 1);
    hist[i - h0] = (int32_t)id;
  }
  a.bias_id = bias_id;
  a.bias = bias;
  a.history = hist;
  ml_sample_row r;
  if (ml_sample_prepare(&r, ml_tensor_data(t), n, &a, p) < 0) return ml_lua_error_at(L, 2);
  if (lp_k >= 0) {
    double lp;
    int64_t m = ml_sample_logprobs(&r, (int64_t)lp_id, nout, &lp, out);
    lua_pushnumber(L, lp);
    lua_createtable(L, (int)m, 0);
    lua_createtable(L, (int)m, 0);
    for (int64_t i = 0; i < m; i++) {
      lua_pushinteger(L, out[i].id);
      lua_rawseti(L, -3, (lua_Integer)i + 1);
      lua_pushnumber(L, out[i].v);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 3;
  }
  if (draw_u >= 0 && k == n && n > 0) {
    ml_sample_cuts c = {top_p, min_p, temp};
    double prob;
    int64_t id = ml_sample_draw(&r, &c, draw_u, &prob);
    if (id < 0) {
      lua_pushnil(L);
      lua_pushstring(L, ML_NO_FINITE);
      return 2;
    }
    lua_pushinteger(L, id);
    lua_pushnumber(L, prob);
    return 2;
  }
  double z;
  int64_t m = ml_sample_top(&r, k, hint_p, out, &z);
  lua_createtable(L, (int)m, 0);
  lua_createtable(L, (int)m, 0);
  for (int64_t i = 0; i < m; i++) {
    lua_pushinteger(L, out[i].id);
    lua_rawseti(L, -3, (lua_Integer)i + 1);
    lua_pushnumber(L, out[i].v);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (z > 0) { /* a head only: the whole distribution's normaliser, relative to the best */
    lua_pushnumber(L, z);
    return 3;
  }
  return 2;
}

/* ---- generator ---- */

#define RNG_MT "moonlm.rng"

static int l_rng(lua_State *L) {
  lua_Integer seed = luaL_optinteger(L, 1, 0);
  ml_rng *r = lua_newuserdatauv(L, sizeof *r, 0);
  ml_rng_seed(r, (uint64_t)seed);
  luaL_setmetatable(L, RNG_MT);
  return 1;
}

/* rng:uniform() -> [0, 1) */
static int rng_uniform(lua_State *L) {
  ml_rng *r = luaL_checkudata(L, 1, RNG_MT);
  lua_pushnumber(L, ml_rng_uniform(r));
  return 1;
}

static int rng_seed(lua_State *L) {
  ml_rng *r = luaL_checkudata(L, 1, RNG_MT);
  ml_rng_seed(r, (uint64_t)luaL_checkinteger(L, 2));
  return 0;
}

static const luaL_Reg rng_methods[] = {{"uniform", rng_uniform}, {"seed", rng_seed}, {NULL, NULL}};
static const luaL_Reg funcs[] = {{"candidates", l_candidates}, {"rng", l_rng}, {NULL, NULL}};

void ml_lua_open_sample(lua_State *L) {
  luaL_newmetatable(L, RNG_MT);
  lua_newtable(L);
  luaL_setfuncs(L, rng_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
