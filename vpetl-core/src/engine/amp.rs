//! Mixed precision as torch.amp has it: an autocast region whose dtype we choose (tch can only switch
//! CUDA autocast on, in fp16; the shim sets libtorch's autocast dtype), a dynamic loss scaler for
//! fp16 (torch.amp.GradScaler's defaults), and optionally the frozen tensors stored in bf16 while
//! trainable ones (methods, head) stay fp32 (autocast casts per op, so mixed storage works inside it).
//!
//! Configured on the optimiser wrapper, as mmengine's AmpOptimWrapper:
//! `optim_wrapper: {type: AmpOptimWrapper, dtype: bfloat16, frozen_dtype: bfloat16}`.

use anyhow::bail;
use tch::{Device, Kind, Tensor};

use crate::shim;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float32,
    BFloat16,
    Float16,
}

impl Precision {
    pub fn parse(key: &str, s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "float32" | "fp32" => Precision::Float32,
            "bfloat16" | "bf16" => Precision::BFloat16,
            "float16" | "fp16" | "half" => Precision::Float16,
            other => bail!("{key}: unknown dtype `{other}` (float32, bfloat16 or float16)"),
        })
    }

    pub fn kind(self) -> Kind {
        match self {
            Precision::Float32 => Kind::Float,
            Precision::BFloat16 => Kind::BFloat16,
            Precision::Float16 => Kind::Half,
        }
    }
}

fn device_type(device: Device) -> i32 {
    // c10::DeviceType codes.
    if device.is_cuda() {
        1
    } else {
        0
    }
}

/// An autocast region on `device`'s type in `dtype` (torch.autocast(device_type, dtype)); the
/// previous state comes back when the guard drops. Not `Send`: autocast state is per thread.
pub struct Autocast {
    device_type: i32,
    prev_enabled: bool,
    prev_dtype: i32,
    _not_send: std::marker::PhantomData<*mut ()>,
}

impl Autocast {
    pub fn enter(device: Device, dtype: Kind) -> anyhow::Result<Self> {
        let dt = device_type(device);
        // SAFETY: the shim's autocast calls only touch thread-local state.
        unsafe {
            let prev_enabled = shim::vpetl_autocast_is_enabled(dt) != 0;
            let prev_dtype = shim::vpetl_autocast_get_dtype(dt);
            if shim::vpetl_autocast_set_dtype(dt, kind_code(dtype)) != 0 || shim::vpetl_autocast_set_enabled(dt, 1) != 0 {
                bail!("cannot enable autocast in {dtype:?} on {device:?}: {}", shim::last_error());
            }
            shim::vpetl_autocast_increment_nesting();
            Ok(Autocast { device_type: dt, prev_enabled, prev_dtype, _not_send: std::marker::PhantomData })
        }
    }

    /// Whether autocast is on for `device`'s type on this thread.
    pub fn is_enabled(device: Device) -> bool {
        unsafe { shim::vpetl_autocast_is_enabled(device_type(device)) != 0 }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the state read in `enter`, on the same thread.
        unsafe {
            shim::vpetl_autocast_decrement_nesting();
            shim::vpetl_autocast_set_enabled(self.device_type, self.prev_enabled as i32);
            shim::vpetl_autocast_set_dtype(self.device_type, self.prev_dtype);
        }
    }
}

/// c10::ScalarType codes.
fn kind_code(kind: Kind) -> i32 {
    match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::BFloat16 => 15,
        other => panic!("autocast dtype {other:?} is not a floating type"),
    }
}

/// Dynamic loss scaling for fp16 (torch.amp.GradScaler: initial scale 2^16, ×2 after 2000 steps
/// without overflow, ×0.5 and the step skipped on an overflow).
#[derive(Clone, Debug)]
pub struct LossScaler {
    pub scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, good_steps: 0 }
    }
}

impl LossScaler {
    pub fn with_scale(scale: f64) -> Self {
        LossScaler { scale, ..Default::default() }
    }

    /// Unscales the gradients of `params` in place; `false` when one is not finite, in which case
    /// the caller skips the step (every rank alike: the gradients were averaged before).
    pub fn unscale(&self, params: &[Tensor]) -> bool {
        let _guard = tch::no_grad_guard();
        let inv = 1.0 / self.scale;
        let mut finite: Option<Tensor> = None;
        for p in params {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(inv);
            let ok = g.isfinite().all();
            finite = Some(match finite {
                None => ok,
                Some(f) => f.logical_and(&ok),
            });
        }
        finite.is_none_or(|f| f.int64_value(&[]) != 0)
    }

