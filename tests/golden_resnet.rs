//! torchvision's ResNet-18 and ResNet-50 at every cut point, against
//! `create_feature_extractor` (tests/reference/resnet_golden.py -> tests/fixtures/
//! resnet_golden.npz), with formula weights at the real widths and depths whose batch-norm
//! scales, shifts and statistics are not 0/1; and the readers on a reduced ResNet-18 saved by
//! real `torch.save` and safetensors' `save_file`.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use runner::backbone::{Arch, Network};
use runner::weights::{formula, npy, pickle::Limits, WeightSet};

/// The cut points after `input`.
const CUTS: &[&str] = runner::arch::resnet::LAYERS.split_at(1).1;

fn golden(key: &str) -> Vec<f32> {
    let gold = npy::read_npz(&fixture("resnet_golden.npz"), &Limits::default()).unwrap();
    let a = &gold.iter().find(|(n, _)| n == key).unwrap().1;
    a.to_f32_c().unwrap()
}

fn formula_set(arch: Arch) -> WeightSet {
    torch_formula_set(arch)
}

/// The formula image as a raw-pixel NCHW batch (the network normalises it).
fn image() -> Tensor {
    formula_batch(1, 64)
}

#[test]
fn every_cut_point_matches_torchvision() {
    let px: i64 = formula::images(1, 64, 64).iter().map(|&v| v as i64).sum();
    let gold = npy::read_npz(&fixture("resnet_golden.npz"), &Limits::default()).unwrap();
    let want = &gold.iter().find(|(n, _)| n == "pixel_sum").unwrap().1;
    assert_eq!(vec![px], want.to_i64_c().unwrap(), "image formula");
    let x = image();
    for arch in [Arch::ResNet18, Arch::ResNet50] {
        let net = Network::new(arch, &formula_set(arch), &Device::Cpu).unwrap();
        let mut f = x.clone();
        for (i, cut) in CUTS.iter().enumerate() {
            // one cut point at a time, each from the previous one's output
            f = net.forward_range(&f, i, i + 1).unwrap();
            let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
            let err = rel_l2(&got, &golden(&format!("{}/{cut}", arch.name())));
            eprintln!("{} {cut}: relative L2 error {err:.2e}", arch.name());
            assert!(err <= 1e-5, "{} {cut}: relative L2 {err:.3e}", arch.name());
        }
    }
}

#[test]
fn extract_writes_maps_in_pytorch_order_from_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    formula_set(Arch::ResNet18)
        .save_safetensors(&dir.path().join("r18.safetensors"))
        .unwrap();
    let d = dir.path().join("imgs/a");
    std::fs::create_dir_all(&d).unwrap();
    image::RgbImage::from_raw(64, 64, formula::images(1, 64, 64))
        .unwrap()
        .save(d.join("0.png"))
        .unwrap();
    for cut in ["layer2", "pre_logits"] {
        let spec = format!(
            "[backbone]\narch = \"resnet18\"\nweights = \"r18.safetensors\"\nfreeze = \"{cut}\"\n\
             input_size = 64\n[dataset]\nkind = \"folder\"\npath = \"imgs\"\nimage_size = 64\n\
             [run]\ndevice = \"cpu\"\n"
        );
        let (_, f) = extract_spec(dir.path(), &spec);
        let err = rel_l2(&f, &golden(&format!("resnet18/{cut}")));
        assert!(err <= 1e-5, "{cut}: relative L2 {err:.3e}");
    }
}

#[test]
fn torch_save_and_safetensors_files_serve_up_to_what_they_hold() {
    let want = formula_set(Arch::ResNet18);
    let layer1 = Arch::ResNet18.layer_index("layer1").unwrap();
    // (the legacy file is the zip one in torch.save's pre-1.6 format: tests/reference/legacy_pth.py)
    for file in [
        "resnet_part.pth",
        "resnet_part_legacy.pth",
        "resnet_part.safetensors",
    ] {
        // num_batches_tracked (int64 scalars) are in both files and ignored
        let set = runner::weights::load_until(&fixture(file), Arch::ResNet18, layer1).unwrap();
        for (name, t) in &set.tensors {
            assert_eq!(t.data, want.tensors[name].data, "{file}: {name}");
        }
        assert!(set.tensors.contains_key("layer1.1.bn2.running_var"));
        let net = Network::new_until(
            Arch::ResNet18,
            &set,
            &Device::Cpu,
            layer1,
            (&Arch::ResNet18.preprocess(), Default::default()),
        )
        .unwrap();
        let f = net.forward_until(&image(), layer1).unwrap();
        let got: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
        assert!(rel_l2(&got, &golden("resnet18/layer1")) <= 1e-5, "{file}");
        // layer2 is not in the file: an error naming the tensor and what the file serves
        let e = runner::weights::load_until(&fixture(file), Arch::ResNet18, layer1 + 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer2.0.conv1.weight") && e.contains("up to layer1"),
            "{file}: {e}"
        );
    }
    // formats that map layers by order or hold TensorFlow pairs cannot serve a ResNet
    let e = runner::weights::load_until(&fixture("vgg_block1.onnx"), Arch::ResNet18, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".safetensors") && e.contains(".pth") && e.contains("conv1"),
        "{e}"
    );
}
