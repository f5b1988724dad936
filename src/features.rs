//! The frozen part of a run: loading its datasets (`load_run_data`), the backbone
//! (`load_network`), and its features (`FeatureSource`: from the feature cache when it has
//! them, else by running the backbone batch by batch and storing the result); and
//! `runner extract`, which writes features to a file.
//!
//! `runner extract` writes an `.npz` that numpy reads: `features` float32 (N, D) and `labels`
//! int64 (N). Feature-map layers (conv*, pool*) are flattened in TensorFlow's NHWC order, so the
//! rows are element for element the seed's graph's features; fc layers are plain vectors.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::backbone::Network;
use crate::cache::{self, CacheKey, FeatureCache, HostFeatures, Miss};
use crate::data::{preprocess, split, Dataset};
use crate::error::{Error, Result};
use crate::fsio::AtomicFile;
use crate::progress::{Mode, Task};
use crate::spec::{DatasetKind, Pool, Spec, WeightsSource};
use crate::train::Split;
use crate::weights::{self, npy};

/// Load the backbone a spec names, onto `device`.
pub fn load_network(spec: &Spec, device: &Device) -> Result<Network> {
    let set = match &spec.weights {
        WeightsSource::Random => weights::random(spec.arch, spec.seed),
        WeightsSource::File(p) => weights::load_until(p, spec.arch, spec.output)?,
    };
    if device.is_cpu() && spec.precision != crate::spec::Precision::F32 {
        return Err(Error::Device(format!(
            "run.dtype = \"{}\" runs on CUDA only (candle's CPU backend has no {} matrix products); use run.dtype = \"f32\" on the CPU, or run.device = \"cuda\"",
            spec.precision.name(),
            spec.precision.name()
        )));
    }
    let mut net = Network::new_until(spec.arch, &set, device, spec.output)?;
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
        labels: spec.labels_path.clone(),
    }
}

/// What determines the main dataset of a spec (with the file's size and time for files).
fn dataset_key(spec: &Spec) -> String {
    let stamp = std::fs::metadata(&spec.dataset_path)
        .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let o = load_options(spec);
    format!(
        "{:?}|{}|{stamp}|{:?}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
        spec.dataset_kind,
        spec.dataset_path.display(),
        o.labels,
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
    let o = crate::data::LoadOptions {
        // `labels_path` belongs to `dataset.path`: an extra IDX file's labels lie beside it
        labels: None,
        ..load_options(spec)
    };
    crate::data::load(spec.dataset_kind, path, &o, test)
}

/// The datasets a run reads: the pool (`dataset.path`, after `dataset.limit`) and the separate
/// validation and test sets where the spec names them.
pub struct RunData {
    pub pool: Arc<Dataset>,
    pub val_file: Option<Dataset>,
    pub test_file: Option<Dataset>,
    /// The training set's classes (`dataset.num_classes`, else the pool's).
    pub classes: usize,
}

/// Load the datasets of a run; labels of the separate files are checked against the classes.
pub fn load_run_data(spec: &Spec) -> Result<RunData> {
    let full = load_dataset(spec)?;
    let pool = if spec.limit > 0 {
        let keep = split::limit_per_class(&full.labels, full.num_classes, spec.limit, spec.seed);
        Arc::new(full.subset(&keep))
    } else {
        full
    };
    let classes = spec.num_classes.unwrap_or(pool.num_classes);
    let extra = |p: &Option<std::path::PathBuf>, test: bool| -> Result<Option<Dataset>> {
        match p {
            Some(p) => {
                let d = load_extra(spec, p, test)?;
                d.check_labels(classes, p)?;
                Ok(Some(d))
            }
            None => Ok(None),
        }
    };
    Ok(RunData {
        val_file: extra(&spec.val_path, false)?,
        test_file: extra(&spec.test_path, true)?,
        pool,
        classes,
    })
}

/// A run's features on the device, and how they were had.
pub struct RunFeatures {
    pub train: Split,
    pub val: Split,
    pub test: Option<Split>,
    /// Seconds spent running the backbone (0 when everything came from the cache).
    pub extract_seconds: f64,
    /// Whether every part came from the cache (or from the previous sweep point).
    pub cache_hit: bool,
}

/// Supplies frozen features: from the cache when it has them, else by running the backbone
/// (loaded on first need) and storing the result.
pub struct FeatureSource<'a> {
    spec: &'a Spec,
    device: &'a Device,
    net: Option<Network>,
    weights_id: Option<String>,
    cache: Option<FeatureCache>,
    mode: Mode,
}

pub struct Extracted {
    pub features: Arc<HostFeatures>,
    pub hit: bool,
    pub seconds: f64,
}

