//! One experiment run, end to end: data -> frozen features (cached) -> trainable tail + head ->
//! epochs -> results. This is the "plan" step of the pipeline: it decides what to load, what the
//! cache already has, and what to train, then hands each piece to its module.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::backbone::Network;
use crate::cache::{self, CacheKey, FeatureCache, HostFeatures, Miss};
use crate::data::{split, Dataset};
use crate::error::{Error, Result};
use crate::features::{load_dataset, load_extra, load_network, Extractor};
use crate::progress::{Mode, Task};
use crate::results::{self, EpochRow, RunDir, SummaryRow};
use crate::spec::{Spec, WeightsSource};
use crate::train::{self, head::Head, metrics::Sums, Model, Split};

/// A stable id for a fully resolved spec: the same config gets the same id on any machine.
/// For a sweep point, a readable label of its overrides follows the hash.
/// The `[run]` section (device, batch for extraction, where files go) is left out: it changes
/// neither what is computed nor, up to rounding, the numbers, and a sweep's workers each set
/// their own device.
pub fn run_id(spec: &Spec) -> String {
    let mut raw = spec.raw.clone();
    // Where results go and how features are cached do not change them; the number format does.
    raw.run = crate::spec::RunSection {
        dtype: raw.run.dtype,
        tf32: raw.run.tf32,
        ..Default::default()
    };
    let text = toml::to_string(&raw).unwrap_or_default();
    let h = format!("{:x}", Sha256::digest(text.as_bytes()));
    if spec.point_label.is_empty() {
        h[..10].to_string()
    } else {
        format!("{}-{}", &h[..10], spec.point_label)
    }
}

/// The folder a spec's run writes to.
pub fn run_dir(spec: &Spec) -> PathBuf {
    spec.results_dir.join(&spec.name).join(run_id(spec))
}

/// Whether a spec's run folder holds a finished run.
pub fn is_finished(spec: &Spec) -> bool {
    std::fs::read_to_string(run_dir(spec).join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["status"] == "finished")
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub dir: PathBuf,
    pub best_epoch: usize,
    pub best_val_acc: f64,
    pub test: Option<Sums>,
    pub cache_hit: bool,
    pub total_seconds: f64,
}

/// Supplies frozen features: from the cache when it has them, else by running the backbone
/// (loaded on first need) and storing the result.
struct FeatureSource<'a> {
    spec: &'a Spec,
    device: &'a Device,
    net: Option<Network>,
    weights_id: Option<String>,
    cache: Option<FeatureCache>,
    mode: Mode,
}

struct Extracted {
    features: Arc<HostFeatures>,
    hit: bool,
    seconds: f64,
}

impl FeatureSource<'_> {
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
            freeze: self.spec.freeze_name().to_string(),
            data: crate::features::dataset_hash(data),
            preprocessing: format!(
                "resize={};size={}",
                self.spec.resize.name(),
                self.spec.arch.input_size()
            ),
            dtype: self
                .spec
                .precision
                .label(self.spec.tf32 && !self.device.is_cpu()),
        })
    }

    fn features(&mut self, data: &Dataset, what: &str) -> Result<Extracted> {
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
        let ex = Extractor {
            net,
            until: spec.freeze,
            resize: spec.resize,
            batch: spec.extract_batch_for(device),
            device,
        };
        let per: usize = spec.arch.output_shape(spec.freeze).iter().product();
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
        shape.extend(spec.arch.output_shape(spec.freeze));
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

fn to_device(f: &HostFeatures, rows: Option<&[usize]>, device: &Device) -> Result<Split> {
    let per: usize = f.shape[1..].iter().product();
    let (data, labels): (Vec<f32>, Vec<i64>) = match rows {
        None => (f.data.clone(), f.labels.clone()),
        Some(r) => {
            let mut d = Vec::with_capacity(r.len() * per);
            for &i in r {
                d.extend_from_slice(&f.data[i * per..(i + 1) * per]);
            }
            (d, r.iter().map(|&i| f.labels[i]).collect())
        }
    };
    let mut shape = vec![labels.len()];
    shape.extend_from_slice(&f.shape[1..]);
    Split::new(Tensor::from_vec(data, shape, device)?, &labels, device)
}

fn check_labels(d: &Dataset, classes: usize, path: &std::path::Path) -> Result<()> {
    if let Some((i, l)) = d
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as u64 >= classes as u64)
    {
        return Err(Error::data(
            path,
            format!(
                "label {l} of sample {i} is out of range for the training set's {classes} classes"
            ),
        ));
    }
    Ok(())
}

