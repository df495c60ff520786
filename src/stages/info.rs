//! `wsss-dist info`: versions and what this machine offers, to check an installation
//! (e.g. that a GPU build really sees CUDA and finds libnccl).

use serde_json::json;

use super::Summary;
use crate::dist::world::mpi_library_version;

pub fn run() -> anyhow::Result<Summary> {
    let cuda = tch::Cuda::is_available();
    // SAFETY: these only try to dlopen the libraries and report whether that worked.
    let (cuda_driver, nccl) = unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nccl::sys::is_culib_present()) };
    let details = json!({
        "wsss_dist": env!("CARGO_PKG_VERSION"),
        "libtorch_cuda_backend": crate::dist::device::load_cuda_backend().map_or_else(|e| format!("not loaded: {e}"), |l| format!("{l} loaded")),
        "libtorch_cuda_available": cuda,
        "cuda_devices": if cuda { tch::Cuda::device_count() } else { 0 },
        "cuda_driver_library": cuda_driver,
        "nccl_library": nccl,
        "mpi_library": mpi_library_version(),
        "torch_threads": tch::get_num_threads(),
    });
    println!("{}", serde_json::to_string_pretty(&details)?);
    Ok(Summary::ok(details))
}
