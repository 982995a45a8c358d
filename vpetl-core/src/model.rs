//! Models: a backbone with the hooks its methods installed, and a task head. The model kind is
//! what a config's `model:` selects (e.g. `cls.ImageClassifier`).

use std::collections::BTreeMap;

use tch::{nn, Tensor};

use crate::methods::trainability::ParamCounts;

use crate::backbones::sites::{Hook, SiteId};
use crate::backbones::{Backbone, BackboneOutput, ForwardOpts};
use crate::registry::{Kind, KindOf};

pub trait ModelSpec: std::fmt::Debug {
    /// Builds the model with its variables in `vs` (`backbone.*`, `head.*`, `methods.*`) and loads
    /// the pretrained weights the config names.
    fn build(&self, vs: &nn::VarStore) -> anyhow::Result<Box<dyn Model>>;
}

impl KindOf for dyn ModelSpec {
    const KIND: Kind = Kind::Model;
}

pub struct ModelOutput {
    /// Task output (classification logits `(B, classes)`).
    pub logits: Tensor,
    pub features: BackboneOutput,
}

pub trait Model {
    fn backbone(&self) -> &dyn Backbone;
    fn forward(&self, x: &Tensor, opts: ForwardOpts) -> ModelOutput;
    /// Trainable and total parameters, as decided when the model was built.
    fn param_counts(&self) -> &ParamCounts;
    /// The backbone's weights (names without `backbone.`) with every method folded in; an error
    /// when a method cannot be merged.
    fn merged_backbone(&self, vs: &nn::VarStore) -> anyhow::Result<BTreeMap<String, Tensor>>;
    /// The methods' prepare steps with their namespaces (`methods.sct`), in attachment order.
    fn prepare_steps(&self) -> Vec<(&str, &dyn crate::methods::Prepare)> {
        Vec::new()
    }
    /// Installs a hook after the model was built (probes, visualisers); at its site it runs after
    /// the methods' hooks, so it sees what they made (e.g. keys extended by prefix tuning).
    fn install_hook(&mut self, site: SiteId, hook: Hook) -> anyhow::Result<()>;
}

/// A task head's typed config.
pub trait HeadSpec: std::fmt::Debug {
    fn build(&self, vs: nn::Path, in_dim: i64) -> anyhow::Result<Box<dyn Head>>;
}

impl KindOf for dyn HeadSpec {
    const KIND: Kind = Kind::Head;
}

pub trait Head {
    fn forward(&self, features: &BackboneOutput, train: bool) -> Tensor;
}
