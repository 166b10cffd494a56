/* dispatch.c: CPUID plus the OS checks (XGETBV for the AVX and AVX-512 register state;
 * arch_prctl for the AMX tile data permission), and the kernel table built from them once:
 * ref, overlaid (ml_kernels_merge) by every level the machine grants, lowest first.
 * MOONLM_ISA forces a lower level; asking for one the CPU lacks falls back with a warning,
 * never a SIGILL. */

#include "dispatch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define ML_X86 1
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "../common.h"

/* Level tables provided by the other files of this folder (weak: a build may leave one out).
 * The avx512 level is avx512.c (F/BW/VL/DQ) overlaid by avx512vnni.c's tables where the CPU
 * has VNNI and BF16. amx-emu is amx.c built against the tile emulator: a test-only table
 * (ml_kernels_named), never chosen by the dispatcher. */
extern const ml_kernels ml_kernels_avx2 __attribute__((weak));
extern const ml_kernels ml_kernels_avx512 __attribute__((weak));
extern const ml_kernels ml_kernels_avx512_vnni __attribute__((weak));
extern const ml_kernels ml_kernels_avx512_bf16 __attribute__((weak));
extern const ml_kernels ml_kernels_amx __attribute__((weak));
extern const ml_kernels ml_kernels_amx_emu __attribute__((weak));

static ml_cpu cpu;
static ml_level supported, active;
static ml_kernels tables[ML_LEVEL_COUNT];
static int have_table[ML_LEVEL_COUNT];
static ml_kernels base512, emu; /* test-only tables: avx512 without VNNI/BF16; AMX emulated */
static int have_base512, have_emu;
static char warning[160];
static pthread_once_t once = PTHREAD_ONCE_INIT;

#ifdef ML_X86
static uint64_t xgetbv0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static int amx_permitted(void) {
#if defined(__linux__) && defined(__x86_64__)
  /* ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 */
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return 0;
#endif
}

static void detect(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return;
  unsigned maxleaf = a;
  memcpy(cpu.vendor, &b, 4);
  memcpy(cpu.vendor + 4, &d, 4);
  memcpy(cpu.vendor + 8, &c, 4);
  __get_cpuid(1, &a, &b, &c, &d);
  int osxsave = (c >> 27) & 1;
  cpu.sse42 = (c >> 20) & 1;
  int avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  int os_avx = (xcr0 & 6) == 6, os_avx512 = (xcr0 & 0xe6) == 0xe6, os_amx = (xcr0 & 0x60000) == 0x60000;
  cpu.avx = avx && os_avx;
  cpu.fma = fma && cpu.avx;
  cpu.f16c = f16c && cpu.avx;
  if (maxleaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    cpu.avx2 = ((b >> 5) & 1) && cpu.avx;
    cpu.avx512f = ((b >> 16) & 1) && os_avx512;
    cpu.avx512dq = ((b >> 17) & 1) && os_avx512;
    cpu.avx512bw = ((b >> 30) & 1) && os_avx512;
    cpu.avx512vl = ((b >> 31) & 1) && os_avx512;
    cpu.avx512vnni = ((c >> 11) & 1) && os_avx512;
    cpu.amx_bf16 = (d >> 22) & 1;
    cpu.amx_tile = (d >> 24) & 1;
    cpu.amx_int8 = (d >> 25) & 1;
    unsigned eax1 = 0, b1, c1, d1;
    __cpuid_count(7, 1, eax1, b1, c1, d1);
    cpu.avx512bf16 = ((eax1 >> 5) & 1) && os_avx512;
    cpu.avxvnni = ((eax1 >> 4) & 1) && cpu.avx;
    (void)b1; (void)c1; (void)d1;
    int amx = cpu.amx_tile && os_amx && amx_permitted();
    cpu.amx_tile &= amx;
    cpu.amx_int8 &= amx;
    cpu.amx_bf16 &= amx;
  }
  __get_cpuid(0x80000000, &a, &b, &c, &d);
  if (a >= 0x80000004) {
    unsigned *p = (unsigned *)cpu.brand;
    for (unsigned l = 0; l < 3; l++) __get_cpuid(0x80000002 + l, &p[4 * l], &p[4 * l + 1], &p[4 * l + 2], &p[4 * l + 3]);
    cpu.brand[48] = 0;
  }
}
#else
static void detect(void) {}
#endif

void ml_kernels_merge(ml_kernels *dst, const ml_kernels *src) {
  if (src->name) dst->name = src->name;
  for (int t = 0; t < ML_TYPE_COUNT; t++) {
    if (src->quantize[t]) dst->quantize[t] = src->quantize[t];
    if (src->vec_dot[t]) {
      dst->vec_dot[t] = src->vec_dot[t];
      dst->by_dot[t] = src->name;
    }
    if (src->gemv[t]) {
      dst->gemv[t] = src->gemv[t];
      dst->by_gemv[t] = src->name;
    }
    if (src->gemm[t]) {
      dst->gemm[t] = src->gemm[t];
      dst->by_gemm[t] = src->name;
    }
  }
  /* the row ops come as a set: a level provides all of them or none */
  if (src->row.dot) {
    dst->row = src->row;
    dst->by_row = src->name;
  }
}

