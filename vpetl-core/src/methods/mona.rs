//! Mona: not implemented yet.
