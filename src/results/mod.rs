//! Run folders and result files: the run folder (`RunDir`) with its per-epoch CSV, the
//! sweep's `summary.csv`, class reports, and the environment a run records
//! (`results::env`). Every file goes through `fsio::write_atomic` or `fsio::AtomicFile`.

pub mod env;
pub mod summary;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsio::write_atomic;

/// A safetensors file of named f32 tensors with metadata `meta` (`path` only names it in errors).
pub fn safetensors_bytes(
    path: &Path,
    named: &[(String, candle_core::Tensor)],
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

/// The columns of `epochs.csv`, in order.
pub const EPOCH_COLUMNS: &[&str] = &[
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "lr",
    "epoch_seconds",
    "train_seconds",
    "eval_seconds",
    "samples_per_second",
    "extract_seconds",
    "cache_hit",
    "device",
    "device_name",
    "train_top5",
    "run_id",
    "improved",
];

/// One row of `epochs.csv`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub val_top5: f64,
    pub lr: f64,
    pub epoch_seconds: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub samples_per_second: f64,
    pub extract_seconds: f64,
    pub cache_hit: bool,
    pub device: String,
    pub device_name: String,
    pub train_top5: f64,
    pub run_id: String,
    pub improved: bool,
}

/// Where an epoch ran and how its features were obtained (the same for every row of a run).
pub struct RowContext<'a> {
    pub run_id: &'a str,
    pub device: &'a str,
    pub device_name: &'a str,
    pub cache_hit: bool,
    /// training samples per epoch
    pub n_train: usize,
    /// extraction time, counted in epoch 1
    pub extract_seconds: f64,
}

impl EpochRow {
    pub fn new(s: &crate::record::EpochStats, c: &RowContext<'_>) -> EpochRow {
        let extract = if s.epoch == 1 { c.extract_seconds } else { 0.0 };
        EpochRow {
            epoch: s.epoch,
            train_loss: s.train.loss(),
            train_acc: s.train.acc(),
            val_loss: s.val.loss(),
            val_acc: s.val.acc(),
            val_top5: s.val.top5(),
            lr: s.lr,
            epoch_seconds: extract + s.train_seconds + s.eval_seconds,
            train_seconds: s.train_seconds,
            eval_seconds: s.eval_seconds,
            samples_per_second: c.n_train as f64 / s.train_seconds.max(1e-9),
            extract_seconds: extract,
            cache_hit: c.cache_hit,
            device: c.device.to_string(),
            device_name: c.device_name.to_string(),
            train_top5: s.train.top5(),
            run_id: c.run_id.to_string(),
            improved: s.improved,
        }
    }
}

/// A run's folder: `<results_dir>/<name>/<run_id>/`.
pub struct RunDir {
    pub dir: PathBuf,
    rows: Vec<EpochRow>,
}

impl RunDir {
    /// Create (or empty) the run folder.
    ///
    /// An earlier run's folder is first renamed out of the way (one atomic step) to a hidden
    /// `.<run_id>.replaced-<pid>` beside it, its `summary.json` (the mark of a finished run) is
    /// deleted, then the rest. Deleting in place could leave, after a kill, a folder whose
    /// `summary.json` says finished while its `epochs.csv` is gone; this way a kill leaves either
    /// the whole old run, hidden, or a hidden folder without the mark. Such leftovers of this
    /// run id are removed here too.
    pub fn create(results_dir: &Path, name: &str, run_id: &str) -> Result<RunDir> {
        let parent = results_dir.join(name);
        let dir = parent.join(run_id);
        let prefix = format!(".{run_id}.replaced-");
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    discard(&e.path())?;
                }
            }
        }
        if dir.exists() {
            let old = parent.join(format!("{prefix}{}", std::process::id()));
            std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
            discard(&old)?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(RunDir {
            dir,
            rows: Vec::new(),
        })
    }

    /// Create the run folder of a spec's run and write its resolved `config.toml`.
    pub fn start(spec: &crate::spec::Spec, run_id: &str) -> Result<RunDir> {
        let rd = RunDir::create(&spec.results_dir, &spec.name, run_id)?;
        let config = spec.resolved_toml()?;
        rd.write_file("config.toml", config.as_bytes())?;
        Ok(rd)
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.dir.join(name), bytes)
    }

    /// Append a row to `epochs.csv`: the whole file is rewritten atomically, so at every moment
    /// it is a valid CSV of the finished epochs.
    pub fn push_epoch(&mut self, row: EpochRow) -> Result<()> {
        self.rows.push(row);
        let path = self.dir.join("epochs.csv");
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &self.rows {
            w.serialize(r)
                .map_err(|e| Error::Other(format!("epochs.csv: {e}")))?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| Error::Other(format!("epochs.csv: {e}")))?;
        write_atomic(&path, &bytes)
    }

    pub fn rows(&self) -> &[EpochRow] {
        &self.rows
    }
}

/// Delete a run folder that was renamed out of the way: its finished mark first.
fn discard(old: &Path) -> Result<()> {
    match std::fs::remove_file(old.join("summary.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(old.join("summary.json"), e)),
    }
    std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))
}

/// The row a finished run adds to `<results_dir>/<name>/summary.csv`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SummaryRow {
    pub run_id: String,
    pub finished_at: String,
    pub arch: String,
    pub freeze: String,
    pub hidden: String,
    pub optimizer: String,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub best_epoch: usize,
    pub best_val_acc: f64,
    pub test_acc: Option<f64>,
    pub median_epoch_seconds: f64,
    pub total_seconds: f64,
    pub cache_hit: bool,
    pub device_name: String,
}

