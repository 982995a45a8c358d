//! Peak memory for logs (`memory`, MB per logging interval) and results.json (`peak_memory_mb`).
//!
//! On CUDA: the caching allocator's peak allocated bytes (torch.cuda.max_memory_allocated, what
//! mmengine logs), reset after each interval, and peak reserved bytes. On the CPU: the process's peak
//! resident memory (VmHWM), which cannot be reset.

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

/// The CUDA caching allocator's statistics of `device`, or `None` off CUDA.
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

/// Peak resident memory of this process in MB (VmHWM).
pub fn host_peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Tracks peak memory per logging interval and over the run.
#[derive(Debug)]
pub struct MemoryMeter {
    device: Device,
    run_peak_mb: f64,
    run_peak_reserved_mb: f64,
}

impl MemoryMeter {
    pub fn new(device: Device) -> Self {
        let m = MemoryMeter { device, run_peak_mb: 0.0, run_peak_reserved_mb: 0.0 };
        m.reset_peak();
        m
    }

    fn reset_peak(&self) {
        if let Device::Cuda(i) = self.device {
            // SAFETY: a plain call on a device index.
            unsafe { shim::vpetl_cuda_reset_peak_memory(i as i32) };
        }
    }

    /// The peak (MB) since the last call, then starts a new interval.
    pub fn interval_peak_mb(&mut self) -> f64 {
        match cuda_stats(self.device) {
            Some(s) => {
                self.run_peak_mb = self.run_peak_mb.max(s.peak_allocated_mb);
                self.run_peak_reserved_mb = self.run_peak_reserved_mb.max(s.peak_reserved_mb);
                self.reset_peak();
                s.peak_allocated_mb
            }
            None => {
                let peak = host_peak_mb();
                self.run_peak_mb = self.run_peak_mb.max(peak);
                peak
            }
        }
    }

    /// The peak (MB) over the whole run, including the current interval.
    pub fn run_peak_mb(&self) -> f64 {
        match cuda_stats(self.device) {
            Some(s) => self.run_peak_mb.max(s.peak_allocated_mb),
            None => self.run_peak_mb.max(host_peak_mb()),
        }
    }

    pub fn run_peak_reserved_mb(&self) -> f64 {
        match cuda_stats(self.device) {
            Some(s) => self.run_peak_reserved_mb.max(s.peak_reserved_mb),
            None => 0.0,
        }
    }
}
