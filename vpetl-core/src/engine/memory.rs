//! CUDA memory from libtorch's caching allocator (what torch.cuda.max_memory_allocated and
//! friends report), for the memory hook (`memory` in the logs, `peak_memory_mb` in results.json)
//! and benchmarks. Off CUDA these return `None` and callers use the process's resident memory.

use tch::Device;

use crate::shim;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryStats {
    pub allocated_mb: f64,
    pub peak_allocated_mb: f64,
    pub reserved_mb: f64,
    pub peak_reserved_mb: f64,
}

const MB: f64 = 1024.0 * 1024.0;

/// The caching allocator's statistics of `device`, or `None` off CUDA.
pub fn cuda_stats(device: Device) -> Option<MemoryStats> {
    let Device::Cuda(index) = device else { return None };
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the shim writes.
    if unsafe { shim::vpetl_cuda_memory_stats(index as i32, out.as_mut_ptr()) } != 0 {
        tracing::debug!("CUDA memory statistics: {}", shim::last_error());
        return None;
    }
    Some(MemoryStats {
        allocated_mb: out[0] as f64 / MB,
        peak_allocated_mb: out[1] as f64 / MB,
        reserved_mb: out[2] as f64 / MB,
        peak_reserved_mb: out[3] as f64 / MB,
    })
}

/// Starts a new peak (torch.cuda.reset_peak_memory_stats); nothing off CUDA.
pub fn reset_cuda_peak(device: Device) {
    if let Device::Cuda(index) = device {
        // SAFETY: a plain call on a device index; a failure leaves the old peak, which only
        // overstates the next sample.
        unsafe { shim::vpetl_cuda_reset_peak_memory(index as i32) };
    }
}

/// The peak allocated MB since the last reset, then resets it; `None` off CUDA.
pub fn take_cuda_peak_mb(device: Device) -> Option<f64> {
    let s = cuda_stats(device)?;
    reset_cuda_peak(device);
    Some(s.peak_allocated_mb)
}
