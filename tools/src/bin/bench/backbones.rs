//! `tools/bench backbones`: forward time of ViT-B/16 (batch 8, 224 px) and Swin-B (batch 4, 224 px)
//! against timm (`tests/python/bench_timm.py`), fp32 without gradients.
use std::process::Command;

use tch::{nn, Device, Kind, Tensor};
use vpetl_core::backbones::sites::Hooks;
use vpetl_core::backbones::swin::SwinSpec;
use vpetl_core::backbones::vit::VitSpec;
use vpetl_core::backbones::{BackboneSpec, ForwardOpts};

use crate::report::{field, median, python, run_json, time_runs, Table};

struct Case {
    name: &'static str,
    timm: &'static str,
    batch: i64,
    spec: Box<dyn BackboneSpec>,
}

fn ours(case: &Case, warmup: usize, repeats: usize) -> anyhow::Result<f64> {
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone = case.spec.build(vs.root())?;
    let hooks = Hooks::new(backbone.sites());
    let x = Tensor::randn([case.batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    // As the timm side runs under torch.inference_mode().
    let _guard = vpetl_core::inference::InferenceMode::enter();
    Ok(median(time_runs(warmup, repeats, || {
        let out = backbone.forward(&x, &hooks, ForwardOpts::default());
        let _ = out.pooled.sum(Kind::Float).double_value(&[]);
    })))
}

fn reference(case: &Case, warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<f64> {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/bench_timm.py"))
        .args(["--model", case.timm, "--batch", &case.batch.to_string()])
        .args(["--warmup", &warmup.to_string(), "--repeats", &repeats.to_string(), "--threads", &threads.to_string()]);
    let v = run_json(cmd, "the timm reference")?;
    field(&v, "median_s", case.timm)
}

pub fn run(warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<Table> {
    let cases = [
        Case { name: "ViT-B/16", timm: "vit_base_patch16_224", batch: 8, spec: Box::new(VitSpec::default()) },
        Case { name: "Swin-B", timm: "swin_base_patch4_window7_224", batch: 4, spec: Box::new(SwinSpec::default()) },
    ];
    let mut table = Table::new(
        "Backbone forward (CPU)",
        format!("fp32, no gradients, {threads} intra-op threads on both sides; median of {repeats} runs after {warmup} warm-up runs; ratio = vpetl / timm."),
        &["model", "batch", "vpetl (ms)", "timm (ms)", "ratio"],
    );
    for case in &cases {
        let a = ours(case, warmup, repeats)?;
        let b = reference(case, warmup, repeats, threads)?;
        table.row(vec![case.name.into(), case.batch.to_string(), format!("{:.1}", a * 1e3), format!("{:.1}", b * 1e3), format!("{:.3}", a / b)]);
    }
    Ok(table)
}
