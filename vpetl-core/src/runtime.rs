//! Process-wide runtime set-up: makes libtorch's CUDA backend load when the wheel has it, and
//! describes the environment (`tools/env`).
//!
//! The linker's as-needed mode drops `libtorch_cuda.so` from our binaries because nothing references
//! its symbols directly; without it libtorch silently runs on the CPU. Loading it explicitly
//! registers the CUDA backend, as importing `torch` does in Python.

use std::ffi::CString;
use std::sync::OnceLock;

/// What [`init`] found.
#[derive(Clone, Debug)]
pub struct CudaLoad {
    /// The library that was loaded, or `None` for a CPU-only libtorch.
    pub library: Option<String>,
    /// Why nothing was loaded (for `tools/env`).
    pub note: String,
}

/// Loads libtorch's CUDA backend if present. Idempotent; call before creating any tensor.
pub fn init() -> &'static CudaLoad {
    static LOADED: OnceLock<CudaLoad> = OnceLock::new();
    LOADED.get_or_init(load_cuda_backend)
}

fn load_cuda_backend() -> CudaLoad {
    let mut candidates = vec!["libtorch_cuda.so".to_string()];
    if let Some(dir) = option_env!("LIBTORCH") {
        candidates.push(format!("{dir}/lib/libtorch_cuda.so"));
    }
    let mut errors = Vec::new();
    for name in &candidates {
        let c = CString::new(name.as_str()).expect("library names have no NUL");
        // SAFETY: dlopen with a valid C string; the handle is intentionally never closed so the
        // backend stays registered for the life of the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return CudaLoad { library: Some(name.clone()), note: String::new() };
        }
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        if !err.is_null() {
            errors.push(unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned());
        }
    }
    CudaLoad { library: None, note: format!("no CUDA backend loaded ({})", errors.join("; ")) }
}

/// A description of the libtorch runtime, one `key: value` per line.
pub fn describe() -> String {
    let load = init();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
    line("vpetl", env!("CARGO_PKG_VERSION").to_string());
    line("libtorch", format!("{} (tch 0.24.0)", torch_version()));
    line("libtorch path", option_env!("LIBTORCH").unwrap_or("(from the system)").to_string());
    line(
        "CUDA backend",
        match &load.library {
            Some(lib) => format!("loaded ({lib})"),
            None => load.note.clone(),
        },
    );
    line("CUDA available", tch::Cuda::is_available().to_string());
    line("CUDA devices", tch::Cuda::device_count().to_string());
    line("cuDNN available", tch::Cuda::cudnn_is_available().to_string());
    line("MKL", tch::utils::has_mkl().to_string());
    line("intra-op threads", tch::get_num_threads().to_string());
    out
}

/// The libtorch version tch was built against (torch-sys refuses any other).
pub fn torch_version() -> &'static str {
    "2.11.0"
}

/// The best device: the first CUDA device when one is usable, else the CPU.
pub fn default_device() -> tch::Device {
    init();
    tch::Device::cuda_if_available()
}
