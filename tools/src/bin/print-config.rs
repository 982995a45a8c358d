//! `tools/print-config CONFIG [--cfg-options k=v ...]`: the merged config, as the run would see it.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Print a config after `_base_` merging, substitutions and --cfg-options")]
struct Args {
    config: PathBuf,
    /// Overrides: dotted keys, list indices, typed values (`model.methods.0.rank=8 seed=1`).
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
    /// Only merge; do not check the keys and types against the registered components.
    #[arg(long)]
    no_validate: bool,
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let run = || -> anyhow::Result<String> {
        let node = vpetl_core::config::load(&args.config, &args.cfg_options)?;
        if !args.no_validate {
            vpetl_core::config::RunConfig::from_node(&node)?;
        }
        Ok(node.to_yaml_string())
    };
    match run() {
        Ok(text) => print!("{text}"),
        Err(e) => vpetl_tools::exit_with(e),
    }
}
