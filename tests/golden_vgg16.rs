//! tensorflow-vgg's VGG16 on a `folder` dataset, end to end through the real `.npy` reader, the
//! image decoder and the `runner` binary, against TensorFlow's outputs
//! (tests/reference/vgg16_golden.py -> tests/fixtures/vgg16_golden.npz).

mod common;

use common::*;
use runner::backbone::Arch;
use runner::weights::{formula, npy, pickle::Limits};

#[test]
fn vgg16_relu6_of_a_folder_matches_tensorflow() {
    let gold = npy::read_npz(&fixture("vgg16_golden.npz"), &Limits::default()).unwrap();
    let get = |k: &str| gold.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let dir = tempfile::tempdir().unwrap();
    write_formula_npy(&dir.path().join("vgg16.npy"), Arch::Vgg16);
    let imgs = formula::images(2, 224, 224);
    let sums: Vec<i64> = imgs
        .chunks(224 * 224 * 3)
        .map(|c| c.iter().map(|&v| v as i64).sum())
        .collect();
    assert_eq!(
        sums,
        get("pixel_sum").to_i64_c().unwrap(),
        "image formula differs from formula.py"
    );
    // class folders sort as a < b; image 0 is class a's only file, image 1 class b's
    for (i, class) in ["a", "b"].iter().enumerate() {
        let d = dir.path().join("flowers").join(class);
        std::fs::create_dir_all(&d).unwrap();
        let px = imgs[i * 224 * 224 * 3..(i + 1) * 224 * 224 * 3].to_vec();
        image::RgbImage::from_raw(224, 224, px)
            .unwrap()
            .save(d.join(format!("IMG_{i}.PNG")))
            .unwrap();
    }
    // a file that is not an image is ignored
    std::fs::write(dir.path().join("flowers/a/notes.txt"), "x").unwrap();
    for (layer, key) in [("relu6", "relu6"), ("fc7", "relu7"), ("pool5", "pool5")] {
        let spec = dir.path().join("s.toml");
        std::fs::write(
            &spec,
            format!(
                "[backbone]\narch = \"vgg16\"\nweights = \"vgg16.npy\"\nfreeze = \"{layer}\"\n\
                 [dataset]\nkind = \"folder\"\npath = \"flowers\"\n[run]\ndevice = \"cpu\"\n"
            ),
        )
        .unwrap();
        let out = run_in(dir.path(), &["extract", "s.toml", "--out", "f.npz"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = npy::read_npz(&dir.path().join("f.npz"), &Limits::default()).unwrap();
        let f = got
            .iter()
            .find(|(k, _)| k == "features")
            .unwrap()
            .1
            .to_f32_c()
            .unwrap();
        let labels = got
            .iter()
            .find(|(k, _)| k == "labels")
            .unwrap()
            .1
            .to_i64_c()
            .unwrap();
        assert_eq!(labels, vec![0, 1], "class-sorted order");
        let err = rel_l2(&f, &get(key).to_f32_c().unwrap());
        eprintln!("vgg16 {layer}: relative L2 error {err:.2e}");
        assert!(err <= 1e-4, "{layer}: relative L2 error {err:.3e}");
    }
}
