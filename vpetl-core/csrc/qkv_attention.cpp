// Multi-head self-attention straight from a fused qkv projection `(B, N, 3·C)`, on the CPU in fp32:
// `softmax(q kᵀ / sqrt(d)) v` per head, heads concatenated into `(B, N, C)`, as one autograd node.
//
// Why: written in ATen ops (split, scale, two batched products, softmax, merge), ViT's attention
// copies q, k and v out of the projection, copies the output back into token order, and in the
// backward stacks the three gradients and copies them into the projection's layout again: at the
// quickstart's 65 tokens and 16-wide heads those copies and the separate scale and softmax passes
// take longer than the products. Here the products read q, k and v where the projection wrote
// them (a row stride of 3·C), write the output straight into `(B, N, C)` and the gradient straight
// into `(B, N, 3·C)`; the scale rides in the products' alpha. Two ways to the products:
// - heads whose width is a multiple of 16, on an AVX-512 CPU: our register-blocked kernels
//   (products.h), one head at a time per thread, so that its operands, probabilities and
//   their gradient stay in L1 between the products and the softmax;
// - otherwise MKL's batched sgemm, one call for all heads, with the softmax and its derivative as
//   loops of our own, vectorised for the CPU at hand.
//
// Saved for the backward: the projection and the probabilities `(B, heads, N, N)` (rows padded to
// whole vectors on the first way), what the unfused ATen path keeps too, so callers use it only
// for short sequences. No double backward.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "guarded.h"
#include "products.h"
#include "vector_math.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// MKL's batched sgemm, which libtorch's bundled MKL exports, looked up at run time so that a
// libtorch without MKL still links and callers fall back to the ATen path.
using SgemmBatchFn = void (*)(int layout, const int* transa, const int* transb, const int* m, const int* n, const int* k,
                              const float* alpha, const float** a, const int* lda, const float** b, const int* ldb,
                              const float* beta, float** c, const int* ldc, int groups, const int* group_sizes);

SgemmBatchFn sgemm_batch() {
  static const auto found = reinterpret_cast<SgemmBatchFn>(dlsym(RTLD_DEFAULT, "cblas_sgemm_batch"));
  return found;
}

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// One group of a batched product: row-major `C = alpha · op(A) op(B)` for every head, with
// op(A) (m × k), op(B) (k × n) and C (m × n).
struct Gemms {
  bool trans_a, trans_b;
  int m, n, k;
  float alpha;
  int lda, ldb, ldc;
  std::vector<const float*> a, b;
  std::vector<float*> c;
};

// Runs the groups as one MKL call, which spreads the products over the intra-op threads.
void run(std::initializer_list<Gemms*> groups) {
  std::vector<int> ta, tb, m, n, k, lda, ldb, ldc, sizes;
  std::vector<float> alpha, beta;
  std::vector<const float*> a, b;
  std::vector<float*> c;
  for (Gemms* g : groups) {
    ta.push_back(g->trans_a ? kTrans : kNoTrans);
    tb.push_back(g->trans_b ? kTrans : kNoTrans);
    m.push_back(g->m), n.push_back(g->n), k.push_back(g->k);
    lda.push_back(g->lda), ldb.push_back(g->ldb), ldc.push_back(g->ldc);
    alpha.push_back(g->alpha), beta.push_back(0.f);
    sizes.push_back(static_cast<int>(g->c.size()));
    a.insert(a.end(), g->a.begin(), g->a.end());
    b.insert(b.end(), g->b.begin(), g->b.end());
    c.insert(c.end(), g->c.begin(), g->c.end());
  }
  sgemm_batch()(kRowMajor, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), a.data(), lda.data(), b.data(),
                ldb.data(), beta.data(), c.data(), ldc.data(), static_cast<int>(sizes.size()), sizes.data());
}

