//! `tools/test CONFIG --checkpoint CKPT [--cfg-options ...]`: evaluates a checkpoint on the test split.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Evaluate a checkpoint on the config's test split (or its validation split)")]
struct Args {
    config: PathBuf,
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let node = vpetl_core::config::load(&args.config, &args.cfg_options)?;
    let metrics = vpetl_core::engine::runner::test(&node, &args.checkpoint)?;
    let obj: serde_json::Map<String, serde_json::Value> = metrics.into_iter().map(|(k, v)| (k, serde_json::json!(v))).collect();
    println!("{}", serde_json::Value::Object(obj));
    Ok(())
}

fn main() {
    vpetl_tools::run_with_console_log(run);
}
