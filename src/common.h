/* common.h: what every C file in the core shares: error reporting, aligned allocation,
 * symbol visibility. The core never includes lua.h and never raises: a failing function
 * returns NULL or a negative status after recording a message and a class (below). */
#ifndef ML_COMMON_H
#define ML_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define ML_HIDDEN __attribute__((visibility("hidden")))
#define ML_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ML_LIKELY(x) __builtin_expect(!!(x), 1)
#define ML_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ML_HIDDEN
#define ML_PRINTF(a, b)
#define ML_LIKELY(x) (x)
#define ML_UNLIKELY(x) (x)
#endif

#define ML_ALIGN 64

/* Errors. A failing core function returns NULL or a negative status after recording, for the
 * calling thread, a message and a class:
 *   ML_ERR_FAIL    an expected failure on valid input: a missing or malformed file, an
 *                  unsupported model, a full context, out of memory (ml_seterr).
 *   ML_ERR_MISUSE  the caller passed something invalid: a shape that does not fit, an index
 *                  out of range, a type the operation does not take (ml_misuse). `input`
 *                  says which input of the function that failed: its position in the C
 *                  parameter list counting from 1, skipping output parameters (the `dst` or
 *                  `out` a function fills) and counting an array and its length as one
 *                  input; 0 when no one input is to blame.
 * The core never knows how its caller numbers arguments: the binding (src/lua_*.c) decides
 * how each class surfaces (for Lua, "bad argument #n to 'f' (msg)" or nil, msg).
 * A function that reports a callee's misuse as its own points it at its own input with
 * ml_misuse_input(). */
typedef enum ml_errclass { ML_ERR_NONE, ML_ERR_FAIL, ML_ERR_MISUSE } ml_errclass;

void ml_seterr(const char *fmt, ...) ML_PRINTF(1, 2);
void ml_misuse(int input, const char *fmt, ...) ML_PRINTF(2, 3);
/* If the last error is a misuse, it is now about `input` (a failure stays as it is). */
void ml_misuse_input(int input);
const char *ml_errmsg(void);
ml_errclass ml_errclass_get(void);
int ml_errinput(void); /* the misuse's input, 0 for a failure */

/* 64-byte aligned allocation; ml_alloc sets an error ("out of memory (N bytes)") on failure.
 * Sizes above ML_MAX_ALLOC are refused rather than attempted. */
#define ML_MAX_ALLOC ((size_t)1 << 40)
void *ml_alloc(size_t n);
void *ml_calloc(size_t n);
void ml_free(void *p);

#define ML_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ML_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
