/* lua_sample.c: the parts of sampling that touch the whole vocabulary, so the Lua sampler
 * only sees a handful of candidates per token: logit bias and repetition penalties applied
 * on the fly (the logits tensor is not modified), then the k best candidates, sorted. Also
 * the seeded generator samplers draw from (same seed, same draws on every machine). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "lua_internal.h"
#include "lua_tensor.h"
#include "rowops.h"

typedef struct cand { float v; int32_t id; } cand;

static inline int better(cand a, cand b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

static void sift(cand *h, int64_t n, int64_t i) { /* min-heap on `better`: root is the worst kept */
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && better(h[w], h[l])) w = l;
    if (r < n && better(h[w], h[r])) w = r;
    if (w == i) return;
    cand t = h[i]; h[i] = h[w]; h[w] = t;
    i = w;
  }
}

static float adjusted(const int32_t *ids, const float *adj, int64_t nadj, int64_t i) {
  for (int64_t j = 0; j < nadj; j++)
    if (ids[j] == i) return adj[j];
  return 0;
}

/* token i's logit after bias and penalties */
static inline float value_at(const float *x, const uint8_t *touched, const int32_t *ids, const float *adj,
                             int64_t nadj, int64_t i) {
  return touched && touched[i] ? adjusted(ids, adj, nadj, i) : x[i];
}

/* The k best of the n (adjusted) values into h, sorted best first; returns how many. */
static int64_t select_top(cand *h, const float *x, int64_t n, int64_t k, const uint8_t *touched, const int32_t *ids,
                          const float *adj, int64_t nadj) {
  int64_t m = 0;
  for (int64_t i = 0; i < n && k > 0; i++) {
    cand c;
    c.id = (int32_t)i;
    c.v = value_at(x, touched, ids, adj, nadj, i);
    if (c.v != c.v) c.v = -INFINITY;
    if (m < k) {
      h[m++] = c;
      if (m == k)
        for (int64_t j = k / 2; j >= 0; j--) sift(h, k, j);
    } else if (better(c, h[0])) {
      h[0] = c;
      sift(h, k, 0);
    }
  }
  if (m < k)
    for (int64_t j = m / 2; j >= 0; j--) sift(h, m, j);
  for (int64_t end = m - 1; end > 0; end--) { /* heap sort: best first */
    cand tmp = h[0]; h[0] = h[end]; h[end] = tmp;
    sift(h, end, 0);
  }
  return m;
}

/* The whole-vocabulary chain top_p -> min_p -> temperature -> draw, for top_k = 0 without
 * user steps: what would otherwise hand tens of thousands of candidates to Lua when the
 * distribution is flat. No sort of the vocabulary: a histogram of the probability mass by
 * distance below the best logit finds the bin where the top_p head ends, and only that bin's
 * tokens are sorted. The head is then the tokens better than the last one it needs (higher
 * logit, or equal with a lower id), and the draw goes through it in id order, a fixed
 * function of the logits, so a seed still gives the same text. The exponentials are a row
 * op (vectorised at the AVX2 level and above).
 * v: every token's adjusted logit (NaN as -inf); e, cs, bins: scratch of n. Returns the drawn id
 * and its probability. */
enum { DRAW_BINS = 4096 };
#define DRAW_BIN_SCALE 128.0f /* bins per unit of logit below the best: 32 logits in all */

static int draw_bin(float best, float v) {
  float x = (best - v) * DRAW_BIN_SCALE;
  return x < (float)(DRAW_BINS - 1) ? (int)x : DRAW_BINS - 1;
}

static int cand_cmp(const void *pa, const void *pb) {
  const cand *a = pa, *b = pb;
  return better(*a, *b) ? -1 : better(*b, *a) ? 1 : 0;
}

