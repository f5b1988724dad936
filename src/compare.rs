//! `runner compare`: results from any number of machines, copied together, as one table of
//! "which device, which settings, how fast, how good".
//!
//! Inputs are run folders (or folders holding them, searched recursively), `epochs.csv` files
//! and `summary.csv` files. A run's settings come from its `config.toml` and `summary.json` when
//! present. Epoch times are medians over epochs 2..n: epoch 1 includes warm-up and, on a cache
//! miss, the feature extraction. Files that cannot be read are reported and skipped; the rest is
//! still shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::results::median;

/// One run as far as the comparison is concerned.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub source: PathBuf,
    pub keys: BTreeMap<String, String>,
    /// epoch seconds of epochs 2..n (all epochs when there is only one)
    pub epoch_seconds: Vec<f64>,
    pub samples_per_second: Vec<f64>,
    pub extract_images: f64,
    pub extract_seconds: f64,
    pub best_val_acc: Option<f64>,
    pub test_acc: Option<f64>,
    /// (epoch, val_acc, val_loss) per epoch, for learning curves
    pub curve: Vec<(f64, f64, f64)>,
    /// the run folder's name (run id, with a sweep point's label)
    pub label: String,
    /// every setting of the run's `config.toml` by dotted key (`train.lr`, `head.init_std`),
    /// as text: what the report's swept-settings charts read
    pub settings: BTreeMap<String, String>,
}

/// The grouping keys `--by` may name.
pub const KEYS: &[&str] = &[
    "device_name",
    "experiment",
    "backbone",
    "freeze",
    "output",
    "batch_size",
    "dtype",
    "lr",
    "hidden",
    "optimizer",
];
pub const DEFAULT_BY: &[&str] = &[
    "device_name",
    "experiment",
    "backbone",
    "freeze",
    "batch_size",
    "dtype",
];

fn find_inputs(p: &Path, out: &mut Vec<PathBuf>, warnings: &mut Vec<String>) {
    if p.is_file() {
        out.push(p.to_path_buf());
        return;
    }
    let Ok(rd) = std::fs::read_dir(p) else {
        warnings.push(format!("{}: not a readable file or folder", p.display()));
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for e in entries {
        let name = e
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if e.is_dir() && !name.starts_with('.') {
            find_inputs(&e, out, warnings);
        } else if name == "epochs.csv" {
            out.push(e);
        }
    }
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn num(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

fn run_from_epochs(path: &Path) -> std::result::Result<RunRecord, String> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let headers = rdr.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(ep), Some(es)) = (col("epoch_seconds"), col("epoch")) else {
        return Err("has no epoch/epoch_seconds columns (not a runner epochs.csv?)".into());
    };
    let (sps, dev, xs) = (
        col("samples_per_second"),
        col("device_name"),
        col("extract_seconds"),
    );
    let (va, vl) = (col("val_acc"), col("val_loss"));
    let mut curve = Vec::new();
    let mut rows = Vec::new();
    for (i, r) in rdr.records().enumerate() {
        let r = r.map_err(|e| format!("row {}: {e}", i + 2))?;
        let get = |c: Option<usize>| c.and_then(|c| r.get(c)).and_then(|v| v.parse::<f64>().ok());
        let epoch = get(Some(es)).ok_or_else(|| format!("row {}: bad epoch", i + 2))?;
        if let (Some(a), Some(l)) = (get(va), get(vl)) {
            curve.push((epoch, a, l));
        }
        rows.push((
            epoch,
            get(Some(ep)),
            get(sps),
            dev.and_then(|c| r.get(c)).map(String::from),
            get(xs),
        ));
    }
    if rows.is_empty() {
        return Err("has no epochs".into());
    }
    // epochs 2..n (all of them when there is only one)
    let first_kept = if rows.len() > 1 {
        2.0
    } else {
        f64::NEG_INFINITY
    };
    let later: Vec<_> = rows.iter().filter(|r| r.0 >= first_kept).collect();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut rec = RunRecord {
        source: path.to_path_buf(),
        curve,
        label: dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        epoch_seconds: later.iter().filter_map(|r| r.1).collect(),
        samples_per_second: later.iter().filter_map(|r| r.2).collect(),
        extract_seconds: rows.iter().filter_map(|r| r.4).sum(),
        ..Default::default()
    };
    let device = rows[0].3.clone().unwrap_or_else(|| "?".into());
    rec.keys.insert("device_name".into(), device);
    let experiment = dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "?".into());
    rec.keys.insert("experiment".into(), experiment);
    settings_from_config(dir, &mut rec);
    rec.keys
        .entry("dtype".into())
        .or_insert_with(|| "f32".into());
    results_from_summary(dir, &mut rec);
    Ok(rec)
}

