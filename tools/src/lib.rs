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
