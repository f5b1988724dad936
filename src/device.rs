//! Choosing the compute device, and describing it for result files.

use candle_core::Device;

use crate::error::{Error, Result};
use crate::spec::DeviceSpec;

/// The device a spec asks for. `auto` is CUDA when compiled in and a GPU answers, else CPU.
pub fn select(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match cuda(0) {
                    Ok(d) => {
                        tracing::info!("device auto: using cuda:0");
                        return Ok(d);
                    }
                    Err(e) => tracing::info!("device auto: no usable GPU ({e}); using the CPU"),
                }
            } else {
                tracing::debug!("device auto: built without CUDA support; using the CPU");
            }
            Ok(Device::Cpu)
        }
        DeviceSpec::Cuda(n) => cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    // cudarc panics when libcuda cannot be loaded: turn that into an error.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| Device::new_cuda(n));
    std::panic::set_hook(prev);
    match r {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(Error::Device(format!("cuda:{n} is not usable: {e}"))),
        Err(_) => Err(Error::Device(format!(
            "cuda:{n} is not usable: the CUDA driver library (libcuda.so) could not be loaded; is an NVIDIA driver installed?"
        ))),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "cuda:{n} was asked for, but this runner was built without CUDA support; build it with scripts/build-cuda.sh (cargo build --release --features cuda) or set run.device = \"cpu\""
    )))
}

/// "cpu (AMD EPYC ...)" or the GPU's name.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({})", cpu_model()),
        Device::Cuda(_) => "cuda".to_string(),
        _ => "other".to_string(),
    }
}

pub fn kind(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        _ => "other",
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
