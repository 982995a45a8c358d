//! PETL methods. A method is one file: a typed config (registered, defaults from its paper) whose
//! [`MethodSpec::attach`] creates the method's parameters under `methods.<name>.*`, installs hooks at
//! the backbone sites it targets, and says which backbone parameters it makes trainable.
//!
//! Methods compose: a model's `methods:` list is attached in order, several methods may share a
//! site. Trainability is decided once, afterwards ([`trainability`]): every `methods.*` and `head.*`
//! variable trains, a `backbone.*` variable trains only when some method's `trainable_backbone`
//! pattern matches it.
//!
//! Some methods need a pass over the training data before they train (SCT's channel calibration,
//! GPS's gradient scores, NOAH's search): they return a [`Prepare`] step, which the runner calls
//! once (`engine::prepare`), and whose result (named tensors) is saved with every checkpoint and
//! re-applied when one is loaded.

pub mod adapter;
pub mod adaptformer;
pub mod bitfit;
pub mod convpass;
pub mod dtl;
pub mod e3va;
pub mod fact;
pub mod gps;
pub mod full_finetune;
pub mod hst;
pub mod hydra;
pub mod last;
pub mod linear_probe;
pub mod ln_tune;
pub mod lora;
pub mod lorand;
pub mod lst;
pub mod mona;
pub mod noah;
pub mod noah_search;
pub mod partial;
pub mod prefix_tuning;
pub mod repadapter;
pub mod sct;
pub mod side;
pub mod snf;
pub mod ssf;
pub mod u_tuning;
pub mod vpt;
pub mod trainability;

use std::collections::BTreeMap;

use regex::Regex;
use tch::{nn, Tensor};

use crate::backbones::sites::{Hooks, SiteId, SiteKind, SiteMap, Target};
use crate::registry::{Kind, KindOf};

pub trait MethodSpec: std::fmt::Debug {
    fn attach(&self, ctx: &mut AttachCtx) -> anyhow::Result<Attached>;
    /// The width of the feature the method hands to the head, when it replaces the backbone's
    /// pooled feature with one of another width (a side network's, HST); the head is built at it.
    fn feature_dim(&self) -> Option<i64> {
        None
    }
}

impl KindOf for dyn MethodSpec {
    const KIND: Kind = Kind::Method;
}

/// What a method gets to attach itself.
pub struct AttachCtx<'a> {
    /// The method's own namespace, `methods.<name>`.
    pub vs: nn::Path<'a>,
    pub sites: &'a SiteMap,
    pub hooks: &'a mut Hooks,
    /// The backbone's variables by name (without the `backbone.` prefix).
    pub backbone_vars: &'a BTreeMap<String, Tensor>,
}

impl AttachCtx<'_> {
    /// The sites of `kind` a target selects; an empty match is an error.
    pub fn select(&self, kind: SiteKind, target: &Target) -> anyhow::Result<Vec<SiteId>> {
        self.sites.select(kind, target).map_err(anyhow::Error::msg)
    }

    /// The path for a site's parameters: `methods.<name>.blocks.3.attn.qkv`.
    pub fn site_path(&self, id: SiteId) -> nn::Path<'_> {
        sub_path(&self.vs, &self.sites.get(id).name)
    }

    pub fn install(&mut self, id: SiteId, hook: crate::backbones::sites::Hook) -> anyhow::Result<()> {
        self.hooks.install(self.sites, id, hook).map_err(anyhow::Error::msg)
    }
}

/// `path / "a" / "b" / "c"` for a dotted `a.b.c` (tch refuses dots inside one segment).
pub fn sub_path<'a>(p: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut segments = dotted.split('.');
    let first = segments.next().unwrap_or_default();
    segments.fold(p / first, |acc, seg| &acc / seg)
}

/// What attaching a method produced.
#[derive(Default)]
pub struct Attached {
    /// The sites it hooked, for the run log.
    pub sites: Vec<String>,
    /// Backbone variables it makes trainable (regexes matching whole names without `backbone.`).
    pub trainable_backbone: Vec<Regex>,
    /// Folds the method into plain backbone weights, when the maths allows.
    pub merge: Option<Box<dyn Merge>>,
    /// A pass over the training data the method needs before it trains.
    pub prepare: Option<Box<dyn Prepare>>,
}

/// A method's preparation: a pass over the training data whose result (selected channels, masks, a
/// chosen sub-network) decides the model that trains. Its result is a set of named tensors so that
/// checkpoints carry it (`prepared.methods.<name>.<key>`) and a loaded model is the trained one
/// without re-running the pass.
pub trait Prepare {
    /// One line for the log: what the pass computes.
    fn describe(&self) -> String;
    /// Runs the pass. `data` yields the training split's batches; the model's forward pass goes
    /// through `forward` (its hooks, this method's included, are live). Deterministic for a given
    /// data order and libtorch seed. Returns the result, keys relative to the method's namespace.
    fn run(&self, data: &dyn PrepareData) -> anyhow::Result<Vec<(String, Tensor)>>;
    /// Installs a result (just computed, or read from a checkpoint); an error names a missing or
    /// malformed key.
    fn apply(&self, result: &BTreeMap<String, Tensor>) -> anyhow::Result<()>;
    /// Whether a result is installed (the model can run).
    fn is_ready(&self) -> bool;
    /// The installed result (what [`Prepare::run`] returned, or what was applied).
    fn result(&self) -> anyhow::Result<Vec<(String, Tensor)>>;
    /// Trainable parameters the prepared model leaves unused (NOAH's search allocates the widest
    /// sub-network and slices): reports count only what trains.
    fn unused_params(&self) -> i64 {
        0
    }
}

/// What a prepare step sees: the training batches (in a fixed order) and the model.
pub trait PrepareData {
    /// Batches of one pass over the training split: `(images, labels)` on the model's device.
    /// `pass` numbers the passes, so that two passes can differ in their augmentation.
    fn batches(&self, pass: u64) -> Box<dyn Iterator<Item = anyhow::Result<(Tensor, Tensor)>> + '_>;
    /// Number of batches in one pass (for the progress bar and the time estimate).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> i64;
    /// The model's forward pass; `train` selects training mode (dropout, drop path).
    fn forward(&self, images: &Tensor, train: bool) -> crate::model::ModelOutput;
    /// Reports progress: `done` of `total` units of work.
    fn progress(&self, done: u64, total: u64);
    /// The model's trainable variables (methods and head), for steps that train (NOAH's supernet).
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// The same data pipeline over another split of the training dataset (its config's `split`
    /// replaced), shuffled when `shuffle`: NOAH's search trains and ranks on splits of its own.
    fn split(&self, split: &str, shuffle: bool) -> anyhow::Result<Box<dyn PrepareData + '_>> {
        let _ = shuffle;
        anyhow::bail!("this training data cannot be re-read as split `{split}`")
    }
}

/// Folding a method into the backbone's own weights (names without `backbone.`).
pub trait Merge {
    fn merge(&self, weights: &mut BTreeMap<String, Tensor>) -> anyhow::Result<()>;
}

/// A target given in a config: a regex string (matched against the whole site name) or a list of
/// name suffixes (PEFT's semantics).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Regex(String),
    Suffixes(Vec<String>),
}

impl TargetSpec {
    pub fn compile(&self) -> anyhow::Result<Target> {
        match self {
            TargetSpec::Regex(r) => Target::regex(r).map_err(anyhow::Error::msg),
            TargetSpec::Suffixes(l) => Ok(Target::Suffixes(l.clone())),
        }
    }
}
