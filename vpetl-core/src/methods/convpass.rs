//! Convpass: not implemented yet.
