//! Hydra: not implemented yet.
