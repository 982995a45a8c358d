//! Samples and features for pictures: a spread of a dataset's items (class-sorted splits would
//! otherwise show only the first classes) and the features a model computes for them.

use anyhow::{ensure, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::backbones::ForwardOpts;
use crate::data::Dataset;
use crate::model::Model;

/// `n` indices spread evenly over a dataset of `len` items (all of them when `n >= len`).
pub fn evenly_spaced(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| i * len / n).collect()
}

/// Loads items (evaluation transforms, no randomness used) as `(B, C, H, W)` images and labels.
pub fn load(dataset: &dyn Dataset, indices: &[usize]) -> anyhow::Result<(Tensor, Vec<i64>)> {
    ensure!(!indices.is_empty(), "no samples selected");
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for &i in indices {
        ensure!(i < dataset.len(), "sample {i} does not exist ({} has {} items)", dataset.describe(), dataset.len());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let s = dataset.get(i, &mut rng).with_context(|| format!("sample {i} of {}", dataset.describe()))?;
        images.push(s.image);
        labels.push(s.label);
    }
    Ok((Tensor::stack(&images, 0), labels))
}

/// Features `(B, C)` of `images`, in batches: the pooled backbone output, or block `block`'s output
/// averaged over its tokens (or its map's positions).
pub fn features(model: &dyn Model, images: &Tensor, block: Option<usize>, batch: i64) -> anyhow::Result<Tensor> {
    model.backbone().check_input(&images.size())?;
    let n = images.size()[0];
    let mut out = Vec::new();
    let _guard = tch::no_grad_guard();
    for start in (0..n).step_by(batch.max(1) as usize) {
        let x = images.narrow(0, start, batch.min(n - start));
        let f = model.forward(&x, ForwardOpts { train: false, collect_blocks: block.is_some() }).features;
        let t = match block {
            None => f.pooled,
            Some(b) => {
                let t = f.blocks.get(b).with_context(|| {
                    format!("block {b} does not exist (the backbone has {} blocks: 0 to {})", f.blocks.len(), f.blocks.len().saturating_sub(1))
                })?;
                // (B, N, C) tokens or a (B, H, W, C) map: average every position.
                t.flatten(1, t.dim() as i64 - 2).mean_dim(1, false, Kind::Float)
            }
        };
        out.push(t.to_kind(Kind::Float).to_device(tch::Device::Cpu));
    }
    Ok(Tensor::cat(&out, 0))
}
