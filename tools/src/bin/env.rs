//! `tools/env`: the libtorch runtime as this build sees it (version, CUDA, devices, cuDNN).
fn main() {
    vpetl_tools::init();
    print!("{}", vpetl_core::runtime::describe());
}