static int64_t draw_whole(const float *v, float *e, cand *cs, uint16_t *bins, int64_t n, double top_p, double min_p,
                          double temp, double u, double *prob) {
  const ml_rowops *ro = ml_rowops_get();
  float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int64_t best = 0;
  for (; best + 8 <= n; best += 8) /* eight running maxima: no chain through one register */
    for (int j = 0; j < 8; j++) m8[j] = v[best + j] > m8[j] ? v[best + j] : m8[j];
  float mmax = -INFINITY;
  for (int j = 0; j < 8; j++) mmax = m8[j] > mmax ? m8[j] : mmax;
  for (; best < n; best++) mmax = v[best] > mmax ? v[best] : mmax;
  for (best = 0; best < n - 1 && !(v[best] == mmax); best++) {} /* the first of equals: the lowest id */
  *prob = 1;
  if (mmax == -INFINITY || temp <= 0) return best; /* everything banned, or greedy */
  /* top_p: the last token (v_last, id_last) of the shortest best-first prefix reaching it */
  float v_last = -FLT_MAX;
  int64_t id_last = n;
  if (top_p < 1) {
    double z = ro->exp_shift(e, v, n, mmax, 1.0f, -FLT_MAX), need = top_p * z, mass[DRAW_BINS] = {0}, cum = 0;
    for (int64_t i = 0; i < n; i++) {
      bins[i] = (uint16_t)draw_bin(mmax, v[i]); /* -inf: the last bin, with no mass */
      mass[bins[i]] += e[i];
    }
    int bin = 0;
    while (bin < DRAW_BINS && cum + mass[bin] < need) cum += mass[bin++];
    if (bin < DRAW_BINS) {
      int64_t m = 0;
      for (int64_t i = 0; i < n; i++)
        if (bins[i] == bin && v[i] > -INFINITY) cs[m].v = v[i], cs[m++].id = (int32_t)i;
      qsort(cs, (size_t)m, sizeof *cs, cand_cmp);
      int64_t j = 0;
      for (double acc = cum; j < m - 1; j++)
        if ((acc += e[cs[j].id]) >= need) break;
      v_last = cs[j].v, id_last = cs[j].id;
    }
  }
  /* min_p relative to the best, as a float bound equivalent to the double comparison */
  float cut = -FLT_MAX;
  if (min_p > 0) {
    double c = (double)mmax + log(min_p);
    cut = (float)c;
    if ((double)cut < c) cut = nextafterf(cut, INFINITY);
  }
  if (v_last > cut) cut = v_last;
  double s = ro->exp_shift(e, v, n, mmax, (float)(1 / temp), cut);
  if (v_last >= cut) /* ties with the last token of the head: only the lower ids are in */
    for (int64_t i = id_last + 1; i < n; i++)
      if (v[i] == v_last) s -= e[i], e[i] = 0;
  double target = u * s, acc = 0;
  int64_t pick = best;
  for (int64_t i = 0; i < n; i++) {
    if (e[i] == 0) continue;
    pick = i;
    if ((acc += e[i]) > target) break;
  }
  *prob = e[pick] / s;
  return pick;
}

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

/* candidates(logits, { top_k = 40, bias = {[id] = b}, history = {ids}, penalty_last_n = 64,
 *   repeat_penalty = 1, frequency_penalty = 0, presence_penalty = 0, top_p_hint = 1 })
 *   -> ids (0-based), values: the top_k best adjusted logits in descending order (all of
 *   them when top_k is 0, or, with top_p_hint < 1, the shortest head whose probability mass
 *   reaches it), ties broken by the lower id. When only a head is returned, a third value is
 *   sum(exp(v - best)) over the whole vocabulary, for probabilities of the full distribution.
 * With `draw = u` (a uniform number in [0, 1)) and top_k = 0, the chain top_p -> min_p ->
 * temperature -> draw runs here over the whole vocabulary (draw_whole), and the result is
 * id, probability instead (options temperature [1], top_p [1], min_p [0]). */
static int l_candidates(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  if (t->type != ML_TYPE_F32 || t->ndim != 1 || t->stride[0] != 1)
    return luaL_argerror(L, 1, "logits must be a contiguous 1-d f32 tensor (one row)");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  int64_t n = t->shape[0];
  const float *x = ml_tensor_data(t);
  double top_k = 40, last_n = 64, rep = 1, freq = 0, pres = 0, hint_p = 1;
  double draw_u = -1, temp = 1, top_p = 1, min_p = 0;
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
  }
#undef NUM
  int64_t k = top_k <= 0 || top_k > (double)n ? n : (int64_t)top_k;
  /* The few tokens whose logit changes: biased ones and those in the penalty window.
   * adj[j] holds the final value of token ids[j]. */
  int64_t nadj = 0;
  int32_t *ids = NULL;
  float *adj = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "bias");    /* 3 */
    lua_getfield(L, 2, "history"); /* 4 */
    int64_t nb = 0, nh = lua_istable(L, 4) ? (int64_t)lua_rawlen(L, 4) : 0;
    if (lua_istable(L, 3))
      for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1)) nb++;
    int penal = rep != 1 || freq != 0 || pres != 0;
    int64_t h0 = !penal ? nh : last_n < 0 || (double)nh <= last_n ? 0 : nh - (int64_t)last_n;
    int64_t cap = nb + (nh - h0) + 1;
    ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)cap, 0);
    adj = lua_newuserdatauv(L, sizeof(float) * (size_t)cap, 0);
    int64_t *cnt = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)cap, 0);