    /// Adjusts the scale after a step (`finite`: whether the gradients were).
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
        }
    }
}

/// The train loop's mixed precision, from `optim_wrapper` (`type: AmpOptimWrapper`, `dtype`,
/// `loss_scale`, `frozen_dtype`). With the plain `OptimWrapper` every call is a pass-through.
pub struct Amp {
    device: Device,
    autocast: Option<Kind>,
    scaler: Option<LossScaler>,
}

impl Amp {
    pub fn from_config(w: &crate::config::run::OptimWrapper, vs: &tch::nn::VarStore, device: Device) -> anyhow::Result<Self> {
        let amp = match w.kind.as_deref() {
            None | Some("OptimWrapper") => false,
            Some("AmpOptimWrapper") => true,
            Some(other) => bail!("optim_wrapper.type: unknown wrapper `{other}` (OptimWrapper or AmpOptimWrapper)"),
        };
        if !amp && (w.dtype.is_some() || w.loss_scale.is_some()) {
            bail!("optim_wrapper.dtype and optim_wrapper.loss_scale need `optim_wrapper.type: AmpOptimWrapper`");
        }
        let precision = match (&w.dtype, amp) {
            (Some(d), _) => Precision::parse("optim_wrapper.dtype", d)?,
            (None, true) => Precision::BFloat16,
            (None, false) => Precision::Float32,
        };
        if precision == Precision::Float16 && !device.is_cuda() {
            bail!("optim_wrapper.dtype: float16 autocast needs CUDA (this run is on {device:?}); use bfloat16");
        }
        if let Some(frozen) = &w.frozen_dtype {
            let kind = Precision::parse("optim_wrapper.frozen_dtype", frozen)?.kind();
            if kind != Kind::Float && precision == Precision::Float32 {
                bail!("optim_wrapper.frozen_dtype: {frozen} storage needs autocast (`type: AmpOptimWrapper`)");
            }
            let n = cast_frozen(vs, kind);
            tracing::info!("{n} frozen tensors stored in {frozen}");
        }
        let scaler = (precision == Precision::Float16).then(|| w.loss_scale.map_or_else(LossScaler::default, LossScaler::with_scale));
        let fixed = w.loss_scale.is_some();
        if precision != Precision::Float32 {
            tracing::info!("mixed precision: {precision:?} autocast on {device:?}{}", if scaler.is_some() { if fixed { ", fixed loss scale" } else { ", dynamic loss scale" } } else { "" });
        }
        Ok(Amp {
            device,
            autocast: (precision != Precision::Float32).then(|| precision.kind()),
            scaler: scaler.map(|s| if fixed { LossScaler { growth_interval: u64::MAX, backoff_factor: 1.0, ..s } } else { s }),
        })
    }

    /// Runs `f` (forward and loss) under autocast when configured.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let _guard = self.autocast.map(|k| Autocast::enter(self.device, k)).transpose()?;
        Ok(f())
    }

    /// Backward of `loss / accum`, scaled by the loss scale with fp16.
    pub fn backward(&self, loss: &Tensor, accum: u64) {
        let loss = loss / accum as f64;
        match &self.scaler {
            Some(s) => (loss * s.scale).backward(),
            None => loss.backward(),
        }
    }

    /// Before the optimiser step: unscales the gradients (fp16) and says whether to step; a
    /// non-finite gradient skips the step and lowers the scale.
    pub fn unscale(&mut self, params: &[Tensor]) -> bool {
        let Some(s) = self.scaler.as_mut() else { return true };
        let finite = s.unscale(params);
        if !finite {
            tracing::warn!("fp16: non-finite gradients at loss scale {}; step skipped, scale halved", s.scale);
        }
        s.update(finite);
        finite
    }
}

/// Stores every frozen floating tensor of `vs` in `kind` (trainable ones and buffers, such as
/// running statistics, are left as they are).
pub fn cast_frozen(vs: &tch::nn::VarStore, kind: Kind) -> usize {
    let _guard = tch::no_grad_guard();
    let buffers = crate::methods::trainability::buffers(vs);
    let mut n = 0;
    for (name, mut v) in vs.variables() {
        if !v.requires_grad() && !buffers.contains_key(&name) && v.is_floating_point() && v.kind() != kind {
            let cast = v.to_kind(kind);
            v.set_data(&cast);
            n += 1;
        }
    }
    n
}
