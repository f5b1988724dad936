//! Choosing the compute device, and describing it for result files.

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

/// Memory this process can still take, in bytes: the least of the machine's available memory
/// (`MemAvailable`), the room left under its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), and the address
/// space left under `ulimit -v`. `None` where none of them can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let avail = meminfo
        .as_deref()
        .and_then(|s| kib_field(s, "MemAvailable:"));
    let cgroup = cgroup_room();
    let address_space = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max address space"))?;
            let soft = line.split_whitespace().nth(3)?.parse::<u64>().ok()?;
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            Some(soft.saturating_sub(kib_field(&status, "VmSize:").unwrap_or(0)))
        });
    [avail, cgroup, address_space].into_iter().flatten().min()
}

/// The room left under this process's cgroup memory limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), not counting inactive file pages (page cache the kernel drops
/// before it refuses memory). `None` without a limit.
fn cgroup_room() -> Option<u64> {
    let read_num = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let stat_field = |p: &std::path::Path, name: &str| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            dirs.push((
                root.join(rel),
                "memory.max",
                "memory.current",
                "inactive_file ",
            ));
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = root.join("memory");
            for d in [base.join(rel), base.clone()] {
                dirs.push((
                    d,
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                    "total_inactive_file ",
                ));
            }
        }
    }
    dirs.push((
        root.to_path_buf(),
        "memory.max",
        "memory.current",
        "inactive_file ",
    ));
    dirs.into_iter().find_map(|(d, max, cur, inactive)| {
        let max = read_num(&d.join(max))?;
        let cur = read_num(&d.join(cur))?;
        // v1 reports "no limit" as a huge number
        (max < (1u64 << 60)).then(|| {
            max.saturating_sub(cur.saturating_sub(stat_field(&d.join("memory.stat"), inactive)))
        })
    })
}

/// A `NAME: N kB` field of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes in a short human form (`1.5 GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An error unless `bytes` (what `what` would take) fit in the memory this process can still
/// take; `what` names the key or file, the size asked and why it costs that much.
pub fn ensure_fits(what: impl FnOnce() -> String, bytes: u64) -> std::result::Result<(), String> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(format!(
            "{} would take {} of memory, and this process can take {} more now (free memory, cgroup and ulimit -v limits); lower it, or run on a machine with more memory",
            what(),
            human_bytes(bytes),
            human_bytes(avail)
        )),
        _ => Ok(()),
    }
}

/// Make the CPU flush denormal floats to zero (FTZ and DAZ), on this thread and on every rayon
/// worker. Training drives optimizer moments and small activations into the denormal range,
/// where x86 arithmetic is tens of times slower: measured here, a 4096-512-43 head's third
/// epoch took 11.2 s instead of 3.6 s. TensorFlow's executor runs with the same flags, so
/// results do not move beyond values below 1e-38. Idempotent; a no-op off x86-64.
pub fn flush_denormals() {
    flush_denormals_this_thread();
    rayon::broadcast(|_| flush_denormals_this_thread());
}

#[allow(deprecated)]
fn flush_denormals_this_thread() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR; every
    // other control bit (rounding mode, exception masks) is kept as it was.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Run `f` on a worker of a fresh rayon pool (as many threads as candle uses, each flushing
/// denormals). candle's CPU kernels and gemm parallelise with rayon; called from a thread that
/// is not a rayon worker, every parallel op is injected into the pool and waited for, which
/// costs more than the op itself for the small matmuls of head training (measured: a linear
/// 4096 -> 43 head epoch took 0.55 s from the main thread, 0.42-0.48 s from inside the pool).
pub fn in_worker_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("runner-worker-{i}"))
        .start_handler(|_| flush_denormals_this_thread())
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::debug!("no worker pool ({e}); running on the calling thread");
            f()
        }
    }
}

/// The opt-in GPU paths, by the names `RUNNER_GPU_FUSED` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuPath {
    /// pinned, double-buffered uploads (`upload_u8`)
    Upload,
    /// preprocessing in one pass (`data::fused_input`)
    Resize,
    /// runner's own cuDNN convolutions, in a `cudnn` build (`backbone::gpu_conv`)
    Conv,
    /// LRN + max pooling in one pass (`backbone::gpu_fused`)
    LrnPool,
    /// the head step's softmax cross-entropy gradient in one kernel (`train::step`)
    Xent,
    /// the optimizer step in one kernel per parameter (`train::optim`)
    Optim,
    /// features copied back asynchronously into page-locked memory, handed on one batch later
    /// (`download_f32`, `features::Extractor::for_range`)
    Download,
}

