/* lua_grammar.c: grammars, matchers and grammar vocabularies as userdata (moonlm.grammar).
 *
 *   G.gbnf(text [, { root = "root" }]), G.regex(pattern), G.choice{ ... } -> g | nil, err
 *   G.attach(handle) -> g | nil, err      (a grammar another Lua state compiled)
 *   G.vocab({ token bytes... } [, { eog = { ids } }]) -> a vocabulary for matchers (0-based ids)
 *   G.apply(logits, mask) -> logits       (-inf where mask is 0)
 *   g.handle, g:stats(), g:matcher(model | vocab [, opts]) -> m
 *   m:mask([out]), m:accept(id), m:accept_text(s), m:allows(id), m:can_end(), m:is_done(),
 *   m:is_active(), m:reset(), m:rollback(n), m:n_accepted(), m:forced(), m:forced_tokens(),
 *   m:apply(logits)
 * Token ids are 0-based, as everywhere in moonlm.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "grammar.h"
#include "lua_internal.h"
#include "lua_tensor.h"
#include "model.h"

#define GRAMMAR_MT "moonlm.grammar"
#define MATCHER_MT "moonlm.matcher"
#define GVOCAB_MT "moonlm.gvocab"

typedef struct lgrammar { ml_grammar *g; } lgrammar;
typedef struct lgvocab { ml_gvocab *v; } lgvocab;
typedef struct lmatcher {
  ml_matcher *m;
  ml_model *model; /* retained when made from a model: its tokenizer, for forced_tokens */
} lmatcher;

static lgrammar *check_grammar(lua_State *L, int i) {
  lgrammar *u = luaL_testudata(L, i, GRAMMAR_MT);
  if (!u) luaL_argerror(L, i, lua_pushfstring(L, "grammar expected, got %s", luaL_typename(L, i)));
  if (!u->g) luaL_argerror(L, i, "grammar has been closed");
  return u;
}

static lmatcher *check_matcher(lua_State *L, int i) {
  lmatcher *u = luaL_testudata(L, i, MATCHER_MT);
  if (!u) luaL_argerror(L, i, lua_pushfstring(L, "matcher expected, got %s", luaL_typename(L, i)));
  if (!u->m) luaL_argerror(L, i, "matcher has been closed");
  return u;
}

ml_matcher *ml_lua_test_matcher(lua_State *L, int i) {
  lmatcher *u = luaL_testudata(L, i, MATCHER_MT);
  return u ? u->m : NULL;
}

static lgrammar *push_grammar(lua_State *L) {
  lgrammar *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->g = NULL;
  luaL_setmetatable(L, GRAMMAR_MT);
  return u;
}

static int result(lua_State *L, lgrammar *u, ml_grammar *g) {
  if (!g) {
    lua_pushnil(L);
    lua_pushstring(L, ml_errmsg());
    return 2;
  }
  u->g = g;
  return 1;
}

/* Refuse options a function does not know (a typo must not be silently ignored). */
static void check_options(lua_State *L, int t, const char *const *known) {
  if (lua_isnoneornil(L, t)) return;
  luaL_checktype(L, t, LUA_TTABLE);
  ml_lua_known_options(L, t, t, known);
}

/* gbnf(text [, { root = name }]) */
static int l_gbnf(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  static const char *const known[] = {"root", NULL};
  check_options(L, 2, known);
  ml_grammar_opts o = {NULL};
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "root");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "option 'root' must be a string");
      o.root = lua_tostring(L, -1);
    }
  }
  lgrammar *u = push_grammar(L);
  return result(L, u, ml_grammar_gbnf(text, len, &o));
}

static int l_regex(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 1, &len);
  lgrammar *u = push_grammar(L);
  return result(L, u, ml_grammar_regex(p, len));
}

