/* dispatch.h: what the CPU and the OS let us run, and the kernel level chosen from it. */
#ifndef ML_DISPATCH_H
#define ML_DISPATCH_H

#include "kernels.h"

typedef enum ml_level { ML_LEVEL_REF, ML_LEVEL_AVX2, ML_LEVEL_AVX512, ML_LEVEL_AMX, ML_LEVEL_COUNT } ml_level;

typedef struct ml_cpu {
  char vendor[13], brand[49];
  /* instruction support, already masked by the OS state check (XGETBV, AMX permission) */
  int sse42, avx, avx2, fma, f16c, avxvnni;
  int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
  int amx_tile, amx_int8, amx_bf16;
} ml_cpu;

const ml_cpu *ml_cpu_get(void);
/* The level the CPU supports best; the level in use (after MOONLM_ISA); its kernel table. */
ml_level ml_level_supported(void);
ml_level ml_level_active(void);
const ml_kernels *ml_kernels_active(void);
/* The row operations of the active level (&ml_kernels_active()->row). */
const ml_rowops *ml_rowops_get(void);
const char *ml_level_name(ml_level l);
/* Force a level (<= supported); returns the level set. -1 for an unknown name. */
int ml_level_set(const char *name);
/* Kernel table for one level (NULL if it was not compiled or the CPU lacks it). */
const ml_kernels *ml_kernels_for(ml_level l);
/* A warning from start-up (MOONLM_ISA asked for a level the CPU lacks), or NULL. */
const char *ml_dispatch_warning(void);

/* A kernel table by name, for tests and benchmarks: a level ("ref", "avx2", "avx512",
 * "amx") as the dispatcher built it, or a test-only table: "avx512-base" (the avx512 level
 * without its VNNI / BF16 kernels, as on CPUs that lack them) and "amx-emu" (the AMX
 * kernels compiled against the tile emulator, over the best level below amx). NULL if this
 * CPU or build cannot run it. The dispatcher never chooses a test-only table. */
const ml_kernels *ml_kernels_named(const char *name);

/* amx.c built against the emulator: checks the emulated tile instructions against plain
 * loops (config, loads with row/column edges, the dot products, stores). 1 if all agree,
 * else 0 and what differed in msg. */
int ml_amx_emu_selftest(char *msg, size_t n);
/* A table's row operations against ref's (rowcheck.c): sizes around the vector widths,
 * unaligned rows, no write outside the n outputs. 1 if all agree, else 0 and msg says
 * which op, size and element. */
int ml_rowops_selfcheck(const ml_kernels *k, char *msg, size_t n);

#endif
