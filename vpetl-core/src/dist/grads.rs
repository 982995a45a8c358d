//! Gradient averaging over the ranks, as DDP does: the trainable tensors' gradients, flattened into
//! buckets of about `bucket_cap_mb` (in reverse order of the parameters, roughly the order backward
//! produces them), every bucket's all-reduce started before the first is waited on, then averaged
//! and copied back.
//!
//! Unlike DDP the reduction starts after backward, not during it: tch exposes no gradient hooks.
//! Frozen tensors are never touched (only the optimiser's parameters are passed in).

use anyhow::bail;
use tch::Tensor;

use super::group::{ProcessGroup, ReduceOp};

pub struct GradSync {
    /// Indices into the parameter list, per bucket.
    buckets: Vec<Vec<usize>>,
}

impl GradSync {
    pub fn new(params: &[Tensor], bucket_cap_mb: f64) -> Self {
        let cap = (bucket_cap_mb.max(0.0) * 1024.0 * 1024.0) as usize;
        let mut buckets = vec![Vec::new()];
        let mut bytes = 0usize;
        for i in (0..params.len()).rev() {
            let p = &params[i];
            let size = p.numel() * p.kind().elt_size_in_bytes();
            if bytes > 0 && bytes + size > cap {
                buckets.push(Vec::new());
                bytes = 0;
            }
            buckets.last_mut().expect("one bucket at least").push(i);
            bytes += size;
        }
        GradSync { buckets }
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Averages the gradients of `params` (named by `names` in errors) over the group.
    pub fn all_reduce(&self, pg: &ProcessGroup, params: &[Tensor], names: &[String]) -> anyhow::Result<()> {
        if pg.world_size == 1 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        // Which tensors got a gradient on how many ranks: all or none, or the ranks would disagree.
        let present = Tensor::from_slice(&params.iter().map(|p| p.grad().defined() as i32 as f32).collect::<Vec<_>>()).to_device(pg.device);
        pg.all_reduce(&[&present], ReduceOp::Sum)?;
        let present = Vec::<f32>::try_from(present.to_device(tch::Device::Cpu))?;
        for (i, &n) in present.iter().enumerate() {
            let here = params[i].grad().defined();
            if (n as usize != 0 && n as usize != pg.world_size) || (n == 0.0 && here) {
                bail!(
                    "rank {}: `{}` has a gradient on {} of {} ranks; data parallel needs every trainable tensor used in every step on every rank",
                    pg.rank,
                    names[i],
                    n,
                    pg.world_size
                );
            }
        }
        let mut started = Vec::with_capacity(self.buckets.len());
        for bucket in &self.buckets {
            let grads: Vec<Tensor> = bucket.iter().filter(|&&i| present[i] > 0.0).map(|&i| params[i].grad()).collect();
            if grads.is_empty() {
                continue;
            }
            let kind = grads[0].kind();
            let flat = Tensor::cat(&grads.iter().map(|g| g.to_kind(kind).reshape([-1])).collect::<Vec<_>>(), 0);
            let work = pg.all_reduce_start(&[&flat], ReduceOp::Sum)?;
            started.push((work, flat, grads));
        }
        let scale = 1.0 / pg.world_size as f64;
        for (work, mut flat, grads) in started {
            work.wait()?;
            let _ = flat.g_mul_scalar_(scale);
            let mut offset = 0i64;
            for mut g in grads {
                let n = g.numel() as i64;
                let part = flat.narrow(0, offset, n).view_as(&g).to_kind(g.kind());
                g.copy_(&part);
                offset += n;
            }
        }
        Ok(())
    }
}
