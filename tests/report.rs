//! `runner report` over a small sweep: a self-contained page (no script, nothing fetched) whose
//! text holds every run's id and numbers, opened in a real headless browser (Debian's
//! Chromium, which `.ci/run` installs): no console errors and a screenshot that is not blank.
//! The browser test needs Chromium, so `cargo test` reports it as ignored; `.ci/run` runs it
//! with `--ignored`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

fn browser(dir: &Path, page: &Path, extra: &[&str]) -> std::process::Output {
    let profile = dir.join("chrome-profile");
    let url = format!("file://{}", page.display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ];
    let prof = format!("--user-data-dir={}", profile.display());
    args.push(&prof);
    args.extend_from_slice(extra);
    args.push(&url);
    Command::new(chromium().unwrap())
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `page` as headless Chromium draws it in a window of `size` ("W,H"), after checking that the
/// browser logged no console message.
fn screenshot(dir: &Path, page: &Path, size: &str) -> image::RgbImage {
    assert!(
        chromium().is_some(),
        "no Chromium here (apt-get install chromium; .ci/run does)"
    );
    let shot = dir.join("shot.png");
    let out = browser(
        dir,
        page,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={size}"),
        ],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    image::open(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}); chromium said: {log}"))
        .to_rgb8()
}

/// A 4-point sweep in `d` and its report: the page's path and the sweep's summary.csv, after
/// checking the page's text.
fn sweep_report(d: &tempfile::TempDir) -> (std::path::PathBuf, String) {
    std::fs::write(
        d.path().join("sw.toml"),
        "name = \"sw\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 3\nval_fraction = 0.34\ntest_fraction = 0.33\n\
         [train]\nepochs = 3\n[run]\ndevice = \"cpu\"\n[sweep]\n\"train.lr\" = [0.01, 0.001]\n\"head.hidden\" = [[], [16]]\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["sweep", "sw.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the sweep names the command that writes its report
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("report: runner report"), "{err}");

    let out = run_in(
        d.path(),
        &[
            "report",
            "results/sw",
            "--out",
            "report.html",
            "--baseline",
            "cpu",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = d.path().join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // self-contained: no script, no stylesheet or image fetched from anywhere
    assert!(!html.contains("<script"), "no JavaScript");
    for bad in ["<link", "<img", "src=", "@import", "url("] {
        assert!(!html.contains(bad), "{bad} in the page");
    }
    let without_ns = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    // the key numbers of every run
    let summary = std::fs::read_to_string(d.path().join("results/sw/summary.csv")).unwrap();
    let mut rd = csv::Reader::from_reader(summary.as_bytes());
    let headers = rd.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let mut n = 0;
    for r in rd.records() {
        let r = r.unwrap();
        assert!(
            html.contains(&r[col("run_id")]),
            "run {} missing",
            &r[col("run_id")]
        );
        let acc: f64 = r[col("best_val_acc")].parse().unwrap();
        assert!(
            html.contains(&format!("{acc:.4}")),
            "best val acc {acc:.4} missing"
        );
        n += 1;
    }
    assert_eq!(n, 4);
    for section in [
        "Runs",
        "Timing by device",
        "Learning curves",
        "Accuracy against epoch time",
        "Swept settings",
        "Confusion matrix",
        "Machines",
    ] {
        assert!(html.contains(section), "section {section} missing");
    }
    assert!(html.len() < 1 << 20, "{} bytes", html.len());

    (page, summary)
}

#[test]
fn a_sweep_report_is_one_self_contained_page() {
    let d = tempfile::tempdir().unwrap();
    sweep_report(&d);
}

#[test]
#[ignore = "needs Debian's Chromium (apt-get install chromium), then `cargo test --release --test report -- --ignored`; .ci/run does both"]
fn a_browser_shows_the_report() {
    let d = tempfile::tempdir().unwrap();
    let (page, summary) = sweep_report(&d);
    let img = screenshot(d.path(), &page, "1200,2000");
    let non_white = img
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    let share = non_white as f64 / (img.width() * img.height()) as f64;
    assert!(
        share > 0.02,
        "the screenshot is blank ({share:.4} of it drawn)"
    );
    // the page as the browser read it holds the runs' ids
    let out = browser(d.path(), &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    let first_id = summary.lines().nth(1).unwrap().split(',').next().unwrap();
    assert!(
        dom.contains(first_id),
        "the browser's DOM lacks run {first_id}"
    );
}

/// A sweep over AlexNet's cut points and two learning rates, and its report: the page's path
/// and its text, after checking the layer chart's text.
fn layer_report(d: &tempfile::TempDir) -> (std::path::PathBuf, String) {
    std::fs::write(
        d.path().join("layers.toml"),
        "name = \"layers\"\n[backbone]\nweights = \"random\"\npool = \"avg\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.25\ntest_fraction = 0.25\n\
         [train]\nepochs = 2\n[run]\ndevice = \"cpu\"\n\
         [sweep]\n\"backbone.output\" = [\"fc7\", \"pool2\", \"fc6\", \"pool5\"]\n\"train.lr\" = [0.01, 0.001]\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["sweep", "layers.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_in(
        d.path(),
        &["report", "results/layers", "--out", "layers.html"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = d.path().join("layers.html");
    let html = std::fs::read_to_string(&page).unwrap();
    let start = html
        .find("<h2 id=\"by-layer\">Accuracy by layer (output)</h2>")
        .expect("the layer section");
    let section = &html[start..];
    let section = &section[..section[4..].find("<h2").map_or(section.len(), |e| e + 4)];
    // (plotters puts each text on a line of its own)
    let section = &section.replace('\n', "");
    assert!(section.contains("<svg"), "a chart, not a note: {section}");
    // the cut points along the axis in network order, whatever the sweep's order
    let at = |l: &str| {
        section
            .find(&format!(">{l}<"))
            .unwrap_or_else(|| panic!("{l} not on the axis"))
    };
    assert!(at("pool2") < at("pool5") && at("pool5") < at("fc6") && at("fc6") < at("fc7"));
    // one line per other swept setting
    for l in ["lr=0.01", "lr=0.001"] {
        assert!(section.contains(&format!(">{l}<")), "legend {l} missing");
    }
    // and compare tables it by layer
    let out = run_in(
        d.path(),
        &[
            "compare",
            "results/layers",
            "--by",
            "output",
            "--format",
            "csv",
        ],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for l in ["pool2", "pool5", "fc6", "fc7"] {
        assert!(
            table.lines().any(|r| r.starts_with(l)),
            "{l} row in {table}"
        );
    }
    (page, html)
}

#[test]
fn a_layer_sweep_report_draws_accuracy_by_layer() {
    let d = tempfile::tempdir().unwrap();
    layer_report(&d);
}

#[test]
#[ignore = "needs Debian's Chromium (apt-get install chromium), then `cargo test --release --test report -- --ignored`; .ci/run does both"]
fn a_browser_shows_the_layer_chart() {
    let d = tempfile::tempdir().unwrap();
    let (page, _) = layer_report(&d);
    // the chart follows the runs table: in the first screen
    let img = screenshot(d.path(), &page, "1200,1000");
    // the two lines' colours (the first two of the palette) are drawn
    let near = |c: [u8; 3]| {
        img.pixels()
            .filter(|p| (0..3).all(|k| (p.0[k] as i32 - c[k] as i32).abs() < 30))
            .count()
    };
    let (blue, orange) = (near([31, 119, 180]), near([255, 127, 14]));
    assert!(
        blue > 200 && orange > 200,
        "the layer chart's lines are not in the screenshot ({blue} blue, {orange} orange pixels)"
    );
}

/// The section of `html` that starts at heading `h2` (up to the next `<h2`).
fn section<'a>(html: &'a str, h2: &str) -> &'a str {
    let start = html
        .find(&format!(">{h2}</h2>"))
        .unwrap_or_else(|| panic!("no {h2} section"));
    let rest = &html[start..];
    &rest[..rest[4..].find("<h2").map_or(rest.len(), |e| e + 4)]
}

/// Issue 29, item 5: every swept key gets its chart (here `head.init_std`, which the report's
/// fixed list of keys used to miss), the learning curves of 12 runs use 12 colours, and runs on
/// one device get a sentence, not a full-width chart of one bar.
#[test]
fn every_swept_key_is_charted_and_no_two_curves_share_a_colour() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("grid.toml"),
        "name = \"grid\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.3\n\
         [train]\nepochs = 2\n[run]\ndevice = \"cpu\"\n\
         [sweep]\n\"train.lr\" = [0.01, 0.001, 0.0001]\n\"head.init_std\" = [0.01, 0.001, 0.1, \"auto\"]\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["-q", "sweep", "grid.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_in(d.path(), &["report", "results/grid", "--out", "grid.html"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(d.path().join("grid.html")).unwrap();
    let swept = section(&html, "Swept settings against validation accuracy");
    for key in ["train.lr", "head.init_std"] {
        assert!(
            swept.contains(&format!("<h3>{key}</h3>")),
            "no chart for {key}"
        );
    }
    assert!(!swept.contains("<h3>run.device</h3>") && !swept.contains("<h3>name</h3>"));
    let curves = section(&html, "Learning curves");
    let strokes: std::collections::BTreeSet<&str> = curves
        .split("<polyline")
        .skip(1)
        .filter_map(|p| p.split("stroke=\"").nth(1)?.split('"').next())
        // (the legend's black frame)
        .filter(|c| *c != "#000000")
        .collect();
    assert_eq!(strokes.len(), 12, "12 runs, 12 line colours: {strokes:?}");
    let timing = section(&html, "Timing by device");
    assert!(!timing.contains("<svg"), "no chart of one bar");
    assert!(timing.contains("All runs are on one device"));
}
