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

/// `run.device`: where a rank computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The local rank's GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The local rank's GPU (one process per GPU); an error without one.
    Cuda,
    /// This GPU.
    CudaIndex(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(spec: &str) -> Result<DeviceSpec, String> {
        let index = spec.strip_prefix("cuda:").map(str::parse::<usize>);
        match (spec, index) {
            ("auto", _) => Ok(DeviceSpec::Auto),
            ("cpu", _) => Ok(DeviceSpec::Cpu),
            ("cuda", _) => Ok(DeviceSpec::Cuda),
            (_, Some(Ok(n))) => Ok(DeviceSpec::CudaIndex(n)),
            _ => Err(format!("{spec:?} is not \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(spec: String) -> Result<DeviceSpec, String> {
        spec.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        match spec {
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda => "cuda".into(),
            DeviceSpec::CudaIndex(n) => format!("cuda:{n}"),
        }
    }
}

/// The device of `spec` for the rank `local_rank` of its node: "auto" and "cuda" give the local
/// rank's GPU (one process per GPU).
pub fn select_device(spec: DeviceSpec, local_rank: usize) -> Result<Device, String> {
    let gpus = if spec == DeviceSpec::Cpu { 0 } else { Cuda::device_count() as usize };
    let local_gpu = Device::Cuda(local_rank % gpus.max(1));
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if gpus > 0 => Ok(local_gpu),
        DeviceSpec::Auto => Ok(Device::Cpu),
        DeviceSpec::Cuda if gpus > 0 => Ok(local_gpu),
        DeviceSpec::CudaIndex(n) if n < gpus => Ok(Device::Cuda(n)),
        DeviceSpec::Cuda | DeviceSpec::CudaIndex(_) => Err(format!(
            "config key `run.device`: {:?} asks for a GPU, but libtorch sees {gpus} CUDA device(s){}",
            String::from(spec),
            if gpus == 0 { " (a CPU-only libtorch, or no GPU on this machine)" } else { "" }
        )),
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
        assert_eq!(select_device(DeviceSpec::Cpu, 0), Ok(Device::Cpu));
    }

    #[test]
    fn cpu_and_auto_resolve_and_bad_values_are_named() {
        assert_eq!(select_device(DeviceSpec::Cpu, 3), Ok(Device::Cpu));
        if !Cuda::is_available() {
            assert_eq!(select_device(DeviceSpec::Auto, 1), Ok(Device::Cpu));
            let err = select_device(DeviceSpec::CudaIndex(0), 0).unwrap_err();
            assert!(err.contains("run.device") && err.contains("0 CUDA device"), "{err}");
        }
        let err = "gpu".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("\"gpu\""), "{err}");
        for spec in ["auto", "cpu", "cuda", "cuda:3"] {
            assert_eq!(String::from(spec.parse::<DeviceSpec>().unwrap()), spec);
        }
    }
}
