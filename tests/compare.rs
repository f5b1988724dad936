//! `runner compare` over results from two "machines" (device names faked in copied CSVs).

mod common;

use std::path::Path;

use common::*;

/// Rewrite an epochs.csv: device name and epoch_seconds replaced.
fn fake(csv_path: &Path, device: &str, secs: &[f64]) {
    let text = std::fs::read_to_string(csv_path).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let h = r.headers().unwrap().clone();
    let (ci, di) = (
        h.iter().position(|c| c == "epoch_seconds").unwrap(),
        h.iter().position(|c| c == "device_name").unwrap(),
    );
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&h).unwrap();
    for (k, rec) in r.records().enumerate() {
        let mut v: Vec<String> = rec.unwrap().iter().map(String::from).collect();
        v[ci] = secs[k].to_string();
        v[di] = device.to_string();
        w.write_record(&v).unwrap();
    }
    std::fs::write(csv_path, w.into_inner().unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &to.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn one_row_per_device_with_hand_checked_medians() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("cmp.toml"),
        "name = \"cmp\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.5\n\
         [train]\nepochs = 4\n[run]\ndevice = \"cpu\"\ncache = false\nresults_dir = \"machineA\"\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["-q", "cmp.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    copy_dir(&d.path().join("machineA"), &d.path().join("machineB"));
    let run_a = std::fs::read_dir(d.path().join("machineA/cmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let run_b = d
        .path()
        .join("machineB/cmp")
        .join(run_a.file_name().unwrap());
    // epoch 1 (warm-up, extraction) is left out of the statistics
    fake(
        &run_a.join("epochs.csv"),
        "cpu (Test CPU)",
        &[9.0, 1.0, 3.0, 2.0],
    );
    fake(
        &run_b.join("epochs.csv"),
        "cuda (NVIDIA H200)",
        &[5.0, 0.5, 0.25, 1.0],
    );
    // a broken input is reported and skipped; the rest is still shown
    std::fs::create_dir_all(d.path().join("machineB/cmp/broken")).unwrap();
    std::fs::write(
        d.path().join("machineB/cmp/broken/epochs.csv"),
        "a,b\n1,2\n",
    )
    .unwrap();

    let out = run_in(
        d.path(),
        &[
            "compare",
            "machineA",
            "machineB",
            "--format",
            "json",
            "--baseline",
            "Test CPU",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken/epochs.csv"),
        "the broken file is named"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2, "one row per device");
    let row = |dev: &str| {
        rows.iter()
            .find(|r| r["keys"]["device_name"] == dev)
            .unwrap()
            .clone()
    };
    let (a, b) = (row("cpu (Test CPU)"), row("cuda (NVIDIA H200)"));
    assert_eq!(a["median_epoch_seconds"], 2.0);
    assert_eq!(a["min_epoch_seconds"], 1.0);
    assert_eq!(b["median_epoch_seconds"], 0.5);
    assert_eq!(b["min_epoch_seconds"], 0.25);
    assert_eq!(b["speedup"], 4.0);
    assert_eq!(a["keys"]["backbone"], "alexnet");
    assert_eq!(a["keys"]["freeze"], "fc7");
    assert_eq!(a["runs"], 1);
    assert!(a["best_val_acc"].as_f64().is_some());

    // columns line up with the header: device first, then the experiment, backbone...
    let out = run_in(d.path(), &["compare", "machineA"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let data_line = table.lines().nth(2).unwrap();
    let fields: Vec<&str> = data_line
        .split("  ")
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(
        &fields[..7],
        &[
            "cpu (Test CPU)",
            "cmp",
            "alexnet",
            "fc7",
            "128",
            "f32",
            "2.0000"
        ],
        "{table}"
    );
    for fmt in ["table", "markdown", "csv"] {
        let out = run_in(
            d.path(),
            &["compare", "machineA", "machineB", "--format", fmt],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NVIDIA H200") && text.contains("Test CPU"),
            "{fmt}: {text}"
        );
    }
    let out = run_in(d.path(), &["compare", "machineA", "--by", "device_name,lr"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0.001"));
    let out = run_in(d.path(), &["compare", "machineA/cmp/summary.csv"]);
    assert!(
        out.status.success(),
        "summary.csv input: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nothing readable: a clear failure
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    assert_clean_failure(&run_in(d.path(), &["compare", "empty"]), &["no runs"]);
}

#[test]
fn bench_writes_a_row_that_compare_tables() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("b.toml"),
        "name = \"b\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\nextract_batch = 8\n",
    )
    .unwrap();
    let out = run_in(
        d.path(),
        &["bench", "b.toml", "--batches", "3", "--epochs", "3"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("images/s (24 images)"), "{text}");
    let dir = std::fs::read_dir(d.path().join("results/b"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    assert!(dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("bench-cpu-"));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "bench");
    assert!(s["extract_images_per_second"].as_f64().unwrap() > 0.0);
    let out = run_in(d.path(), &["compare", "results", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["extract_images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn plots_render_as_svg_and_png() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("pl.toml"),
        "name = \"pl\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.5\n\
         [train]\nepochs = 3\n[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n[sweep]\n\"train.lr\" = [0.01, 0.001]\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["-q", "pl.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // every run folder gets its learning curves
    for e in std::fs::read_dir(d.path().join("results/pl")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let svg = std::fs::read_to_string(p.join("curves.svg")).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.contains("validation accuracy"),
                "{}",
                p.display()
            );
        }
    }
    for (kind, file) in [
        ("curves", "c.png"),
        ("times", "t.png"),
        ("scatter", "s.png"),
        ("curves", "c.svg"),
        ("scatter", "s.svg"),
    ] {
        let out = run_in(
            d.path(),
            &["plot", "results", "--kind", kind, "--out", file],
        );
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = d.path().join(file);
        if file.ends_with(".png") {
            let img = image::open(&path).unwrap();
            assert_eq!((img.width(), img.height()), (900, 640), "{file}");
            // not blank: the lines and bars are drawn in colour
            let rgb = img.to_rgb8();
            assert!(
                rgb.pixels()
                    .any(|p| p.0 != [255, 255, 255] && (p.0[0] != p.0[1] || p.0[1] != p.0[2])),
                "{file} has no colour"
            );
        } else {
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{file}"
            );
            // two runs: two coloured polylines or points
            assert!(
                svg.matches("<polyline").count() >= 2 || svg.matches("<circle").count() >= 2,
                "{file}"
            );
        }
    }
    assert_clean_failure(
        &run_in(d.path(), &["plot", "results", "--out", "x.jpg"]),
        &[".svg or .png"],
    );
}
