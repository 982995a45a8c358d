//! The top level of a run's config, with mmengine's key names. Components inside it are registry
//! entries read through [`Component`], so every key of every component is checked when the config
//! is read, before anything is built.

use std::path::PathBuf;

use serde::Deserialize;

use super::{from_node, ConfigError, Node};
use crate::data::loader::DataloaderSpec;
use crate::engine::evaluator::EvaluatorSpec;
use crate::engine::optim::OptimizerSpec;
use crate::engine::schedule::SchedulerSpec;
use crate::model::ModelSpec;
use crate::registry::Component;

#[derive(Debug, Deserialize)]
pub struct RunConfig {
    /// Where outputs go (overridden by `--work-dir`; default `work_dirs/<config name>`).
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub log_level: LogLevel,
    /// What the run is, for results.json and reports (`task: vtab`, `dataset: dtd`).
    #[serde(default)]
    pub experiment: Experiment,
    #[serde(default)]
    pub model: Option<Component<dyn ModelSpec>>,
    #[serde(default)]
    pub train_dataloader: Option<DataloaderSpec>,
    #[serde(default)]
    pub val_dataloader: Option<DataloaderSpec>,
    #[serde(default)]
    pub test_dataloader: Option<DataloaderSpec>,
    #[serde(default)]
    pub val_evaluator: Option<Component<dyn EvaluatorSpec>>,
    #[serde(default)]
    pub optim_wrapper: Option<OptimWrapper>,
    #[serde(default)]
    pub param_scheduler: Option<Component<dyn SchedulerSpec>>,
    #[serde(default)]
    pub train_cfg: Option<TrainCfg>,
    #[serde(default)]
    pub default_hooks: DefaultHooks,
    #[serde(default)]
    pub loss: Loss,
    /// Weights (a training checkpoint or any supported file) loaded into the model before training.
    #[serde(default)]
    pub load_from: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
pub struct Experiment {
    pub task: Option<String>,
    pub dataset: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OptimWrapper {
    pub optimizer: Component<dyn OptimizerSpec>,
    /// Clip the global gradient norm (`{max_norm: 1.0}`).
    #[serde(default)]
    pub clip_grad: Option<ClipGrad>,
    /// Accumulate gradients over this many iterations per update.
    #[serde(default = "one")]
    pub accumulative_counts: u64,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct ClipGrad {
    pub max_norm: f64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize, Clone)]
pub struct TrainCfg {
    pub max_epochs: u64,
    /// Evaluate every this many epochs (and after the last).
    #[serde(default = "one")]
    pub val_interval: u64,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Loss {
    pub label_smoothing: f64,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct DefaultHooks {
    pub logger: LoggerHook,
    pub checkpoint: CheckpointHook,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(default)]
pub struct LoggerHook {
    /// Log training scalars every this many iterations.
    pub interval: u64,
}

impl Default for LoggerHook {
    fn default() -> Self {
        LoggerHook { interval: 10 }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(default)]
pub struct CheckpointHook {
    /// Save every this many epochs (and after the last).
    pub interval: u64,
    /// Keep this many epoch checkpoints (0 keeps all).
    pub max_keep_ckpts: usize,
    /// Also keep the checkpoint with the best headline metric as `best.safetensors`.
    pub save_best: bool,
}

impl Default for CheckpointHook {
    fn default() -> Self {
        CheckpointHook { interval: 1, max_keep_ckpts: 3, save_best: true }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl RunConfig {
    /// Reads and checks the whole merged tree.
    pub fn from_node(node: &Node) -> Result<Self, ConfigError> {
        from_node(node, "")
    }
}
