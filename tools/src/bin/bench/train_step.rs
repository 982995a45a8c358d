//! `tools/bench train-step`: one training step (forward, backward, AdamW) per method, ours against
//! timm with the same method in plain PyTorch (`benchmarks/train_step.py`, which applies
//! `tests/python/petl_ref/*`).
//!
//! Each side runs in its own process (ours re-invokes this binary as `step-ours`), so that neither
//! inherits the other's allocations and GPU memory is measured the same way for both. Before the
//! timings count, the reference loads our weights and checks that its trainable parameter count
//! equals ours and that its logits equal ours on the same input.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tch::{Device, Kind, Reduction, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::engine::optim::{AdamWSpec, OptimizerSpec};

use crate::gpu_mem::GpuMemPoll;
use crate::models::{build, perturb_methods, Size};
use crate::report::{benchmarks_dir, field, median, min_time, ms, python, run_json, time_runs, times, Table};

/// A method as our config names it and as the reference applies it.
pub struct MethodCase {
    pub key: &'static str,
    pub label: &'static str,
    pub yaml: &'static str,
    /// `full`, `probe` or a module of tests/python/petl_ref/.
    pub reference: &'static str,
    /// The reference's options, equal to our defaults.
    pub options: &'static str,
}

pub const METHODS: [MethodCase; 6] = [
    MethodCase { key: "full", label: "full fine-tuning", yaml: "[{type: FullFT}]", reference: "full", options: "{}" },
    MethodCase { key: "probe", label: "linear probing", yaml: "[{type: LinearProbe}]", reference: "probe", options: "{}" },
    MethodCase {
        key: "lora",
        label: "LoRA (r 8, q v)",
        yaml: "[{type: LoRA}]",
        reference: "lora",
        options: r#"{"rank": 8, "alpha": 8, "parts": ["q", "v"]}"#,
    },
    MethodCase {
        key: "adapter",
        label: "Adapter (Pfeiffer, 8)",
        yaml: "[{type: Adapter}]",
        reference: "adapter",
        options: r#"{"placement": "pfeiffer"}"#,
    },
    MethodCase { key: "vpt-deep", label: "VPT-Deep (10 tokens)", yaml: "[{type: VPT-Deep}]", reference: "vpt_deep", options: "{}" },
    MethodCase { key: "ssf", label: "SSF", yaml: "[{type: SSF}]", reference: "ssf", options: "{}" },
];

