//! `tools/merge CONFIG --checkpoint CKPT --output OUT.safetensors [--naming timm|microsoft]`
//!
//! Folds every method of a trained model into plain backbone weights and writes them with the head
//! as a safetensors file that timm loads (`timm.create_model(...).load_state_dict(...)`); Swin is
//! written with timm's names by default or Microsoft's with `--naming microsoft`. Fails, naming the
//! method, when a method cannot be merged (adapters with non-linearities, prompts).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tch::Tensor;
use vpetl_core::config::{Node, RunConfig};
use vpetl_core::engine::runner::{build_model, load_weights};

#[derive(Clone, Copy, ValueEnum)]
enum Naming {
    Timm,
    Microsoft,
}

#[derive(Parser)]
#[command(about = "Merge PETL methods into the backbone and export timm-loadable weights")]
struct Args {
    config: PathBuf,
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "timm")]
    naming: Naming,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
}

/// Microsoft's Swin names to timm's (the inverse of the loader's conversion).
fn swin_to_timm(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("head.") {
        return format!("head.fc.{rest}");
    }
    if let Some((i, tail)) = k.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
        if let (Ok(i), true) = (i.parse::<i64>(), tail.starts_with("downsample.")) {
            return format!("layers.{}.{tail}", i + 1);
        }
    }
    k.to_string()
}

fn run(args: Args) -> anyhow::Result<()> {
    let node = vpetl_core::config::load(&args.config, &args.cfg_options)?;
    let cfg = RunConfig::from_node(&node)?;
    let (vs, model) = build_model(&cfg, tch::Device::Cpu)?;
    if let Some(ck) = &args.checkpoint {
        load_weights(&vs, model.as_ref(), ck, &[])?;
    }
    let merged = model.merged_backbone(&vs)?;
    let mut out: Vec<(String, Tensor)> = merged.into_iter().collect();
    for (k, v) in vs.variables() {
        if k.starts_with("head.") {
            out.push((k, v.detach()));
        }
    }
    let backbone = node.lookup("model.backbone.type").and_then(Node::as_str).context("the config has no model.backbone.type")?;
    if backbone.ends_with("Swin") && matches!(args.naming, Naming::Timm) {
        out = out.into_iter().map(|(k, v)| (swin_to_timm(&k), v)).collect();
    }
    let n = vpetl_tools::write_tensors(&args.output, out)?;
    eprintln!("wrote {n} tensors to {}", args.output.display());
    Ok(())
}

fn main() {
    vpetl_tools::run_with_console_log(run);
}
