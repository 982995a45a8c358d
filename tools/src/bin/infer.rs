//! `tools/infer CONFIG --checkpoint CKPT --input X.safetensors --output Y.safetensors [--features]`
//!
//! Runs the config's model on the input tensor(s) and writes `logits` (and with `--features`:
//! `pooled`, `tokens` and `blocks.<i>`, every block's output) — what a user runs to check a port
//! against PyTorch. The checkpoint may be in any supported layout (timm safetensors, Google `.npz`,
//! Microsoft `.pth`, or this project's own names).
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use tch::Tensor;
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::config::RunConfig;
use vpetl_core::engine::runner::{build_model, load_weights};

#[derive(Parser)]
#[command(about = "Run a model on saved input tensors and save its outputs")]
struct Args {
    config: PathBuf,
    /// Weights to load after the model is built (and after the config's own `pretrained`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A safetensors file with a tensor named `input` (or a single tensor), `(B, C, H, W)`.
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Also write the pooled feature, the final tokens and every block's output.
    #[arg(long)]
    features: bool,
    /// Let file variables whose shape differs from the model's keep their initialisation (regex).
    #[arg(long = "allow-shape-mismatch")]
    allow_shape_mismatch: Vec<String>,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let node = vpetl_core::config::load(&args.config, &args.cfg_options)?;
    let cfg = RunConfig::from_node(&node)?;
    let (vs, model) = build_model(&cfg, tch::Device::Cpu).with_context(|| format!("{}", args.config.display()))?;
    if let Some(ckpt) = &args.checkpoint {
        load_weights(&vs, model.as_ref(), ckpt, &args.allow_shape_mismatch)?;
    }
    let inputs = Tensor::read_safetensors(&args.input)
        .with_context(|| format!("cannot read input tensors from {}", args.input.display()))?;
    let x = match inputs.iter().find(|(k, _)| k == "input") {
        Some((_, t)) => t.shallow_clone(),
        None if inputs.len() == 1 => inputs[0].1.shallow_clone(),
        None => bail!("{}: expected a tensor named `input` (or exactly one tensor)", args.input.display()),
    };
    let x = x.to_kind(tch::Kind::Float);
    model.backbone().check_input(&x.size()).with_context(|| format!("input from {}", args.input.display()))?;
    // Inference mode (torch.inference_mode): the outputs are only written out, never trained on.
    let out = vpetl_core::inference::inference_mode(|| model.forward(&x, ForwardOpts { train: false, collect_blocks: args.features }));
    let mut named: Vec<(String, Tensor)> = vec![("logits".into(), out.logits)];
    if args.features {
        named.push(("pooled".into(), out.features.pooled));
        named.push(("tokens".into(), out.features.tokens));
        named.extend(out.features.blocks.into_iter().enumerate().map(|(i, t)| (format!("blocks.{i}"), t)));
        named.extend(out.features.stages.into_iter().enumerate().map(|(i, t)| (format!("stages.{i}"), t)));
    }
    vpetl_tools::write_tensors(&args.output, named)?;
    Ok(())
}

fn main() {
    vpetl_tools::run_with_console_log(run);
}
