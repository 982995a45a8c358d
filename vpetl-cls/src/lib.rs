//! vpetl-cls: image classification (VTAB-1k, FGVC): data, transforms, heads, evaluators. Its components register themselves in the vpetl-core registry.

/// Forces this crate (and so its registrations) into a binary; see [`vpetl_core::registry`].
pub fn link() {}
