//! Top-k accuracy in percent (`accuracy/top1`, `accuracy/top5`), micro-averaged over samples.

use serde::Deserialize;
use tch::{Kind, Tensor};
use vpetl_core::engine::evaluator::{Evaluator, EvaluatorSpec};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AccuracySpec {
    pub topk: Vec<i64>,
}

impl Default for AccuracySpec {
    fn default() -> Self {
        AccuracySpec { topk: vec![1, 5] }
    }
}

vpetl_core::register!(Evaluator, "cls", "Accuracy", AccuracySpec as dyn EvaluatorSpec, "top-k classification accuracy (%)");

struct Accuracy {
    topk: Vec<i64>,
    correct: Vec<i64>,
    total: i64,
}

impl EvaluatorSpec for AccuracySpec {
    fn build(&self) -> Box<dyn Evaluator> {
        let mut topk = self.topk.clone();
        if topk.is_empty() {
            topk.push(1);
        }
        Box::new(Accuracy { correct: vec![0; topk.len()], topk, total: 0 })
    }
}

impl Evaluator for Accuracy {
    fn reset(&mut self) {
        self.correct.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }

    fn process(&mut self, logits: &Tensor, labels: &Tensor) {
        let classes = logits.size()[1];
        let labels = labels.to_device(logits.device()).unsqueeze(1);
        for (k, c) in self.topk.iter().zip(&mut self.correct) {
            let k = (*k).min(classes);
            let (_, idx) = logits.topk(k, 1, true, true);
            *c += idx.eq_tensor(&labels).any_dim(1, false).to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
        }
        self.total += labels.size()[0];
    }

    fn compute(&self) -> Vec<(String, f64)> {
        self.topk
            .iter()
            .zip(&self.correct)
            .map(|(k, c)| (format!("accuracy/top{k}"), 100.0 * *c as f64 / self.total.max(1) as f64))
            .collect()
    }
}
