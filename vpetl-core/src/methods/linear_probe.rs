//! Linear probing: not implemented yet.
