//! vpetl-cls: image classification (VTAB-1k, FGVC): data, transforms, heads, evaluators, and the
//! classifier model. Its components register themselves in the vpetl-core registry.

pub mod classifier;
pub mod head;

/// Forces this crate (and so its registrations) into a binary; see [`vpetl_core::registry`].
pub fn link() {}
