//! `tools/bench pipeline`: images per second of the input pipeline (JPEG decode, resize of the
//! shorter side to 224, centre crop 224, ImageNet normalisation, batches of 64) over a generated
//! folder of JPEGs of typical VTAB-1k sizes: our loader (worker threads) against a torchvision
//! `DataLoader` with the same number of worker processes (`benchmarks/pipeline.py`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use vpetl_core::config::node::Origin;
use vpetl_core::config::RunConfig;
use vpetl_core::data::loader::Loader;

use crate::report::{benchmarks_dir, field, median, python, run_json, times, Table};

#[derive(Args, Clone, Debug)]
pub struct PipelineOpts {
    /// The generated image folder (made on first use; default: vpetl-bench-jpegs in the temp folder).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images to generate.
    #[arg(long, default_value_t = 512)]
    pub count: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Worker threads (ours) and worker processes (the reference).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Epochs before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed epochs.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Alternations of the two sides (ours, reference, ours, ...); the median is over every round's
    /// epochs.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

fn data_dir(o: &PipelineOpts) -> anyhow::Result<PathBuf> {
    let dir = o.data.clone().unwrap_or_else(|| std::env::temp_dir().join("vpetl-bench-jpegs"));
    if !dir.join("bench/train800.txt").is_file() {
        println!("generating {} JPEGs in {}", o.count, dir.display());
        let mut cmd = Command::new(python());
        cmd.arg(benchmarks_dir().join("pipeline.py")).arg("make").arg(&dir).args(["--count", &o.count.to_string()]);
        let status = cmd.status().context("cannot run benchmarks/pipeline.py make")?;
        anyhow::ensure!(status.success(), "benchmarks/pipeline.py make failed ({status})");
    }
    Ok(dir)
}

/// Our loader over the folder, configured as a training config would: (images, epoch times).
fn ours(dir: &std::path::Path, o: &PipelineOpts) -> anyhow::Result<(usize, Vec<f64>)> {
    let yaml = format!(
        "train_dataloader:\n  batch_size: {}\n  num_workers: {}\n  dataset:\n    type: VTAB1k\n    root: {:?}\n    task: bench\n    num_classes: 10\n    split: train800\n    pipeline: [{{type: Resize, size: 224}}, {{type: CenterCrop, size: [224, 224]}}]\n    normalize: imagenet\n",
        o.batch,
        o.workers,
        dir.display().to_string()
    );
    let node = vpetl_core::config::load::parse_yaml(&yaml, &Origin::new("<bench>"))?;
    let cfg = RunConfig::from_node(&node)?;
    let loader = Loader::from_spec(cfg.train_dataloader.as_ref().expect("the bench config has a loader"), 0)?;
    let mut times = Vec::new();
    let mut images = 0;
    for epoch in 0..o.warmup + o.repeats.max(1) {
        let t = Instant::now();
        images = 0;
        for batch in loader.epoch(epoch as u64, 0) {
            images += batch?.images.size()[0] as usize;
        }
        if epoch >= o.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((images, times))
}

pub fn run(o: &PipelineOpts) -> anyhow::Result<Table> {
    let dir = data_dir(o)?;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut n = 0;
    for _ in 0..o.rounds.max(1) {
        let (images, epoch_times) = ours(&dir, o)?;
        n = images;
        ta.extend(epoch_times);
        let mut cmd = Command::new(python());
        cmd.arg(benchmarks_dir().join("pipeline.py"))
            .arg("run")
            .arg(&dir)
            .args(["--batch", &o.batch.to_string(), "--workers", &o.workers.to_string()])
            .args(["--warmup", &o.warmup.to_string(), "--repeats", &o.repeats.to_string()]);
        let v = run_json(cmd, "the torchvision DataLoader reference")?;
        let nb = field(&v, "images", "the DataLoader reference")? as usize;
        anyhow::ensure!(n == nb, "the two pipelines saw different numbers of images ({n} and {nb})");
        tb.extend(times(&v));
    }
    anyhow::ensure!(!tb.is_empty(), "the DataLoader reference reported no epoch times");
    let (ta, tb) = (median(ta), median(tb));
    let mut table = Table::new(
        "Input pipeline (CPU)",
        format!(
            "{n} JPEGs of VTAB-1k sizes (benchmarks/pipeline.py make): decode, resize shorter side to 224 (bilinear, antialiased), centre crop 224, \
             normalise, batches of {}; {} workers on both sides (ours threads, torchvision processes); median of {} rounds × {} epochs (each after {} warm-up \
             epoch(s)), the two sides alternating; ratio = vpetl / reference images per second (higher is better).",
            o.batch, o.workers, o.rounds.max(1), o.repeats, o.warmup
        ),
        &["pipeline", "vpetl (img/s)", "torchvision DataLoader (img/s)", "ratio"],
    );
    let (ra, rb) = (n as f64 / ta, n as f64 / tb);
    table.row(vec!["JPEG → 224 batches".into(), format!("{ra:.0}"), format!("{rb:.0}"), format!("{:.2}", ra / rb)]);
    Ok(table)
}
