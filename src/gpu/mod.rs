//! Every CUDA piece of runner: the kernels (`kernels`, `.cu` sources), their compilation by
//! nvrtc (cached per process) and one way to load and launch them (`function`, `launch`),
//! page-locked upload and download buffers (`pinned`), runner's cuDNN convolution (`conv`) and
//! the fused LRN + max pooling op (`fused`). Which of them a run uses is `backend::Backends`'
//! choice; nothing here reads the environment.

pub mod conv;
pub mod fused;
pub mod kernels;
#[cfg(feature = "cuda")]
mod pinned;

use candle_core::Device;

pub use kernels::Source;

/// A loaded kernel and the stream its launches go to (the device's).
#[cfg(feature = "cuda")]
pub struct Kernel {
    func: candle_core::cuda::cudarc::driver::CudaFunction,
    stream: std::sync::Arc<candle_core::cuda::cudarc::driver::CudaStream>,
}

#[cfg(feature = "cuda")]
impl Kernel {
    /// A launch on the device's stream, to push the kernel's arguments on.
    pub fn builder(&self) -> candle_core::cuda::cudarc::driver::LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Kernel `entry` of `src`, compiled and loaded on `dev` (once per device and module).
#[cfg(feature = "cuda")]
pub fn function(
    dev: &candle_core::cuda::CudaDevice,
    src: &Source,
    entry: &'static str,
) -> candle_core::Result<Kernel> {
    let f = dev.get_or_load_custom_func(entry, src.module, compile(src)?)?;
    Ok(Kernel {
        func: f.into_cuda_function(),
        stream: dev.cuda_stream(),
    })
}

/// Launch a kernel with its arguments pushed, one thread per item of `threads`.
///
/// # Safety
/// The arguments pushed on `args` must match the kernel's signature, and every buffer it
/// writes must hold what the kernel writes for `threads` threads.
#[cfg(feature = "cuda")]
pub unsafe fn launch(
    args: candle_core::cuda::cudarc::driver::LaunchArgs<'_>,
    threads: u32,
) -> candle_core::Result<()> {
    let cfg = candle_core::cuda::cudarc::driver::LaunchConfig::for_num_elems(threads);
    launch_with(args, cfg)
}

/// `launch` with a launch configuration of the caller's.
///
/// # Safety
/// As `launch`, for the grid of `cfg`.
#[cfg(feature = "cuda")]
pub unsafe fn launch_with(
    mut args: candle_core::cuda::cudarc::driver::LaunchArgs<'_>,
    cfg: candle_core::cuda::cudarc::driver::LaunchConfig,
) -> candle_core::Result<()> {
    // SAFETY: the caller's contract (above)
    unsafe { args.launch(cfg) }
        .map(|_| ())
        .map_err(candle_core::Error::wrap)
}

/// A kernel source compiled by nvrtc to PTX after `kernels::PRELUDE` (virtual compute_75:
/// Turing and newer), once per process and source: the nvrtc cache. The GPU is not needed for
/// this, only nvrtc's library.
#[cfg(feature = "cuda")]
pub fn compile(src: &Source) -> candle_core::Result<&'static str> {
    let src = src.code;
    use candle_core::cuda::cudarc::nvrtc;
    use std::collections::HashMap;
    type Compiled = HashMap<usize, &'static str>;
    static DONE: std::sync::Mutex<Option<Compiled>> = std::sync::Mutex::new(None);
    let key = src.as_ptr() as usize;
    if let Some(p) = DONE
        .lock()
        .ok()
        .and_then(|d| d.as_ref()?.get(&key).copied())
    {
        return Ok(p);
    }
    let o = nvrtc::CompileOptions {
        arch: Some("compute_75"),
        ..Default::default()
    };
    let p = nvrtc::compile_ptx_with_opts(format!("{}\n{src}", kernels::PRELUDE), o)
        .map_err(candle_core::Error::wrap)?
        .to_src();
    // kept for the process, as candle keeps its loaded modules
    let p: &'static str = Box::leak(p.into_boxed_str());
    if let Ok(mut d) = DONE.lock() {
        d.get_or_insert_with(HashMap::new).insert(key, p);
    }
    Ok(p)
}

/// u8 values as a tensor of `shape` on `device`. On CUDA with `pinned` (the `upload` path) the bytes go
/// through page-locked host memory, two buffers per size taken in turn: the copy to the GPU is
/// asynchronous (the caller goes on decoding or launching while it runs), and a buffer is
/// rewritten only after its previous copy has finished. From ordinary (pageable) memory, as
/// `Tensor::from_slice` copies, the driver first stages the bytes and the call waits for that.
pub fn upload_u8(
    pixels: &[u8],
    shape: impl Into<candle_core::Shape>,
    device: &Device,
    pinned: bool,
) -> candle_core::Result<candle_core::Tensor> {
    let shape = shape.into();
    #[cfg(not(feature = "cuda"))]
    let _ = pinned;
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(dev), true, false) = (device, pinned, pixels.is_empty()) {
        return pinned::upload(pixels, shape, dev);
    }
    candle_core::Tensor::from_slice(pixels, shape, device)
}

/// A tensor's f32 values on their way to the host: `wait` gives them as a CPU tensor of the
/// same shape. On CUDA with the `download` path the copy is enqueued on the device's stream into
/// page-locked memory and `download_f32` returns at once, so the caller can launch the next
/// batch before it takes these values; otherwise the values are copied when asked.
pub struct Download {
    inner: DownloadInner,
}

enum DownloadInner {
    Now(candle_core::Tensor),
    #[cfg(feature = "cuda")]
    Pinned(pinned::Pending),
}

/// Start copying `t` (any device, any float format) back as f32; with `pinned` (the `download`
/// path) asynchronously into page-locked memory.
pub fn download_f32(t: &candle_core::Tensor, pinned: bool) -> candle_core::Result<Download> {
    let t = t.to_dtype(candle_core::DType::F32)?;
    #[cfg(not(feature = "cuda"))]
    let _ = pinned;
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(_), true) = (t.device(), pinned) {
        return Ok(Download {
            inner: DownloadInner::Pinned(pinned::download(t)?),
        });
    }
    Ok(Download {
        inner: DownloadInner::Now(t),
    })
}

impl Download {
    /// The values, on the CPU (waits for the copy).
    pub fn wait(self) -> candle_core::Result<candle_core::Tensor> {
        match self.inner {
            DownloadInner::Now(t) => t.to_device(&Device::Cpu),
            #[cfg(feature = "cuda")]
            DownloadInner::Pinned(p) => p.wait(),
        }
    }
}
