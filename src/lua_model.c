/* lua_model.c: models, vocabularies, streaming decoders and contexts as userdata. The
 * public Lua objects (lua/moonlm/init.lua) wrap these; here each function checks its
 * arguments, calls the core, and turns expected failures into nil, message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kvcache.h"
#include "lua_gguf.h"
#include "lua_internal.h"
#include "lua_tensor.h"
#include "model.h"

#define MODEL_MT "moonlm.model"
#define CONTEXT_MT "moonlm.context"
#define DECODER_MT "moonlm.decoder"

typedef struct lmodel { ml_model *m; } lmodel;
typedef struct lcontext {
  ml_context *c;
  ml_storage *logits; /* reused while no tensor outside holds it */
} lcontext;
typedef struct ldecoder {
  ml_decoder *d;
  ml_model *m; /* keeps the vocabulary alive */
} ldecoder;

static lmodel *check_model(lua_State *L, int i) {
  lmodel *u = luaL_testudata(L, i, MODEL_MT);
  if (!u) luaL_argerror(L, i, lua_pushfstring(L, "model expected, got %s", luaL_typename(L, i)));
  if (!u->m) luaL_argerror(L, i, "model has been closed");
  return u;
}

static lcontext *check_context(lua_State *L, int i) {
  lcontext *u = luaL_testudata(L, i, CONTEXT_MT);
  if (!u) luaL_argerror(L, i, lua_pushfstring(L, "context expected, got %s", luaL_typename(L, i)));
  if (!u->c) luaL_argerror(L, i, "context has been closed");
  return u;
}

static const ml_vocab *check_vocab(lua_State *L, lmodel *u) {
  if (!u->m->vocab) luaL_error(L, "this model has no tokenizer");
  return u->m->vocab;
}

ml_model *ml_lua_test_model(lua_State *L, int i) {
  lmodel *u = luaL_testudata(L, i, MODEL_MT);
  return u ? u->m : NULL;
}

static lmodel *push_model(lua_State *L) {
  lmodel *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->m = NULL;
  luaL_setmetatable(L, MODEL_MT);
  return u;
}

static int opt_bool(lua_State *L, int t, const char *k, int def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  lua_Integer v = def;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be an integer", k));
  }
  lua_pop(L, 1);
  return v;
}

static const char *opt_str(lua_State *L, int t, const char *k, const char *def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  const char *v = def;
  if (!lua_isnil(L, -1)) {
    size_t n = 0;
    v = lua_tolstring(L, -1, &n);
    if (!v || lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' must be a string", k));
    if (strlen(v) != n) luaL_argerror(L, t, lua_pushfstring(L, "option '%s' holds a zero byte", k));
  }
  lua_pop(L, 1); /* the string stays alive in the options table */
  return v;
}

/* ---- loading ---- */

/* load(path, { vocab_only = false }) -> model | nil, err */
static int l_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  ml_model_opts o = {opt_bool(L, 2, "vocab_only", 0), !opt_bool(L, 2, "mmap", 1)};
  lmodel *u = push_model(L);
  u->m = ml_registry_load(path, &o);
  if (!u->m) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    return 2;
  }
  return 1;
}

/* attach_model(handle) -> model | nil, err: the same model another Lua state loaded */
static int l_attach_model(lua_State *L) {
  lua_Integer h = luaL_checkinteger(L, 1);
  lmodel *u = push_model(L);
  u->m = ml_registry_model(h);
  if (!u->m) {
    ml_push_int(L, h);
    lua_pushnil(L);
    lua_pushfstring(L, "no model with handle %s", lua_tostring(L, -2));
    return 2;
  }
  return 1;
}

static int m_gc(lua_State *L) {
  lmodel *u = luaL_checkudata(L, 1, MODEL_MT);
  ml_model_release(u->m);
  u->m = NULL;
  return 0;
}

