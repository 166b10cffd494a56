/* lua_internal.h: registration hooks of the binding files, called by luaopen_moonlm_core
 * with the module table on top of the stack. */
#ifndef ML_LUA_INTERNAL_H
#define ML_LUA_INTERNAL_H

#include "compat.h"

void ml_lua_open_gguf(lua_State *L);  /* save, load_tensors */
void ml_lua_open_model(lua_State *L); /* load, attach_model, attach_context */
void ml_lua_open_sample(lua_State *L); /* candidates, rng */
void ml_lua_open_schema(lua_State *L); /* schema_to_gbnf */
void ml_lua_open_grammar(lua_State *L); /* grammar */

struct ml_model;
struct ml_model *ml_lua_test_model(lua_State *L, int i); /* the model userdata at i, or NULL */
struct ml_matcher;
struct ml_matcher *ml_lua_test_matcher(lua_State *L, int i); /* the open matcher at i, or NULL */

#endif
