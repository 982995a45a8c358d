//! `tools/visualize <attention|tsne|curves|results> ... --out OUT.png [--size WxH]`
//!
//! - `attention`: the class token's attention of chosen blocks (one head or their mean) and the
//!   attention rollout (ViT), or the window attention each token receives in chosen blocks of
//!   chosen stages (Swin), over a few test images; two models (config + checkpoint each) side by
//!   side.
//! - `tsne`: a t-SNE of test-split features (pooled, or a block's), coloured by class; also CSV.
//! - `curves`: loss, lr, metrics, memory over steps from `vis_data/scalars.json`, runs overlaid.
//! - `results`: accuracy against trainable parameters and per-dataset bars from `results.json`s.
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use vpetl_core::config::RunConfig;
use vpetl_core::data::loader::Loader;
use vpetl_core::engine::runner::{build_model, load_weights};
use vpetl_core::model::Model;
use vpetl_core::viz::{attention, attention_figure, canvas::parse_size, curves, results_plot, samples, scatter, tsne};

#[derive(Parser)]
#[command(about = "Draw attention maps, t-SNE embeddings, training curves and result plots as PNG")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attention maps over test images: ViT, the class token's attention and attention rollout;
    /// Swin, the window attention each token receives (details with --help).
    ///
    /// ViT: the class token's attention over the patches in chosen blocks, and attention rollout
    /// (Abnar & Zuidema 2020) through every block.
    ///
    /// Swin (no class token): for each token, the attention it receives from the queries of its
    /// window, averaged over them (padding queries left out; a uniform window gives 1/N to each of
    /// its N tokens), drawn where the token sits in the image: the cyclic shift of shifted blocks is
    /// undone and padding dropped, so every map lines up with the input. Blocks are chosen within
    /// stages (--stages, --blocks: default the last block of every stage); there is no rollout.
    Attention(AttentionArgs),
    /// t-SNE of test-split features, coloured by class (PNG, and CSV with --csv).
    Tsne(TsneArgs),
    /// Training curves from vis_data/scalars.json of one or more runs.
    Curves(CurvesArgs),
    /// Accuracy against trainable parameters, and per dataset, from results.json files.
    Results(ResultsArgs),
}

#[derive(Args)]
struct Output {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Picture size, WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Title (a descriptive default otherwise).
    #[arg(long)]
    title: Option<String>,
}

