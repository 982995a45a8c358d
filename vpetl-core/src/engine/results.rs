//! `work_dir/results.json`: what a run achieved and cost, in the shape `tools/report` reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::workdir::write_atomic;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    pub name: String,
    /// The last evaluation's value.
    pub value: f64,
    /// The best evaluation's value and epoch (V-PETL reports the best).
    pub best: Option<f64>,
    pub best_epoch: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Params {
    /// Everything that trains (head included).
    pub trainable: i64,
    pub total: i64,
    /// Parameters the methods added.
    pub inserted: i64,
    /// Trainable parameters of the head.
    pub head: i64,
    /// Trainable parameters without the head (the papers' Params column).
    pub method: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub task: String,
    pub dataset: String,
    pub method: String,
    pub backbone: String,
    pub metric: Metric,
    pub params: Params,
    /// V-PETL's performance-parameter trade-off of the last evaluation.
    pub ppt: f64,
    pub peak_memory_mb: f64,
    pub train_images_per_s: f64,
    pub wall_s: f64,
    pub epochs: u64,
    pub seed: u64,
    pub num_classes: i64,
    pub config_hash: String,
    pub git_revision: String,
}

impl Results {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a vpetl results.json: {e}", path.display()))
    }
}

/// PPT = M * exp(-log10(P / C + 1)), C = 1e7, with M the metric as a fraction and P the trainable
/// parameters without the head (paper_tables.md; it reproduces the seed's tables).
pub fn ppt(metric_fraction: f64, params: i64) -> f64 {
    metric_fraction * (-(params as f64 / 1e7 + 1.0).log10()).exp()
}
