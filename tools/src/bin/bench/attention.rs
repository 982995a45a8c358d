//! `tools/bench attention`: libtorch's fused `scaled_dot_product_attention` against the unfused
//! path (`q kᵀ`, softmax, `· v`) on the CPU, forward plus backward, over the shapes our backbones
//! produce: the evidence for `backbones::layers::attention`'s choice of kernel by sequence length.

use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::layers::{attention, takes_unfused, unfused_attention, UNFUSED_MAX_KEYS};

use crate::report::{median, time_runs, Table};

/// (what, batch × heads, tokens, head width)
const SHAPES: [(&str, i64, i64, i64); 6] = [
    ("quickstart ViT-tiny/4, batch 50", 200, 65, 16),
    ("Swin-B stage 1 windows, batch 8", 8 * 64 * 4, 49, 32),
    ("ViT-S/16, batch 8", 48, 197, 64),
    ("ViT-B/16, batch 8", 96, 197, 64),
    ("ViT at 384 px, batch 2", 24, 577, 64),
    ("ViT-S/16 + 50 prompts, batch 8", 48, 247, 64),
];

fn time_fwd_bwd(f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor, bh: i64, n: i64, d: i64, warmup: usize, repeats: usize) -> f64 {
    let opts = (Kind::Float, Device::Cpu);
    let (q, k, v) = (Tensor::randn([1, bh, n, d], opts), Tensor::randn([1, bh, n, d], opts), Tensor::randn([1, bh, n, d], opts));
    let (q, k, v) = (q.set_requires_grad(true), k.set_requires_grad(true), v.set_requires_grad(true));
    let grad = Tensor::randn([1, bh, n, d], opts);
    median(time_runs(warmup, repeats, || {
        (f(&q, &k, &v) * &grad).sum(Kind::Float).backward();
    }))
}

pub fn run(warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Attention kernels (CPU)",
        format!(
            "Forward + backward of softmax(q kᵀ / √d) v, fp32, {threads} intra-op threads; median of {repeats} runs after {warmup} warm-up runs; \
             ratio = unfused / fused (below 1: the unfused path is faster). `layers::attention` takes the unfused path up to {UNFUSED_MAX_KEYS} keys."
        ),
        &["shape", "batch × heads, tokens, head width", "fused (ms)", "unfused (ms)", "ratio", "chosen"],
    );
    for (what, bh, n, d) in SHAPES {
        let fused = time_fwd_bwd(|q, k, v| Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, false), bh, n, d, warmup, repeats);
        let unfused = time_fwd_bwd(|q, k, v| unfused_attention(q, k, v, None), bh, n, d, warmup, repeats);
        // What the shared function does for this shape (its answer equals both to rounding).
        let chosen = if takes_unfused(Device::Cpu, n, true) { "unfused" } else { "fused" };
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (Tensor::randn([1, bh, n, d], opts), Tensor::randn([1, bh, n, d], opts), Tensor::randn([1, bh, n, d], opts));
        let diff = (attention(&q, &k, &v, None) - Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, false))
            .abs()
            .max()
            .double_value(&[]);
        anyhow::ensure!(diff < 1e-4, "{what}: the two attention paths differ by {diff:e}");
        table.row(vec![
            what.into(),
            format!("{bh}, {n}, {d}"),
            format!("{:.2}", fused * 1e3),
            format!("{:.2}", unfused * 1e3),
            format!("{:.2}", unfused / fused),
            chosen.into(),
        ]);
    }
    Ok(table)
}
