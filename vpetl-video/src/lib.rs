//! vpetl-video: video action recognition (SSv2, HMDB51, Kinetics-400). Its components register themselves in the vpetl-core registry.

/// Forces this crate (and so its registrations) into a binary; see [`vpetl_core::registry`].
pub fn link() {}
