//! Which device a rank computes on: `device = "auto" | "cpu" | "cuda" | "cuda:N"`.

use tch::{Cuda, Device};

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
