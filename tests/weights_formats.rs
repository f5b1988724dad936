//! The same AlexNet weights through every reader: Python-2 .npy, .npz, and the .safetensors that
//! `runner weights convert` writes, all give identical candle-layout tensors.

mod common;

use std::io::Write;

use common::*;
use runner::backbone::Arch;
use runner::weights::{self, npy};

/// AlexNet's formula weights (seed `seed`) as an `.npz` of `<layer>/W` and `<layer>/b` members
/// in TF layout.
fn write_formula_npz(path: &std::path::Path, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (spec, (w, b)) in Arch::AlexNet
        .params()
        .iter()
        .zip(runner::weights::formula::tf_layout(Arch::AlexNet, seed))
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
    write_formula_npz(&npz_path, 0);
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

/// An ONNX model of AlexNet's weights as `weights::onnx` reads them: five Conv nodes (OIHW),
/// then either a Caffe/PyTorch export (flatten NCHW, `Gemm` with `transB = 1`, `[out, in]`) or a
/// TensorFlow export (`Transpose` to NHWC before the flatten, `MatMul` with `[in, out]` and an
/// `Add` of the bias).
fn alexnet_onnx(tf_style: bool) -> Vec<u8> {
    use prost::Message;
    use runner::weights::onnx::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
    let tensor = |name: &str, dims: Vec<usize>, v: &[f32]| TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        name: name.into(),
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], out: &str, attribute: Vec<AttributeProto>| NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{op}_{out}"),
        op_type: op.into(),
        attribute,
    };
    let mut g = GraphProto::default();
    let mut x = "input".to_string();
    for (spec, (w, b)) in Arch::AlexNet
        .params()
        .iter()
        .zip(runner::weights::formula::tf_layout(Arch::AlexNet, 3))
    {
        let (wn, bn) = (format!("{}_W", spec.layer), format!("{}_B", spec.layer));
        let is_conv = matches!(spec.kind, runner::arch::ParamKind::Conv { .. });
        if spec.layer == "fc6" {
            // tf2onnx transposes to channels-last before flattening; Caffe/PyTorch do not
            if tf_style {
                let perm = AttributeProto {
                    name: "perm".into(),
                    ints: vec![0, 2, 3, 1],
                    ..Default::default()
                };
                g.node.push(node("Transpose", &[&x], "nhwc", vec![perm]));
                x = "nhwc".into();
            }
            g.node.push(node("Flatten", &[&x], "flat", vec![]));
            x = "flat".into();
        }
        let out = format!("{}_out", spec.layer);
        if is_conv || !tf_style {
            // OIHW kernels and [out, in] matrices: runner's own layout
            let candle = weights::tf_to_candle(spec, &w);
            g.initializer
                .push(tensor(&wn, spec.weight_shape(), &candle));
            g.initializer.push(tensor(&bn, vec![spec.bias_len()], &b));
            let (op, attrs) = if is_conv {
                ("Conv", vec![])
            } else {
                let t = AttributeProto {
                    name: "transB".into(),
                    i: 1,
                    ..Default::default()
                };
                ("Gemm", vec![t])
            };
            g.node.push(node(op, &[&x, &wn, &bn], &out, attrs));
        } else {
            g.initializer
                .push(tensor(&wn, spec.seed_weight_shape(), &w));
            g.initializer.push(tensor(&bn, vec![spec.bias_len()], &b));
            let mm = format!("{}_mm", spec.layer);
            g.node.push(node("MatMul", &[&x, &wn], &mm, vec![]));
            g.node.push(node("Add", &[&mm, &bn], &out, vec![]));
        }
        x = out;
    }
    ModelProto {
        ir_version: 7,
        producer_name: "test".into(),
        graph: Some(g),
    }
    .encode_to_vec()
}

#[test]
fn onnx_fully_connected_layers_load_from_caffe_and_tensorflow_exports() {
    let d = tempfile::tempdir().unwrap();
    let npz = d.path().join("w.npz");
    write_formula_npz(&npz, 3);
    let fc7 = Arch::AlexNet.layer_index("fc7").unwrap();
    let want = weights::load_until(&npz, Arch::AlexNet, fc7).unwrap();
    assert_eq!(want.tensors.len(), 14, "conv1..fc7");
    for tf_style in [false, true] {
        let p = d.path().join(format!("a{tf_style}.onnx"));
        std::fs::write(&p, alexnet_onnx(tf_style)).unwrap();
        let got = weights::load_until(&p, Arch::AlexNet, fc7).unwrap();
        assert_eq!(got.tensors.len(), 14);
        for (name, t) in &want.tensors {
            let g = &got.tensors[name];
            assert_eq!(g.shape, t.shape, "{name} (tf_style {tf_style})");
            assert!(g.data == t.data, "{name} differs (tf_style {tf_style})");
        }
    }
}
