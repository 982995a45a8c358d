// Lets MKL choose its kernels by the CPU's features instead of its vendor.
//
// MKL (linked statically into libtorch_cpu) asks `mkl_serv_intel_cpu_true` / `mkl_serv_intel_cpu`
// whether the CPU is Intel's and, when not, takes its generic AVX2 path: on an AMD Zen 4, which
// has AVX-512, sgemm then runs 10-15 % slower than MKL's own AVX-512 kernels run on the same chip.
// libtorch exports both functions and calls them through its PLT, so a binary that defines and
// exports them (scripts/setup links with `--export-dynamic-symbol`) answers in their place. MKL
// still picks the instruction set from CPUID, so a CPU without AVX-512 keeps an AVX2 kernel.
//
// `VPETL_MKL_CPU=vendor` forwards to MKL's own answer; so does a CPU without AVX2 and FMA, where
// MKL's choice is left alone entirely.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

static int mkl_own_answer(const char* name) {
  int (*own)(void) = (int (*)(void))dlsym(RTLD_NEXT, name);
  return own ? own() : 0;
}

static int features_decide(void) {
  const char* v = getenv("VPETL_MKL_CPU");
  if (v && strcmp(v, "vendor") == 0) return 0;
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

int mkl_serv_intel_cpu_true(void) { return features_decide() ? 1 : mkl_own_answer("mkl_serv_intel_cpu_true"); }

int mkl_serv_intel_cpu(void) { return features_decide() ? 1 : mkl_own_answer("mkl_serv_intel_cpu"); }

// 1 when MKL's calls reach the two functions above (the binary exports them) and they decide by
// features; 0 when MKL decides by vendor (not exported, opted out, or no AVX2).
int vpetl_mkl_cpu_by_features(void) {
  void* seen = dlsym(RTLD_DEFAULT, "mkl_serv_intel_cpu_true");
  void* seen2 = dlsym(RTLD_DEFAULT, "mkl_serv_intel_cpu");
  return seen == (void*)&mkl_serv_intel_cpu_true && seen2 == (void*)&mkl_serv_intel_cpu && features_decide();
}
