//! The top level of a run's config, with mmengine's key names. Components inside it are registry
//! entries read through [`Component`], so every key of every component is checked when the config
//! is read, before anything is built.

use std::path::PathBuf;

use serde::Deserialize;

use super::{from_node, ConfigError, Node};
use crate::data::loader::DataloaderSpec;
use crate::engine::evaluator::EvaluatorSpec;
use crate::engine::hooks::{DefaultHooks, HookSpec};
use crate::engine::state::LoopKind;
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
    /// Hook slots over the defaults (timer, param_scheduler, memory, logger, evaluation, checkpoint).
    #[serde(default)]
    pub default_hooks: DefaultHooks,
    /// Extra registered hooks.
    #[serde(default)]
    pub custom_hooks: Vec<Component<dyn HookSpec>>,
    #[serde(default)]
    pub loss: Loss,
    /// Weights (a training checkpoint or any supported file) loaded into the model before training.
    #[serde(default)]
    pub load_from: Option<PathBuf>,
    /// Process-level settings: data-parallel backend and timeout.
    #[serde(default)]
    pub env_cfg: EnvCfg,
    /// Scale the learning rate by the total batch (all ranks) over `base_batch_size` when enabled.
    #[serde(default)]
    pub auto_scale_lr: AutoScaleLr,
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
    /// `OptimWrapper` (the default) or `AmpOptimWrapper` (mixed precision, see `engine::amp`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// AmpOptimWrapper: the autocast dtype, `bfloat16` (the default) or `float16`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// AmpOptimWrapper with float16: a fixed loss scale; unset, the scale is dynamic.
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// Store the frozen tensors (the backbone) in this dtype (`bfloat16`); trainable ones stay fp32.
    #[serde(default)]
    pub frozen_dtype: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct ClipGrad {
    pub max_norm: f64,
}

fn one() -> u64 {
    1
}

/// The training loop (mmengine's `train_cfg`): epoch-based with `max_epochs`, or iteration-based
/// with `max_iters` (`type: IterBasedTrainLoop` may be written too, as in mmengine).
#[derive(Debug, Deserialize, Clone)]
pub struct TrainCfg {
    #[serde(default, rename = "type")]
    pub loop_type: Option<LoopType>,
    #[serde(default)]
    pub max_epochs: Option<u64>,
    #[serde(default)]
    pub max_iters: Option<u64>,
    /// Evaluate every this many epochs (iterations in an iteration loop), and after the last.
    #[serde(default = "one")]
    pub val_interval: u64,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum LoopType {
    EpochBasedTrainLoop,
    IterBasedTrainLoop,
}

impl TrainCfg {
    pub fn loop_kind(&self) -> Result<LoopKind, String> {
        match (self.loop_type, self.max_epochs, self.max_iters) {
            (Some(LoopType::IterBasedTrainLoop) | None, None, Some(max_iters)) => Ok(LoopKind::Iters { max_iters }),
            (Some(LoopType::EpochBasedTrainLoop) | None, Some(max_epochs), None) => Ok(LoopKind::Epochs { max_epochs }),
            (_, Some(_), Some(_)) => Err("set either `max_epochs` (epoch loop) or `max_iters` (iteration loop), not both".into()),
            (None, None, None) => Err("set `max_epochs` (epoch loop) or `max_iters` (iteration loop)".into()),
            (Some(LoopType::IterBasedTrainLoop), _, None) => Err("`IterBasedTrainLoop` needs `max_iters`".into()),
            (Some(LoopType::EpochBasedTrainLoop), None, _) => Err("`EpochBasedTrainLoop` needs `max_epochs`".into()),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Loss {
    pub label_smoothing: f64,
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

/// mmengine's `env_cfg`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct EnvCfg {
    pub dist_cfg: DistCfg,
}

/// mmengine's `env_cfg.dist_cfg`, read when the process was started by a launcher (`dist::env`).
#[derive(Debug, Deserialize, Clone)]
#[serde(default)]
pub struct DistCfg {
    /// `gloo` or `nccl`; unset: NCCL on CUDA, Gloo on the CPU.
    pub backend: Option<String>,
    /// Seconds a rank waits for the others (rendezvous, every collective) before it fails.
    pub timeout: f64,
    /// Gradient all-reduce bucket size (DDP's `bucket_cap_mb`).
    pub bucket_cap_mb: f64,
}

impl Default for DistCfg {
    fn default() -> Self {
        DistCfg { backend: None, timeout: 1800.0, bucket_cap_mb: 25.0 }
    }
}

/// mmengine's `auto_scale_lr`: lr × (batch_size × world size) / base_batch_size when enabled.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct AutoScaleLr {
    pub enable: bool,
    pub base_batch_size: Option<usize>,
}

impl RunConfig {
    /// Reads and checks the whole merged tree.
    pub fn from_node(node: &Node) -> Result<Self, ConfigError> {
        let cfg: RunConfig = from_node(node, "")?;
        if let (Some(t), Some(n)) = (&cfg.train_cfg, node.get("train_cfg")) {
            t.loop_kind().map_err(|m| ConfigError::new(m).at_key("train_cfg".to_string()).in_file(n.origin.as_str()))?;
        }
        Ok(cfg)
    }
}