/* choice{ "a", "b", ... } */
static int l_choice(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t n = lua_rawlen(L, 1);
  if (n == 0) return luaL_argerror(L, 1, "empty list of choices");
  const char **items = lua_newuserdatauv(L, n * sizeof *items, 0);
  size_t *lens = lua_newuserdatauv(L, n * sizeof *lens, 0);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 1, lua_pushfstring(L, "choice %d is a %s, not a string", (int)i + 1, luaL_typename(L, -1)));
    items[i] = lua_tolstring(L, -1, &lens[i]);
    lua_pop(L, 1); /* the string stays alive in the table */
  }
  lgrammar *u = push_grammar(L);
  return result(L, u, ml_grammar_choice(items, lens, n));
}

static int l_attach(lua_State *L) {
  lua_Integer h = luaL_checkinteger(L, 1);
  lgrammar *u = push_grammar(L);
  u->g = ml_registry_grammar(h);
  if (!u->g) {
    ml_push_int(L, h);
    lua_pushnil(L);
    lua_pushfstring(L, "no grammar with handle %s", lua_tostring(L, -2));
    return 2;
  }
  return 1;
}

/* vocab({ bytes, ... } [, { eog = { ids } }]): token i is list[i + 1]; false for a token
 * that is never text */
static int l_vocab(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const known[] = {"eog", NULL};
  check_options(L, 2, known);
  size_t n = lua_rawlen(L, 1);
  if (n > (size_t)INT32_MAX - 1) return luaL_argerror(L, 1, "too many tokens");
  const char **toks = lua_newuserdatauv(L, (n + 1) * sizeof *toks, 0);
  size_t *lens = lua_newuserdatauv(L, (n + 1) * sizeof *lens, 0);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    if (lua_type(L, -1) == LUA_TSTRING) toks[i] = lua_tolstring(L, -1, &lens[i]);
    else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) toks[i] = NULL, lens[i] = 0;
    else return luaL_argerror(L, 1, lua_pushfstring(L, "token %d is a %s (string or false expected)", (int)i, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  int32_t *eog = NULL;
  int32_t n_eog = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "eog");
    if (!lua_isnil(L, -1)) {
      if (!lua_istable(L, -1)) return luaL_argerror(L, 2, "option 'eog' must be a list of token ids");
      size_t k = lua_rawlen(L, -1);
      eog = lua_newuserdatauv(L, (k + 1) * sizeof *eog, 0);
      for (size_t i = 0; i < k; i++) {
        lua_rawgeti(L, -2, (lua_Integer)i + 1);
        int ok;
        lua_Integer id = lua_tointegerx(L, -1, &ok);
        if (!ok || id < 0 || (size_t)id >= n)
          return luaL_argerror(L, 2, lua_pushfstring(L, "eog: token id %s out of range (%d tokens)", ml_push_int(L, id), (int)n));
        eog[n_eog++] = (int32_t)id;
        lua_pop(L, 1);
      }
    }
  }
  lgvocab *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->v = NULL;
  luaL_setmetatable(L, GVOCAB_MT);
  u->v = ml_gvocab_from_tokens(toks, lens, (int32_t)n, eog, n_eog);
  if (!u->v) return ml_lua_error(L);
  return 1;
}

static int v_gc(lua_State *L) {
  lgvocab *u = luaL_checkudata(L, 1, GVOCAB_MT);
  ml_gvocab_release(u->v);
  u->v = NULL;
  return 0;
}

static int v_n_vocab(lua_State *L) {
  lgvocab *u = luaL_checkudata(L, 1, GVOCAB_MT);
  if (!u->v) return luaL_argerror(L, 1, "vocabulary has been closed");
  lua_pushinteger(L, ml_gvocab_n_vocab(u->v));
  return 1;
}

/* ---- grammars ---- */

static int g_gc(lua_State *L) {
  lgrammar *u = luaL_checkudata(L, 1, GRAMMAR_MT);
  ml_grammar_release(u->g);
  u->g = NULL;
  return 0;
}

