// The CUDA half of the shim, built as its own shared library (libvpetl_cuda_shim.so) that links
// libtorch_cuda: the binaries load it with dlopen only when the CUDA backend loaded, so they still
// start where libtorch has no CUDA. It binds ProcessGroupNCCL, whose header needs the CUDA and NCCL
// headers. Same conventions as shim.cpp (`guarded.h`).

#define USE_C10D_NCCL 1

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "guarded.h"

#include <chrono>
#include <string>

using vpetl::guarded;

extern "C" {

const char* vpetl_cuda_last_error() { return vpetl::shown_last_error(); }

// `store` is a `c10::intrusive_ptr<c10d::Store>*` from vpetl_tcp_store_new.
void* vpetl_nccl_new(void* store, int rank, int size, int64_t timeout_ms) {
  using BackendPtr = c10::intrusive_ptr<c10d::Backend>;
  BackendPtr* out = nullptr;
  guarded([&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    BackendPtr pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        *static_cast<c10::intrusive_ptr<c10d::Store>*>(store), rank, size, opts);
    out = new BackendPtr(std::move(pg));
  });
  return out;
}

}  // extern "C"