#[derive(Args)]
struct ModelArgs {
    /// Config of the model (repeat for a second model shown beside the first).
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Weights for each config, in order (a training checkpoint or any supported weights file;
    /// without it the config's pretrained weights and a fresh head).
    #[arg(long = "checkpoint")]
    checkpoints: Vec<PathBuf>,
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
}

#[derive(Args)]
struct AttentionArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Row label of each model (default: its config's file name).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Test-split samples to show (default: --images of them, spread over the split).
    #[arg(long, value_delimiter = ',')]
    indices: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    images: usize,
    /// Blocks drawn: ViT, blocks in forward order (default: first, middle, last); Swin, blocks
    /// within each of --stages (default: the last block of each).
    #[arg(long, value_delimiter = ',')]
    blocks: Vec<usize>,
    /// Swin: the stages whose window attention is drawn (default: every stage).
    #[arg(long, value_delimiter = ',')]
    stages: Vec<usize>,
    /// One head instead of the mean of the heads.
    #[arg(long)]
    head: Option<i64>,
    /// Leave out the attention rollout column (ViT; Swin has none).
    #[arg(long)]
    no_rollout: bool,
    /// Opacity of the heat map over the image.
    #[arg(long, default_value_t = 0.55)]
    alpha: f64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct TsneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Embed this block's output (averaged over tokens) instead of the pooled feature.
    #[arg(long)]
    block: Option<usize>,
    /// Samples embedded, spread over the test split.
    #[arg(long, default_value_t = 500)]
    max_samples: usize,
    #[arg(long, default_value_t = 30.0)]
    perplexity: f32,
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the embedding as CSV (index,label,x,y).
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct CurvesArgs {
    /// scalars.json files, run folders or work dirs (the newest run in each).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Keys to plot (default: loss, lr, the evaluation metrics, memory).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// Legend label of each run (default: its path).
    #[arg(long = "label")]
    labels: Vec<String>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct ResultsArgs {
    /// Folders searched for results.json (or the files).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    #[command(flatten)]
    output: Output,
}

/// A built model with its loaded weights (and the variables it was built in), and its config.
struct Loaded {
    cfg: RunConfig,
    _vs: tch::nn::VarStore,
    model: Box<dyn Model>,
}

fn load_models(args: &ModelArgs) -> anyhow::Result<Vec<Loaded>> {
    ensure!(
        args.checkpoints.is_empty() || args.checkpoints.len() == args.configs.len(),
        "{} --config but {} --checkpoint: give one checkpoint per config, or none",
        args.configs.len(),
        args.checkpoints.len()
    );
    let mut out = Vec::new();
    for (i, path) in args.configs.iter().enumerate() {
        let node = vpetl_core::config::load(path, &args.cfg_options)?;
        let cfg = RunConfig::from_node(&node)?;
        let (vs, model) = build_model(&cfg, tch::Device::Cpu).with_context(|| format!("{}", path.display()))?;
        if let Some(ckpt) = args.checkpoints.get(i) {
            load_weights(&vs, model.as_ref(), ckpt, &[])?;
        }
        out.push(Loaded { cfg, _vs: vs, model });
    }
    Ok(out)
}

/// The test split's loader (the validation split when a config has no test split).
fn test_loader(cfg: &RunConfig, config: &Path) -> anyhow::Result<Loader> {
    let spec = cfg
        .test_dataloader
        .as_ref()
        .or(cfg.val_dataloader.as_ref())
        .with_context(|| format!("{}: no test_dataloader or val_dataloader to take images from", config.display()))?;
    Loader::from_spec(spec, 0)
}

fn attention_cmd(a: AttentionArgs) -> anyhow::Result<()> {
    ensure!(a.model.configs.len() <= 2, "at most two models side by side, got {}", a.model.configs.len());
    ensure!(a.labels.is_empty() || a.labels.len() == a.model.configs.len(), "give one --label per --config, or none");
    let mut models = load_models(&a.model)?;
    let loader = test_loader(&models[0].cfg, &a.model.configs[0])?;
    let dataset = loader.dataset();
    let indices = if a.indices.is_empty() { samples::evenly_spaced(dataset.len(), a.images.max(1)) } else { a.indices.clone() };
    let (images, labels) = samples::load(dataset.as_ref(), &indices)?;
    let mut rows_per_model = Vec::new();
    let mut columns = Vec::new();
    let mut windowed = false;
    for (i, Loaded { model, .. }) in models.iter_mut().enumerate() {
        let probes = attention::AttentionProbes::install(model.as_mut()).with_context(|| a.model.configs[i].display().to_string())?;
        let blocks = match probes.stages() {
            Some(stages) => blocks_in_stages(&stages, &a.stages, &a.blocks)?,
            None => {
                ensure!(
                    a.stages.is_empty(),
                    "--stages selects stages of a hierarchical backbone (Swin); {} has a flat sequence of blocks: use --blocks",
                    a.model.configs[i].display()
                );
                let depth = probes.site_names().len();
                if a.blocks.is_empty() {
                    let mut b = vec![0, depth / 2, depth - 1];
                    b.dedup();
                    b
                } else {
                    a.blocks.clone()
                }
            }
        };
        model.backbone().check_input(&images.size()).with_context(|| format!("images for {}", a.model.configs[i].display()))?;
        let out = tch::no_grad(|| model.forward(&images, Default::default()));
        let predicted: Vec<i64> = Vec::<i64>::try_from(out.logits.argmax(-1, false)).context("predictions")?;
        let captured = probes.take()?;
        windowed |= captured.iter().any(|c| c.windows.is_some());
        let with_rollout = !a.no_rollout && captured.iter().all(|c| c.windows.is_none());
        let maps = attention::maps(&captured, &blocks, a.head, with_rollout)?;
        let titles: Vec<String> = std::iter::once("input".to_string()).chain(maps.iter().map(|(t, _)| t.clone())).collect();
        if columns.is_empty() {
            columns = titles;
        } else if columns != titles {
            bail!("the two models give different panels ({} vs {}): give --blocks both have", columns.join(", "), titles.join(", "));
        }
        let label = a.labels.get(i).cloned().unwrap_or_else(|| {
            a.model.configs[i].file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
        });
        rows_per_model.push((label, predicted, maps));
    }
    let mut rows = Vec::new();
    for (j, &index) in indices.iter().enumerate() {
        let input = vpetl_core::viz::overlay::input_to_rgb(&images.get(j as i64));
        for (label, predicted, maps) in &rows_per_model {
            let mut panels = vec![attention_figure::Panel { image: input.clone(), map: None }];
            panels.extend(maps.iter().map(|(_, m)| attention_figure::Panel { image: input.clone(), map: Some(m.get(j as i64)) }));
            rows.push(attention_figure::Row {
                label: format!("{label}\nsample {index}\nclass {}, predicted {}", labels[j], predicted[j]),
                panels,
            });
        }
    }
    let size = a.output.size.unwrap_or_else(|| attention_figure::natural_size(columns.len(), rows.len(), 180));
    let what = if a.head.is_some() { "one head" } else { "mean over heads" };
    let title = a.output.title.clone().unwrap_or_else(|| {
        if windowed {
            format!("Window attention received by each token ({what}), averaged over its window's queries")
        } else if a.no_rollout {
            format!("Class-token attention ({what})")
        } else {
            format!("Class-token attention ({what}) and attention rollout")
        }
    });
    attention_figure::plot(&a.output.out, size, &title, &columns, &rows, a.alpha)?;
    println!("wrote {}", a.output.out.display());
    Ok(())
}

/// Indices (into the attention sites) of `blocks` within each of `stages`; by default every stage
/// and its last block.
fn blocks_in_stages(stages: &[Vec<usize>], chosen: &[usize], blocks: &[usize]) -> anyhow::Result<Vec<usize>> {
    let chosen: Vec<usize> = if chosen.is_empty() { (0..stages.len()).collect() } else { chosen.to_vec() };
    let mut out = Vec::new();
    for &s in &chosen {
        let sites = stages
            .get(s)
            .ok_or_else(|| anyhow::anyhow!("stage {s} does not exist (the backbone has {} stages: 0 to {})", stages.len(), stages.len() - 1))?;
        if blocks.is_empty() {
            out.push(*sites.last().context("a stage without blocks")?);
        }
        for &b in blocks {
            let site = sites.get(b).ok_or_else(|| {
                anyhow::anyhow!("block {b} does not exist in stage {s} (it has {} blocks: 0 to {})", sites.len(), sites.len().saturating_sub(1))
            })?;
            out.push(*site);
        }
    }
    Ok(out)
}

fn tsne_cmd(a: TsneArgs) -> anyhow::Result<()> {
    ensure!(a.model.configs.len() == 1, "t-SNE draws one model; got {} --config", a.model.configs.len());
    let models = load_models(&a.model)?;
    let Loaded { cfg, model, .. } = &models[0];
    let loader = test_loader(cfg, &a.model.configs[0])?;
    let dataset = loader.dataset();
    let indices = samples::evenly_spaced(dataset.len(), a.max_samples);
    let (images, labels) = samples::load(dataset.as_ref(), &indices)?;
    let feats = samples::features(model.as_ref(), &images, a.block, loader.batch_size() as i64)?;
    let dim = feats.size()[1] as usize;
    let flat = Vec::<f32>::try_from(feats.contiguous().view([-1])).context("features")?;
    let opts = tsne::TsneOptions { perplexity: a.perplexity, epochs: a.epochs, seed: a.seed, ..Default::default() };
    let points = tsne::embed(&flat, dim, &opts)?;
    let agreement = tsne::nearest_neighbour_agreement(&points, &labels);
    let which = match a.block {
        Some(b) => format!("block {b} output (token mean)"),
        None => "pooled backbone feature".to_string(),
    };
    let title = a.output.title.clone().unwrap_or_else(|| {
        format!("t-SNE of the {which}, {} test samples; 1-NN label agreement {agreement:.2}", points.len())
    });
    scatter::plot(&a.output.out, a.output.size.unwrap_or((900, 800)), &points, &labels, &[], &title, ("t-SNE 1", "t-SNE 2"))?;
    if let Some(csv) = &a.csv {
        std::fs::write(csv, tsne::to_csv(&points, &labels)).with_context(|| format!("cannot write {}", csv.display()))?;
    }
    println!("wrote {} ({} points, 1-NN label agreement {agreement:.3})", a.output.out.display(), points.len());
    Ok(())
}

fn curves_cmd(a: CurvesArgs) -> anyhow::Result<()> {
    ensure!(a.labels.is_empty() || a.labels.len() == a.runs.len(), "give one --label per run, or none");
    let mut runs = Vec::new();
    for (i, r) in a.runs.iter().enumerate() {
        let path = curves::find_scalars(r)?;
        let label = a.labels.get(i).cloned().unwrap_or_else(|| r.display().to_string());
        runs.push(curves::Run::read(&path, label)?);
    }
    let keys = if a.keys.is_empty() { curves::default_keys(&runs) } else { a.keys.clone() };
    let size = a.output.size.unwrap_or((1000, 260 * keys.len().max(1) as u32 + 60));
    let title = a.output.title.clone().unwrap_or_else(|| "Training curves".to_string());
    curves::plot(&a.output.out, size, &runs, &keys, &title)?;
    println!("wrote {}", a.output.out.display());
    Ok(())
}

fn results_cmd(a: ResultsArgs) -> anyhow::Result<()> {
    let results = vpetl_tools::collect_results(&a.dirs)?;
    let title = a.output.title.clone().unwrap_or_else(|| "Results: performance against trainable parameters".to_string());
    results_plot::plot(&a.output.out, a.output.size.unwrap_or((1400, 600)), &results, &title)?;
    println!("wrote {} ({} results)", a.output.out.display(), results.len());
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attention(a) => attention_cmd(a),
        Command::Tsne(a) => tsne_cmd(a),
        Command::Curves(a) => curves_cmd(a),
        Command::Results(a) => results_cmd(a),
    }
}

fn main() {
    vpetl_tools::run_with_console_log(run);
}