/// The settings a run folder's `config.toml` records, as grouping keys.
fn settings_from_config(dir: &Path, rec: &mut RunRecord) {
    if let Ok(text) = std::fs::read_to_string(dir.join("config.toml")) {
        if let Ok(cfg) = toml::from_str::<toml::Table>(&text) {
            flatten_settings("", &cfg, &mut rec.settings);
            let get = |sec: &str, key: &str| {
                cfg.get(sec).and_then(|s| s.get(key)).map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            };
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    rec.keys.insert(k.into(), v);
                }
            };
            put(
                "experiment",
                cfg.get("name").and_then(|v| v.as_str()).map(String::from),
            );
            put("backbone", get("backbone", "arch"));
            put("freeze", get("backbone", "freeze"));
            put(
                "output",
                effective_output(
                    get("backbone", "arch"),
                    get("backbone", "freeze"),
                    get("backbone", "output"),
                ),
            );
            put("batch_size", get("train", "batch_size"));
            put("lr", get("train", "lr"));
            put("hidden", get("head", "hidden"));
            put("optimizer", get("train", "optimizer"));
        }
    }
}

/// `table`'s values by dotted key, as text (strings without their quotes).
fn flatten_settings(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_settings(&key, t, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

/// The layer the head read: `backbone.output` when the file sets it, else the architecture's
/// default (its last feature layer, or `freeze` when that is above it).
fn effective_output(
    arch: Option<String>,
    freeze: Option<String>,
    output: Option<String>,
) -> Option<String> {
    if let Some(o) = output.filter(|o| !o.is_empty()) {
        return Some(o);
    }
    let a = crate::arch::Arch::parse(arch.as_deref()?)?;
    let f = a.layer_index(freeze.as_deref()?)?;
    Some(a.layers()[a.feature_end().max(f)].to_string())
}

/// Best validation and test accuracy, number format and extracted images from `summary.json`.
fn results_from_summary(dir: &Path, rec: &mut RunRecord) {
    if let Some(s) = read_json(&dir.join("summary.json")) {
        rec.best_val_acc = num(&s["best_val_acc"]);
        rec.test_acc = num(&s["test_acc"]);
        if let Some(d) = s["dtype"].as_str() {
            rec.keys.insert("dtype".into(), d.into());
        }
        if rec.extract_seconds > 0.0 {
            let n = ["n_train", "n_val", "n_test"]
                .iter()
                .filter_map(|k| s[*k].as_f64())
                .sum::<f64>();
            rec.extract_images = n;
        }
    }
}

fn runs_from_summary(path: &Path) -> std::result::Result<Vec<RunRecord>, String> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let headers = rdr.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    if col("median_epoch_seconds").is_none() {
        return Err("has no median_epoch_seconds column (not a runner summary.csv?)".into());
    }
    let experiment = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "?".into());
    let mut out = Vec::new();
    for (i, r) in rdr.records().enumerate() {
        let r = r.map_err(|e| format!("row {}: {e}", i + 2))?;
        let s = |name: &str| col(name).and_then(|c| r.get(c)).map(String::from);
        let f = |name: &str| s(name).and_then(|v| v.parse::<f64>().ok());
        let mut rec = RunRecord {
            source: path.to_path_buf(),
            ..Default::default()
        };
        rec.epoch_seconds = f("median_epoch_seconds").into_iter().collect();
        rec.best_val_acc = f("best_val_acc");
        rec.test_acc = f("test_acc");
        for (k, c) in [
            ("device_name", "device_name"),
            ("backbone", "arch"),
            ("freeze", "freeze"),
            ("batch_size", "batch_size"),
            ("lr", "lr"),
            ("hidden", "hidden"),
            ("optimizer", "optimizer"),
        ] {
            rec.keys
                .insert(k.into(), s(c).unwrap_or_else(|| "?".into()));
        }
        rec.keys.insert("experiment".into(), experiment.clone());
        rec.keys.insert("dtype".into(), "f32".into());
        out.push(rec);
    }
    Ok(out)
}

