//! The seed's AlexNet, end to end through the real file readers and the `runner` binary,
//! against TensorFlow's outputs (tests/reference/alexnet_golden.py -> tests/fixtures).

mod common;

use common::*;
use runner::backbone::Arch;
use runner::weights::{formula, npy, pickle::Limits};

fn golden() -> Vec<(String, Vec<f32>)> {
    let members = npy::read_npz(&fixture("alexnet_golden.npz"), &Limits::default()).unwrap();
    members
        .into_iter()
        .filter(|(_, a)| a.dtype.is_float())
        .map(|(k, a)| (k, a.to_f32_c().unwrap()))
        .collect()
}

fn golden_ints(key: &str) -> Vec<i64> {
    let members = npy::read_npz(&fixture("alexnet_golden.npz"), &Limits::default()).unwrap();
    members
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap()
        .1
        .to_i64_c()
        .unwrap()
}

fn extract(dir: &std::path::Path, freeze: &str, data: &str, resize: &str) -> Vec<f32> {
    extract_as(dir, freeze, data, resize, "f32")
}

fn extract_as(
    dir: &std::path::Path,
    freeze: &str,
    data: &str,
    resize: &str,
    dtype: &str,
) -> Vec<f32> {
    let spec = dir.join(format!("{freeze}_{data}.toml"));
    std::fs::write(
        &spec,
        format!(
            "[backbone]\narch = \"alexnet\"\nweights = \"w.npy\"\nfreeze = \"{freeze}\"\n\
             [dataset]\nkind = \"pickle\"\npath = \"{data}\"\nresize = \"{resize}\"\n\
             [run]\ndevice = \"cpu\"\nextract_batch = 2\ndtype = \"{dtype}\"\n"
        ),
    )
    .unwrap();
    let out = run_in(dir, &["extract", spec.to_str().unwrap(), "--out", "x.npz"]);
    assert!(
        out.status.success(),
        "extract failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members = npy::read_npz(&dir.join("x.npz"), &Limits::default()).unwrap();
    let labels = members
        .iter()
        .find(|(k, _)| k == "labels")
        .unwrap()
        .1
        .to_i64_c()
        .unwrap();
    assert_eq!(labels.len(), if data == "s32.p" { 3 } else { 2 });
    assert_eq!(labels[1], 1, "labels are written in file order");
    let f = &members.iter().find(|(k, _)| k == "features").unwrap().1;
    assert_eq!(f.shape[0], labels.len());
    f.to_f32_c().unwrap()
}

#[test]
fn alexnet_features_match_tensorflow() {
    let dir = tempfile::tempdir().unwrap();
    write_formula_npy(&dir.path().join("w.npy"), Arch::AlexNet);

    let small = formula::images(3, 32, 32);
    let sums: Vec<i64> = small
        .chunks(32 * 32 * 3)
        .map(|c| c.iter().map(|&v| v as i64).sum())
        .collect();
    assert_eq!(
        sums,
        golden_ints("s32_pixel_sum"),
        "image formula differs from formula.py"
    );
    write_train_p(&dir.path().join("s32.p"), small, 3, 32, 32, &[0, 1, 2]);

    let full = formula::images(2, 227, 227);
    let sums: Vec<i64> = full
        .chunks(227 * 227 * 3)
        .map(|c| c.iter().map(|&v| v as i64).sum())
        .collect();
    assert_eq!(sums, golden_ints("s227_pixel_sum"));
    write_train_p(&dir.path().join("s227.p"), full, 2, 227, 227, &[0, 1]);

    let gold = golden();
    let want = |k: &str| gold.iter().find(|(n, _)| n == k).unwrap().1.clone();
    for (data, prefix) in [("s32.p", "s32"), ("s227.p", "s227")] {
        for layer in ["fc7", "fc6", "pool5", "fc8"] {
            let got = extract(dir.path(), layer, data, "tf1");
            let err = rel_l2(&got, &want(&format!("{prefix}_{layer}")));
            eprintln!("{prefix} {layer}: relative L2 error {err:.2e}");
            assert!(
                err <= 1e-4,
                "{prefix} {layer}: relative L2 error {err:.3e} > 1e-4"
            );
        }
    }
    // The modern resize is a different function: it must not match the seed's graph.
    let hp = extract(dir.path(), "fc7", "s32.p", "half_pixel");
    let err = rel_l2(&hp, &want("s32_fc7"));
    assert!(
        err > 1e-3,
        "half_pixel resize should differ from tf1 ({err:.2e})"
    );
}

#[test]
fn bf16_on_the_cpu_is_refused_with_a_reason() {
    // candle's CPU backend has no bf16 matrix product: the run must say so (exit 2), not fail
    // deep inside a convolution.
    let dir = tempfile::tempdir().unwrap();
    write_formula_npy(&dir.path().join("w.npy"), Arch::AlexNet);
    write_train_p(
        &dir.path().join("s32.p"),
        formula::images(3, 32, 32),
        3,
        32,
        32,
        &[0, 1, 2],
    );
    let spec = dir.path().join("bf16.toml");
    std::fs::write(
        &spec,
        "[backbone]\narch = \"alexnet\"\nweights = \"w.npy\"\nfreeze = \"fc7\"\n\
         [dataset]\nkind = \"pickle\"\npath = \"s32.p\"\n[run]\ndevice = \"cpu\"\ndtype = \"bf16\"\n",
    )
    .unwrap();
    let out = run_in(dir.path(), &["extract", "bf16.toml", "--out", "x.npz"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("run.dtype = \"bf16\" runs on CUDA only"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!dir.path().join("x.npz").exists());
}