// Where head `i` (= batch · heads + head) finds its operands.
struct Layout {
  int64_t batch, tokens, heads, head_dim;
  int64_t width() const { return heads * head_dim; }  // C
  int64_t count() const { return batch * heads; }
  // Offset of head i's first row in a (B, N, parts·C) tensor, part 0..parts-1.
  int64_t token_major(int64_t i, int64_t parts, int64_t part) const {
    return (i / heads) * tokens * parts * width() + part * width() + (i % heads) * head_dim;
  }
  int64_t square(int64_t i) const { return i * tokens * tokens; }  // in (B, heads, N, N)
};

Layout layout_of(const at::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 3, "qkv_attention: the projection must be (B, N, 3·C), got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.device().is_cpu(), "qkv_attention: fp32 CPU tensors only");
  TORCH_CHECK(qkv.size(0) > 0 && qkv.size(1) > 0, "qkv_attention: empty projection ", qkv.sizes());
  TORCH_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0, "qkv_attention: ", qkv.size(2), " columns do not split into q, k, v of ", heads, " heads");
  TORCH_CHECK(sgemm_batch(), "qkv_attention: this libtorch has no MKL");
  return {qkv.size(0), qkv.size(1), heads, qkv.size(2) / (3 * heads)};
}

// The largest of n floats, with 16 lanes kept apart so that the loop vectorises (a running maximum
// is a chain of dependent compares).
inline float max_of(const float* x, int64_t n) {
  float lanes[16];
  for (int t = 0; t < 16; t++) lanes[t] = x[0];
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int t = 0; t < 16; t++) lanes[t] = x[j + t] > lanes[t] ? x[j + t] : lanes[t];
  float max = x[0];
  for (; j < n; j++) max = x[j] > max ? x[j] : max;
  for (int t = 0; t < 16; t++) max = lanes[t] > max ? lanes[t] : max;
  return max;
}

// Row-wise softmax of one head's (N × N) block in place: each row less its maximum, e^x over the
// whole block in one loop, each row over its sum.
VPETL_VECTOR_CLONES void softmax_rows(float* p, int64_t n) {
  for (int64_t r = 0; r < n; r++) {
    float* row = p + r * n;
    const float max = max_of(row, n);
    for (int64_t j = 0; j < n; j++) row[j] -= max;
  }
#pragma omp simd
  for (int64_t j = 0; j < n * n; j++) p[j] = vpetl::exp_nonpositive(p[j]);
  for (int64_t r = 0; r < n; r++) {
    float* row = p + r * n;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) sum += row[j];
    const float inv = 1.f / sum;
    for (int64_t j = 0; j < n; j++) row[j] *= inv;
  }
}

// Softmax's derivative for `rows` rows of n: ds = p ⊙ (dp − Σ_j p ⊙ dp), dp given in `ds`.
VPETL_VECTOR_CLONES void softmax_backward_rows(const float* p, float* ds, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; r++) {
    const float* pr = p + r * n;
    float* dr = ds + r * n;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; j++) dot += pr[j] * dr[j];
#pragma omp simd
    for (int64_t j = 0; j < n; j++) dr[j] = pr[j] * (dr[j] - dot);
  }
}

#ifdef VPETL_AVX512_KERNELS
namespace hp = vpetl::products;

// Heads whose width is whole vectors of 16, on a CPU with AVX-512, take our own products
// (products.h); the others MKL's batched sgemm.
bool own_products(const Layout& l) { return vpetl::cpu_has_avx512() && l.head_dim % 16 == 0; }

// A row of scores rounded up to whole vectors: the probabilities are kept (B, heads, N, padded(N)),
// the columns past N zero, so that every product runs over whole vectors.
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

// x (rows × cols, row stride ld) transposed into t (cols × ld_t), the columns from `rows` on zero.
void transpose_padded(const float* x, int64_t ld, int64_t rows, int64_t cols, float* t, int64_t ld_t) {
  for (int64_t c = 0; c < cols; c++) {
    for (int64_t r = 0; r < rows; r++) t[c * ld_t + r] = x[r * ld + c];
    for (int64_t r = rows; r < ld_t; r++) t[c * ld_t + r] = 0.f;
  }
}

