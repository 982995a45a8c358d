//! Shared start-up for the command-line tools.

/// Links every task crate (their registry entries would otherwise be dropped by the linker), loads
/// libtorch's CUDA backend when present and checks the registry for duplicates.
pub fn init() {
    vpetl_cls::link();
    vpetl_video::link();
    vpetl_dense::link();
    vpetl_core::runtime::init();
    vpetl_core::registry::init();
}

/// Prints an error chain the way users need it (the first line is the actionable one) and exits 2.
pub fn exit_with(err: anyhow::Error) -> ! {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::exit(2)
}

/// Writes named tensors (made contiguous) to a safetensors file.
pub fn write_tensors(path: &std::path::Path, named: Vec<(String, tch::Tensor)>) -> anyhow::Result<usize> {
    use anyhow::Context;
    let named: Vec<(String, tch::Tensor)> = named.into_iter().map(|(k, t)| (k, t.contiguous())).collect();
    tch::Tensor::write_safetensors(&named, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(named.len())
}

/// `main` of the tools that log to the console only: start-up, console logging at info, then the
/// tool; an error is printed as [`exit_with`] does. (`train` sets up its own file log instead.)
pub fn run_with_console_log<A: clap::Parser>(run: impl FnOnce(A) -> anyhow::Result<()>) {
    init();
    vpetl_core::logging::init_console("info");
    if let Err(e) = run(A::parse()) {
        exit_with(e);
    }
}

/// Every `results.json` in the given folders and their subfolders (a file path is read as is).
pub fn collect_results(dirs: &[std::path::PathBuf]) -> anyhow::Result<Vec<vpetl_core::engine::results::Results>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<vpetl_core::engine::results::Results>) -> anyhow::Result<()> {
        use anyhow::Context;
        if dir.is_file() {
            out.push(vpetl_core::engine::results::Results::read(dir)?);
            return Ok(());
        }
        let p = dir.join("results.json");
        if p.is_file() {
            out.push(vpetl_core::engine::results::Results::read(&p)?);
        }
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                walk(&e.path(), out)?;
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    for d in dirs {
        walk(d, &mut all)?;
    }
    anyhow::ensure!(!all.is_empty(), "no results.json under {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(all)
}
