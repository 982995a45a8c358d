//! The training engine: optimisers with saveable state, schedules, evaluators, checkpoints, the
//! train/test loops and results.

pub mod checkpoint;
pub mod evaluator;
pub mod hooks;
pub mod optim;
pub mod prepare;
pub mod results;
pub mod runner;
pub mod schedule;
pub mod state;
