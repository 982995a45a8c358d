//! Composable YAML configs with mmengine's semantics: `_base_` inheritance, `_delete_`, base
//! references, environment substitution and `--cfg-options` overrides (see [`load`] and
//! [`overrides`]), read into typed structs by a path-aware deserializer ([`de`]).

pub mod de;
pub mod error;
pub mod load;
pub mod node;
pub mod overrides;
pub mod run;

use std::path::Path;

pub use de::{from_node, RawNode};
pub use error::ConfigError;
pub use node::{Node, Origin, Value};
pub use run::RunConfig;

/// Loads a config file with its bases and applies `--cfg-options` overrides.
pub fn load(path: &Path, cfg_options: &[String]) -> Result<Node, ConfigError> {
    let mut root = load::load_file(path)?;
    overrides::apply_overrides(&mut root, cfg_options)?;
    Ok(root)
}
