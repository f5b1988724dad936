//! Running the frozen part of a backbone over a dataset, and writing the features.
//!
//! `runner extract` writes an `.npz` that numpy reads: `features` float32 (N, D) and `labels`
//! int64 (N). Feature-map layers (conv*, pool*) are flattened in TensorFlow's NHWC order, so the
//! rows are element for element the seed's graph's features; fc layers are plain vectors.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::backbone::{Arch, Network};
use crate::data::{preprocess, Dataset};
use crate::error::{Error, Result};
use crate::results::AtomicFile;
use crate::spec::{DatasetKind, Spec, WeightsSource};
use crate::weights::{self, npy};

/// Load the backbone a spec names, onto `device`.
pub fn load_network(spec: &Spec, device: &Device) -> Result<Network> {
    let set = match &spec.weights {
        WeightsSource::Random => weights::random(spec.arch, spec.seed),
        WeightsSource::File(p) => weights::load(p, spec.arch)?,
    };
    if device.is_cpu() && spec.precision != crate::spec::Precision::F32 {
        return Err(Error::Device(format!(
            "run.dtype = \"{}\" runs on CUDA only (candle's CPU backend has no {} matrix products); use run.dtype = \"f32\" on the CPU, or run.device = \"cuda\"",
            spec.precision.name(),
            spec.precision.name()
        )));
    }
    let mut net = Network::new(spec.arch, &set, device)?;
    net.cast_frozen(spec.freeze, spec.precision.dtype())?;
    Ok(net)
}

pub fn load_options(spec: &Spec) -> crate::data::LoadOptions {
    crate::data::LoadOptions {
        num_classes: spec.num_classes,
        image_size: spec.image_size,
        resize: spec.resize,
        on_bad: spec.raw.dataset.on_bad_image,
        crop: spec.raw.dataset.crop,
    }
}

/// What determines the main dataset of a spec (with the file's size and time for files).
fn dataset_key(spec: &Spec) -> String {
    let stamp = std::fs::metadata(&spec.dataset_path)
        .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let o = load_options(spec);
    format!(
        "{:?}|{}|{stamp}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
        spec.dataset_kind,
        spec.dataset_path.display(),
        spec.seed,
        spec.per_class,
        o.num_classes,
        o.image_size,
        o.resize,
        o.on_bad,
        o.crop
    )
}

/// Load the main dataset a spec names (`dataset.path`, or the synthetic set). The last one
/// loaded is kept for the process: the points of a sweep differ in head and training settings
/// and share their data, which is then decoded (or generated) once, not once per point.
pub fn load_dataset(spec: &Spec) -> Result<Arc<Dataset>> {
    let key = dataset_key(spec);
    if let Ok(last) = LAST_DATASET.lock() {
        if let Some(l) = last.as_ref().filter(|l| l.key == key) {
            tracing::debug!("dataset {key}: reused");
            return Ok(l.data.clone());
        }
    }
    let d = Arc::new(load_dataset_uncached(spec)?);
    if let Ok(mut last) = LAST_DATASET.lock() {
        *last = Some(LastDataset {
            key,
            data: d.clone(),
            hash: OnceLock::new(),
        });
    }
    Ok(d)
}

struct LastDataset {
    key: String,
    data: Arc<Dataset>,
    hash: OnceLock<String>,
}

static LAST_DATASET: Mutex<Option<LastDataset>> = Mutex::new(None);

/// `d.content_hash()`, computed once for the dataset [`load_dataset`] keeps (the points of a
/// sweep share it: hashing GTSRB's 120 MB of pixels per point would cost a second each).
/// Kept datasets are shared and never changed, so the address identifies the content.
pub fn dataset_hash(d: &Dataset) -> String {
    if let Ok(last) = LAST_DATASET.lock() {
        if let Some(l) = last
            .as_ref()
            .filter(|l| std::ptr::eq(Arc::as_ptr(&l.data), d))
        {
            return l.hash.get_or_init(|| d.content_hash()).clone();
        }
    }
    d.content_hash()
}

fn load_dataset_uncached(spec: &Spec) -> Result<Dataset> {
    match spec.dataset_kind {
        DatasetKind::Synthetic => Ok(crate::data::synthetic::generate(spec.seed, spec.per_class)),
        kind => crate::data::load(kind, &spec.dataset_path, &load_options(spec), false),
    }
}

