//! `runner predict` with a finished run reproduces the validation accuracy it recorded.

mod common;

use common::*;

#[test]
fn predict_on_the_val_images_reproduces_the_recorded_val_accuracy() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("p.toml"),
        "name = \"p\"\nseed = 3\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 4\n\
         val_fraction = 0.25\n[train]\nepochs = 8\n[run]\ndevice = \"cpu\"\ncache = false\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["-q", "p.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_dir(d.path().join("results/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();

    // the same validation images the run held out
    let data = runner::data::synthetic::generate(3, 4);
    let all: Vec<usize> = (0..data.n).collect();
    let (_, val) = runner::data::split::stratified(&data.labels, &all, 43, 0.25, 3);
    let v = data.subset(&val);
    assert_eq!(v.n as u64, summary["n_val"].as_u64().unwrap());
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
            "--top",
            "5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preds: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(preds.len(), v.n);
    let correct = preds
        .iter()
        .filter(|p| p["top"][0][0] == p["label"])
        .count();
    let acc = correct as f64 / v.n as f64;
    assert!(
        (acc - summary["best_val_acc"].as_f64().unwrap()).abs() < 1e-9,
        "predict acc {acc} vs recorded {}",
        summary["best_val_acc"]
    );
    // names and probabilities
    let p0 = &preds[0]["top"];
    assert_eq!(p0.as_array().unwrap().len(), 5);
    assert!(
        p0[0][1].as_str().unwrap().contains('/'),
        "synthetic class names like circle/red-white/hbar"
    );
    let probs: Vec<f64> = p0
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[2].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] <= 1.0);

    // an image file works too
    image::RgbImage::from_raw(32, 32, v.images[..32 * 32 * 3].to_vec())
        .unwrap()
        .save(d.path().join("one.png"))
        .unwrap();
    let out = run_in(
        d.path(),
        &[
            "predict",
            run.to_str().unwrap(),
            "one.png",
            "--top",
            "1",
            "--format",
            "csv",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(
        text.lines().nth(1).unwrap().split(',').nth(3).unwrap(),
        preds[0]["top"][0][0].to_string(),
        "same class as from the pickle"
    );
    // a folder without a run: a clear error
    assert_clean_failure(
        &run_in(d.path(), &["predict", "nowhere", "one.png"]),
        &["nowhere"],
    );
}
