//! E3VA: not implemented yet.