#define FIND(id, j) for (j = 0; j < nadj && ids[j] != (id); j++)
    if (lua_istable(L, 3))
      for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1)) {
        int ok;
        lua_Integer id = lua_tointegerx(L, -2, &ok);
        if (!ok || id < 0 || id >= n) return luaL_argerror(L, 2, "bias keys must be token ids in range");
        if (lua_type(L, -1) != LUA_TNUMBER) return luaL_argerror(L, 2, "bias values must be numbers");
        int64_t j;
        FIND(id, j);
        if (j == nadj) {
          ids[nadj] = (int32_t)id;
          adj[nadj] = x[id];
          cnt[nadj++] = 0;
        }
        adj[j] += (float)lua_tonumber(L, -1);
      }
    for (int64_t i = h0; i < nh; i++) {
      lua_rawgeti(L, 4, (lua_Integer)i + 1);
      int ok;
      lua_Integer id = lua_tointegerx(L, -1, &ok);
      lua_pop(L, 1);
      if (!ok || id < 0 || id >= n) continue;
      int64_t j;
      FIND(id, j);
      if (j == nadj) {
        ids[nadj] = (int32_t)id;
        adj[nadj] = x[id];
        cnt[nadj++] = 0;
      }
      cnt[j]++;
    }
#undef FIND
    for (int64_t j = 0; j < nadj; j++)
      if (cnt[j]) { /* as llama.cpp: divide positive logits, multiply negative ones */
        float v = adj[j];
        v = v > 0 ? (float)(v / rep) : (float)(v * rep);
        adj[j] = v - (float)((double)cnt[j] * freq + pres);
      }
  }
  uint8_t *touched = NULL;
  if (nadj) {
    touched = lua_newuserdatauv(L, (size_t)n, 0);
    memset(touched, 0, (size_t)n);
    for (int64_t j = 0; j < nadj; j++) touched[ids[j]] = 1;
  }
  if (draw_u >= 0 && k == n && n > 0) {
    float *v = scratch(L, (sizeof(float) * 2 + sizeof(cand) + sizeof(uint16_t)) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
      float a = value_at(x, touched, ids, adj, nadj, i);
      v[i] = a == a ? a : -INFINITY;
    }
    double prob;
    int64_t id = draw_whole(v, v + n, (cand *)(v + 2 * n), (uint16_t *)(v + 4 * n), n, top_p, min_p, temp, draw_u, &prob);
    lua_pushinteger(L, id);
    lua_pushnumber(L, prob);
    return 2;
  }
  /* Without a top_k cut, a top_p hint lets us return only the head of the distribution:
   * the smallest prefix (in logit order) whose probability mass reaches top_p. The Lua side
   * passes the hint only when no later step (user steps, typical_p) needs the whole set. */
  int64_t want = k;
  double mmax = -INFINITY, z = 0;
  if (k == n && hint_p < 1 && n > 64) {
    for (int64_t i = 0; i < n; i++) {
      float v = value_at(x, touched, ids, adj, nadj, i);
      if (v > mmax) mmax = v;
    }
    for (int64_t i = 0; i < n; i++) {
      float v = value_at(x, touched, ids, adj, nadj, i);
      if (v == v) z += exp((double)v - mmax);
    }
    want = 64;
  }
  cand *h = lua_newuserdatauv(L, sizeof(cand) * (size_t)(k ? k : 1), 0);
  int64_t m;
  for (;;) {
    m = select_top(h, x, n, want, touched, ids, adj, nadj);
    if (want >= k) break;
    double mass = 0;
    for (int64_t i = 0; i < m; i++) mass += exp((double)h[i].v - mmax);
    if (mass >= hint_p * z) break;
    want = want * 4 < k ? want * 4 : k;
  }
  lua_createtable(L, (int)m, 0);
  lua_createtable(L, (int)m, 0);
  for (int64_t i = 0; i < m; i++) {
    lua_pushinteger(L, h[i].id);
    lua_rawseti(L, -3, (lua_Integer)i + 1);
    lua_pushnumber(L, h[i].v);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (m < n && z > 0) { /* a head only: the whole distribution's normaliser, relative to the best */
    lua_pushnumber(L, z * exp(mmax - (double)h[0].v));
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