static void set_int(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* info() -> { arch, n_params, n_vocab, ... } */
static int m_info(lua_State *L) {
  lmodel *u = check_model(L, 1);
  ml_model *m = u->m;
  const ml_hparams *hp = &m->hp;
  lua_newtable(L);
  lua_pushstring(L, m->arch_name);
  lua_setfield(L, -2, "arch");
  lua_pushstring(L, m->path);
  lua_setfield(L, -2, "path");
  set_int(L, "handle", m->handle);
  set_int(L, "n_vocab", hp->n_vocab);
  lua_pushboolean(L, m->vocab_only);
  lua_setfield(L, -2, "vocab_only");
  if (!m->vocab_only) {
    set_int(L, "n_params", m->n_params);
    set_int(L, "n_ctx_train", hp->n_ctx_train);
    set_int(L, "n_embd", hp->n_embd);
    set_int(L, "n_layer", hp->n_layer);
    set_int(L, "n_head", hp->n_head);
    set_int(L, "n_head_kv", hp->n_head_kv);
    set_int(L, "head_dim", hp->head_dim);
    set_int(L, "n_ff", hp->n_ff);
    set_int(L, "n_rot", hp->n_rot);
    set_int(L, "weight_bytes", (int64_t)m->weight_bytes);
    lua_pushnumber(L, hp->rope_base);
    lua_setfield(L, -2, "rope_freq_base");
    lua_pushnumber(L, hp->norm_eps);
    lua_setfield(L, -2, "norm_eps");
    lua_pushboolean(L, m->tied_output);
    lua_setfield(L, -2, "tied_output");
    lua_pushstring(L, ml_type_traits_get(m->main_type)->name);
    lua_setfield(L, -2, "type");
    lua_pushboolean(L, hp->causal);
    lua_setfield(L, -2, "causal");
    if (hp->n_swa > 0 && hp->swa_pattern > 0) set_int(L, "n_swa", hp->n_swa);
    /* embedding models say how they pool; for the others model:embed chooses */
    static const char *const pool_names[] = {"none", "mean", "cls", "last", "rank"};
    if (!hp->causal || ml_gguf_find(m->gguf, "bert.pooling_type")) {
      lua_pushstring(L, pool_names[hp->pooling]);
      lua_setfield(L, -2, "pooling");
    }
  }
  return 1;
}

/* meta() -> { key = value }; arrays longer than 64k become "<array of N type>" */
static int m_meta(lua_State *L) {
  lmodel *u = check_model(L, 1);
  ml_lua_push_gguf_meta(L, u->m->gguf, 65536);
  return 1;
}

/* A weight link (lua_tensor.h) to the model's prepared copy of a matrix. */
#define WLINK_MT "moonlm.weight_link"
typedef struct lwlink {
  ml_lua_wlink base;
  ml_model *m;
} lwlink;

static const ml_weight *resolve_weight(ml_lua_wlink *l, const ml_tensor *t) {
  return ml_model_weight_of(((lwlink *)l)->m, t);
}

static int wlink_gc(lua_State *L) {
  lwlink *l = luaL_checkudata(L, 1, WLINK_MT);
  ml_model_release(l->m);
  l->m = NULL;
  return 0;
}

/* tensor(name) -> view of a weight in the mapping, or nil. A matrix is linked to its
 * prepared copy, so x:linear(model:tensor(name)) runs as fast as the forward pass. */
static int m_tensor(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const char *name = luaL_checkstring(L, 2);
  int64_t i = ml_gguf_find_tensor(u->m->gguf, name);
  if (i < 0 || !u->m->storage) return 0;
  ml_tensor *t = ml_lua_push_tensor(L);
  if (ml_gguf_tensor_view(t, u->m->storage, u->m->gguf, &u->m->gguf->tensors[i]) < 0) return ml_lua_error(L);
  if (t->ndim == 2 && !u->m->vocab_only) {
    lwlink *l = lua_newuserdatauv(L, sizeof *l, 0);
    memset(l, 0, sizeof *l);
    luaL_setmetatable(L, WLINK_MT);
    l->base.resolve = resolve_weight;
    l->m = u->m;
    ml_model_retain(u->m);
    ml_lua_set_wlink(L, -2, -1);
    lua_pop(L, 1);
  }
  return 1;
}

/* tensor_names() -> { names } */
static int m_tensor_names(lua_State *L) {
  lmodel *u = check_model(L, 1);
  lua_createtable(L, (int)u->m->gguf->n_tensors, 0);
  for (uint64_t i = 0; i < u->m->gguf->n_tensors; i++) {
    lua_pushlstring(L, u->m->gguf->tensors[i].name.s, (size_t)u->m->gguf->tensors[i].name.len);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* The Lua progress callback (at index fn) called from ml_model_prepare_progress: false
 * cancels; an error in it cancels too and is raised once preparing has cleaned up. */
typedef struct progress_ud {
  lua_State *L;
  int fn, failed;
} progress_ud;

static int progress_cb(void *p, size_t done, size_t total) {
  progress_ud *u = p;
  lua_State *L = u->L;
  lua_pushvalue(L, u->fn);
  lua_pushinteger(L, (lua_Integer)done);
  lua_pushinteger(L, (lua_Integer)total);
  if (lua_pcall(L, 2, 1, 0) != 0) {
    u->failed = 1; /* the error object stays on the stack */
    return 0;
  }
  int go = !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
  lua_pop(L, 1);
  return go;
}

/* prepare([progress]) -> seconds | nil, "preparing the weights was cancelled": pack the
 * weights for the kernel level now rather than on the first decode (a server does this at
 * start so no request pays for it). progress(done, total), in bytes of weights, after each
 * matrix; returning false cancels. */
static int m_prepare(lua_State *L) {
  lmodel *u = check_model(L, 1);
  if (u->m->vocab_only) return luaL_error(L, "the model was loaded with vocab_only: it has no weights");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  progress_ud p = {L, 2, 0};
  if (ml_model_prepare_progress(u->m, lua_isnil(L, 2) ? NULL : progress_cb, &p) < 0) {
    if (p.failed) return lua_error(L);
    return ml_lua_fail(L, 0);
  }
  lua_pushnumber(L, u->m->prepare_seconds);
  return 1;
}

/* ---- vocabulary ---- */

static void push_id(lua_State *L, const char *k, int32_t id) {
  if (id < 0)
    lua_pushboolean(L, 0);
  else
    lua_pushinteger(L, id);
  lua_setfield(L, -2, k);
}

/* vocab() -> { type, n_tokens, bos, eos, eot, ..., add_bos, add_eos, pre } (absent ids: false) */
static int m_vocab(lua_State *L) {
  lmodel *u = check_model(L, 1);
  if (!u->m->vocab) { /* a weights-only file: m.vocab is false, tokenize etc. raise */
    lua_pushboolean(L, 0);
    return 1;
  }
  const ml_vocab_info *vi = ml_vocab_get_info(u->m->vocab);
  lua_newtable(L);
  lua_pushstring(L, vi->model);
  lua_setfield(L, -2, "model");
  lua_pushstring(L, vi->pre);
  lua_setfield(L, -2, "pre");
  set_int(L, "n_tokens", vi->n_tokens);
  push_id(L, "bos", vi->bos);
  push_id(L, "eos", vi->eos);
  push_id(L, "eot", vi->eot);
  push_id(L, "eom", vi->eom);
  push_id(L, "unk", vi->unk);
  push_id(L, "pad", vi->pad);
  push_id(L, "sep", vi->sep);
  push_id(L, "nl", vi->nl);
  lua_pushboolean(L, vi->add_bos);
  lua_setfield(L, -2, "add_bos");
  lua_pushboolean(L, vi->add_eos);
  lua_setfield(L, -2, "add_eos");
  lua_pushboolean(L, vi->add_space_prefix);
  lua_setfield(L, -2, "add_space_prefix");
  if (vi->type == ML_VOCAB_WPM) {
    lua_pushboolean(L, vi->lowercase);
    lua_setfield(L, -2, "lowercase");
    lua_pushboolean(L, vi->strip_accents);
    lua_setfield(L, -2, "strip_accents");
  }
  /* end-of-generation ids */
  lua_newtable(L);
  for (int32_t id = 0, n = 0; id < vi->n_tokens; id++)
    if (ml_vocab_is_eog(u->m->vocab, id)) {
      lua_pushinteger(L, id);
      lua_rawseti(L, -2, ++n);
    }
  lua_setfield(L, -2, "eog");
  return 1;
}

static int tri(lua_State *L, int i) { /* nil -> -1 (default), else boolean */
  return lua_isnoneornil(L, i) ? -1 : lua_toboolean(L, i);
}

/* tokenize(text, add_bos, add_eos, special, no_prefix) -> { ids } (0-based) */
static int m_tokenize(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const ml_vocab *v = check_vocab(L, u);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int add_bos = tri(L, 3), add_eos = tri(L, 4), special = lua_toboolean(L, 5);
  if (lua_toboolean(L, 6)) special |= ML_TOK_NO_PREFIX;
  int32_t stackbuf[256], *ids = stackbuf;
  int64_t n = ml_vocab_tokenize(v, s, len, add_bos, add_eos, special, ids, 256);
  if (n < 0 && n != ML_TOK_ERROR) {
    ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(-n), 0);
    n = ml_vocab_tokenize(v, s, len, add_bos, add_eos, special, ids, -n);
  }
  if (n == ML_TOK_ERROR || n < 0) return ml_lua_error(L);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* An error about the ids read by read_token_ids, raised against argument `arg`; `entry` > 0
 * when they are that entry of a batch (the ids sit at a stack slot, not an argument). */
static int ids_error(lua_State *L, int arg, int entry, const char *msg) {
  if (entry > 0) msg = lua_pushfstring(L, "entry %d: %s", entry, msg);
  return luaL_argerror(L, arg, msg);
}

/* ids from a table (or i32 tensor, or one number) at stack slot i, bounds-checked against the
 * vocabulary; errors blame argument `arg` (and batch entry `entry`, when > 0) */
static int32_t *read_token_ids(lua_State *L, int i, int arg, int entry, int64_t n_vocab, int64_t *n) {
  ml_tensor *t = ml_lua_test_tensor(L, i);
  if (!t && lua_type(L, i) == LUA_TNUMBER) {
    int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t), 0);
    int ok;
    lua_Integer v = lua_tointegerx(L, i, &ok);
    if (!ok) ids_error(L, arg, entry, "the token id is not an integer");
    if (v < 0 || v >= n_vocab) ids_error(L, arg, entry, ml_push_id_range(L, v, n_vocab));
    ids[0] = (int32_t)v;
    *n = 1;
    return ids;
  }
  if (!t && !lua_istable(L, i))
    ids_error(L, arg, entry, lua_pushfstring(L, "table of token ids expected, got %s", luaL_typename(L, i)));
  *n = t ? ml_tensor_numel(t) : (int64_t)lua_rawlen(L, i);
  int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(*n ? *n : 1), 0);
  for (int64_t k = 0; k < *n; k++) {
    lua_Integer v;
    if (t) {
      double d = ml_tensor_get_flat(t, k);
      v = d >= -9.2e18 && d <= 9.2e18 ? (lua_Integer)d : -1; /* the cast of a larger double is undefined */
      if ((double)v != d) ids_error(L, arg, entry, lua_pushfstring(L, "item %d is not an integer", (int)k + 1));
    } else {
      lua_rawgeti(L, i, (lua_Integer)k + 1);
      int ok;
      v = lua_tointegerx(L, -1, &ok);
      if (!ok) ids_error(L, arg, entry, lua_pushfstring(L, "item %d is not an integer token id", (int)k + 1));
      lua_pop(L, 1);
    }
    if (v < 0 || v >= n_vocab) ids_error(L, arg, entry, ml_push_id_range(L, v, n_vocab));
    ids[k] = (int32_t)v;
  }
  return ids;
}

