//! `cls.ImageClassifier`: a backbone, the PETL methods attached to it, and a classification head.
//!
//! Build order: backbone and head, then pretrained weights, then methods (some initialise from the
//! loaded weights), then trainability, decided once and logged.

use std::collections::BTreeMap;

use serde::Deserialize;
use tch::nn;
use tch::Tensor;
use vpetl_core::backbones::sites::{Hook, Hooks, SiteId};
use vpetl_core::backbones::{Backbone, BackboneSpec, ForwardOpts};
use vpetl_core::checkpoint::load::{load_pretrained, PretrainedSpec};
use vpetl_core::methods::trainability::{self, ParamCounts};
use vpetl_core::methods::{AttachCtx, Merge, MethodSpec, Prepare};
use vpetl_core::model::{Head, HeadSpec, Model, ModelOutput, ModelSpec};
use vpetl_core::registry::Component;

#[derive(Debug, Deserialize)]
pub struct ImageClassifierSpec {
    pub backbone: Component<dyn BackboneSpec>,
    pub head: Component<dyn HeadSpec>,
    /// Applied in order; an empty list trains the head only (linear probing).
    #[serde(default)]
    pub methods: Vec<Component<dyn MethodSpec>>,
    /// Pretrained weights for the backbone (and the head, when the file has a matching one).
    #[serde(default)]
    pub pretrained: Option<PretrainedSpec>,
}

vpetl_core::register!(Model, "cls", "ImageClassifier", ImageClassifierSpec as dyn ModelSpec, "backbone + PETL methods + classification head");

pub struct ImageClassifier {
    backbone: Box<dyn Backbone>,
    hooks: Hooks,
    head: Box<dyn Head>,
    counts: ParamCounts,
    merges: Vec<(String, Option<Box<dyn Merge>>)>,
    /// Prepare steps by namespace (`methods.sct`).
    prepares: Vec<(String, Box<dyn Prepare>)>,
}

impl ModelSpec for ImageClassifierSpec {
    fn build(&self, vs: &nn::VarStore) -> anyhow::Result<Box<dyn Model>> {
        let backbone = self.backbone.spec.build(vs.root() / "backbone")?;
        // A method whose side network feeds the head sets its input width (the last such one).
        let feature_dim = self.methods.iter().filter_map(|m| m.spec.feature_dim()).last().unwrap_or(backbone.feature_dim());
        let head = self.head.spec.build(vs.root() / "head", feature_dim)?;
        if let Some(p) = &self.pretrained {
            let report = load_pretrained(vs, p, backbone.as_ref())?;
            tracing::info!("{}", report.to_string().trim_end());
        }
        let backbone_vars: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|s| (s.to_string(), v)))
            .collect();
        let mut hooks = Hooks::new(backbone.sites());
        let mut trainable_backbone = Vec::new();
        let mut merges = Vec::new();
        let mut prepares = Vec::new();
        let names = method_names(&self.methods);
        for (method, name) in self.methods.iter().zip(&names) {
            let mut ctx = AttachCtx {
                vs: vs.root() / "methods" / name,
                sites: backbone.sites(),
                hooks: &mut hooks,
                backbone_vars: &backbone_vars,
            };
            let attached = method
                .spec
                .attach(&mut ctx)
                .map_err(|e| anyhow::anyhow!("{} ({} at {}): {e}", method.entry.name, name, method.path))?;
            if !attached.sites.is_empty() {
                tracing::info!("{name}: attached to {} site(s): {}", attached.sites.len(), attached.sites.join(", "));
            }
            trainable_backbone.extend(attached.trainable_backbone);
            merges.push((name.clone(), attached.merge));
            if let Some(p) = attached.prepare {
                prepares.push((format!("methods.{name}"), p));
            }
        }
        let counts = trainability::apply(vs, &trainable_backbone);
        tracing::info!("{}", counts.to_string().trim_end());
        Ok(Box::new(ImageClassifier { backbone, hooks, head, counts, merges, prepares }))
    }
}

/// `methods.<name>` for each method: its type in lower case, numbered when a type repeats.
fn method_names(methods: &[Component<dyn MethodSpec>]) -> Vec<String> {
    let base: Vec<String> = methods.iter().map(|m| m.entry.name.to_lowercase().replace('-', "_")).collect();
    base.iter()
        .enumerate()
        .map(|(i, b)| {
            if base.iter().filter(|x| *x == b).count() > 1 {
                format!("{b}_{}", base[..i].iter().filter(|x| *x == b).count())
            } else {
                b.clone()
            }
        })
        .collect()
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

    fn param_counts(&self) -> &ParamCounts {
        &self.counts
    }

    fn merged_backbone(&self, vs: &nn::VarStore) -> anyhow::Result<BTreeMap<String, Tensor>> {
        let mut weights: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|s| (s.to_string(), v.detach().copy())))
            .collect();
        for (name, merge) in &self.merges {
            match merge {
                Some(m) => tch::no_grad(|| m.merge(&mut weights))?,
                None => anyhow::bail!("method `{name}` cannot be merged into the backbone's weights"),
            }
        }
        Ok(weights)
    }

    fn prepare_steps(&self) -> Vec<(&str, &dyn Prepare)> {
        self.prepares.iter().map(|(n, p)| (n.as_str(), p.as_ref())).collect()
    }

    fn install_hook(&mut self, site: SiteId, hook: Hook) -> anyhow::Result<()> {
        self.hooks.install(self.backbone.sites(), site, hook).map_err(anyhow::Error::msg)
    }
}
