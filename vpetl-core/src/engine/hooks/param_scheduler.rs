//! `ParamSchedulerHook`: sets each iteration's learning rate from `param_scheduler`.

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::state::RunState;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ParamSchedulerSpec {}

crate::register!(Hook, "core", "ParamSchedulerHook", ParamSchedulerSpec as dyn HookSpec, "the learning rate of every iteration from the config's param_scheduler (constant without one)");

impl HookSpec for ParamSchedulerSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(ParamScheduler))
    }
}

struct ParamScheduler;

impl Hook for ParamScheduler {
    fn priority(&self) -> i32 {
        priority::HIGH
    }
    fn before_train_iter(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        run.lr = run.scheduler.map_or(run.base_lr, |s| s.lr(run.base_lr, run.meta.epoch, run.meta.iter));
        Ok(())
    }
}
