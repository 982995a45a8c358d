//! Prefix tuning: not implemented yet.
