//! Logging: `tracing` to the console and to the run's text log, scalars as JSON lines in
//! `vis_data/scalars.json` (mmengine's shape: one object per logged step with `step`, `epoch`,
//! `iter`, `lr`, `loss`, `time`, `data_time`, `memory`; evaluation lines carry prefixed metric keys
//! such as `accuracy/top1`), and progress bars that fall back to periodic log lines when stderr is
//! not a terminal.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Console logging only (for tools that do not run jobs). `RUST_LOG` overrides the level.
pub fn init_console(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false).with_filter(filter))
        .try_init();
}

/// Console plus a plain-text copy in `log_file`.
pub fn init_with_file(level: &str, log_file: &Path) -> anyhow::Result<()> {
    let file = File::create(log_file).with_context(|| format!("cannot create log file {}", log_file.display()))?;
    let console_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let file_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false).with_filter(console_filter))
        .with(fmt::layer().with_writer(Mutex::new(file)).with_ansi(false).with_target(false).with_filter(file_filter))
        .try_init()
        .context("logging was already initialised")?;
    Ok(())
}

/// One training log line, as mmengine writes it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TrainScalars {
    pub step: u64,
    pub epoch: u64,
    pub iter: u64,
    pub lr: f64,
    pub loss: f64,
    pub time: f64,
    pub data_time: f64,
    /// Peak memory in MB over the logging interval.
    pub memory: f64,
}

/// Appends JSON lines to `vis_data/scalars.json`; each line is flushed so a crash loses nothing.
pub struct ScalarLog {
    /// `None`: a log that records nothing (data-parallel ranks other than 0).
    file: Option<File>,
}

impl ScalarLog {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(ScalarLog { file: Some(file) })
    }

    /// A log that writes nothing.
    pub fn disabled() -> Self {
        ScalarLog { file: None }
    }

    pub fn write_train(&mut self, s: &TrainScalars) -> anyhow::Result<()> {
        self.write_line(&serde_json::to_value(s)?)
    }

    /// An evaluation line: `{"accuracy/top1": 81.2, ..., "step": 10}`.
    pub fn write_eval(&mut self, step: u64, metrics: &[(String, f64)]) -> anyhow::Result<()> {
        let mut obj = serde_json::Map::new();
        for (k, v) in metrics {
            obj.insert(k.clone(), serde_json::json!(v));
        }
        obj.insert("step".into(), serde_json::json!(step));
        self.write_line(&serde_json::Value::Object(obj))
    }

    fn write_line(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut line = serde_json::to_string(v)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.flush()?;
        Ok(())
    }
}

/// A progress display for a loop of known length: an indicatif bar on a terminal, otherwise an
/// `info` line at most every `every` (and at the end).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}<{eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        });
        let now = Instant::now();
        Progress { bar, label: label.to_string(), total, done: 0, started: now, last_line: now, every: Duration::from_secs(10) }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None => {
                if self.last_line.elapsed() >= self.every || self.done == self.total {
                    self.last_line = Instant::now();
                    let elapsed = self.started.elapsed().as_secs_f64();
                    let eta = if self.done > 0 { elapsed * (self.total - self.done.min(self.total)) as f64 / self.done as f64 } else { 0.0 };
                    tracing::info!("{}: {}/{} ({elapsed:.0}s, eta {eta:.0}s)", self.label, self.done, self.total);
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
