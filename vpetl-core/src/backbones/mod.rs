//! Backbones shared by every task. A backbone is written once, knows nothing of PETL methods, and
//! names its parameters after the published checkpoints' keys.

use crate::registry::{Kind, KindOf};

/// A backbone's typed config, as registered; builds the network under a variable-store path.
pub trait BackboneSpec: std::fmt::Debug {
    /// Width of the pooled feature a head receives.
    fn feature_dim(&self) -> i64;
}

impl KindOf for dyn BackboneSpec {
    const KIND: Kind = Kind::Backbone;
}
