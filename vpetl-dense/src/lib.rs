//! vpetl-dense: dense prediction (COCO, ADE20K, Pascal VOC). Its components register themselves in the vpetl-core registry.

/// Forces this crate (and so its registrations) into a binary; see [`vpetl_core::registry`].
pub fn link() {}
