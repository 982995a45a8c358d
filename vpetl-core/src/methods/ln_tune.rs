//! LN-Tune: not implemented yet.
