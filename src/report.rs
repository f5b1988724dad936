//! `runner report`: one self-contained HTML page over run folders from any number of machines:
//! the runs, accuracy by layer (when the runs read different cut points), timing by device
//! with speed-ups, learning curves, accuracy against epoch time,
//! each swept setting against validation accuracy, the best run's per-class accuracy and
//! confusion matrix, and the machines the runs came from. Inline SVG and CSS only: no script,
//! no network, readable in any browser and small enough to mail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::compare::{self, RunRecord};
use crate::error::{Error, Result};

/// What the page groups timings by and compares against.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Grouping keys of the timing table (default: `compare::DEFAULT_BY`).
    pub by: Vec<String>,
    /// A speed-up column relative to the first row whose keys contain this text.
    pub baseline: Option<String>,
}

/// A written report.
pub struct Written {
    pub runs: usize,
    pub bytes: usize,
    pub warnings: Vec<String>,
}

/// Build the report of the runs under `paths` and write it to `out` (atomically).
pub fn write(paths: &[PathBuf], out: &Path, o: &Options) -> Result<Written> {
    let (runs, warnings) = compare::collect(paths);
    if runs.is_empty() {
        return Err(Error::Other(format!(
            "report: no runs could be read: {}",
            warnings.join("; ")
        )));
    }
    let html = html(&runs, paths, o)?;
    crate::fsio::write_atomic(out, html.as_bytes())?;
    Ok(Written {
        runs: runs.len(),
        bytes: html.len(),
        warnings,
    })
}

/// HTML-escape text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.best td{background:#eef7ee;font-weight:600}\
.note{color:#666;font-size:.85em}svg{max-width:100%;height:auto}.hm{table-layout:fixed}.hm td,.hm th{padding:0;width:16px;height:16px;font-size:9px;border:1px solid #fff;text-align:center}";

/// The whole page.
pub fn html(runs: &[RunRecord], inputs: &[PathBuf], o: &Options) -> Result<String> {
    let by: Vec<String> = if o.by.is_empty() {
        compare::DEFAULT_BY.iter().map(|s| s.to_string()).collect()
    } else {
        o.by.clone()
    };
    let mut h = String::new();
    let inputs: Vec<String> = inputs
        .iter()
        .map(|p| esc(&p.display().to_string()))
        .collect();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>runner report</title><style>{CSS}</style></head><body>\n\
         <h1>runner report</h1>\n<p class=\"note\">{} runs from {}; written {} by runner {}.</p>\n",
        runs.len(),
        inputs.join(", "),
        crate::results::env::now_rfc3339(),
        env!("CARGO_PKG_VERSION")
    );
    let best = best_run(runs);
    runs_table(&mut h, runs, best);
    // which layer transfers best, when the runs read different cut points: the answer first
    if let Some(key) = crate::plot::layer_key(runs) {
        let _ = writeln!(h, "<h2 id=\"by-layer\">Accuracy by layer ({key})</h2>");
        h += &svg_or_note(crate::plot::layers_svg(runs));
    }
    timing(&mut h, runs, &by, o.baseline.as_deref())?;
    h += "<h2>Learning curves</h2>\n";
    h += &svg_or_note(crate::plot::curves_svg(runs));
    h += "<h2>Accuracy against epoch time</h2>\n";
    h += &svg_or_note(crate::plot::scatter_svg(runs));
    swept(&mut h, runs);
    if let Some(b) = best {
        best_run_classes(&mut h, &runs[b]);
    }
    environment(&mut h, runs);
    h += "</body></html>\n";
    Ok(h)
}

fn svg_or_note(svg: Result<String>) -> String {
    match svg {
        // plotters writes a bare <svg> element: it goes inline as it is
        Ok(s) => format!("<figure>{s}</figure>\n"),
        Err(e) => format!("<p class=\"note\">{}</p>\n", esc(&e.to_string())),
    }
}

