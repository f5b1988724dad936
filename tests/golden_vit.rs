//! torchvision's ViT-B/16 at every cut point, against `create_feature_extractor`
//! (tests/reference/vit_golden.py -> tests/fixtures/vit_golden.npz), with formula weights at the
//! real width and depth (LayerNorm scales and shifts, tokens and embeddings that are not 0/1) on
//! one 224x224 image, on runner's CPU path and on candle's ops; what a head reads at a block
//! (class token, mean of the patch tokens; `max` refused); timm's names; fine-tuning the last
//! block above the freeze point.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use runner::backbone::{Arch, Backends, Network};
use runner::spec::Pool;
use runner::weights::WeightSet;

const ARCH: Arch = Arch::VitB16;

fn golden(key: &str) -> Vec<f32> {
    fixture_array("vit_golden.npz", key)
}

fn formula_set() -> WeightSet {
    torch_formula_set(ARCH)
}

fn rows(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn check(what: &str, key: &str, got: &[f32]) {
    let err = rel_l2(got, &golden(key));
    eprintln!("{what} {key}: relative L2 error {err:.2e}");
    assert!(err <= 1e-5, "{what} {key}: relative L2 {err:.3e}");
}

fn check_every_cut(set: &WeightSet, backends: Backends, what: &str) {
    let last = ARCH.layers().len() - 1;
    let net = Network::new_until(
        ARCH,
        set,
        &Device::Cpu,
        last,
        (&ARCH.preprocess(), backends),
    )
    .unwrap();
    let mut f = formula_batch(1, 224);
    for (i, cut) in ARCH.layers().iter().enumerate().skip(1) {
        f = net.forward_range(&f, i - 1, i).unwrap();
        assert_eq!(f.dims()[1..], ARCH.output_shape_at(i, 224)[..], "{cut}");
        if f.rank() == 3 {
            let class = runner::backbone::layers::global_pool(&f, Pool::Class).unwrap();
            check(what, &format!("vit_b_16/{cut}/class"), &rows(&class));
            let avg = runner::backbone::layers::global_pool(&f, Pool::Avg).unwrap();
            check(what, &format!("vit_b_16/{cut}/avg"), &rows(&avg));
            let ids = Tensor::new(&[0u32, 1, 57, 196], &Device::Cpu).unwrap();
            check(
                what,
                &format!("vit_b_16/{cut}/tokens"),
                &rows(&f.index_select(&ids, 1).unwrap()),
            );
            assert!(runner::backbone::layers::global_pool(&f, Pool::Max).is_err());
        } else {
            check(what, &format!("vit_b_16/{cut}"), &rows(&f));
        }
    }
}

#[test]
fn every_cut_point_matches_torchvision() {
    check_formula_fixture("vit_golden.npz", (1, 224), ARCH, Some("vit_b_16_names.txt"));
    check_every_cut(&formula_set(), Backends::default(), "cpu");
}

#[test]
fn candles_ops_and_timms_names_match_too() {
    check_every_cut(
        &formula_set(),
        Backends::parse(Some("candle"), None).unwrap(),
        "candle ops",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut timm = WeightSet::default();
    for (name, t) in formula_set().tensors {
        let alt = ARCH.alt_names(&name);
        let (_, n) = alt
            .iter()
            .find(|(s, _)| *s == "timm")
            .unwrap_or_else(|| panic!("{name}"));
        timm.tensors.insert(n.clone(), t);
    }
    assert!(timm.tensors.contains_key("blocks.11.attn.qkv.weight"));
    let file = dir.path().join("timm.safetensors");
    timm.save_safetensors(&file).unwrap();
    check_every_cut(
        &runner::weights::load(&file, ARCH).unwrap(),
        Backends::default(),
        "timm names",
    );
}

#[test]
fn a_head_reads_a_blocks_class_token_or_mean_and_fine_tunes_the_last_block() {
    let d = tempfile::tempdir().unwrap();
    formula_set()
        .save_safetensors(&d.path().join("v.safetensors"))
        .unwrap();
    let base =
        "[dataset]\nkind = \"synthetic\"\nper_class = 1\nval_fraction = 0.3\nimage_size = 32\n\
                [train]\nepochs = 3\nbatch_size = 16\n[run]\ndevice = \"cpu\"\n";
    let text = |name: &str, backbone: &str| {
        format!("name = \"{name}\"\nseed = 3\n[backbone]\narch = \"vit_b_16\"\nweights = \"v.safetensors\"\n{backbone}\n{base}")
    };
    let spec = |name: &str, backbone: &str| {
        std::fs::write(d.path().join(format!("{name}.toml")), text(name, backbone)).unwrap();
    };
    let mut features = Vec::new();
    // a probe on block5: the class token (pool unset) or the patch tokens' mean, 768 values
    for (name, pool) in [("cls", ""), ("avg", "pool = \"avg\"")] {
        let backbone = format!("freeze = \"block5\"\noutput = \"block5\"\n{pool}");
        let (shape, f) = extract_spec(d.path(), &text(name, &backbone));
        assert_eq!(shape, vec![43, 768], "{name}");
        features.push(f);
    }
    assert!(rel_l2(&features[0], &features[1]) > 1e-2);
    spec(
        "max",
        "freeze = \"block5\"\noutput = \"block5\"\npool = \"max\"",
    );
    assert_clean_failure(
        &run_in(d.path(), &["check", "max.toml"]),
        &["backbone.pool", "tokens", "avg"],
    );
    spec("size", "input_size = 112");
    assert_clean_failure(
        &run_in(d.path(), &["check", "size.toml"]),
        &["backbone.input_size", "224x224 images only"],
    );
    // fine-tune block11 and the final LayerNorm from cached block10 sequences
    spec("tune", "freeze = \"block10\"");
    let out = run_in(d.path(), &["-q", "tune.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = trained_tensors(&run_dir(d.path(), "tune"), &formula_set());
    // block11: ln_1, out_proj, ln_2, mlp.0, mlp.3 (weight + bias each), in_proj weight + bias;
    // the final LayerNorm
    assert_eq!(names.len(), 5 * 2 + 2 + 2, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("encoder.layers.encoder_layer_11.")
                || n.starts_with("encoder.ln.")),
        "{names:?}"
    );
}
