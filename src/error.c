#define _POSIX_C_SOURCE 200809L
/* error.c: the per-thread last error (message, class, input; common.h) and the
 * allocation helpers that report into it. */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char err_msg[512];
static _Thread_local ml_errclass err_class;
static _Thread_local int err_input;

static void vset(ml_errclass cls, int input, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void vset(ml_errclass cls, int input, const char *fmt, va_list ap) {
  char buf[sizeof err_msg]; /* the arguments may point into err_msg itself */
  vsnprintf(buf, sizeof buf, fmt, ap);
  memcpy(err_msg, buf, sizeof buf);
  err_class = cls;
  err_input = input;
}

void ml_seterr(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset(ML_ERR_FAIL, 0, fmt, ap);
  va_end(ap);
}

void ml_misuse(int input, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset(ML_ERR_MISUSE, input, fmt, ap);
  va_end(ap);
}

void ml_misuse_input(int input) {
  if (err_class == ML_ERR_MISUSE) err_input = input;
}

const char *ml_errmsg(void) { return err_msg[0] ? err_msg : "unknown error"; }
ml_errclass ml_errclass_get(void) { return err_msg[0] ? err_class : ML_ERR_FAIL; }
int ml_errinput(void) { return err_class == ML_ERR_MISUSE ? err_input : 0; }

void *ml_alloc(size_t n) {
  void *p = NULL;
  if (n == 0) n = 1;
  if (n > ML_MAX_ALLOC || posix_memalign(&p, ML_ALIGN, (n + ML_ALIGN - 1) / ML_ALIGN * ML_ALIGN) != 0) {
    ml_seterr("out of memory (%zu bytes)", n);
    return NULL;
  }
  return p;
}

void *ml_calloc(size_t n) {
  void *p = ml_alloc(n);
  if (p) memset(p, 0, n);
  return p;
}

void ml_free(void *p) { free(p); }
