/* lua_kvcache.c: lm.kv_cache, the KV cache of kvcache.c (cells shared by sequences, one
 * list of cells per sequence in position order) for models written in Lua.
 *
 *   local kv = lm.kv_cache{ layers = L, kv_heads = H, head_dim = D, n_ctx = N,
 *                           type = "f16" | "f32" | "q8_0", seqs = 1 }
 *   kv:append(layer, seq, k, v)   k, v {H, n, D} (attention's layout) or {n, H * D}
 *   kv:view(layer, seq)           what T.attention reads in place of k and v
 *   kv:pos(seq), kv:truncate(seq, n), kv:copy(from, to), kv:clear([seq]), kv:used()
 *
 * Layers and sequences count from 0, as GGUF's blk.N and the contexts' sequences. A token
 * takes one cell for every layer: the first layer that appends a position claims its cell,
 * the others write into it, so each layer appends the same tokens in order (kv:pos is the
 * positions claimed; a view shows the positions its layer has written). A view is a
 * snapshot of the sequence's length: appending more keeps it valid, truncate, copy or
 * clear of its sequence make it stale (using it is then an error).
 */
#include <string.h>

#include "common.h"
#include "kvcache.h"
#include "lua_kvcache.h"
#include "lua_tensor.h"
#include "rope.h"
#include "threads.h"

#define KV_MT "moonlm.kv_cache"
#define VIEW_MT "moonlm.kv_view"

/* Shared by the cache userdata and its views (refcounted). */
typedef struct kvstate {
  int refcount;
  ml_kvcache c;
  int64_t kv_heads, head_dim;
  int64_t *filled; /* (n_layer, n_seq): positions written per layer and sequence */
  uint64_t *gen;   /* (n_seq): bumped when a sequence loses positions or is replaced */
} kvstate;

typedef struct lkv {
  kvstate *s;
} lkv;

typedef struct lview {
  kvstate *s;
  int64_t layer, n;
  int seq;
  uint64_t gen;
} lview;

static void state_release(kvstate *s) {
  if (s && --s->refcount == 0) {
    ml_kvcache_free(&s->c);
    ml_free(s->filled);
    ml_free(s->gen);
    ml_free(s);
  }
}

static kvstate *check_kv(lua_State *L, int i) {
  lkv *u = luaL_testudata(L, i, KV_MT);
  if (!u) luaL_argerror(L, i, lua_pushfstring(L, "kv_cache expected, got %s", luaL_typename(L, i)));
  if (!u->s) luaL_argerror(L, i, "kv_cache has been closed");
  return u->s;
}

static int64_t opt_field_int(lua_State *L, int t, const char *k, int64_t def, int64_t lo, int64_t hi) {
  lua_getfield(L, t, k);
  int64_t v = def;
  if (!lua_isnil(L, -1)) {
    int isnum;
    lua_Integer n = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be an integer", k));
    v = n;
  } else if (def < 0) {
    luaL_argerror(L, t, lua_pushfstring(L, "option '%s' is required", k));
  }
  lua_pop(L, 1);
  if (v < lo || v > hi)
    luaL_argerror(L, t, lua_pushfstring(L, "option '%s' = %s out of range [%d, %d]", k, ml_push_int(L, v), (int)lo, (int)hi));
  return v;
}

