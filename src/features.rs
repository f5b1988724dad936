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
use crate::cache::{self, CacheKey, EntryWriter, FeatureCache, Features, HostFeatures, Miss};
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
    let mut net = Network::for_spec(spec, &set, device)?;
    net.cast_frozen(spec.freeze, spec.precision.dtype())?;
    Ok(net)
}

pub fn load_options(spec: &Spec) -> crate::data::LoadOptions {
    crate::data::LoadOptions {
        num_classes: spec.num_classes,
        image_size: spec.image_size,
        resize: spec.resize,
        on_bad: spec.on_bad_image,
        crop: spec.crop,
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
/// sweep share it: hashing GTSRB's 120 MB of pixels, or reading a folder's files, per point
/// would cost seconds each).
/// Kept datasets are shared and never changed, so the address identifies the content.
pub fn dataset_hash(d: &Dataset) -> Result<String> {
    if let Ok(last) = LAST_DATASET.lock() {
        if let Some(l) = last
            .as_ref()
            .filter(|l| std::ptr::eq(Arc::as_ptr(&l.data), d))
        {
            if let Some(h) = l.hash.get() {
                return Ok(h.clone());
            }
            let h = d.content_hash()?;
            return Ok(l.hash.get_or_init(|| h).clone());
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
    pub features: Arc<Features>,
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
        // rows are the samples that decoded (all of them unless images were skipped)
        let rows_of = pool_f.features.index();
        let groups: Option<Vec<u64>> = match pool.groups.as_deref().filter(|_| spec.track_split) {
            Some(g) => Some(
                rows_of
                    .iter()
                    .map(|&i| g.get(i as usize).copied())
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "the cached features name samples beyond the dataset's {} (a stale cache entry? delete run.cache_dir)",
                            g.len()
                        ))
                    })?,
            ),
            None => None,
        };
        let (train_idx, val_idx, test_idx) = split::train_val_test(
            pool_f.features.labels(),
            groups.as_deref(),
            data.classes,
            frac(&data.val_file, spec.val_fraction),
            frac(&data.test_file, spec.test_fraction),
            spec.seed,
        );
        let device = self.device;
        let rows = |idx: &[usize]| Split::from_features(&pool_f.features, Some(idx), device);
        let train = rows(&train_idx)?;
        let mut from_file = |d: &Dataset, what: &str| -> Result<Split> {
            let f = self.features(d, what)?;
            extract_seconds += f.seconds;
            cache_hit &= f.hit;
            Split::from_features(&f.features, None, device)
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

    /// The cache key of `data`'s features as this source's spec extracts them.
    pub fn key(&mut self, data: &Dataset) -> Result<CacheKey> {
        Ok(CacheKey {
            weights: self.weights_id()?,
            arch: self.spec.arch.name().to_string(),
            // pooled features are another entry; unpooled keys are as before the option existed
            freeze: if self.spec.pool_before_cache() {
                format!("{}+{}pool", self.spec.freeze_name(), self.spec.pool.name())
            } else {
                self.spec.freeze_name().to_string()
            },
            data: dataset_hash(data)?,
            preprocessing: {
                let mut p = format!(
                    "resize={};size={}",
                    self.spec.resize.name(),
                    self.spec.input_size
                );
                // backbone.mean/std: another entry; keys without them are as before
                let b = &self.spec.preprocess;
                if *b != self.spec.arch.preprocess() {
                    p += &format!(
                        ";bgr={};scale={};mean={:?};std={:?}",
                        b.bgr, b.scale, b.mean, b.std
                    );
                }
                p
            },
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
            let mut warned = false;
            for attempt in 0..2 {
                match c.open(d) {
                    Ok(e) => {
                        tracing::info!("{what}: feature cache hit {}", c.path_for(d).display());
                        let f = Arc::new(Features::Stored(e));
                        cache::remember(d, &f);
                        return Ok(Extracted {
                            features: f,
                            hit: true,
                            seconds: 0.0,
                        });
                    }
                    Err(Miss::Absent) => tracing::info!("{what}: feature cache miss"),
                    // said once: the look after waiting for the lock finds the same file
                    Err(Miss::Corrupt(m)) if !warned => {
                        warned = true;
                        tracing::warn!("{what}: ignoring a damaged cache file ({m}); recomputing")
                    }
                    Err(Miss::Corrupt(_)) => {}
                }
                if attempt == 0 {
                    // another process may be computing this entry: wait for it, then look again
                    _lock = Some(c.lock(d)?);
                }
            }
        }
        let (spec, device, mode) = (self.spec, self.device, self.mode);
        let mut sink = match (&self.cache, &digest) {
            (Some(c), Some((key, d))) => {
                Sink::Entry(Box::new(c.writer(d, key, &spec.feature_shape())?))
            }
            _ => Sink::memory(spec, data.n, what)?,
        };
        let net: &Network = self.network()?;
        device.synchronize()?;
        let t0 = Instant::now();
        let ex = Extractor::new(spec, net, spec.extract_batch_for(device), device);
        let mut task = Task::new(mode, &format!("extract {what}"), data.n as u64, "img");
        ex.for_range(data, 0..data.n, &mut task, |kept, f| {
            sink.push(data, kept, &f)
        })?;
        task.finish();
        device.synchronize()?;
        let seconds = t0.elapsed().as_secs_f64();
        let features = Arc::new(match sink {
            Sink::Entry(w) => {
                let p = w.finish()?;
                tracing::info!("{what}: stored features in {}", p.display());
                let d = digest.as_ref().map(|(_, d)| d.as_str()).unwrap_or_default();
                let c = self
                    .cache
                    .as_ref()
                    .ok_or_else(|| Error::Other("no cache".into()))?;
                Features::Stored(c.open_written(d).map_err(|m| {
                    Error::Other(format!(
                        "the feature cache entry just written cannot be read: {m:?}"
                    ))
                })?)
            }
            Sink::Memory(h) => Features::Memory(h),
        });
        if features.rows() == 0 {
            return Err(Error::Other(format!(
                "{what}: no usable images (every image failed to decode and was skipped)"
            )));
        }
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

/// The positions of shard `index` of `count` over `n` samples: whole extraction batches of
/// `batch`, so each image is in the same batch as in a single-process extraction (and its
/// features are the same to the bit).
pub fn shard_range(n: usize, batch: usize, index: usize, count: usize) -> std::ops::Range<usize> {
    let batches = n.div_ceil(batch.max(1));
    let b0 = batches * index / count.max(1);
    let b1 = batches * (index + 1) / count.max(1);
    (b0 * batch).min(n)..(b1 * batch).min(n)
}

/// Where extracted rows go: a cache entry on disk, or memory (`run.cache = false`).
enum Sink {
    Entry(Box<EntryWriter>),
    Memory(HostFeatures),
}

impl Sink {
    /// Memory for the features of `n` samples, checked against what the process can take.
    fn memory(spec: &Spec, n: usize, what: &str) -> Result<Sink> {
        let per: usize = spec.feature_shape().iter().product();
        // the host copy, then the device copy of the splits
        let bytes = (n as u64).saturating_mul(per as u64).saturating_mul(8);
        crate::memory::ensure_fits(
            || {
                format!(
                    "{what}: the {} features of {n} samples ({per} values each, backbone.freeze = {:?}; run.cache = true reads them from disk instead)",
                    spec.freeze_name(),
                    spec.freeze_name()
                )
            },
            bytes,
        )
        .map_err(Error::Spec)?;
        let mut shape = vec![0];
        shape.extend(spec.feature_shape());
        Ok(Sink::Memory(HostFeatures {
            shape,
            data: Vec::with_capacity(n * per),
            labels: Vec::with_capacity(n),
            index: Vec::with_capacity(n),
        }))
    }

    /// Append the features `f` of the samples at positions `kept` of `data`.
    fn push(&mut self, data: &Dataset, kept: &[usize], f: &Tensor) -> Result<()> {
        let rows: Vec<f32> = f.flatten_all()?.to_vec1::<f32>()?;
        let labels: Vec<i64> = kept.iter().map(|&i| data.labels[i]).collect();
        let index: Vec<u64> = kept.iter().map(|&i| i as u64).collect();
        match self {
            Sink::Entry(w) => w.push(&rows, &labels, &index),
            Sink::Memory(h) => {
                h.data.extend(rows);
                h.labels.extend(labels);
                h.index.extend(index);
                h.shape[0] = h.labels.len();
                Ok(())
            }
        }
    }
}

/// Images read (decoded, for files) and images run from the input through the backbone by
/// extractors in this process: what a test of "one pass for many cut points" counts.
static READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FORWARDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `(images read, images run through the backbone)` by this process's extractions so far.
pub fn pass_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (READ.load(Relaxed), FORWARDED.load(Relaxed))
}

/// Batches decoded ahead of the backbone when images are read from files.
const PREFETCH: usize = crate::spec::budget::PREFETCH_BATCHES;

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
    /// Which implementations preprocessing and copies run (the run's choice).
    pub backends: crate::backend::Backends,
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
            backends: spec.backends,
        }
    }

    /// Features of images `start..start+count` as a tensor (N, ...) on the device (images that
    /// were skipped as undecodable are left out).
    pub fn batch(&self, data: &Dataset, start: usize, count: usize) -> Result<Tensor> {
        let (px, kept) = data.pixels(start, count)?;
        self.run(data, &px, kept.len())
    }

    /// Features of `count` decoded images of `data`'s size.
    fn run(&self, data: &Dataset, px: &[u8], count: usize) -> Result<Tensor> {
        let mut f = self.run_cuts(data, px, count, &[(self.until, self.pool)])?;
        f.pop()
            .ok_or_else(|| Error::Other("no features computed".into()))
    }

    /// The features of `count` decoded images at every cut point of `cuts` (pooled as each
    /// says), in the order of `cuts`, from one pass through the network: each segment between
    /// two consecutive cut points runs once (`forward_range`), so every output is the one a
    /// pass stopping there computes.
    fn run_cuts(
        &self,
        data: &Dataset,
        px: &[u8],
        count: usize,
        cuts: &[(usize, Pool)],
    ) -> Result<Vec<Tensor>> {
        FORWARDED.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        let x = crate::profile::time("preprocess", self.device, || {
            preprocess::to_input(
                px,
                (count, data.height, data.width),
                self.input,
                self.resize,
                self.device,
                &self.backends,
            )
        })?;
        let mut order: Vec<usize> = cuts.iter().map(|c| c.0).collect();
        order.sort_unstable();
        order.dedup();
        let (mut at, mut maps) = (0, Vec::with_capacity(order.len()));
        let mut x = x;
        for &cut in &order {
            // from the input (at = 0, normalised there) or from the previous cut point
            let y = self.net.forward_range(&x, at, cut)?;
            // the input cut point (0) is the normalised input: the next segment starts again
            // from the raw pixels, which `forward_range` from 0 normalises itself
            if cut > 0 {
                (x, at) = (y.clone(), cut);
            }
            maps.push((cut, y));
        }
        cuts.iter()
            .map(|&(cut, pool)| {
                let f = maps
                    .iter()
                    .find(|(c, _)| *c == cut)
                    .map(|(_, f)| f)
                    .ok_or_else(|| Error::Other(format!("cut point {cut} not computed")))?;
                global_pool(f, pool)?
                    .to_dtype(candle_core::DType::F32)
                    .map_err(Into::into)
            })
            .collect()
    }

    /// Calls `sink(positions, features)` for consecutive batches covering the whole dataset, in
    /// order.
    pub fn for_each(
        &self,
        data: &Dataset,
        sink: impl FnMut(&[usize], Tensor) -> Result<()>,
    ) -> Result<()> {
        self.for_range(data, 0..data.n, &mut Task::hidden(), sink)
    }

    /// Calls `sink(positions, features)` for consecutive batches of `range`, in order, with
    /// progress on `task`. Images read from files are decoded a batch at a time, so memory
    /// holds a few batches whatever the number of images; on a GPU on another thread, up to
    /// `PREFETCH` batches ahead of the backbone, so decoding overlaps the device's compute.
    pub fn for_range(
        &self,
        data: &Dataset,
        range: std::ops::Range<usize>,
        task: &mut Task,
        mut sink: impl FnMut(&[usize], Tensor) -> Result<()>,
    ) -> Result<()> {
        let cuts = [(self.until, self.pool)];
        self.for_range_cuts(data, range, task, &cuts, |kept, mut f| match f.pop() {
            Some(f) => sink(kept, f),
            None => Err(Error::Other("no features computed".into())),
        })
    }

    /// As `for_range`, with the features at every cut point of `cuts` (`run_cuts`): each batch
    /// is read once and run through the network once.
    pub fn for_range_cuts(
        &self,
        data: &Dataset,
        range: std::ops::Range<usize>,
        task: &mut Task,
        cuts: &[(usize, Pool)],
        mut sink: impl FnMut(&[usize], Vec<Tensor>) -> Result<()>,
    ) -> Result<()> {
        let batches: Vec<(usize, usize)> = range
            .clone()
            .step_by(self.batch.max(1))
            .map(|s| (s, self.batch.max(1).min(range.end - s)))
            .collect();
        let t0 = Instant::now();
        let mut done = 0u64;
        // With the `download` path, a batch's features are copied back asynchronously and handed
        // to `sink` one batch later, once the next batch has been launched, so a GPU does not
        // wait for the host between batches. (On the CPU the copy is not asynchronous and only
        // the order changes, which lets tests without a GPU hold it to the direct path.)
        let defer = self.backends.fused(crate::backend::GpuPath::Download);
        let mut pending: Option<(Vec<usize>, Vec<crate::gpu::Download>)> = None;
        let wait = |d: Vec<crate::gpu::Download>| -> Result<Vec<Tensor>> {
            d.into_iter()
                .map(|d| d.wait().map_err(Into::into))
                .collect()
        };
        let mut one = |kept: &[usize], px: &[u8], count: usize, decode_s: f64| -> Result<()> {
            READ.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            if !kept.is_empty() {
                let f = self.run_cuts(data, px, kept.len(), cuts)?;
                if defer {
                    let d = f
                        .iter()
                        .map(|f| crate::gpu::download_f32(f, true).map_err(Into::into))
                        .collect::<Result<Vec<_>>>()?;
                    if let Some((k, prev)) = pending.replace((kept.to_vec(), d)) {
                        sink(&k, wait(prev)?)?;
                    }
                } else {
                    sink(kept, f)?;
                }
            }
            done += count as u64;
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let msg = if decode_s > 0.0 {
                format!(
                    "{rate:.1} img/s; decoding {:.0} img/s",
                    count as f64 / decode_s
                )
            } else {
                format!("{rate:.1} img/s")
            };
            task.advance(count as u64, &msg);
            Ok(())
        };
        self.decode_batches(data, batches, &mut one)?;
        // the last batch's features, still on their way back
        if let Some((k, prev)) = pending.take() {
            sink(&k, wait(prev)?)?;
        }
        Ok(())
    }

    /// Read `batches` (start, count) of `data` in order and hand each to `one(kept, pixels,
    /// count, decode seconds)`.
    fn decode_batches(
        &self,
        data: &Dataset,
        batches: Vec<(usize, usize)>,
        one: &mut impl FnMut(&[usize], &[u8], usize, f64) -> Result<()>,
    ) -> Result<()> {
        // On the CPU, decoding and the backbone compete for the same cores: decoding each batch
        // on the run's worker threads, then computing it, was faster than a decoding thread
        // running ahead (measured: bench/stream.sh ab). Elsewhere the cores are idle while the
        // device computes, and decoding runs ahead.
        if !data.streamed() || self.device.is_cpu() {
            for (s, c) in batches {
                crate::interrupt::check()?;
                let t = Instant::now();
                let (px, kept) = data.pixels(s, c)?;
                let decode_s = if data.streamed() {
                    t.elapsed().as_secs_f64()
                } else {
                    0.0
                };
                one(&kept, &px, c, decode_s)?;
            }
        } else {
            type Decoded = Result<(Vec<u8>, Vec<usize>, usize, f64)>;
            std::thread::scope(|sc| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded>(PREFETCH);
                sc.spawn(move || {
                    for (s, c) in batches {
                        if crate::interrupt::requested() {
                            break;
                        }
                        let t = Instant::now();
                        let r = data.pixels(s, c).map(|(px, kept)| {
                            (px.into_owned(), kept, c, t.elapsed().as_secs_f64())
                        });
                        let failed = r.is_err();
                        // a closed channel: the consumer stopped (an error or Ctrl-C)
                        if tx.send(r).is_err() || failed {
                            break;
                        }
                    }
                });
                for r in rx {
                    crate::interrupt::check()?;
                    let (px, kept, c, decode_s) = r?;
                    one(&kept, &px, c, decode_s)?;
                }
                crate::interrupt::check()
            })?;
        }
        Ok(())
    }
}

