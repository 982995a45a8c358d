// Elementwise math for our CPU kernels, written so that GCC vectorises it, and the attribute that
// compiles a loop for AVX-512, AVX2 and the baseline x86-64, picked at load time by the CPU (GCC's
// function multiversioning): the crate builds for the baseline.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VPETL_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define VPETL_VECTOR_CLONES
#endif

namespace vpetl {

// e^x for x ≤ 0, vectorisable: x = k·ln 2 + r with |r| ≤ ln2/2, e^r by its Taylor polynomial to
// r⁶/720 (relative error about 2e-7), times 2^k built in the exponent bits; below -87.3 the result
// is 0 (e^-87.3 is about the smallest normal float), NaN stays NaN. The argument is clamped to
// [-87.3, 0] first, so that k's conversion and shift stay defined.
inline float exp_nonpositive(float x) {
  const float xc = x > -87.3f ? (x < 0.f ? x : 0.f) : -87.3f;
  const float k = (xc * 1.44269504f + 12582912.f) - 12582912.f;  // round(x / ln 2), -126 to 0
  const float r = (xc - k * 0.693359375f) + k * 2.12194440e-4f;  // x - k·ln 2 in two parts
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int bits = (static_cast<int>(k) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return x != x ? x : (x < -87.3f ? 0.f : p * scale);
}

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the formula ATen's own
// vectorised erf uses.
// `exp_neg_x2` is e^(−x²), which a caller may have at hand (GELU's derivative needs it too).
inline float erf_approx(float x, float exp_neg_x2) {
  const float ax = x < 0.f ? -x : x;
  const float t = 1.f / (1.f + 0.3275911f * ax);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float r = 1.f - poly * exp_neg_x2;
  return x < 0.f ? -r : r;
}

inline float erf_approx(float x) { return erf_approx(x, exp_nonpositive(-x * x)); }

#if defined(__x86_64__) && defined(__GNUC__)
#define VPETL_AVX512_KERNELS 1
#define VPETL_AVX512 __attribute__((target("avx512f,fma")))

// The CPU runs AVX-512 (checked once): kernels written with its intrinsics may be called.
inline bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// The lowest min(count, 16) lanes: a whole vector, or the part of the last one that holds data.
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1);
}

// exp_nonpositive on 16 lanes, for kernels written with AVX-512 intrinsics (the same polynomial;
// 2^k by vscalefps).
__attribute__((target("avx512f"))) inline __m512 exp_nonpositive(__m512 x) {
  const __m512 xc = _mm512_min_ps(_mm512_setzero_ps(), _mm512_max_ps(_mm512_set1_ps(-87.3f), x));  // NaN kept
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), xc));
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~underflow), p, k);
}
#endif

}  // namespace vpetl
