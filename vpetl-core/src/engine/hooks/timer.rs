//! `IterTimerHook`: data-loading and iteration time, as mmengine measures them.

use std::time::Instant;

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::state::RunState;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IterTimerSpec {}

crate::register!(Hook, "core", "IterTimerHook", IterTimerSpec as dyn HookSpec, "time spent waiting for data and per iteration (logged as data_time and time)");

impl HookSpec for IterTimerSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(IterTimer { last: Instant::now() }))
    }
}

struct IterTimer {
    last: Instant,
}

impl Hook for IterTimer {
    fn priority(&self) -> i32 {
        priority::VERY_HIGH
    }
    fn before_train_epoch(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        self.last = Instant::now();
        Ok(())
    }
    fn before_train_iter(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        run.window.data_time_sum += self.last.elapsed().as_secs_f64();
        Ok(())
    }
    fn after_train_iter(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        let t = self.last.elapsed().as_secs_f64();
        run.window.time_sum += t;
        run.train_secs += t;
        self.last = Instant::now();
        Ok(())
    }
}
