//! `EvaluationHook`: records each evaluation (console line, `scalars.json`) and tracks the best
//! headline metric for checkpoint selection. When evaluation runs is the loop's `val_interval`.

use serde::Deserialize;

use super::{priority, Hook, HookSpec};
use crate::engine::state::RunState;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EvaluationSpec {}

crate::register!(Hook, "core", "EvaluationHook", EvaluationSpec as dyn HookSpec, "logs each evaluation and tracks the best headline metric (the first the evaluator reports)");

impl HookSpec for EvaluationSpec {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>> {
        Ok(Box::new(Evaluation))
    }
}

struct Evaluation;

impl Hook for Evaluation {
    fn priority(&self) -> i32 {
        priority::LOW
    }
    fn after_val(&mut self, run: &mut RunState) -> anyhow::Result<()> {
        let metrics = run.last_metrics.clone();
        let unit = if run.by_epoch() { "epoch" } else { "iter" };
        tracing::info!(
            "{unit} {} evaluation: {}",
            run.progress(),
            metrics.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
        );
        run.scalars.write_eval(run.progress(), &metrics)?;
        let higher_is_better = run.validation.as_ref().is_none_or(|v| v.evaluator.higher_is_better());
        if let Some((name, value)) = metrics.first().cloned() {
            let better = match &run.meta.best {
                None => true,
                Some((_, b, _)) => {
                    if higher_is_better {
                        value > *b
                    } else {
                        value < *b
                    }
                }
            };
            if better {
                run.meta.best = Some((name, value, run.progress()));
                run.improved = true;
            }
        }
        Ok(())
    }
}
