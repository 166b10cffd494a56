/* lua_core.c: luaopen_moonlm_core, the one exported symbol: the tensor table, threads,
 * the kernel level report, and the GGUF tensor files. Models, tokenizers and contexts
 * register their own parts from their files. */
#include <string.h>
#include <time.h>

#include "common.h"
#include "compat.h"
#include "kernels/dispatch.h"
#include "lua_internal.h"
#include "lua_kvcache.h"
#include "lua_tensor.h"
#include "lua_util.h"
#include "lua_weight.h"
#include "matmul.h"
#include "ops.h"
#include "threads.h"

#define ML_VERSION "0.1.0"

static int l_threads(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 1) return luaL_argerror(L, 1, "thread count must be at least 1");
    ml_set_threads(n > 4096 ? 4096 : (int)n);
  }
  lua_pushinteger(L, ml_get_threads());
  return 1;
}

static const char *or_default(const char *s, const char *def) { return s ? s : def; }

/* isa([level]) -> level name, { [weight type] = level of its dot products },
 *                 { [weight type] = { dot =, gemv =, gemm = } kernel tables ("none") } */
static int l_isa(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    const char *want = luaL_checkstring(L, 1);
    if (ml_level_set(want) < 0) return luaL_argerror(L, 1, lua_pushfstring(L, "unknown level '%s'", want));
  }
  ml_level l = ml_level_active();
  const ml_kernels *k = ml_kernels_active();
  lua_pushstring(L, ml_level_name(l));
  lua_newtable(L);
  lua_newtable(L);
  static const ml_type weights[] = {ML_TYPE_F32, ML_TYPE_F16, ML_TYPE_BF16, ML_TYPE_Q8_0, ML_TYPE_Q4_0,
                                    ML_TYPE_Q4_1, ML_TYPE_Q5_0, ML_TYPE_Q5_1, ML_TYPE_Q2_K, ML_TYPE_Q3_K,
                                    ML_TYPE_Q4_K, ML_TYPE_Q5_K, ML_TYPE_Q6_K};
  for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) {
    ml_type t = weights[i];
    const char *name = ml_type_traits_get(t)->name, *dot = or_default(k->by_dot[t], "ref");
    /* the level a table name belongs to: "avx512-vnni" is avx512 */
    size_t n = strcspn(dot, "-");
    lua_pushlstring(L, dot, n);
    lua_setfield(L, -3, name);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, dot);
    lua_setfield(L, -2, "dot");
    lua_pushstring(L, k->gemv[t] ? or_default(k->by_gemv[t], "ref") : "none");
    lua_setfield(L, -2, "gemv");
    lua_pushstring(L, k->gemm[t] ? or_default(k->by_gemm[t], "ref") : "none");
    lua_setfield(L, -2, "gemm");
    lua_setfield(L, -2, name);
  }
  return 3;
}

static void setbool(lua_State *L, const char *k, int v) {
  lua_pushboolean(L, v);
  lua_setfield(L, -2, k);
}

static int l_info(lua_State *L) {
  const ml_cpu *c = ml_cpu_get();
  lua_newtable(L);
  lua_pushstring(L, ML_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, ml_level_name(ml_level_active()));
  lua_setfield(L, -2, "isa");
  lua_pushstring(L, ml_level_name(ml_level_supported()));
  lua_setfield(L, -2, "isa_supported");
  lua_pushinteger(L, ml_get_threads());
  lua_setfield(L, -2, "threads");
  lua_pushinteger(L, ml_max_threads());
  lua_setfield(L, -2, "max_threads");
  lua_pushstring(L, c->brand);
  lua_setfield(L, -2, "cpu");
  lua_newtable(L); /* levels this build and CPU can run, lowest first */
  for (int l = 0, n = 0; l < ML_LEVEL_COUNT; l++)
    if (ml_kernels_for((ml_level)l)) {
      lua_pushstring(L, ml_level_name((ml_level)l));
      lua_rawseti(L, -2, ++n);
    }
  lua_setfield(L, -2, "levels");
  lua_pushstring(L, LUA_VERSION);
  lua_setfield(L, -2, "lua");
  const char *w = ml_dispatch_warning();
  if (w) {
    lua_pushstring(L, w);
    lua_setfield(L, -2, "warning");
  }
  lua_newtable(L);
  setbool(L, "avx", c->avx);
  setbool(L, "avx2", c->avx2);
  setbool(L, "fma", c->fma);
  setbool(L, "f16c", c->f16c);
  setbool(L, "avxvnni", c->avxvnni);
  setbool(L, "avx512f", c->avx512f);
  setbool(L, "avx512bw", c->avx512bw);
  setbool(L, "avx512vl", c->avx512vl);
  setbool(L, "avx512dq", c->avx512dq);
  setbool(L, "avx512vnni", c->avx512vnni);
  setbool(L, "avx512bf16", c->avx512bf16);
  setbool(L, "amx_tile", c->amx_tile);
  setbool(L, "amx_int8", c->amx_int8);
  setbool(L, "amx_bf16", c->amx_bf16);
  lua_setfield(L, -2, "features");
  return 1;
}

/* clock() -> monotonic seconds (for timings; os.clock is CPU time) */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + 1e-9 * (lua_Number)ts.tv_nsec);
  return 1;
}

