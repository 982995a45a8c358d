//! `tools/bench train-memory --methods YAML`: the peak resident memory (VmHWM) and time of training
//! steps (forward, loss, backward) of a ViT with those methods on random data, one configuration per
//! process (the peak is process-wide). `--record-backbone` makes the input require a gradient, so
//! autograd records the whole frozen backbone as it would without the side methods' detached taps:
//! the difference is what running the frozen backbone without autograd saves.
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;

use crate::report::median;

#[derive(clap::Args)]
pub struct TrainMemoryOpts {
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
}

/// A field of `/proc/self/status` in kB.
fn proc_status_kb(field: &str) -> anyhow::Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/self/status"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("cannot parse `{line}`"))
}

pub fn run(o: &TrainMemoryOpts) -> anyhow::Result<()> {
    use vpetl_core::config::{load::parse_yaml, Origin, RunConfig};
    let yaml = format!(
        "model:\n  type: ImageClassifier\n  backbone: {}\n  head: {{type: LinearHead, num_classes: 10}}\n  methods: {}\n",
        o.backbone, o.methods
    );
    let cfg = RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("<bench>"))?)?;
    let (vs, model) = vpetl_core::engine::runner::build_model(&cfg, Device::Cpu)?;
    let x = Tensor::randn([o.batch, 3, o.img_size, o.img_size], (Kind::Float, Device::Cpu)).set_requires_grad(o.record_backbone);
    let y = Tensor::randint(10, [o.batch], (Kind::Int64, Device::Cpu));
    let before = proc_status_kb("VmRSS:")?;
    let mut times = Vec::new();
    for _ in 0..o.steps {
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
        "methods={} record_backbone={} batch={} trainable={} rss_before_steps_mib={:.0} peak_mib={:.0} step_s={:.2}",
        o.methods,
        o.record_backbone,
        o.batch,
        c.trainable,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        median(times)
    );
    Ok(())
}
