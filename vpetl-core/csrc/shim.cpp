// The C ABI over the parts of libtorch that tch does not bind: c10d (TCPStore, ProcessGroupGloo and
// the Backend collectives), c10::InferenceMode, autocast's dtype and the fused AdamW kernel. Rust calls these through
// `vpetl_core::shim`. Tensors arrive as tch's `*mut C_tensor`, which torch-sys defines as
// `at::Tensor*`.
//
// Every function catches C++ exceptions: a failure returns a null pointer or a non-zero status and
// leaves its message for `vpetl_last_error` (per thread).

#define USE_C10D_GLOO 1

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "guarded.h"

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

using vpetl::guarded;

using StorePtr = c10::intrusive_ptr<c10d::Store>;
using BackendPtr = c10::intrusive_ptr<c10d::Backend>;
using WorkPtr = c10::intrusive_ptr<c10d::Work>;

std::vector<at::Tensor> tensors_of(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

}  // namespace

extern "C" {

const char* vpetl_last_error() { return vpetl::shown_last_error(); }

// ---- c10d store ------------------------------------------------------------------------------

// A TCPStore: the server when `is_server` (it then waits for `world_size` clients before
// returning), a client otherwise. `timeout_ms` bounds connecting and every later get/wait.
void* vpetl_tcp_store_new(const char* host, int port, int world_size, int is_server, int64_t timeout_ms) {
  StorePtr* out = nullptr;
  guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    StorePtr store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new StorePtr(std::move(store));
  });
  return out;
}

// The same store seen through a key prefix (torchrun's agent store uses `/worker/attempt_N`).
void* vpetl_prefix_store_new(const char* prefix, void* store) {
  StorePtr* out = nullptr;
  guarded([&] {
    StorePtr s = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), *static_cast<StorePtr*>(store));
    out = new StorePtr(std::move(s));
  });
  return out;
}

void vpetl_store_free(void* store) { delete static_cast<StorePtr*>(store); }

// ---- process groups --------------------------------------------------------------------------

void* vpetl_gloo_new(void* store, int rank, int size, int64_t timeout_ms) {
  BackendPtr* out = nullptr;
  guarded([&] {
    auto opts = c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(timeout_ms));
    BackendPtr pg = c10::make_intrusive<c10d::ProcessGroupGloo>(*static_cast<StorePtr*>(store), rank, size, opts);
    out = new BackendPtr(std::move(pg));
  });
  return out;
}

void vpetl_backend_free(void* backend) { delete static_cast<BackendPtr*>(backend); }

// ---- collectives (all asynchronous: they return work to wait on) -----------------------------

void vpetl_work_free(void* work) { delete static_cast<WorkPtr*>(work); }

// Waits for a collective. Non-zero: it failed or did not finish within `timeout_ms` (a peer died or
// hangs); the message says which.
int vpetl_work_wait(void* work, int64_t timeout_ms) {
  return guarded([&] {
    auto& w = *static_cast<WorkPtr*>(work);
    if (!w->wait(std::chrono::milliseconds(timeout_ms))) {
      throw std::runtime_error("a collective did not finish within " + std::to_string(timeout_ms) + " ms");
    }
  });
}

// op: 0 sum, 1 average (NCCL only; callers divide for Gloo), 2 max, 3 min.
void* vpetl_allreduce(void* backend, at::Tensor** ts, int n, int op) {
  WorkPtr* out = nullptr;
  guarded([&] {
    auto v = tensors_of(ts, n);
    c10d::AllreduceOptions opts;
    switch (op) {
      case 0: opts.reduceOp = c10d::ReduceOp::SUM; break;
      case 1: opts.reduceOp = c10d::ReduceOp::AVG; break;
      case 2: opts.reduceOp = c10d::ReduceOp::MAX; break;
      case 3: opts.reduceOp = c10d::ReduceOp::MIN; break;
      default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
    }
    out = new WorkPtr((*static_cast<BackendPtr*>(backend))->allreduce(v, opts));
  });
  return out;
}

// Gathers `input` from every rank into `outputs[0..world]` (same shape and dtype as `input`).
void* vpetl_allgather(void* backend, at::Tensor** outputs, int world, at::Tensor* input) {
  WorkPtr* out = nullptr;
  guarded([&] {
    std::vector<std::vector<at::Tensor>> outs{tensors_of(outputs, world)};
    std::vector<at::Tensor> ins{*input};
    out = new WorkPtr((*static_cast<BackendPtr*>(backend))->allgather(outs, ins));
  });
  return out;
}

