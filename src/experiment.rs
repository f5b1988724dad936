//! One experiment run, end to end, as a short list of named stages (`run_here`): data
//! (`features::load_run_data`) -> frozen features, cached (`features::FeatureSource`) ->
//! trainable tail + head (`train::Model::assemble`) -> epochs (`train::fit`, a row of
//! `epochs.csv` each) -> best-epoch evaluation -> results (`results::summary`). Each stage is a
//! function in the module it belongs to; this file only orders them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::features::{load_run_data, FeatureSource, RunData, RunFeatures};
use crate::fsio::{try_acquire, Attempt, BackgroundWriter, Lock};
use crate::progress::{Mode, Task};
use crate::record::Sums;
use crate::results::summary::{self, DataFacts, RunFacts, TrainResult};
use crate::results::{self, env, ClassReport, EpochRow, RowContext, RunDir};
use crate::spec::Spec;
use crate::train::{self, FitOutcome, Model};

/// A stable id for a fully resolved spec: the same config gets the same id on any machine.
/// For a sweep point, a readable label of its overrides follows the hash.
/// The `[run]` section (device, batch for extraction, where files go) is left out: it changes
/// neither what is computed nor, up to rounding, the numbers, and a sweep's workers each set
/// their own device.
pub fn run_id(spec: &Spec) -> String {
    // Where results go and how features are cached do not change them; the number format does.
    let text = spec.identity_toml();
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

/// Run one experiment (on a worker of a rayon pool: see `device::in_worker_pool`).
pub fn run(spec: &Spec, mode: Mode) -> Result<Outcome> {
    crate::threads::in_worker_pool(|| run_here(spec, mode, false))
        .and_then(|o| o.ok_or_else(|| Error::Other("run skipped".into())))
}

/// Run a sweep point; with `skip_finished`, `None` when it is finished (checked under the run's
/// lock, so a point another process just finished is not run again).
pub fn run_point(spec: &Spec, mode: Mode, skip_finished: bool) -> Result<Option<Outcome>> {
    crate::threads::in_worker_pool(|| run_here(spec, mode, skip_finished))
}

/// The stages of one run, in order: lock the run, load the data, get the frozen features,
/// assemble the model, train with a row per epoch, evaluate the best epoch, write the results.
fn run_here(spec: &Spec, mode: Mode, skip_finished: bool) -> Result<Option<Outcome>> {
    let started = Instant::now();
    let started_at = env::now_rfc3339();
    let run_id = run_id(spec);
    crate::spec::budget::check_memory(spec)?;
    let _run_lock = lock_run(spec, &run_id)?;
    if skip_finished && is_finished(spec) {
        return Ok(None);
    }
    crate::fsio::remove_stale_temps(&spec.results_dir.join(&spec.name));
    let device = crate::device::select(spec.device, spec.tf32)?;
    let device_name = crate::device::describe(&device);

    let data = load_run_data(spec)?;
    let mut source = FeatureSource::new(spec, &device, mode);
    let feats = source.for_run(&data)?;
    log_sizes(spec, &feats, data.classes, &device_name);
    let net = match train::has_tail(spec) {
        true => Some(source.into_network()?),
        false => None,
    };
    let model = Model::assemble(spec, net, data.classes, head_norm(spec, &feats)?, &device)?;

    let mut rd = RunDir::start(spec, &run_id)?;
    let facts = RunFacts {
        spec,
        run_id: &run_id,
        started_at: &started_at,
        device_kind: crate::device::kind(&device),
        device_name: &device_name,
        dtype: spec.precision.label(spec.tf32 && !device.is_cpu()),
    };
    let fit = train_epochs(spec, &model, &feats, &mut rd, &facts, data.classes, mode)?;
    let trained = TrainResult {
        epochs_run: fit.epochs_run,
        stopped_early: fit.stopped_early,
        best_epoch: fit.best_epoch,
        best_val: fit.best_val,
    };
    if crate::interrupt::requested() {
        summary::write_interrupted(&rd, &facts, &trained)?;
        return Err(Error::Interrupted);
    }

    model.restore(&fit.best_snapshot)?;
    let test = evaluate_best(spec, &model, &feats, &rd, &data)?;
    draw_curves(&rd);
    let total_seconds = started.elapsed().as_secs_f64();
    let sizes = DataFacts {
        classes: data.classes,
        n_train: feats.train.n,
        n_val: feats.val.n,
        n_test: feats.test.as_ref().map(|t| t.n),
        cache_hit: feats.cache_hit,
        extract_seconds: feats.extract_seconds,
    };
    summary::write_finished(&rd, &facts, &trained, &sizes, test, total_seconds)?;
    Ok(Some(Outcome {
        run_id,
        dir: rd.dir.clone(),
        best_epoch: fit.best_epoch,
        best_val_acc: fit.best_val.acc(),
        test,
        cache_hit: feats.cache_hit,
        total_seconds,
    }))
}

/// How large the head's input rows are, for `head.init_std = "auto"`: known before training
/// when the head reads the frozen features (not through a trainable tail).
fn head_norm(spec: &Spec, feats: &RunFeatures) -> Result<Option<f64>> {
    if train::has_tail(spec) || spec.head.init_std != crate::spec::InitStd::Auto {
        return Ok(None);
    }
    let norm = train::rms_row_norm(&feats.train)?;
    let (first, _) = spec.head.init_std.resolve(Some(norm));
    tracing::info!(
        "head.init_std = \"auto\": {first:.3e} for the first layer (features' RMS row norm {norm:.1})"
    );
    Ok(Some(norm))
}

/// One process per run: a second one (another sweep process, a Slurm task) is told who holds it.
fn lock_run(spec: &Spec, run_id: &str) -> Result<Lock> {
    let path = spec
        .results_dir
        .join(&spec.name)
        .join(format!(".{run_id}.lock"));
    match try_acquire(&path)? {
        Attempt::Acquired(l) => Ok(l),
        Attempt::Held(holder) => Err(Error::Busy(format!(
            "{}: this run is in progress in another runner process (pid host time: {holder}); wait for it to finish, or stop that process",
            run_dir(spec).display()
        ))),
    }
}

fn log_sizes(spec: &Spec, f: &RunFeatures, classes: usize, device_name: &str) {
    tracing::info!(
        "{}: {} train, {} val{} samples, {classes} classes, on {device_name}",
        spec.name,
        f.train.n,
        f.val.n,
        f.test
            .as_ref()
            .map(|t| format!(", {} test", t.n))
            .unwrap_or_default()
    );
}

/// The epochs: a row of `epochs.csv` after each, the best head so far written (on a background
/// thread, while the next epoch trains), progress shown; Ctrl-C stops after an epoch's row.
fn train_epochs(
    spec: &Spec,
    model: &Model,
    feats: &RunFeatures,
    rd: &mut RunDir,
    facts: &RunFacts<'_>,
    classes: usize,
    mode: Mode,
) -> Result<FitOutcome> {
    let mut head_meta = HashMap::new();
    head_meta.insert("classes".to_string(), classes.to_string());
    head_meta.insert("input_dim".to_string(), spec.head_input_dim().to_string());
    head_meta.insert("run_id".to_string(), facts.run_id.to_string());
    let mut task = Task::new(mode, "train", spec.train.epochs as u64, "epochs").each_step();
    let head_path = rd.dir.join("head.safetensors");
    let ctx = RowContext {
        run_id: facts.run_id,
        device: facts.device_kind,
        device_name: facts.device_name,
        cache_hit: feats.cache_hit,
        n_train: feats.train.n,
        extract_seconds: feats.extract_seconds,
    };
    let mut writer = BackgroundWriter::new();
    let device = feats.train.device().clone();
    let outcome = train::fit(spec, model, &feats.train, &feats.val, &device, |s, m| {
        rd.push_epoch(EpochRow::new(s, &ctx))?;
        if s.improved {
            let bytes = results::safetensors_bytes(&head_path, &m.snapshot()?, head_meta.clone())?;
            writer.write(&head_path, bytes)?;
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
        Ok(!crate::interrupt::requested())
    })?;
    task.finish();
    writer.finish()?;
    Ok(outcome)
}

/// Test metrics of the (restored) best model, and per-class reports of validation and test.
fn evaluate_best(
    spec: &Spec,
    model: &Model,
    feats: &RunFeatures,
    rd: &RunDir,
    data: &RunData,
) -> Result<Option<Sums>> {
    let eval_batch = spec.train.batch_size.max(512);
    let test = match &feats.test {
        Some(t) => Some(model.evaluate(t, eval_batch)?),
        None => None,
    };
    let mut reports = Vec::new();
    for (name, split) in [("val", Some(&feats.val)), ("test", feats.test.as_ref())] {
        if let Some(s) = split {
            let truth = s.y.to_vec1::<u32>()?;
            let predicted = model.predict(s, eval_batch)?;
            reports.push(ClassReport::new(name, data.classes, &truth, &predicted));
        }
    }
    results::write_class_reports(&rd.dir, &reports, data.pool.class_names.as_deref())?;
    Ok(test)
}

/// Learning curves next to the CSV; a failure to draw never fails the run.
fn draw_curves(rd: &RunDir) {
    let (records, _) = crate::compare::collect(std::slice::from_ref(&rd.dir));
    if let Err(e) = crate::plot::curves_svg(&records)
        .and_then(|svg| crate::plot::save(&svg, &rd.dir.join("curves.svg")))
    {
        tracing::warn!("curves.svg not drawn: {e}");
    }
}
