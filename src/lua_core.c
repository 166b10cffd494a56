/* lua_core.c: luaopen_moonlm_core, the one exported symbol: the tensor table, threads,
 * the kernel level report, and the GGUF tensor files. Models, tokenizers and contexts
 * register their own parts from their files. */
#include <string.h>
#include <time.h>

#include "common.h"
#include "compat.h"
#include "kernels/dispatch.h"
#include "lua_internal.h"
#include "lua_tensor.h"
#include "lua_util.h"
#include "ops.h"

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

static const char *type_kernel(const ml_kernels *k, ml_type t, ml_level l) {
  (void)t;
  (void)l;
  return k->name;
}

/* isa() -> level name, { [weight type] = kernel level that runs it } */
static int l_isa(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    const char *want = luaL_checkstring(L, 1);
    if (ml_level_set(want) < 0) return luaL_argerror(L, 1, lua_pushfstring(L, "unknown level '%s'", want));
  }
  ml_level l = ml_level_active();
  const ml_kernels *k = ml_kernels_active();
  lua_pushstring(L, ml_level_name(l));
  lua_newtable(L);
  static const ml_type weights[] = {ML_TYPE_F32, ML_TYPE_F16, ML_TYPE_BF16, ML_TYPE_Q8_0, ML_TYPE_Q4_0,
                                    ML_TYPE_Q4_1, ML_TYPE_Q5_0, ML_TYPE_Q5_1, ML_TYPE_Q2_K, ML_TYPE_Q3_K,
                                    ML_TYPE_Q4_K, ML_TYPE_Q5_K, ML_TYPE_Q6_K};
  for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) {
    ml_type t = weights[i];
    /* the lowest level whose table entry is the same function is the one that provides it */
    const char *by = "none";
    for (int lv = 0; lv <= (int)l; lv++) {
      const ml_kernels *kl = ml_kernels_for((ml_level)lv);
      if (kl && kl->vec_dot[t] == k->vec_dot[t] && kl->matmul[t] == k->matmul[t]) {
        by = ml_level_name((ml_level)lv);
        break;
      }
    }
    (void)type_kernel;
    lua_pushstring(L, by);
    lua_setfield(L, -2, ml_type_traits_get(t)->name);
  }
  return 2;
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

static const luaL_Reg funcs[] = {
  {"clock", l_clock}, {"threads", l_threads}, {"isa", l_isa}, {"info", l_info}, {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_moonlm_core(lua_State *L);

int luaopen_moonlm_core(lua_State *L) {
  luaL_newlib(L, funcs);
  ml_lua_open_tensor(L);
  lua_setfield(L, -2, "tensor");
  ml_lua_open_gguf(L);
  ml_lua_open_model(L);
  ml_register_names(L, "");
  return 1;
}
