//! Crash safety, Ctrl-C, concurrency and full disks: tests that kill `runner` and start it
//! twice, then check that every file is whole and that a rerun finishes the work.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A small experiment: 86 synthetic images through a random AlexNet to fc7, a linear head.
fn write_spec(dir: &Path, name: &str, epochs: usize, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nseed = 3\n[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"fc7\"\n\
             [dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.25\n\
             [head]\nhidden = []\n[train]\nepochs = {epochs}\nbatch_size = 16\nlr = 0.001\n\
             [run]\ndevice = \"cpu\"\nextract_batch = 16\ncache_dir = \"cache\"\nresults_dir = \"res\"\n{extra}"
        ),
    )
    .unwrap();
    p
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    runner()
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().to_string()
}

fn csv_rows(p: &Path) -> Vec<csv::StringRecord> {
    let text = std::fs::read(p).unwrap();
    csv::Reader::from_reader(text.as_slice())
        .records()
        .map(|r| r.unwrap_or_else(|e| panic!("{}: half-written row: {e}", p.display())))
        .collect()
}

/// Every file a (possibly killed) run left is whole: CSVs parse with full rows, JSON parses,
/// safetensors parse, cache entries pass their checksum; a finished run has all its parts.
/// Temporary files (`.*.tmp`) may remain after a SIGKILL; they are not results.
fn check_whole(dir: &Path) {
    for p in files(&dir.join("res")) {
        let n = name(&p);
        if n.starts_with('.') {
            assert!(
                n.ends_with(".tmp") || n.ends_with(".lock"),
                "unexpected hidden file {}",
                p.display()
            );
            continue;
        }
        match p.extension().and_then(|e| e.to_str()) {
            Some("csv") => {
                csv_rows(&p);
            }
            Some("json") => {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                if v["status"] == "finished" {
                    let run = p.parent().unwrap();
                    let rows = csv_rows(&run.join("epochs.csv"));
                    assert_eq!(rows.len() as u64, v["epochs_run"].as_u64().unwrap());
                    assert!(run.join("head.safetensors").is_file());
                    let summary =
                        std::fs::read_to_string(run.parent().unwrap().join("summary.csv"))
                            .expect("a finished run has its summary.csv row");
                    assert!(summary.contains(v["run_id"].as_str().unwrap()));
                }
            }
            Some("safetensors") if p.parent().unwrap().ends_with("cache") => {}
            Some("safetensors") => {
                let b = std::fs::read(&p).unwrap();
                safetensors::SafeTensors::deserialize(&b)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            Some("svg") => {
                let t = std::fs::read_to_string(&p).unwrap();
                assert!(
                    t.trim_end().ends_with("</svg>"),
                    "{} cut short",
                    p.display()
                );
            }
            _ => {}
        }
    }
    let cache = runner::cache::FeatureCache::new(&dir.join("cache"));
    for p in files(&dir.join("cache")) {
        if p.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .unwrap_or_else(|e| panic!("cache entry {}: {e}", p.display()));
            let key = meta.metadata().clone().unwrap_or_default()["key"].clone();
            assert!(
                cache.get(&key).is_ok(),
                "cache entry {} is not whole",
                p.display()
            );
        }
    }
}

fn metrics(run: &Path) -> Vec<(String, String)> {
    let text = std::fs::read(run.join("epochs.csv")).unwrap();
    let mut r = csv::Reader::from_reader(text.as_slice());
    let h = r.headers().unwrap().clone();
    let (a, l) = (
        h.iter().position(|c| c == "val_acc").unwrap(),
        h.iter().position(|c| c == "train_loss").unwrap(),
    );
    r.records()
        .map(|x| {
            let x = x.unwrap();
            (x[a].to_string(), x[l].to_string())
        })
        .collect()
}

