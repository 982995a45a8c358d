//! BitFit: not implemented yet.
