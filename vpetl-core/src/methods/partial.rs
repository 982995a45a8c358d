//! Partial-k: not implemented yet.
