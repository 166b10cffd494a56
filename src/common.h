/* common.h: what every C file in the core shares: error reporting, aligned allocation,
 * symbol visibility. The core never includes lua.h and never raises: a failing function
 * returns NULL or a negative status after recording a message with ml_seterr(). */
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

/* Record the calling thread's last error. `arg` is the 1-based Lua argument position the
 * error is about (0: none), so the binding can raise "bad argument #arg to 'fn' (msg)". */
void ml_seterr(const char *fmt, ...) ML_PRINTF(1, 2);
void ml_seterr_arg(int arg, const char *fmt, ...) ML_PRINTF(2, 3);
const char *ml_errmsg(void);
int ml_errarg(void);

/* 64-byte aligned allocation; ml_alloc sets an error ("out of memory (N bytes)") on failure.
 * Sizes above ML_MAX_ALLOC are refused rather than attempted. */
#define ML_MAX_ALLOC ((size_t)1 << 40)
void *ml_alloc(size_t n);
void *ml_calloc(size_t n);
void ml_free(void *p);

#define ML_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ML_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