impl<'a> FeatureSource<'a> {
    /// A source for `spec` on `device`: the cache the spec names (if any); the backbone is
    /// loaded on first need.
    pub fn new(spec: &'a Spec, device: &'a Device, mode: Mode) -> Self {
        FeatureSource {
            spec,
            device,
            net: None,
            weights_id: None,
            cache: spec.cache_dir.as_deref().map(FeatureCache::new),
            mode,
        }
    }

    /// The backbone, loaded now if no extraction needed it (for a trainable tail).
    pub fn into_network(mut self) -> Result<Network> {
        self.network()?;
        self.net
            .take()
            .ok_or_else(|| Error::Other("backbone not loaded".into()))
    }

    /// Features of a run's splits on the device: the pool's rows divided into train,
    /// validation and test (`split::train_val_test`), or the separate files where given.
    pub fn for_run(&mut self, data: &RunData) -> Result<RunFeatures> {
        let spec = self.spec;
        let pool = &data.pool;
        let pool_f = self.features(pool, "train")?;
        let (mut extract_seconds, mut cache_hit) = (pool_f.seconds, pool_f.hit);
        let frac = |file: &Option<Dataset>, f: f64| if file.is_some() { 0.0 } else { f };
        let groups = pool.groups.as_deref().filter(|_| spec.track_split);
        let (train_idx, val_idx, test_idx) = split::train_val_test(
            &pool.labels,
            groups,
            data.classes,
            frac(&data.val_file, spec.val_fraction),
            frac(&data.test_file, spec.test_fraction),
            spec.seed,
        );
        let device = self.device;
        let rows = |idx: &[usize]| Split::from_host(&pool_f.features, Some(idx), device);
        let train = rows(&train_idx)?;
        let mut from_file = |d: &Dataset, what: &str| -> Result<Split> {
            let f = self.features(d, what)?;
            extract_seconds += f.seconds;
            cache_hit &= f.hit;
            Split::from_host(&f.features, None, device)
        };
        let val = match &data.val_file {
            Some(d) => from_file(d, "val")?,
            None => rows(&val_idx)?,
        };
        let test = match &data.test_file {
            Some(d) => Some(from_file(d, "test")?),
            None if !test_idx.is_empty() => Some(rows(&test_idx)?),
            None => None,
        };
        Ok(RunFeatures {
            train,
            val,
            test,
            extract_seconds,
            cache_hit,
        })
    }

    fn network(&mut self) -> Result<&mut Network> {
        if self.net.is_none() {
            let t = Instant::now();
            self.net = Some(load_network(self.spec, self.device)?);
            tracing::info!(
                "loaded {} weights in {:.1} s",
                self.spec.arch.name(),
                t.elapsed().as_secs_f64()
            );
        }
        self.net
            .as_mut()
            .ok_or_else(|| Error::Other("backbone not loaded".into()))
    }

    fn weights_id(&mut self) -> Result<String> {
        if let Some(w) = &self.weights_id {
            return Ok(w.clone());
        }
        let id = match &self.spec.weights {
            WeightsSource::Random => {
                format!("random-v2:{}:{}", self.spec.arch.name(), self.spec.seed)
            }
            WeightsSource::File(p) => format!("sha256:{}", cache::file_hash_memo(p)?),
        };
        self.weights_id = Some(id.clone());
        Ok(id)
    }

    fn key(&mut self, data: &Dataset) -> Result<CacheKey> {
        Ok(CacheKey {
            weights: self.weights_id()?,
            arch: self.spec.arch.name().to_string(),
            // pooled features are another entry; unpooled keys are as before the option existed
            freeze: if self.spec.pool_before_cache() {
                format!("{}+{}pool", self.spec.freeze_name(), self.spec.pool.name())
            } else {
                self.spec.freeze_name().to_string()
            },
            data: dataset_hash(data),
            preprocessing: format!(
                "resize={};size={}",
                self.spec.resize.name(),
                self.spec.input_size
            ),
            dtype: self
                .spec
                .precision
                .label(self.spec.tf32 && !self.device.is_cpu()),
        })
    }

