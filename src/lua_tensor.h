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
/* ml_lua_check_tensor for a tensor about to be written: a read-only one (a view of a model
 * file's mapping) is an argument error, never a write into PROT_READ pages. */
ml_tensor *ml_lua_check_writable(lua_State *L, int i);
/* dtype argument (string) at i, or def when absent. */
ml_type ml_lua_check_dtype(lua_State *L, int i, ml_type def);
void ml_lua_open_tensor(lua_State *L); /* leaves the `tensor` table on the stack */
/* tensor.attention(q, k, v, opts) and q:attention(k, v, opts) (lua_attention.c) */
int ml_lua_attention(lua_State *L);

/* Shared with the other tensor binding files (lua_tensor_ext.c). */
/* 1-based (negative from the end) dimension at i -> 0-based; def when absent; `extra`
 * allows ndim + 1 (insertion). */
int ml_lua_check_dim(lua_State *L, int i, int ndim, int def, int extra);
/* The tensor at i, converting a nested table (replaced in place); else an argument error. */
ml_tensor *ml_lua_to_tensor(lua_State *L, int i);
/* A shape from a table at i, or from the numbers at i..; returns the next argument index. */
int ml_lua_read_shape(lua_State *L, int i, int *ndim, int64_t *shape);
/* The state's generator, or `local` seeded from the field seed of the options table at i. */
ml_rng *ml_lua_rng(lua_State *L, int i, ml_rng *local);
/* A tensor userdata can be linked to a prepared weight (matmul.h) that x:linear(w) runs
 * instead of reading w's rows: a model's packed matrices (lua_model.c links what
 * model:tensor returns). The link is a userdata that starts with this struct; resolve is
 * called once, on first use, and may return NULL (then w is read as it is). A view of a
 * linked tensor is not linked. */
struct ml_weight;
typedef struct ml_lua_wlink {
  const struct ml_weight *(*resolve)(struct ml_lua_wlink *l, const ml_tensor *t);
  const struct ml_weight *pw;
  int resolved;
} ml_lua_wlink;
/* Link the tensor at index `tensor` to the link userdata at `link` (kept alive with it). */
void ml_lua_set_wlink(lua_State *L, int tensor, int link);
/* The prepared weight linked to the tensor t at index `tensor`, or NULL. */
const struct ml_weight *ml_lua_get_wlink(lua_State *L, int tensor, const ml_tensor *t);
/* The rotation x:rope's options at opt describe for heads of hd: opts.freqs (a table or
 * tensor from tensor.rope_freqs, n_rot/2 numbers), else base, dims and scaling; mode.
 * Errors name argument arg. inv_freq may point into a value pushed onto the stack (keep
 * it there while used). */
typedef struct ml_lua_rope {
  int neox;
  int64_t n_rot;
  float mscale;
  const float *inv_freq;
} ml_lua_rope;
void ml_lua_rope_options(lua_State *L, int opt, int arg, int64_t hd, ml_lua_rope *ro);
/* lua_tensor_ext.c: registers its methods and functions; the `tensor` table on top. */
void ml_lua_open_tensor_ext(lua_State *L);

#endif
