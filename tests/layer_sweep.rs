//! Which layer transfers best: a sweep over cut points computes every point's features in one
//! pass through the backbone (each image read and run once), writing the same cache entries,
//! bit for bit, that single runs write; shards of all entries at once; the results of the
//! points are those of single runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use runner::progress::Mode;
use runner::sweep::{Options, Selection};

/// The counters are per process: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn options() -> Options {
    Options {
        selection: Selection::All,
        force: false,
        jobs: 1,
        devices: vec![],
        sets: vec![],
        mode: Mode::Quiet,
        extract_shards: false,
    }
}

/// Every file of a cache folder, by name.
fn cache_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The metrics of a finished run that must not depend on how its features were computed.
fn numbers(dir: &Path) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    serde_json::json!([
        s["best_epoch"],
        s["best_val_acc"],
        s["best_val_loss"],
        s["test_acc"]
    ])
}

fn delta(before: (u64, u64)) -> (u64, u64) {
    let now = runner::features::pass_counts();
    (now.0 - before.0, now.1 - before.1)
}

/// Sweep `body` in `root/a` (one pass), then run each point alone into `root/b`; the cache
/// entries and the numbers must agree. Returns the number of images per pass.
fn sweep_matches_single_runs(root: &Path, body: &str, points: usize) -> u64 {
    let file = |sub: &str| {
        let p = root.join(format!("{sub}.toml"));
        let dirs = format!(
            "[run]\ndevice = \"cpu\"\ncache_dir = \"{0}/{sub}/cache\"\nresults_dir = \"{0}/{sub}/results\"\n",
            root.display()
        );
        std::fs::write(&p, format!("{body}\n{dirs}")).unwrap();
        p
    };
    let (a, b) = (file("a"), file("b"));

    let before = runner::features::pass_counts();
    let report = runner::sweep::run(&a, &options()).unwrap();
    assert_eq!(report.ran.len(), points, "{report:?}");
    let (read, forwarded) = delta(before);
    assert!(read > 0);
    assert_eq!(
        (read, forwarded),
        (read, read),
        "one pass: every image read once and run through the backbone once for all {points} cut points"
    );

    let singles = runner::spec::sweep::expand(&b, &[]).unwrap();
    assert_eq!(singles.len(), points);
    let before = runner::features::pass_counts();
    for p in &singles {
        runner::experiment::run(&p.spec, Mode::Quiet).unwrap();
    }
    assert_eq!(
        delta(before).1,
        points as u64 * read,
        "each single run extracts its own features"
    );

    let (ca, cb) = (
        cache_files(&root.join("a/cache")),
        cache_files(&root.join("b/cache")),
    );
    assert_eq!(ca.len(), points, "one entry per cut point: {:?}", ca.keys());
    assert_eq!(
        ca.keys().collect::<Vec<_>>(),
        cb.keys().collect::<Vec<_>>(),
        "the same entries"
    );
    for (name, bytes) in &ca {
        assert!(
            bytes == &cb[name],
            "{name}: not the bytes a single run writes"
        );
    }
    let swept = runner::spec::sweep::expand(&a, &[]).unwrap();
    for (pa, pb) in swept.iter().zip(&singles) {
        let (da, db) = (
            runner::experiment::run_dir(&pa.spec),
            runner::experiment::run_dir(&pb.spec),
        );
        assert_eq!(
            numbers(&da),
            numbers(&db),
            "point {} ({})",
            pa.index,
            pa.describe()
        );
    }
    read
}