/// Read every run under `paths`; unreadable inputs become warnings.
pub fn collect(paths: &[PathBuf]) -> (Vec<RunRecord>, Vec<String>) {
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for p in paths {
        find_inputs(p, &mut files, &mut warnings);
    }
    let mut runs = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let r = if name == "summary.csv" {
            runs_from_summary(&f)
        } else {
            run_from_epochs(&f).map(|r| vec![r])
        };
        match r {
            Ok(v) => runs.extend(v),
            Err(m) => warnings.push(format!("{}: {m}; skipped", f.display())),
        }
    }
    if runs.is_empty() && warnings.is_empty() {
        warnings.push("no runs found (looked for epochs.csv in run folders, and summary.csv files given by name)".into());
    }
    (runs, warnings)
}

/// One row of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub keys: BTreeMap<String, String>,
    pub runs: usize,
    pub median_epoch_seconds: f64,
    pub min_epoch_seconds: f64,
    pub max_epoch_seconds: f64,
    pub samples_per_second: f64,
    pub extract_images_per_second: Option<f64>,
    pub best_val_acc: Option<f64>,
    pub test_acc: Option<f64>,
    pub speedup: Option<f64>,
}

pub fn group(runs: &[RunRecord], by: &[String], baseline: Option<&str>) -> Result<Vec<Row>> {
    for k in by {
        if !KEYS.contains(&k.as_str()) {
            return Err(Error::Other(format!(
                "--by: unknown key {k:?}; keys are {}",
                KEYS.join(", ")
            )));
        }
    }
    let mut groups: BTreeMap<Vec<String>, Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        let key = by
            .iter()
            .map(|k| r.keys.get(k).cloned().unwrap_or_else(|| "?".into()))
            .collect();
        groups.entry(key).or_default().push(r);
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|(key, rs)| {
            let secs: Vec<f64> = rs
                .iter()
                .flat_map(|r| r.epoch_seconds.iter().copied())
                .collect();
            let sps: Vec<f64> = rs
                .iter()
                .flat_map(|r| r.samples_per_second.iter().copied())
                .collect();
            let (xi, xs) = rs.iter().fold((0.0, 0.0), |(a, b), r| {
                if r.extract_images > 0.0 {
                    (a + r.extract_images, b + r.extract_seconds)
                } else {
                    (a, b)
                }
            });
            let best = rs
                .iter()
                .filter(|r| r.best_val_acc.is_some())
                .max_by(|a, b| {
                    a.best_val_acc
                        .partial_cmp(&b.best_val_acc)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
            Row {
                keys: by.iter().cloned().zip(key).collect(),
                runs: rs.len(),
                median_epoch_seconds: median(&secs),
                min_epoch_seconds: secs.iter().copied().fold(f64::INFINITY, f64::min),
                max_epoch_seconds: secs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                samples_per_second: median(&sps),
                extract_images_per_second: (xs > 0.0).then(|| xi / xs),
                best_val_acc: best.and_then(|r| r.best_val_acc),
                test_acc: best.and_then(|r| r.test_acc),
                speedup: None,
            }
        })
        .collect();
    if let Some(b) = baseline {
        let base = rows
            .iter()
            .find(|r| r.keys.values().any(|v| v.contains(b)))
            .map(|r| r.median_epoch_seconds)
            .ok_or_else(|| Error::Other(format!("--baseline {b:?} matches no row")))?;
        for r in &mut rows {
            r.speedup = (r.median_epoch_seconds > 0.0).then(|| base / r.median_epoch_seconds);
        }
    }
    Ok(rows)
}

fn cells(r: &Row, by: &[String]) -> Vec<String> {
    let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    let mut c: Vec<String> = by
        .iter()
        .map(|k| r.keys.get(k).cloned().unwrap_or_default())
        .collect();
    c.extend([
        format!("{:.4}", r.median_epoch_seconds),
        format!("{:.4}", r.min_epoch_seconds),
        format!("{:.1}", r.samples_per_second),
        f(r.extract_images_per_second, 1),
        f(r.best_val_acc, 4),
        f(r.test_acc, 4),
        r.runs.to_string(),
    ]);
    if r.speedup.is_some() {
        c.push(f(r.speedup, 2));
    }
    c
}

/// Render rows as `table`, `csv`, `markdown` or `json`.
pub fn render(rows: &[Row], by: &[String], format: &str) -> Result<String> {
    let mut header: Vec<String> = by.to_vec();
    header.extend(
        [
            "median_epoch_s",
            "min_epoch_s",
            "samples_per_s",
            "extract_img_per_s",
            "best_val_acc",
            "test_acc",
            "runs",
        ]
        .map(String::from),
    );
    if rows.iter().any(|r| r.speedup.is_some()) {
        header.push("speedup".into());
    }
    let body: Vec<Vec<String>> = rows.iter().map(|r| cells(r, by)).collect();
    Ok(match format {
        "json" => {
            serde_json::to_string_pretty(rows).map_err(|e| Error::Other(e.to_string()))? + "\n"
        }
        "csv" => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let e = |e: csv::Error| Error::Other(e.to_string());
            w.write_record(&header).map_err(e)?;
            for b in &body {
                w.write_record(b).map_err(e)?;
            }
            String::from_utf8_lossy(&w.into_inner().map_err(|e| Error::Other(e.to_string()))?)
                .to_string()
        }
        "markdown" => {
            let mut s = format!(
                "| {} |\n|{}\n",
                header.join(" | "),
                "---|".repeat(header.len())
            );
            for b in &body {
                s += &format!("| {} |\n", b.join(" | "));
            }
            s
        }
        "table" => {
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    body.iter()
                        .map(|b| b[i].len())
                        .chain([header[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |v: &[String]| {
                v.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut s = String::from("# epoch times: median and min over epochs 2..n (epoch 1 includes warm-up and extraction)\n");
            s += &(line(&header) + "\n");
            for b in &body {
                s += &(line(b) + "\n");
            }
            s
        }
        other => {
            return Err(Error::Other(format!(
                "--format {other:?}: expected table, csv, markdown or json"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_key_is_the_layer_the_head_read() {
        let s = |v: &str| Some(v.to_string());
        // set in the file
        assert_eq!(
            effective_output(s("alexnet"), s("pool5"), s("pool5")),
            s("pool5")
        );
        // unset: the last feature layer, or freeze when that is above it
        assert_eq!(effective_output(s("alexnet"), s("pool5"), None), s("fc7"));
        assert_eq!(effective_output(s("alexnet"), s("fc8"), s("")), s("fc8"));
        assert_eq!(
            effective_output(s("resnet50"), s("layer3"), None),
            s("pre_logits")
        );
        assert_eq!(effective_output(s("lenet"), s("x"), None), None);
        assert!(KEYS.contains(&"output"));
    }
}
