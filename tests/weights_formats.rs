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
