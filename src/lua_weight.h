/* lua_weight.h: prepared (packed) weights as Lua values (lua_weight.c). */
#ifndef ML_LUA_WEIGHT_H
#define ML_LUA_WEIGHT_H

#include "compat.h"
#include "matmul.h"

#define ML_WEIGHT_MT "moonlm.weight"

/* A new, empty weight userdata on the stack (released state until prepared). */
ml_weight *ml_lua_push_weight(lua_State *L);
ml_weight *ml_lua_test_weight(lua_State *L, int i); /* NULL if i is not one */
int ml_lua_tensor_pack(lua_State *L);               /* the tensor method w:pack() */
int ml_lua_linear_many(lua_State *L);               /* the tensor method x:linear_many(ws [, bs]) */
void ml_lua_open_weight(lua_State *L);              /* registers the metatable */

#endif
