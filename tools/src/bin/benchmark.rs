//! `tools/benchmark CONFIG|DIR... [--work-root D] [--cfg-options ...] [--dry-run] [--fail-fast]`
//!
//! Runs a list or grid of configs one after another, each through `train` in its own process (a
//! failing run does not stop the grid and its log stays in its work dir). Work dirs mirror the
//! config paths under `--work-root` (`configs/vtab/lora/dtd.yaml` → `<root>/vtab/lora/dtd`). A run
//! whose `results.json` carries the current config hash is finished and skipped; an unfinished one
//! resumes from its last checkpoint. So the command can be stopped and started again at will.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use vpetl_core::engine::results::Results;
use vpetl_core::engine::runner::config_hash;

#[derive(Parser)]
#[command(about = "Run many configs one after another, skipping finished ones (resumable)")]
struct Args {
    /// Config files, or folders searched recursively for `*.yaml` (folders named `_base_` skipped).
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Where the runs' work dirs go.
    #[arg(long, default_value = "work_dirs/benchmark")]
    work_root: PathBuf,
    /// Applied to every config (e.g. `train_cfg.max_epochs=1`); part of each config's hash.
    #[arg(long = "cfg-options", num_args = 1.., value_name = "KEY=VALUE")]
    cfg_options: Vec<String>,
    /// List what would run or be skipped, and stop.
    #[arg(long)]
    dry_run: bool,
    /// Stop at the first failing run instead of going on with the rest.
    #[arg(long)]
    fail_fast: bool,
}

fn find_configs(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    anyhow::ensure!(path.is_dir(), "{}: no such config file or folder", path.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "_base_") {
                find_configs(&p, out)?;
            }
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// `configs/vtab/lora/dtd.yaml` → `vtab/lora/dtd`: the path below the nearest `configs` folder
/// (else the file stem).
fn run_name(config: &Path) -> PathBuf {
    let stem = config.with_extension("");
    let parts: Vec<_> = stem.components().collect();
    match parts.iter().rposition(|c| c.as_os_str() == "configs") {
        Some(i) => parts[i + 1..].iter().collect(),
        None => PathBuf::from(stem.file_name().unwrap_or_default()),
    }
}

enum State {
    Finished(Box<Results>),
    Resumable,
    New,
}

fn state(work_dir: &Path, hash: &str) -> State {
    match Results::read(&work_dir.join("results.json")) {
        Ok(r) if r.config_hash == hash => State::Finished(Box::new(r)),
        _ if work_dir.join("last_checkpoint").exists() => State::Resumable,
        _ => State::New,
    }
}

fn train_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let train = exe.with_file_name("train");
    anyhow::ensure!(train.is_file(), "the `train` tool is not next to {} (build all tools)", exe.display());
    Ok(train)
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut configs = Vec::new();
    for c in &args.configs {
        find_configs(c, &mut configs)?;
    }
    anyhow::ensure!(!configs.is_empty(), "no configs found");
    let train = train_binary()?;
    let (mut done, mut skipped, mut failed) = (0usize, 0usize, Vec::new());
    let started = Instant::now();
    for (i, config) in configs.iter().enumerate() {
        let node = vpetl_core::config::load(config, &args.cfg_options)?;
        let hash = config_hash(&node.to_yaml_string());
        let work_dir = args.work_root.join(run_name(config));
        let label = format!("[{}/{}] {}", i + 1, configs.len(), config.display());
        let resume = match state(&work_dir, &hash) {
            State::Finished(r) => {
                println!("{label}: finished ({} {:.2}), skipped", r.metric.name, r.metric.value);
                skipped += 1;
                continue;
            }
            State::Resumable => true,
            State::New => false,
        };
        if args.dry_run {
            println!("{label}: would {} in {}", if resume { "resume" } else { "run" }, work_dir.display());
            continue;
        }
        println!("{label}: {} in {}", if resume { "resuming" } else { "running" }, work_dir.display());
        let mut cmd = Command::new(&train);
        cmd.arg(config).arg("--work-dir").arg(&work_dir);
        if resume {
            cmd.arg("--resume");
        }
        if !args.cfg_options.is_empty() {
            cmd.arg("--cfg-options").args(&args.cfg_options);
        }
        let t = Instant::now();
        let status = cmd.status().with_context(|| format!("cannot start {}", train.display()))?;
        if status.success() {
            done += 1;
            println!("{label}: done in {:.0} s", t.elapsed().as_secs_f64());
        } else {
            println!("{label}: FAILED ({status}); its log is in {}", work_dir.display());
            failed.push(config.clone());
            if args.fail_fast {
                break;
            }
        }
    }
    println!(
        "{} configs: {done} run, {skipped} already finished, {} failed ({:.0} s); tabulate with: tools/report {}",
        configs.len(),
        failed.len(),
        started.elapsed().as_secs_f64(),
        args.work_root.display()
    );
    if !failed.is_empty() {
        anyhow::bail!("{} run(s) failed: {}", failed.len(), failed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

fn main() {
    vpetl_tools::run_with_console_log(run);
}
