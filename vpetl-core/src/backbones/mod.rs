//! Backbones shared by every task. A backbone is written once, knows nothing of PETL methods (they
//! attach at its [`sites`]), and names its parameters after the published checkpoints' keys.

pub mod layers;
pub mod sites;
pub mod swin;
pub mod vit;

use tch::{nn, Tensor};

use crate::checkpoint::load::Layout;
use crate::registry::{Kind, KindOf};
use sites::{Hooks, SiteMap};

/// A backbone's typed config, as registered.
pub trait BackboneSpec: std::fmt::Debug {
    /// Builds the network with its variables under `vs` (randomly initialised; checkpoints load later).
    fn build(&self, vs: nn::Path) -> anyhow::Result<Box<dyn Backbone>>;
    /// Width of the pooled feature a head receives.
    fn feature_dim(&self) -> i64;
}

impl KindOf for dyn BackboneSpec {
    const KIND: Kind = Kind::Backbone;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOpts {
    /// Training mode: dropout and drop path are active.
    pub train: bool,
    /// Keep every block's output in [`BackboneOutput::blocks`].
    pub collect_blocks: bool,
}

pub struct BackboneOutput {
    /// The pooled feature for classification heads, `(B, C)`.
    pub pooled: Tensor,
    /// The final normalised tokens: `(B, N, C)` for ViT, `(B, H, W, C)` for Swin.
    pub tokens: Tensor,
    /// Each block's output in order, when requested (`(B, N, C)` / `(B, H, W, C)`).
    pub blocks: Vec<Tensor>,
    /// Multi-scale maps `(B, C, H, W)` for dense heads (Swin: one per stage; ViT: none).
    pub stages: Vec<Tensor>,
}

pub trait Backbone: Send {
    fn sites(&self) -> &SiteMap;
    /// Checks an input shape `(B, C, H, W)` before the forward pass, so that a wrong image size is a
    /// clear error rather than a shape failure deep inside.
    fn check_input(&self, shape: &[i64]) -> anyhow::Result<()>;
    fn forward(&self, x: &Tensor, hooks: &Hooks, opts: ForwardOpts) -> BackboneOutput;
    fn feature_dim(&self) -> i64;
    /// Adapts a checkpoint tensor whose shape differs from the variable's where the architecture
    /// allows it (resampled position embeddings, resized relative-position tables). `None` when
    /// this name cannot be adapted.
    fn adapt_tensor(&self, _name: &str, _value: &Tensor, _target: &[i64], _resample: Resample) -> Option<Tensor> {
        None
    }
    /// Converts checkpoint keys from `layout` to this backbone's own names; keys of buffers the
    /// backbone recomputes go to `skipped`.
    fn convert_keys(
        &self,
        _layout: Layout,
        tensors: Vec<(String, Tensor)>,
        _skipped: &mut Vec<String>,
    ) -> anyhow::Result<Vec<(String, Tensor)>> {
        Ok(tensors)
    }
}

/// How grids of embeddings are resampled when a checkpoint's resolution differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// timm's `resample_abs_pos_embed` default (bicubic, antialiased).
    BicubicAntialias,
    /// timm's `.npz` loader (bilinear, no antialiasing).
    Bilinear,
}