#[test]
fn an_alexnet_sweep_over_cut_points_reads_each_image_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    // pool = "avg" pools the maps (pool2, pool5) and is dropped for the vectors (fc6, fc7)
    let body = "name = \"layers\"\nseed = 3\n[backbone]\nweights = \"random\"\npool = \"avg\"\n\
        [dataset]\nkind = \"synthetic\"\nper_class = 2\nval_fraction = 0.25\ntest_fraction = 0.25\n\
        [train]\nepochs = 2\n\
        [sweep]\n\"backbone.output\" = [\"pool2\", \"pool5\", \"fc6\", \"fc7\"]\n";
    let n = sweep_matches_single_runs(d.path(), body, 4);
    assert_eq!(n, 86, "43 classes x 2 images");

    // shards of all four entries at once (what --extract-shards and Slurm's extraction array
    // run): a fresh cache filled by two shard passes; the sweep then runs nothing through
    // the backbone and gets the same numbers
    let c = d.path().join("c.toml");
    let dirs = format!(
        "[run]\ndevice = \"cpu\"\ncache_dir = \"{0}/c/cache\"\nresults_dir = \"{0}/c/results\"\n",
        d.path().display()
    );
    std::fs::write(&c, format!("{body}\n{dirs}")).unwrap();
    let before = runner::features::pass_counts();
    for i in 0..2 {
        let made = runner::sweep::extract_shard(&c, &[], i, 2, Mode::Quiet).unwrap();
        assert_eq!(made, 4, "shard {i}/2 of each of the 4 entries");
    }
    assert_eq!(delta(before), (n, n), "two shards, each image once");
    let before = runner::features::pass_counts();
    runner::sweep::run(&c, &options()).unwrap();
    assert_eq!(delta(before).1, 0, "the points read the shards");
    let pa = runner::spec::sweep::expand(&d.path().join("a.toml"), &[]).unwrap();
    let pc = runner::spec::sweep::expand(&c, &[]).unwrap();
    for (x, y) in pa.iter().zip(&pc) {
        assert_eq!(
            numbers(&runner::experiment::run_dir(&x.spec)),
            numbers(&runner::experiment::run_dir(&y.spec)),
            "point {} from shards",
            x.index
        );
    }
}

#[test]
fn a_resnet_sweep_from_layer1_to_pre_logits_is_one_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let body = "name = \"rlayers\"\nseed = 4\n[backbone]\narch = \"resnet18\"\nweights = \"random\"\n\
        input_size = 64\npool = \"avg\"\n\
        [dataset]\nkind = \"synthetic\"\nper_class = 1\nval_fraction = 0.3\n\
        [train]\nepochs = 1\n\
        [sweep]\n\"backbone.output\" = [\"layer1\", \"layer2\", \"layer3\", \"layer4\", \"pre_logits\"]\n";
    sweep_matches_single_runs(d.path(), body, 5);
}

#[test]
fn files_run_together_share_their_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    for (name, output) in [("a", "pool5"), ("b", "fc7")] {
        let body = format!(
            "name = \"{name}\"\n[backbone]\nweights = \"random\"\noutput = \"{output}\"\n\
             [dataset]\nkind = \"synthetic\"\nper_class = 1\nval_fraction = 0.3\n[train]\nepochs = 1\n\
             [run]\ndevice = \"cpu\"\n"
        );
        std::fs::write(d.path().join(format!("{name}.toml")), body).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(d.path())
        .args(["-v", "run", "a.toml", "b.toml"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("extract train at pool5, fc7: one pass for 2 cut points"),
        "{err}"
    );
    assert_eq!(
        err.matches("feature cache hit").count(),
        2,
        "both runs read the pass's entries: {err}"
    );
}

#[test]
fn the_input_as_a_cut_point_leaves_the_later_ones_as_single_runs_compute_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    // the input (normalised pixels) and the stem, pooled: the stem must be computed from the raw
    // pixels, normalised once
    let body = "name = \"inlayers\"\nseed = 6\n[backbone]\narch = \"resnet18\"\nweights = \"random\"\noutput = \"stem\"\npool = \"avg\"\ninput_size = 64\n\
        [dataset]\nkind = \"synthetic\"\nper_class = 1\nval_fraction = 0.3\n[train]\nepochs = 1\n\
        [sweep]\n\"backbone.output\" = [\"input\", \"stem\"]\n";
    sweep_matches_single_runs(d.path(), body, 2);
}