/* kv_cache{ layers, kv_heads, head_dim, n_ctx, type = "f16", seqs = 1 } -> kv | nil, err */
static int l_kv_cache(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const names[] = {"layers", "kv_heads", "head_dim", "n_ctx", "type", "seqs", NULL};
  ml_lua_known_options(L, 1, 1, names);
  int64_t layers = opt_field_int(L, 1, "layers", -1, 1, 1 << 16);
  int64_t heads = opt_field_int(L, 1, "kv_heads", -1, 1, 1 << 16);
  int64_t hd = opt_field_int(L, 1, "head_dim", -1, 1, 1 << 16);
  int64_t n_ctx = opt_field_int(L, 1, "n_ctx", -1, 1, (int64_t)1 << 24);
  int64_t seqs = opt_field_int(L, 1, "seqs", 1, 1, ML_MAX_SEQ);
  lua_getfield(L, 1, "type");
  const char *tn = lua_isnil(L, -1) ? "f16" : lua_tostring(L, -1);
  ml_type type = ML_TYPE_F16;
  if (tn && strcmp(tn, "f32") == 0) type = ML_TYPE_F32;
  else if (tn && strcmp(tn, "q8_0") == 0) type = ML_TYPE_Q8_0;
  else if (!tn || strcmp(tn, "f16") != 0) return luaL_argerror(L, 1, "type must be \"f16\", \"f32\" or \"q8_0\"");
  lua_pop(L, 1);
  if (type == ML_TYPE_Q8_0 && hd % ML_QK)
    return luaL_argerror(L, 1, lua_pushfstring(L, "type q8_0 needs a head_dim that is a multiple of %d (got %d)", ML_QK, (int)hd));
  lkv *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, KV_MT);
  kvstate *s = ml_calloc(sizeof *s);
  if (!s) return ml_lua_fail(L, 0);
  s->refcount = 1;
  u->s = s;
  s->kv_heads = heads;
  s->head_dim = hd;
  if (ml_kvcache_init(&s->c, n_ctx, layers, heads * hd, type, (int)seqs) < 0 ||
      !(s->filled = ml_calloc(sizeof(int64_t) * (size_t)(layers * seqs))) ||
      !(s->gen = ml_calloc(sizeof(uint64_t) * (size_t)seqs))) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    state_release(s);
    u->s = NULL;
    return 2;
  }
  return 1;
}

static int check_seq(lua_State *L, const kvstate *s, int i) {
  lua_Integer q = luaL_checkinteger(L, i);
  if (q < 0 || q >= s->c.n_seq)
    luaL_argerror(L, i, lua_pushfstring(L, "sequence %d out of range (0 to %d)", (int)q, s->c.n_seq - 1));
  return (int)q;
}

static int64_t check_layer(lua_State *L, const kvstate *s, int i) {
  lua_Integer l = luaL_checkinteger(L, i);
  if (l < 0 || l >= s->c.n_layer)
    luaL_argerror(L, i, lua_pushfstring(L, "layer %d out of range (0 to %d)", (int)l, (int)s->c.n_layer - 1));
  return l;
}

/* k or v at i as contiguous f32 rows (n, kv_heads * head_dim), a tensor on the stack. */
static const float *token_rows(lua_State *L, const kvstate *s, int i, int64_t *n) {
  ml_tensor *t = ml_lua_check_tensor(L, i), v, *o;
  int64_t H = s->kv_heads, D = s->head_dim;
  if (t->ndim == 3 && t->shape[0] == H && t->shape[2] == D) {
    int perm[3] = {1, 0, 2}; /* {H, n, D} -> {n, H, D} */
    if (ml_tensor_permute(&v, t, perm) < 0) ml_lua_error_at(L, i);
    *n = t->shape[1];
  } else if (t->ndim == 2 && t->shape[1] == H * D) {
    ml_tensor_view_of(&v, t);
    *n = t->shape[0];
  } else {
    luaL_argerror(L, i, lua_pushfstring(L, "expected {%d, n, %d} (kv_heads, tokens, head_dim) or {n, %d}", (int)H,
                                        (int)D, (int)(H * D)));
    return NULL;
  }
  o = ml_lua_push_tensor(L);
  int rc = ml_tensor_f32(o, &v);
  ml_tensor_release(&v);
  if (rc < 0) ml_lua_error_at(L, i);
  return ml_tensor_data(o);
}

/* append(layer, seq, k, v) -> true | nil, "kv cache full (n_ctx = N)" */
static int kv_append(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  int64_t layer = check_layer(L, s, 2);
  int seq = check_seq(L, s, 3);
  lua_settop(L, 5);
  int64_t nk, nv;
  const float *k = token_rows(L, s, 4, &nk), *v = token_rows(L, s, 5, &nv);
  if (nk != nv) return luaL_argerror(L, 5, lua_pushfstring(L, "%d values for %d keys", (int)nv, (int)nk));
  ml_kvcache *c = &s->c;
  int64_t *filled = &s->filled[layer * c->n_seq + seq], p0 = *filled;
  int64_t claim = p0 + nk - c->len[seq]; /* positions no layer has claimed yet */
  if (claim > 0 && c->n_used + claim > c->n_cells) {
    lua_pushnil(L);
    lua_pushfstring(L, "kv cache full (n_ctx = %d)", (int)c->n_cells);
    return 2;
  }
  for (int64_t i = 0; i < claim; i++) ml_kvcache_append(c, seq);
  int64_t row = c->row;
  for (int64_t t = 0; t < nk; t++)
    ml_kvcache_store(c, layer, ml_kvcache_cell(c, seq, p0 + t), k + t * row, v + t * row);
  *filled = p0 + nk;
  lua_pushboolean(L, 1);
  return 1;
}

