//! `tools/bench backbones`: forward time of ViT-B/16 (batch 8, 224 px) and Swin-B (batch 4, 224 px)
//! against timm in the same run, as medians over repeated runs after warm-up, and their ratio
//! (ours / timm; lower is better). Both sides use the same number of threads and inference mode.
//!
//! `tools/bench train-step`: a training step (forward, backward, AdamW) of a config's model on random
//! inputs, optionally under autocast, against timm + PyTorch in the same setting (ViT-B/16 with LoRA
//! on q and v); step times, peak CUDA memory. Launched with a data-parallel environment (`RANK`,
//! `WORLD_SIZE`, ...), it first checks that the process group all-reduces.
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
    /// A training step of a config's model (default: ViT-B/16 + LoRA) against timm + PyTorch.
    TrainStep {
        #[arg(long, default_value = "configs/bench/lora_vit_b16_step.yaml")]
        config: PathBuf,
        #[arg(long, default_value_t = 32)]
        batch: i64,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Autocast dtype: float32 (no autocast), bfloat16 or float16.
        #[arg(long, default_value = "bfloat16")]
        dtype: String,
        /// Also store the frozen tensors in bfloat16.
        #[arg(long)]
        frozen_bf16: bool,
        /// Skip the timm side.
        #[arg(long)]
        no_reference: bool,
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
    // As the timm side runs under torch.inference_mode().
    let _guard = vpetl_core::inference::InferenceMode::enter();
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

/// A reference script: from the working directory (a repository root), else from the source tree.
fn python_script(name: &str) -> PathBuf {
    let local = PathBuf::from("tests/python").join(name);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(name)
}

fn python() -> String {
    std::env::var("VPETL_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into())
}

fn reference(case: &Case, warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<f64> {
    let python = python();
    let out = Command::new(&python)
        .arg(python_script("bench_timm.py"))
        .args(["--model", case.timm, "--batch", &case.batch.to_string()])
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

/// Waits for the device's queued work (CUDA runs asynchronously).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

struct StepArgs {
    config: PathBuf,
    batch: i64,
    warmup: usize,
    steps: usize,
    dtype: String,
    frozen_bf16: bool,
    no_reference: bool,
}

fn train_step(a: StepArgs) -> anyhow::Result<()> {
    use vpetl_core::engine::amp::{cast_frozen, Autocast, LossScaler, Precision};
    use vpetl_core::engine::memory::{cuda_stats, reset_cuda_peak};

    let precision = Precision::parse("--dtype", &a.dtype)?;
    let node = vpetl_core::config::load(&a.config, &[])?;
    let cfg = vpetl_core::config::RunConfig::from_node(&node)?;
    let group = vpetl_core::dist::init_from_env(None, std::time::Duration::from_secs(120))?;
    let device = group.map_or_else(vpetl_core::runtime::default_device, |g| g.device);
    if let Some(g) = group {
        let t = Tensor::ones([1024], (Kind::Float, device)) * (g.rank as f64 + 1.0);
        g.all_reduce(&[&t], vpetl_core::dist::ReduceOp::Sum)?;
        let want = (g.world_size * (g.world_size + 1) / 2) as f64;
        let got = t.min().double_value(&[]);
        anyhow::ensure!(got == want && t.max().double_value(&[]) == want, "all-reduce gave {got}, expected {want}");
        println!("all-reduce: {:?} backend, world size {}, rank {}: ok ({got} everywhere)", g.kind, g.world_size, g.rank);
    }
    println!("device: {device:?}, CUDA available: {}", tch::Cuda::is_available());
    let (vs, model) = vpetl_core::engine::runner::build_model(&cfg, device)?;
    if a.frozen_bf16 {
        println!("frozen tensors stored in bfloat16: {}", cast_frozen(&vs, Kind::BFloat16));
    }
    let trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    let params: Vec<Tensor> = trainable.iter().map(|(_, t)| t.shallow_clone()).collect();
    let optim = cfg.optim_wrapper.as_ref().context("the config has no `optim_wrapper`")?;
    let mut optimizer = optim.optimizer.spec.build(trainable)?;
    let lr = optim.optimizer.spec.lr();
    let x = Tensor::randn([a.batch, 3, 224, 224], (Kind::Float, device));
    let y = Tensor::randint(100, [a.batch], (Kind::Int64, device));
    let mut scaler = (precision == Precision::Float16).then(LossScaler::default);
    reset_cuda_peak(device);
    let mut times = Vec::new();
    let mut loss_value = 0.0;
    let mut logits_kind = Kind::Float;
    for i in 0..a.warmup + a.steps {
        sync(device);
        let t = std::time::Instant::now();
        let loss = {
            let _ac = (precision != Precision::Float32).then(|| Autocast::enter(device, precision.kind())).transpose()?;
            let out = model.forward(&x, ForwardOpts { train: true, collect_blocks: false });
            logits_kind = out.logits.kind();
            out.logits.cross_entropy_for_logits(&y)
        };
        match &scaler {
            Some(s) => (&loss * s.scale).backward(),
            None => loss.backward(),
        }
        let finite = scaler.as_ref().is_none_or(|s| s.unscale(&params));
        if finite {
            optimizer.step(lr);
        }
        if let Some(s) = scaler.as_mut() {
            s.update(finite);
        }
        optimizer.zero_grad();
        loss_value = loss.double_value(&[]);
        sync(device);
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let ours = median(times);
    let stats = cuda_stats(device).unwrap_or_default();
    println!(
        "vpetl: {} batch {}, {:?} autocast (logits {:?}): {:.1} ms/step (median of {}), peak memory {:.0} MB allocated, {:.0} MB reserved, loss {:.4}",
        a.config.display(),
        a.batch,
        precision,
        logits_kind,
        ours * 1e3,
        a.steps,
        stats.peak_allocated_mb,
        stats.peak_reserved_mb,
        loss_value
    );
    if a.no_reference {
        return Ok(());
    }
    let python = python();
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    let out = Command::new(&python)
        .arg(python_script("bench_train_step.py"))
        .args(["--batch", &a.batch.to_string(), "--steps", &a.steps.to_string(), "--warmup", &a.warmup.to_string()])
        .args(["--dtype", &a.dtype, "--device", dev])
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !out.status.success() {
        bail!("timm reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("the timm reference printed no JSON")?;
    let theirs = v["median_s"].as_f64().context("no median_s in the timm reference output")?;
    println!(
        "timm + PyTorch: {:.1} ms/step, peak memory {:.0} MB, loss {:.4}\nratio (vpetl / timm): {:.3}",
        theirs * 1e3,
        v["peak_memory_mb"].as_f64().unwrap_or(f64::NAN),
        v["loss"].as_f64().unwrap_or(f64::NAN),
        ours / theirs
    );
    Ok(())
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let result = match args.what {
        What::Backbones { warmup, repeats, threads, markdown } => backbones(warmup, repeats, threads, markdown),
        What::TrainStep { config, batch, warmup, steps, dtype, frozen_bf16, no_reference } => {
            train_step(StepArgs { config, batch, warmup, steps, dtype, frozen_bf16, no_reference })
        }
    };
    if let Err(e) = result {
        vpetl_tools::exit_with(e);
    }
}
