//! The linear classification head (`head.weight`, `head.bias`, as timm names it).

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::Tensor;
use vpetl_core::backbones::BackboneOutput;
use vpetl_core::model::{Head, HeadSpec};

#[derive(Clone, Debug, Deserialize)]
pub struct LinearHeadSpec {
    pub num_classes: i64,
    /// Dropout on the pooled feature during training (timm's `head_drop`).
    #[serde(default)]
    pub dropout: f64,
    /// Initialisation of the weight: `trunc_normal` (std 0.02, timm) or `zeros`.
    #[serde(default)]
    pub init: HeadInit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadInit {
    #[default]
    TruncNormal,
    Zeros,
}

vpetl_core::register!(Head, "cls", "LinearHead", LinearHeadSpec as dyn HeadSpec, "linear classifier on the pooled feature");

struct LinearHead {
    fc: nn::Linear,
    dropout: f64,
}

impl HeadSpec for LinearHeadSpec {
    fn build(&self, vs: nn::Path, in_dim: i64) -> anyhow::Result<Box<dyn Head>> {
        if self.num_classes < 1 {
            anyhow::bail!("LinearHead: num_classes must be at least 1, got {}", self.num_classes);
        }
        let fc = match self.init {
            HeadInit::TruncNormal => vpetl_core::backbones::layers::linear(vs, in_dim, self.num_classes, true),
            HeadInit::Zeros => nn::Linear {
                ws: vs.zeros("weight", &[self.num_classes, in_dim]),
                bs: Some(vs.zeros("bias", &[self.num_classes])),
            },
        };
        Ok(Box::new(LinearHead { fc, dropout: self.dropout }))
    }
}

impl Head for LinearHead {
    fn forward(&self, features: &BackboneOutput, train: bool) -> Tensor {
        let x = features.pooled.dropout(self.dropout, train);
        self.fc.forward(&x)
    }
}
