//! Helpers shared by the integration tests: formula weights written as real files, tiny
//! datasets in the train.p format, and running the `runner` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use runner::backbone::Arch;
use runner::weights::formula;
use runner::weights::pickle_write::{write_npy_object, write_pickle, Flavor, PyObj};

/// The formula weights of `arch` as a dict {layer: [W, b]} in the seed's layout.
pub fn formula_dict(arch: Arch) -> PyObj {
    let raw = formula::tf_layout(arch, 0);
    PyObj::Dict(
        arch.params()
            .iter()
            .zip(raw)
            .map(|(spec, (w, b))| {
                (
                    spec.layer.to_string(),
                    PyObj::List(vec![
                        PyObj::f32_array(spec.seed_weight_shape(), &w),
                        PyObj::f32_array(vec![spec.bias_len()], &b),
                    ]),
                )
            })
            .collect(),
    )
}

/// Write the formula weights as a Python-2-style `np.save` dict (like bvlc-alexnet.npy).
pub fn write_formula_npy(path: &Path, arch: Arch) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write_npy_object(&mut f, &formula_dict(arch), Flavor::Python2).unwrap();
}

/// Write a train.p-style pickle (Python 3 flavour).
pub fn write_train_p(path: &Path, images: Vec<u8>, n: usize, h: usize, w: usize, labels: &[i64]) {
    let obj = PyObj::Dict(vec![
        ("features".into(), PyObj::u8_array(vec![n, h, w, 3], images)),
        ("labels".into(), PyObj::i64_array(vec![n], labels)),
    ]);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write_pickle(&mut f, &obj, Flavor::Python3).unwrap();
}

pub fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runner"))
}

pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    runner()
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Relative L2 error ||a - b|| / ||b||.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Assert the process failed with a one-paragraph error and no panic.
pub fn assert_clean_failure(out: &Output, must_contain: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    assert!(err.starts_with("error: "), "error line expected: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one paragraph expected: {err}"
    );
    for m in must_contain {
        assert!(err.contains(m), "stderr should mention {m:?}: {err}");
    }
}

/// The `.safetensors` files in `dir` whose names contain `part` (a feature cache's entries or
/// shards), sorted by name.
pub fn cache_files(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.ends_with(".safetensors") && n.contains(part)
        })
        .collect();
    v.sort();
    v
}

/// The raw bytes of the `features` tensors of cache files, one after another (one entry, or
/// its shards in order).
pub fn feature_bytes(files: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        let b = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        out.extend_from_slice(st.tensor("features").unwrap().data());
    }
    out
}

/// The formula weights of a PyTorch-defined `arch` in runner's (PyTorch's) layout, as the
/// reference scripts compute them (`formula.torch_tensors`).
pub fn torch_formula_set(arch: Arch) -> runner::weights::WeightSet {
    let mut set = runner::weights::WeightSet::default();
    for (name, shape, data) in formula::torch_layout(arch) {
        set.tensors
            .insert(name, runner::weights::HostTensor { shape, data });
    }
    set
}

/// `n` formula images of `side x side` as a raw-pixel NCHW batch (the network normalises it).
pub fn formula_batch(n: usize, side: usize) -> candle_core::Tensor {
    let px = formula::images(n, side, side);
    let x = runner::data::preprocess::to_input(
        &px,
        (n, side, side),
        side,
        runner::data::preprocess::ResizeMethod::Tf1,
        &candle_core::Device::Cpu,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(x.dims(), &[n, 3, side, side]);
    x
}

/// Array `key` of the fixture `file` (an .npz), as f32.
pub fn fixture_array(file: &str, key: &str) -> Vec<f32> {
    let limits = runner::weights::pickle::Limits::default();
    let gold = runner::weights::npy::read_npz(&fixture(file), &limits).unwrap();
    let a = &gold
        .iter()
        .find(|(n, _)| n == key)
        .unwrap_or_else(|| panic!("{file}: {key}"))
        .1;
    a.to_f32_c().unwrap()
}

/// Checks that the sum of `n` formula images of `side x side` is the fixture's `pixel_sum`, and
/// that runner's tensor names for `arch` are `names_file`'s lines (a reference's state-dict
/// names, in order), when it is given.
pub fn check_formula_fixture(
    file: &str,
    (n, side): (usize, usize),
    arch: Arch,
    names_file: Option<&str>,
) {
    let px: i64 = formula::images(n, side, side)
        .iter()
        .map(|&v| v as i64)
        .sum();
    let limits = runner::weights::pickle::Limits::default();
    let gold = runner::weights::npy::read_npz(&fixture(file), &limits).unwrap();
    let want = &gold.iter().find(|(k, _)| k == "pixel_sum").unwrap().1;
    assert_eq!(vec![px], want.to_i64_c().unwrap(), "image formula");
    if let Some(names) = names_file {
        let want = std::fs::read_to_string(fixture(names)).unwrap();
        let got: Vec<String> = formula::torch_layout(arch)
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(
            got,
            want.lines().collect::<Vec<_>>(),
            "{}: the reference's names",
            arch.name()
        );
    }
}

/// The folder of the finished run `name` under `root/results`.
pub fn run_dir(root: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(root.join("results").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .unwrap()
}

/// (first, last) epoch's training loss of a run folder.
pub fn first_last_loss(run: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let mut lines = text.lines();
    let col = lines
        .next()
        .unwrap()
        .split(',')
        .position(|c| c == "train_loss")
        .unwrap();
    let v: Vec<f64> = lines
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    (v[0], v[v.len() - 1])
}

/// The backbone tensors a run trained (its `head.safetensors` without `head.*`), by name; each
/// is checked to differ from `loaded`'s tensor of that name.
pub fn trained_tensors(run: &Path, loaded: &runner::weights::WeightSet) -> Vec<String> {
    let bytes = std::fs::read(run.join("head.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = Vec::new();
    for (name, view) in st.tensors() {
        if name.starts_with("head.") {
            continue;
        }
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_ne!(got, loaded.tensors[&name].data, "{name} did not change");
        names.push(name);
    }
    names.sort();
    names
}

/// `runner extract` of the experiment `spec` (its text, written to `dir/x.toml`): the shape and
/// values of the `features` array it writes.
pub fn extract_spec(dir: &Path, spec: &str) -> (Vec<usize>, Vec<f32>) {
    std::fs::write(dir.join("x.toml"), spec).unwrap();
    let out = run_in(dir, &["-q", "extract", "x.toml", "--out", "x.npz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = runner::weights::pickle::Limits::default();
    let got = runner::weights::npy::read_npz(&dir.join("x.npz"), &limits).unwrap();
    let f = &got.iter().find(|(k, _)| k == "features").unwrap().1;
    (f.shape.clone(), f.to_f32_c().unwrap())
}