static int g_stats(lua_State *L) {
  lgrammar *u = check_grammar(L, 1);
  ml_grammar_stats s;
  ml_grammar_get_stats(u->g, &s);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, s.n_rules);
  lua_setfield(L, -2, "rules");
  lua_pushinteger(L, s.n_machines);
  lua_setfield(L, -2, "machines");
  lua_pushinteger(L, s.n_states);
  lua_setfield(L, -2, "states");
  lua_pushinteger(L, s.n_nfa);
  lua_setfield(L, -2, "nfa_states");
  lua_pushinteger(L, s.n_classes);
  lua_setfield(L, -2, "classes");
  lua_pushinteger(L, (lua_Integer)s.bytes);
  lua_setfield(L, -2, "bytes");
  return 1;
}

/* a list of strings or integers at the top of the stack (field of the options) */
static size_t list_len(lua_State *L, int opts, const char *name, int type) {
  if (lua_isnil(L, -1)) return 0;
  if (!lua_istable(L, -1)) luaL_argerror(L, opts, lua_pushfstring(L, "option '%s' must be a list", name));
  size_t n = lua_rawlen(L, -1);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    int ok = type == LUA_TSTRING ? lua_type(L, -1) == LUA_TSTRING : lua_type(L, -1) == LUA_TNUMBER;
    if (!ok)
      luaL_argerror(L, opts, lua_pushfstring(L, "option '%s': item %d must be a %s", name, (int)i + 1,
                                              type == LUA_TSTRING ? "string" : "token id"));
    lua_pop(L, 1);
  }
  return n;
}

/* matcher(model | vocab [, { lazy = true, triggers = { words }, trigger_tokens = { ids } }]) */
static int g_matcher(lua_State *L) {
  lgrammar *gu = check_grammar(L, 1);
  static const char *const known[] = {"lazy", "triggers", "trigger_tokens", NULL};
  check_options(L, 3, known);
  ml_gvocab *v = NULL;
  ml_model *model = NULL;
  lgvocab *vu = luaL_testudata(L, 2, GVOCAB_MT);
  if (vu) {
    if (!vu->v) return luaL_argerror(L, 2, "vocabulary has been closed");
    v = vu->v;
  } else {
    int idx = 2;
    if (lua_istable(L, 2)) {
      lua_getfield(L, 2, "_ud");
      idx = lua_gettop(L);
    }
    model = ml_lua_test_model(L, idx);
    if (!model) return luaL_argerror(L, 2, lua_pushfstring(L, "model or vocabulary expected, got %s", luaL_typename(L, 2)));
  }
  ml_matcher_opts o;
  memset(&o, 0, sizeof o);
  const char **words = NULL;
  size_t *wlens = NULL;
  int32_t *toks = NULL;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "lazy");
    o.lazy = lua_toboolean(L, -1);
    lua_getfield(L, 3, "triggers");
    size_t nw = list_len(L, 3, "triggers", LUA_TSTRING);
    words = lua_newuserdatauv(L, (nw + 1) * sizeof *words, 0);
    wlens = lua_newuserdatauv(L, (nw + 1) * sizeof *wlens, 0);
    for (size_t i = 0; i < nw; i++) {
      lua_rawgeti(L, -3, (lua_Integer)i + 1);
      words[i] = lua_tolstring(L, -1, &wlens[i]);
      if (wlens[i] == 0) return luaL_argerror(L, 3, "option 'triggers': empty trigger word");
      lua_pop(L, 1);
    }
    lua_getfield(L, 3, "trigger_tokens");
    size_t nt = list_len(L, 3, "trigger_tokens", LUA_TNUMBER);
    toks = lua_newuserdatauv(L, (nt + 1) * sizeof *toks, 0);
    for (size_t i = 0; i < nt; i++) {
      lua_rawgeti(L, -2, (lua_Integer)i + 1);
      toks[i] = (int32_t)lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
    if ((nw || nt) && !o.lazy) return luaL_argerror(L, 3, "triggers need lazy = true");
    o.trigger_words = words;
    o.trigger_lens = wlens;
    o.n_trigger_words = (int32_t)nw;
    o.trigger_tokens = toks;
    o.n_trigger_tokens = (int32_t)nt;
  }
  lmatcher *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->m = NULL;
  u->model = NULL;
  luaL_setmetatable(L, MATCHER_MT);
  if (model) {
    v = ml_model_gvocab(model);
    if (!v) return ml_lua_error(L);
    ml_model_retain(model);
    u->model = model;
  } else {
    ml_gvocab_retain(v);
  }
  u->m = ml_matcher_new(gu->g, v, &o);
  ml_gvocab_release(v); /* the matcher holds its own reference */
  if (!u->m) {
    if (o.lazy) return luaL_argerror(L, 3, ml_errmsg());
    return ml_lua_error(L);
  }
  return 1;
}

