//! `tools/bench attention`: libtorch's fused `scaled_dot_product_attention` against the unfused
//! path (`q kᵀ`, softmax, `· v`) and our kernel over a fused projection (`layers::self_attention`)
//! on the CPU, forward plus backward, over the shapes our backbones produce: the evidence for the
//! choice of kernel by sequence length in `backbones::layers`.

use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::layers::{attention, self_attention, takes_qkv_kernel, takes_unfused, unfused_attention, UNFUSED_MAX_KEYS};

use crate::report::{median, time_runs, Table};

/// (what, batch, heads, tokens, head width)
const SHAPES: [(&str, i64, i64, i64, i64); 6] = [
    ("quickstart ViT-tiny/4, batch 50", 50, 4, 65, 16),
    ("Swin-B stage 1 windows, batch 8", 8 * 64, 4, 49, 32),
    ("ViT-S/16, batch 8", 8, 6, 197, 64),
    ("ViT-B/16, batch 8", 8, 12, 197, 64),
    ("ViT at 384 px, batch 2", 2, 12, 577, 64),
    ("ViT-S/16 + 50 prompts, batch 8", 8, 6, 247, 64),
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

/// Forward plus backward of `self_attention` over a projection `(batch, tokens, 3·heads·d)`.
fn time_self_attention(batch: i64, heads: i64, n: i64, d: i64, warmup: usize, repeats: usize) -> f64 {
    let opts = (Kind::Float, Device::Cpu);
    let qkv = Tensor::randn([batch, n, 3 * heads * d], opts).set_requires_grad(true);
    let grad = Tensor::randn([batch, n, heads * d], opts);
    median(time_runs(warmup, repeats, || {
        (self_attention(&qkv, heads) * &grad).sum(Kind::Float).backward();
    }))
}

pub fn run(warmup: usize, repeats: usize, threads: usize) -> anyhow::Result<Table> {
    let mut table = Table::new(
        "Attention kernels (CPU)",
        format!(
            "Forward + backward of softmax(q kᵀ / √d) v, fp32, {threads} intra-op threads; median of {repeats} runs after {warmup} warm-up runs; \
             ratio = unfused / fused (below 1: the unfused path is faster). `layers::attention` (q, k and v given apart) takes the unfused path up to {UNFUSED_MAX_KEYS} keys; \
             `layers::self_attention` (from the fused projection, as ViT's blocks call it when no method hooks the attention) takes our kernel up to {UNFUSED_MAX_KEYS} tokens; \
             the fused and unfused columns start from separate contiguous q, k and v and stop before the heads are concatenated: in a block they also pay for that split and concatenation, which ours does without."
        ),
        &["shape", "batch × heads, tokens, head width", "fused (ms)", "unfused (ms)", "ratio", "chosen", "ours, from the projection (ms)", "ours / chosen"],
    );
    for (what, batch, heads, n, d) in SHAPES {
        let bh = batch * heads;
        let fused = time_fwd_bwd(|q, k, v| Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, false), bh, n, d, warmup, repeats);
        let unfused = time_fwd_bwd(|q, k, v| unfused_attention(q, k, v, None), bh, n, d, warmup, repeats);
        // What the shared function does for this shape (its answer equals both to rounding).
        let (chosen, chosen_ms) = if takes_unfused(Device::Cpu, n, true) { ("unfused", unfused) } else { ("fused", fused) };
        let ours = takes_qkv_kernel(Device::Cpu, Kind::Float, n).then(|| time_self_attention(batch, heads, n, d, warmup, repeats));
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
            ours.map_or("— (ATen path)".into(), |t| format!("{:.2}", t * 1e3)),
            ours.map_or("—".into(), |t| format!("{:.2}", t / chosen_ms)),
        ]);
    }
    Ok(table)
}
