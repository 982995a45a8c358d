//! Compiles the C++ shim (`csrc/`) against libtorch's headers, as torch-sys compiles its own C++.
//!
//! - `csrc/shim.cpp`, `csrc/scale_shift.cpp`, `csrc/qkv_attention.cpp`, `csrc/gelu.cpp`,
//!   `csrc/layer_norm.cpp`, `csrc/linear.cpp` -> a static library linked into every binary (c10d
//!   with Gloo, InferenceMode, autocast's dtype, CUDA memory statistics, fused AdamW, SSF's fused
//!   scale and shift, self-attention from a fused projection, GELU, LayerNorm, linear layers); it
//!   needs libtorch_cpu, c10 and libtorch's OpenMP runtime.
//! - `csrc/cuda_shim.cpp` -> `libvpetl_cuda_shim.so`, linked against libtorch_cuda and loaded at run
//!   time (ProcessGroupNCCL), so the binaries still start without CUDA. It is built when the libtorch
//!   has CUDA and the CUDA, CUDA-crt and NCCL headers of the `nvidia` pip packages are there (the
//!   torch wheel brings all but `nvidia-cuda-crt`; scripts/requirements.txt adds it), or
//!   `VPETL_CUDA_INCLUDE` (a `:`-separated list) names them; it is copied next to the binaries.
//! - `csrc/mkl_cpu.c` -> a static library answering MKL's CPU-vendor check; the binaries export its
//!   two functions through the link flags scripts/setup writes.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=VPETL_CUDA_INCLUDE");
    let libtorch = PathBuf::from(env::var("LIBTORCH").expect(
        "LIBTORCH is not set: run scripts/setup, which writes it into .cargo/config.toml",
    ));
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let includes = [
        libtorch.join("include"),
        libtorch.join("include/torch/csrc/api/include"),
        PathBuf::from("csrc/third_party/gloo"),
    ];
    let lib_dir = libtorch.join("lib");

    let mut build = cc::Build::new();
    build.cpp(true);
    // The CUDA shim compiles on another thread meanwhile (both translation units are slow).
    let cuda = {
        let (build, libtorch, includes, abi) = (build.clone(), libtorch.clone(), includes.clone(), abi.clone());
        std::thread::spawn(move || build_cuda_shim(&build, &libtorch, &includes, &abi))
    };
    build
        .file("csrc/shim.cpp")
        .file("csrc/scale_shift.cpp")
        .file("csrc/qkv_attention.cpp")
        .file("csrc/gelu.cpp")
        .file("csrc/layer_norm.cpp")
        .file("csrc/linear.cpp")
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);
    // at::parallel_for is inline OpenMP (ParallelOpenMP.h): without -fopenmp it runs serially in our
    // kernels. The runtime must be libtorch's own libgomp (one OpenMP runtime per process, the one
    // at::set_num_threads sets), so GCC only, and only when libtorch ships it.
    let gomp = openmp_runtime(&lib_dir);
    let gnu = build.get_compiler().is_like_gnu();
    match (&gomp, gnu) {
        (Some(_), true) => {
            build.flag("-fopenmp");
        }
        (None, _) => println!("cargo:warning=no libgomp in {}: our CPU kernels run single-threaded", lib_dir.display()),
        (Some(_), false) => println!("cargo:warning=not GCC: our CPU kernels run single-threaded (libtorch's OpenMP runtime is GNU's)"),
    }
    build.compile("vpetl_shim");
    // C, not C++: it only answers MKL's CPU check (see the file).
    cc::Build::new().file("csrc/mkl_cpu.c").warnings(true).compile("vpetl_mkl_cpu");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if let (Some(name), true) = (&gomp, gnu) {
        println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
    }

    cuda.join().expect("the CUDA shim build panicked");
}

/// The file name of libtorch's OpenMP runtime in its lib directory (`libgomp.so.1` in the pip wheel,
/// `libgomp-<hash>.so.1` in some builds), if it ships one.
fn openmp_runtime(lib_dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(lib_dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libgomp") && n.contains(".so"))
        .collect();
    names.sort();
    names.into_iter().next()
}

fn build_cuda_shim(build: &cc::Build, libtorch: &Path, includes: &[PathBuf], abi: &str) {
    let lib_dir = libtorch.join("lib");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = out_dir.join("libvpetl_cuda_shim.so");
    let _ = std::fs::remove_file(&target);
    if !lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:warning=libtorch has no CUDA: the NCCL backend is not built");
        return;
    }
    let cuda_includes: Vec<PathBuf> = match env::var("VPETL_CUDA_INCLUDE") {
        Ok(list) => env::split_paths(&list).collect(),
        Err(_) => {
            // The wheel's CUDA and NCCL headers: site-packages/nvidia/<pkg>/include.
            let nvidia = libtorch.parent().map(|p| p.join("nvidia")).unwrap_or_default();
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("include")).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            dirs.sort();
            dirs
        }
    };
    let has = |h: &str| cuda_includes.iter().any(|d| d.join(h).exists());
    if !has("cuda_runtime_api.h") || !has("crt/host_config.h") || !has("nccl.h") {
        println!("cargo:warning=no CUDA (with crt/) and NCCL headers found (pip install nvidia-cuda-crt, or set VPETL_CUDA_INCLUDE): the NCCL backend is not built");
        return;
    }
    let compiler = build.get_compiler();
    let mut cmd = Command::new(compiler.path());
    cmd.args(["-shared", "-fPIC", "-O2", "-std=c++17"])
        .arg(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .arg("-DGLOG_USE_GLOG_EXPORT")
        .arg("-w");
    for dir in includes.iter().chain(&cuda_includes) {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("csrc/cuda_shim.cpp")
        .arg("-o")
        .arg(&target)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-ltorch_cpu", "-lc10"]);
    let status = cmd.status().expect("cannot run the C++ compiler");
    if !status.success() {
        panic!("compiling csrc/cuda_shim.cpp failed: {cmd:?}");
    }
    // Next to the binaries (target/<profile>/), where vpetl_core::shim looks first; OUT_DIR is
    // target/<profile>/build/<crate>-<hash>/out.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let _ = std::fs::copy(&target, profile_dir.join("libvpetl_cuda_shim.so"));
    }
}