/* ---- kernel test hooks (spec/kernels_spec.lua, bench/matmul.lua), not public API ---- */

static const ml_kernels *check_table(lua_State *L, int i) {
  if (lua_isnoneornil(L, i)) return ml_kernels_active();
  const ml_kernels *k = ml_kernels_named(luaL_checkstring(L, i));
  if (!k) luaL_argerror(L, i, "kernel table not available on this CPU or build");
  return k;
}

/* _weight(w [, table [, pack]]) -> w prepared for a kernel table (default: the active
 * level); pack = false keeps the original only. */
static int l_weight(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  const ml_kernels *k = check_table(L, 2);
  int flags = lua_isnoneornil(L, 3) || lua_toboolean(L, 3) ? 0 : ML_WEIGHT_NO_PACK;
  ml_weight *w = ml_lua_push_weight(L);
  if (ml_weight_prepare_with(w, t, k, flags) < 0) return ml_lua_error(L);
  return 1;
}

/* _act_bytes(table, dtype, x) -> the bytes table's quantize[] writes for the f32 vector x
 * in that vec_dot type (to compare levels with ref). */
static int l_act_bytes(lua_State *L) {
  const ml_kernels *k = check_table(L, 1);
  ml_type vt = ml_lua_check_dtype(L, 2, ML_TYPE_F32);
  ml_tensor *x = ml_lua_check_tensor(L, 3);
  int64_t n = ml_tensor_numel(x);
  const ml_type_traits *tr = ml_type_traits_get(vt);
  if (!k->quantize[vt] || n % tr->blck) return luaL_argerror(L, 2, "no activation quantizer for this type and size");
  if (x->type != ML_TYPE_F32 || !ml_tensor_is_contiguous(x)) return luaL_argerror(L, 3, "expected a contiguous f32 tensor");
  size_t nb = ml_type_nbytes(vt, n);
  void *buf = lua_newuserdatauv(L, nb ? nb : 1, 0);
  k->quantize[vt](ml_tensor_data(x), buf, n);
  lua_pushlstring(L, buf, nb);
  return 1;
}

/* _x16_check(w) -> max |dequantized from the x16 packed copy - dequantized w|, or nil
 * when the type has no packed layout */
static int l_x16_check(lua_State *L) {
  ml_tensor *t = ml_lua_check_tensor(L, 1);
  double diff;
  if (t->ndim != 2 || !ml_tensor_is_contiguous(t)) return luaL_argerror(L, 1, "expected a contiguous matrix");
  int rc = ml_x16_selfcheck(t->type, ml_tensor_data(t), t->shape[0], t->shape[1], &diff);
  if (rc < 0) return ml_lua_error(L);
  if (rc == 0) lua_pushnil(L);
  else lua_pushnumber(L, diff);
  return 1;
}

/* _amx_emu_selftest() -> true | false, message: the tile emulator against plain loops */
static int l_amx_emu_selftest(lua_State *L) {
  char msg[256];
  lua_pushboolean(L, ml_amx_emu_selftest(msg, sizeof msg));
  lua_pushstring(L, msg);
  return 2;
}

/* _rowops_check([table]) -> true | false, message: the table's row ops against ref's */
static int l_rowops_check(lua_State *L) {
  const ml_kernels *k = check_table(L, 1);
  char msg[256];
  lua_pushboolean(L, ml_rowops_selfcheck(k, msg, sizeof msg));
  lua_pushstring(L, msg);
  return 2;
}

static void open_kernel_hooks(lua_State *L) {
  ml_lua_open_weight(L);
  static const luaL_Reg hooks[] = {
    {"_weight", l_weight}, {"_act_bytes", l_act_bytes}, {"_x16_check", l_x16_check},
    {"_amx_emu_selftest", l_amx_emu_selftest}, {"_rowops_check", l_rowops_check}, {NULL, NULL}};
  luaL_setfuncs(L, hooks, 0);
}

/* storage_limit([bytes]) -> the largest tensor storage allocated (0 restores the default) */
static int l_storage_limit(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    lua_Number n = luaL_checknumber(L, 1);
    if (!(n >= 0) || n > 9.2e18 || n != (lua_Number)(int64_t)n)
      return luaL_argerror(L, 1, "a whole number of bytes >= 0 expected");
    ml_storage_set_limit((size_t)n);
  }
  lua_pushinteger(L, (lua_Integer)ml_storage_limit());
  return 1;
}

static const luaL_Reg funcs[] = {
  {"clock", l_clock}, {"threads", l_threads}, {"isa", l_isa}, {"info", l_info},
  {"storage_limit", l_storage_limit}, {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_moonlm_core(lua_State *L);

int luaopen_moonlm_core(lua_State *L) {
  luaL_newlib(L, funcs);
  ml_lua_open_tensor(L);
  lua_setfield(L, -2, "tensor");
  open_kernel_hooks(L);
  ml_lua_open_gguf(L);
  ml_lua_open_model(L);
  ml_lua_open_sample(L);
  ml_lua_open_schema(L);
  ml_lua_open_kvcache(L);
  ml_lua_open_grammar(L);
  ml_register_names(L, "");
  return 1;
}
