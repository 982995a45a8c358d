//! `tools/bench`: speed (and GPU memory) against the PyTorch references, as medians over repeated
//! runs after warm-up, each table with our figure, the reference's and their ratio.
//!
//! - `backbones`: ViT-B/Swin-B forward against timm;
//! - `train-step`: a training step per method against timm + the method in plain PyTorch;
//! - `pipeline`: JPEG input pipeline against a torchvision DataLoader;
//! - `merge`: inference latency of re-parameterisable methods merged against unmerged;
//! - `gpu-step`: the GPU check's training step (autocast, NCCL all-reduce, peak CUDA memory) against timm;
//! - `train-memory`: peak memory of training steps with given methods (side networks' saving);
//! - `all`: the CPU tables of BENCHMARKS.md (and the GPU one with `--gpu`).
//!
//! `--markdown FILE` writes the tables with the machine and load average. `benchmarks/run.sh` is
//! the runner that builds and runs it as BENCHMARKS.md records.
mod attention;
mod backbones;
mod gpu_mem;
mod gpu_step;
mod merge;
mod models;
mod pipeline;
mod report;
mod train_memory;
mod train_step;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::models::Size;
use crate::report::{write_markdown, Table};
use crate::train_step::{Dev, StepOpts};

#[derive(Parser)]
#[command(about = "Benchmarks against the PyTorch references")]
struct Args {
    /// Intra-op threads for both sides (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Also write the tables as Markdown here.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Fused against unfused attention on the CPU, forward plus backward, by shape.
    Attention {
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 15)]
        repeats: usize,
    },
    /// Backbone forward passes (fp32, no grad) against timm.
    Backbones {
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// A training step per method against timm + the method in plain PyTorch.
    TrainStep(StepOpts),
    /// Our side of one training-step case (run by `train-step` in its own process).
    #[command(hide = true)]
    StepOurs(train_step::OursOpts),
    /// The JPEG input pipeline against a torchvision DataLoader.
    Pipeline(pipeline::PipelineOpts),
    /// Inference latency of re-parameterisable methods, merged against unmerged.
    Merge(merge::MergeOpts),
    /// The GPU check's training step (scripts/gpu-check.sh) against timm + PyTorch.
    GpuStep(gpu_step::GpuStepOpts),
    /// Peak memory of training steps with the given methods (one configuration per process).
    TrainMemory(train_memory::TrainMemoryOpts),
    /// Every CPU table: training steps on ViT-S/16 and the quickstart model, the pipeline, merging
    /// (and the ViT-B/16 GPU training step with --gpu).
    All {
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Alternations of the two sides for the training-step and pipeline tables.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also the GPU table (ViT-B/16, batch 64, autocast, peak memory); needs CUDA and nvidia-smi.
        #[arg(long)]
        gpu: bool,
        /// Only the GPU table.
        #[arg(long)]
        gpu_only: bool,
    },
}

fn step(size: Size, device: Dev, amp: bool, warmup: usize, repeats: usize, rounds: usize) -> StepOpts {
    StepOpts { size, batch: None, device, amp, methods: vec![], warmup, repeats, rounds }
}

fn run(args: Args) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(threads as i32);
    let tables: Vec<Table> = match args.what {
        What::StepOurs(o) => return train_step::ours(&o),
        What::TrainMemory(o) => return train_memory::run(&o),
        What::GpuStep(o) => return gpu_step::run(&o),
        What::Attention { warmup, repeats } => vec![attention::run(warmup, repeats, threads)?],
        What::Backbones { warmup, repeats } => vec![backbones::run(warmup, repeats, threads)?],
        What::TrainStep(o) => vec![train_step::run(&o, threads)?],
        What::Pipeline(o) => vec![pipeline::run(&o)?],
        What::Merge(o) => vec![merge::run(&o, threads)?],
        What::All { warmup, repeats, rounds, gpu, gpu_only } => {
            let mut t = Vec::new();
            if !gpu_only {
                t.push(train_step::run(&step(Size::VitS, Dev::Cpu, false, warmup, repeats, rounds), threads)?);
                t.push(train_step::run(&step(Size::Tiny, Dev::Cpu, false, warmup, repeats * 4, rounds), threads)?);
                let p = pipeline::PipelineOpts { data: None, count: 512, batch: 64, workers: 2, warmup: 1, repeats: 3, rounds };
                t.push(pipeline::run(&p)?);
                t.push(merge::run(&merge::MergeOpts { size: Size::VitS, batch: 1, warmup: 3, repeats: repeats * 4 }, threads)?);
            }
            if gpu || gpu_only {
                t.push(train_step::run(&step(Size::VitB, Dev::Cuda, true, warmup, repeats, rounds), threads)?);
            }
            t
        }
    };
    if let Some(path) = &args.markdown {
        write_markdown(path, &tables)?;
    }
    Ok(())
}

fn main() {
    vpetl_tools::init();
    if let Err(e) = run(Args::parse()) {
        vpetl_tools::exit_with(e);
    }
}
