//! Full fine-tuning: every backbone parameter trains (with the head). The baseline every PETL
//! table compares against; merging is trivial (the weights are already the backbone's).

use serde::Deserialize;

use super::{AttachCtx, Attached, Merge, MethodSpec};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct FullFtSpec {}

crate::register!(Method, "core", "FullFT", FullFtSpec as dyn MethodSpec, "full fine-tuning: every backbone parameter trains");

/// Methods that only choose which backbone tensors train merge to the backbone as it is.
pub struct InPlace;

impl Merge for InPlace {
    fn merge(&self, _: &mut std::collections::BTreeMap<String, tch::Tensor>) -> anyhow::Result<()> {
        Ok(())
    }
}

impl MethodSpec for FullFtSpec {
    fn attach(&self, _: &mut AttachCtx) -> anyhow::Result<Attached> {
        Ok(Attached {
            trainable_backbone: vec![regex::Regex::new(".*").expect("static regex")],
            merge: Some(Box::new(InPlace)),
            ..Default::default()
        })
    }
}
