//! Link fixes for libtorch (see ../shared/SETUP-NOTES.md):
//! 1. an rpath to libtorch's lib dir, so the binary runs with no LD_LIBRARY_PATH;
//! 2. with a CUDA libtorch, keep libtorch.so linked despite rustc's --as-needed, or CUDA is
//!    silently unavailable at run time. A CPU-only libtorch has no libtorch_cuda.so, and
//!    forcing -ltorch there would pull in the CUDA libraries it lacks.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // Applies to every linked target: the binary, tests, benches and examples.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