// Softmax of the first n columns of n rows (row stride ld = padded(n)), the columns past n set to
// zero. Intrinsics, because a row is only a few vectors long: the reductions across lanes, once
// per row, would otherwise cost as much as the exponentials.
VPETL_AVX512 void softmax_padded(float* p, int64_t n, int64_t ld) {
  const int64_t last = ld / 16 - 1;
  const __mmask16 tail = vpetl::first_lanes(n - 16 * last);  // the last vector's columns below n
  for (int64_t r = 0; r < n; r++) {
    float* row = p + r * ld;
    __m512 max = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, row + 16 * last);
    for (int64_t v = 0; v < last; v++) max = _mm512_max_ps(max, _mm512_loadu_ps(row + 16 * v));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t v = 0; v <= last; v++) {
      __m512 e = vpetl::exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + 16 * v), shift));
      if (v == last) e = _mm512_maskz_mov_ps(tail, e);
      _mm512_storeu_ps(row + 16 * v, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int64_t v = 0; v <= last; v++) _mm512_storeu_ps(row + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(row + 16 * v), inv));
  }
}

// Softmax's derivative over n padded rows: ds = p ⊙ (dp − Σ_j p ⊙ dp), dp given in `ds`.
VPETL_AVX512 void softmax_backward_padded(const float* p, float* ds, int64_t n, int64_t ld) {
  for (int64_t r = 0; r < n; r++) {
    const float* pr = p + r * ld;
    float* dr = ds + r * ld;
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j = 0; j < ld; j += 16) dot = _mm512_fmadd_ps(_mm512_loadu_ps(pr + j), _mm512_loadu_ps(dr + j), dot);
    const __m512 d = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    for (int64_t j = 0; j < ld; j += 16)
      _mm512_storeu_ps(dr + j, _mm512_mul_ps(_mm512_loadu_ps(pr + j), _mm512_sub_ps(_mm512_loadu_ps(dr + j), d)));
  }
}

// Where one head's operands lie: q, k and v rows in the projection (row stride `ld`), output or
// its gradient rows (stride `ld_out`), its probabilities (N × padded(N)).
struct Head {
  const float *q, *k, *v;
  int64_t ld, ld_out;
  float* p;
};

// One head's forward: p = softmax(scale · q kᵀ), out = p v. `kt` holds d × padded(N) floats.
VPETL_AVX512 void head_forward(const Head& h, float* out, float* kt, int64_t n, int64_t d, float scale) {
  const int64_t np = padded(n);
  transpose_padded(h.k, h.ld, n, d, kt, np);
  hp::product(h.q, h.ld, 1, kt, np, d, h.p, np, n, np / 16, scale);
  softmax_padded(h.p, n, np);
  hp::product(h.p, np, 1, h.v, h.ld, n, out, h.ld_out, n, d / 16, 1.f);
}

// One head's backward from the output's gradient g into dq, dk and dv (row stride h.ld);
// `ds` holds N × padded(N) floats and `vt` d × padded(N).
VPETL_AVX512 void head_backward(const Head& h, const float* g, float* dq, float* dk, float* dv, float* ds, float* vt, int64_t n,
                                int64_t d, float scale) {
  const int64_t np = padded(n);
  transpose_padded(h.v, h.ld, n, d, vt, np);
  hp::product(g, h.ld_out, 1, vt, np, d, ds, np, n, np / 16, 1.f);  // dp = g vᵀ
  hp::product(h.p, 1, np, g, h.ld_out, n, dv, h.ld, n, d / 16, 1.f);  // dv = pᵀ g
  softmax_backward_padded(h.p, ds, n, np);
  hp::product(ds, np, 1, h.k, h.ld, n, dq, h.ld, n, d / 16, scale);  // dq = scale · ds k
  hp::product(ds, 1, np, h.q, h.ld, n, dk, h.ld, n, d / 16, scale);  // dk = scale · dsᵀ q
}

// Head i of the projection x, its probabilities at p.
Head head_of(const float* x, const Layout& l, int64_t i, float* p) {
  const float* q = x + l.token_major(i, 3, 0);
  return {q, q + l.width(), q + 2 * l.width(), 3 * l.width(), l.width(), p};
}

