//! Linear probing: the backbone stays frozen and only the head trains (the same as an empty
//! `methods:` list, spelt out for tables and configs).

use serde::Deserialize;

use super::full_finetune::InPlace;
use super::{AttachCtx, Attached, MethodSpec};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LinearProbeSpec {}

crate::register!(Method, "core", "LinearProbe", LinearProbeSpec as dyn MethodSpec, "linear probing: only the head trains");

impl MethodSpec for LinearProbeSpec {
    fn attach(&self, _: &mut AttachCtx) -> anyhow::Result<Attached> {
        Ok(Attached { merge: Some(Box::new(InPlace)), ..Default::default() })
    }
}