/* A sequence id at argument `arg`, checked as given before it becomes an int (2^32 + 5 is out
 * of range, not sequence 5) */
static int check_seq(lua_State *L, lcontext *u, int arg, lua_Integer v) {
  int ns = ml_context_n_seq(u->c);
  if (v < 0 || v >= ns) {
    char buf[128];
    snprintf(buf, sizeof buf, "sequence %lld out of range (the context has %d: 0 to %d)", (long long)v, ns, ns - 1);
    luaL_argerror(L, arg, buf);
  }
  return (int)v;
}

static int flags_from(lua_State *L, int i) {
  /* { special = bool, remove_special = bool, strip_space = bool, clean_spaces = bool } */
  int f = 0;
  if (opt_bool(L, i, "special", 0)) f |= ML_DETOK_SPECIAL;
  if (opt_bool(L, i, "remove_special", 0)) f |= ML_DETOK_REMOVE_SPECIAL;
  if (opt_bool(L, i, "strip_space", 1)) f |= ML_DETOK_STRIP_SPACE;
  if (opt_bool(L, i, "clean_spaces", 0)) f |= ML_DETOK_CLEAN_SPACES;
  return f;
}

/* detokenize(ids, opts) -> text */
static int m_detokenize(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const ml_vocab *v = check_vocab(L, u);
  int64_t n;
  int32_t *ids = read_token_ids(L, 2, 2, 0, ml_vocab_get_info(v)->n_tokens, &n);
  int flags = flags_from(L, 3);
  char stackbuf[1024], *buf = stackbuf;
  int64_t r = ml_vocab_detokenize(v, ids, n, flags, buf, sizeof stackbuf);
  if (r < 0 && r != ML_TOK_ERROR) {
    buf = lua_newuserdatauv(L, (size_t)(-r), 0);
    r = ml_vocab_detokenize(v, ids, n, flags, buf, (size_t)(-r));
  }
  if (r < 0) return ml_lua_error(L);
  lua_pushlstring(L, buf, (size_t)r);
  return 1;
}

