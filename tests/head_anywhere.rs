//! The head on any layer: `backbone.output` (layers above it are neither loaded nor run),
//! `backbone.pool` (global pooling of a feature map), `backbone.input_size` (another input
//! side when no fc layer runs), and the MNIST family's IDX files as a dataset.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use runner::weights::npy;
use runner::weights::pickle::Limits;

fn check_err(dir: &Path, body: &str, must: &[&str]) {
    std::fs::write(dir.join("s.toml"), body).unwrap();
    let out = run_in(dir, &["check", "s.toml"]);
    assert_clean_failure(&out, must);
    assert_eq!(out.status.code(), Some(2));
}

const BASE: &str = "[dataset]\nkind = \"synthetic\"\nper_class = 2\n[run]\ndevice = \"cpu\"\n";

#[test]
fn output_pool_and_input_size_are_validated_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let bb = |extra: &str| format!("[backbone]\nweights = \"random\"\n{extra}\n{BASE}");
    check_err(
        d.path(),
        &bb("freeze = \"fc6\"\noutput = \"pool5\""),
        &[
            "s.toml:4:1",
            "backbone.output",
            "at or above the freeze point",
        ],
    );
    check_err(
        d.path(),
        &bb("freeze = \"pool5\"\noutput = \"fc6\"\npool = \"avg\""),
        &["backbone.pool", "feature map"],
    );
    check_err(
        d.path(),
        &bb("input_size = 64"),
        &["backbone.input_size", "fc layers", "227"],
    );
    // AlexNet's pool5 needs at least 57 pixels (conv1 /4, three 3/2 poolings)
    check_err(
        d.path(),
        &bb("freeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 56"),
        &["backbone.input_size", "57..=1024"],
    );
    check_err(
        d.path(),
        &bb("output = \"pool9\""),
        &["backbone.output", "no layer \"pool9\"", "did you mean"],
    );
    // a file without fc layers is not asked for them: the default output is fc7
    std::fs::write(
        d.path().join("ok.toml"),
        bb("freeze = \"pool5\"\noutput = \"pool5\"\npool = \"max\"\ninput_size = 57"),
    )
    .unwrap();
    let out = run_in(d.path(), &["check", "ok.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn extract(dir: &Path, backbone: &str) -> (Vec<usize>, Vec<f32>) {
    let spec = format!("[backbone]\nweights = \"random\"\n{backbone}\n{BASE}");
    std::fs::write(dir.join("x.toml"), spec).unwrap();
    let out = run_in(dir, &["extract", "x.toml", "--out", "x.npz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = npy::read_npz(&dir.join("x.npz"), &Limits::default()).unwrap();
    let f = &m.iter().find(|(k, _)| k == "features").unwrap().1;
    (f.shape.clone(), f.to_f32_c().unwrap())
}

#[test]
fn global_pooling_is_the_mean_or_max_of_each_channel_at_any_input_size() {
    let d = tempfile::tempdir().unwrap();
    // 99 pixels: conv1 25, pool1 12, pool2 5, pool5 2x2
    let (shape, plain) = extract(
        d.path(),
        "freeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 99",
    );
    assert_eq!(shape, vec![86, 256 * 2 * 2]);
    let (shape, avg) = extract(
        d.path(),
        "freeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 99\npool = \"avg\"",
    );
    assert_eq!(shape, vec![86, 256]);
    let (_, max) = extract(
        d.path(),
        "freeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 99\npool = \"max\"",
    );
    // `runner extract` flattens feature maps channels-last: (h, w, c)
    let mut nonzero = 0;
    for i in 0..86 {
        for c in 0..256 {
            let v: Vec<f32> = (0..4).map(|p| plain[i * 1024 + p * 256 + c]).collect();
            let mean = v.iter().sum::<f32>() / 4.0;
            let top = v.iter().copied().fold(f32::MIN, f32::max);
            assert!((avg[i * 256 + c] - mean).abs() <= 1e-5 * mean.abs().max(1.0));
            assert_eq!(max[i * 256 + c], top);
            nonzero += (top > 0.0) as usize;
        }
    }
    assert!(nonzero > 1000, "the features are not all zero ({nonzero})");
}

#[test]
fn the_head_trains_on_pooled_conv_features_and_on_a_pooled_tail() {
    let d = tempfile::tempdir().unwrap();
    for (name, backbone) in [
        // the cache holds 256 pooled values per image
        (
            "cached",
            "freeze = \"pool5\"\noutput = \"pool5\"\npool = \"avg\"\ninput_size = 67",
        ),
        // conv5 trains, its pooled output feeds the head
        (
            "tail",
            "freeze = \"conv4\"\noutput = \"pool5\"\npool = \"max\"\ninput_size = 67",
        ),
    ] {
        let spec = format!(
            "name = \"{name}\"\n[backbone]\nweights = \"random\"\n{backbone}\n[dataset]\nkind = \"synthetic\"\nper_class = 4\nval_fraction = 0.25\n\
             [train]\nepochs = 2\n[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n"
        );
        std::fs::write(d.path().join(format!("{name}.toml")), spec).unwrap();
        let out = run_in(d.path(), &["run", &format!("{name}.toml")]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let runs: Vec<_> = std::fs::read_dir(d.path().join("results").join(name))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("summary.json").is_file())
            .collect();
        assert_eq!(runs.len(), 1, "{name}");
        let head = std::fs::read(runs[0].path().join("head.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&head).unwrap();
        assert_eq!(
            st.tensor("head.0.weight").unwrap().shape(),
            &[43, 256],
            "{name}"
        );
    }
    // the pooled cache entry is 256 wide
    let cache: Vec<_> = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .collect();
    let widths: Vec<usize> = cache
        .iter()
        .map(|e| {
            let b = std::fs::read(e.path()).unwrap();
            let st = safetensors::SafeTensors::deserialize(&b).unwrap();
            st.tensor("features").unwrap().shape()[1..].iter().product()
        })
        .collect();
    assert!(widths.contains(&256), "{widths:?}");
}

use runner::data::idx::encode as idx;

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_files_train_like_any_dataset() {
    let d = tempfile::tempdir().unwrap();
    // two classes of 28x28 grey images: bright squares top-left or bottom-right
    let (n, side) = (40u32, 28usize);
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = (i % 2) as u8;
        for y in 0..side {
            for x in 0..side {
                let on = if c == 0 {
                    x < 14 && y < 14
                } else {
                    x >= 14 && y >= 14
                };
                px.push(if on { 220 } else { 20 + (i as u8 % 7) });
            }
        }
        labels.push(c);
    }
    std::fs::create_dir_all(d.path().join("fm")).unwrap();
    std::fs::write(
        d.path().join("fm/train-images-idx3-ubyte.gz"),
        gz(&idx(&[n, side as u32, side as u32], &px)),
    )
    .unwrap();
    std::fs::write(
        d.path().join("fm/train-labels-idx1-ubyte.gz"),
        gz(&idx(&[n], &labels)),
    )
    .unwrap();
    let spec = "name = \"fm\"\n[backbone]\nweights = \"random\"\nfreeze = \"pool5\"\noutput = \"pool5\"\npool = \"avg\"\ninput_size = 67\n\
                [dataset]\nkind = \"idx\"\npath = \"fm/train-images-idx3-ubyte.gz\"\nval_fraction = 0.25\n\
                [train]\nepochs = 3\n[run]\ndevice = \"cpu\"\n";
    std::fs::write(d.path().join("fm.toml"), spec).unwrap();
    let out = run_in(d.path(), &["run", "fm.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Vec<_> = std::fs::read_dir(d.path().join("results/fm"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("summary.json")).ok())
        .collect();
    let s: serde_json::Value = serde_json::from_str(&summary[0]).unwrap();
    assert_eq!(s["n_train"], 30);
    assert_eq!(s["n_val"], 10);
    assert_eq!(s["classes"], 2);

    // labels_path names another labels file; a count that differs is a clear error
    std::fs::write(d.path().join("fm/short-labels"), idx(&[3], &[0, 1, 0])).unwrap();
    let bad = spec.replace(
        "val_fraction",
        "labels_path = \"fm/short-labels\"\nval_fraction",
    );
    std::fs::write(d.path().join("bad.toml"), bad).unwrap();
    assert_clean_failure(
        &run_in(d.path(), &["run", "bad.toml"]),
        &["short-labels", "holds 3 labels", "40 images"],
    );
}
