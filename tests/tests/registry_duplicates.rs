//! A name registered twice fails at start-up (its own test binary, since the duplicate poisons the
//! registry for everything else in the process).

use serde::Deserialize;
use vpetl_core::backbones::{Backbone, BackboneSpec};

#[derive(Debug, Deserialize)]
struct Twice {}

impl BackboneSpec for Twice {
    fn build(&self, _: tch::nn::Path) -> anyhow::Result<Box<dyn Backbone>> {
        anyhow::bail!("not buildable")
    }
    fn feature_dim(&self) -> i64 {
        1
    }
}

vpetl_core::register!(Backbone, "test", "Twice", Twice as dyn BackboneSpec, "first");
vpetl_core::register!(Backbone, "test", "Twice", Twice as dyn BackboneSpec, "second");

#[test]
fn duplicate_names_fail_at_start_up() {
    let err = std::panic::catch_unwind(vpetl_core::registry::init).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(msg, "registry: backbone `test.Twice` is registered twice");
}
