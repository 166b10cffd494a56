/* lua_tensor.h: what the other binding files need from the tensor binding. */
#ifndef ML_LUA_TENSOR_H
#define ML_LUA_TENSOR_H

#include "compat.h"
#include "lua_util.h"
#include "tensor.h"

#define ML_TENSOR_MT "moonlm.tensor"

/* A new tensor userdata on the stack, empty (storage NULL) until the caller fills it. */
ml_tensor *ml_lua_push_tensor(lua_State *L);
/* The tensor at i, or a Lua error naming the argument (also for a released tensor). */
ml_tensor *ml_lua_check_tensor(lua_State *L, int i);
ml_tensor *ml_lua_test_tensor(lua_State *L, int i); /* NULL if not a live tensor */
/* dtype argument (string) at i, or def when absent. */
ml_type ml_lua_check_dtype(lua_State *L, int i, ml_type def);
void ml_lua_open_tensor(lua_State *L); /* leaves the `tensor` table on the stack */

#endif
