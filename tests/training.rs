//! Training on frozen features: the stop-gradient boundary, the feature cache, per-epoch CSV
//! results, and what a crash leaves behind.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use rand::SeedableRng;

const COLUMNS: &str =
    "epoch,train_loss,train_acc,val_loss,val_acc,val_top5,lr,epoch_seconds,train_seconds,\
eval_seconds,samples_per_second,extract_seconds,cache_hit,device,device_name";

fn write_spec(dir: &Path, name: &str, extra: &str) -> String {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nseed = 3\n[backbone]\nweights = \"random\"\nfreeze = \"fc7\"\n\
             [dataset]\nkind = \"synthetic\"\nper_class = 3\nval_fraction = 0.34\n\
             [train]\nepochs = 3\n[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\nresults_dir = \"res\"\n{extra}"
        ),
    )
    .unwrap();
    p.to_string_lossy().to_string()
}

fn read_csv(path: &Path) -> (String, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().unwrap().iter().collect::<Vec<_>>().join(",");
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

fn col(header: &str, name: &str) -> usize {
    header.split(',').position(|c| c == name).unwrap()
}

fn only_run_dir(dir: &Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(v.len(), 1, "{v:?}");
    v.pop().unwrap()
}

#[test]
fn cache_is_reused_across_runs_and_head_settings() {
    let d = tempfile::tempdir().unwrap();
    let s = write_spec(d.path(), "c", "");
    let out = run_in(d.path(), &["-q", &s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = only_run_dir(&d.path().join("res/c"));
    for f in [
        "config.toml",
        "epochs.csv",
        "head.safetensors",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let (h, rows) = read_csv(&run.join("epochs.csv"));
    assert!(h.starts_with(COLUMNS), "columns: {h}");
    assert_eq!(rows.len(), 3, "one row per epoch");
    assert_eq!(rows[0][col(&h, "cache_hit")], "false");
    assert!(rows[0][col(&h, "extract_seconds")].parse::<f64>().unwrap() > 0.0);
    assert_eq!(
        rows[1][col(&h, "extract_seconds")],
        "0.0",
        "extraction is counted in epoch 1 only"
    );
    assert!(rows[0][col(&h, "device_name")].starts_with("cpu ("));
    let cache_files = || {
        std::fs::read_dir(d.path().join("cache"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "safetensors")
            })
            .count()
    };
    assert_eq!(cache_files(), 1);

    // the same spec again: a cache hit
    let out = run_in(d.path(), &["-q", &s]);
    assert!(out.status.success());
    let (h, rows2) = read_csv(&run.join("epochs.csv"));
    assert_eq!(rows2[0][col(&h, "cache_hit")], "true");
    assert_eq!(rows2[0][col(&h, "extract_seconds")], "0.0");
    // identical metrics: same seed, same features
    assert_eq!(rows2[2][col(&h, "val_acc")], rows[2][col(&h, "val_acc")]);

    // a spec that changes only the learning rate reuses the same entry
    let out = run_in(d.path(), &["-q", &s, "--set", "train.lr=0.01"]);
    assert!(out.status.success());
    assert_eq!(cache_files(), 1, "no new cache entry");
    let runs: Vec<_> = std::fs::read_dir(d.path().join("res/c"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 2, "a different config is a different run");
    let (_, summary) = read_csv(&d.path().join("res/c/summary.csv"));
    assert_eq!(
        summary.len(),
        2,
        "one summary row per run: the rerun replaced its row"
    );
    assert_ne!(summary[0][0], summary[1][0], "rows of different run ids");

    // a damaged cache file is detected and rebuilt
    let cf = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .unwrap();
    let mut b = std::fs::read(&cf).unwrap();
    let n = b.len();
    b[n - 7] ^= 0xff;
    std::fs::write(&cf, &b).unwrap();
    let out = run_in(d.path(), &[&s]);
    assert!(out.status.success());
    // said once for the one file
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("damaged cache file").count(), 1, "{err}");
    let (h, rows3) = read_csv(&run.join("epochs.csv"));
    assert_eq!(
        rows3[0][col(&h, "cache_hit")],
        "false",
        "corrupt cache must not be trusted"
    );
    assert_eq!(rows3[2][col(&h, "val_acc")], rows[2][col(&h, "val_acc")]);
}

fn check_boundary(freeze: &str, trainable: &[&str]) {
    use runner::backbone::{Arch, Network};
    use runner::train::{head::Head, Model, Split};
    let dev = Device::Cpu;
    let spec = runner::spec::load_str(
        Path::new("t.toml"),
        &format!("[backbone]\nweights = \"random\"\nfreeze = \"{freeze}\"\n[dataset]\nkind = \"synthetic\"\n[train]\nepochs = 2\nbatch_size = 16\n"),
        &[],
        Vec::new(),
    )
    .unwrap();
    let set = runner::weights::random(Arch::AlexNet, 1);
    let mut net = Network::new(Arch::AlexNet, &set, &dev).unwrap();
    let layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"];
    let snapshot = |net: &Network| -> Vec<Vec<f32>> {
        layers
            .iter()
            .map(|l| {
                net.tensors(l)[0]
                    .1
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    };
    let before = snapshot(&net);
    let (from, until) = (spec.freeze, Arch::AlexNet.feature_end());
    let vars = net.make_trainable(from, until).unwrap();
    let names: Vec<String> = trainable
        .iter()
        .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
        .collect();
    assert_eq!(vars.iter().map(|v| v.0.clone()).collect::<Vec<_>>(), names);
    let data = runner::data::synthetic::generate(1, 2);
    let x = runner::data::preprocess::to_input(
        &data.images,
        (data.n, 32, 32),
        227,
        runner::data::preprocess::ResizeMethod::Tf1,
        &dev,
        &Default::default(),
    )
    .unwrap();
    let f = net.forward_until(&x, from).unwrap().detach();
    let split = Split::new(f, &data.labels, &dev).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let head = Head::new(
        4096,
        43,
        &runner::spec::HeadSection::default(),
        None,
        &mut rng,
        &dev,
    )
    .unwrap();
    let head_before: Vec<f32> = head.layers[0]
        .0
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let model = Model {
        tail: Some((net, from, until)),
        tail_vars: vars,
        head,
        backbone_dropout: 0.5,
        tail_pool: runner::spec::Pool::None,
        backends: Default::default(),
    };
    let out = runner::train::fit(&spec, &model, &split, &split, &dev, |_, _| Ok(true)).unwrap();
    assert_eq!(out.epochs_run, 2);
    let after = snapshot(&model.tail.as_ref().unwrap().0);
    for ((layer, b), a) in layers.iter().zip(&before).zip(&after) {
        if trainable.contains(layer) {
            assert_ne!(
                a, b,
                "{layer} is above the boundary {freeze} and must train"
            );
        } else {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{layer} is frozen but changed"
            );
        }
    }
    let head_now: Vec<f32> = model.head.layers[0]
        .0
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(head_now, head_before, "the head must train");
}

#[test]
fn frozen_weights_stay_bit_identical_and_trainable_ones_move() {
    check_boundary("fc6", &["fc7"]);
}

#[test]
fn fine_tuning_above_pool5_trains_fc6_and_fc7_only() {
    check_boundary("pool5", &["fc6", "fc7"]);
}

#[test]
fn quickstart_sized_run_learns_well_above_chance() {
    let d = tempfile::tempdir().unwrap();
    let s = write_spec(d.path(), "q", "");
    let out = run_in(
        d.path(),
        &[
            "-q",
            &s,
            "--set",
            "dataset.per_class=10",
            "--set",
            "train.epochs=30",
            "--set",
            "dataset.val_fraction=0.3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = only_run_dir(&d.path().join("res/q"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let acc = summary["best_val_acc"].as_f64().unwrap();
    assert!(
        acc > 3.0 / 43.0,
        "val accuracy {acc} is not above 3x chance"
    );
    assert_eq!(summary["status"], "finished");
    assert_eq!(summary["epochs_run"], 30);
}

#[test]
fn sigkill_mid_training_leaves_a_valid_csv_and_no_corrupt_cache() {
    let d = tempfile::tempdir().unwrap();
    let s = write_spec(d.path(), "k", "");
    let mut child = runner()
        .current_dir(d.path())
        .args(["-q", &s, "--set", "train.epochs=100000"])
        .spawn()
        .unwrap();
    let csv_path = loop {
        // the run's folder (not its `.<run_id>.lock` beside it)
        if let Some(run) = std::fs::read_dir(d.path().join("res/k"))
            .ok()
            .and_then(|mut r| r.find(|e| e.as_ref().is_ok_and(|e| e.path().is_dir())))
        {
            let p = run.unwrap().path().join("epochs.csv");
            if p.is_file() && std::fs::read_to_string(&p).unwrap().lines().count() > 3 {
                break p;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "runner ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let (h, rows) = read_csv(&csv_path);
    assert!(h.starts_with(COLUMNS));
    assert!(rows.len() >= 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), h.split(',').count(), "row {i} complete");
        assert_eq!(r[0], (i + 1).to_string());
    }
    assert!(
        !csv_path.parent().unwrap().join("summary.json").exists(),
        "a killed run is not finished"
    );
    // the cache entry written before training is complete and trusted
    let entries: Vec<_> = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .count(),
        1
    );
    // a rerun (shorter, so another run folder) finishes and hits the cache
    let out = run_in(d.path(), &["-q", &s]);
    assert!(out.status.success());
    let finished: Vec<_> = std::fs::read_dir(d.path().join("res/k"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    assert_eq!(finished.len(), 1);
    let (h, rows) = read_csv(&finished[0].join("epochs.csv"));
    assert_eq!(
        rows[0][col(&h, "cache_hit")],
        "true",
        "the cache must be intact after the kill"
    );
}
