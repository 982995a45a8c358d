//! Data parallel training on PyTorch's c10d, one process per device (DDP's model): the launcher's
//! environment ([`env`]), the process group ([`group`], Gloo or NCCL through the C++ shim), the
//! distributed sampler ([`sampler`]), gradient averaging ([`grads`]) and gathered evaluation
//! ([`gather`]). The process group is process-wide, as torch.distributed's default group:
//! [`init_from_env`] creates it once and [`current`] returns it.

pub mod env;
pub mod gather;
pub mod grads;
pub mod group;
pub mod sampler;

use std::sync::OnceLock;
use std::time::Duration;

use tch::Device;

pub use env::DistEnv;
pub use group::{BackendKind, ProcessGroup, ReduceOp};
pub use sampler::Shard;

static GROUP: OnceLock<ProcessGroup> = OnceLock::new();

/// The process group of this process, when it is one rank of a data-parallel job.
pub fn current() -> Option<&'static ProcessGroup> {
    GROUP.get()
}

/// This process's rank (0 when not distributed).
pub fn rank() -> usize {
    current().map_or(0, |g| g.rank)
}

/// Whether this process writes logs, checkpoints and results (rank 0, or not distributed).
pub fn is_main() -> bool {
    rank() == 0
}

/// The device of this rank: CUDA device `LOCAL_RANK` when CUDA is usable, else the CPU.
pub fn device_for(env: &DistEnv) -> Device {
    crate::runtime::init();
    if tch::Cuda::is_available() {
        Device::Cuda(env.local_rank % tch::Cuda::device_count().max(1) as usize)
    } else {
        Device::Cpu
    }
}

/// Joins the job the environment describes, once per process; `Ok(None)` when there is none.
/// `backend` is `gloo`, `nccl` or `None` (NCCL on CUDA, Gloo on the CPU).
pub fn init_from_env(backend: Option<&str>, timeout: Duration) -> anyhow::Result<Option<&'static ProcessGroup>> {
    if let Some(g) = GROUP.get() {
        return Ok(Some(g));
    }
    let Some(env) = DistEnv::from_env()? else { return Ok(None) };
    let device = device_for(&env);
    let kind = BackendKind::resolve(backend, device)?;
    let group = ProcessGroup::new(&env, kind, device, timeout)?;
    tracing::info!(
        "rank {} of {} (local rank {}) on {device:?}, {kind:?} backend, rendezvous {}:{}, timeout {:.0} s",
        env.rank,
        env.world_size,
        env.local_rank,
        env.master_addr,
        env.master_port,
        timeout.as_secs_f64()
    );
    Ok(Some(GROUP.get_or_init(|| group)))
}
