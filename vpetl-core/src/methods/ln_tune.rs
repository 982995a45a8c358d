//! LN-Tune: the weights and biases of every LayerNorm of the backbone train (ViT-B/16: 38,400;
//! Swin-B: 0.06M, patch-embedding and patch-merging norms included). Merging is trivial.

use serde::Deserialize;

use super::full_finetune::InPlace;
use super::{AttachCtx, Attached, MethodSpec};
use crate::backbones::sites::SiteKind;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LnTuneSpec {}

crate::register!(Method, "core", "LN-Tune", LnTuneSpec as dyn MethodSpec, "LayerNorm tuning: every backbone LayerNorm weight and bias trains");

impl MethodSpec for LnTuneSpec {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached> {
        // LayerNorms are the norm sites plus the norms no method hooks (patch embedding, merging):
        // every variable whose parent module's name is a norm (`norm`, `norm1`, `fc_norm`, ...).
        let pattern = regex::Regex::new(r"(.*\.)?(\w*norm\w*)\.(weight|bias)").expect("static regex");
        let norms: Vec<&String> = ctx.backbone_vars.keys().filter(|k| pattern.is_match(k)).collect();
        anyhow::ensure!(!norms.is_empty(), "LN-Tune: this backbone has no LayerNorm");
        let sites = ctx.sites.iter().filter(|(_, s)| s.kind == SiteKind::Norm).map(|(_, s)| s.name.clone()).collect();
        Ok(Attached { sites, trainable_backbone: vec![pattern], merge: Some(Box::new(InPlace)), ..Default::default() })
    }
}
