//! A c10d process group: a TCPStore rendezvous and a Gloo (CPU) or NCCL (CUDA) backend, created
//! through the shim; collectives as torch.distributed has them.
//!
//! Failure is bounded: the rendezvous and every collective time out after `timeout` (a rank that
//! hangs), and Gloo fails at once when a peer's connection closes (a rank that died). Either way the
//! caller gets an error naming the collective.

use std::ffi::c_void;
use std::time::Duration;

use anyhow::{bail, Context};
use tch::{Device, Tensor};

use super::env::DistEnv;
use crate::shim::{self, cstring, raw};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Gloo,
    Nccl,
}

impl BackendKind {
    /// `gloo` or `nccl`; `None` picks NCCL for CUDA devices and Gloo otherwise.
    pub fn resolve(name: Option<&str>, device: Device) -> anyhow::Result<Self> {
        match name {
            None => Ok(if device.is_cuda() { BackendKind::Nccl } else { BackendKind::Gloo }),
            Some("gloo") => Ok(BackendKind::Gloo),
            Some("nccl") if device.is_cuda() => Ok(BackendKind::Nccl),
            Some("nccl") => bail!("env_cfg.dist_cfg.backend: nccl needs CUDA, and this process runs on {device:?}"),
            Some(other) => bail!("env_cfg.dist_cfg.backend: unknown backend `{other}` (gloo or nccl)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

pub struct ProcessGroup {
    store: *mut c_void,
    backend: *mut c_void,
    pub kind: BackendKind,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Where this rank's tensors live (the collectives' device).
    pub device: Device,
    pub timeout: Duration,
}

// SAFETY: c10d stores and backends are thread-safe objects; the pointers are owned here and freed
// once, in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn check<T>(p: *mut T, what: impl FnOnce() -> String, err: impl FnOnce() -> String) -> anyhow::Result<*mut T> {
    if p.is_null() {
        bail!("{}: {}", what(), err());
    }
    Ok(p)
}

impl ProcessGroup {
    /// Joins the job `env` describes: rank 0 hosts the TCPStore (unless torchrun's agent does) and
    /// every rank waits for the others up to `timeout`.
    pub fn new(env: &DistEnv, kind: BackendKind, device: Device, timeout: Duration) -> anyhow::Result<Self> {
        let host = cstring(&env.master_addr);
        let is_server = env.rank == 0 && env.agent_store.is_none();
        // SAFETY: valid C strings and plain integers; the shim returns null on failure.
        let base = unsafe { shim::vpetl_tcp_store_new(host.as_ptr(), env.master_port as i32, env.world_size as i32, is_server as i32, ms(timeout)) };
        let base = check(base, || format!("rank {}: rendezvous at {}:{} failed", env.rank, env.master_addr, env.master_port), shim::last_error)?;
        // Our own key space, under torchrun's per-attempt prefix when its agent hosts the store.
        let prefix = match env.agent_store {
            Some(attempt) => format!("/worker/attempt_{attempt}/vpetl"),
            None => "vpetl".to_string(),
        };
        let p = cstring(&prefix);
        // SAFETY: `base` is a live store; the prefix store holds its own reference.
        let store = unsafe { shim::vpetl_prefix_store_new(p.as_ptr(), base) };
        unsafe { shim::vpetl_store_free(base) };
        let store = check(store, || "creating the prefix store".into(), shim::last_error)?;
        let (rank, size) = (env.rank as i32, env.world_size as i32);
        let backend = match kind {
            // SAFETY: `store` is a live store pointer from the shim.
            BackendKind::Gloo => unsafe { shim::vpetl_gloo_new(store, rank, size, ms(timeout)) },
            BackendKind::Nccl => {
                let cuda = shim::cuda().map_err(|e| anyhow::anyhow!("the NCCL backend is unavailable: {e}"))?;
                // SAFETY: as above; the CUDA shim shares libtorch with this binary.
                let b = unsafe { (cuda.nccl_new)(store, rank, size, ms(timeout)) };
                if b.is_null() {
                    unsafe { shim::vpetl_store_free(store) };
                    bail!("rank {rank}: creating the NCCL process group failed: {}", cuda.last_error());
                }
                b
            }
        };
        if backend.is_null() {
            let e = shim::last_error();
            unsafe { shim::vpetl_store_free(store) };
            bail!("rank {rank}: creating the {kind:?} process group of {size} failed: {e}");
        }
        Ok(ProcessGroup {
            store,
            backend,
            kind,
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            device,
            timeout,
        })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn work(&self, p: *mut c_void, what: &str) -> anyhow::Result<Work> {
        let p = check(p, || format!("rank {}: {what} failed to start", self.rank), shim::last_error)?;
        Ok(Work { ptr: p, rank: self.rank, timeout: self.timeout, what: what.to_string() })
    }

    /// Starts an in-place all-reduce of `tensors` (contiguous, on this group's device). As in c10d,
    /// several tensors mean one per device, all of one shape: pass one flat buffer.
    pub fn all_reduce_start(&self, tensors: &[&Tensor], op: ReduceOp) -> anyhow::Result<Work> {
        let raws: Vec<_> = tensors.iter().map(|t| raw(t)).collect();
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        };
        // SAFETY: the tensors outlive the call; c10d keeps its own references until the work ends.
        let w = unsafe { shim::vpetl_allreduce(self.backend, raws.as_ptr(), raws.len() as i32, code) };
        self.work(w, "all-reduce")
    }

    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> anyhow::Result<()> {
        self.all_reduce_start(tensors, op)?.wait()
    }

    /// Every rank's `t` (same shape and dtype on every rank), in rank order.
    pub fn all_gather(&self, t: &Tensor) -> anyhow::Result<Vec<Tensor>> {
        let t = t.contiguous();
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| t.empty_like()).collect();
        let raws: Vec<_> = outputs.iter().map(raw).collect();
        // SAFETY: as for all_reduce.
        let w = unsafe { shim::vpetl_allgather(self.backend, raws.as_ptr(), self.world_size as i32, raw(&t)) };
        self.work(w, "all-gather")?.wait()?;
        Ok(outputs)
    }

    /// Copies rank `root`'s tensors into every rank's (in place; one per device, as all_reduce).
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> anyhow::Result<()> {
        let raws: Vec<_> = tensors.iter().map(|t| raw(t)).collect();
        // SAFETY: as for all_reduce.
        let w = unsafe { shim::vpetl_broadcast(self.backend, raws.as_ptr(), raws.len() as i32, root as i32) };
        self.work(w, "broadcast")?.wait()
    }

    pub fn barrier(&self) -> anyhow::Result<()> {
        // SAFETY: a live backend.
        let w = unsafe { shim::vpetl_barrier(self.backend) };
        self.work(w, "barrier")?.wait()
    }

    /// Sums a few numbers over the ranks (metrics, loss windows), in f64 on the group's device.
    pub fn sum_f64(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce(&[&t], ReduceOp::Sum)?;
        Vec::<f64>::try_from(t.to_device(Device::Cpu)).context("reading a reduced tensor")
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: owned pointers from the shim, freed once.
        unsafe {
            shim::vpetl_backend_free(self.backend);
            shim::vpetl_store_free(self.store);
        }
    }
}

/// A started collective.
pub struct Work {
    ptr: *mut c_void,
    rank: usize,
    timeout: Duration,
    what: String,
}

impl Work {
    /// Waits up to the group's timeout. An error here means a peer died, hung or disagreed.
    pub fn wait(self) -> anyhow::Result<()> {
        // SAFETY: a live work pointer; freed in Drop.
        let status = unsafe { shim::vpetl_work_wait(self.ptr, ms(self.timeout)) };
        if status != 0 {
            bail!(
                "rank {}: {} failed (timeout {:.0} s): {}. Another rank has probably died or stopped responding",
                self.rank,
                self.what,
                self.timeout.as_secs_f64(),
                shim::last_error()
            );
        }
        Ok(())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        // SAFETY: owned pointer from the shim.
        unsafe { shim::vpetl_work_free(self.ptr) }
    }
}
