//! Full fine-tuning: not implemented yet.