/* piece(id, special) -> bytes of one token */
static int m_piece(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const ml_vocab *v = check_vocab(L, u);
  int64_t n;
  int32_t *ids = read_token_ids(L, 2, 2, 0, ml_vocab_get_info(v)->n_tokens, &n);
  char buf[512];
  int64_t r = ml_vocab_piece(v, ids[0], lua_toboolean(L, 3) ? ML_DETOK_SPECIAL : 0, buf, sizeof buf);
  if (r < 0 && r != ML_TOK_ERROR) {
    char *big = lua_newuserdatauv(L, (size_t)(-r), 0);
    r = ml_vocab_piece(v, ids[0], lua_toboolean(L, 3) ? ML_DETOK_SPECIAL : 0, big, (size_t)(-r));
    if (r < 0) return ml_lua_error(L);
    lua_pushlstring(L, big, (size_t)r);
    return 1;
  }
  if (r < 0) return ml_lua_error(L);
  lua_pushlstring(L, buf, (size_t)r);
  return 1;
}

/* token(id) -> text (as stored), score, type name, is_eog */
static int m_token(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const ml_vocab *v = check_vocab(L, u);
  int64_t n;
  int32_t *ids = read_token_ids(L, 2, 2, 0, ml_vocab_get_info(v)->n_tokens, &n);
  size_t len;
  const char *s = ml_vocab_token_text(v, ids[0], &len);
  static const char *types[] = {"undefined", "normal", "unknown", "control", "user_defined", "unused", "byte"};
  int ty = ml_vocab_token_type(v, ids[0]);
  lua_pushlstring(L, s ? s : "", s ? len : 0);
  lua_pushnumber(L, ml_vocab_token_score(v, ids[0]));
  lua_pushstring(L, ty >= 0 && ty <= 6 ? types[ty] : "undefined");
  lua_pushboolean(L, ml_vocab_is_eog(v, ids[0]));
  return 4;
}

