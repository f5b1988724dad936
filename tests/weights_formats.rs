//! The same AlexNet weights through every reader: Python-2 .npy, .npz, and the .safetensors that
//! `runner weights convert` writes, all give identical candle-layout tensors.

mod common;

use std::io::Write;

use common::*;
use runner::backbone::Arch;
use runner::weights::{self, npy};

#[test]
fn npy_npz_and_converted_safetensors_agree() {
    let d = tempfile::tempdir().unwrap();
    let npy_path = d.path().join("w.npy");
    write_formula_npy(&npy_path, Arch::AlexNet);
    let a = weights::load(&npy_path, Arch::AlexNet).unwrap();
    assert_eq!(a.tensors.len(), 16);
    assert_eq!(a.tensors["conv2.weight"].shape, vec![256, 48, 5, 5]);
    assert_eq!(a.tensors["fc6.weight"].shape, vec![4096, 9216]);
    // "random" is the same formula (seed 0) converted the same way, first layer scaled by 1/128
    let r = weights::random(Arch::AlexNet, 0);
    assert_eq!(r.tensors["fc6.weight"].data, a.tensors["fc6.weight"].data);
    let scaled: Vec<f32> = a.tensors["conv1.weight"]
        .data
        .iter()
        .map(|v| v / 128.0)
        .collect();
    assert_eq!(r.tensors["conv1.weight"].data, scaled);

    // .npz with <layer>/W and <layer>/b members, TF layout
    let npz_path = d.path().join("w.npz");
    {
        let f = std::fs::File::create(&npz_path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (spec, (w, b)) in Arch::AlexNet
            .params()
            .iter()
            .zip(runner::weights::formula::tf_layout(Arch::AlexNet, 0))
        {
            for (role, shape, vals) in [
                ("W", spec.seed_weight_shape(), w),
                ("b", vec![spec.bias_len()], b),
            ] {
                z.start_file(format!("{}/{role}.npy", spec.layer), opts)
                    .unwrap();
                let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
                npy::write_npy(&mut z, "<f4", &shape, &bytes).unwrap();
            }
        }
        z.finish().unwrap().flush().unwrap();
    }
    let b = weights::load(&npz_path, Arch::AlexNet).unwrap();

    let st_path = d.path().join("w.safetensors");
    let out = run_in(d.path(), &["weights", "convert", "w.npy", "w.safetensors"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = weights::load(&st_path, Arch::AlexNet).unwrap();
    for (name, t) in &a.tensors {
        assert_eq!(b.tensors[name].data, t.data, "npz {name}");
        assert_eq!(c.tensors[name].data, t.data, "safetensors {name}");
        assert_eq!(c.tensors[name].shape, t.shape);
    }

    let out = run_in(d.path(), &["weights", "inspect", "w.safetensors"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("fc6.weight") && listing.contains("[4096, 9216]"),
        "{listing}"
    );
    let out = run_in(d.path(), &["weights", "inspect", "w.npy"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("conv1.W")
            && listing.contains("[11, 11, 3, 96]")
            && listing.contains("<f4"),
        "{listing}"
    );
}

/// `features` of `runner extract` on a spec reading `weights` up to conv1_2 at 32x32.
fn block1_features(dir: &std::path::Path, weights: &str) -> Vec<f32> {
    use runner::weights::pickle::Limits;
    let spec = format!(
        "name = \"b1\"\n[backbone]\narch = \"vgg16\"\nweights = {weights:?}\nfreeze = \"conv1_2\"\noutput = \"conv1_2\"\ninput_size = 32\n\
         [dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n"
    );
    std::fs::write(dir.join("b1.toml"), spec).unwrap();
    let out = run_in(dir, &["extract", "b1.toml", "--out", "f.npz"]);
    assert!(
        out.status.success(),
        "{weights}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members = npy::read_npz(&dir.join("f.npz"), &Limits::default()).unwrap();
    let (_, f) = members.iter().find(|(n, _)| n == "features").unwrap();
    assert_eq!(f.shape, vec![43, 64 * 32 * 32]);
    f.to_f32_c().unwrap()
}

#[test]
fn one_network_from_npy_pth_onnx_and_converted_safetensors() {
    // the same first VGG16 block written by numpy (HWIO), torch.save (OIHW, torchvision names)
    // and onnx (Conv initializers): tests/reference/weights_fixtures.py
    let d = tempfile::tempdir().unwrap();
    for f in ["vgg_block1.npy", "vgg_block1.pth", "vgg_block1.onnx"] {
        std::fs::copy(fixture(f), d.path().join(f)).unwrap();
    }
    let reference = block1_features(d.path(), "vgg_block1.npy");
    let scale = reference.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(scale > 1e-3, "features are not all zero");
    for w in ["vgg_block1.pth", "vgg_block1.onnx"] {
        let f = block1_features(d.path(), w);
        assert_eq!(f, reference, "{w} gives other features than the .npy");
    }
    // runner weights convert on the ONNX file: the safetensors it writes is the same network
    let out = run_in(
        d.path(),
        &[
            "weights",
            "convert",
            "vgg_block1.onnx",
            "b1.safetensors",
            "--arch",
            "vgg16",
            "--until",
            "conv1_2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(block1_features(d.path(), "b1.safetensors"), reference);
    // the layouts as stored: inspect shows the ONNX initializers OIHW, the .pth's names
    let out = run_in(d.path(), &["weights", "inspect", "vgg_block1.onnx"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("w1") && text.contains("[64, 3, 3, 3]") && text.contains("float32"),
        "{text}"
    );
    let out = run_in(d.path(), &["weights", "inspect", "vgg_block1.pth"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("features.2.weight") && text.contains("[64, 64, 3, 3]"),
        "{text}"
    );

    // asking for more than the files hold names the missing layer and how far they serve
    for w in ["vgg_block1.npy", "vgg_block1.pth", "vgg_block1.onnx"] {
        std::fs::write(
            d.path().join("more.toml"),
            format!(
                "[backbone]\narch = \"vgg16\"\nweights = {w:?}\nfreeze = \"pool5\"\noutput = \"pool5\"\ninput_size = 32\n\
                 [dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n"
            ),
        )
        .unwrap();
        let out = run_in(d.path(), &["extract", "more.toml", "--out", "g.npz"]);
        assert_clean_failure(&out, &[w, "conv2_1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("backbone.output"), "{err}");
    }
}
