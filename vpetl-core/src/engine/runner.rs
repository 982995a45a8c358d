//! The training and test loops.
//!
//! The loop runs the iterations and the evaluations; everything else (learning rate, timing,
//! memory, logging, checkpoints) is a hook (`engine::hooks`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tch::{nn, Device, Reduction, Tensor};

use super::amp::Amp;
use super::checkpoint::{self, Meta};
use super::evaluator::Evaluator;
use super::hooks::memory::peak_resident_mb;
use super::hooks::Hooks;
use super::optim::clip_grad_norm;
use super::parallel::Parallel;
use super::results::{ppt, Results};
use super::state::{RunState, Validation, Window};
use crate::backbones::ForwardOpts;
use crate::checkpoint::load::{load_pretrained, PretrainedSpec};
use crate::config::{Node, RunConfig};
use crate::data::loader::Loader;
use crate::data::sample_seed;
use crate::logging::{Progress, ScalarLog};
use crate::model::Model;
use crate::workdir::{self, RunDirs};

#[derive(Clone, Debug)]
pub enum Resume {
    /// The checkpoint `work_dir/last_checkpoint` names, if any.
    Auto,
    Path(PathBuf),
}

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    pub config_path: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub resume: Option<Resume>,
    pub seed: Option<u64>,
    /// Stop after this many epochs of this invocation (for tests of resuming).
    pub stop_after_epochs: Option<u64>,
    /// Stop after this many iterations of this invocation, even mid-epoch (tests of resuming an
    /// iteration loop; the epoch's end-of-epoch work is not done).
    pub stop_after_iters: Option<u64>,
}

/// A short stable hash of the merged config.
pub fn config_hash(merged_yaml: &str) -> String {
    let digest = Sha256::digest(merged_yaml.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Builds the model a config describes, on `device`.
pub fn build_model(cfg: &RunConfig, device: Device) -> anyhow::Result<(nn::VarStore, Box<dyn Model>)> {
    let model_cfg = cfg.model.as_ref().context("the config has no `model`")?;
    let vs = nn::VarStore::new(device);
    let model = model_cfg.spec.build(&vs)?;
    Ok((vs, model))
}

/// Loads weights into a built model: a vpetl training checkpoint (its trainable tensors) or any
/// supported weights file (mapped as pretrained weights; variables matching `allow_shape_mismatch`
/// keep their initialisation when the file's shape differs).
pub fn load_weights(vs: &nn::VarStore, model: &dyn Model, path: &Path, allow_shape_mismatch: &[String]) -> anyhow::Result<()> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        if let Ok(ck) = checkpoint::load(path) {
            let vars = vs.variables();
            tch::no_grad(|| -> anyhow::Result<()> {
                for (name, value) in &ck.params {
                    let var = vars.get(name).with_context(|| {
                        format!("{}: the checkpoint has `{name}`, which this model does not (a different config?)", path.display())
                    })?;
                    anyhow::ensure!(
                        var.size() == value.size(),
                        "{}: `{name}` has shape {:?} in the checkpoint but {:?} in the model",
                        path.display(),
                        value.size(),
                        var.size()
                    );
                    var.shallow_clone().copy_(value);
                }
                Ok(())
            })?;
            tracing::info!("loaded {} tensors from checkpoint {}", ck.params.len(), path.display());
            return super::prepare::apply(model, &ck.prepared, path);
        }
    }
    let spec = PretrainedSpec {
        path: path.to_path_buf(),
        layout: Default::default(),
        strip_prefix: vec![],
        rename: vec![],
        skip: vec![format!("{}.*", regex::escape(checkpoint::PREPARED))],
        allow_shape_mismatch: allow_shape_mismatch.to_vec(),
        strict: false,
    };
    let report = load_pretrained(vs, &spec, model.backbone())?;
    tracing::info!("{}", report.to_string().trim_end());
    if path.extension().is_some_and(|e| e == "safetensors") {
        super::prepare::apply(model, &checkpoint::read_prepared(path)?, path)?;
    }
    Ok(())
}

