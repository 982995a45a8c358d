//! `tools/bench backbones`: forward time of ViT-B/16 (batch 8, 224 px) and Swin-B (batch 4, 224 px)
//! against timm in the same run, as medians over repeated runs after warm-up, and their ratio
//! (ours / timm; lower is better). Both sides use the same number of threads.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tch::{nn, Device, Kind, Tensor};
use vpetl_core::backbones::sites::Hooks;
use vpetl_core::backbones::swin::SwinSpec;
use vpetl_core::backbones::vit::VitSpec;
use vpetl_core::backbones::{BackboneSpec, ForwardOpts};

#[derive(Parser)]
#[command(about = "Benchmarks against the PyTorch references")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Backbone forward passes (fp32, no grad) against timm.
    Backbones {
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Intra-op threads for both sides (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

struct Case {
    name: &'static str,
    timm: &'static str,
    batch: i64,
    spec: Box<dyn BackboneSpec>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ours(case: &Case, warmup: usize, repeats: usize) -> anyhow::Result<f64> {
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone = case.spec.build(vs.root())?;
    let hooks = Hooks::new(backbone.sites());
    let x = Tensor::randn([case.batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    let mut times = Vec::new();
    let _guard = tch::no_grad_guard();
    for i in 0..warmup + repeats {
        let t = Instant::now();
        let out = backbone.forward(&x, &hooks, ForwardOpts::default());
        let _ = out.pooled.sum(Kind::Float).double_value(&[]);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

fn reference(case: &Case, warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<f64> {
    let python = std::env::var("VPETL_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/bench_timm.py");
    let out = Command::new(&python)
        .args([script, "--model", case.timm, "--batch", &case.batch.to_string()])
        .args(["--warmup", &warmup.to_string(), "--repeats", &repeats.to_string(), "--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !out.status.success() {
        bail!("timm reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("timm reference printed no JSON")?;
    v["median_s"].as_f64().context("no median_s in the timm reference output")
}

fn backbones(warmup: usize, repeats: usize, threads: Option<usize>, markdown: Option<PathBuf>) -> anyhow::Result<()> {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(threads as i32);
    let cases = [
        Case { name: "ViT-B/16", timm: "vit_base_patch16_224", batch: 8, spec: Box::new(VitSpec::default()) },
        Case { name: "Swin-B", timm: "swin_base_patch4_window7_224", batch: 4, spec: Box::new(SwinSpec::default()) },
    ];
    let mut table = format!(
        "| model | batch | vpetl (ms) | timm (ms) | ratio |\n|---|---|---|---|---|\n"
    );
    println!("forward, fp32, CPU, {threads} threads, median of {repeats} after {warmup} warm-up runs");
    for case in &cases {
        let a = ours(case, warmup, repeats)?;
        let b = reference(case, warmup, repeats, threads)?;
        let line = format!("| {} | {} | {:.1} | {:.1} | {:.3} |\n", case.name, case.batch, a * 1e3, b * 1e3, a / b);
        print!("{line}");
        table.push_str(&line);
    }
    if let Some(path) = markdown {
        std::fs::write(&path, table).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let result = match args.what {
        What::Backbones { warmup, repeats, threads, markdown } => backbones(warmup, repeats, threads, markdown),
    };
    if let Err(e) = result {
        vpetl_tools::exit_with(e);
    }
}