/// Index of the run with the best validation accuracy.
/// Index of the run with the best validation accuracy (the first of equals, as the runs table
/// lists them).
fn best_run(runs: &[RunRecord]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, r) in runs.iter().enumerate() {
        if let Some(a) = r.best_val_acc {
            if best.is_none_or(|(_, b)| a > b) {
                best = Some((i, a));
            }
        }
    }
    best.map(|(i, _)| i)
}

const SETTINGS: &[&str] = &[
    "experiment",
    "backbone",
    "freeze",
    "hidden",
    "optimizer",
    "lr",
    "batch_size",
    "dtype",
    "device_name",
];

fn runs_table(h: &mut String, runs: &[RunRecord], best: Option<usize>) {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        runs[b]
            .best_val_acc
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&runs[a].best_val_acc.unwrap_or(f64::NEG_INFINITY))
    });
    // settings every run shares are said once, above the table
    let (same, varied): (Vec<&str>, Vec<&str>) = SETTINGS.iter().partition(|k| {
        runs.iter()
            .map(|r| r.keys.get(**k))
            .collect::<BTreeSet<_>>()
            .len()
            == 1
    });
    let shared: Vec<String> = same
        .iter()
        .filter_map(|k| {
            runs[0]
                .keys
                .get(*k)
                .map(|v| format!("{k} <b>{}</b>", esc(v)))
        })
        .collect();
    let _ = write!(
        h,
        "<h2>Runs</h2>\n<p class=\"note\">Best validation accuracy first; the best run is marked. Epoch times are medians over epochs 2..n (epoch 1 includes warm-up and extraction).{}</p>\n<table><tr><th class=\"l\">run</th>",
        if shared.is_empty() {
            String::new()
        } else {
            format!(" Every run: {}.", shared.join(", "))
        }
    );
    for k in &varied {
        let _ = write!(h, "<th class=\"l\">{k}</th>");
    }
    *h += "<th>best val acc</th><th>test acc</th><th>median epoch s</th><th>samples/s</th></tr>\n";
    for i in order {
        let r = &runs[i];
        let class = if Some(i) == best {
            " class=\"best\""
        } else {
            ""
        };
        let _ = write!(h, "<tr{class}><td class=\"l\">{}</td>", esc(&r.label));
        for k in &varied {
            let v = r.keys.get(*k).map(String::as_str).unwrap_or("-");
            let _ = write!(h, "<td class=\"l\">{}</td>", esc(v));
        }
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            opt(r.best_val_acc, 4),
            opt(r.test_acc, 4),
            opt(Some(crate::results::median(&r.epoch_seconds)), 4),
            opt(Some(crate::results::median(&r.samples_per_second)), 0)
        );
    }
    *h += "</table>\n";
}

fn timing(h: &mut String, runs: &[RunRecord], by: &[String], baseline: Option<&str>) -> Result<()> {
    let rows = compare::group(runs, by, baseline)?;
    *h += "<h2>Timing by device</h2>\n<table><tr>";
    for k in by {
        let _ = write!(h, "<th class=\"l\">{}</th>", esc(k));
    }
    *h += "<th>median epoch s</th><th>min</th><th>max</th><th>samples/s</th><th>extraction img/s</th><th>runs</th>";
    let speed = rows.iter().any(|r| r.speedup.is_some());
    if speed {
        let _ = write!(
            h,
            "<th>speed-up vs {}</th>",
            esc(baseline.unwrap_or("baseline"))
        );
    }
    *h += "</tr>\n";
    for r in &rows {
        *h += "<tr>";
        for k in by {
            let v = r.keys.get(k).map(String::as_str).unwrap_or("-");
            let _ = write!(h, "<td class=\"l\">{}</td>", esc(v));
        }
        let _ = write!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            opt(Some(r.median_epoch_seconds), 4),
            opt(Some(r.min_epoch_seconds), 4),
            opt(Some(r.max_epoch_seconds), 4),
            opt(Some(r.samples_per_second), 0),
            opt(r.extract_images_per_second, 1),
            r.runs
        );
        if speed {
            let _ = write!(h, "<td>{}</td>", opt(r.speedup, 2));
        }
        *h += "</tr>\n";
    }
    *h += "</table>\n";
    let device_by = vec!["device_name".to_string()];
    let device_rows = compare::group(runs, &device_by, None)?;
    if device_rows.len() < 2 {
        // one bar says nothing the table does not
        *h += "<p class=\"note\">All runs are on one device; reports over runs from several devices draw their epoch times side by side.</p>\n";
        return Ok(());
    }
    *h += "<p class=\"note\">Bars: median epoch time per device; whiskers: min and max.</p>\n";
    *h += &svg_or_note(crate::plot::times_svg(&device_rows, &device_by));
    Ok(())
}

