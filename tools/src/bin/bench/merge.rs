//! `tools/bench merge`: inference latency of each re-parameterisable method unmerged (the method's
//! extra computation at its sites) against merged into the backbone (`Model::merged_backbone`
//! loaded into a plain model, as `tools/merge` exports it). The two must give the same logits.

use clap::Args;
use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::model::Model;

use crate::models::{build, perturb_methods, Size};
use crate::report::{median, ms, time_runs, Table};

const MERGEABLE: [(&str, &str); 6] = [
    ("LoRA (r 8, q v)", "[{type: LoRA}]"),
    ("SSF", "[{type: SSF}]"),
    ("RepAdapter", "[{type: RepAdapter}]"),
    ("FacT-TT", "[{type: FacT-TT}]"),
    ("FacT-TK", "[{type: FacT-TK}]"),
    ("Hydra", "[{type: Hydra}]"),
];

#[derive(Args, Clone, Debug)]
pub struct MergeOpts {
    #[arg(long, value_enum, default_value = "vit-s")]
    pub size: Size,
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
}

/// (min, median) seconds.
fn latency(model: &dyn Model, x: &Tensor, warmup: usize, repeats: usize) -> (f64, f64) {
    let _guard = tch::no_grad_guard();
    let times = time_runs(warmup, repeats, || {
        let out = model.forward(x, ForwardOpts { train: false, collect_blocks: false });
        let _ = out.logits.sum(Kind::Float).double_value(&[]);
    });
    (times.iter().copied().fold(f64::INFINITY, f64::min), median(times))
}

pub fn run(o: &MergeOpts, threads: usize) -> anyhow::Result<Table> {
    let mut table = Table::new(
        format!("Inference latency, merged against unmerged: {}, batch {} (CPU)", o.size.name(), o.batch),
        format!(
            "fp32, no gradients, {threads} intra-op threads; median of {} forward passes after {} warm-up passes; ratio = merged / unmerged (lower is better).",
            o.repeats, o.warmup
        ),
        &["method", "unmerged ms: median (min)", "merged ms: median (min)", "ratio of medians", "max abs Δ logits"],
    );
    let x = Tensor::randn([o.batch, 3, o.size.img_size(), o.size.img_size()], (Kind::Float, Device::Cpu));
    for (label, yaml) in MERGEABLE {
        tch::manual_seed(0);
        let (vs, with) = build(o.size, yaml, Device::Cpu)?;
        perturb_methods(&vs);
        let weights = with.merged_backbone(&vs)?;
        let (plain_vs, plain) = build(o.size, "[]", Device::Cpu)?;
        let src = vs.variables();
        tch::no_grad(|| {
            for (name, mut var) in plain_vs.variables() {
                let merged = name.strip_prefix("backbone.").and_then(|n| weights.get(n));
                if let Some(v) = merged.or_else(|| src.get(&name)) {
                    var.copy_(v);
                }
            }
        });
        let diff = tch::no_grad(|| {
            let opts = ForwardOpts { train: false, collect_blocks: false };
            (with.forward(&x, opts).logits - plain.forward(&x, opts).logits).abs().max().double_value(&[])
        });
        anyhow::ensure!(diff <= 1e-3, "{label}: merged and unmerged logits differ by {diff:e}");
        let (a_min, a) = latency(with.as_ref(), &x, o.warmup, o.repeats);
        let (b_min, b) = latency(plain.as_ref(), &x, o.warmup, o.repeats);
        table.row(vec![label.into(), ms(a, a_min), ms(b, b_min), format!("{:.3}", b / a), format!("{diff:.1e}")]);
    }
    Ok(table)
}