    /// Features of every sample of `data`, from the cache or the backbone.
    pub fn features(&mut self, data: &Dataset, what: &str) -> Result<Extracted> {
        let digest = if self.cache.is_some() || cache::keeping() {
            let key = self.key(data)?;
            let d = key.digest();
            Some((key, d))
        } else {
            None
        };
        if let Some(f) = digest.as_ref().and_then(|(_, d)| cache::remembered(d)) {
            tracing::info!("{what}: features kept in memory from the previous point");
            return Ok(Extracted {
                features: f,
                hit: true,
                seconds: 0.0,
            });
        }
        let mut _lock = None;
        if let (Some(c), Some((_, d))) = (&self.cache, &digest) {
            for attempt in 0..2 {
                match c.get(d) {
                    Ok(f) => {
                        tracing::info!("{what}: feature cache hit {}", c.path_for(d).display());
                        let f = Arc::new(f);
                        cache::remember(d, &f);
                        return Ok(Extracted {
                            features: f,
                            hit: true,
                            seconds: 0.0,
                        });
                    }
                    Err(Miss::Absent) => tracing::info!("{what}: feature cache miss"),
                    Err(Miss::Corrupt(m)) => {
                        tracing::warn!("{what}: ignoring a damaged cache file ({m}); recomputing")
                    }
                }
                if attempt == 0 {
                    // another process may be computing this entry: wait for it, then look again
                    _lock = Some(c.lock(d)?);
                }
            }
        }
        let (spec, device, mode) = (self.spec, self.device, self.mode);
        let net: &Network = self.network()?;
        device.synchronize()?;
        let t0 = Instant::now();
        let ex = Extractor::new(spec, net, spec.extract_batch_for(device), device);
        let per: usize = spec.feature_shape().iter().product();
        // the host copy, then the device copy of the splits
        let bytes = (data.n as u64).saturating_mul(per as u64).saturating_mul(8);
        crate::device::ensure_fits(
            || {
                format!(
                    "{what}: the {} features of {} samples ({per} values each, backbone.freeze = {:?})",
                    spec.freeze_name(),
                    data.n,
                    spec.freeze_name()
                )
            },
            bytes,
        )
        .map_err(Error::Spec)?;
        let mut out = Vec::with_capacity(data.n * per);
        let mut task = Task::new(mode, &format!("extract {what}"), data.n as u64, "img");
        ex.for_each(data, |_, f| {
            let b = f.dim(0)?;
            out.extend(f.flatten_all()?.to_vec1::<f32>()?);
            task.advance(b as u64, "");
            Ok(())
        })?;
        task.finish();
        device.synchronize()?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut shape = vec![data.n];
        shape.extend(spec.feature_shape());
        let features = HostFeatures {
            shape,
            data: out,
            labels: data.labels.clone(),
        };
        if let (Some(c), Some((key, d))) = (&self.cache, &digest) {
            let p = c.put(d, key, &features)?;
            tracing::info!("{what}: stored features in {}", p.display());
        }
        let features = Arc::new(features);
        if let Some((_, d)) = &digest {
            cache::remember(d, &features);
        }
        Ok(Extracted {
            features,
            hit: false,
            seconds,
        })
    }
}

/// Runs images through the network up to a layer, batch by batch.
pub struct Extractor<'a> {
    pub net: &'a Network,
    pub until: usize,
    pub resize: preprocess::ResizeMethod,
    pub batch: usize,
    pub device: &'a Device,
    /// Input side the images are resized to.
    pub input: usize,
    /// Global pooling of the output (`backbone.pool`, when the head reads `until`).
    pub pool: Pool,
}

impl<'a> Extractor<'a> {
    /// The extractor of a spec's frozen part: up to `backbone.freeze`, at its input size,
    /// pooled when the head reads the freeze layer.
    pub fn new(spec: &Spec, net: &'a Network, batch: usize, device: &'a Device) -> Self {
        Extractor {
            net,
            until: spec.freeze,
            resize: spec.resize,
            batch,
            device,
            input: spec.input_size,
            pool: if spec.pool_before_cache() {
                spec.pool
            } else {
                Pool::None
            },
        }
    }

    /// Features of images `start..start+count` as a tensor (N, ...) on the device.
    pub fn batch(&self, data: &Dataset, start: usize, count: usize) -> Result<Tensor> {
        let x = crate::profile::time("preprocess", self.device, || {
            preprocess::to_input(
                data.batch_pixels(start, count),
                count,
                data.height,
                data.width,
                self.input,
                self.resize,
                self.device,
            )
        })?;
        let f = self.net.forward_until(&x, self.until)?;
        global_pool(&f, self.pool)?
            .to_dtype(candle_core::DType::F32)
            .map_err(Into::into)
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
pub use crate::backbone::layers::global_pool;

pub fn flatten_tf_order(f: &Tensor) -> Result<Tensor> {
    let f = if f.rank() == 4 {
        f.permute((0, 2, 3, 1))?
    } else {
        f.clone()
    };
    Ok(f.flatten_from(1)?.contiguous()?)
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
    crate::spec::budget::check_memory(spec)?;
    let device = crate::device::select(spec.device, spec.tf32)?;
    let data = load_dataset(spec)?;
    let net = load_network(spec, &device)?;
    let dim: usize = spec.feature_shape().iter().product();
    let ex = Extractor::new(spec, &net, spec.extract_batch_for(&device), &device);
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