/// Load a separate validation or test set named by the spec.
pub fn load_extra(spec: &Spec, path: &Path, test: bool) -> Result<Dataset> {
    crate::data::load(spec.dataset_kind, path, &load_options(spec), test)
}

/// Runs images through the network up to a layer, batch by batch.
pub struct Extractor<'a> {
    pub net: &'a Network,
    pub until: usize,
    pub resize: preprocess::ResizeMethod,
    pub batch: usize,
    pub device: &'a Device,
}

impl Extractor<'_> {
    /// Features of images `start..start+count` as a tensor (N, ...) on the device.
    pub fn batch(&self, data: &Dataset, start: usize, count: usize) -> Result<Tensor> {
        let size = self.net.arch().input_size();
        let x = crate::profile::time("preprocess", self.device, || {
            preprocess::to_input(
                data.batch_pixels(start, count),
                count,
                data.height,
                data.width,
                size,
                self.resize,
                self.device,
            )
        })?;
        Ok(self
            .net
            .forward_until(&x, self.until)?
            .to_dtype(candle_core::DType::F32)?)
    }

    /// Calls `sink(start, features)` for consecutive batches covering the whole dataset, in order.
    pub fn for_each(
        &self,
        data: &Dataset,
        mut sink: impl FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let mut start = 0;
        while start < data.n {
            crate::interrupt::check()?;
            let count = self.batch.min(data.n - start);
            let f = self.batch(data, start, count)?;
            sink(start, f)?;
            start += count;
        }
        Ok(())
    }
}

/// Flatten features as the seed's TensorFlow graph would: NHWC for feature maps.
pub fn flatten_tf_order(f: &Tensor) -> Result<Tensor> {
    let f = if f.rank() == 4 {
        f.permute((0, 2, 3, 1))?
    } else {
        f.clone()
    };
    Ok(f.flatten_from(1)?.contiguous()?)
}

/// Feature width of a layer for one image.
pub fn feature_dim(arch: Arch, layer: usize) -> usize {
    arch.output_shape(layer).iter().product()
}

pub struct ExtractReport {
    pub n: usize,
    pub dim: usize,
    pub seconds: f64,
}

/// `runner extract`: every sample, in file order, through the backbone up to `backbone.freeze`,
/// streamed into an `.npz` (memory stays at one batch whatever N is), written atomically.
pub fn extract_to_npz(spec: &Spec, out: &Path) -> Result<ExtractReport> {
    crate::device::in_worker_pool(|| extract_here(spec, out))
}

fn extract_here(spec: &Spec, out: &Path) -> Result<ExtractReport> {
    let device = crate::device::select(spec.device, spec.tf32)?;
    let data = load_dataset(spec)?;
    let net = load_network(spec, &device)?;
    let dim = feature_dim(spec.arch, spec.freeze);
    let ex = Extractor {
        net: &net,
        until: spec.freeze,
        resize: spec.resize,
        batch: spec.extract_batch_for(&device),
        device: &device,
    };
    let t0 = Instant::now();

    let mut file = AtomicFile::create(out)?;
    let tmp = file.path().to_path_buf();
    let ioerr = |e: std::io::Error| Error::io(&tmp, e);
    let zerr = |e: zip::result::ZipError| Error::format(&tmp, format!("writing the archive: {e}"));
    {
        let mut zip = zip::ZipWriter::new(file.writer());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        zip.start_file("features.npy", opts).map_err(zerr)?;
        zip.write_all(&npy::npy_header("<f4", &[data.n, dim]))
            .map_err(ioerr)?;
        let mut done = 0usize;
        ex.for_each(&data, |start, f| {
            let rows: Vec<f32> = flatten_tf_order(&f)?.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
            zip.write_all(&bytes).map_err(ioerr)?;
            done = start + f.dim(0)?;
            tracing::info!("extracted {done}/{} images", data.n);
            Ok(())
        })?;
        zip.start_file("labels.npy", opts).map_err(zerr)?;
        zip.write_all(&npy::npy_header("<i8", &[data.n]))
            .map_err(ioerr)?;
        let lb: Vec<u8> = data.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        zip.write_all(&lb).map_err(ioerr)?;
        zip.finish().map_err(zerr)?;
    }
    file.commit()?;
    Ok(ExtractReport {
        n: data.n,
        dim,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