/// Runs the evaluator over a loader, in inference mode (its outputs never feed training). A sharded
/// loader (data parallel) evaluates this rank's part; the outputs of all ranks are then gathered so
/// that every rank's evaluator sees the whole split in order.
pub fn evaluate(model: &dyn Model, loader: &Loader, evaluator: &mut dyn Evaluator, device: Device) -> anyhow::Result<Vec<(String, f64)>> {
    evaluator.reset();
    let _guard = crate::inference::InferenceMode::enter();
    let group = crate::dist::current().filter(|_| loader.is_sharded());
    let mut kept: Vec<(Tensor, Tensor, Vec<usize>)> = Vec::new();
    let mut progress = Progress::new("evaluate", loader.len() as u64);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let out = model.forward(&batch.images.to_device(device), ForwardOpts { train: false, collect_blocks: false });
        match group {
            None => evaluator.process(&out.logits, &batch.labels),
            Some(_) => kept.push((out.logits, batch.labels, batch.indices)),
        }
        progress.inc(1);
    }
    progress.finish();
    if let Some(g) = group {
        let rows = Tensor::cat(&kept.iter().map(|k| &k.0).collect::<Vec<_>>(), 0);
        let labels = Tensor::cat(&kept.iter().map(|k| &k.1).collect::<Vec<_>>(), 0);
        let indices: Vec<usize> = kept.iter().flat_map(|k| k.2.iter().copied()).collect();
        let (rows, labels) = crate::dist::gather::gather_rows(g, &rows, &labels, &indices)?;
        let bs = loader.batch_size() as i64;
        for (r, l) in rows.split(bs, 0).iter().zip(labels.split(bs, 0).iter()) {
            evaluator.process(r, l);
        }
    }
    Ok(evaluator.compute())
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Trains the model a merged config describes; returns what results.json records.
pub fn train(node: &Node, opts: &TrainOptions) -> anyhow::Result<Results> {
    let started = Instant::now();
    let cfg = RunConfig::from_node(node)?;
    let merged = node.to_yaml_string();
    let hash = config_hash(&merged);
    let work_dir = workdir::resolve(opts.work_dir.as_deref(), cfg.work_dir.as_deref(), &opts.config_path);
    let mut parallel = Parallel::init(&cfg)?;
    // Data parallel: rank 0 alone writes logs, checkpoints and results; the others print warnings.
    let main = parallel.is_main();
    let dirs = if main { Some(RunDirs::create(&work_dir)?) } else { None };
    let logging = match &dirs {
        Some(dirs) => crate::logging::init_with_file(cfg.log_level.as_str(), &dirs.log_file),
        None => {
            crate::logging::init_console("warn");
            Ok(())
        }
    };
    if logging.is_err() {
        tracing::debug!("logging was set up before; this run logs to the existing subscriber");
    }
    if let Some(dirs) = &dirs {
        dirs.dump_config(&opts.config_path, &merged)?;
    }
    tracing::info!("work dir {}, config hash {hash}", work_dir.display());

    let seed = opts.seed.or(cfg.seed).unwrap_or(42);
    tch::manual_seed(seed as i64);
    let device = parallel.device();
    let (vs, model) = build_model(&cfg, device)?;
    if let Some(path) = &cfg.load_from {
        load_weights(&vs, model.as_ref(), path, &[])?;
    }
    let optim_cfg = cfg.optim_wrapper.as_ref().context("the config has no `optim_wrapper`")?;
    let amp = Amp::from_config(optim_cfg, &vs, device)?;
    let train_spec = cfg.train_dataloader.as_ref().context("the config has no `train_dataloader`")?;
    let train_loader = parallel.shard(Loader::from_spec(train_spec, seed)?);
    let val_loader = cfg.val_dataloader.as_ref().map(|s| Loader::from_spec(s, seed).map(|l| parallel.shard(l))).transpose()?;
    let validation = match (&cfg.val_evaluator, val_loader) {
        (Some(e), Some(loader)) => Some(Validation { loader, evaluator: e.spec.build() }),
        (None, Some(_)) => bail!("`val_dataloader` is set but `val_evaluator` is not"),
        (_, None) => None,
    };
    tracing::info!("train: {} ({} batches of {})", train_loader.dataset().describe(), train_loader.len(), train_loader.batch_size());
    if let Some(v) = &validation {
        tracing::info!("val: {}", v.loader.dataset().describe());
    }
    let classes = train_loader.dataset().num_classes();
    let train_cfg = cfg.train_cfg.clone().context("the config has no `train_cfg`")?;
    let loop_kind = train_cfg.loop_kind().map_err(anyhow::Error::msg)?;
    let mut trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    trainable.sort_by(|a, b| a.0.cmp(&b.0));
    if trainable.is_empty() {
        bail!("nothing to train: no variable requires a gradient");
    }
    let mut buffers: Vec<(String, Tensor)> = {
        let names = &model.param_counts().buffers;
        vs.variables().into_iter().filter(|(k, _)| names.contains(k)).collect()
    };
    buffers.sort_by(|a, b| a.0.cmp(&b.0));
    let base_lr = parallel.scale_lr(&cfg, optim_cfg.optimizer.spec.lr(), train_loader.batch_size())?;
    parallel.prepare(&cfg, &trainable)?;
    let mut optimizer = optim_cfg.optimizer.spec.build(trainable.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect())?;

    let mut meta = Meta { config_hash: hash.clone(), seed, ..Default::default() };
    let resume_from = match &opts.resume {
        None => None,
        Some(Resume::Path(p)) => Some(p.clone()),
        Some(Resume::Auto) => checkpoint::find_last(&work_dir)?,
    };
    if let Some(path) = resume_from {
        let ck = checkpoint::load(&path)?;
        if ck.meta.config_hash != hash {
            tracing::warn!("resuming from {} written by another config (hash {} now {hash})", path.display(), ck.meta.config_hash);
        }
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, t) in trainable.iter().chain(&buffers) {
                let value = ck.params.get(name).with_context(|| format!("{}: no `{name}` to resume from", path.display()))?;
                t.shallow_clone().copy_(value);
            }
            Ok(())
        })?;
        optimizer.load_state(&ck.optim, ck.meta.optimizer_steps)?;
        super::prepare::apply(model.as_ref(), &ck.prepared, &path)?;
        meta = Meta { config_hash: hash.clone(), ..ck.meta };
        tracing::info!("resumed from {} after epoch {}, iteration {}", path.display(), meta.epoch, meta.iter);
    }

    let prepare_data = super::prepare::LoaderData::new(&train_loader, model.as_ref(), device, "prepare").with_origin(train_spec, seed).with_vars(&vs);
    super::prepare::run_missing(model.as_ref(), &vs, &prepare_data)?;
    let prepared = super::prepare::results(model.as_ref())?;

    let mut hooks = Hooks::build(&cfg.default_hooks, &cfg.custom_hooks)?;
    tracing::debug!("hooks: {}", hooks.names().join(", "));
    let iters_per_epoch = train_loader.len() as u64;
    if iters_per_epoch == 0 {
        bail!("the training split has fewer samples than one batch (batch size {}, drop_last)", train_loader.batch_size());
    }
    let mut run = RunState {
        last_checkpoint: checkpoint::find_last(&work_dir).ok().flatten(),
        work_dir: work_dir.clone(),
        device,
        model: model.as_ref(),
        trainable,
        buffers,
        optimizer,
        scheduler: cfg.param_scheduler.as_ref().map(|s| s.spec.as_ref()),
        base_lr,
        lr: base_lr,
        meta,
        loop_kind,
        val_interval: train_cfg.val_interval,
        iters_per_epoch,
        inner_iter: 0,
        loss: f64::NAN,
        window: Window::default(),
        scalars: match &dirs {
            Some(d) => ScalarLog::open(&d.scalars_file)?,
            None => ScalarLog::disabled(),
        },
        validation,
        last_metrics: Vec::new(),
        improved: false,
        images_seen: 0,
        train_secs: 0.0,
        prepared,
        peak_memory_mb: 0.0,
    };
    let stop_at_iter = opts.stop_after_iters.map(|n| run.meta.iter + n);
    let mut step = TrainStep {
        label_smoothing: cfg.loss.label_smoothing,
        accum: optim_cfg.accumulative_counts.max(1),
        clip: optim_cfg.clip_grad,
        amp,
        parallel: &parallel,
        params: run.trainable.iter().map(|(_, t)| t.shallow_clone()).collect(),
    };
    let stop_after = opts.stop_after_epochs.map(|n| run.progress() + n);
    hooks.before_run(&mut run)?;
    while !run.finished() && stop_after.is_none_or(|s| run.progress() < s) && stop_at_iter.is_none_or(|s| run.meta.iter < s) {
        run_epoch(&mut run, &mut hooks, &train_loader, &mut step, seed, stop_at_iter)?;
    }
    hooks.after_run(&mut run)?;
    let skipped = train_loader.skipped();
    if skipped > 0 {
        tracing::warn!("{skipped} training sample(s) were skipped because they failed to load (skip_bad)");
    }

    let counts = &super::prepare::effective_counts(model.as_ref());
    let (metric_name, metric_value) = run.last_metrics.first().cloned().unwrap_or_else(|| ("none".into(), f64::NAN));
    let method_params = counts.trainable_without_head();
    let results = Results {
        task: cfg.experiment.task.clone().unwrap_or_else(|| "cls".into()),
        dataset: cfg.experiment.dataset.clone().unwrap_or_else(|| train_loader.dataset().describe()),
        method: node_types(node, "model.methods"),
        backbone: node.lookup("model.backbone.type").and_then(Node::as_str).unwrap_or("unknown").to_string(),
        metric: super::results::Metric {
            name: metric_name,
            value: metric_value,
            best: run.meta.best.as_ref().map(|b| b.1),
            best_epoch: run.meta.best.as_ref().map(|b| b.2),
        },
        params: super::results::Params {
            trainable: counts.trainable,
            total: counts.total,
            inserted: counts.inserted(),
            head: counts.trainable - method_params,
            method: method_params,
        },
        ppt: ppt(metric_value / 100.0, method_params),
        // The memory hook's peak on CUDA (the caching allocator's); the process's peak RSS on CPU.
        peak_memory_mb: if device.is_cuda() { run.peak_memory_mb } else { peak_resident_mb() },
        train_images_per_s: if run.train_secs > 0.0 { run.images_seen as f64 / run.train_secs } else { 0.0 },
        wall_s: started.elapsed().as_secs_f64(),
        epochs: run.meta.epoch,
        seed,
        num_classes: classes,
        config_hash: hash,
        git_revision: git_revision(),
    };
    if !main {
        return Ok(results);
    }
    results.write(&work_dir.join("results.json"))?;
    let methods_json = node.lookup("model.methods").map_or_else(|| "[]".to_string(), |n| {
        serde_json::to_string(&n.to_yaml_value()).unwrap_or_else(|_| "[]".into())
    });
    checkpoint::save_method_only(&work_dir.join("method.safetensors"), &run.saved_tensors(), &run.prepared, &methods_json)?;
    tracing::info!(
        "done: {} {:.2} (best {:.2}), {} trainable parameters (method {}), PPT {:.4}",
        results.metric.name,
        results.metric.value,
        results.metric.best.unwrap_or(f64::NAN),
        results.params.trainable,
        results.params.method,
        results.ppt
    );
    Ok(results)
}