/// Add a run's row to `summary.csv` (one row per run id: a rerun replaces its old row).
/// Concurrent runs (sweep workers, Slurm tasks) take turns under `summary.csv.lock`, and the file
/// is rewritten whole through a temporary file and a rename, so a reader or a kill at any moment
/// sees the old table or the new one, never a half row.
pub fn append_summary(path: &Path, row: &SummaryRow) -> Result<()> {
    let lock_path = path.with_file_name(format!(
        "{}.lock",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _lock = crate::fsio::lock::acquire(&lock_path)?;
    let err = |e: csv::Error| Error::format(path, format!("summary.csv: {e}"));
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let mut fresh = csv::WriterBuilder::new()
        .has_headers(true)
        .from_writer(Vec::new());
    fresh.serialize(row).map_err(err)?;
    let fresh = fresh
        .into_inner()
        .map_err(|e| Error::Other(format!("summary.csv: {e}")))?;
    let mut lines = fresh.split(|&b| b == b'\n');
    let header = lines.next().unwrap_or_default().to_vec();
    let new_row: Vec<u8> = lines.flat_map(|l| l.iter().copied()).collect();
    match std::fs::read(path) {
        Ok(old) if !old.is_empty() => {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(old.as_slice());
            w.write_record(r.byte_headers().map_err(err)?)
                .map_err(err)?;
            for rec in r.byte_records() {
                let rec = rec.map_err(err)?;
                if rec.get(0) != Some(row.run_id.as_bytes()) {
                    w.write_record(&rec).map_err(err)?;
                }
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut bytes = w
        .into_inner()
        .map_err(|e| Error::Other(format!("summary.csv: {e}")))?;
    if bytes.is_empty() {
        bytes.extend_from_slice(&header);
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(&new_row);
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Median of a non-empty slice (0 for an empty one).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Per-class accuracy and the confusion matrix of one split, in long form. Stored sparsely
/// (support and hits per class, non-zero cells only): memory grows with classes + samples, not
/// classes squared, whatever the label set.
pub struct ClassReport {
    pub split: String,
    /// Samples per true class.
    pub support: Vec<u64>,
    /// Correct predictions per true class.
    pub correct: Vec<u64>,
    /// (true, predicted) -> count, non-zero cells only.
    pub cells: std::collections::BTreeMap<(u32, u32), u64>,
}

impl ClassReport {
    pub fn new(split: &str, classes: usize, truth: &[u32], predicted: &[u32]) -> ClassReport {
        let mut support = vec![0u64; classes];
        let mut correct = vec![0u64; classes];
        let mut cells = std::collections::BTreeMap::new();
        for (&t, &p) in truth.iter().zip(predicted) {
            if (t as usize) >= classes || (p as usize) >= classes {
                continue;
            }
            support[t as usize] += 1;
            if t == p {
                correct[t as usize] += 1;
            }
            *cells.entry((t, p)).or_insert(0) += 1;
        }
        ClassReport {
            split: split.to_string(),
            support,
            correct,
            cells,
        }
    }
}

/// Write `per_class.csv` (split, class, name, support, correct, accuracy) and `confusion.csv`
/// (split, true, predicted, count; non-zero cells only) for the given reports.
pub fn write_class_reports(
    dir: &Path,
    reports: &[ClassReport],
    names: Option<&[String]>,
) -> Result<()> {
    let mut pc = csv::Writer::from_writer(Vec::new());
    let mut cm = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| Error::Other(format!("class reports: {e}"));
    pc.write_record(["split", "class", "name", "support", "correct", "accuracy"])
        .map_err(err)?;
    cm.write_record(["split", "true", "predicted", "count"])
        .map_err(err)?;
    for r in reports {
        for (t, (&support, &correct)) in r.support.iter().zip(&r.correct).enumerate() {
            let acc = if support > 0 {
                correct as f64 / support as f64
            } else {
                f64::NAN
            };
            let name = names.and_then(|n| n.get(t)).cloned().unwrap_or_default();
            pc.write_record([
                r.split.clone(),
                t.to_string(),
                name,
                support.to_string(),
                correct.to_string(),
                acc.to_string(),
            ])
            .map_err(err)?;
        }
        for (&(t, p), &c) in &r.cells {
            cm.write_record([r.split.clone(), t.to_string(), p.to_string(), c.to_string()])
                .map_err(err)?;
        }
    }
    let bytes = |w: csv::Writer<Vec<u8>>| {
        w.into_inner()
            .map_err(|e| Error::Other(format!("class reports: {e}")))
    };
    write_atomic(&dir.join("per_class.csv"), &bytes(pc)?)?;
    write_atomic(&dir.join("confusion.csv"), &bytes(cm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_run_folder_goes_whole_and_leftovers_of_killed_replacements_go_too() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("exp");
        // a finished earlier run, and what a replacement killed midway left beside it
        let old = parent.join("r1");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("summary.json"), r#"{"status":"finished"}"#).unwrap();
        std::fs::write(old.join("epochs.csv"), "epoch\n1\n").unwrap();
        let killed = parent.join(".r1.replaced-12345");
        std::fs::create_dir_all(&killed).unwrap();
        std::fs::write(killed.join("head.safetensors"), b"x").unwrap();
        // another run id's folder is not touched
        std::fs::create_dir_all(parent.join("r2")).unwrap();

        let rd = RunDir::create(d.path(), "exp", "r1").unwrap();
        assert_eq!(rd.dir, old);
        assert!(old.is_dir());
        assert_eq!(
            std::fs::read_dir(&old).unwrap().count(),
            0,
            "a fresh folder"
        );
        let mut left: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["r1", "r2"]);
    }
}
