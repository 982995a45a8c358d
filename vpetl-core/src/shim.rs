//! The C++ shim (`vpetl-core/csrc/`): what libtorch offers and tch does not bind.
//!
//! `shim.cpp` is linked in (c10d TCPStore and ProcessGroupGloo, `c10::InferenceMode`, autocast's
//! dtype, the CUDA caching allocator's statistics through c10's generic device allocator, the fused AdamW kernel;
//! `scale_shift.cpp`: SSF's node; `qkv_attention.cpp`: self-attention from a fused projection; `gelu.cpp`; `layer_norm.cpp`: LayerNorm
//! handing on the residual stream; `linear.cpp`: linear layers);
//! `cuda_shim.cpp` is a shared library loaded on demand once libtorch's CUDA backend is loaded
//! (ProcessGroupNCCL, whose header needs CUDA's). Safe wrappers live with their
//! users: `dist`, `inference`, `engine::amp`, `engine::memory`, `engine::optim`, `methods::ssf`,
//! `backbones::layers`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use tch::Tensor;

/// tch's raw tensor (`Tensor::as_ptr`: torch-sys's `C_tensor`, an `at::Tensor*` on the C++ side).
pub type RawTensor = *mut c_void;

extern "C" {
    /// `csrc/mkl_cpu.c`: 1 when MKL picks its kernels by CPU features rather than vendor.
    pub fn vpetl_mkl_cpu_by_features() -> c_int;
    pub fn vpetl_last_error() -> *const c_char;
    pub fn vpetl_clear_grads(params: *const RawTensor, n: c_int);
    pub fn vpetl_scale_shift(x: RawTensor, scale: RawTensor, shift: RawTensor) -> RawTensor;
    pub fn vpetl_qkv_attention_available() -> c_int;
    pub fn vpetl_qkv_attention(qkv: RawTensor, heads: i64) -> RawTensor;
    pub fn vpetl_gelu(x: RawTensor) -> RawTensor;
    pub fn vpetl_bias_gelu(h: RawTensor, b: RawTensor) -> RawTensor;
    pub fn vpetl_linear_applies(in_dim: i64, out_dim: i64) -> c_int;
    pub fn vpetl_linear(x: RawTensor, w: RawTensor, b: RawTensor) -> RawTensor;
    pub fn vpetl_layer_norm_with_skip(x: RawTensor, w: RawTensor, b: RawTensor, eps: f64, skip: *mut RawTensor, y: *mut RawTensor) -> c_int;
    pub fn vpetl_tcp_store_new(host: *const c_char, port: c_int, world_size: c_int, is_server: c_int, timeout_ms: i64) -> *mut c_void;
    pub fn vpetl_prefix_store_new(prefix: *const c_char, store: *mut c_void) -> *mut c_void;
    pub fn vpetl_store_free(store: *mut c_void);
    pub fn vpetl_gloo_new(store: *mut c_void, rank: c_int, size: c_int, timeout_ms: i64) -> *mut c_void;
    pub fn vpetl_backend_free(backend: *mut c_void);
    pub fn vpetl_work_free(work: *mut c_void);
    pub fn vpetl_work_wait(work: *mut c_void, timeout_ms: i64) -> c_int;
    pub fn vpetl_allreduce(backend: *mut c_void, ts: *const RawTensor, n: c_int, op: c_int) -> *mut c_void;
    pub fn vpetl_allgather(backend: *mut c_void, outputs: *const RawTensor, world: c_int, input: RawTensor) -> *mut c_void;
    pub fn vpetl_broadcast(backend: *mut c_void, ts: *const RawTensor, n: c_int, root: c_int) -> *mut c_void;
    pub fn vpetl_barrier(backend: *mut c_void) -> *mut c_void;
    pub fn vpetl_inference_mode_enter() -> *mut c_void;
    pub fn vpetl_inference_mode_exit(guard: *mut c_void);
    pub fn vpetl_inference_mode_is_enabled() -> c_int;
    pub fn vpetl_autocast_set_dtype(device_type: c_int, dtype: c_int) -> c_int;
    pub fn vpetl_autocast_get_dtype(device_type: c_int) -> c_int;
    pub fn vpetl_autocast_set_enabled(device_type: c_int, enabled: c_int) -> c_int;
    pub fn vpetl_autocast_is_enabled(device_type: c_int) -> c_int;
    pub fn vpetl_autocast_increment_nesting() -> c_int;
    pub fn vpetl_cuda_memory_stats(device: c_int, out: *mut i64) -> c_int;
    pub fn vpetl_cuda_reset_peak_memory(device: c_int) -> c_int;
    pub fn vpetl_autocast_decrement_nesting() -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn vpetl_fused_adamw(
        params: *const RawTensor,
        grads: *const RawTensor,
        exp_avgs: *const RawTensor,
        exp_avg_sqs: *const RawTensor,
        steps: *const RawTensor,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> c_int;
}

/// The shim's last error on this thread (the first part of a c10 message, without its backtrace).
pub fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated thread-local string, valid until the next call.
    unsafe { CStr::from_ptr(vpetl_last_error()) }.to_string_lossy().into_owned()
}

