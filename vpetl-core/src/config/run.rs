//! The top level of a run's config. Components inside it are registry entries read through
//! [`Component`], so every key of every component is checked when the config is read.

use std::path::PathBuf;

use serde::Deserialize;

use super::{from_node, ConfigError, Node};
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
    #[serde(default)]
    pub model: Option<Component<dyn ModelSpec>>,
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
