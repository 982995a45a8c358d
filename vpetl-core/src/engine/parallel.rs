//! What the train loop does differently when it is one rank of a data-parallel job (DDP's
//! semantics): the same initial trainable tensors everywhere (broadcast from rank 0), a sharded
//! training set, gradients averaged before every optimiser step, the logged loss averaged over the
//! ranks, the learning rate scaled by the total batch when `auto_scale_lr` asks for it. Outside a job
//! every call is a no-op, so the loop reads the same either way.

use std::time::Duration;

use anyhow::Context;
use tch::{Device, Tensor};

use crate::config::RunConfig;
use crate::data::loader::Loader;
use crate::dist::grads::GradSync;
use crate::dist::{self, ProcessGroup, Shard};

pub struct Parallel {
    pub group: Option<&'static ProcessGroup>,
    grads: Option<GradSync>,
    names: Vec<String>,
}

impl Parallel {
    /// Joins the job the launcher's environment describes (see `dist::env`), if any.
    pub fn init(cfg: &RunConfig) -> anyhow::Result<Self> {
        let d = &cfg.env_cfg.dist_cfg;
        anyhow::ensure!(d.timeout > 0.0, "env_cfg.dist_cfg.timeout must be positive (seconds), not {}", d.timeout);
        let group = dist::init_from_env(d.backend.as_deref(), Duration::from_secs_f64(d.timeout))?;
        Ok(Parallel { group, grads: None, names: Vec::new() })
    }

    pub fn world_size(&self) -> usize {
        self.group.map_or(1, |g| g.world_size)
    }

    /// Rank 0 (or not distributed): the one process that logs to files, saves and reports.
    pub fn is_main(&self) -> bool {
        self.group.is_none_or(|g| g.is_main())
    }

    /// This rank's device, or the best device outside a job.
    pub fn device(&self) -> Device {
        self.group.map_or_else(crate::runtime::default_device, |g| g.device)
    }

    /// This rank's part of a loader's epochs.
    pub fn shard(&self, loader: Loader) -> Loader {
        match self.group {
            Some(g) => loader.shard(Shard { rank: g.rank, world: g.world_size }),
            None => loader,
        }
    }

    /// The learning rate to use: `base_lr` × total batch / `base_batch_size` with `auto_scale_lr`.
    pub fn scale_lr(&self, cfg: &RunConfig, base_lr: f64, batch_size: usize) -> anyhow::Result<f64> {
        let a = &cfg.auto_scale_lr;
        if !a.enable {
            return Ok(base_lr);
        }
        let base = a.base_batch_size.context("auto_scale_lr.enable is true but auto_scale_lr.base_batch_size is not set")?;
        anyhow::ensure!(base > 0, "auto_scale_lr.base_batch_size must be positive");
        let total = batch_size * self.world_size();
        let lr = base_lr * total as f64 / base as f64;
        tracing::info!("auto_scale_lr: lr {base_lr:e} × {total} (batch {batch_size} × {} ranks) / {base} = {lr:e}", self.world_size());
        Ok(lr)
    }

    /// Makes every rank start from rank 0's trainable tensors and prepares the gradient buckets.
    pub fn prepare(&mut self, cfg: &RunConfig, trainable: &[(String, Tensor)]) -> anyhow::Result<()> {
        let Some(g) = self.group else { return Ok(()) };
        let _guard = tch::no_grad_guard();
        // One flat buffer: c10d's multi-tensor collectives mean one tensor per device, of one shape.
        let flat = Tensor::cat(&trainable.iter().map(|(_, t)| t.detach().to_kind(tch::Kind::Float).reshape([-1])).collect::<Vec<_>>(), 0);
        g.broadcast(&[&flat], 0).context("broadcasting rank 0's initial trainable tensors")?;
        let mut offset = 0i64;
        for (_, t) in trainable {
            let n = t.numel() as i64;
            t.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(t).to_kind(t.kind()));
            offset += n;
        }
        let params: Vec<Tensor> = trainable.iter().map(|(_, t)| t.shallow_clone()).collect();
        let sync = GradSync::new(&params, cfg.env_cfg.dist_cfg.bucket_cap_mb);
        tracing::info!("data parallel over {} ranks: {} trainable tensors in {} gradient buckets", g.world_size, params.len(), sync.num_buckets());
        self.grads = Some(sync);
        self.names = trainable.iter().map(|(k, _)| k.clone()).collect();
        Ok(())
    }

    /// Averages the gradients of the trainable tensors over the ranks (before the optimiser step).
    pub fn sync_grads(&self, trainable: &[Tensor]) -> anyhow::Result<()> {
        match (self.group, &self.grads) {
            (Some(g), Some(sync)) => sync.all_reduce(g, trainable, &self.names),
            _ => Ok(()),
        }
    }

    /// The mean over the ranks of `sum / n` (each rank's loss window), for logging.
    pub fn mean(&self, sum: f64, n: u64) -> anyhow::Result<f64> {
        match self.group {
            Some(g) => {
                let v = g.sum_f64(&[sum, n as f64])?;
                Ok(v[0] / v[1])
            }
            None => Ok(sum / n as f64),
        }
    }
}
