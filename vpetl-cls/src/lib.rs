//! vpetl-cls: image classification (VTAB-1k, FGVC): datasets, transforms, the classifier model, its
//! head and the accuracy evaluator. Its components register themselves in the vpetl-core registry.

pub mod accuracy;
pub mod classifier;
pub mod head;
pub mod idx;
pub mod resample;
pub mod transforms;
pub mod vtab;

/// Forces this crate (and so its registrations) into a binary; see [`vpetl_core::registry`].
pub fn link() {}
