//! `LoggerHook`: every `interval` iterations (and at each epoch's end) a console line and a
//! `vis_data/scalars.json` record with the window's mean loss and times and its peak memory.

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::state::{RunState, Window};
use crate::logging::TrainScalars;

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LoggerSpec {
    /// Log every this many iterations.
    pub interval: u64,
}

impl Default for LoggerSpec {
    fn default() -> Self {
        LoggerSpec { interval: 10 }
    }
}

crate::register!(Hook, "core", "LoggerHook", LoggerSpec as dyn HookSpec, "training scalars to the console and vis_data/scalars.json every `interval` iterations");

impl HookSpec for LoggerSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(Logger { interval: self.interval.max(1) }))
    }
}

struct Logger {
    interval: u64,
}

impl Logger {
    fn flush(&self, run: &mut RunState) -> anyhow::Result<()> {
        let w = std::mem::take(&mut run.window);
        if w.iters == 0 {
            return Ok(());
        }
        let n = w.iters as f64;
        let s = TrainScalars {
            step: run.meta.iter,
            epoch: run.meta.epoch + 1,
            iter: run.meta.iter,
            lr: run.lr,
            loss: w.loss_sum / n,
            time: w.time_sum / n,
            data_time: w.data_time_sum / n,
            memory: w.memory_mb,
        };
        tracing::info!(
            "epoch {} iter {}/{}: lr {:.3e} loss {:.4} time {:.3}s data {:.3}s memory {:.0} MB",
            s.epoch,
            run.inner_iter + 1,
            run.iters_per_epoch,
            s.lr,
            s.loss,
            s.time,
            s.data_time,
            s.memory
        );
        run.scalars.write_train(&s)?;
        run.window = Window::default();
        Ok(())
    }
}

impl Hook for Logger {
    fn priority(&self) -> i32 {
        priority::BELOW_NORMAL
    }
    fn after_train_iter(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        run.window.loss_sum += run.loss;
        run.window.iters += 1;
        let epoch_end = run.inner_iter + 1 == run.iters_per_epoch;
        if run.meta.iter % self.interval == 0 || epoch_end || run.finished() {
            self.flush(run)?;
        }
        Ok(())
    }
}
