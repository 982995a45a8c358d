//! Evaluators accumulate predictions over a split and report prefixed metrics
//! (`accuracy/top1`), as mmengine's metrics do.

use tch::Tensor;

use crate::registry::{Kind, KindOf};

pub trait EvaluatorSpec: std::fmt::Debug {
    fn build(&self) -> Box<dyn Evaluator>;
}

impl KindOf for dyn EvaluatorSpec {
    const KIND: Kind = Kind::Evaluator;
}

pub trait Evaluator {
    fn reset(&mut self);
    /// One batch: the model's output and the targets.
    fn process(&mut self, logits: &Tensor, labels: &Tensor);
    /// `(name, value)` pairs; the first is the headline metric (model selection, results.json).
    fn compute(&self) -> Vec<(String, f64)>;
    /// Whether a higher headline metric is better.
    fn higher_is_better(&self) -> bool {
        true
    }
}
