//! Which device a rank computes on: `device = "auto" | "cpu" | "cuda" | "cuda:N"`, and the
//! loading of libtorch's CUDA backend.

use tch::{Cuda, Device};

/// libtorch keeps its CUDA backend in a library of its own, which registers itself when it is
/// loaded: a binary linked against a CPU libtorch (as `make build` makes here) sees CUDA once
/// this library is loaded too. Where it exists — the binary run with the `torch/lib` of a CUDA
/// PyTorch on `LD_LIBRARY_PATH`, or built against a CUDA libtorch — this loads it, before the
/// first tch call; elsewhere nothing happens and the binary computes on the CPU. Returns the
/// library's name, or why it was not loaded (`wsss-dist info` reports it).
pub fn load_cuda_backend() -> Result<&'static str, String> {
    const LIBRARY: &str = "libtorch_cuda.so";
    let name = std::ffi::CString::new(LIBRARY).expect("no NUL in the name");
    // SAFETY: dlopen of a library by name; RTLD_GLOBAL so that its operators register with
    // the libtorch already loaded. Its static initialisers are libtorch's own.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated string owned by libc, or null.
        let reason = unsafe { libc::dlerror() };
        let reason = if reason.is_null() { "not found".to_string() } else { unsafe { std::ffi::CStr::from_ptr(reason) }.to_string_lossy().into_owned() };
        return Err(reason);
    }
    Ok(LIBRARY)
}

/// Resolves a device setting; "auto" and "cuda" give the local rank's GPU (one process per GPU).
pub fn select_device(spec: &str, local_rank: usize) -> Result<Device, String> {
    let gpus = if spec == "cpu" { 0 } else { Cuda::device_count() as usize };
    let local_gpu = || Device::Cuda(local_rank % gpus.max(1));
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" if gpus > 0 => Ok(local_gpu()),
        "auto" => Ok(Device::Cpu),
        "cuda" if gpus > 0 => Ok(local_gpu()),
        _ => {
            let index = spec.strip_prefix("cuda").map(|rest| rest.strip_prefix(':').unwrap_or(rest));
            match index.map(str::parse::<usize>) {
                Some(Ok(n)) if n < gpus => Ok(Device::Cuda(n)),
                Some(_) | None if spec.starts_with("cuda") => Err(format!(
                    "config key `run.device`: {spec:?} asks for a GPU, but libtorch sees {gpus} CUDA device(s){}",
                    if gpus == 0 { " (a CPU-only libtorch, or no GPU on this machine)" } else { "" }
                )),
                _ => Err(format!("config key `run.device`: {spec:?} is not \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a CUDA libtorch the backend is not there: an error saying why, and
    /// the CPU still works.
    #[test]
    fn a_missing_cuda_backend_is_reported_not_fatal() {
        match load_cuda_backend() {
            Ok(name) => assert_eq!(name, "libtorch_cuda.so"),
            Err(reason) => assert!(reason.contains("libtorch_cuda.so"), "{reason}"),
        }
        assert_eq!(select_device("cpu", 0), Ok(Device::Cpu));
    }

    #[test]
    fn cpu_and_auto_resolve_and_bad_values_are_named() {
        assert_eq!(select_device("cpu", 3), Ok(Device::Cpu));
        if !Cuda::is_available() {
            assert_eq!(select_device("auto", 1), Ok(Device::Cpu));
            let err = select_device("cuda:0", 0).unwrap_err();
            assert!(err.contains("run.device") && err.contains("0 CUDA device"), "{err}");
        }
        let err = select_device("gpu", 0).unwrap_err();
        assert!(err.contains("run.device") && err.contains("\"gpu\""), "{err}");
    }
}