/// The tensor a shim function returned, owned from here on (freed by tch's drop); a null pointer
/// (the shim's failure) panics with `what` and the shim's message.
///
/// # Safety
/// `out` is null or a heap `at::Tensor*` that the shim handed over and nothing else frees.
pub unsafe fn owned_tensor(out: RawTensor, what: &str) -> Tensor {
    assert!(!out.is_null(), "{what}: {}", last_error());
    // SAFETY: non-null, and ours by the caller's contract.
    unsafe { Tensor::from_ptr(out.cast()) }
}

/// A tensor as the shim takes it. The pointer is valid while `t` lives.
pub fn raw(t: &Tensor) -> RawTensor {
    t.as_ptr() as RawTensor
}

pub fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL in shim arguments")
}

/// The functions of `libvpetl_cuda_shim.so`.
pub struct CudaShim {
    pub nccl_new: unsafe extern "C" fn(*mut c_void, c_int, c_int, i64) -> *mut c_void,
    last_error: unsafe extern "C" fn() -> *const c_char,
}

impl CudaShim {
    pub fn last_error(&self) -> String {
        // SAFETY: as for `last_error`.
        unsafe { CStr::from_ptr((self.last_error)()) }.to_string_lossy().into_owned()
    }
}

/// The CUDA shim, when libtorch's CUDA backend is loaded and the library was built; otherwise why not.
pub fn cuda() -> Result<&'static CudaShim, &'static str> {
    static SHIM: OnceLock<Result<CudaShim, String>> = OnceLock::new();
    SHIM.get_or_init(load_cuda_shim).as_ref().map_err(String::as_str)
}

const CUDA_SHIM: &str = "libvpetl_cuda_shim.so";

/// Where the CUDA shim may be: beside the executable (target/<profile>/), one level up (test
/// binaries live in target/<profile>/deps/), then where the build wrote it.
fn cuda_shim_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var("VPETL_CUDA_SHIM") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) {
        out.push(dir.join(CUDA_SHIM));
        if let Some(up) = dir.parent() {
            out.push(up.join(CUDA_SHIM));
        }
    }
    out.push(PathBuf::from(env!("OUT_DIR")).join(CUDA_SHIM));
    out
}

fn load_cuda_shim() -> Result<CudaShim, String> {
    if crate::runtime::init().library.is_none() {
        return Err("libtorch's CUDA backend is not loaded".into());
    }
    let mut errors = Vec::new();
    for path in cuda_shim_candidates() {
        if !path.exists() {
            continue;
        }
        let c = cstring(&path.to_string_lossy());
        // SAFETY: dlopen with a valid path; the handle is kept for the life of the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let err = unsafe { libc::dlerror() };
            let msg = if err.is_null() { "unknown".into() } else { unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned() };
            errors.push(format!("{}: {msg}", path.display()));
            continue;
        }
        let sym = |name: &str| -> Result<*mut c_void, String> {
            let c = cstring(name);
            // SAFETY: a valid handle and symbol name.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() {
                Err(format!("{}: no symbol {name}", path.display()))
            } else {
                Ok(p)
            }
        };
        // SAFETY: the symbols are the extern "C" functions of cuda_shim.cpp with these signatures.
        return unsafe {
            Ok(CudaShim {
                nccl_new: std::mem::transmute::<*mut c_void, _>(sym("vpetl_nccl_new")?),
                last_error: std::mem::transmute::<*mut c_void, _>(sym("vpetl_cuda_last_error")?),
            })
        };
    }
    if errors.is_empty() {
        return Err(format!("{CUDA_SHIM} was not built (no CUDA/NCCL headers at build time) or is not beside the binary"));
    }
    Err(errors.join("; "))
}
