//! vpetl core: what every task shares — the component registry, composable configs, the runtime
//! (libtorch and CUDA set-up), logging and work directories.

pub mod backbones;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod engine;
pub mod inference;
pub mod logging;
pub mod methods;
pub mod model;
pub mod registry;
pub mod runtime;
pub mod viz;
pub mod shim;
pub mod workdir;

pub use inventory;
pub use tch;
