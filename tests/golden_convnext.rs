//! torchvision's ConvNeXt-Tiny at every cut point, against `create_feature_extractor`
//! (tests/reference/convnext_golden.py -> tests/fixtures/convnext_golden.npz), with formula
//! weights at the real widths and depths (LayerNorm scales and shifts, layer scales that are not
//! 0/1), on runner's CPU kernels and on candle's ops; timm's names; fine-tuning above the freeze
//! point.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use runner::backbone::{Arch, Backends, Network};
use runner::weights::{formula, npy, pickle::Limits, HostTensor, WeightSet};

const ARCH: Arch = Arch::ConvNextTiny;

fn golden(key: &str) -> Vec<f32> {
    let gold = npy::read_npz(&fixture("convnext_golden.npz"), &Limits::default()).unwrap();
    let a = &gold.iter().find(|(n, _)| n == key).unwrap().1;
    a.to_f32_c().unwrap()
}

fn formula_set() -> WeightSet {
    let mut set = WeightSet::default();
    for (name, shape, data) in formula::torch_layout(ARCH) {
        set.tensors.insert(name, HostTensor { shape, data });
    }
    set
}

fn image() -> Tensor {
    let px = formula::images(1, 64, 64);
    let x = runner::data::preprocess::to_input(
        &px,
        (1, 64, 64),
        64,
        runner::data::preprocess::ResizeMethod::Tf1,
        &Device::Cpu,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(x.dims(), &[1, 3, 64, 64]);
    x
}

fn check_every_cut(set: &WeightSet, backends: Backends, what: &str) {
    let last = ARCH.layers().len() - 1;
    let how = (&ARCH.preprocess(), backends);
    let net = Network::new_until(ARCH, set, &Device::Cpu, last, how).unwrap();
    let mut f = image();
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
    let px: i64 = formula::images(1, 64, 64).iter().map(|&v| v as i64).sum();
    let gold = npy::read_npz(&fixture("convnext_golden.npz"), &Limits::default()).unwrap();
    let want = &gold.iter().find(|(n, _)| n == "pixel_sum").unwrap().1;
    assert_eq!(vec![px], want.to_i64_c().unwrap(), "image formula");
    let want = std::fs::read_to_string(fixture("convnext_tiny_names.txt")).unwrap();
    let got: Vec<String> = formula::torch_layout(ARCH)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        got,
        want.lines().collect::<Vec<_>>(),
        "torchvision's state-dict names, in order"
    );
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
    let run = std::fs::read_dir(d.path().join("results/tune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .unwrap();
    let text = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let loss: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(loss[loss.len() - 1] < loss[0] * 0.9, "loss {loss:?}");
    let bytes = std::fs::read(run.join("head.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let loaded = formula_set();
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
        assert!(
            name.starts_with("features.7.") || name.starts_with("classifier.0."),
            "{name}"
        );
        names.push(name);
    }
    // 3 blocks x (depthwise conv, norm, fc1, fc2: weight + bias each; layer scale) + the final norm
    assert_eq!(names.len(), 3 * 9 + 2, "{names:?}");
    assert!(names.iter().any(|n| n == "features.7.2.layer_scale"));
}