/* view(layer, seq) -> a view of the keys and values layer has written for seq */
static int kv_view(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  int64_t layer = check_layer(L, s, 2);
  int seq = check_seq(L, s, 3);
  lview *w = lua_newuserdatauv(L, sizeof *w, 0);
  w->s = s;
  s->refcount++;
  w->layer = layer;
  w->seq = seq;
  w->n = s->filled[layer * s->c.n_seq + seq];
  w->gen = s->gen[seq];
  luaL_setmetatable(L, VIEW_MT);
  return 1;
}

/* Rows {n, heads · head_dim} f32 at i as a product writes them (contiguous heads, any row
 * stride): the data, the rows, the heads and the row stride. */
static const float *f32_rows(lua_State *L, const kvstate *s, int i, const char *what, int64_t *n, int64_t *heads,
                             int64_t *ld) {
  const ml_tensor *t = ml_lua_check_tensor(L, i);
  int64_t D = s->head_dim;
  if (t->type != ML_TYPE_F32 || t->ndim != 2 || t->shape[1] == 0 || t->shape[1] % D ||
      (t->stride[1] != 1 && t->shape[1] > 1))
    luaL_argerror(L, i, lua_pushfstring(L, "%s must be f32 rows {n, heads · %d}", what, (int)D));
  *n = t->shape[0];
  *heads = t->shape[1] / D;
  *ld = t->stride[0];
  return ml_tensor_data(t);
}

/* attend(layer, seq, q, k, v [, opts [, out]]) -> out | nil, "kv cache full (n_ctx = N)":
 * one attention step of a layer against its cache, what x:rope_ on q and k, kv:append and
 * tensor.attention(q, kv:view(layer, seq), opts) do one after the other, in one call. q
 * {n, H · head_dim}, k and v {n, kv_heads · head_dim}: f32 rows as products write them. The
 * rows are positions p, p+1, ... where p is what the layer holds of seq (kv:view's n); with
 * opts.rope (x:rope's options) q and k are rotated there (q and k themselves are left as
 * they are). k and v go into the cache, then q attends to the sequence's keys with the
 * other options of tensor.attention (scale, causal, window, softcap, mask, alibi). The
 * result, rows {n, H · head_dim}, goes into out when given (contiguous f32, not q) or a
 * new tensor. Misuse is raised before anything is written; a full cache writes nothing. */