fn method(key: &str) -> anyhow::Result<&'static MethodCase> {
    METHODS.iter().find(|m| m.key == key).with_context(|| {
        format!("unknown method `{key}` (known: {})", METHODS.iter().map(|m| m.key).collect::<Vec<_>>().join(", "))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dev {
    Cpu,
    Cuda,
}

impl Dev {
    fn device(self) -> Device {
        match self {
            Dev::Cpu => Device::Cpu,
            Dev::Cuda => Device::Cuda(0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dev::Cpu => "cpu",
            Dev::Cuda => "cuda",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct StepOpts {
    #[arg(long, value_enum, default_value = "vit-s")]
    pub size: Size,
    /// Batch size (default: 8 for ViT-S, 64 for ViT-B, 50 for the quickstart model).
    #[arg(long)]
    pub batch: Option<i64>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Dev,
    /// Mixed precision on CUDA: ours through libtorch's autocast (fp16: its default CUDA type,
    /// the only one tch exposes), the reference with bf16 autocast.
    #[arg(long)]
    pub amp: bool,
    /// Methods to run (default: all of full, probe, lora, adapter, vpt-deep, ssf).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Alternations of the two sides (ours, reference, ours, ...), each a fresh process timing
    /// `repeats` steps; medians are over all rounds, so a slow spell of a shared machine falls on
    /// both sides rather than on one.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// The hidden `step-ours` sub-command: our side of one case, printing JSON.
#[derive(Args, Clone, Debug)]
pub struct OursOpts {
    #[command(flatten)]
    step: StepOpts,
    #[arg(long)]
    method: String,
    /// Write our weights, an input and our logits here for the reference's checks.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Our training step; prints `{"trainable": N, "median_s": t, "times_s": [...]}`.
pub fn ours(o: &OursOpts) -> anyhow::Result<()> {
    let m = method(&o.method)?;
    let s = &o.step;
    let batch = s.batch.unwrap_or(s.size.default_batch());
    tch::manual_seed(0);
    let (cpu_vs, cpu_model) = build(s.size, m.yaml, Device::Cpu)?;
    perturb_methods(&cpu_vs);
    if let Some(dir) = &o.dir {
        let x = Tensor::randn([2, 3, s.size.img_size(), s.size.img_size()], (Kind::Float, Device::Cpu));
        let logits = tch::no_grad(|| cpu_model.forward(&x, ForwardOpts { train: false, collect_blocks: false }).logits);
        let vars: Vec<(String, Tensor)> = cpu_vs.variables().into_iter().map(|(k, v)| (k, v.detach())).collect();
        vpetl_tools::write_tensors(&dir.join("weights.safetensors"), vars)?;
        vpetl_tools::write_tensors(&dir.join("input.safetensors"), vec![("input".into(), x), ("logits".into(), logits)])?;
    }
    let device = s.device.device();
    let (vs, model) = if device == Device::Cpu {
        (cpu_vs, cpu_model)
    } else {
        let (mut vs, model) = build(s.size, m.yaml, device)?;
        vs.copy(&cpu_vs)?;
        (vs, model)
    };
    let mut trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    trainable.sort_by(|a, b| a.0.cmp(&b.0));
    let spec = AdamWSpec::default();
    let mut opt = spec.build(trainable)?;
    let x = Tensor::randn([batch, 3, s.size.img_size(), s.size.img_size()], (Kind::Float, device));
    let y = Tensor::randint(s.size.num_classes(), [batch], (Kind::Int64, device));
    let times = time_runs(s.warmup, s.repeats, || {
        let loss = tch::autocast(s.amp, || {
            let logits = model.forward(&x, ForwardOpts { train: true, collect_blocks: false }).logits;
            logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)
        });
        loss.backward();
        opt.step(spec.lr);
        opt.zero_grad();
        // Waits for the device, as the reference's `loss.item()` does.
        let _ = loss.double_value(&[]);
    });
    let out = serde_json::json!({
        "trainable": model.param_counts().trainable,
        "median_s": median(times.clone()),
        "times_s": times,
    });
    println!("{out}");
    Ok(())
}

/// Runs a child under the GPU memory poller when on CUDA; (answer, peak MiB).
fn measured(cmd: Command, what: &str, dev: Dev) -> anyhow::Result<(serde_json::Value, Option<u64>)> {
    if dev == Dev::Cuda {
        let poll = GpuMemPoll::start()?;
        let v = run_json(cmd, what);
        let peak = poll.stop();
        Ok((v?, Some(peak)))
    } else {
        Ok((run_json(cmd, what)?, None))
    }
}

/// The table: for each method, both sides' step time and their ratio (and peak memory on CUDA).
pub fn run(s: &StepOpts, threads: usize) -> anyhow::Result<Table> {
    let batch = s.batch.unwrap_or(s.size.default_batch());
    let cases: Vec<&MethodCase> = if s.methods.is_empty() {
        METHODS.iter().collect()
    } else {
        s.methods.iter().map(|k| method(k)).collect::<anyhow::Result<_>>()?
    };
    let precision = match (s.device, s.amp) {
        (Dev::Cuda, true) => "autocast (ours fp16: tch's autocast type; reference bf16)",
        _ => "fp32",
    };
    let mut header = vec!["method", "trainable (ours = ref)", "max abs Δ logits", "vpetl ms: median (min)", "reference ms: median (min)", "ratio of medians"];
    if s.device == Dev::Cuda {
        header.extend(["vpetl peak (MiB)", "reference peak (MiB)", "memory ratio"]);
    }
    let mut table = Table::new(
        format!("Training step: {}, batch {batch}, {}", s.size.name(), s.device.name().to_uppercase()),
        format!(
            "Forward + backward + AdamW, {precision}, {threads} intra-op threads on both sides; median of {} rounds × {} steps (each after {} warm-up steps), \
             the two sides' processes alternating; reference: timm VisionTransformer + the method in plain PyTorch (benchmarks/train_step.py); \
             ratio = vpetl / reference (lower is better).",
            s.rounds.max(1), s.repeats, s.warmup
        ),
        &header,
    );
    let exe = std::env::current_exe().context("cannot find this program to run our side")?;
    for m in cases {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..s.rounds.max(1) {
            let mut cmd = Command::new(&exe);
            cmd.args(["--threads", &threads.to_string(), "step-ours", "--method", m.key])
                .args(["--size", &size_arg(s.size), "--batch", &batch.to_string(), "--device", s.device.name()])
                .args(["--warmup", &s.warmup.to_string(), "--repeats", &s.repeats.to_string()])
                .arg("--dir")
                .arg(dir.path());
            if s.amp {
                cmd.arg("--amp");
            }
            a.push(measured(cmd, &format!("our {} step", m.label), s.device)?);

            let mut cmd = Command::new(python());
            cmd.arg(benchmarks_dir().join("train_step.py"))
                .arg(dir.path())
                .args(["--backbone", s.size.backbone(), "--num-classes", &s.size.num_classes().to_string()])
                .args(["--method", m.reference, "--options", m.options, "--batch", &batch.to_string()])
                .args(["--warmup", &s.warmup.to_string(), "--repeats", &s.repeats.to_string(), "--threads", &threads.to_string()])
                .args(["--device", s.device.name(), "--amp", if s.amp && s.device == Dev::Cuda { "bf16" } else { "none" }]);
            b.push(measured(cmd, &format!("the reference {} step", m.label), s.device)?);
        }
        let ((a, a_mem), (b, b_mem)) = (pooled(a), pooled(b));
        let what = format!("{} on {}", m.label, s.size.name());
        let (na, nb) = (field(&a, "trainable", &what)?, field(&b, "trainable", &what)?);
        if na != nb {
            bail!("{what}: trainable parameters differ: ours {na}, the reference {nb}; the comparison would not be fair");
        }
        let diff = field(&b, "max_diff", &what)?;
        if diff > 1e-3 {
            bail!("{what}: the reference's logits differ from ours by {diff:e} on the same weights; the comparison would not be fair");
        }
        let (ta, tb) = (field(&a, "median_s", &what)?, field(&b, "median_s", &what)?);
        let mut row = vec![
            m.label.to_string(),
            format!("{na}"),
            format!("{diff:.1e}"),
            ms(ta, min_time(&a)),
            ms(tb, min_time(&b)),
            format!("{:.3}", ta / tb),
        ];
        if let (Some(ma), Some(mb)) = (a_mem, b_mem) {
            row.extend([format!("{ma}"), format!("{mb}"), format!("{:.3}", ma as f64 / mb.max(1) as f64)]);
        }
        table.row(row);
    }
    if s.device == Dev::Cuda {
        table.note("Peak memory: the device's used memory above its idle level while each side's process ran (nvidia-smi every 20 ms), CUDA context and allocator reserve included on both sides.");
    }
    Ok(table)
}

/// The rounds of one side as one answer: the first round's fields, every round's timings, the
/// median over all of them and the highest peak memory.
fn pooled(rounds: Vec<(serde_json::Value, Option<u64>)>) -> (serde_json::Value, Option<u64>) {
    let all: Vec<f64> = rounds.iter().flat_map(|(v, _)| times(v)).collect();
    let peak = rounds.iter().filter_map(|(_, m)| *m).max();
    let mut first = rounds.into_iter().next().expect("at least one round").0;
    first["median_s"] = serde_json::json!(median(all.clone()));
    first["times_s"] = serde_json::json!(all);
    (first, peak)
}

fn size_arg(size: Size) -> String {
    size.to_possible_value().expect("no skipped sizes").get_name().to_string()
}
