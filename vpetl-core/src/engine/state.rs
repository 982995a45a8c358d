//! What a training run holds while it runs (mmengine's `Runner` attributes): hooks read and update
//! it at their call points.

use std::path::PathBuf;

use tch::{Device, Tensor};

use super::checkpoint::Meta;
use super::evaluator::Evaluator;
use super::optim::Optimizer;
use super::schedule::SchedulerSpec;
use crate::data::loader::Loader;
use crate::logging::ScalarLog;
use crate::model::Model;

/// Epoch-based (mmengine's `EpochBasedTrainLoop`) or iteration-based (`IterBasedTrainLoop`): the
/// unit of `max_*`, `val_interval` and checkpoint intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopKind {
    Epochs { max_epochs: u64 },
    Iters { max_iters: u64 },
}

/// Sums over the current logging window, filled by the loop and the timer and memory hooks and
/// emptied by the logger.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub loss_sum: f64,
    pub iters: u64,
    pub time_sum: f64,
    pub data_time_sum: f64,
    /// Peak memory (MB) seen in the window.
    pub memory_mb: f64,
}

/// The validation split and its metric.
pub struct Validation {
    pub loader: Loader,
    pub evaluator: Box<dyn Evaluator>,
}

pub struct RunState<'a> {
    pub work_dir: PathBuf,
    pub device: Device,
    pub model: &'a dyn Model,
    pub trainable: Vec<(String, Tensor)>,
    /// The model's buffers (running statistics), saved in checkpoints with the trainable tensors.
    pub buffers: Vec<(String, Tensor)>,
    pub optimizer: Box<dyn Optimizer>,
    pub scheduler: Option<&'a dyn SchedulerSpec>,
    pub base_lr: f64,
    /// The learning rate of the current iteration (set by the scheduler hook).
    pub lr: f64,
    /// Counters and the best metric; saved in checkpoints.
    pub meta: Meta,
    pub loop_kind: LoopKind,
    /// Evaluate every this many epochs (epoch loop) or iterations (iteration loop), and at the end.
    pub val_interval: u64,
    pub iters_per_epoch: u64,
    /// Index of the current iteration inside its epoch (0-based).
    pub inner_iter: u64,
    /// Loss of the iteration that just ran.
    pub loss: f64,
    pub window: Window,
    pub scalars: ScalarLog,
    pub validation: Option<Validation>,
    /// The most recent evaluation, and whether it improved the best metric.
    pub last_metrics: Vec<(String, f64)>,
    pub improved: bool,
    pub last_checkpoint: Option<PathBuf>,
    pub images_seen: u64,
    pub train_secs: f64,
    /// Results of the methods' prepare steps (selected channels, masks), saved in checkpoints.
    pub prepared: Vec<(String, Tensor)>,
    /// Peak memory (MB) over the run so far, as the memory hook measures it.
    pub peak_memory_mb: f64,
}

impl RunState<'_> {
    /// What a checkpoint stores as the model's tensors: the trainable ones, then the buffers.
    pub fn saved_tensors(&self) -> Vec<(String, Tensor)> {
        self.trainable.iter().chain(&self.buffers).map(|(k, t)| (k.clone(), t.shallow_clone())).collect()
    }

    /// True once the loop has done all its work.
    pub fn finished(&self) -> bool {
        match self.loop_kind {
            LoopKind::Epochs { max_epochs } => self.meta.epoch >= max_epochs,
            LoopKind::Iters { max_iters } => self.meta.iter >= max_iters,
        }
    }

    pub fn by_epoch(&self) -> bool {
        matches!(self.loop_kind, LoopKind::Epochs { .. })
    }

    /// Completed loop units: epochs or iterations.
    pub fn progress(&self) -> u64 {
        if self.by_epoch() {
            self.meta.epoch
        } else {
            self.meta.iter
        }
    }

    /// Whether `interval` (in loop units) divides the progress, or the run just finished.
    pub fn every(&self, interval: u64) -> bool {
        self.progress() % interval.max(1) == 0 || self.finished()
    }

    /// The current 1-based epoch, for log lines.
    pub fn epoch_label(&self) -> String {
        match self.loop_kind {
            LoopKind::Epochs { max_epochs } => format!("epoch {}/{}", self.meta.epoch + 1, max_epochs),
            LoopKind::Iters { max_iters } => format!("iter {}/{}", self.meta.iter, max_iters),
        }
    }
}
