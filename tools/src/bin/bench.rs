//! `tools/bench backbones`: forward time of ViT-B/16 (batch 8, 224 px) and Swin-B (batch 4, 224 px)
//! against timm in the same run, as medians over repeated runs after warm-up, and their ratio
//! (ours / timm; lower is better). Both sides use the same number of threads.
//!
//! `tools/bench train-memory --methods YAML`: the peak resident memory (VmHWM) and time of training
//! steps (forward, loss, backward) of a ViT with those methods on random data, one configuration per
//! process (the peak is process-wide). `--record-backbone` makes the input require a gradient, so
//! autograd records the whole frozen backbone as it would without the side methods' detached taps:
//! the difference is what running the frozen backbone without autograd saves.
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
    /// Peak memory of training steps with the given methods.
    TrainMemory {
        /// The model's `methods:` list (YAML).
        #[arg(long, default_value = "[]")]
        methods: String,
        /// The backbone (YAML flow mapping); default a ViT-S/16 at 224 px.
        #[arg(long, default_value = "{type: ViT, img_size: 224, patch_size: 16, embed_dim: 384, depth: 12, num_heads: 6}")]
        backbone: String,
        /// Input size; must match the backbone's img_size.
        #[arg(long, default_value_t = 224)]
        img_size: i64,
        #[arg(long, default_value_t = 16)]
        batch: i64,
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// Let the input require a gradient (autograd records the frozen backbone).
        #[arg(long)]
        record_backbone: bool,
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

/// A field of `/proc/self/status` in kB.
fn proc_status_kb(field: &str) -> anyhow::Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/self/status"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("cannot parse `{line}`"))
}

fn train_memory(methods: &str, backbone: &str, img: i64, batch: i64, steps: usize, record_backbone: bool) -> anyhow::Result<()> {
    use vpetl_core::config::{load::parse_yaml, Origin, RunConfig};
    let yaml = format!("model:\n  type: ImageClassifier\n  backbone: {backbone}\n  head: {{type: LinearHead, num_classes: 10}}\n  methods: {methods}\n");
    let cfg = RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("<bench>"))?)?;
    let (vs, model) = vpetl_core::engine::runner::build_model(&cfg, Device::Cpu)?;
    let x = Tensor::randn([batch, 3, img, img], (Kind::Float, Device::Cpu)).set_requires_grad(record_backbone);
    let y = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let before = proc_status_kb("VmRSS:")?;
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let out = model.forward(&x, ForwardOpts { train: true, collect_blocks: false });
        out.logits.cross_entropy_for_logits(&y).backward();
        vs.variables().values().for_each(|v| {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        times.push(t.elapsed().as_secs_f64());
    }
    let peak = proc_status_kb("VmHWM:")?;
    let c = model.param_counts();
    println!(
        "methods={methods} record_backbone={record_backbone} batch={batch} trainable={} rss_before_steps_mib={:.0} peak_mib={:.0} step_s={:.2}",
        c.trainable,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        median(times)
    );
    Ok(())
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let result = match args.what {
        What::Backbones { warmup, repeats, threads, markdown } => backbones(warmup, repeats, threads, markdown),
        What::TrainMemory { methods, backbone, img_size, batch, steps, record_backbone } => train_memory(&methods, &backbone, img_size, batch, steps, record_backbone),
    };
    if let Err(e) = result {
        vpetl_tools::exit_with(e);
    }
}
