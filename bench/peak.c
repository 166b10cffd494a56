/* peak.c: this machine's own limits, measured in the same run as the benchmarks so that
 * ratios are meaningful on a noisy shared VM:
 *   fma   f32 FMA throughput (GFLOP/s, 2 flop per lane)
 *   vnni  int8 dot throughput with vpdpbusd zmm (GOP/s, 2 op per int8 product)
 *   bf16  bf16 dot throughput with vdpbf16ps zmm (GFLOP/s, 2 flop per product)
 *   bw    read bandwidth: a streaming sum over 1 GiB (GB/s)
 * Usage: peak [fma|vnni|bf16|bw|all] [threads]. Prints "name value" lines. Each ISA loop
 * runs only if the CPU has it (checked with __builtin_cpu_supports). */
#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define ITERS 200000000L

/* 12 independent accumulators cover the FMA latency on two pipes. */
__attribute__((target("avx2,fma"))) static float fma_loop(long n) {
  __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < n; k++)
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
  __m256 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f,avx512vnni"))) static int vnni_loop(long n) {
  __m512i a[12], x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
  for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
  for (long k = 0; k < n; k++)
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
  __m512i s = a[0];
  for (int i = 1; i < 12; i++) s = _mm512_add_epi32(s, a[i]);
  return _mm512_reduce_add_epi32(s);
}

__attribute__((target("avx512f,avx512bf16"))) static float bf16_loop(long n) {
  __m512 a[12];
  __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
  for (long k = 0; k < n; k++)
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
  __m512 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

static volatile double sink;

/* ops per inner iteration per thread, and the loop */
static double run(const char *what, int threads) {
  long n = ITERS / 4;
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now();
#pragma omp parallel num_threads(threads)
    {
      double r = 0;
      if (!strcmp(what, "fma")) r = fma_loop(n);
      else if (!strcmp(what, "vnni")) r = vnni_loop(n);
      else r = bf16_loop(n);
#pragma omp atomic
      sink += r;
    }
    double dt = now() - t0;
    /* per instruction: fma ymm 8 lanes * 2 flop; vnni zmm 64 products * 2; bf16 zmm 32 * 2 */
    double per = !strcmp(what, "fma") ? 16 : !strcmp(what, "vnni") ? 128 : 64;
    double ops = (double)n * 12 * per * threads;
    if (ops / dt > best) best = ops / dt;
  }
  return best / 1e9;
}

__attribute__((target("avx2"))) static double sum_range(const float *p, size_t i0, size_t i1) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = i0; i + 32 <= i1; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
    s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
  }
  float o[8];
  _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}

static double bandwidth(int threads) {
  size_t bytes = (size_t)1 << 30, n = bytes / sizeof(float);
  float *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0;
  madvise(p, bytes, MADV_HUGEPAGE);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; i++) p[i] = (float)(i & 7);
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now(), total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      int ith = omp_get_thread_num(), nth = omp_get_num_threads();
      size_t i0 = n / (size_t)nth * (size_t)ith, i1 = ith == nth - 1 ? n : n / (size_t)nth * (size_t)(ith + 1);
      total += sum_range(p, i0, i1);
    }
    double dt = now() - t0;
    sink += total;
    if ((double)bytes / dt > best) best = (double)bytes / dt;
  }
  munmap(p, bytes);
  return best / 1e9;
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "all";
  int threads = argc > 2 ? atoi(argv[2]) : 2;
  int all = !strcmp(what, "all");
  __builtin_cpu_init();
  if ((all || !strcmp(what, "fma")) && __builtin_cpu_supports("fma")) printf("fma_gflops %.1f\n", run("fma", threads));
  if ((all || !strcmp(what, "vnni")) && __builtin_cpu_supports("avx512vnni"))
    printf("vnni_gops %.1f\n", run("vnni", threads));
  if ((all || !strcmp(what, "bf16")) && __builtin_cpu_supports("avx512bf16"))
    printf("bf16_gflops %.1f\n", run("bf16", threads));
  if (all || !strcmp(what, "bw")) printf("bw_gbs %.1f\n", bandwidth(threads));
  return 0;
}
