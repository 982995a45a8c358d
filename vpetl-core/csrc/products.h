// Register-blocked matrix products on AVX-512: `out = alpha · (S + W · B)`, with B's rows 16·V
// floats wide (a head width or a layer width that is a multiple of 16, or a padded row of scores),
// W read one element at a time through two strides, so that the same kernel serves W, its transpose
// and rows read in place from a fused projection, and S an optional start (a bias row repeated, or
// the output itself, to go on with a sum over a further slice of the inner dimension).
//
// Used for one attention head's products (qkv_attention.cpp) and for linear layers (linear.cpp).
// Nothing is packed: B's rows are read where they lie, which is what makes small products cheap.
//
// Why, for attention: per head, its products are tiny (65 × 65 × 16 at the quickstart's size), and MKL's
// batched sgemm pays its per-product set-up and packing on each. Here a block of output rows stays
// in registers while the inner dimension streams by, and the operands of one head stay in L1
// between its products (`tools/bench attention` at that shape, forward + backward per layer, the
// first version: 2.97 ms through MKL, 1.80 through these).
#pragma once

#include <cstdint>

#include "vector_math.h"

#ifdef VPETL_AVX512_KERNELS
namespace vpetl::products {

// The start of a sum: none (zero), or row r's at s + r·ld (ld 0 repeats one row, a bias).
struct Start {
  const float* s = nullptr;
  int64_t ld = 0;
};

// R output rows of V vectors: out[r][·] = alpha · (start[r][·] + Σ_t w[r·sr + t·st] · b[t·ldb + ·]),
// for t < T. The start may be out itself.
template <int R, int V>
VPETL_AVX512 inline void block(const float* w, int64_t sr, int64_t st, const float* b, int64_t ldb, int64_t T, float* out,
                               int64_t ldo, float alpha, Start start) {
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) acc[r][v] = start.s ? _mm512_loadu_ps(start.s + r * start.ld + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t t = 0; t < T; t++) {
    __m512 row[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) row[v] = _mm512_loadu_ps(b + t * ldb + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
      const __m512 x = _mm512_set1_ps(w[r * sr + t * st]);
#pragma GCC unroll 4
      for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(x, row[v], acc[r][v]);
    }
  }
  const __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) _mm512_storeu_ps(out + r * ldo + 16 * v, _mm512_mul_ps(acc[r][v], scale));
}

// All `rows` rows of one column strip V vectors wide: blocks of as many rows as the 32 registers
// hold (R·V accumulators, V loads, one broadcast), then of 4, then single rows.
template <int V>
VPETL_AVX512 void strip(const float* w, int64_t sr, int64_t st, const float* b, int64_t ldb, int64_t T, float* out, int64_t ldo,
                        int64_t rows, float alpha, Start start) {
  constexpr int R = V == 1 ? 12 : V == 4 ? 6 : 8;
  const auto at = [&](int64_t r) { return Start{start.s ? start.s + r * start.ld : nullptr, start.ld}; };
  int64_t r = 0;
  for (; r + R <= rows; r += R) block<R, V>(w + r * sr, sr, st, b, ldb, T, out + r * ldo, ldo, alpha, at(r));
  for (; r + 4 <= rows; r += 4) block<4, V>(w + r * sr, sr, st, b, ldb, T, out + r * ldo, ldo, alpha, at(r));
  for (; r < rows; r++) block<1, V>(w + r * sr, sr, st, b, ldb, T, out + r * ldo, ldo, alpha, at(r));
}

// out (rows × 16·vectors, row stride ldo) = alpha · W (rows × T) · B (T × 16·vectors, row stride
// ldb), W's element (r, t) at w[r·sr + t·st], plus the start when given (rows of 16·vectors).
VPETL_AVX512 inline void product(const float* w, int64_t sr, int64_t st, const float* b, int64_t ldb, int64_t T, float* out,
                                 int64_t ldo, int64_t rows, int64_t vectors, float alpha, Start start = {}) {
  for (int64_t c = 0; c < vectors; c += 4) {
    const float* bc = b + 16 * c;
    float* oc = out + 16 * c;
    const Start sc{start.s ? start.s + 16 * c : nullptr, start.ld};
    switch (vectors - c < 4 ? vectors - c : 4) {
      case 1: strip<1>(w, sr, st, bc, ldb, T, oc, ldo, rows, alpha, sc); break;
      case 2: strip<2>(w, sr, st, bc, ldb, T, oc, ldo, rows, alpha, sc); break;
      case 3: strip<3>(w, sr, st, bc, ldb, T, oc, ldo, rows, alpha, sc); break;
      default: strip<4>(w, sr, st, bc, ldb, T, oc, ldo, rows, alpha, sc); break;
    }
  }
}

}  // namespace vpetl::products

#endif
