//! U-Tuning: not implemented yet.