// The output (B, N, C); `probs` (B, heads, N, padded(N)) receives the probabilities when defined,
// else each thread keeps one head's at a time.
at::Tensor attend_own(const at::Tensor& qkv, const Layout& l, at::Tensor* probs) {
  RECORD_FUNCTION("vpetl::qkv_attention", std::vector<c10::IValue>{});
  const int64_t n = l.tokens, d = l.head_dim, np = padded(n);
  auto out = at::empty({l.batch, l.tokens, l.width()}, qkv.options());
  if (probs) *probs = at::empty({l.batch, l.heads, n, np}, qkv.options());
  const float* x = qkv.data_ptr<float>();
  float* o = out.data_ptr<float>();
  float* kept = probs ? probs->data_ptr<float>() : nullptr;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  at::parallel_for(0, l.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch((d + (kept ? 0 : n)) * np);
    for (int64_t i = begin; i < end; i++) {
      float* p = kept ? kept + i * n * np : scratch.data() + d * np;
      head_forward(head_of(x, l, i, p), o + l.token_major(i, 1, 0), scratch.data(), n, d, scale);
    }
  });
  return out;
}

// The gradient of the projection (B, N, 3·C) given the output's gradient `grad` (B, N, C).
at::Tensor attend_own_backward(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& probs, const Layout& l) {
  RECORD_FUNCTION("vpetl::qkv_attention_backward", std::vector<c10::IValue>{});
  const int64_t n = l.tokens, d = l.head_dim, np = padded(n);
  auto dqkv = at::empty_like(qkv);
  const float* x = qkv.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* p = const_cast<float*>(probs.data_ptr<float>());
  float* dx = dqkv.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  at::parallel_for(0, l.count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch((n + d) * np);
    for (int64_t i = begin; i < end; i++) {
      float* dq = dx + l.token_major(i, 3, 0);
      head_backward(head_of(x, l, i, p + i * n * np), g + l.token_major(i, 1, 0), dq, dq + l.width(), dq + 2 * l.width(), scratch.data(),
                    scratch.data() + n * np, n, d, scale);
    }
  });
  return dqkv;
}
#endif

// The output (B, N, C); `probs`, when given, receives the probabilities for the backward (their
// layout is the path's own).
at::Tensor attend(const at::Tensor& qkv, const Layout& l, at::Tensor* probs_out) {
#ifdef VPETL_AVX512_KERNELS
  if (own_products(l)) return attend_own(qkv, l, probs_out);
#endif
  RECORD_FUNCTION("vpetl::qkv_attention", std::vector<c10::IValue>{});
  at::Tensor local;
  at::Tensor& probs = probs_out ? *probs_out : local;
  const int n = static_cast<int>(l.tokens), d = static_cast<int>(l.head_dim);
  const int ld_qkv = static_cast<int>(3 * l.width()), ld_out = static_cast<int>(l.width());
  auto out = at::empty({l.batch, l.tokens, l.width()}, qkv.options());
  probs = at::empty({l.batch, l.heads, l.tokens, l.tokens}, qkv.options());
  const float* x = qkv.data_ptr<float>();
  float* p = probs.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  Gemms scores{false, true, n, n, d, scale, ld_qkv, ld_qkv, n, {}, {}, {}};
  Gemms values{false, false, n, d, n, 1.f, n, ld_qkv, ld_out, {}, {}, {}};
  for (int64_t i = 0; i < l.count(); i++) {
    scores.a.push_back(x + l.token_major(i, 3, 0));
    scores.b.push_back(x + l.token_major(i, 3, 1));
    scores.c.push_back(p + l.square(i));
    values.a.push_back(p + l.square(i));
    values.b.push_back(x + l.token_major(i, 3, 2));
    values.c.push_back(o + l.token_major(i, 1, 0));
  }
  run({&scores});
  at::parallel_for(0, l.count(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) softmax_rows(p + l.square(i), l.tokens);
  });
  run({&values});
  return out;
}

