//! EfficientNet-B0 (torchvision) and EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch`) at
//! every cut point, against their reference implementations (tests/reference/
//! efficientnet_golden.py -> tests/fixtures/efficientnet_golden.npz), with formula weights at
//! the real widths and depths whose batch-norm scales, shifts and statistics are not 0/1, on two
//! 48x48 images (odd map sizes, so Lite0's TensorFlow padding is uneven); on runner's CPU
//! kernels and on candle's ops (the path GPUs and trainable layers take). Then fine-tuning above
//! the freeze point, extraction in (C, H, W) order, and the spec defaults.

mod common;

use candle_core::Device;
use common::*;
use runner::backbone::{Arch, Backends, Network};
use runner::weights::{formula, WeightSet};

/// The cut points after `input`.
const CUTS: &[&str] = runner::arch::efficientnet::LAYERS.split_at(1).1;
const ARCHS: [Arch; 2] = [Arch::EfficientNetB0, Arch::EfficientNetLite0];

fn golden(key: &str) -> Vec<f32> {
    fixture_array("efficientnet_golden.npz", key)
}

fn check_every_cut(backends: Backends, what: &str) {
    let x = formula_batch(2, 48);
    for arch in ARCHS {
        let how = (&arch.preprocess(), backends);
        let last = arch.layers().len() - 1;
        let net =
            Network::new_until(arch, &torch_formula_set(arch), &Device::Cpu, last, how).unwrap();
        let mut f = x.clone();
        for (i, cut) in CUTS.iter().enumerate() {
            // one cut point at a time, each from the previous one's output
            f = net.forward_range(&f, i, i + 1).unwrap();
            assert_eq!(f.dims()[1..], arch.output_shape_at(i + 1, 48)[..], "{cut}");
            let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
            let err = rel_l2(&got, &golden(&format!("{}/{cut}", arch.name())));
            eprintln!("{what} {} {cut}: relative L2 error {err:.2e}", arch.name());
            assert!(
                err <= 1e-5,
                "{what} {} {cut}: relative L2 {err:.3e}",
                arch.name()
            );
        }
        // and in one go from the input
        let f = net.forward_until(&x, last).unwrap();
        let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
        assert!(rel_l2(&got, &golden(&format!("{}/logits", arch.name()))) <= 1e-5);
    }
}

#[test]
fn every_cut_point_matches_the_references() {
    for arch in ARCHS {
        let names = format!("{}_names.txt", arch.name());
        check_formula_fixture("efficientnet_golden.npz", (2, 48), arch, Some(&names));
    }
    check_every_cut(Backends::default(), "cpu kernels");
}

#[test]
fn candles_ops_match_the_references_too() {
    // RUNNER_CONV=candle: candle's convolutions, and depthwise ones as a sum of shifted
    // products, which is what a GPU without the cuDNN path and every trainable layer run
    check_every_cut(Backends::parse(Some("candle"), None).unwrap(), "candle ops");
}