/* find_token(text) -> id | nil */
static int m_find_token(lua_State *L) {
  lmodel *u = check_model(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int32_t id = ml_vocab_find(check_vocab(L, u), s, len);
  if (id < 0) return 0;
  lua_pushinteger(L, id);
  return 1;
}

/* ---- streaming decoder ---- */

static int m_decoder(lua_State *L) {
  lmodel *u = check_model(L, 1);
  const ml_vocab *v = check_vocab(L, u);
  int flags = 0;
  if (opt_bool(L, 2, "special", 0)) flags |= ML_DETOK_SPECIAL;
  if (opt_bool(L, 2, "strip_space", 0)) flags |= ML_DETOK_STRIP_SPACE;
  ldecoder *d = lua_newuserdatauv(L, sizeof *d, 0);
  d->d = NULL;
  d->m = NULL;
  luaL_setmetatable(L, DECODER_MT);
  d->d = ml_decoder_new(v, flags);
  if (!d->d) return ml_lua_error(L);
  d->m = u->m;
  ml_model_retain(u->m);
  return 1;
}

static ldecoder *check_decoder(lua_State *L) {
  ldecoder *d = luaL_checkudata(L, 1, DECODER_MT);
  if (!d->d) luaL_argerror(L, 1, "decoder has been closed");
  return d;
}

/* decoder:push(id) -> text ready (maybe "") */
static int d_push(lua_State *L) {
  ldecoder *d = check_decoder(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  int64_t nv = ml_vocab_get_info(d->m->vocab)->n_tokens;
  if (id < 0 || id >= nv)
    return luaL_argerror(L, 2, ml_push_id_range(L, id, nv));
  const char *out;
  int64_t n = ml_decoder_push(d->d, (int32_t)id, &out);
  if (n < 0) return ml_lua_error(L);
  lua_pushlstring(L, out, (size_t)n);
  return 1;
}

static int d_flush(lua_State *L) {
  ldecoder *d = check_decoder(L);
  const char *out;
  int64_t n = ml_decoder_flush(d->d, &out);
  if (n < 0) return ml_lua_error(L);
  lua_pushlstring(L, out, (size_t)n);
  return 1;
}

static int d_reset(lua_State *L) {
  ml_decoder_reset(check_decoder(L)->d);
  return 0;
}

static int d_gc(lua_State *L) {
  ldecoder *d = luaL_checkudata(L, 1, DECODER_MT);
  ml_decoder_free(d->d);
  ml_model_release(d->m);
  d->d = NULL;
  d->m = NULL;
  return 0;
}

/* ---- contexts ---- */

static lcontext *push_context(lua_State *L) {
  lcontext *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->c = NULL;
  u->logits = NULL;
  luaL_setmetatable(L, CONTEXT_MT);
  return u;
}

/* model:context{ n_ctx, n_batch, kv_type, seqs, embeddings } -> context | nil, err */
static int m_context(lua_State *L) {
  lmodel *u = check_model(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  ml_context_opts o;
  memset(&o, 0, sizeof o);
  o.n_ctx = opt_int(L, 2, "n_ctx", 0);
  o.n_batch = opt_int(L, 2, "n_batch", 0);
  lua_Integer seqs = opt_int(L, 2, "seqs", 1);
  if (seqs > ML_MAX_SEQ) { /* as given: 2^32 + 1 would be 1 as an int */
    char buf[96];
    snprintf(buf, sizeof buf, "seqs = %lld: at most %d sequences", (long long)seqs, ML_MAX_SEQ);
    return luaL_argerror(L, 2, buf);
  }
  o.n_seq = (int)seqs;
  o.embeddings = opt_bool(L, 2, "embeddings", 0);
  const char *kv = opt_str(L, 2, "kv_type", "f16");
  o.kv_type = ml_type_from_name(kv);
  if (o.n_ctx < 0) return luaL_argerror(L, 2, "n_ctx must be positive");
  if (o.kv_type != ML_TYPE_F16 && o.kv_type != ML_TYPE_F32 && o.kv_type != ML_TYPE_Q8_0)
    return luaL_argerror(L, 2, lua_pushfstring(L, "kv_type must be f16, f32 or q8_0, got '%s'", kv));
  lcontext *c = push_context(L);
  c->c = ml_context_new(u->m, &o);
  if (!c->c) return ml_lua_fail(L, 2);
  return 1;
}

static int l_attach_context(lua_State *L) {
  lua_Integer h = luaL_checkinteger(L, 1);
  lcontext *c = push_context(L);
  c->c = ml_registry_context(h);
  if (!c->c) {
    ml_push_int(L, h);
    lua_pushnil(L);
    lua_pushfstring(L, "no context with handle %s", lua_tostring(L, -2));
    return 2;
  }
  return 1;
}

static int c_gc(lua_State *L) {
  lcontext *u = luaL_checkudata(L, 1, CONTEXT_MT);
  ml_context_release(u->c);
  if (u->logits) ml_storage_release(u->logits);
  u->c = NULL;
  u->logits = NULL;
  return 0;
}

/* A tensor over the context's logits storage, reusing it when nobody else holds it. */
static ml_tensor *logits_tensor(lua_State *L, lcontext *u, int64_t rows, int64_t n_vocab, int vector) {
  size_t need = sizeof(float) * (size_t)(rows * n_vocab);
  if (u->logits && (u->logits->refcount != 1 || u->logits->nbytes < need)) {
    ml_storage_release(u->logits);
    u->logits = NULL;
  }
  if (!u->logits) {
    if (!(u->logits = ml_storage_new(need))) ml_lua_error(L);
    /* the collector cannot see this memory: account for it so old logits are freed soon */
    lua_gc(L, LUA_GCSTEP, (int)(need >> 10));
  }
  ml_tensor *t = ml_lua_push_tensor(L);
  int64_t shape[2] = {rows, n_vocab};
  if (ml_tensor_init_on(t, u->logits, 0, ML_TYPE_F32, vector ? 1 : 2, vector ? shape + 1 : shape) < 0) ml_lua_error(L);
  return t;
}

/* ml_context_decode's misuse of its ids (input 2) or sequences (3) raised against the Lua
 * arguments holding them; a failure (context full, busy) is nil, err */
static int decode_error(lua_State *L, int ids_arg, int opts_arg) {
  int input = ml_errinput();
  return ml_lua_fail(L, input == 2 ? ids_arg : input == 3 ? opts_arg : 0);
}

/* ctx:decode(ids, { seq = 0, logits = "last" | "all" | "none", embeddings = false })
 *   -> logits tensor ({n_vocab}, or {n, n_vocab} with "all") | nil, err */
static int c_decode(lua_State *L) {
  lcontext *u = check_context(L, 1);
  ml_model *m = ml_context_model(u->c);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  int64_t n;
  int32_t *ids = read_token_ids(L, 2, 2, 0, m->hp.n_vocab, &n); /* 4 */
  if (n == 0) return luaL_argerror(L, 2, "nothing to decode (no tokens)");
  int seq = check_seq(L, u, 3, opt_int(L, 3, "seq", 0));
  const char *mode = opt_str(L, 3, "logits", "last");
  int all = strcmp(mode, "all") == 0, none = strcmp(mode, "none") == 0;
  if (!all && !none && strcmp(mode, "last") != 0)
    return luaL_argerror(L, 3, lua_pushfstring(L, "logits must be \"last\", \"all\" or \"none\", got \"%s\"", mode));
  int32_t *seqs = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)n, 0);
  uint8_t *want = lua_newuserdatauv(L, (size_t)n, 0);
  for (int64_t i = 0; i < n; i++) {
    seqs[i] = seq;
    want[i] = !none && (all || i == n - 1);
  }
  int64_t rows = none ? 0 : all ? n : 1;
  ml_tensor *t = NULL;
  if (rows) t = logits_tensor(L, u, rows, m->hp.n_vocab, !all);
  if (ml_context_decode(u->c, n, ids, seqs, want, t ? ml_tensor_data(t) : NULL, NULL) < 0) return decode_error(L, 2, 3);
  if (!rows) lua_pushboolean(L, 1);
  return 1;
}

/* ctx:decode_batch({ {ids, seq = s, logits = "last"|"all"|"none"}, ... })
 *   -> { logits tensors, one per entry (nil for "none") } | nil, err
 * All entries are decoded together in one forward pass (continuous batching). */
static int c_decode_batch(lua_State *L) {
  lcontext *u = check_context(L, 1);
  ml_model *m = ml_context_model(u->c);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  int ne = (int)lua_rawlen(L, 2);
  if (ne == 0) return luaL_argerror(L, 2, "empty batch");
  int64_t total = 0, nrows = 0;
  lua_createtable(L, ne, 0); /* 3: id arrays, kept alive */
  int64_t *counts = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)ne * 2, 0); /* 4 */
  for (int e = 1; e <= ne; e++) {
    lua_rawgeti(L, 2, e);
    if (!lua_istable(L, -1)) return luaL_argerror(L, 2, lua_pushfstring(L, "entry %d is not a table", e));
    int ent = lua_gettop(L);
    lua_rawgeti(L, ent, 1);
    int64_t n;
    read_token_ids(L, lua_gettop(L), 2, e, m->hp.n_vocab, &n);
    if (n == 0) return luaL_argerror(L, 2, lua_pushfstring(L, "entry %d has no tokens", e));
    lua_rawseti(L, 3, e); /* the id userdata */
    lua_pop(L, 1);        /* the ids table */
    const char *mode = opt_str(L, ent, "logits", "last");
    int64_t r = strcmp(mode, "all") == 0 ? n : strcmp(mode, "none") == 0 ? 0 : 1;
    counts[2 * (e - 1)] = n;
    counts[2 * (e - 1) + 1] = r;
    total += n;
    nrows += r;
    lua_pop(L, 1);
  }
  int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)total, 0);
  int32_t *seqs = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)total, 0);
  uint8_t *want = lua_newuserdatauv(L, (size_t)total, 0);
  int64_t at = 0;
  for (int e = 1; e <= ne; e++) {
    lua_rawgeti(L, 2, e);
    int seq = check_seq(L, u, 2, opt_int(L, lua_gettop(L), "seq", 0));
    lua_pop(L, 1);
    lua_rawgeti(L, 3, e);
    const int32_t *src = lua_touserdata(L, -1);
    lua_pop(L, 1);
    int64_t n = counts[2 * (e - 1)], r = counts[2 * (e - 1) + 1];
    for (int64_t i = 0; i < n; i++) {
      ids[at + i] = src[i];
      seqs[at + i] = seq;
      want[at + i] = r == n || (r == 1 && i == n - 1);
    }
    at += n;
  }
  float *logits = nrows ? lua_newuserdatauv(L, sizeof(float) * (size_t)(nrows * m->hp.n_vocab), 0) : NULL;
  if (ml_context_decode(u->c, total, ids, seqs, want, logits, NULL) < 0) return decode_error(L, 2, 2);
  lua_createtable(L, ne, 0);
  int64_t row = 0;
  for (int e = 1; e <= ne; e++) {
    int64_t n = counts[2 * (e - 1)], r = counts[2 * (e - 1) + 1];
    if (r == 0) continue;
    ml_tensor *t = ml_lua_push_tensor(L);
    int64_t shape[2] = {r, m->hp.n_vocab};
    int vec = r == 1 && n >= 1 && !(r == n && n > 1);
    if (ml_tensor_init(t, ML_TYPE_F32, vec ? 1 : 2, vec ? shape + 1 : shape) < 0) return ml_lua_error(L);
    memcpy(ml_tensor_data(t), logits + row * m->hp.n_vocab, sizeof(float) * (size_t)(r * m->hp.n_vocab));
    row += r;
    lua_rawseti(L, -2, e);
  }
  return 1;
}