/// A safetensors file of named f32 tensors (`path` only names it in errors).
fn vars_bytes(
    path: &std::path::Path,
    named: &[(String, Tensor)],
    meta: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>> {
    let host: Vec<(String, Vec<usize>, Vec<f32>)> = named
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.dims().to_vec(),
                t.flatten_all()?.to_vec1::<f32>()?,
            ))
        })
        .collect::<Result<_>>()?;
    // safetensors stores little-endian, which is every target runner builds for
    let views = host
        .iter()
        .map(|(n, s, v)| {
            let b: &[u8] = bytemuck::cast_slice(v);
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}

/// The candle release runner is built against (kept in step with Cargo.toml).
pub const CANDLE_VERSION: &str = "0.11.1";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Peak resident memory of this process (Linux's VmHWM), if known.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Run one experiment (on a worker of a rayon pool: see `device::in_worker_pool`).
pub fn run(spec: &Spec, mode: Mode) -> Result<Outcome> {
    crate::device::in_worker_pool(|| run_here(spec, mode, false))
        .and_then(|o| o.ok_or_else(|| Error::Other("run skipped".into())))
}

/// Run a sweep point; with `skip_finished`, `None` when it is finished (checked under the run's
/// lock, so a point another process just finished is not run again).
pub fn run_point(spec: &Spec, mode: Mode, skip_finished: bool) -> Result<Option<Outcome>> {
    crate::device::in_worker_pool(|| run_here(spec, mode, skip_finished))
}

fn run_here(spec: &Spec, mode: Mode, skip_finished: bool) -> Result<Option<Outcome>> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let run_id = run_id(spec);
    // One process per run: a second one (another sweep process, a Slurm task) is told who holds it.
    let lock_path = spec
        .results_dir
        .join(&spec.name)
        .join(format!(".{run_id}.lock"));
    let _run_lock = match crate::lock::try_acquire(&lock_path)? {
        crate::lock::Attempt::Acquired(l) => l,
        crate::lock::Attempt::Held(holder) => {
            return Err(Error::Busy(format!(
                "{}: this run is in progress in another runner process (pid host time: {holder}); wait for it to finish, or stop that process",
                run_dir(spec).display()
            )))
        }
    };
    if skip_finished && is_finished(spec) {
        return Ok(None);
    }
    crate::lock::remove_stale_temps(&spec.results_dir.join(&spec.name));
    let device = crate::device::select(spec.device, spec.tf32)?;
    let device_name = crate::device::describe(&device);

    // data
    let full = load_dataset(spec)?;
    let pool = if spec.limit > 0 {
        std::sync::Arc::new(full.subset(&split::limit_per_class(
            &full.labels,
            full.num_classes,
            spec.limit,
            spec.seed,
        )))
    } else {
        full
    };
    let val_file = match &spec.val_path {
        Some(p) => Some((load_extra(spec, p, false)?, p.clone())),
        None => None,
    };
    let test_file = match &spec.test_path {
        Some(p) => Some((load_extra(spec, p, true)?, p.clone())),
        None => None,
    };
    let classes = spec.num_classes.unwrap_or(pool.num_classes);
    for (d, p) in val_file.iter().chain(test_file.iter()) {
        check_labels(d, classes, p)?;
    }

    // frozen features
    let mut src = FeatureSource {
        spec,
        device: &device,
        net: None,
        weights_id: None,
        cache: spec.cache_dir.as_deref().map(FeatureCache::new),
        mode,
    };
    let pool_f = src.features(&pool, "train")?;
    let mut extract_seconds = pool_f.seconds;
    let mut cache_hit = pool_f.hit;
    // Held-out parts of the pool: validation (unless a file is given) and test (unless a file
    // is given), drawn together per class (or per track) and then divided, as the seed did.
    let all: Vec<usize> = (0..pool.n).collect();
    let val_frac = if val_file.is_some() {
        0.0
    } else {
        spec.val_fraction
    };
    let test_frac = if test_file.is_some() {
        0.0
    } else {
        spec.test_fraction
    };
    let hold = |idx: &[usize], frac: f64, salt: u64| -> (Vec<usize>, Vec<usize>) {
        if frac <= 0.0 {
            return (idx.to_vec(), Vec::new());
        }
        match (&pool.groups, spec.track_split) {
            (Some(g), true) => {
                split::by_group(&pool.labels, g, idx, classes, frac, spec.seed ^ salt)
            }
            _ => split::stratified(&pool.labels, idx, classes, frac, spec.seed ^ salt),
        }
    };
    let (train_idx, held) = hold(&all, val_frac + test_frac, 0);
    let (val_idx, test_idx) = if test_frac > 0.0 && val_frac > 0.0 {
        hold(&held, test_frac / (val_frac + test_frac), 1)
    } else if test_frac > 0.0 {
        (Vec::new(), held)
    } else {
        (held, Vec::new())
    };
    let train_split = to_device(&pool_f.features, Some(&train_idx), &device)?;
    let val_split = match &val_file {
        Some((vd, _)) => {
            let vf = src.features(vd, "val")?;
            extract_seconds += vf.seconds;
            cache_hit &= vf.hit;
            to_device(&vf.features, None, &device)?
        }
        None => to_device(&pool_f.features, Some(&val_idx), &device)?,
    };
    let test_split = match &test_file {
        Some((td, _)) => {
            let tf = src.features(td, "test")?;
            extract_seconds += tf.seconds;
            cache_hit &= tf.hit;
            Some(to_device(&tf.features, None, &device)?)
        }
        None if !test_idx.is_empty() => {
            Some(to_device(&pool_f.features, Some(&test_idx), &device)?)
        }
        None => None,
    };
    drop(pool_f);
    tracing::info!(
        "{}: {} train, {} val{} samples, {classes} classes, on {device_name}",
        spec.name,
        train_split.n,
        val_split.n,
        test_split
            .as_ref()
            .map(|t| format!(", {} test", t.n))
            .unwrap_or_default()
    );

    // model: trainable tail above the freeze point, then the head
    let feature_end = spec.arch.feature_end().max(spec.freeze);
    let (tail, tail_vars, head_in) = if spec.freeze < feature_end {
        let mut net = match src.net.take() {
            Some(n) => n,
            None => load_network(spec, &device)?,
        };
        let vars = net.make_trainable(spec.freeze, feature_end)?;
        let dim: usize = spec.arch.output_shape(feature_end).iter().product();
        (Some((net, spec.freeze, feature_end)), vars, dim)
    } else {
        (
            None,
            Vec::new(),
            spec.arch.output_shape(spec.freeze).iter().product(),
        )
    };
    drop(src);
    let mut init_rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let head = Head::new(head_in, classes, &spec.head, &mut init_rng, &device)?;
    let model = Model {
        tail,
        tail_vars,
        head,
        backbone_dropout: spec.raw.backbone.dropout,
    };

    // results folder
    let mut rd = RunDir::create(&spec.results_dir, &spec.name, &run_id)?;
    let config =
        toml::to_string(&spec.raw).map_err(|e| Error::Other(format!("config.toml: {e}")))?;
    rd.write_file("config.toml", config.as_bytes())?;
    let mut head_meta = std::collections::HashMap::new();
    head_meta.insert("classes".to_string(), classes.to_string());
    head_meta.insert("input_dim".to_string(), head_in.to_string());
    head_meta.insert("run_id".to_string(), run_id.clone());

    let mut task = Task::new(mode, "train", spec.train.epochs as u64, "epochs");
    let kind = crate::device::kind(&device).to_string();
    let head_path = rd.dir.join("head.safetensors");
    let ctx = results::RowContext {
        run_id: &run_id,
        device: &kind,
        device_name: &device_name,
        cache_hit,
        n_train: train_split.n,
        extract_seconds,
    };
    // the best head so far is written while the next epoch trains
    let mut writer = results::BackgroundWriter::new();
    let outcome = train::fit(spec, &model, &train_split, &val_split, &device, |s, m| {
        let row = EpochRow::new(s, &ctx);
        rd.push_epoch(row)?;
        if s.improved {
            writer.write(
                &head_path,
                vars_bytes(&head_path, &m.snapshot()?, head_meta.clone())?,
            )?;
        }
        task.advance(
            1,
            &format!(
                "epoch {}: loss {:.4} acc {:.3} | val loss {:.4} acc {:.3} | {:.2} s",
                s.epoch,
                s.train.loss(),
                s.train.acc(),
                s.val.loss(),
                s.val.acc(),
                s.train_seconds + s.eval_seconds
            ),
        );
        // Ctrl-C: stop after this epoch's row is written.
        Ok(!crate::interrupt::requested())
    })?;
    task.finish();
    writer.finish()?;
    if crate::interrupt::requested() {
        let summary = serde_json::json!({
            "run_id": run_id,
            "name": spec.name,
            "status": "interrupted",
            "started_at": started_at,
            "interrupted_at": now_rfc3339(),
            "epochs_run": outcome.epochs_run,
            "best_epoch": outcome.best_epoch,
            "best_val_acc": outcome.best_val.acc(),
            "device_name": device_name,
            "hostname": hostname(),
        });
        rd.write_file(
            "summary.json",
            serde_json::to_string_pretty(&summary)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        return Err(Error::Interrupted);
    }

    // test with the best epoch's weights
    model.restore(&outcome.best_snapshot)?;
    let eval_batch = spec.train.batch_size.max(512);
    let test = match &test_split {
        Some(t) => Some(model.evaluate(t, eval_batch)?),
        None => None,
    };
    let mut reports = Vec::new();
    for (name, split) in [("val", Some(&val_split)), ("test", test_split.as_ref())] {
        if let Some(s) = split {
            let truth = s.y.to_vec1::<u32>()?;
            reports.push(results::ClassReport::new(
                name,
                classes,
                &truth,
                &model.predict(s, eval_batch)?,
            ));
        }
    }
    results::write_class_reports(&rd.dir, &reports, pool.class_names.as_deref())?;
    let total_seconds = started.elapsed().as_secs_f64();
    let epoch_secs: Vec<f64> = rd.rows().iter().map(|r| r.epoch_seconds).collect();
    let finished_at = now_rfc3339();
    let summary = serde_json::json!({
        "run_id": run_id,
        "name": spec.name,
        "status": "finished",
        "started_at": started_at,
        "finished_at": finished_at,
        "arch": spec.arch.name(),
        "freeze": spec.freeze_name(),
        "classes": classes,
        "n_train": train_split.n,
        "n_val": val_split.n,
        "n_test": test_split.as_ref().map(|t| t.n),
        "epochs_run": outcome.epochs_run,
        "stopped_early": outcome.stopped_early,
        "best_epoch": outcome.best_epoch,
        "best_val_acc": outcome.best_val.acc(),
        "best_val_loss": outcome.best_val.loss(),
        "best_val_top5": outcome.best_val.top5(),
        "test_acc": test.map(|t| t.acc()),
        "test_loss": test.map(|t| t.loss()),
        "test_top5": test.map(|t| t.top5()),
        "cache_hit": cache_hit,
        "extract_seconds": extract_seconds,
        "median_epoch_seconds": results::median(&epoch_secs),
        "total_seconds": total_seconds,
        "device": kind,
        "device_name": device_name,
        "runner_version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("RUNNER_GIT_COMMIT"),
        "candle_version": CANDLE_VERSION,
        "dtype": spec.precision.label(spec.tf32 && !device.is_cpu()),
        "cudnn": cfg!(feature = "cudnn"),
        "threads": candle_core::utils::get_num_threads(),
        "hostname": hostname(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    // learning curves next to the CSV; a failure to draw never fails the run
    let (records, _) = crate::compare::collect(std::slice::from_ref(&rd.dir));
    match crate::plot::curves_svg(&records)
        .and_then(|svg| crate::plot::save(&svg, &rd.dir.join("curves.svg")))
    {
        Ok(()) => {}
        Err(e) => tracing::warn!("curves.svg not drawn: {e}"),
    }
    let row = SummaryRow {
        run_id: run_id.clone(),
        finished_at,
        arch: spec.arch.name().to_string(),
        freeze: spec.freeze_name().to_string(),
        hidden: format!("{:?}", spec.head.hidden),
        optimizer: format!("{:?}", spec.train.optimizer).to_lowercase(),
        lr: spec.train.lr,
        batch_size: spec.train.batch_size,
        epochs: outcome.epochs_run,
        best_epoch: outcome.best_epoch,
        best_val_acc: outcome.best_val.acc(),
        test_acc: test.map(|t| t.acc()),
        median_epoch_seconds: results::median(&epoch_secs),
        total_seconds,
        cache_hit,
        device_name,
    };
    // summary.csv first, then summary.json: the run counts as finished only once both exist
    // (a kill in between reruns it, and its summary.csv row is replaced, not doubled).
    results::append_summary(&spec.results_dir.join(&spec.name).join("summary.csv"), &row)?;
    rd.write_file(
        "summary.json",
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(Some(Outcome {
        run_id,
        dir: rd.dir.clone(),
        best_epoch: outcome.best_epoch,
        best_val_acc: outcome.best_val.acc(),
        test,
        cache_hit,
        total_seconds,
    }))
}
