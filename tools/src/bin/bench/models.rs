//! The models the benchmarks build: ViT sizes with random weights (both sides get the same shapes,
//! and the reference gets our weights), and PETL methods as configs name them.

use clap::ValueEnum;
use tch::{nn, Device, Tensor};
use vpetl_core::config::node::Origin;
use vpetl_core::config::RunConfig;
use vpetl_core::model::Model;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Size {
    /// The quickstart's ViT (configs/_base_/models/vit_tiny_patch4_32.yaml): 32 px, patch 4, width 64, 4 blocks, 10 classes.
    Tiny,
    /// ViT-S/16 at 224 px.
    VitS,
    /// ViT-B/16 at 224 px.
    VitB,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "quickstart ViT-tiny/4 (32 px)",
            Size::VitS => "ViT-S/16 (224 px)",
            Size::VitB => "ViT-B/16 (224 px)",
        }
    }

    /// The backbone config, in JSON (also a YAML flow mapping, so both sides read the same text).
    pub fn backbone(self) -> &'static str {
        match self {
            Size::Tiny => r#"{"type": "ViT", "img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}"#,
            Size::VitS => r#"{"type": "ViT", "img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}"#,
            Size::VitB => r#"{"type": "ViT", "img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}"#,
        }
    }

    pub fn img_size(self) -> i64 {
        match self {
            Size::Tiny => 32,
            Size::VitS | Size::VitB => 224,
        }
    }

    pub fn num_classes(self) -> i64 {
        match self {
            Size::Tiny => 10,
            Size::VitS | Size::VitB => 100,
        }
    }

    /// The issue's batch sizes: the quickstart's 50, 8 on CPU for ViT-S, 64 on a GPU for ViT-B.
    pub fn default_batch(self) -> i64 {
        match self {
            Size::Tiny => 50,
            Size::VitS => 8,
            Size::VitB => 64,
        }
    }
}

/// Builds an image classifier of `size` with `methods` (a YAML list) on `device`.
pub fn build(size: Size, methods: &str, device: Device) -> anyhow::Result<(nn::VarStore, Box<dyn Model>)> {
    let yaml = format!(
        "model:\n  type: ImageClassifier\n  backbone: {}\n  head: {{type: LinearHead, num_classes: {}}}\n  methods: {methods}\n",
        size.backbone(),
        size.num_classes()
    );
    let node = vpetl_core::config::load::parse_yaml(&yaml, &Origin::new("<bench>"))?;
    let cfg = RunConfig::from_node(&node)?;
    let vs = nn::VarStore::new(device);
    let model = cfg.model.expect("the bench config has a model").spec.build(&vs)?;
    Ok((vs, model))
}

/// Moves every method and head variable a little away from its initialisation, so that
/// zero-initialised tensors (LoRA's B, adapters' up-projections, the head) take part in the output
/// checks.
pub fn perturb_methods(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("methods.") || name.starts_with("head.") {
                let _ = var.g_add_(&(Tensor::randn_like(&var) * 0.02));
            }
        }
    });
}
