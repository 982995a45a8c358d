//! `tools/train CONFIG [--work-dir D] [--resume [auto|PATH]] [--cfg-options ...] [--seed N]`
use std::path::PathBuf;

use clap::Parser;
use vpetl_core::engine::runner::{train, Resume, TrainOptions};

#[derive(Parser)]
#[command(about = "Train a model as a config describes; writes checkpoints, logs and results.json to the work dir")]
struct Args {
    config: PathBuf,
    /// Overrides `work_dir` in the config (default work_dirs/<config name>).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Resume: `auto` (the work dir's last checkpoint; the default when the flag is given alone) or a path.
    #[arg(long, num_args = 0..=1, default_missing_value = "auto")]
    resume: Option<String>,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let run = || -> anyhow::Result<()> {
        let node = vpetl_core::config::load(&args.config, &args.cfg_options)?;
        let resume = args.resume.as_deref().map(|r| if r == "auto" { Resume::Auto } else { Resume::Path(r.into()) });
        let opts = TrainOptions {
            config_path: args.config.clone(),
            work_dir: args.work_dir.clone(),
            resume,
            seed: args.seed,
            ..Default::default()
        };
        let r = train(&node, &opts)?;
        println!(
            "{} {}: {} = {:.2} (best {:.2}) | trainable params {} (method {}) | PPT {:.4} | {:.1} s",
            r.method,
            r.dataset,
            r.metric.name,
            r.metric.value,
            r.metric.best.unwrap_or(f64::NAN),
            r.params.trainable,
            r.params.method,
            r.ppt,
            r.wall_s
        );
        Ok(())
    };
    if let Err(e) = run() {
        vpetl_tools::exit_with(e);
    }
}
