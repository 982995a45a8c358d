//! `cls.ImageClassifier`: a backbone (with the hooks its methods install) and a classification head.

use serde::Deserialize;
use tch::nn;
use tch::Tensor;
use vpetl_core::backbones::sites::Hooks;
use vpetl_core::backbones::{Backbone, BackboneSpec, ForwardOpts};
use vpetl_core::checkpoint::load::{load_pretrained, PretrainedSpec};
use vpetl_core::model::{Head, HeadSpec, Model, ModelOutput, ModelSpec};
use vpetl_core::registry::Component;

#[derive(Debug, Deserialize)]
pub struct ImageClassifierSpec {
    pub backbone: Component<dyn BackboneSpec>,
    pub head: Component<dyn HeadSpec>,
    /// Pretrained weights for the backbone (and the head, when the file has a matching one).
    #[serde(default)]
    pub pretrained: Option<PretrainedSpec>,
}

vpetl_core::register!(Model, "cls", "ImageClassifier", ImageClassifierSpec as dyn ModelSpec, "backbone + classification head");

pub struct ImageClassifier {
    backbone: Box<dyn Backbone>,
    hooks: Hooks,
    head: Box<dyn Head>,
}

impl ModelSpec for ImageClassifierSpec {
    fn build(&self, vs: &nn::VarStore) -> anyhow::Result<Box<dyn Model>> {
        let backbone = self.backbone.spec.build(vs.root() / "backbone")?;
        let head = self.head.spec.build(vs.root() / "head", backbone.feature_dim())?;
        if let Some(p) = &self.pretrained {
            let report = load_pretrained(vs, p, backbone.as_ref())?;
            tracing::info!("{}", report.to_string().trim_end());
        }
        let hooks = Hooks::new(backbone.sites());
        Ok(Box::new(ImageClassifier { backbone, hooks, head }))
    }
}

impl Model for ImageClassifier {
    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn forward(&self, x: &Tensor, opts: ForwardOpts) -> ModelOutput {
        let features = self.backbone.forward(x, &self.hooks, opts);
        let logits = self.head.forward(&features, opts.train);
        ModelOutput { logits, features }
    }
}
