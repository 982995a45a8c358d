//! RepAdapter: not implemented yet.
