//! Running the methods' prepare steps (SCT's calibration, GPS's gradient scores, NOAH's search)
//! before training, and restoring their results from checkpoints.
//!
//! A step's result is a set of tensors named `methods.<name>.<key>`; checkpoints and method-only
//! files carry them as `prepared.methods.<name>.<key>`, so that resuming, `tools/test` and loading
//! a method-only file rebuild the trained model without re-running the pass.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use std::sync::Arc;

use anyhow::Context;
use tch::{nn, Device, Tensor};

use crate::backbones::ForwardOpts;
use crate::config::node::{Node, Value};
use crate::config::Origin;
use crate::data::loader::{DataloaderSpec, Loader};
use crate::data::DatasetSpec;
use crate::registry::Component;
use crate::logging::Progress;
use crate::methods::trainability::ParamCounts;
use crate::methods::PrepareData;
use crate::model::{Model, ModelOutput};

/// The training loader as a prepare step's data: batches in the loader's order of `pass` (its
/// epoch number, so the augmentation of two passes differs when the pipeline has any).
pub struct LoaderData<'a> {
    loader: Source<'a>,
    pub model: &'a dyn Model,
    pub device: Device,
    /// Where other splits come from: the training dataloader's config and the run's seed.
    origin: Option<(&'a DataloaderSpec, u64)>,
    vs: Option<&'a nn::VarStore>,
    /// The bar of the current pass and the units it has shown.
    progress: RefCell<Option<(Progress, u64)>>,
    label: String,
}

enum Source<'a> {
    Borrowed(&'a Loader),
    Owned(Loader),
}

impl<'a> LoaderData<'a> {
    pub fn new(loader: &'a Loader, model: &'a dyn Model, device: Device, label: &str) -> Self {
        LoaderData { loader: Source::Borrowed(loader), model, device, origin: None, vs: None, progress: RefCell::new(None), label: label.to_string() }
    }

    /// Lets steps re-read the dataset on other splits (`spec` built the loader; `seed` is the run's).
    pub fn with_origin(self, spec: &'a DataloaderSpec, seed: u64) -> Self {
        LoaderData { origin: Some((spec, seed)), ..self }
    }

    /// Lets steps see the model's trainable variables.
    pub fn with_vars(self, vs: &'a nn::VarStore) -> Self {
        LoaderData { vs: Some(vs), ..self }
    }

    fn loader(&self) -> &Loader {
        match &self.loader {
            Source::Borrowed(l) => l,
            Source::Owned(l) => l,
        }
    }
}

/// A model's trainable variables, sorted by name.
pub fn trainable_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

impl PrepareData for LoaderData<'_> {
    fn batches(&self, pass: u64) -> Box<dyn Iterator<Item = anyhow::Result<(Tensor, Tensor)>> + '_> {
        let device = self.device;
        Box::new(self.loader().epoch(pass, 0).map(move |b| b.map(|b| (b.images.to_device(device), b.labels.to_device(device)))))
    }
    fn len(&self) -> usize {
        self.loader().len()
    }
    fn num_classes(&self) -> i64 {
        self.loader().dataset().num_classes()
    }
    fn forward(&self, images: &Tensor, train: bool) -> ModelOutput {
        self.model.forward(images, ForwardOpts { train, collect_blocks: false })
    }
    fn progress(&self, done: u64, total: u64) {
        let mut p = self.progress.borrow_mut();
        let (bar, shown) = p.get_or_insert_with(|| (Progress::new(&self.label, total), 0));
        bar.inc(done.saturating_sub(*shown));
        *shown = done.max(*shown);
        if done >= total {
            if let Some((b, _)) = p.take() {
                b.finish();
            }
        }
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.vs.map(trainable_variables).unwrap_or_default()
    }
    /// The whole split on every rank of a data-parallel run (not this rank's shard), so that every
    /// rank computes the same result.
    fn split(&self, split: &str, shuffle: bool) -> anyhow::Result<Box<dyn PrepareData + '_>> {
        let (spec, seed) = self.origin.context("this training data does not know its dataset config")?;
        let dataset = &spec.dataset;
        let mut node = dataset.node.clone();
        anyhow::ensure!(
            node.get("split").is_some(),
            "{} (from {}): the training dataset has no `split` key, so split `{split}` cannot be read; set the search's splits to ~ to use the training data",
            dataset.path,
            node.origin
        );
        node.insert("split", Node::new(Value::Str(split.to_string()), Origin::new("a prepare step")));
        let component = Component::<dyn DatasetSpec>::from_node(&node, &dataset.path)?;
        let built = component.spec.build().with_context(|| format!("{}: split `{split}`", dataset.path))?;
        let loader = Loader::new(Arc::from(built), spec, seed)?.shuffled(shuffle);
        tracing::info!("{}: {} batches", loader.dataset().describe(), loader.len());
        Ok(Box::new(LoaderData {
            loader: Source::Owned(loader),
            model: self.model,
            device: self.device,
            origin: self.origin,
            vs: self.vs,
            progress: RefCell::new(None),
            label: self.label.clone(),
        }))
    }
}

