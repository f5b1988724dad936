//! `runner bench SPEC`: a quick device-to-device comparison without a full run. Times the frozen
//! part on the first `batches` batches of the spec's data (images/s, the first batch dropped as
//! warm-up) and `epochs` head epochs on the features it produced, with the spec's settings. The
//! result is written like a run (`results/<name>/bench-<device>-<time>/epochs.csv`,
//! `config.toml`, `summary.json` with status "bench"), so `runner compare` tables it beside real
//! runs; sweeps ignore it.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::Dataset;
use crate::error::Result;
use crate::features::{load_dataset, load_network, Extractor};
use crate::results::{median, EpochRow, RowContext, RunDir};
use crate::spec::Spec;
use crate::train::{self, head::Head, Model, Split};

pub struct BenchReport {
    pub dir: std::path::PathBuf,
    pub images: usize,
    pub extract_images_per_second: f64,
    pub epoch_seconds: Vec<f64>,
}

pub fn run(spec: &Spec, batches: usize, epochs: usize) -> Result<BenchReport> {
    crate::threads::in_worker_pool(|| run_here(spec, batches, epochs))
}

fn run_here(spec: &Spec, batches: usize, epochs: usize) -> Result<BenchReport> {
    crate::spec::budget::check_memory(spec)?;
    let device = crate::device::select(spec.device, spec.tf32)?;
    let device_name = crate::device::describe(&device);
    let data = load_dataset(spec)?;
    let batch = spec.extract_batch_for(&device);
    let n = (batches.max(1) * batch).min(data.n);
    let data = data.subset(&(0..n).collect::<Vec<_>>());
    let (x, times) = time_extraction(spec, &data, batch, &device)?;
    let timed = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let rates: Vec<f64> = timed
        .iter()
        .map(|(b, s)| *b as f64 / s.max(1e-12))
        .collect();
    let ips = median(&rates);
    let extract_seconds: f64 = times.iter().map(|t| t.1).sum();

    let split = Split::new(x, &data.labels, &device)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("bench-{}-{stamp}", crate::device::kind(&device));
    let mut rd = RunDir::start(spec, &id)?;
    let ctx = RowContext {
        run_id: &id,
        device: crate::device::kind(&device),
        device_name: &device_name,
        cache_hit: false,
        n_train: split.n,
        extract_seconds,
    };
    let epoch_seconds = time_head(spec, epochs, &split, data.num_classes, &mut rd, &ctx)?;
    let summary = serde_json::json!({
        "run_id": id,
        "name": spec.name,
        "status": "bench",
        "arch": spec.arch.name(),
        "freeze": spec.freeze_name(),
        "n_train": n,
        "extract_seconds": extract_seconds,
        "extract_images_per_second": ips,
        "median_epoch_seconds": median(&epoch_seconds),
        "device_name": device_name,
        "dtype": spec.precision.label(spec.tf32 && !device.is_cpu()),
    });
    rd.write_file(
        "summary.json",
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(BenchReport {
        dir: rd.dir.clone(),
        images: n,
        extract_images_per_second: ips,
        epoch_seconds,
    })
}

/// The frozen part over `data` batch by batch, each batch timed alone (device synchronised):
/// the features and (images, seconds) per batch.
fn time_extraction(
    spec: &Spec,
    data: &Dataset,
    batch: usize,
    device: &Device,
) -> Result<(Tensor, Vec<(usize, f64)>)> {
    let net = load_network(spec, device)?;
    let ex = Extractor::new(spec, &net, batch, device);
    let mut feats = Vec::new();
    let mut times = Vec::new();
    let mut start = 0;
    while start < data.n {
        let b = batch.min(data.n - start);
        device.synchronize()?;
        let t = Instant::now();
        let f = ex.batch(data, start, b)?;
        device.synchronize()?;
        times.push((b, t.elapsed().as_secs_f64()));
        feats.push(f);
        start += b;
    }
    Ok((Tensor::cat(&feats, 0)?, times))
}

/// `epochs` epochs of a fresh head on `split` (trained and evaluated on it), a row each in
/// `rd`; the seconds of each epoch.
fn time_head(
    spec: &Spec,
    epochs: usize,
    split: &Split,
    classes: usize,
    rd: &mut RunDir,
    ctx: &RowContext<'_>,
) -> Result<Vec<f64>> {
    let device = split.device();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let dim: usize = spec.feature_shape().iter().product();
    let head = Head::new(dim, classes, &spec.head, None, &mut rng, device)?;
    let model = Model {
        tail: None,
        tail_vars: vec![],
        head,
        backbone_dropout: 0.0,
        tail_pool: crate::spec::Pool::None,
        backends: spec.backends,
    };
    let mut bench_spec = spec.clone();
    bench_spec.train.epochs = epochs.max(1);
    bench_spec.train.early_stopping.patience = 0;
    let mut epoch_seconds = Vec::new();
    train::fit(&bench_spec, &model, split, split, device, |s, _| {
        epoch_seconds.push(s.train_seconds + s.eval_seconds);
        rd.push_epoch(EpochRow::new(s, ctx))?;
        Ok(true)
    })?;
    Ok(epoch_seconds)
}