/// How one iteration updates the model.
struct TrainStep<'a> {
    label_smoothing: f64,
    accum: u64,
    clip: Option<crate::config::run::ClipGrad>,
    /// Mixed precision (a pass-through without AmpOptimWrapper).
    amp: Amp,
    /// Data parallel (no-ops outside a job).
    parallel: &'a Parallel,
    /// The trainable tensors, for the gradient all-reduce and unscaling.
    params: Vec<Tensor>,
}

/// One pass over the training split, or the rest of it when resuming mid-epoch; an iteration
/// loop stops inside it at `max_iters`.
///
/// Determinism: the data order and augmentation come from `(seed, epoch, index)` and libtorch's
/// generator (dropout, drop path) is re-seeded from `(seed, iteration)` before every iteration, so
/// a run resumed from any checkpoint continues exactly as the uninterrupted run (CPU).
fn run_epoch(run: &mut RunState, hooks: &mut Hooks, loader: &Loader, step: &mut TrainStep, seed: u64, stop_at_iter: Option<u64>) -> anyhow::Result<()> {
    let epoch = run.meta.epoch;
    let skip = run.meta.iter.saturating_sub(epoch * run.iters_per_epoch) as usize;
    hooks.before_train_epoch(run)?;
    let mut progress = Progress::new(&run.epoch_label(), run.iters_per_epoch);
    progress.inc(skip as u64);
    let mut batches = loader.epoch(epoch, skip);
    let total = run.iters_per_epoch as usize;
    for i in skip..total {
        let batch = batches.next().context("the loader ended early")??;
        run.inner_iter = i as u64;
        run.improved = false;
        hooks.before_train_iter(run)?;
        tch::manual_seed(sample_seed(seed, epoch, u64::MAX - 1 - run.meta.iter) as i64);
        let labels = batch.labels.to_device(run.device);
        let loss = step.amp.autocast(|| {
            let out = run.model.forward(&batch.images.to_device(run.device), ForwardOpts { train: true, collect_blocks: false });
            out.logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, step.label_smoothing)
        })?;
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            bail!(
                "loss is {value} at epoch {}, iteration {} (global step {}); stopping. The last good checkpoint is {}",
                epoch + 1,
                i + 1,
                run.meta.iter + 1,
                run.last_checkpoint.as_ref().map_or("none (none written yet)".to_string(), |p| p.display().to_string())
            );
        }
        step.amp.backward(&loss, step.accum);
        if (i as u64 + 1) % step.accum == 0 || i + 1 == total {
            step.parallel.sync_grads(&step.params)?;
            if step.amp.unscale(&step.params) {
                if let Some(c) = step.clip {
                    clip_grad_norm(run.optimizer.params(), c.max_norm);
                }
                run.optimizer.step(run.lr);
            }
            run.optimizer.zero_grad();
        }
        // Throughput of the whole job: every rank runs as many samples per step.
        run.images_seen += (batch.indices.len() * step.parallel.world_size()) as u64;
        run.meta.iter += 1;
        // The loss of the global batch (the mean over the ranks), as one process would log it.
        run.loss = step.parallel.mean(value, 1)?;
        progress.inc(1);
        hooks.after_train_iter(run)?;
        if !run.by_epoch() {
            if run.every(run.val_interval) {
                validate(run, hooks)?;
            }
            hooks.after_unit(run)?;
            if run.finished() {
                break;
            }
        }
        if stop_at_iter.is_some_and(|s| run.meta.iter >= s) {
            return Ok(());
        }
    }
    drop(batches);
    progress.finish();
    if run.meta.iter >= (epoch + 1) * run.iters_per_epoch {
        run.meta.epoch = epoch + 1;
    }
    run.meta.optimizer_steps = run.optimizer.state().1;
    hooks.after_train_epoch(run)?;
    if run.by_epoch() {
        if run.every(run.val_interval) {
            validate(run, hooks)?;
        }
        hooks.after_unit(run)?;
    }
    Ok(())
}