// The gradient of the projection (B, N, 3·C) given the output's gradient `grad` (B, N, C).
at::Tensor attend_backward(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& probs, const Layout& l) {
#ifdef VPETL_AVX512_KERNELS
  if (own_products(l)) return attend_own_backward(grad, qkv, probs, l);
#endif
  RECORD_FUNCTION("vpetl::qkv_attention_backward", std::vector<c10::IValue>{});
  const int n = static_cast<int>(l.tokens), d = static_cast<int>(l.head_dim);
  const int ld_qkv = static_cast<int>(3 * l.width()), ld_out = static_cast<int>(l.width());
  auto dqkv = at::empty_like(qkv);
  const float* x = qkv.data_ptr<float>();
  const float* p = probs.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* dx = dqkv.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  auto dscores = at::empty_like(probs);
  float* ds = dscores.data_ptr<float>();
  // dv = pᵀ g; dp = g vᵀ (into ds, made the scores' gradient below).
  Gemms dv{true, false, n, d, n, 1.f, n, ld_out, ld_qkv, {}, {}, {}};
  Gemms dp{false, true, n, n, d, 1.f, ld_out, ld_qkv, n, {}, {}, {}};
  // dq = scale · ds k; dk = scale · dsᵀ q.
  Gemms dq{false, false, n, d, n, scale, n, ld_qkv, ld_qkv, {}, {}, {}};
  Gemms dk{true, false, n, d, n, scale, n, ld_qkv, ld_qkv, {}, {}, {}};
  for (int64_t i = 0; i < l.count(); i++) {
    const float *q = x + l.token_major(i, 3, 0), *k = x + l.token_major(i, 3, 1), *v = x + l.token_major(i, 3, 2);
    const float* gi = g + l.token_major(i, 1, 0);
    dv.a.push_back(p + l.square(i)), dv.b.push_back(gi), dv.c.push_back(dx + l.token_major(i, 3, 2));
    dp.a.push_back(gi), dp.b.push_back(v), dp.c.push_back(ds + l.square(i));
    dq.a.push_back(ds + l.square(i)), dq.b.push_back(k), dq.c.push_back(dx + l.token_major(i, 3, 0));
    dk.a.push_back(ds + l.square(i)), dk.b.push_back(q), dk.c.push_back(dx + l.token_major(i, 3, 1));
  }
  run({&dv, &dp});
  at::parallel_for(0, l.count(), 1, [&](int64_t begin, int64_t end) {
    softmax_backward_rows(p + l.square(begin), ds + l.square(begin), (end - begin) * l.tokens, l.tokens);
  });
  run({&dq, &dk});
  return dqkv;
}

struct QkvAttention : torch::autograd::Function<QkvAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t heads) {
    at::Tensor probs;
    auto out = attend(qkv, layout_of(qkv, heads), &probs);
    // Saved variables, not saved_data: the autograd engine frees them once the backward ran.
    ctx->save_for_backward({qkv, probs});
    ctx->saved_data["heads"] = heads;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "qkv_attention: no double backward (create_graph)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &qkv = saved[0], &probs = saved[1];
    const Layout l = layout_of(qkv, ctx->saved_data["heads"].toInt());
    return {attend_backward(grads[0].contiguous(), qkv, probs, l), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// 1 when the kernel can run (libtorch's MKL exports what it calls).
int vpetl_qkv_attention_available() { return sgemm_batch() ? 1 : 0; }

// Self-attention of `heads` heads over a contiguous fp32 CPU projection (B, N, 3·C): a new
// (B, N, C) tensor for tch to own, or null (the message in vpetl_last_error).
at::Tensor* vpetl_qkv_attention(at::Tensor* qkv, int64_t heads) {
  at::Tensor* out = nullptr;
  vpetl::guarded([&] {
    const at::Tensor x = qkv->contiguous();
    if (at::GradMode::is_enabled() && x.requires_grad()) {
      out = new at::Tensor(QkvAttention::apply(x, heads));
    } else {
      out = new at::Tensor(attend(x, layout_of(x, heads), nullptr));
    }
  });
  return out;
}

}  // extern "C"
