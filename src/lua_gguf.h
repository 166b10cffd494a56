/* lua_gguf.h: GGUF metadata as Lua values, and tensors viewing a mapped file. */
#ifndef ML_LUA_GGUF_H
#define ML_LUA_GGUF_H

#include "compat.h"
#include "gguf.h"
#include "tensor.h"

/* Arrays longer than max_array are shown as a "<array of N type>" string. */
void ml_lua_push_gguf_value(lua_State *L, const ml_gguf_value *v, uint64_t max_array);
void ml_lua_push_gguf_meta(lua_State *L, const ml_gguf *g, uint64_t max_array);
/* Storage over the whole mapping (retains g). */
ml_storage *ml_gguf_storage(ml_gguf *g);
/* Tensor view of one tensor of the file: shape is ne reversed (outermost first). */
int ml_gguf_tensor_view(ml_tensor *t, ml_storage *s, const ml_gguf *g, const ml_gguf_tensor *info);

#endif