/* ctx:embed(ids, seq) -> hidden state after the final norm for every token {n, n_embd} */
/* ctx:hidden(ids [, seq]) -> final hidden states {n, n_embd} (after the output norm), or
 * ctx:hidden({ ids1, ids2, ... }) -> { {n1, n_embd}, ... }: text i in sequence i-1, all in
 * one forward pass (the context needs that many sequences). */
static int c_hidden(lua_State *L) {
  lcontext *u = check_context(L, 1);
  ml_model *m = ml_context_model(u->c);
  lua_settop(L, 3);
  int batch = 0;
  if (lua_istable(L, 2)) {
    lua_rawgeti(L, 2, 1);
    batch = lua_istable(L, -1);
    lua_pop(L, 1);
  }
  int ne = batch ? (int)lua_rawlen(L, 2) : 1;
  if (batch && ne > ml_context_n_seq(u->c))
    return luaL_argerror(L, 2, lua_pushfstring(L, "%d texts, but the context has %d sequences", ne, ml_context_n_seq(u->c)));
  int64_t *counts = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)ne, 0); /* 4 */
  lua_createtable(L, ne, 0);                                                   /* 5: id arrays */
  int64_t total = 0;
  for (int e = 1; e <= ne; e++) {
    if (batch) lua_rawgeti(L, 2, e);
    else lua_pushvalue(L, 2);
    int64_t n;
    read_token_ids(L, lua_gettop(L), 2, batch ? e : 0, m->hp.n_vocab, &n);
    if (n == 0) return luaL_argerror(L, 2, "nothing to decode (no tokens)");
    lua_rawseti(L, 5, e);
    lua_pop(L, 1);
    counts[e - 1] = n;
    total += n;
  }
  int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)total, 0);
  int32_t *seqs = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)total, 0);
  uint8_t *want = lua_newuserdatauv(L, (size_t)total, 0);
  int seq0 = batch ? 0 : check_seq(L, u, 3, luaL_optinteger(L, 3, 0));
  for (int e = 0, at = 0; e < ne; e++) {
    lua_rawgeti(L, 5, e + 1);
    const int32_t *src = lua_touserdata(L, -1);
    lua_pop(L, 1);
    for (int64_t i = 0; i < counts[e]; i++, at++) {
      ids[at] = src[i];
      seqs[at] = seq0 + e;
      want[at] = 1;
    }
  }
  ml_tensor *all = ml_lua_push_tensor(L);
  int64_t shape[2] = {total, m->hp.n_embd};
  if (ml_tensor_init(all, ML_TYPE_F32, 2, shape) < 0) return ml_lua_error(L);
  if (ml_context_decode(u->c, total, ids, seqs, want, NULL, ml_tensor_data(all)) < 0) return decode_error(L, 2, 3);
  if (!batch) return 1;
  lua_createtable(L, ne, 0);
  for (int e = 0, at = 0; e < ne; e++) {
    ml_tensor *t = ml_lua_push_tensor(L);
    if (ml_tensor_narrow(t, all, 0, at, counts[e]) < 0) return ml_lua_error(L);
    at += (int)counts[e];
    lua_rawseti(L, -2, e + 1);
  }
  return 1;
}

