//! SSF: not implemented yet.