fn run_dirs(dir: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("res").join(name))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_at_20_random_points_then_rerun_finishes_with_the_same_results() {
    let d = tempfile::tempdir().unwrap();
    let spec = write_spec(d.path(), "k", 4, "");
    let spec = spec.to_str().unwrap();

    // the reference: one uninterrupted run (cold, then timed warm)
    let t = Instant::now();
    let out = run_in(d.path(), &["-q", spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cold = t.elapsed();
    let runs = run_dirs(d.path(), "k");
    assert_eq!(runs.len(), 1);
    let want = metrics(&runs[0]);
    let t = Instant::now();
    assert!(run_in(d.path(), &["-q", spec]).status.success());
    let warm = t.elapsed();

    // 20 kills (SIGKILL) at pseudo-random moments; every 3rd attempt starts with no cache, so
    // kills land in extraction and cache writing as well as in training and the summaries
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut delays = Vec::new();
    for i in 0..20 {
        if i % 3 == 0 {
            std::fs::remove_dir_all(d.path().join("cache")).unwrap_or_default();
        }
        let span = if i % 3 == 0 { cold } else { warm };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = span.mul_f64((x % 1000) as f64 / 1000.0);
        delays.push(delay.as_millis());
        let mut child = spawn(d.path(), &["-q", spec]);
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        check_whole(d.path());
    }
    eprintln!("kill delays (ms): {delays:?} (cold run {cold:?}, warm {warm:?})");

    // a rerun finishes the work, with the uninterrupted run's numbers, and cleans up
    let out = run_in(d.path(), &["-q", spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_whole(d.path());
    let runs = run_dirs(d.path(), "k");
    assert_eq!(runs.len(), 1, "one run folder per run id");
    assert_eq!(metrics(&runs[0]), want, "the rerun's metrics differ");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("summary.json")).unwrap()).unwrap();
    assert_eq!(v["status"], "finished");
    // a killed cache write leaves its temporary file only while no entry exists; the rerun
    // then writes the entry, and removes what killed writers left
    let leftovers: Vec<_> = files(&d.path().join("res"))
        .into_iter()
        .chain(files(&d.path().join("cache")))
        .filter(|p| name(p).ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let summary = csv_rows(&d.path().join("res/k/summary.csv"));
    assert_eq!(summary.len(), 1, "one summary row per run id");
}

fn wait_rows(p: &Path, n: usize, child: &mut Child) {
    let t = Instant::now();
    while std::fs::read(p)
        .map(|b| csv::Reader::from_reader(b.as_slice()).records().count())
        .unwrap_or(0)
        < n
    {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("runner ended early ({s})");
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no epoch rows");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_finishes_the_row_marks_the_run_and_a_second_process_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let spec = write_spec(d.path(), "i", 1_000_000, "");
    let spec = spec.to_str().unwrap();
    let mut a = spawn(d.path(), &["-q", spec]);
    let out_dir = d.path().join("res/i");
    // wait for the run folder, then for 3 epochs
    let t = Instant::now();
    let run = loop {
        if let Some(r) = run_dirs(d.path(), "i").pop() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_rows(&run.join("epochs.csv"), 3, &mut a);

    // the same run from a second process: refused, naming the holder
    let b = run_in(d.path(), &["-q", spec]);
    assert_eq!(
        b.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(
        err.contains("in progress in another runner process"),
        "{err}"
    );
    assert!(
        err.contains(&a.id().to_string()),
        "names the holder's pid: {err}"
    );

    // Ctrl-C: the current epoch's row is finished, the run marked, exit 130
    let ok = Command::new("kill")
        .args(["-INT", &a.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = a.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "runner did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(a.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(v["status"], "interrupted");
    let rows = csv_rows(&run.join("epochs.csv"));
    assert!(rows.len() >= 3);
    assert_eq!(v["epochs_run"].as_u64().unwrap(), rows.len() as u64);
    assert!(
        !out_dir.join("summary.csv").exists(),
        "an interrupted run is not a finished one"
    );
    check_whole(d.path());
}

#[test]
fn two_processes_on_one_sweep_run_each_point_once() {
    let d = tempfile::tempdir().unwrap();
    let spec = write_spec(
        d.path(),
        "s",
        3,
        "[sweep]\nmode = \"grid\"\n\"train.lr\" = [0.001, 0.003, 0.01, 0.03]\n",
    );
    let spec = spec.to_str().unwrap();
    let a = spawn(d.path(), &["sweep", spec]);
    let b = spawn(d.path(), &["sweep", spec]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ea, eb) = (
        String::from_utf8_lossy(&a.stderr).to_string(),
        String::from_utf8_lossy(&b.stderr).to_string(),
    );
    assert!(a.status.success(), "{ea}");
    assert!(b.status.success(), "{eb}");
    let ran = |e: &str| -> Vec<usize> {
        e.lines()
            .filter(|l| l.contains("best val acc"))
            .filter_map(|l| l.strip_prefix("point ")?.split(' ').next()?.parse().ok())
            .collect()
    };
    let (ra, rb) = (ran(&ea), ran(&eb));
    let mut all: Vec<usize> = ra.iter().chain(&rb).copied().collect();
    all.sort();
    assert_eq!(
        all,
        vec![0, 1, 2, 3],
        "each point run exactly once: {ra:?} {rb:?}\n{ea}\n{eb}"
    );
    let summary = csv_rows(&d.path().join("res/s/summary.csv"));
    assert_eq!(summary.len(), 4);
    for run in run_dirs(d.path(), "s") {
        assert_eq!(
            csv_rows(&run.join("epochs.csv")).len(),
            3,
            "{}",
            run.display()
        );
    }
    let entries = files(&d.path().join("cache"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .count();
    assert_eq!(entries, 1, "one cache entry for all points");
    check_whole(d.path());
}

/// Run with the size of any file written capped at `kib` KiB (`ulimit -f`, SIGXFSZ ignored):
/// a full disk as far as `runner` can tell, without needing root.
fn run_capped(dir: &Path, kib: u64, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("ulimit -f {kib}; trap '' XFSZ; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_partial_files() {
    let d = tempfile::tempdir().unwrap();
    let spec = write_spec(d.path(), "f", 2, "");
    let spec = spec.to_str().unwrap();
    // the feature cache (86 x 4096 floats, 1.4 MB) does not fit in 256 KiB
    let out = run_capped(d.path(), 256, &["-q", spec]);
    assert_clean_failure(&out, &["cache", "File too large"]);
    assert_eq!(out.status.code(), Some(2));
    let left: Vec<_> = files(d.path())
        .into_iter()
        .filter(|p| name(p).ends_with(".tmp") || p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(left.is_empty(), "partial files: {left:?}");

    // without the cache, the head (4096 x 43 floats, 700 KB) does not fit either
    let out = run_capped(d.path(), 256, &["-q", spec, "--set", "run.cache=false"]);
    assert_clean_failure(&out, &["head.safetensors", "File too large"]);
    let left: Vec<_> = files(d.path())
        .into_iter()
        .filter(|p| name(p).ends_with(".tmp") || name(p) == "head.safetensors")
        .collect();
    assert!(left.is_empty(), "partial files: {left:?}");

    // with room again, the same command finishes
    let out = run_in(d.path(), &["-q", spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_whole(d.path());
}

#[test]
fn an_unwritable_results_folder_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    // a results folder that is a file: refused whoever runs the test
    std::fs::write(d.path().join("res"), b"not a folder").unwrap();
    let spec = write_spec(d.path(), "r", 2, "");
    let out = run_in(d.path(), &["-q", spec.to_str().unwrap()]);
    assert_clean_failure(&out, &["res"]);

    // a read-only folder (permissions do not bind root: then only the case above runs)
    std::fs::remove_file(d.path().join("res")).unwrap();
    std::fs::create_dir(d.path().join("res")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path().join("res"), std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(d.path().join("res/probe"), b"x").is_ok() {
        eprintln!("running as root: read-only permissions are not enforced; skipped that part");
        return;
    }
    let out = run_in(d.path(), &["-q", spec.to_str().unwrap()]);
    assert_clean_failure(&out, &["res", "ermission denied"]);
    assert_eq!(files(&d.path().join("res")).len(), 0);
    std::fs::set_permissions(d.path().join("res"), std::fs::Permissions::from_mode(0o755)).unwrap();
}
