//! PETL methods. A method is one file: a typed config (registered, defaults from its paper) whose
//! [`MethodSpec::attach`] creates the method's parameters under `methods.<name>.*`, installs hooks at
//! the backbone sites it targets, and says which backbone parameters it makes trainable.
//!
//! Methods compose: a model's `methods:` list is attached in order, several methods may share a
//! site. Trainability is decided once, afterwards ([`trainability`]): every `methods.*` and `head.*`
//! variable trains, a `backbone.*` variable trains only when some method's `trainable_backbone`
//! pattern matches it.

pub mod adapter;
pub mod adaptformer;
pub mod bitfit;
pub mod convpass;
pub mod dtl;
pub mod e3va;
pub mod fact;
pub mod full_finetune;
pub mod hydra;
pub mod last;
pub mod linear_probe;
pub mod ln_tune;
pub mod lora;
pub mod lorand;
pub mod lst;
pub mod mona;
pub mod partial;
pub mod prefix_tuning;
pub mod repadapter;
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
