/* amx.c: placeholder while the AMX kernels are written. */
#include "dispatch.h"
#include <stdio.h>
#ifdef ML_AMX_EMULATE
int ml_amx_emu_selftest(char *msg, size_t n) { snprintf(msg, n, "not yet"); return 1; }
#endif
