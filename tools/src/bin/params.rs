//! `tools/params CONFIG [--cfg-options ...]`: trainable, head, method, inserted and total parameter
//! counts of a config's model, with the per-module table.
//!
//! `tools/params --table`: every method at the paper's default settings on ViT-B/16 (and Swin-B for
//! the dense-table methods), beside the seed's Params column, marking which cells match.
use std::path::PathBuf;

use clap::Parser;
use vpetl_core::config::{load::parse_yaml, Origin, RunConfig};
use vpetl_core::methods::trainability::{thousands, ParamCounts};

#[derive(Parser)]
#[command(about = "Parameter counts of a model, or the paper-table comparison")]
struct Args {
    config: Option<PathBuf>,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
    /// Every method on ViT-B/16 / Swin-B beside the seed's Params column.
    #[arg(long)]
    table: bool,
}

const VIT_B16: &str = "{type: ViT, img_size: 224, patch_size: 16, embed_dim: 768, depth: 12, num_heads: 12}";
/// Swin-B as the dense tables count it: mmdet's backbone (stage-output norms, no final norm).
const SWIN_B: &str = "{type: Swin, img_size: 224, embed_dim: 128, depths: [2, 2, 18, 2], num_heads: [4, 8, 16, 32], window_size: 7, window_mode: detection, out_norms: true, final_norm: false}";

/// NOAH's released sub-network for VTAB-1k cifar100 (configs/_base_/methods/noah/cifar.yaml).
const NOAH_CIFAR: &str = "[{type: NOAH, prompt: [10, 5, 10, 1, 5, 1, 10, 1, 10, 5, 1, 10], lora: [10, 1, 5, 5, 1, 10, 1, 1, 1, 10, 1, 1], adapter: [5, 10, 10, 10, 5, 1, 1, 1, 10, 10, 10, 1]}]";

/// (method, backbone, methods YAML, the seed's cell, the count the definition gives, convention).
const ROWS: &[(&str, &str, &str, &str, i64, &str)] = &[
    ("Full fine-tuning", VIT_B16, "[{type: FullFT}]", "85.8M", 85_798_656, "backbone, head excluded"),
    ("Linear probing", VIT_B16, "[{type: LinearProbe}]", "0M", 0, "head excluded"),
    ("BitFit", VIT_B16, "[{type: BitFit}]", "0.10M", 102_912, "every *bias incl. LayerNorm"),
    ("LN-Tune", VIT_B16, "[{type: LN-Tune}]", "0.04M", 38_400, "every LayerNorm weight and bias"),
    ("Adapter", VIT_B16, "[{type: Adapter, bottleneck: 8}]", "0.16M", 156_768, "bottleneck 8 after the MLP"),
    ("AdaptFormer", VIT_B16, "[{type: AdaptFormer, bottleneck: 8}]", "0.16M", 156_768, "bottleneck 8, no adapter LayerNorm"),
    ("LoRA", VIT_B16, "[{type: LoRA, rank: 8, alpha: 8}]", "0.29M", 294_912, "rank 8 on q and v"),
    ("VPT-Shallow", VIT_B16, "[{type: VPT-Shallow, num_tokens: 100}]", "0.08M", 76_800, "100 prompts"),
    ("SSF", VIT_B16, "[{type: SSF}]", "0.21M", 205_824, "after norm1, qkv, proj, norm2, fc1, fc2, patch embed, final norm"),
    ("Hydra", VIT_B16, "[{type: Hydra}]", "0.28M", 239_712, "rank 2 parallel + sequential on proj and fc2 (the cell adds the VTAB head)"),
    ("RepAdapter", VIT_B16, "[{type: RepAdapter}]", "0.22M", 239_808, "as specified (the cell counts weights only: 221,184)"),
    ("SCT", VIT_B16, "[{type: SCT, top_n: 96}]", "0.11M", 111_744, "96 salient channels after attention (sct_attn)"),
    ("GPS", VIT_B16, "[{type: GPS, k: 1}]", "0.22M", 166_656, "k = 1 and every bias, patch-embedding weight not selected (the cell: GPS's own count with the head)"),
    ("NOAH", VIT_B16, NOAH_CIFAR, "0.43M", 320_330, "cifar100's released sub-network (VTAB mean 360,134; the cell: NOAH's own counter)"),
    ("Prefix (FGVC)", VIT_B16, "[{type: Prefix}]", "0.36M", 184_320, "prefix length 10 (the cell adds the FGVC head)"),
    ("DTL", VIT_B16, "[{type: DTL}]", "0.04M", 36_864, "rank 2 on all 12 block inputs"),
    ("LST", VIT_B16, "[{type: LST}]", "2.38M", 2_376_492, "reduction 8, 12 side blocks and ladders (ViT variant reconstructed)"),
    ("LAST", VIT_B16, "[{type: LAST}]", "0.66M", 618_048, "rank 16 after every block, reconstructed (the cell adds the VTAB head)"),
    ("HST", VIT_B16, "[{type: HST}]", "0.78M", 764_840, "meta tokens, block norms, 4-stage side pyramid 32-72 (the cell adds the head, 73 C)"),
    ("SNF", VIT_B16, "[{type: SNF}]", "0.25M", 73_752, "flow length 1 on both shortcuts (the FGVC cell adds the FGVC head)"),
    ("Full fine-tuning", SWIN_B, "[{type: FullFT}]", "86.75M", 86_745_016, "Swin-B dense backbone (norm0..3, no final norm)"),
    ("BitFit", SWIN_B, "[{type: BitFit}]", "0.20M", 0, "Swin-B: every *bias incl. position-bias tables"),
    ("LN-Tune", SWIN_B, "[{type: LN-Tune}]", "0.06M", 0, "Swin-B: every LayerNorm"),
    ("Partial-1", SWIN_B, "[{type: Partial-k, k: 1}]", "12.60M", 12_601_632, "Swin-B: the last block"),
    ("Adapter", SWIN_B, "[{type: Adapter, placement: houlsby, bottleneck: 64}]", "3.11M", 3_107_328, "Swin-B: Houlsby, bottleneck 64"),
    ("LoRand", SWIN_B, "[{type: LoRand}]", "1.20M", 1_203_456, "Swin-B, alpha 2, beta 8"),
];

