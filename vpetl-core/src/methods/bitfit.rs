//! BitFit (Ben Zaken et al., ACL 2022): every bias of the backbone trains, LayerNorm biases
//! included (V-PETL's `'bias' in name` selection; ViT-B/16: 102,912). On Swin the relative position
//! bias tables match too, as in the dense tables' count (Swin-B 0.20M). Merging is trivial.

use serde::Deserialize;

use super::full_finetune::InPlace;
use super::{AttachCtx, Attached, MethodSpec};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct BitFitSpec {}

crate::register!(Method, "core", "BitFit", BitFitSpec as dyn MethodSpec, "bias tuning: every backbone tensor named *bias trains");

impl MethodSpec for BitFitSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        let pattern = regex::Regex::new(r".*bias.*").expect("static regex");
        anyhow::ensure!(ctx.backbone_vars.keys().any(|k| pattern.is_match(k)), "BitFit: this backbone has no bias");
        Ok(Attached { trainable_backbone: vec![pattern], merge: Some(Box::new(InPlace)), ..Default::default() })
    }
}