/// Runs every prepare step that has no result yet (none was loaded from a checkpoint), logging
/// what it does and how long it took. Gradients a step leaves behind are cleared so that the first
/// optimiser step sees only its own.
pub fn run_missing(model: &dyn Model, vs: &nn::VarStore, data: &dyn PrepareData) -> anyhow::Result<()> {
    for (name, step) in model.prepare_steps() {
        if step.is_ready() {
            tracing::info!("{name}: prepare result loaded from the checkpoint; not re-running");
            continue;
        }
        tracing::info!("{name}: {} ({} batches per pass)", step.describe(), data.len());
        let started = Instant::now();
        let result = step.run(data).with_context(|| format!("{name}: prepare step"))?;
        let result: BTreeMap<String, Tensor> = result.into_iter().collect();
        step.apply(&result).with_context(|| format!("{name}: its own prepare result"))?;
        tracing::info!("{name}: prepared in {:.1}s ({} result tensors)", started.elapsed().as_secs_f64(), result.len());
        if step.unused_params() > 0 {
            tracing::info!("{name}: {} allocated parameters lie outside the prepared model and do not count", step.unused_params());
        }
    }
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.grad().defined() {
                v.zero_grad();
            }
        }
    });
    Ok(())
}

/// The model's parameter counts without what its prepared steps leave unused (a searched
/// sub-network's slices of the supernet's allocation), for reports.
pub fn effective_counts(model: &dyn Model) -> ParamCounts {
    let mut counts = model.param_counts().clone();
    for (name, step) in model.prepare_steps() {
        let unused = step.unused_params();
        if unused > 0 {
            counts.trainable -= unused;
            counts.total -= unused;
            if let Some((t, n)) = counts.per_module.get_mut(name) {
                *t -= unused;
                *n -= unused;
            }
        }
    }
    counts
}

/// Every step's current result, named `methods.<name>.<key>` (for checkpoints).
pub fn results(model: &dyn Model) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, step) in model.prepare_steps() {
        if step.is_ready() {
            out.extend(step.result()?.into_iter().map(|(k, t)| (format!("{name}.{k}"), t)));
        }
    }
    Ok(out)
}

/// Installs the results `prepared` holds (names `methods.<name>.<key>`) into the model's steps.
/// A step whose keys are all absent is left unprepared; `source` names the file for errors.
pub fn apply(model: &dyn Model, prepared: &BTreeMap<String, Tensor>, source: &Path) -> anyhow::Result<()> {
    for (name, step) in model.prepare_steps() {
        let prefix = format!("{name}.");
        let own: BTreeMap<String, Tensor> =
            prepared.iter().filter_map(|(k, t)| k.strip_prefix(&prefix).map(|r| (r.to_string(), t.shallow_clone()))).collect();
        if own.is_empty() {
            continue;
        }
        step.apply(&own).with_context(|| format!("{}: the prepare result of `{name}`", source.display()))?;
        tracing::info!("{name}: prepare result restored from {}", source.display());
    }
    Ok(())
}

/// An error unless every prepare step has its result (for evaluating a loaded model).
pub fn ensure_ready(model: &dyn Model, source: &Path) -> anyhow::Result<()> {
    for (name, step) in model.prepare_steps() {
        anyhow::ensure!(
            step.is_ready(),
            "{}: `{name}` needs its prepare result ({}), which this file does not hold; use a checkpoint or \
             method.safetensors written by training",
            source.display(),
            step.describe()
        );
    }
    Ok(())
}
