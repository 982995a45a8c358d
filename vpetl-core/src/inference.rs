//! `c10::InferenceMode` (torch.inference_mode): like no_grad, and also skips version counters and
//! view tracking, so pure inference is cheaper. Tensors made under it can never enter autograd:
//! use it only where outputs never feed training (evaluation, `tools/infer`, benchmarks).

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::shim;

/// An RAII guard: inference mode is on from [`InferenceMode::enter`] until the guard drops. Guards
/// nest and must drop on their thread in reverse order (hence not `Send`).
pub struct InferenceMode {
    guard: *mut c_void,
    _not_send: PhantomData<*mut ()>,
}

impl InferenceMode {
    pub fn enter() -> Self {
        // SAFETY: creates a heap guard owned by this value.
        let guard = unsafe { shim::vpetl_inference_mode_enter() };
        assert!(!guard.is_null(), "entering c10::InferenceMode failed: {}", shim::last_error());
        InferenceMode { guard, _not_send: PhantomData }
    }

    /// Whether inference mode is on on this thread.
    pub fn is_enabled() -> bool {
        // SAFETY: reads a thread-local flag.
        unsafe { shim::vpetl_inference_mode_is_enabled() != 0 }
    }
}

impl Drop for InferenceMode {
    fn drop(&mut self) {
        // SAFETY: the guard from `enter`, destroyed once on its thread.
        unsafe { shim::vpetl_inference_mode_exit(self.guard) }
    }
}

/// Runs `f` in inference mode.
pub fn inference_mode<T>(f: impl FnOnce() -> T) -> T {
    let _guard = InferenceMode::enter();
    f()
}
