//! `MemoryHook`: peak memory per logging window and over the run. On CUDA the caching allocator's
//! peak allocated bytes (torch.cuda.max_memory_allocated, reset after each sample); on CPU the
//! process's resident set (sampled after every iteration). The logger empties the window.

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::state::RunState;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MemorySpec {}

crate::register!(Hook, "core", "MemoryHook", MemorySpec as dyn HookSpec, "peak memory per logging interval (logged as memory, MB)");

impl HookSpec for MemorySpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(Memory))
    }
}

struct Memory;

/// Current resident memory of this process in MB (`/proc/self/statm`), 0 where unavailable.
pub fn resident_mb() -> f64 {
    let page_kb = 4.0;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |pages| pages * page_kb / 1024.0)
}

/// Peak resident memory of this process in MB (`VmHWM`), 0 where unavailable.
pub fn peak_resident_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

impl Hook for Memory {
    fn priority(&self) -> i32 {
        priority::ABOVE_NORMAL
    }
    fn before_run(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        crate::engine::memory::reset_cuda_peak(run.device);
        Ok(())
    }
    fn after_train_iter(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        let mb = crate::engine::memory::take_cuda_peak_mb(run.device).unwrap_or_else(resident_mb);
        run.window.memory_mb = run.window.memory_mb.max(mb);
        run.peak_memory_mb = run.peak_memory_mb.max(mb);
        Ok(())
    }
}
