//! Partial-k: the last `k` transformer blocks train (with the head). On Swin, blocks are counted
//! across stages from the end, so the dense tables' Partial-1 is the last Swin block (Swin-B:
//! 12.60M). Merging is trivial.

use serde::Deserialize;

use super::full_finetune::InPlace;
use super::{AttachCtx, Attached, MethodSpec};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PartialSpec {
    pub k: usize,
}

impl Default for PartialSpec {
    fn default() -> Self {
        PartialSpec { k: 1 }
    }
}

crate::register!(Method, "core", "Partial-k", PartialSpec as dyn MethodSpec, "the last k transformer blocks train");

impl MethodSpec for PartialSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        anyhow::ensure!(self.k >= 1, "Partial-k: k must be at least 1");
        // Block prefixes in forward order: `blocks.3` (ViT) or `layers.2.blocks.5` (Swin).
        let block = regex::Regex::new(r"^((?:layers\.\d+\.)?blocks\.\d+)\.").expect("static regex");
        let mut blocks: Vec<(Vec<u64>, String)> = ctx
            .backbone_vars
            .keys()
            .filter_map(|k| block.captures(k).map(|c| c[1].to_string()))
            .map(|b| (b.split('.').filter_map(|p| p.parse().ok()).collect(), b))
            .collect();
        blocks.sort();
        blocks.dedup();
        anyhow::ensure!(!blocks.is_empty(), "Partial-k: this backbone has no `blocks`");
        anyhow::ensure!(self.k <= blocks.len(), "Partial-k: k = {} but the backbone has {} blocks", self.k, blocks.len());
        let chosen: Vec<String> = blocks[blocks.len() - self.k..].iter().map(|(_, b)| regex::escape(b)).collect();
        let pattern = regex::Regex::new(&format!(r"({})\..*", chosen.join("|")))?;
        Ok(Attached {
            sites: blocks[blocks.len() - self.k..].iter().map(|(_, b)| b.clone()).collect(),
            trainable_backbone: vec![pattern],
            merge: Some(Box::new(InPlace)),
            ..Default::default()
        })
    }
}
