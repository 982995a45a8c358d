//! Batching on worker threads, with prefetching and a deterministic order.
//!
//! Batch `b` of an epoch is built by worker `b % workers`; the consumer receives batches in order.
//! A failing sample stops the epoch with its error (naming the file), unless `skip_bad` is set: then
//! the sample is left out with a warning and counted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::anyhow;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tch::Tensor;

use super::{sample_seed, Dataset, DatasetSpec};
use crate::dist::Shard;
use crate::registry::Component;

/// A data loader as configured (`train_dataloader:` and friends, mmengine's names).
#[derive(Debug, Deserialize)]
pub struct DataloaderSpec {
    pub dataset: Component<dyn DatasetSpec>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_workers")]
    pub num_workers: usize,
    #[serde(default)]
    pub shuffle: bool,
    #[serde(default)]
    pub drop_last: bool,
    /// Batches each worker may build ahead.
    #[serde(default = "default_workers")]
    pub prefetch: usize,
    /// Leave out samples that fail to load (with a warning and a count) instead of stopping.
    #[serde(default)]
    pub skip_bad: bool,
}

fn default_batch_size() -> usize {
    64
}

fn default_workers() -> usize {
    2
}

/// The loader settings (a [`DataloaderSpec`] without its dataset).
#[derive(Clone, Debug)]
struct Settings {
    batch_size: usize,
    num_workers: usize,
    shuffle: bool,
    drop_last: bool,
    prefetch: usize,
    skip_bad: bool,
}

pub struct Batch {
    /// `(B, C, H, W)`
    pub images: Tensor,
    /// `(B,)` int64
    pub labels: Tensor,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
}

pub struct Loader {
    dataset: Arc<dyn Dataset>,
    spec: Settings,
    seed: u64,
    skipped: Arc<AtomicUsize>,
    /// This rank's part of every epoch in data-parallel runs (`dist::Shard`).
    shard: Option<Shard>,
}

impl Loader {
    /// Builds the dataset a spec names and a loader over it.
    pub fn from_spec(spec: &DataloaderSpec, seed: u64) -> anyhow::Result<Self> {
        let dataset: Arc<dyn Dataset> = Arc::from(spec.dataset.spec.build()?);
        Loader::new(dataset, spec, seed)
    }

    pub fn new(dataset: Arc<dyn Dataset>, spec: &DataloaderSpec, seed: u64) -> anyhow::Result<Self> {
        let spec = Settings {
            batch_size: spec.batch_size,
            num_workers: spec.num_workers,
            shuffle: spec.shuffle,
            drop_last: spec.drop_last,
            prefetch: spec.prefetch,
            skip_bad: spec.skip_bad,
        };
        if spec.batch_size == 0 {
            anyhow::bail!("batch_size must be at least 1");
        }
        if dataset.is_empty() {
            anyhow::bail!("{} has no samples", dataset.describe());
        }
        Ok(Loader { dataset, spec, seed, skipped: Arc::new(AtomicUsize::new(0)), shard: None })
    }

    /// The same loader with shuffling on or off.
    pub fn shuffled(mut self, shuffle: bool) -> Self {
        self.spec.shuffle = shuffle;
        self
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    pub fn batch_size(&self) -> usize {
        self.spec.batch_size
    }

    /// Makes this loader yield one rank's part of each epoch (DistributedSampler's semantics: the
    /// same number of batches on every rank, padding by wrapping around unless `drop_last`).
    pub fn shard(mut self, shard: Shard) -> Self {
        self.shard = Some(shard);
        self
    }

    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }

    /// Samples per epoch (of this rank, when sharded).
    fn samples(&self) -> usize {
        let n = self.dataset.len();
        self.shard.map_or(n, |s| s.per_rank(n, self.spec.drop_last))
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.samples();
        if self.spec.drop_last {
            n / self.spec.batch_size
        } else {
            n.div_ceil(self.spec.batch_size)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples left out so far because they failed to load (`skip_bad`).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The sample order of an epoch (this rank's part, when sharded).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.spec.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(self.seed, epoch, u64::MAX)));
        }
        if let Some(shard) = self.shard {
            order = shard.select(&order, self.spec.drop_last);
        }
        let n = self.len() * self.spec.batch_size;
        order.truncate(n.min(order.len()));
        order
    }

    /// Iterates over the batches of `epoch`, starting at batch `skip` (for resuming mid-epoch).
    pub fn epoch(&self, epoch: u64, skip: usize) -> EpochIter {
        let order = Arc::new(self.order(epoch));
        let batches: Vec<Vec<usize>> = order.chunks(self.spec.batch_size).map(<[usize]>::to_vec).skip(skip).collect();
        let batches = Arc::new(batches);
        let workers = self.spec.num_workers.max(1).min(batches.len().max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel::<anyhow::Result<Batch>>(self.spec.prefetch.max(1));
            receivers.push(rx);
            let (dataset, batches, stop, skipped) = (self.dataset.clone(), batches.clone(), stop.clone(), self.skipped.clone());
            let (seed, skip_bad) = (self.seed, self.spec.skip_bad);
            handles.push(std::thread::spawn(move || {
                // Each worker uses one intra-op thread: the workers are the parallelism here.
                tch::set_num_threads(1);
                let mut b = w;
                while b < batches.len() && !stop.load(Ordering::Relaxed) {
                    let built = build_batch(dataset.as_ref(), &batches[b], seed, epoch, skip_bad, &skipped);
                    let failed = built.is_err();
                    if tx.send(built).is_err() || failed {
                        break;
                    }
                    b += workers;
                }
            }));
        }
        EpochIter { receivers, handles, stop, next: 0, total: batches.len() }
    }
}

fn build_batch(
    dataset: &dyn Dataset,
    indices: &[usize],
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    skipped: &AtomicUsize,
) -> anyhow::Result<Batch> {
    let mut images = Vec::with_capacity(indices.len());
    let mut labels = Vec::with_capacity(indices.len());
    let mut kept = Vec::with_capacity(indices.len());
    for &i in indices {
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, epoch, i as u64));
        match dataset.get(i, &mut rng) {
            Ok(s) => {
                images.push(s.image);
                labels.push(s.label);
                kept.push(i);
            }
            Err(e) if skip_bad => {
                tracing::warn!("skipping a bad sample: {e:#}");
                skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    if images.is_empty() {
        return Err(anyhow!("every sample of a batch failed to load ({} skipped so far)", skipped.load(Ordering::Relaxed)));
    }
    Ok(Batch { images: Tensor::stack(&images, 0), labels: Tensor::from_slice(&labels), indices: kept })
}

pub struct EpochIter {
    receivers: Vec<Receiver<anyhow::Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    total: usize,
}

impl EpochIter {
    pub fn total(&self) -> usize {
        self.total
    }
}

impl Iterator for EpochIter {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let w = self.next % self.receivers.len();
        self.next += 1;
        match self.receivers[w].recv() {
            Ok(Ok(b)) => Some(Ok(b)),
            Ok(Err(e)) => {
                self.next = self.total;
                Some(Err(e))
            }
            Err(_) => {
                self.next = self.total;
                Some(Err(anyhow!("a data worker stopped unexpectedly")))
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so that blocked senders wake up and see the stop flag.
        let receivers = std::mem::take(&mut self.receivers);
        drop(receivers);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
