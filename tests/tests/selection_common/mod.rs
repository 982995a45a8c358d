//! Shared by the parameter-selection methods' test files (FullFT, LinearProbe, BitFit, LN-Tune,
//! Partial-k): the tiny backbones' variable names written out, and what trains.
#![allow(dead_code)]

use vpetl_tests::method_harness::*;

/// The backbone variables (names without `backbone.`) that train with `methods`, sorted.
pub fn trainable_backbone(backbone: &str, methods: &str) -> Vec<String> {
    let b = build(backbone, methods);
    let mut names: Vec<String> = b
        .vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .filter_map(|(k, _)| k.strip_prefix("backbone.").map(String::from))
        .collect();
    names.sort();
    names
}

/// Every backbone variable of the tiny ViT, written out: `blocks` gives each block's layers.
pub fn tiny_vit_names(with: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names = vec!["cls_token".to_string(), "pos_embed".into(), "patch_embed.proj.weight".into(), "patch_embed.proj.bias".into()];
    for i in 0..2 {
        for layer in ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"] {
            names.push(format!("blocks.{i}.{layer}.weight"));
            names.push(format!("blocks.{i}.{layer}.bias"));
        }
    }
    names.extend(["norm.weight".to_string(), "norm.bias".into()]);
    let mut names: Vec<String> = names.into_iter().filter(|n| with(n)).collect();
    names.sort();
    names
}

/// Every backbone variable of the tiny Swin (2 stages of 2 blocks, one patch merging).
pub fn tiny_swin_names(with: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> =
        ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"].map(String::from).to_vec();
    for s in 0..2 {
        for j in 0..2 {
            for layer in ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"] {
                names.push(format!("layers.{s}.blocks.{j}.{layer}.weight"));
                names.push(format!("layers.{s}.blocks.{j}.{layer}.bias"));
            }
            names.push(format!("layers.{s}.blocks.{j}.attn.relative_position_bias_table"));
        }
    }
    names.extend(["layers.0.downsample.norm.weight", "layers.0.downsample.norm.bias", "layers.0.downsample.reduction.weight"].map(String::from));
    names.extend(["norm.weight".to_string(), "norm.bias".into()]);
    let mut names: Vec<String> = names.into_iter().filter(|n| with(n)).collect();
    names.sort();
    names
}

/// Swin-B with the stage-output norms of the dense tables' backbone (mmdet's `norm0`..`norm3`); it
/// also keeps the final `norm`, which mmdet's backbone does not have.
pub const SWIN_B_DENSE: &str = "{type: Swin, out_norms: true}";
