//! A run's `summary.json` (finished or interrupted) and its row of the experiment's
//! `summary.csv`. A run counts as finished once both are written: `summary.csv` first, then
//! `summary.json`, so a kill in between reruns it and its `summary.csv` row is replaced, not
//! doubled.

use super::{append_summary, env, median, RunDir, SummaryRow};
use crate::error::Result;
use crate::record::Sums;
use crate::spec::Spec;

/// Where, when and on what a run ran.
pub struct RunFacts<'a> {
    pub spec: &'a Spec,
    pub run_id: &'a str,
    pub started_at: &'a str,
    /// `cpu` or `cuda`.
    pub device_kind: &'a str,
    pub device_name: &'a str,
    /// The frozen part's number format as the cache key writes it (`f32`, `tf32`, `bf16`...).
    pub dtype: String,
}

/// How training went.
pub struct TrainResult {
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub best_epoch: usize,
    pub best_val: Sums,
}

/// The sizes of a run's data and how its features were had.
pub struct DataFacts {
    pub classes: usize,
    pub n_train: usize,
    pub n_val: usize,
    pub n_test: Option<usize>,
    pub cache_hit: bool,
    pub extract_seconds: f64,
}

fn write_json(rd: &RunDir, v: &serde_json::Value) -> Result<()> {
    rd.write_file(
        "summary.json",
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// `summary.json` of a run stopped by Ctrl-C after `t.epochs_run` epochs.
pub fn write_interrupted(rd: &RunDir, f: &RunFacts<'_>, t: &TrainResult) -> Result<()> {
    write_json(
        rd,
        &serde_json::json!({
            "run_id": f.run_id,
            "name": f.spec.name,
            "status": "interrupted",
            "started_at": f.started_at,
            "interrupted_at": env::now_rfc3339(),
            "epochs_run": t.epochs_run,
            "best_epoch": t.best_epoch,
            "best_val_acc": t.best_val.acc(),
            "device_name": f.device_name,
            "hostname": env::hostname(),
        }),
    )
}

/// The `summary.csv` row and `summary.json` of a finished run (`test`: the best epoch's test
/// metrics, if there is a test set).
pub fn write_finished(
    rd: &RunDir,
    f: &RunFacts<'_>,
    t: &TrainResult,
    d: &DataFacts,
    test: Option<Sums>,
    total_seconds: f64,
) -> Result<()> {
    let spec = f.spec;
    let epoch_secs: Vec<f64> = rd.rows().iter().map(|r| r.epoch_seconds).collect();
    let finished_at = env::now_rfc3339();
    let mut summary = serde_json::json!({
        "run_id": f.run_id,
        "name": spec.name,
        "status": "finished",
        "started_at": f.started_at,
        "finished_at": finished_at,
        "arch": spec.arch.name(),
        "freeze": spec.freeze_name(),
        "classes": d.classes,
        "n_train": d.n_train,
        "n_val": d.n_val,
        "n_test": d.n_test,
        "epochs_run": t.epochs_run,
        "stopped_early": t.stopped_early,
        "best_epoch": t.best_epoch,
        "best_val_acc": t.best_val.acc(),
        "best_val_loss": t.best_val.loss(),
        "best_val_top5": t.best_val.top5(),
        "test_acc": test.map(|t| t.acc()),
        "test_loss": test.map(|t| t.loss()),
        "test_top5": test.map(|t| t.top5()),
        "cache_hit": d.cache_hit,
        "extract_seconds": d.extract_seconds,
        "median_epoch_seconds": median(&epoch_secs),
        "total_seconds": total_seconds,
        "device": f.device_kind,
        "device_name": f.device_name,
        "dtype": f.dtype,
        "peak_rss_bytes": env::peak_rss_bytes(),
    });
    if let (Some(s), serde_json::Value::Object(m)) = (
        summary.as_object_mut(),
        env::build_and_machine(&f.spec.backends),
    ) {
        s.extend(m);
    }
    let row = SummaryRow {
        run_id: f.run_id.to_string(),
        finished_at,
        arch: spec.arch.name().to_string(),
        freeze: spec.freeze_name().to_string(),
        hidden: format!("{:?}", spec.head.hidden),
        optimizer: format!("{:?}", spec.train.optimizer).to_lowercase(),
        lr: spec.train.lr,
        batch_size: spec.train.batch_size,
        epochs: t.epochs_run,
        best_epoch: t.best_epoch,
        best_val_acc: t.best_val.acc(),
        test_acc: test.map(|t| t.acc()),
        median_epoch_seconds: median(&epoch_secs),
        total_seconds,
        cache_hit: d.cache_hit,
        device_name: f.device_name.to_string(),
    };
    append_summary(&spec.results_dir.join(&spec.name).join("summary.csv"), &row)?;
    write_json(rd, &summary)
}