static int kv_attend(lua_State *L) {
  static const char *const names[] = {"rope", "scale", "causal", "window", "softcap", "mask", "alibi", NULL};
  kvstate *s = check_kv(L, 1);
  int64_t layer = check_layer(L, s, 2);
  int seq = check_seq(L, s, 3);
  lua_settop(L, 8);
  int64_t n, H, ldq, nk, Hk, ldk, nv, Hv, ldv, D = s->head_dim;
  const float *q = f32_rows(L, s, 4, "q", &n, &H, &ldq);
  const float *k = f32_rows(L, s, 5, "k", &nk, &Hk, &ldk);
  const float *v = f32_rows(L, s, 6, "v", &nv, &Hv, &ldv);
  if (Hk != s->kv_heads || Hv != s->kv_heads)
    return luaL_argerror(L, Hk != s->kv_heads ? 5 : 6, lua_pushfstring(L, "%s must be {n, %d} (kv_heads · head_dim)",
                                                                      Hk != s->kv_heads ? "k" : "v", (int)(s->kv_heads * D)));
  if (nk != n || nv != n)
    return luaL_argerror(L, nk != n ? 5 : 6, lua_pushfstring(L, "%d rows of q, %d of k and %d of v", (int)n, (int)nk, (int)nv));
  if (H % Hk) return luaL_argerror(L, 4, lua_pushfstring(L, "%d query heads cannot share %d key/value heads", (int)H, (int)Hk));
  if (lua_isnil(L, 7)) {
    lua_newtable(L);
    lua_replace(L, 7);
  }
  luaL_checktype(L, 7, LUA_TTABLE);
  ml_lua_known_options(L, 7, 7, names);
  ml_tensor *o = NULL;
  if (!lua_isnil(L, 8)) {
    o = ml_lua_check_writable(L, 8);
    if (o->type != ML_TYPE_F32 || o->ndim != 2 || o->shape[0] != n || o->shape[1] != H * D || !ml_tensor_is_contiguous(o))
      return luaL_argerror(L, 8, lua_pushfstring(L, "out must be a contiguous f32 tensor {%d, %d}", (int)n, (int)(H * D)));
  }
  ml_kvcache *c = &s->c;
  int64_t *filled = &s->filled[layer * c->n_seq + seq], p0 = *filled;
  ml_lua_rope ro = {0, 0, 1, NULL};
  lua_getfield(L, 7, "rope"); /* 9: the frequencies may live in it */
  if (lua_toboolean(L, 9)) {
    if (!lua_istable(L, 9)) return luaL_argerror(L, 7, "option 'rope' must be a table (the options of x:rope) or false");
    ml_lua_rope_options(L, 9, 7, D, &ro);
  }
  ml_flash_args a;
  memset(&a, 0, sizeof a);
  a.head_dim = D;
  ml_lua_attention_opts(L, 7, H, n, p0 + n, &a);
  ml_flash_seg seg = {0, n, c->cells[seq], p0 + n, 0};
  a.n_head = H;
  a.n_head_kv = Hk;
  a.n_q = n;
  a.q_hs = a.o_hs = D;
  a.ldo = H * D;
  a.kv_type = c->type;
  a.k = c->k[layer];
  a.v = c->v[layer];
  a.row_bytes = c->row_bytes;
  a.head_bytes = ml_type_nbytes(c->type, D);
  a.n_seg = 1;
  a.seg = &seg;
  if (ml_flash_check(&a) < 0) return ml_lua_error_at(L, 4);
  int64_t claim = p0 + n - c->len[seq]; /* positions no layer has claimed yet */
  if (claim > 0 && c->n_used + claim > c->n_cells) {
    lua_pushnil(L);
    lua_pushfstring(L, "kv cache full (n_ctx = %d)", (int)c->n_cells);
    return 2;
  }
  if (!o) {
    int64_t shape[2] = {n, H * D};
    o = ml_lua_push_tensor(L);
    /* the kernel writes every row of every head */
    if (ml_tensor_init_uninit(o, ML_TYPE_F32, 2, shape) < 0) return ml_lua_error(L);
  } else
    lua_pushvalue(L, 8);
  int top = lua_gettop(L);
  a.q = q;
  a.ldq = ldq;
  if (ro.n_rot > 0) {
    /* rotated copies, row r = q's heads then k's (one angle computation turns both), in
     * threads for a batch's rows as x:rope_ splits them */
    static const char key = 0;
    int64_t ld = (H + Hk) * D;
    float *w = ml_lua_scratch(L, &key, sizeof(float) * (size_t)(n * ld));
    int nth = ml_threads_for(ML_WORK_ROWS, (double)(n * ld));
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int64_t r = 0; r < n; r++) {
      memcpy(w + r * ld, q + r * ldq, sizeof(float) * (size_t)(H * D));
      memcpy(w + r * ld + H * D, k + r * ldk, sizeof(float) * (size_t)(Hk * D));
      ml_rope_row(w + r * ld, H + Hk, D, ro.n_rot, ro.neox, ro.inv_freq, ro.mscale, p0 + r);
    }
    a.q = w;
    a.ldq = ld;
    k = w + H * D;
    ldk = ld;
  }
  for (int64_t i = 0; i < claim; i++) ml_kvcache_append(c, seq);
  for (int64_t t = 0; t < n; t++) ml_kvcache_store(c, layer, ml_kvcache_cell(c, seq, p0 + t), k + t * ldk, v + t * ldv);
  *filled = p0 + n;
  a.out = ml_tensor_data(o);
  seg.cells = c->cells[seq];
  if (n > 0) ml_lua_attention_run(L, &a);
  lua_settop(L, top);
  return 1;
}

