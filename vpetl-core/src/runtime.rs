//! Process-wide runtime set-up: makes libtorch's CUDA backend load when the wheel has it, tunes
//! glibc's allocator for tensor-sized blocks, and describes the environment (`tools/env`), including
//! whether MKL picks its kernels by CPU features (`csrc/mkl_cpu.c`).
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

/// Tunes the allocator and loads libtorch's CUDA backend if present. Idempotent; call before
/// creating any tensor.
pub fn init() -> &'static CudaLoad {
    static LOADED: OnceLock<CudaLoad> = OnceLock::new();
    allocator();
    LOADED.get_or_init(load_cuda_backend)
}

/// What [`tune_allocator`] did (it runs on the first call).
pub fn allocator() -> &'static str {
    static TUNED: OnceLock<&'static str> = OnceLock::new();
    TUNED.get_or_init(tune_allocator)
}

/// Keeps freed memory in glibc's heap for reuse instead of returning it to the kernel.
///
/// Why: CPU tensors are allocated with malloc. By default glibc serves blocks above its mmap
/// threshold (at most 32 MB) with fresh mappings, and trims freed heap above 128 kB, so each
/// training step or batch of images (a batch of 64 RGB images at 224 px is 38.5 MB) pays for page
/// faults on new zeroed pages again: 30 % of the input pipeline's time here. With mmap off and
/// trimming raised to 1 GB, blocks are reused; the cost is that the process keeps its peak heap.
/// Left alone when the user set glibc's own `MALLOC_*_`/`GLIBC_TUNABLES` variables or
/// `VPETL_MALLOC=system`.
fn tune_allocator() -> &'static str {
    let user_set = std::env::vars_os().any(|(k, _)| {
        let k = k.to_string_lossy();
        k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
    });
    if user_set || std::env::var("VPETL_MALLOC").is_ok_and(|v| v == "system") {
        return "glibc defaults (left as the environment sets them)";
    }
    // SAFETY: mallopt only changes glibc's allocation parameters.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1 };
    if ok {
        "glibc tuned: no mmap for large blocks, trim above 1 GiB (VPETL_MALLOC=system: defaults)"
    } else {
        "glibc defaults (mallopt refused the tuning)"
    }
}

/// How MKL chooses its kernels in this process (`csrc/mkl_cpu.c`).
pub fn mkl_kernels() -> &'static str {
    // SAFETY: a pure query (dlsym and CPUID).
    if unsafe { crate::shim::vpetl_mkl_cpu_by_features() } == 1 {
        "by CPU features (VPETL_MKL_CPU=vendor: by vendor, MKL's default)"
    } else if std::env::var("VPETL_MKL_CPU").is_ok_and(|v| v == "vendor") {
        "by vendor (VPETL_MKL_CPU=vendor): AVX2 at most on non-Intel CPUs"
    } else {
        "by vendor: this binary does not export mkl_serv_intel_cpu* (link flags from scripts/setup) or the CPU lacks AVX2"
    }
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
    line("MKL kernels", mkl_kernels().to_string());
    line("intra-op threads", tch::get_num_threads().to_string());
    line("allocator", allocator().to_string());
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