pub use crate::backbone::layers::global_pool;

/// Flatten a batch of features into rows in `order`: a feature map's values in (H, W, C)
/// order for the seed's TensorFlow graphs (AlexNet, VGG), (C, H, W) for PyTorch's; vectors as
/// they are.
pub fn flatten_rows(f: &Tensor, order: crate::arch::FlattenOrder) -> Result<Tensor> {
    let f = match (f.rank(), order) {
        (4, crate::arch::FlattenOrder::Nhwc) => f.permute((0, 2, 3, 1))?,
        _ => f.clone(),
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
    crate::threads::in_worker_pool(|| extract_here(spec, out))
}

/// The samples of `data` whose images decode: all of them, except for images read from files
/// under `dataset.on_bad_image = "skip"`, which are decoded once here (and dropped with a
/// warning where they fail) so that the row count is known before rows are written.
fn decodable_only(data: Arc<Dataset>) -> Result<Arc<Dataset>> {
    let Some(files) = data
        .files
        .as_ref()
        .filter(|f| f.on_bad == crate::data::images::OnBad::Skip)
    else {
        return Ok(data);
    };
    let mut kept = Vec::with_capacity(data.n);
    let all: Vec<usize> = (0..data.n).collect();
    for block in all.chunks(256) {
        crate::interrupt::check()?;
        kept.extend(files.decode_many(block)?.1);
    }
    if kept.len() == data.n {
        return Ok(data);
    }
    Ok(Arc::new(data.subset(&kept)))
}

fn extract_here(spec: &Spec, out: &Path) -> Result<ExtractReport> {
    crate::spec::budget::check_memory(spec)?;
    let device = crate::device::select(spec.device, spec.tf32)?;
    let data = decodable_only(load_dataset(spec)?)?;
    let net = load_network(spec, &device)?;
    let dim: usize = spec.feature_shape().iter().product();
    let ex = Extractor::new(spec, &net, spec.extract_batch_for(&device), &device);
    let order = spec.arch.desc().flatten;
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
        let mut labels = Vec::with_capacity(data.n);
        ex.for_each(&data, |kept, f| {
            let rows: Vec<f32> = flatten_rows(&f, order)?.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
            zip.write_all(&bytes).map_err(ioerr)?;
            labels.extend(kept.iter().map(|&i| data.labels[i]));
            tracing::info!(
                "extracted {}/{} images",
                kept.last().map_or(0, |k| k + 1),
                data.n
            );
            Ok(())
        })?;
        if labels.len() != data.n {
            // images were skipped: the header promised n rows
            return Err(Error::Other(format!(
                "runner extract: {} of {} images could not be decoded and were skipped; the .npz needs every row (set dataset.on_bad_image = \"error\" to see which)",
                data.n - labels.len(),
                data.n
            )));
        }
        zip.start_file("labels.npy", opts).map_err(zerr)?;
        zip.write_all(&npy::npy_header("<i8", &[data.n]))
            .map_err(ioerr)?;
        let lb: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
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

#[cfg(test)]
mod tests {
    use super::shard_range;

    #[test]
    fn shards_are_whole_batches_covering_every_sample_once() {
        for (n, batch, count) in [
            (21, 4, 3),
            (129, 16, 4),
            (5, 64, 4),
            (1000, 64, 7),
            (0, 8, 2),
        ] {
            let mut next = 0;
            for i in 0..count {
                let r = shard_range(n, batch, i, count);
                assert_eq!(r.start, next, "n={n} batch={batch} shard {i}/{count}");
                assert!(
                    r.start.is_multiple_of(batch) || r.start == n,
                    "starts on a batch boundary"
                );
                next = r.end;
            }
            assert_eq!(next, n, "the shards cover all {n} samples");
        }
        // more shards than batches: some are empty, none overlap
        assert_eq!(shard_range(5, 64, 0, 4), 0..0);
        assert_eq!(shard_range(5, 64, 3, 4), 0..5);
    }
}
