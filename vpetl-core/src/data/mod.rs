//! Datasets and the data loader shared by every task.
//!
//! A dataset produces one sample at a time from an index and a random generator; the loader batches
//! samples on worker threads with prefetching. Each sample's generator is seeded from
//! `(seed, epoch, index)`, so the order and the augmentation of a run depend only on the seed: not
//! on the number of workers or on timing.

pub mod loader;

use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use crate::registry::{Kind, KindOf};

/// One example: an image `(C, H, W)` float tensor and its class.
pub struct Sample {
    pub image: Tensor,
    pub label: i64,
}

pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> i64;
    /// Loads and transforms item `index`. Errors name the file (and list line) of the item.
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Sample>;
    /// A short description for logs: `VTAB-1k dtd/train800 (800 images, 47 classes)`.
    fn describe(&self) -> String;
}

/// A dataset's typed config, as registered (`type: VTAB1k`).
pub trait DatasetSpec: std::fmt::Debug {
    fn build(&self) -> anyhow::Result<Box<dyn Dataset>>;
}

impl KindOf for dyn DatasetSpec {
    const KIND: Kind = Kind::Dataset;
}

/// Mixes seed, epoch and index into one generator seed (SplitMix64 finaliser).
pub fn sample_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