/// Fine-tune features.7 and .8 of `arch` above `freeze = "features.6"`; the tensors that trained
/// (each checked to have moved from `loaded`'s) and the (first, last) epoch's training loss.
fn fine_tune(arch: Arch, weights: &str, loaded: &WeightSet) -> (Vec<String>, (f64, f64)) {
    let d = tempfile::tempdir().unwrap();
    if weights != "random" {
        loaded.save_safetensors(&d.path().join(weights)).unwrap();
    }
    let spec = format!(
        "name = \"tune\"\nseed = 3\n[backbone]\narch = \"{}\"\nweights = \"{weights}\"\n\
         input_size = 32\nfreeze = \"features.6\"\n\
         [dataset]\nkind = \"synthetic\"\nper_class = 4\nval_fraction = 0.25\n\
         [train]\nepochs = 6\nbatch_size = 16\nlr = 0.001\n[run]\ndevice = \"cpu\"\ncache = false\n",
        arch.name()
    );
    std::fs::write(d.path().join("tune.toml"), spec).unwrap();
    let out = run_in(d.path(), &["-q", "tune.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(d.path(), "tune");
    (trained_tensors(&run, loaded), first_last_loss(&run))
}

#[test]
fn a_fine_tune_above_the_freeze_point_trains_the_depthwise_and_excitation_layers() {
    // Lite0 with `weights = "random"` learns the synthetic classes
    let lite = Arch::EfficientNetLite0;
    let (names, (first, last)) = fine_tune(lite, "random", &runner::weights::random(lite, 3));
    assert!(last < first * 0.9, "lite0: loss {first} -> {last}");
    // _blocks.15 (features.7): expand, depthwise, project, each a conv + bn scale + shift;
    // features.8: the head conv + bn
    assert_eq!(names.len(), 3 * 3 + 3, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("_blocks.15.")
            || n.starts_with("_conv_head")
            || n.starts_with("_bn1.")),
        "{names:?}"
    );
    assert!(names.iter().all(|n| !n.contains("running_")), "{names:?}");
    // B0 trains its squeeze-and-excitation too. (Untrained, B0 shrinks the part of its
    // features that depends on the image block by block: with `weights = "random"` they are
    // about 1e-5, with torchvision's own initialisation 1e-14, and with the formula's weights
    // they barely differ between images; so this one is held to training the right tensors,
    // and to a loss that does not grow, not to learning.)
    let b0 = Arch::EfficientNetB0;
    let (names, (first, last)) = fine_tune(b0, "b0.safetensors", &torch_formula_set(b0));
    assert!(
        last.is_finite() && last <= first * 1.01,
        "b0: loss {first} -> {last}"
    );
    assert_eq!(names.len(), 3 * 3 + 2 * 2 + 3, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("features.7.") || n.starts_with("features.8.")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "features.7.0.block.1.0.weight"));
    assert!(names.iter().any(|n| n == "features.7.0.block.2.fc1.bias"));
}

#[test]
fn extract_writes_maps_in_pytorch_order_and_specs_default_to_pre_logits() {
    let dir = tempfile::tempdir().unwrap();
    torch_formula_set(Arch::EfficientNetLite0)
        .save_safetensors(&dir.path().join("lite.safetensors"))
        .unwrap();
    let d = dir.path().join("imgs/a");
    std::fs::create_dir_all(&d).unwrap();
    let px = formula::images(1, 48, 48);
    image::RgbImage::from_raw(48, 48, px)
        .unwrap()
        .save(d.join("0.png"))
        .unwrap();
    for cut in ["features.5", "pre_logits"] {
        let spec = format!(
            "[backbone]\narch = \"efficientnet_lite0\"\nweights = \"lite.safetensors\"\nfreeze = \"{cut}\"\n\
             input_size = 48\n[dataset]\nkind = \"folder\"\npath = \"imgs\"\nimage_size = 48\n\
             [run]\ndevice = \"cpu\"\n"
        );
        let (_, f) = extract_spec(dir.path(), &spec);
        let want = golden(&format!("efficientnet_lite0/{cut}"));
        let want = &want[..want.len() / 2]; // the first image
        let err = rel_l2(&f, want);
        assert!(err <= 1e-5, "{cut}: relative L2 {err:.3e}");
    }
    // no freeze/output: pre_logits; pool = "max" on a map works, on pre_logits it is an error
    let base = "[dataset]\nkind = \"synthetic\"\nper_class = 2\n[run]\ndevice = \"cpu\"\n";
    for arch in ["efficientnet_b0", "efficientnet_lite0"] {
        std::fs::write(
            dir.path().join("ok.toml"),
            format!("[backbone]\narch = \"{arch}\"\nweights = \"random\"\n{base}"),
        )
        .unwrap();
        let out = run_in(dir.path(), &["check", "ok.toml"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{arch} frozen to pre_logits")),
            "{text}"
        );
    }
    std::fs::write(
        dir.path().join("bad.toml"),
        format!("[backbone]\narch = \"efficientnet_b0\"\nweights = \"random\"\noutput = \"pre_logits\"\npool = \"max\"\n{base}"),
    )
    .unwrap();
    assert_clean_failure(
        &run_in(dir.path(), &["check", "bad.toml"]),
        &["backbone.pool", "feature map"],
    );
}
