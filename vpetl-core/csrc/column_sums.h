// A pass over the rows of a (rows × cols) tensor that also sums K per-column quantities over the
// rows (a bias's or a per-channel scale's gradient), in parallel and deterministically.
//
// The rows are cut into tasks of a fixed size (not one per thread), each task sums into its own
// zeroed columns, and the tasks' sums are added in task order afterwards: the result does not
// depend on the number of threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

namespace vpetl {

// Rows per task: about 16 K elements.
inline int64_t rows_per_task(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, cols)); }

// Calls body(first_row, rows, sums) for each task, sums[k] pointing at the task's cols floats for
// quantity k; returns the K totals as fp32 tensors of `cols` with `options`.
template <int K, class Body>
std::array<at::Tensor, K> over_rows_with_column_sums(int64_t rows, int64_t cols, const at::TensorOptions& options, Body body) {
  const int64_t grain = rows_per_task(cols), tasks = (rows + grain - 1) / grain;
  std::vector<float> partial(tasks * K * cols, 0.f);
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; t++) {
      std::array<float*, K> sums;
      for (int k = 0; k < K; k++) sums[k] = partial.data() + (t * K + k) * cols;
      const int64_t begin = t * grain;
      body(begin, std::min(rows, begin + grain) - begin, sums);
    }
  });
  std::array<at::Tensor, K> totals;
  for (int k = 0; k < K; k++) {
    totals[k] = at::zeros({cols}, options.dtype(at::kFloat));
    float* total = totals[k].template data_ptr<float>();
    for (int64_t t = 0; t < tasks; t++)
      for (int64_t c = 0; c < cols; c++) total[c] += partial[(t * K + k) * cols + c];
  }
  return totals;
}

}  // namespace vpetl
