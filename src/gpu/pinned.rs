//! Page-locked host buffers: double-buffered uploads of u8 batches and asynchronous downloads
//! of f32 features (the `upload` and `download` opt-in paths).
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

pub(super) fn upload(pixels: &[u8], shape: Shape, dev: &CudaDevice) -> candle_core::Result<Tensor> {
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
