//! `CheckpointHook`: saves the trainable tensors, optimiser state and counters every `interval`
//! epochs (or iterations in an iteration loop), at the end, and as `best.safetensors` when the
//! headline metric improved; keeps the newest `max_keep_ckpts`.

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::checkpoint;
use crate::engine::state::RunState;

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CheckpointSpec {
    /// Save every this many epochs (iterations in an iteration loop), and after the last.
    pub interval: u64,
    /// Keep this many periodic checkpoints (0 keeps all).
    pub max_keep_ckpts: usize,
    /// Also keep the checkpoint with the best headline metric as `best.safetensors`.
    pub save_best: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec { interval: 1, max_keep_ckpts: 3, save_best: true }
    }
}

crate::register!(Hook, "core", "CheckpointHook", CheckpointSpec as dyn HookSpec, "atomic training checkpoints every `interval`, the best one, and pruning to `max_keep_ckpts`");

impl HookSpec for CheckpointSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(Checkpoint { spec: self.clone() }))
    }
}

struct Checkpoint {
    spec: CheckpointSpec,
}

impl Checkpoint {
    fn maybe_save(&self, run: &mut RunState) -> anyhow::Result<()> {
        // Data parallel: every rank holds the same tensors; rank 0 alone writes them.
        if !(run.every(self.spec.interval) || run.improved) || !crate::dist::is_main() {
            return Ok(());
        }
        run.meta.optimizer_steps = run.optimizer.state().1;
        let (state, _) = run.optimizer.state();
        let path = checkpoint::periodic_path(&run.work_dir, run.by_epoch(), run.progress());
        let tensors = run.saved_tensors();
        checkpoint::save(&path, &tensors, &state, &run.prepared, &run.meta)?;
        checkpoint::set_last(&run.work_dir, &path)?;
        if run.improved && self.spec.save_best {
            checkpoint::save(&run.work_dir.join("best.safetensors"), &tensors, &state, &run.prepared, &run.meta)?;
        }
        if self.spec.max_keep_ckpts > 0 {
            checkpoint::prune(&run.work_dir, self.spec.max_keep_ckpts, &path)?;
        }
        run.last_checkpoint = Some(path);
        Ok(())
    }
}

impl Hook for Checkpoint {
    fn priority(&self) -> i32 {
        priority::VERY_LOW
    }
    fn after_unit(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        self.maybe_save(run)
    }
}
