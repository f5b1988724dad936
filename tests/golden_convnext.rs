//! torchvision's ConvNeXt-Tiny at every cut point, against `create_feature_extractor`
//! (tests/reference/convnext_golden.py -> tests/fixtures/convnext_golden.npz), with formula
//! weights at the real widths and depths (LayerNorm scales and shifts, layer scales that are not
//! 0/1), on runner's CPU kernels and on candle's ops; timm's names; fine-tuning above the freeze
//! point.

mod common;

use candle_core::Device;
use common::*;
use runner::backbone::{Arch, Backends, Network};
use runner::weights::{HostTensor, WeightSet};

const ARCH: Arch = Arch::ConvNextTiny;

fn golden(key: &str) -> Vec<f32> {
    fixture_array("convnext_golden.npz", key)
}

fn formula_set() -> WeightSet {
    torch_formula_set(ARCH)
}

fn check_every_cut(set: &WeightSet, backends: Backends, what: &str) {
    let last = ARCH.layers().len() - 1;
    let how = (&ARCH.preprocess(), backends);
    let net = Network::new_until(ARCH, set, &Device::Cpu, last, how).unwrap();
    let mut f = formula_batch(1, 64);
    for (i, cut) in ARCH.layers().iter().enumerate().skip(1) {
        f = net.forward_range(&f, i - 1, i).unwrap();
        assert_eq!(f.dims()[1..], ARCH.output_shape_at(i, 64)[..], "{cut}");
        let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
        let err = rel_l2(&got, &golden(&format!("convnext_tiny/{cut}")));
        eprintln!("{what} convnext_tiny {cut}: relative L2 error {err:.2e}");
        assert!(err <= 1e-5, "{what} {cut}: relative L2 {err:.3e}");
    }
}

#[test]
fn every_cut_point_matches_torchvision() {
    let names = Some("convnext_tiny_names.txt");
    check_formula_fixture("convnext_golden.npz", (1, 64), ARCH, names);
    check_every_cut(&formula_set(), Backends::default(), "cpu kernels");
    check_every_cut(
        &formula_set(),
        Backends::parse(Some("candle"), None).unwrap(),
        "candle ops",
    );
}

#[test]
fn timms_names_and_gamma_shapes_load_as_torchvisions() {
    // the formula's tensors under timm's names, layer scales as timm's `gamma` of shape [d]
    let dir = tempfile::tempdir().unwrap();
    let mut timm = WeightSet::default();
    for (name, t) in formula_set().tensors {
        let alt = ARCH.alt_names(&name);
        let (_, timm_name) = alt
            .iter()
            .find(|(src, _)| *src == "timm")
            .unwrap_or_else(|| panic!("no timm name for {name}"));
        let shape = match name.ends_with("layer_scale") {
            true => vec![t.shape[0]],
            false => t.shape.clone(),
        };
        timm.tensors.insert(
            timm_name.clone(),
            HostTensor {
                shape,
                data: t.data,
            },
        );
    }
    assert!(timm
        .tensors
        .contains_key("stages.2.blocks.8.mlp.fc2.weight"));
    assert_eq!(timm.tensors["stages.3.blocks.2.gamma"].shape, vec![768]);
    let file = dir.path().join("timm.safetensors");
    timm.save_safetensors(&file).unwrap();
    let set = runner::weights::load(&file, ARCH).unwrap();
    check_every_cut(&set, Backends::default(), "timm names");
}

#[test]
fn a_fine_tune_above_the_freeze_point_trains_the_last_stage_and_the_final_norm() {
    let d = tempfile::tempdir().unwrap();
    formula_set()
        .save_safetensors(&d.path().join("c.safetensors"))
        .unwrap();
    let spec = "name = \"tune\"\nseed = 3\n[backbone]\narch = \"convnext_tiny\"\nweights = \"c.safetensors\"\n\
                input_size = 32\nfreeze = \"features.6\"\n\
                [dataset]\nkind = \"synthetic\"\nper_class = 4\nval_fraction = 0.25\n\
                [train]\nepochs = 6\nbatch_size = 16\nlr = 0.001\n[run]\ndevice = \"cpu\"\ncache = false\n";
    std::fs::write(d.path().join("tune.toml"), spec).unwrap();
    let out = run_in(d.path(), &["-q", "tune.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(d.path(), "tune");
    let (first, last) = first_last_loss(&run);
    assert!(last < first * 0.9, "loss {first} -> {last}");
    let names = trained_tensors(&run, &formula_set());
    let tail = |n: &String| n.starts_with("features.7.") || n.starts_with("classifier.0.");
    assert!(names.iter().all(tail), "{names:?}");
    // 3 blocks x (depthwise conv, norm, fc1, fc2: weight + bias each; layer scale) + the final norm
    assert_eq!(names.len(), 3 * 9 + 2, "{names:?}");
    assert!(names.iter().any(|n| n == "features.7.2.layer_scale"));
}