/// Settings that differ between runs without being swept: where files go and which device ran
/// (timing by device covers that).
const NOT_SWEPT: &[&str] = &["name", "run.results_dir", "run.cache_dir", "run.device"];

/// For a sweep: each setting of the runs' `config.toml` that differs between them (whatever its
/// key: `train.lr`, `head.init_std`, `train.weight_decay` ...) against the best validation
/// accuracy, a dot per run.
fn swept(h: &mut String, runs: &[RunRecord]) {
    let all: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    let keys: Vec<&str> = all
        .into_iter()
        .map(String::as_str)
        .filter(|k| !NOT_SWEPT.contains(k))
        .filter(|k| {
            runs.iter()
                .map(|r| r.settings.get(*k))
                .collect::<BTreeSet<_>>()
                .len()
                > 1
        })
        .collect();
    if keys.is_empty() {
        return;
    }
    *h += "<h2>Swept settings against validation accuracy</h2>\n";
    for k in keys {
        let _ = writeln!(h, "<h3>{}</h3>", esc(k));
        *h += &strip_svg(runs, k);
    }
}

/// A strip plot: one column per value of `key` (sorted numerically where they are numbers),
/// best validation accuracy on the vertical axis.
fn strip_svg(runs: &[RunRecord], key: &str) -> String {
    let mut values: Vec<String> = runs
        .iter()
        .filter_map(|r| r.settings.get(key).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    values.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    });
    let accs: Vec<f64> = runs.iter().filter_map(|r| r.best_val_acc).collect();
    let lo = accs.iter().copied().fold(1.0, f64::min).min(1.0);
    let hi = accs.iter().copied().fold(0.0, f64::max).max(lo + 1e-3);
    let (w, ht, left, bottom, top) = (120 * values.len().max(2) + 80, 260, 60.0, 40.0, 15.0);
    let y = |a: f64| top + (hi - a) / (hi - lo) * (ht as f64 - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{w}\" height=\"{ht}\" fill=\"white\"/>"
    );
    for t in 0..=4 {
        let a = lo + (hi - lo) * t as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{a:.3}</text>",
            w - 10,
            left - 5.0,
            y(a) + 4.0,
            y0 = y(a)
        );
    }
    let _ = write!(
        s,
        "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">best val acc</text>",
        ht / 2,
        ht / 2
    );
    for (i, v) in values.iter().enumerate() {
        let x = left + 60.0 + 120.0 * i as f64;
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            ht - 15,
            esc(v)
        );
        for (j, r) in runs
            .iter()
            .filter(|r| r.settings.get(key) == Some(v))
            .enumerate()
        {
            if let Some(a) = r.best_val_acc {
                let dx = ((j % 7) as f64 - 3.0) * 5.0;
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f77b4\" fill-opacity=\"0.7\"><title>{}: {a:.4}</title></circle>",
                    x + dx,
                    y(a),
                    esc(&r.label)
                );
            }
        }
    }
    s += "</svg>\n";
    s
}

/// The run folder a record came from (its `epochs.csv`'s folder).
fn run_dir(r: &RunRecord) -> Option<&Path> {
    (r.source.file_name()? == "epochs.csv")
        .then(|| r.source.parent())
        .flatten()
}