static int g_index(lua_State *L) {
  lgrammar *u = luaL_checkudata(L, 1, GRAMMAR_MT);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "handle") == 0) {
    if (!u->g) return 0;
    lua_pushinteger(L, (lua_Integer)ml_grammar_handle(u->g));
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

/* ---- matchers ---- */

static int mt_gc(lua_State *L) {
  lmatcher *u = luaL_checkudata(L, 1, MATCHER_MT);
  ml_matcher_free(u->m);
  u->m = NULL;
  ml_model_release(u->model);
  u->model = NULL;
  return 0;
}

static const uint64_t *mask_bits(lua_State *L, lmatcher *u) {
  const uint64_t *bits = ml_matcher_mask(u->m);
  if (!bits) ml_lua_error(L);
  return bits;
}

/* mask([out]) -> i8 tensor {n_vocab}: 1 allowed, 0 not */
static int mt_mask(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  int32_t n = ml_matcher_n_vocab(u->m);
  ml_tensor *t;
  if (!lua_isnoneornil(L, 2)) {
    t = ml_lua_check_writable(L, 2);
    if (t->type != ML_TYPE_I8 || !ml_tensor_is_contiguous(t) || ml_tensor_numel(t) != n)
      return luaL_argerror(L, 2, lua_pushfstring(L, "contiguous i8 tensor of %d elements expected", (int)n));
    lua_pushvalue(L, 2);
  } else {
    t = ml_lua_push_tensor(L);
    int64_t shape[1] = {n};
    if (ml_tensor_init(t, ML_TYPE_I8, 1, shape) < 0) return ml_lua_error(L);
  }
  const uint64_t *bits = mask_bits(L, u);
  ml_mask_to_i8(bits, ml_tensor_data(t), n);
  return 1;
}

static int32_t check_id(lua_State *L, lmatcher *u, int i) {
  lua_Integer id = luaL_checkinteger(L, i);
  int32_t n = ml_matcher_n_vocab(u->m);
  if (id < 0 || id >= n)
    luaL_argerror(L, i, ml_push_id_range(L, id, n));
  return (int32_t)id;
}

static int push_rc(lua_State *L, int rc) {
  if (rc < 0) return ml_lua_error(L);
  lua_pushboolean(L, rc);
  return 1;
}

static int mt_accept(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  return push_rc(L, ml_matcher_accept(u->m, check_id(L, u, 2)));
}

static int mt_allows(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  return push_rc(L, ml_matcher_allows(u->m, check_id(L, u, 2)));
}

static int mt_accept_text(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  return push_rc(L, ml_matcher_accept_bytes(u->m, s, len));
}

static int mt_can_end(lua_State *L) {
  lua_pushboolean(L, ml_matcher_can_end(check_matcher(L, 1)->m));
  return 1;
}

static int mt_is_done(lua_State *L) {
  lua_pushboolean(L, ml_matcher_is_done(check_matcher(L, 1)->m));
  return 1;
}

static int mt_is_active(lua_State *L) {
  lua_pushboolean(L, ml_matcher_is_active(check_matcher(L, 1)->m));
  return 1;
}

static int mt_reset(lua_State *L) {
  ml_matcher_reset(check_matcher(L, 1)->m);
  return 0;
}

static int mt_rollback(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  int32_t have = ml_matcher_n_accepted(u->m);
  if (n < 0 || n > have)
    return luaL_argerror(L, 2, lua_pushfstring(L, "cannot roll back %s steps (%d accepted)", ml_push_int(L, n), (int)have));
  if (ml_matcher_rollback(u->m, (int32_t)n) < 0) return ml_lua_error(L);
  return 0;
}

static int mt_n_accepted(lua_State *L) {
  lua_pushinteger(L, ml_matcher_n_accepted(check_matcher(L, 1)->m));
  return 1;
}

static int mt_forced(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  char buf[4096];
  size_t n = ml_matcher_forced(u->m, buf, sizeof buf);
  lua_pushlstring(L, buf, n);
  return 1;
}

/* forced_tokens() -> { ids }: the tokenizer's tokens for the forced text, each accepted in
 * turn by the grammar, without the last one (it could merge with what follows) unless the
 * grammar must end after the forced text. The matcher is left unchanged. */
static int mt_forced_tokens(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  if (!u->model || !u->model->vocab) return luaL_error(L, "forced_tokens needs a matcher made from a model");
  char buf[4096];
  size_t n = ml_matcher_forced(u->m, buf, sizeof buf);
  lua_newtable(L);
  if (n == 0) return 1;
  int32_t ids[4096];
  int64_t k = ml_vocab_tokenize(u->model->vocab, buf, n, 0, 0, 0, ids, 4096);
  if (k < 0) return ml_lua_error(L);
  int32_t acc = 0;
  for (int64_t i = 0; i < k; i++) {
    int rc = ml_matcher_accept(u->m, ids[i]);
    if (rc < 0) {
      ml_matcher_rollback(u->m, acc);
      return ml_lua_error(L);
    }
    if (!rc) break;
    acc++;
  }
  int done = ml_matcher_is_done(u->m);
  ml_matcher_rollback(u->m, acc);
  int32_t keep = acc == k && done ? acc : (acc > 0 ? acc - 1 : 0);
  for (int32_t i = 0; i < keep; i++) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static float *check_logits(lua_State *L, int i, int64_t n) {
  ml_tensor *t = ml_lua_check_writable(L, i);
  if (t->type != ML_TYPE_F32 || !ml_tensor_is_contiguous(t) || ml_tensor_numel(t) < n)
    luaL_argerror(L, i, lua_pushfstring(L, "contiguous f32 tensor of at least %d elements expected", (int)n));
  return ml_tensor_data(t);
}

/* apply(logits) -> logits: -inf for every token the grammar refuses */
static int mt_apply(lua_State *L) {
  lmatcher *u = check_matcher(L, 1);
  int32_t n = ml_matcher_n_vocab(u->m);
  ml_tensor *t = ml_lua_check_tensor(L, 2);
  int64_t numel = ml_tensor_numel(t);
  float *logits = check_logits(L, 2, numel < n ? numel : n);
  const uint64_t *bits = mask_bits(L, u);
  ml_mask_apply(bits, logits, numel < n ? numel : n);
  lua_pushvalue(L, 2);
  return 1;
}

/* apply(logits, mask) with an i8 mask tensor */
static int l_apply(lua_State *L) {
  ml_tensor *mt = ml_lua_check_tensor(L, 2);
  if (mt->type != ML_TYPE_I8 || !ml_tensor_is_contiguous(mt)) return luaL_argerror(L, 2, "contiguous i8 tensor expected");
  int64_t n = ml_tensor_numel(mt);
  float *logits = check_logits(L, 1, n);
  const int8_t *m = ml_tensor_data(mt);
  const float ninf = -__builtin_inff();
  for (int64_t i = 0; i < n; i++)
    if (!m[i]) logits[i] = ninf;
  lua_pushvalue(L, 1);
  return 1;
}

/* ---- test hook: _thread(code) runs code in a new Lua state on a new thread of this
 * process and returns what it returns (as a string) or its error. The specs use it to
 * check that handles reach other Lua states. Not public API. */

#include <pthread.h>
#include <lualib.h>

typedef struct tjob {
  const char *code, *path, *cpath;
  char out[1024];
} tjob;

static void *thread_main(void *arg) {
  tjob *j = arg;
  lua_State *T = luaL_newstate();
  if (!T) {
    snprintf(j->out, sizeof j->out, "error: no Lua state");
    return NULL;
  }
  luaL_openlibs(T);
  lua_getglobal(T, "package");
  lua_pushstring(T, j->path);
  lua_setfield(T, -2, "path");
  lua_pushstring(T, j->cpath);
  lua_setfield(T, -2, "cpath");
  lua_pop(T, 1);
  if (luaL_loadstring(T, j->code) != 0 || lua_pcall(T, 0, 1, 0) != 0)
    snprintf(j->out, sizeof j->out, "error: %s", lua_tostring(T, -1));
  else
    snprintf(j->out, sizeof j->out, "%s", lua_tostring(T, -1) ? lua_tostring(T, -1) : "nil");
  lua_close(T);
  return NULL;
}

static int l_thread(lua_State *L) {
  tjob *j = lua_newuserdatauv(L, sizeof *j, 0);
  j->code = luaL_checkstring(L, 1);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  j->path = lua_tostring(L, -1);
  lua_getfield(L, -2, "cpath");
  j->cpath = lua_tostring(L, -1);
  j->out[0] = 0;
  pthread_t th;
  if (pthread_create(&th, NULL, thread_main, j) != 0) return luaL_error(L, "cannot start a thread");
  pthread_join(th, NULL);
  lua_pushstring(L, j->out);
  return 1;
}

/* ---- registration ---- */

static const luaL_Reg grammar_methods[] = {{"matcher", g_matcher}, {"stats", g_stats}, {"close", g_gc}, {NULL, NULL}};

static const luaL_Reg matcher_methods[] = {
  {"mask", mt_mask}, {"accept", mt_accept}, {"accept_text", mt_accept_text}, {"allows", mt_allows},
  {"can_end", mt_can_end}, {"is_done", mt_is_done}, {"is_active", mt_is_active}, {"reset", mt_reset},
  {"rollback", mt_rollback}, {"n_accepted", mt_n_accepted}, {"forced", mt_forced},
  {"forced_tokens", mt_forced_tokens}, {"apply", mt_apply}, {"close", mt_gc}, {NULL, NULL}};

static const luaL_Reg vocab_methods[] = {{"n_vocab", v_n_vocab}, {"close", v_gc}, {NULL, NULL}};

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

static const luaL_Reg funcs[] = {{"gbnf", l_gbnf},   {"regex", l_regex}, {"choice", l_choice},
                                 {"attach", l_attach}, {"vocab", l_vocab}, {"apply", l_apply},
                                 {"_thread", l_thread},
                                 {NULL, NULL}};

void ml_lua_open_grammar(lua_State *L) {
  new_class(L, MATCHER_MT, matcher_methods, mt_gc);
  new_class(L, GVOCAB_MT, vocab_methods, v_gc);
  /* grammars: __index is a function (for the handle field) over the methods */
  luaL_newmetatable(L, GRAMMAR_MT);
  lua_newtable(L);
  luaL_setfuncs(L, grammar_methods, 0);
  ml_register_names(L, "");
  lua_setfield(L, -2, "__methods");
  lua_pushcfunction(L, g_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, g_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, g_gc);
  lua_setfield(L, -2, "__close");
  lua_pushstring(L, GRAMMAR_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  ml_register_names(L, "grammar.");
  lua_setfield(L, -2, "grammar");
}