/// Evaluates on the validation split (when there is one) and calls the `after_val` hooks.
fn validate(run: &mut RunState, hooks: &mut Hooks) -> anyhow::Result<()> {
    let Some(v) = run.validation.as_mut() else {
        return Ok(());
    };
    run.last_metrics = evaluate(run.model, &v.loader, v.evaluator.as_mut(), run.device)?;
    hooks.after_val(run)
}

/// The `type`s of a list of components in the config (`LoRA+VPT-Deep`), or `linear-probe` for none.
fn node_types(node: &Node, path: &str) -> String {
    let types: Vec<&str> = match node.lookup(path).map(|n| &n.value) {
        Some(crate::config::Value::List(items)) => items.iter().filter_map(|n| n.get("type").and_then(Node::as_str)).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        "LinearProbe".into()
    } else {
        types.join("+")
    }
}

/// Evaluates a checkpoint on the test split (or the validation split when there is none).
pub fn test(node: &Node, checkpoint_path: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let cfg = RunConfig::from_node(node)?;
    let seed = cfg.seed.unwrap_or(42);
    tch::manual_seed(seed as i64);
    let device = crate::runtime::default_device();
    let (vs, model) = build_model(&cfg, device)?;
    load_weights(&vs, model.as_ref(), checkpoint_path, &[])?;
    super::prepare::ensure_ready(model.as_ref(), checkpoint_path)?;
    let spec = cfg
        .test_dataloader
        .as_ref()
        .or(cfg.val_dataloader.as_ref())
        .context("the config has neither `test_dataloader` nor `val_dataloader`")?;
    let loader = Loader::from_spec(spec, seed)?;
    let mut evaluator = cfg.val_evaluator.as_ref().context("the config has no `val_evaluator`")?.spec.build();
    tracing::info!("test: {}", loader.dataset().describe());
    evaluate(model.as_ref(), &loader, evaluator.as_mut(), device)
}