/// Per-class accuracy and, for up to 60 classes, the confusion matrix as a heat map, of the
/// best run's test split (its validation split when it has no test set).
fn best_run_classes(h: &mut String, r: &RunRecord) {
    let Some(dir) = run_dir(r) else { return };
    let (Ok(pc), Ok(cm)) = (
        std::fs::read_to_string(dir.join("per_class.csv")),
        std::fs::read_to_string(dir.join("confusion.csv")),
    ) else {
        return;
    };
    let rows = |text: &str| -> Vec<Vec<String>> {
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        rd.records()
            .flatten()
            .map(|r| r.iter().map(String::from).collect())
            .collect()
    };
    let (pc, cm) = (rows(&pc), rows(&cm));
    let split = if pc.iter().any(|r| r[0] == "test") {
        "test"
    } else {
        "val"
    };
    let _ = write!(
        h,
        "<h2>Best run: {} ({split} split)</h2>\n<table><tr><th>class</th><th class=\"l\">name</th><th>support</th><th>correct</th><th>accuracy</th></tr>\n",
        esc(&r.label)
    );
    let mut names = BTreeMap::new();
    for row in pc.iter().filter(|r| r[0] == split && r.len() >= 6) {
        names.insert(row[1].parse::<usize>().unwrap_or(0), row[2].clone());
        let acc = row[5].parse::<f64>().ok();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row[1]),
            esc(&row[2]),
            esc(&row[3]),
            esc(&row[4]),
            opt(acc, 3)
        );
    }
    *h += "</table>\n";
    let n = names.keys().max().map(|m| m + 1).unwrap_or(0);
    if n == 0 || n > 60 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{n} classes: the confusion matrix is in {} (not drawn above 60 classes).</p>",
            esc(&dir.join("confusion.csv").display().to_string())
        );
        return;
    }
    let mut counts = vec![vec![0u64; n]; n];
    for row in cm.iter().filter(|r| r[0] == split && r.len() >= 4) {
        if let (Ok(t), Ok(p), Ok(c)) = (
            row[1].parse::<usize>(),
            row[2].parse::<usize>(),
            row[3].parse::<u64>(),
        ) {
            if t < n && p < n {
                counts[t][p] = c;
            }
        }
    }
    *h += "<h3>Confusion matrix</h3>\n<p class=\"note\">Rows: true class; columns: predicted; shade: share of the row.</p>\n<table class=\"hm\"><tr><td></td>";
    for p in 0..n {
        let _ = write!(h, "<th>{p}</th>");
    }
    *h += "</tr>\n";
    for (t, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        let _ = write!(h, "<tr><th>{t}</th>");
        for &c in row {
            let share = c as f64 / total as f64;
            let shade = (255.0 - share * 200.0).round() as u8;
            let text = if c > 0 { c.to_string() } else { String::new() };
            let fg = if share > 0.5 { "#fff" } else { "#333" };
            let _ = write!(
                h,
                "<td style=\"background:rgb({shade},{shade},255);color:{fg}\" title=\"true {t}, predicted: {c}\">{text}</td>"
            );
        }
        *h += "</tr>\n";
    }
    *h += "</table>\n";
}

/// Where the runs ran: one row per distinct machine and build, from each run's summary.json.
fn environment(h: &mut String, runs: &[RunRecord]) {
    const FIELDS: &[&str] = &[
        "hostname",
        "device_name",
        "runner_version",
        "git_commit",
        "candle_version",
        "threads",
        "cudnn",
        "dtype",
    ];
    let mut seen: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for r in runs {
        let Some(dir) = run_dir(r) else { continue };
        let Some(s) = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        else {
            continue;
        };
        let row: Vec<String> = FIELDS
            .iter()
            .map(|f| match &s[*f] {
                serde_json::Value::String(v) => v.clone(),
                serde_json::Value::Null => "-".into(),
                v => v.to_string(),
            })
            .collect();
        *seen.entry(row).or_insert(0) += 1;
    }
    *h += "<h2>Machines</h2>\n<table><tr>";
    for f in FIELDS {
        let _ = write!(h, "<th class=\"l\">{f}</th>");
    }
    *h += "<th>runs</th></tr>\n";
    for (row, n) in &seen {
        *h += "<tr>";
        for v in row {
            let _ = write!(h, "<td class=\"l\">{}</td>", esc(v));
        }
        let _ = writeln!(h, "<td>{n}</td></tr>");
    }
    *h += "</table>\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