static int seq_arg(lua_State *L, lcontext *u, int i) { return check_seq(L, u, i, luaL_optinteger(L, i, 0)); }

static int c_pos(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int64_t p = ml_context_pos(u->c, seq_arg(L, u, 2));
  if (p < 0) return ml_lua_error(L);
  lua_pushinteger(L, (lua_Integer)p);
  return 1;
}

static int c_clear(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int seq = lua_isnoneornil(L, 2) ? -1 : check_seq(L, u, 2, luaL_checkinteger(L, 2));
  if (ml_context_clear(u->c, seq) < 0) return ml_lua_error(L);
  return 0;
}

static int c_truncate(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int seq = check_seq(L, u, 2, luaL_checkinteger(L, 2));
  lua_Integer n = luaL_checkinteger(L, 3);
  int64_t kept = ml_context_truncate(u->c, seq, n);
  if (kept < 0) return ml_lua_error(L);
  lua_pushinteger(L, (lua_Integer)kept);
  return 1;
}

/* ctx:shift(seq, n_keep, n_discard): see ml_context_shift */
static int c_shift(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int seq = check_seq(L, u, 2, luaL_checkinteger(L, 2));
  lua_Integer keep = luaL_checkinteger(L, 3), discard = luaL_checkinteger(L, 4);
  if (ml_context_shift(u->c, seq, keep, discard) < 0) {
    if (ml_errclass_get() == ML_ERR_MISUSE) return ml_lua_error(L);
    return ml_lua_fail(L, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int c_copy(lua_State *L) {
  lcontext *u = check_context(L, 1);
  if (ml_context_copy(u->c, check_seq(L, u, 2, luaL_checkinteger(L, 2)), check_seq(L, u, 3, luaL_checkinteger(L, 3))) < 0) return ml_lua_error(L);
  return 0;
}

static int c_info(lua_State *L) {
  lcontext *u = check_context(L, 1);
  lua_newtable(L);
  set_int(L, "n_ctx", ml_context_n_ctx(u->c));
  set_int(L, "seqs", ml_context_n_seq(u->c));
  set_int(L, "used", ml_context_used(u->c));
  set_int(L, "handle", ml_context_handle(u->c));
  set_int(L, "model_handle", ml_model_handle(ml_context_model(u->c)));
  lua_pushstring(L, ml_type_traits_get(ml_context_kv_type(u->c))->name);
  lua_setfield(L, -2, "kv_type");
  set_int(L, "kv_bytes", (int64_t)ml_context_kv_bytes(u->c));
  return 1;
}

/* state_save(seq) -> bytes; state_load(seq, bytes) -> true | nil, err */
static int c_state_save(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int seq = seq_arg(L, u, 2);
  size_t n = ml_context_state_size(u->c, seq);
  if (!n) return ml_lua_error(L);
  void *buf = lua_newuserdatauv(L, n, 0);
  if (ml_context_state_save(u->c, seq, buf, n) < 0) return ml_lua_error(L);
  lua_pushlstring(L, buf, n);
  return 1;
}

static int c_state_load(lua_State *L) {
  lcontext *u = check_context(L, 1);
  int seq = seq_arg(L, u, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  if (ml_context_state_load(u->c, seq, s, len) < 0) return ml_lua_fail(L, 0);
  lua_pushboolean(L, 1);
  return 1;
}

static int c_model(lua_State *L) {
  lcontext *u = check_context(L, 1);
  lmodel *m = push_model(L);
  m->m = ml_context_model(u->c);
  ml_model_retain(m->m);
  return 1;
}

static const luaL_Reg model_methods[] = {
  {"info", m_info}, {"meta", m_meta}, {"prepare", m_prepare}, {"tensor", m_tensor}, {"tensor_names", m_tensor_names},
  {"vocab", m_vocab}, {"tokenize", m_tokenize}, {"detokenize", m_detokenize}, {"piece", m_piece},
  {"token", m_token}, {"find_token", m_find_token}, {"decoder", m_decoder}, {"context", m_context},
  {"close", m_gc}, {NULL, NULL}};

static const luaL_Reg context_methods[] = {
  {"decode", c_decode}, {"decode_batch", c_decode_batch}, {"hidden", c_hidden}, {"pos", c_pos},
  {"clear", c_clear}, {"truncate", c_truncate}, {"shift", c_shift}, {"copy", c_copy}, {"info", c_info},
  {"state_save", c_state_save}, {"state_load", c_state_load}, {"model", c_model}, {"close", c_gc},
  {NULL, NULL}};

static const luaL_Reg decoder_methods[] = {
  {"push", d_push}, {"flush", d_flush}, {"reset", d_reset}, {"close", d_gc}, {NULL, NULL}};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  ml_register_names(L, "");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

static const luaL_Reg funcs[] = {
  {"load", l_load}, {"attach_model", l_attach_model}, {"attach_context", l_attach_context}, {NULL, NULL}};

void ml_lua_open_model(lua_State *L) {
  new_class(L, MODEL_MT, model_methods, m_gc);
  new_class(L, CONTEXT_MT, context_methods, c_gc);
  new_class(L, DECODER_MT, decoder_methods, d_gc);
  luaL_newmetatable(L, WLINK_MT);
  lua_pushcfunction(L, wlink_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