void* vpetl_broadcast(void* backend, at::Tensor** ts, int n, int root) {
  WorkPtr* out = nullptr;
  guarded([&] {
    auto v = tensors_of(ts, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    out = new WorkPtr((*static_cast<BackendPtr*>(backend))->broadcast(v, opts));
  });
  return out;
}

void* vpetl_barrier(void* backend) {
  WorkPtr* out = nullptr;
  guarded([&] { out = new WorkPtr((*static_cast<BackendPtr*>(backend))->barrier(c10d::BarrierOptions())); });
  return out;
}

// ---- inference mode --------------------------------------------------------------------------

// c10::InferenceMode is an RAII guard: enter returns it, exit destroys it (on the same thread, in
// reverse order of entering).
void* vpetl_inference_mode_enter() {
  c10::InferenceMode* g = nullptr;
  guarded([&] { g = new c10::InferenceMode(true); });
  return g;
}

void vpetl_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }

int vpetl_inference_mode_is_enabled() { return c10::InferenceMode::is_enabled() ? 1 : 0; }

// ---- autocast --------------------------------------------------------------------------------

// The dtype autocast casts to on `device_type` (c10::DeviceType: 0 CPU, 1 CUDA); `dtype` is a
// c10::ScalarType code (5 half, 15 bfloat16), as tch's Kind codes are.
int vpetl_autocast_set_dtype(int device_type, int dtype) {
  return guarded([&] {
    at::autocast::set_autocast_dtype(static_cast<at::DeviceType>(device_type), static_cast<at::ScalarType>(dtype));
  });
}

int vpetl_autocast_get_dtype(int device_type) {
  return static_cast<int>(at::autocast::get_autocast_dtype(static_cast<at::DeviceType>(device_type)));
}

int vpetl_autocast_set_enabled(int device_type, int enabled) {
  return guarded([&] { at::autocast::set_autocast_enabled(static_cast<at::DeviceType>(device_type), enabled != 0); });
}

int vpetl_autocast_increment_nesting() { return at::autocast::increment_nesting(); }

// Leaving the outermost autocast region drops its cache of casted weights, as torch.autocast does.
int vpetl_autocast_decrement_nesting() {
  int left = at::autocast::decrement_nesting();
  if (left == 0) at::autocast::clear_cache();
  return left;
}

int vpetl_autocast_is_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(static_cast<at::DeviceType>(device_type)) ? 1 : 0;
}

// ---- device memory ---------------------------------------------------------------------------

// Bytes on CUDA device `device`, from the caching allocator (reached through c10's generic
// DeviceAllocator, which libtorch_cuda registers when it loads, so no CUDA header is needed):
// out[0] allocated now, out[1] peak allocated, out[2] reserved now, out[3] peak reserved
// (torch.cuda.memory_allocated / max_memory_allocated / memory_reserved / max_memory_reserved).
int vpetl_cuda_memory_stats(int device, int64_t* out) {
  return guarded([&] {
    using c10::CachingAllocator::StatType;
    auto s = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(StatType::AGGREGATE);
    out[0] = s.allocated_bytes[agg].current;
    out[1] = s.allocated_bytes[agg].peak;
    out[2] = s.reserved_bytes[agg].current;
    out[3] = s.reserved_bytes[agg].peak;
  });
}

int vpetl_cuda_reset_peak_memory(int device) {
  return guarded([&] { c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

// ---- optimiser -------------------------------------------------------------------------------

// One AdamW update of `n` tensors sharing lr and weight decay with ATen's fused kernel (what
// `torch.optim.AdamW(fused=True)` calls): one vectorised pass per tensor instead of a chain of
// full-size temporaries. `steps[i]` holds each tensor's step count as a float scalar on its device;
// it is incremented first, in one foreach call, as torch does.
int vpetl_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                      at::Tensor** steps, int n, double lr, double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    auto step_counts = tensors_of(steps, n);
    at::_foreach_add_(step_counts, 1);
    at::_fused_adamw_(tensors_of(params, n), tensors_of(grads, n), tensors_of(exp_avgs, n), tensors_of(exp_avg_sqs, n), {},
                      step_counts, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  });
}

// Drops the gradients of `n` tensors (torch's `zero_grad(set_to_none=True)`): the next backward
// then stores its gradient instead of filling zeros and adding to them, and a tensor that gets no
// gradient in a step is skipped by the optimiser rather than decayed with a zero gradient.
void vpetl_clear_grads(at::Tensor** params, int n) {
  for (int i = 0; i < n; i++) params[i]->mutable_grad().reset();
}

}  // extern "C"
