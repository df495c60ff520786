//! 1. Link fixes for libtorch (README, "Building"):
//!    a. an rpath to libtorch's lib dir, so the binary runs with no LD_LIBRARY_PATH;
//!    b. with a CUDA libtorch, keep libtorch.so linked despite rustc's --as-needed, or CUDA is
//!    silently unavailable at run time. A CPU-only libtorch has no libtorch_cuda.so, and
//!    forcing -ltorch there would pull in the CUDA libraries it lacks.
//! 2. The MPI_IN_PLACE shim, compiled with the MPI library rsmpi links.
//! 3. The synchronised BatchNorm (an autograd function tch cannot define) and the gradient
//!    readiness hooks, compiled against libtorch's headers as torch-sys compiles its own C++.
use std::path::{Path, PathBuf};

fn main() {
    link_libtorch();
    compile_mpi_shim();
    compile_torch_shims();
}

fn link_libtorch() {
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

fn compile_mpi_shim() {
    const SHIM: &str = "src/dist/shim/mpi_in_place.c";
    println!("cargo:rerun-if-changed={SHIM}");
    let mpi = build_probe_mpi::probe().unwrap_or_else(|errors| panic!("no MPI library found: {errors:?}"));
    let mut build = cc::Build::new();
    build.file(SHIM);
    match mpi.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            build.includes(&mpi.include_paths);
        }
    }
    build.compile("wsss_mpi_shim");
}

/// The libtorch pieces tch lacks: synchronised BatchNorm's autograd function and the gradient
/// readiness hooks of the overlapped all-reduce.
fn compile_torch_shims() {
    const SHIMS: [&str; 2] = ["src/dist/shim/sync_batch_norm.cpp", "src/dist/shim/grad_ready.cpp"];
    for shim in SHIMS {
        println!("cargo:rerun-if-changed={shim}");
    }
    for var in ["LIBTORCH_INCLUDE", "LIBTORCH_CXX11_ABI"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // torch-sys's rule: headers under $LIBTORCH_INCLUDE, else next to the lib dir it links.
    let root = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names the libtorch it links (DEP_TCH_LIBTORCH_LIB)");
            Path::new(&lib).parent().expect("libtorch's lib dir has a parent").to_path_buf()
        }
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(SHIMS)
        .compile("wsss_torch_shims");
}