static const char *names[ML_LEVEL_COUNT] = {"ref", "avx2", "avx512", "amx"};

const char *ml_level_name(ml_level l) { return l < ML_LEVEL_COUNT ? names[l] : "?"; }

int ml_x16_prefetch = 4096;

static void init(void) {
  detect();
  if (!memcmp(cpu.vendor, "AuthenticAMD", 12)) ml_x16_prefetch = 0; /* see avx512_x16.h */
  supported = ML_LEVEL_REF;
  if (cpu.avx2 && cpu.fma && cpu.f16c) supported = ML_LEVEL_AVX2;
  if (supported == ML_LEVEL_AVX2 && cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512dq)
    supported = ML_LEVEL_AVX512;
  if (supported == ML_LEVEL_AVX512 && cpu.amx_tile && cpu.amx_int8 && cpu.amx_bf16) supported = ML_LEVEL_AMX;
  const ml_kernels *lv[ML_LEVEL_COUNT] = {&ml_kernels_ref, &ml_kernels_avx2, &ml_kernels_avx512, &ml_kernels_amx};
  tables[0] = ml_kernels_ref;
  have_table[0] = 1;
  for (int l = 1; l < ML_LEVEL_COUNT; l++) {
    tables[l] = tables[l - 1];
    if (l <= (int)supported && lv[l]) {
      ml_kernels_merge(&tables[l], lv[l]);
      have_table[l] = 1;
      if (l == ML_LEVEL_AVX512) {
        base512 = tables[l];
        base512.name = "avx512-base";
        have_base512 = 1;
        if (cpu.avx512vnni && &ml_kernels_avx512_vnni) ml_kernels_merge(&tables[l], &ml_kernels_avx512_vnni);
        if (cpu.avx512bf16 && &ml_kernels_avx512_bf16) ml_kernels_merge(&tables[l], &ml_kernels_avx512_bf16);
      }
      tables[l].name = names[l]; /* the level's name, whatever overlays it holds (by_* name those) */
    }
  }
  active = supported;
  while (active > 0 && !have_table[active]) active--;
  if (&ml_kernels_amx_emu) { /* over the best level below amx */
    int below = active < ML_LEVEL_AMX ? (int)active : ML_LEVEL_AVX512;
    while (below > 0 && !have_table[below]) below--;
    emu = tables[below];
    ml_kernels_merge(&emu, &ml_kernels_amx_emu);
    have_emu = 1;
  }
  const char *env = getenv("MOONLM_ISA");
  if (env && *env) {
    int want = -1;
    for (int l = 0; l < ML_LEVEL_COUNT; l++)
      if (strcmp(env, names[l]) == 0) want = l;
    if (want < 0)
      snprintf(warning, sizeof warning, "moonlm: MOONLM_ISA=%s is not a level (ref, avx2, avx512, amx); using %s", env,
               names[active]);
    else if (want > (int)active)
      snprintf(warning, sizeof warning, "moonlm: MOONLM_ISA=%s is not available on this CPU or in this build; using %s", env,
               names[active]);
    else
      active = (ml_level)want;
    if (warning[0]) fprintf(stderr, "%s\n", warning);
  }
}

const ml_cpu *ml_cpu_get(void) {
  pthread_once(&once, init);
  return &cpu;
}

ml_level ml_level_supported(void) {
  pthread_once(&once, init);
  return supported;
}

ml_level ml_level_active(void) {
  pthread_once(&once, init);
  return active;
}

const ml_kernels *ml_kernels_active(void) {
  pthread_once(&once, init);
  return &tables[active];
}

const ml_rowops *ml_rowops_get(void) { return &ml_kernels_active()->row; }

const ml_kernels *ml_kernels_for(ml_level l) {
  pthread_once(&once, init);
  return l < ML_LEVEL_COUNT && have_table[l] ? &tables[l] : NULL;
}

int ml_level_set(const char *name) {
  pthread_once(&once, init);
  for (int l = 0; l < ML_LEVEL_COUNT; l++)
    if (strcmp(name, names[l]) == 0) {
      if (!have_table[l]) return (int)active;
      active = (ml_level)l;
      return l;
    }
  return -1;
}

const char *ml_dispatch_warning(void) {
  pthread_once(&once, init);
  return warning[0] ? warning : NULL;
}

const ml_kernels *ml_kernels_named(const char *name) {
  pthread_once(&once, init);
  for (int l = 0; l < ML_LEVEL_COUNT; l++)
    if (strcmp(name, names[l]) == 0) return have_table[l] ? &tables[l] : NULL;
  if (strcmp(name, "avx512-base") == 0) return have_base512 ? &base512 : NULL;
  if (strcmp(name, "amx-emu") == 0) return have_emu ? &emu : NULL;
  return NULL;
}