fn counts(backbone: &str, methods: &str) -> anyhow::Result<ParamCounts> {
    let yaml = format!(
        "model:\n  type: ImageClassifier\n  backbone: {backbone}\n  head: {{type: LinearHead, num_classes: 10}}\n  methods: {methods}\n"
    );
    let cfg = RunConfig::from_node(&parse_yaml(&yaml, &Origin::new("<table>"))?)?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = cfg.model.as_ref().expect("the table's configs have a model").spec.build(&vs)?;
    Ok(model.param_counts().clone())
}

/// The seed's cell in raw parameters (`0.29M` -> 290,000), for a tolerance check at its precision.
fn cell_matches(cell: &str, n: i64) -> bool {
    let Some(m) = cell.strip_suffix('M').and_then(|v| v.parse::<f64>().ok()) else { return false };
    let decimals = cell.split('.').nth(1).map_or(0, |d| d.trim_end_matches('M').len()) as i32;
    ((n as f64 / 1e6) * 10f64.powi(decimals)).round() / 10f64.powi(decimals) == m
}

fn table() -> anyhow::Result<()> {
    println!("| method | backbone | seed cell | ours (head excluded) | definition | matches | convention |");
    println!("|---|---|---|---|---|---|---|");
    for (name, backbone, methods, cell, definition, convention) in ROWS {
        let bb = if backbone.contains("Swin") { "Swin-B" } else { "ViT-B/16" };
        match counts(backbone, methods) {
            Ok(c) => {
                let ours = c.trainable_without_head();
                let def_ok = *definition == 0 || ours == *definition;
                let mark = match (cell_matches(cell, ours), def_ok) {
                    (true, true) => "yes",
                    (false, true) => "definition only",
                    (_, false) => "NO",
                };
                println!("| {name} | {bb} | {cell} | {} | {} | {mark} | {convention} |", thousands(ours), if *definition == 0 { "-".into() } else { thousands(*definition) });
            }
            Err(e) => println!("| {name} | {bb} | {cell} | - | - | not available: {} | {convention} |", e.to_string().lines().next().unwrap_or_default()),
        }
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.table {
        return table();
    }
    let path = args.config.ok_or_else(|| anyhow::anyhow!("give a CONFIG, or --table"))?;
    let node = vpetl_core::config::load(&path, &args.cfg_options)?;
    let cfg = RunConfig::from_node(&node)?;
    let (_, model) = vpetl_core::engine::runner::build_model(&cfg, tch::Device::Cpu)?;
    let c = model.param_counts();
    let method = c.trainable_without_head();
    println!("trainable: {} (head {}, method {})", thousands(c.trainable), thousands(c.trainable - method), thousands(method));
    println!("inserted:  {}", thousands(c.inserted()));
    println!("total:     {}", thousands(c.total));
    println!("ratio:     {:.4}%", 100.0 * c.trainable as f64 / c.total.max(1) as f64);
    print!("{c}");
    Ok(())
}

fn main() {
    vpetl_tools::init();
    if let Err(e) = run(Args::parse()) {
        vpetl_tools::exit_with(e);
    }
}
