//! `tools/bench gpu-step`: the GPU check's training step (`scripts/gpu-check.sh`): a config's model
//! (default ViT-B/16 + LoRA) on random inputs, optionally under autocast, against timm + PyTorch in
//! the same setting; step times and peak CUDA memory. Launched with a data-parallel environment
//! (`RANK`, `WORLD_SIZE`, ...), it first checks that the process group all-reduces.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;

use crate::report::median;

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

#[derive(clap::Args)]
pub struct GpuStepOpts {
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
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(a: &GpuStepOpts) -> anyhow::Result<()> {
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