impl GpuPath {
    pub const ALL: [GpuPath; 7] = [
        GpuPath::Upload,
        GpuPath::Resize,
        GpuPath::Conv,
        GpuPath::LrnPool,
        GpuPath::Xent,
        GpuPath::Optim,
        GpuPath::Download,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GpuPath::Upload => "upload",
            GpuPath::Resize => "resize",
            GpuPath::Conv => "conv",
            GpuPath::LrnPool => "lrn",
            GpuPath::Xent => "xent",
            GpuPath::Optim => "optim",
            GpuPath::Download => "download",
        }
    }
}

/// `RUNNER_GPU_FUSED`'s value: `1` or `all` for every path, `0` or nothing for none, or names
/// separated by commas (`conv,lrn`), so that one path can be checked or timed alone.
pub fn parse_gpu_paths(v: &str) -> std::result::Result<Vec<GpuPath>, String> {
    match v.trim() {
        "" | "0" => return Ok(Vec::new()),
        "1" | "all" => return Ok(GpuPath::ALL.to_vec()),
        _ => {}
    }
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match GpuPath::ALL.iter().find(|g| g.name() == part) {
            Some(g) if !out.contains(g) => out.push(*g),
            Some(_) => {}
            None => {
                let names: Vec<_> = GpuPath::ALL.iter().map(|g| g.name()).collect();
                return Err(format!(
                    "RUNNER_GPU_FUSED: unknown path `{part}`; expected 1, all, 0, or some of {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// The opt-in GPU paths `RUNNER_GPU_FUSED` turns on (read once per process; a bad value turns
/// none on, and says why once). Off by default until `scripts/gpu-check.sh` has passed with them
/// on a GPU (issue 20).
pub fn gpu_paths() -> &'static [GpuPath] {
    static ON: std::sync::OnceLock<Vec<GpuPath>> = std::sync::OnceLock::new();
    ON.get_or_init(|| {
        let v = std::env::var("RUNNER_GPU_FUSED").unwrap_or_default();
        parse_gpu_paths(&v).unwrap_or_else(|e| {
            tracing::error!("{e}; no opt-in GPU path is on");
            Vec::new()
        })
    })
}

/// Whether `RUNNER_GPU_FUSED` turns on the opt-in GPU path `p`.
pub fn gpu_path(p: GpuPath) -> bool {
    gpu_paths().contains(&p)
}

/// Source every runner kernel is compiled with, ahead of its own (`compile_kernel`, the host
/// tests' `kernel_host::run`, `scripts/build-cuda.sh`): loads and stores of f32, bf16 and f16
/// storage computing in f32 (`ld_f32`/`st_f32`, `ld_bf16`/`st_bf16`, `ld_f16`/`st_f16`, indexed
/// by element). bf16 and f16 are raw 16-bit words, so no header is needed: bf16 widens by a shift
/// and narrows to nearest even (NaN kept quiet); f16 converts with PTX `cvt` on the device, and in
/// software (the same rounding) when the source runs on the host.
pub const KERNEL_PRELUDE: &str = r#"
__device__ __forceinline__ float ld_f32(const float* p, unsigned long long i) { return p[i]; }
__device__ __forceinline__ void st_f32(float* p, unsigned long long i, float v) { p[i] = v; }
__device__ __forceinline__ float ld_bf16(const unsigned short* p, unsigned long long i) {
  return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st_bf16(unsigned short* p, unsigned long long i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (unsigned short)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (unsigned short)(u >> 16);
}
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float ld_f16(const unsigned short* p, unsigned long long i) {
  float f; unsigned short h = p[i];
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ void st_f16(unsigned short* p, unsigned long long i, float v) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p[i] = h;
}
#else
/* the same conversions in software, for running this source on the host (kernel_host.rs) */
__device__ __forceinline__ float ld_f16(const unsigned short* p, unsigned long long i) {
  unsigned int h = p[i], s = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
  float v;
  if (e == 0u) v = (float)m * __uint_as_float(0x33800000u);          /* m * 2^-24 */
  else if (e == 31u) v = __uint_as_float(m ? 0x7fc00000u : 0x7f800000u);
  else return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
  return __uint_as_float(__float_as_uint(v) | s);
}
__device__ __forceinline__ void st_f16(unsigned short* p, unsigned long long i, float v) {
  unsigned int x = __float_as_uint(v), s = (x >> 16) & 0x8000u, a = x & 0x7fffffffu, r, rem, half;
  if (a > 0x7f800000u) { p[i] = (unsigned short)(s | 0x7e00u); return; }   /* NaN */
  if (a >= 0x477ff000u) { p[i] = (unsigned short)(s | 0x7c00u); return; }  /* to infinity */
  if (a < 0x38800000u) {                                                   /* subnormal */
    if (a < 0x33000000u) { p[i] = (unsigned short)s; return; }
    unsigned int m = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);
    r = m >> shift; rem = m & ((1u << shift) - 1u); half = 1u << (shift - 1u);
  } else {
    r = (a - 0x38000000u) >> 13; rem = a & 0x1fffu; half = 0x1000u;
  }
  if (rem > half || (rem == half && (r & 1u))) r++;
  p[i] = (unsigned short)(s | r);
}
#endif
"#;

/// A kernel source compiled by nvrtc to PTX after `KERNEL_PRELUDE` (virtual compute_75: Turing
/// and newer), once per process and source; the GPU is not needed for this, only nvrtc's library.
#[cfg(feature = "cuda")]
pub fn compile_kernel(src: &'static str) -> candle_core::Result<&'static str> {
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
    let p = nvrtc::compile_ptx_with_opts(format!("{KERNEL_PRELUDE}\n{src}"), o)
        .map_err(candle_core::Error::wrap)?
        .to_src();
    // kept for the process, as candle keeps its loaded modules
    let p: &'static str = Box::leak(p.into_boxed_str());
    if let Ok(mut d) = DONE.lock() {
        d.get_or_insert_with(HashMap::new).insert(key, p);
    }
    Ok(p)
}

/// u8 values as a tensor of `shape` on `device`. On CUDA with `RUNNER_GPU_FUSED=1` the bytes go
/// through page-locked host memory, two buffers per size taken in turn: the copy to the GPU is
/// asynchronous (the caller goes on decoding or launching while it runs), and a buffer is
/// rewritten only after its previous copy has finished. From ordinary (pageable) memory, as
/// `Tensor::from_slice` copies, the driver first stages the bytes and the call waits for that.
pub fn upload_u8(
    pixels: &[u8],
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> candle_core::Result<candle_core::Tensor> {
    let shape = shape.into();
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(dev), true, false) = (device, gpu_path(GpuPath::Upload), pixels.is_empty())
    {
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

/// Start copying `t` (any device, any float format) back as f32.
pub fn download_f32(t: &candle_core::Tensor) -> candle_core::Result<Download> {
    let t = t.to_dtype(candle_core::DType::F32)?;
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(_), true) = (t.device(), gpu_path(GpuPath::Download)) {
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

#[cfg(feature = "cuda")]
mod pinned {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use candle_core::cuda::cudarc::driver::PinnedHostSlice;
    use candle_core::cuda::{CudaDevice, DeviceId};
    use candle_core::{op::BackpropOp, CudaStorage, Shape, Storage, Tensor};

    /// Two page-locked buffers of one length and the one to fill next.
    #[derive(Default)]
    struct Ring {
        bufs: [Option<PinnedHostSlice<u8>>; 2],
        next: usize,
    }

    /// Rings by device and length; at most `MAX_RINGS` lengths are kept (a batch size and the
    /// last, shorter batch are two).
    static RINGS: Mutex<Option<HashMap<(DeviceId, usize), Ring>>> = Mutex::new(None);
    const MAX_RINGS: usize = 8;

    pub(super) fn upload(
        pixels: &[u8],
        shape: Shape,
        dev: &CudaDevice,
    ) -> candle_core::Result<Tensor> {
        if shape.elem_count() != pixels.len() {
            candle_core::bail!("upload: {} bytes for shape {shape:?}", pixels.len())
        }
        let stream = dev.cuda_stream();
        let mut guard = RINGS
            .lock()
            .map_err(|_| candle_core::Error::Msg("pinned upload buffers poisoned".into()))?;
        let rings = guard.get_or_insert_with(HashMap::new);
        let key = (dev.id(), pixels.len());
        if !rings.contains_key(&key) && rings.len() >= MAX_RINGS {
            rings.clear(); // dropping a buffer waits for its copy to finish
        }
        let ring = rings.entry(key).or_default();
        let i = ring.next;
        ring.next ^= 1;
        let buf = match &mut ring.bufs[i] {
            Some(b) => b,
            slot => {
                // SAFETY: filled below before any copy reads it
                slot.insert(
                    unsafe { stream.context().alloc_pinned::<u8>(pixels.len()) }
                        .map_err(candle_core::Error::wrap)?,
                )
            }
        };
        // waits for this buffer's previous copy (two uploads ago) before overwriting it
        buf.as_mut_slice()
            .map_err(candle_core::Error::wrap)?
            .copy_from_slice(pixels);
        // SAFETY: the copy below writes all of it
        let mut d = unsafe { dev.alloc::<u8>(pixels.len())? };
        stream
            .memcpy_htod(&*buf, &mut d)
            .map_err(candle_core::Error::wrap)?;
        Ok(Tensor::from_storage(
            Storage::Cuda(CudaStorage::wrap_cuda_slice(d, dev.clone())),
            shape,
            BackpropOp::none(),
            false,
        ))
    }

    /// Page-locked f32 buffers for downloads, by device and length, reused (allocating
    /// page-locked memory costs milliseconds). Not write-combined: the host reads them.
    type FreeBuffers = HashMap<(DeviceId, usize), Vec<PinnedHostSlice<f32>>>;
    static FREE: Mutex<Option<FreeBuffers>> = Mutex::new(None);

    /// A copy to the host in flight: the source stays alive until it is done.
    pub(super) struct Pending {
        buf: Option<PinnedHostSlice<f32>>,
        key: (DeviceId, usize),
        shape: Shape,
        _src: Tensor,
    }

    pub(super) fn download(t: Tensor) -> candle_core::Result<Pending> {
        let t = t.contiguous()?;
        let n = t.elem_count();
        let (key, buf) = {
            let (st, l) = t.storage_and_layout();
            let Storage::Cuda(cs) = &*st else {
                candle_core::bail!("download: not a CUDA tensor")
            };
            let Some((o0, o1)) = l.contiguous_offsets() else {
                candle_core::bail!("download: contiguous tensor expected")
            };
            let dev = cs.device.clone();
            let key = (dev.id(), n);
            let reuse = FREE
                .lock()
                .ok()
                .and_then(|mut f| f.as_mut()?.get_mut(&key)?.pop());
            let mut buf = match reuse {
                Some(b) => b,
                // SAFETY: the copy below writes all of it before it is read
                None => unsafe {
                    dev.cuda_stream()
                        .context()
                        .alloc_pinned_with_flags::<f32>(n.max(1), 0)
                }
                .map_err(candle_core::Error::wrap)?,
            };
            if n > 0 {
                let src = cs.as_cuda_slice::<f32>()?.slice(o0..o1);
                dev.cuda_stream()
                    .memcpy_dtoh(&src, &mut buf)
                    .map_err(candle_core::Error::wrap)?;
            }
            (key, buf)
        };
        Ok(Pending {
            buf: Some(buf),
            key,
            shape: t.shape().clone(),
            _src: t,
        })
    }

    impl Pending {
        pub(super) fn wait(mut self) -> candle_core::Result<Tensor> {
            let Some(buf) = self.buf.take() else {
                candle_core::bail!("download: already taken")
            };
            let n = self.shape.elem_count();
            let values = buf.as_slice().map_err(candle_core::Error::wrap)?[..n].to_vec();
            if let Ok(mut f) = FREE.lock() {
                let free = f.get_or_insert_with(HashMap::new);
                if !free.contains_key(&self.key) && free.len() >= MAX_RINGS {
                    free.clear();
                }
                let list = free.entry(self.key).or_default();
                if list.len() < 2 {
                    list.push(buf);
                }
            }
            Tensor::from_vec(values, self.shape.clone(), &candle_core::Device::Cpu)
        }
    }
}

/// The device a spec asks for. `auto` is CUDA when compiled in and a GPU answers, else CPU.
/// On the CPU, denormals are flushed to zero (see `flush_denormals`).
///
/// `tf32` lets CUDA run f32 matrix products (and the convolutions built on them) on TF32 tensor
/// cores: about 10 significant bits per product instead of 24, several times the throughput.
pub fn select(spec: DeviceSpec, tf32: bool) -> Result<Device> {
    tf32_env(tf32);
    let d = select_inner(spec)?;
    if d.is_cpu() {
        flush_denormals();
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
    fn gpu_paths_are_all_none_or_named_ones() {
        assert_eq!(parse_gpu_paths("1").unwrap(), GpuPath::ALL.to_vec());
        assert_eq!(parse_gpu_paths("all").unwrap(), GpuPath::ALL.to_vec());
        assert!(parse_gpu_paths("").unwrap().is_empty());
        assert!(parse_gpu_paths("0").unwrap().is_empty());
        assert_eq!(
            parse_gpu_paths("conv, lrn,conv").unwrap(),
            [GpuPath::Conv, GpuPath::LrnPool]
        );
        let e = parse_gpu_paths("conv,cudnn").unwrap_err();
        assert!(
            e.contains("`cudnn`") && e.contains("upload, resize, conv"),
            "{e}"
        );
    }

    #[test]
    fn memory_is_known_here_and_bounds_what_fits() {
        let avail = available_memory().expect("Linux reports MemAvailable");
        assert!(avail > 0);
        assert!(ensure_fits(|| "a byte".into(), 1).is_ok());
        let e = ensure_fits(|| "everything".into(), u64::MAX).unwrap_err();
        assert!(e.contains("everything") && e.contains("of memory"), "{e}");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

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