/* The sequence loses positions from n on (or all) or is replaced: its views go stale. */
static void touched(kvstate *s, int seq, int64_t keep) {
  s->gen[seq]++;
  for (int64_t l = 0; l < s->c.n_layer; l++) {
    int64_t *f = &s->filled[l * s->c.n_seq + seq];
    if (*f > keep) *f = keep;
  }
}

static int kv_pos(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  lua_pushinteger(L, (lua_Integer)s->c.len[check_seq(L, s, 2)]);
  return 1;
}

static int kv_used(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_kv(L, 1)->c.n_used);
  return 1;
}

/* truncate(seq, n) -> kept: the first n positions of seq stay */
static int kv_truncate(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  int seq = check_seq(L, s, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  if (n < 0) return luaL_argerror(L, 3, "cannot keep a negative number of positions");
  if (n < s->c.len[seq]) {
    ml_kvcache_truncate(&s->c, seq, n);
    touched(s, seq, n);
  }
  lua_pushinteger(L, (lua_Integer)s->c.len[seq]);
  return 1;
}

/* copy(from, to): to becomes a copy of from, sharing its cells */
static int kv_copy(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  int from = check_seq(L, s, 2), to = check_seq(L, s, 3);
  if (from != to) {
    ml_kvcache_copy(&s->c, from, to);
    s->gen[to]++;
    for (int64_t l = 0; l < s->c.n_layer; l++) s->filled[l * s->c.n_seq + to] = s->filled[l * s->c.n_seq + from];
  }
  return 0;
}

/* clear([seq]): one sequence, or all */
static int kv_clear(lua_State *L) {
  kvstate *s = check_kv(L, 1);
  int lo = 0, hi = s->c.n_seq;
  if (!lua_isnoneornil(L, 2)) hi = (lo = check_seq(L, s, 2)) + 1;
  for (int q = lo; q < hi; q++) {
    ml_kvcache_truncate(&s->c, q, 0);
    touched(s, q, 0);
  }
  return 0;
}

static int kv_gc(lua_State *L) {
  lkv *u = luaL_checkudata(L, 1, KV_MT);
  state_release(u->s);
  u->s = NULL;
  return 0;
}

static const char *type_name(ml_type t) { return ml_type_traits_get(t)->name; }

/* fields: layers, kv_heads, head_dim, n_ctx, type, seqs; then the methods */
static int kv_index(lua_State *L) {
  lkv *u = luaL_checkudata(L, 1, KV_MT);
  lua_pushvalue(L, 2); /* methods first (the upvalue): append and view are looked up for every layer */
  lua_rawget(L, lua_upvalueindex(1));
  if (!lua_isnil(L, -1)) return 1;
  lua_settop(L, 2);
  const char *k = lua_tostring(L, 2);
  if (k && u->s) {
    const kvstate *s = u->s;
    struct { const char *name; int64_t v; } ints[] = {{"layers", s->c.n_layer}, {"kv_heads", s->kv_heads},
                                                     {"head_dim", s->head_dim}, {"n_ctx", s->c.n_cells},
                                                     {"seqs", s->c.n_seq}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
      if (strcmp(k, ints[i].name) == 0) {
        lua_pushinteger(L, (lua_Integer)ints[i].v);
        return 1;
      }
    if (strcmp(k, "type") == 0) {
      lua_pushstring(L, type_name(s->c.type));
      return 1;
    }
  }
  return 0;
}

static int kv_tostring(lua_State *L) {
  lkv *u = luaL_checkudata(L, 1, KV_MT);
  if (!u->s) lua_pushliteral(L, "moonlm.kv_cache (closed)");
  else
    lua_pushfstring(L, "moonlm.kv_cache(%d layers, %d kv heads of %d, %s, %d of %d cells used, %d seqs)",
                    (int)u->s->c.n_layer, (int)u->s->kv_heads, (int)u->s->head_dim, type_name(u->s->c.type),
                    (int)u->s->c.n_used, (int)u->s->c.n_cells, u->s->c.n_seq);
  return 1;
}

/* ---- views ---- */

static lview *check_view(lua_State *L, int i) {
  lview *w = luaL_testudata(L, i, VIEW_MT);
  if (!w) luaL_argerror(L, i, lua_pushfstring(L, "kv_view expected, got %s", luaL_typename(L, i)));
  if (!w->s) luaL_argerror(L, i, "kv_view has been released");
  if (w->gen != w->s->gen[w->seq])
    luaL_argerror(L, i, "stale kv_view: its sequence was truncated, copied over or cleared since (take a new view)");
  return w;
}

int ml_lua_kvview(lua_State *L, int i, ml_lua_kvref *r) {
  if (!luaL_testudata(L, i, VIEW_MT)) return 0;
  lview *w = check_view(L, i);
  const ml_kvcache *c = &w->s->c;
  r->type = c->type;
  r->k = c->k[w->layer];
  r->v = c->v[w->layer];
  r->row_bytes = c->row_bytes;
  r->cells = c->cells[w->seq];
  r->n = w->n;
  r->kv_heads = w->s->kv_heads;
  r->head_dim = w->s->head_dim;
  return 1;
}

/* view:k() / view:v() -> a copy {kv_heads, n, head_dim} in f32 */
static int view_rows(lua_State *L, int values) {
  lview *w = check_view(L, 1);
  const ml_kvcache *c = &w->s->c;
  int64_t H = w->s->kv_heads, D = w->s->head_dim, n = w->n, shape[3] = {H, n, D};
  ml_tensor *o = ml_lua_push_tensor(L);
  if (ml_tensor_init(o, ML_TYPE_F32, 3, shape) < 0) return ml_lua_error(L);
  float *out = ml_tensor_data(o);
  const ml_type_traits *tr = ml_type_traits_get(c->type);
  size_t head = ml_type_nbytes(c->type, D);
  for (int64_t t = 0; t < n; t++) {
    int32_t cell = c->cells[w->seq][t];
    const uint8_t *row = values ? ml_kvcache_v(c, w->layer, cell) : ml_kvcache_k(c, w->layer, cell);
    for (int64_t h = 0; h < H; h++) tr->to_float(row + (size_t)h * head, out + (h * n + t) * D, D);
  }
  return 1;
}

static int view_k(lua_State *L) { return view_rows(L, 0); }
static int view_v(lua_State *L) { return view_rows(L, 1); }

static int view_len(lua_State *L) {
  lview *w = luaL_checkudata(L, 1, VIEW_MT);
  lua_pushinteger(L, (lua_Integer)w->n);
  return 1;
}

static int view_gc(lua_State *L) {
  lview *w = luaL_checkudata(L, 1, VIEW_MT);
  state_release(w->s);
  w->s = NULL;
  return 0;
}

static int view_index(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  lview *w = luaL_checkudata(L, 1, VIEW_MT);
  if (!w->s) return luaL_argerror(L, 1, "kv_view has been released");
  if (k && strcmp(k, "n") == 0) return lua_pushinteger(L, (lua_Integer)w->n), 1;
  if (k && strcmp(k, "layer") == 0) return lua_pushinteger(L, (lua_Integer)w->layer), 1;
  if (k && strcmp(k, "seq") == 0) return lua_pushinteger(L, w->seq), 1;
  if (k && strcmp(k, "k") == 0) return lua_pushcfunction(L, view_k), 1;
  if (k && strcmp(k, "v") == 0) return lua_pushcfunction(L, view_v), 1;
  return 0;
}

static const luaL_Reg kv_methods[] = {
  {"append", kv_append}, {"view", kv_view}, {"attend", kv_attend}, {"pos", kv_pos}, {"used", kv_used}, {"truncate", kv_truncate},
  {"copy", kv_copy}, {"clear", kv_clear}, {"close", kv_gc}, {NULL, NULL}};

void ml_lua_open_kvcache(lua_State *L) {
  luaL_newmetatable(L, KV_MT);
  lua_pushcfunction(L, kv_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, kv_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, kv_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, kv_methods);
  ml_register_names(L, "");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, kv_index, 1); /* __index reads the methods table as its upvalue */
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_newmetatable(L, VIEW_MT);
  lua_pushcfunction(L, view_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, view_len);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, view_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_kv_cache);
  lua_setfield(L, -2, "kv_cache");
}
