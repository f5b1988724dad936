//! Choosing the compute device, sizing extraction batches for it, and describing it for result
//! files.

use candle_core::Device;

use crate::error::{Error, Result};

/// Which device a spec asks for (`run.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

/// Parse `run.device`: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    match s {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(format!(
                "unknown device {s:?}; expected auto, cpu, cuda or cuda:N"
            )),
        },
    }
}

/// The device a spec asks for. `auto` is CUDA when compiled in and a GPU answers, else CPU.
/// On the CPU, denormals are flushed to zero (see `threads::flush_denormals`).
///
/// `tf32` lets CUDA run f32 matrix products (and the convolutions built on them) on TF32 tensor
/// cores: about 10 significant bits per product instead of 24, several times the throughput.
pub fn select(spec: DeviceSpec, tf32: bool) -> Result<Device> {
    tf32_env(tf32);
    let d = select_inner(spec)?;
    if d.is_cpu() {
        crate::threads::flush_denormals();
    } else {
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
        tracing::info!(
            "f32 matrix work on {}: {}",
            describe(&d),
            if tf32 {
                "TF32 tensor cores"
            } else {
                "full f32"
            }
        );
    }
    Ok(d)
}

/// cuDNN runs f32 convolutions on TF32 tensor cores unless told otherwise; the only switch that
/// reaches it through candle is NVIDIA's environment variable, read when the library starts.
fn tf32_env(tf32: bool) {
    if cfg!(feature = "cudnn") && !tf32 && std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    }
}

fn select_inner(spec: DeviceSpec) -> Result<Device> {
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

/// `run.extract_batch = "auto"`, given the bytes of the largest activation of one image.
/// CPU: 64 (what `bench/cpu.sh` measures; a larger batch only costs memory there). GPU: as
/// many images as fit in a quarter of its memory at three such activations each (a layer's
/// input, its output and the library's workspace), a multiple of 16 in 16..=256; 256 is the
/// batch the H200 timings of `scripts/gpu-check.sh` were measured at.
pub fn auto_extract_batch(device: &Device, largest_activation_bytes: usize) -> usize {
    let n = match gpu_memory(device) {
        None => 64,
        Some(total) => batch_for_memory(total, 3 * largest_activation_bytes as u64),
    };
    tracing::info!(
        "run.extract_batch = \"auto\": {n} images per batch on {}",
        kind(device)
    );
    n
}

/// The GPU rule of `auto_extract_batch`: total memory / 4 / per-image bytes, a multiple of 16
/// in 16..=256.
pub fn batch_for_memory(total_bytes: u64, per_image_bytes: u64) -> usize {
    let b = (total_bytes / 4 / per_image_bytes.max(1)).min(256) as usize;
    (b / 16 * 16).max(16)
}

#[cfg(feature = "cuda")]
fn gpu_memory(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(d) => d.cuda_stream().context().total_mem().ok().map(|b| b as u64),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_: &Device) -> Option<u64> {
    None
}

/// One line per usable device: what `runner devices` prints.
pub fn list() -> Vec<String> {
    let mut out = vec![format!(
        "cpu      {} ({} threads)",
        cpu_model(),
        candle_core::utils::get_num_threads()
    )];
    if !cfg!(feature = "cuda") {
        out.push(
            "cuda     not compiled in (build with scripts/build-cuda.sh for GPU support)".into(),
        );
        return out;
    }
    match cuda_count() {
        Err(e) => out.push(format!("cuda     none usable: {e}")),
        Ok(0) => out.push("cuda     the driver answers but sees no GPU".into()),
        Ok(n) => {
            for i in 0..n {
                match cuda(i) {
                    Ok(d) => out.push(format!("cuda:{i}   {}", describe(&d))),
                    Err(e) => out.push(format!("cuda:{i}   not usable: {e}")),
                }
            }
        }
    }
    out
}

/// Catch a panic of `f` (cudarc panics when libcuda cannot be loaded) without printing it.
#[cfg(feature = "cuda")]
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(prev);
    r
}

#[cfg(feature = "cuda")]
const NO_DRIVER: &str =
    "the CUDA driver library (libcuda.so.1) could not be loaded; is an NVIDIA driver installed?";

#[cfg(feature = "cuda")]
fn cuda_count() -> Result<usize> {
    use candle_core::cuda::cudarc::driver::CudaContext;
    match quietly(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) => Err(Error::Device(format!("the CUDA driver reports: {e}"))),
        Err(_) => Err(Error::Device(NO_DRIVER.into())),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_count() -> Result<usize> {
    Ok(0)
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    // cudarc panics when libcuda cannot be loaded: turn that into an error.
    match quietly(|| Device::new_cuda(n)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(Error::Device(format!("cuda:{n} is not usable: {e}"))),
        Err(_) => Err(Error::Device(format!(
            "cuda:{n} is not usable: {NO_DRIVER}"
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
        Device::Cuda(_) => gpu_name(device),
        _ => "other".to_string(),
    }
}

#[cfg(feature = "cuda")]
fn gpu_name(device: &Device) -> String {
    match device {
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx.name().unwrap_or_else(|_| "cuda".into());
            match ctx.total_mem() {
                Ok(b) => format!("{name} ({:.0} GiB)", b as f64 / (1u64 << 30) as f64),
                Err(_) => name,
            }
        }
        _ => "cuda".into(),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_name(_: &Device) -> String {
    "cuda".into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batch_fits_the_memory() {
        let gib = 1u64 << 30;
        // the CPU keeps the measured 64
        assert_eq!(auto_extract_batch(&Device::Cpu, 1 << 20), 64);
        // VGG16 f32 (64x224x224 floats, 12.8 MB; 3 copies per image)
        let vgg = 3 * 64 * 224 * 224 * 4;
        assert_eq!(batch_for_memory(141 * gib, vgg), 256); // H200: the cap
        assert_eq!(batch_for_memory(8 * gib, vgg), 48);
        assert_eq!(batch_for_memory(4 * gib, vgg), 16); // GTX 970
        assert_eq!(batch_for_memory(gib, vgg), 16); // never below 16
                                                    // AlexNet f32 (96x57x57 floats): 256 even on 4 GiB
        assert_eq!(batch_for_memory(4 * gib, 3 * 96 * 57 * 57 * 4), 256);
    }
}
