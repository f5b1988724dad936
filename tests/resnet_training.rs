//! ResNet as a transfer-learning backbone: a linear probe on pooled layer3 maps and a fine-tune
//! of layer4 lower their loss; the fine-tune trains layer4's convolutions and batch-norm scales
//! and shifts, not its running statistics; `runner predict` reproduces the run's validation
//! accuracy.

mod common;
use common::*;

#[test]
fn a_probe_and_a_fine_tune_learn_and_predict_reproduces_the_fine_tune() {
    let d = tempfile::tempdir().unwrap();
    for (name, backbone) in [
        (
            "probe",
            "freeze = \"layer3\"\noutput = \"layer3\"\npool = \"avg\"",
        ),
        ("tune", "freeze = \"layer3\"\noutput = \"pre_logits\""),
    ] {
        let spec = format!(
            "name = \"{name}\"\nseed = 5\n[backbone]\narch = \"resnet18\"\nweights = \"random\"\ninput_size = 32\n{backbone}\n\
             [dataset]\nkind = \"synthetic\"\nper_class = 4\nval_fraction = 0.25\n\
             [train]\nepochs = 8\nbatch_size = 16\nlr = 0.001\n[run]\ndevice = \"cpu\"\ncache = false\n"
        );
        std::fs::write(d.path().join(format!("{name}.toml")), spec).unwrap();
        let out = run_in(d.path(), &["-q", &format!("{name}.toml")]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (first, last) = first_last_loss(&run_dir(d.path(), name));
        assert!(last < first * 0.9, "{name}: loss {first} -> {last}");
    }

    // the fine-tune saved layer4's trained tensors; they moved away from the loaded ones
    let run = run_dir(d.path(), "tune");
    let bytes = std::fs::read(run.join("head.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let loaded = runner::weights::random(runner::arch::Arch::ResNet18, 5);
    let mut trained = 0;
    for (name, view) in st.tensors() {
        if name.starts_with("head.") {
            continue;
        }
        assert!(name.starts_with("layer4."), "only layer4 trains: {name}");
        assert!(
            !name.contains("running_"),
            "running statistics are not trained: {name}"
        );
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_ne!(got, loaded.tensors[&name].data, "{name} did not change");
        trained += 1;
    }
    // layer4 of ResNet-18: 5 convolutions (2 blocks x 2 + the projection), each with its
    // batch norm's scale and shift
    assert_eq!(trained, 5 * 3);

    // predict with the run on the validation images gives the recorded accuracy
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let data = runner::data::synthetic::generate(5, 4);
    let all: Vec<usize> = (0..data.n).collect();
    let (_, val) = runner::data::split::stratified(&data.labels, &all, 43, 0.25, 5);
    let v = data.subset(&val);
    write_train_p(
        &d.path().join("val.p"),
        v.images.clone(),
        v.n,
        32,
        32,
        &v.labels,
    );
    let out = run_in(
        d.path(),
        &[
            "predict",
            run.to_str().unwrap(),
            "val.p",
            "--format",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let correct = preds
        .iter()
        .filter(|p| p["top"][0][0] == p["label"])
        .count();
    let acc = correct as f64 / v.n as f64;
    let want = summary["best_val_acc"].as_f64().unwrap();
    assert!(
        (acc - want).abs() < 1e-9,
        "predict acc {acc} vs recorded {want}"
    );
}

#[test]
fn resnet_specs_default_to_pre_logits_and_check_their_keys() {
    let d = tempfile::tempdir().unwrap();
    let base = "[dataset]\nkind = \"synthetic\"\nper_class = 2\n[run]\ndevice = \"cpu\"\n";
    std::fs::write(
        d.path().join("ok.toml"),
        format!("[backbone]\narch = \"resnet50\"\nweights = \"random\"\n{base}"),
    )
    .unwrap();
    let out = run_in(d.path(), &["check", "ok.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("resnet50 frozen to pre_logits"),
        "{text}"
    );
    for (body, must) in [
        ("input_size = 31", vec!["backbone.input_size", "32..=1024"]),
        (
            "output = \"pre_logits\"\npool = \"avg\"",
            vec!["backbone.pool", "feature map"],
        ),
        (
            "freeze = \"fc7\"",
            vec!["backbone.freeze", "no layer \"fc7\""],
        ),
        (
            "mean = [0.5, 0.5]\nstd = [0.5, 0.5, 0.5]",
            vec!["backbone.mean", "three"],
        ),
        (
            "mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.0, 0.5]",
            vec!["backbone.std", "positive"],
        ),
    ] {
        std::fs::write(
            d.path().join("bad.toml"),
            format!("[backbone]\narch = \"resnet50\"\nweights = \"random\"\n{body}\n{base}"),
        )
        .unwrap();
        let out = run_in(d.path(), &["check", "bad.toml"]);
        assert_clean_failure(&out, &must);
    }
    // backbone.mean/std replace the normalisation: ImageNet's own values change nothing,
    // timm-style 0.5/0.5 changes every feature
    let features = |norm: &str| -> Vec<f32> {
        let spec = format!(
            "[backbone]\narch = \"resnet18\"\nweights = \"random\"\nfreeze = \"layer1\"\ninput_size = 32\n{norm}\n{base}"
        );
        extract_spec(d.path(), &spec).1
    };
    let default = features("");
    let imagenet = features("mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]");
    let half = features("mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]");
    assert_eq!(default, imagenet);
    assert!(rel_l2(&half, &default) > 1e-2);
}
