//! The experiment file: layering, defaults, and precise errors.

use std::path::Path;

use runner::spec::{load_str, BatchSize, DeviceSpec, WeightsSource};

fn load(text: &str, sets: &[&str], env: &[(&str, &str)]) -> Result<runner::spec::Spec, String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_str(Path::new("experiments/x.toml"), text, &sets, env).map_err(|e| e.to_string())
}

const BASE: &str = "seed = 7\n[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"fc6\"\n[dataset]\npath = \"d.p\"\n";

#[test]
fn defaults_fill_everything_and_name_is_the_file_stem() {
    let s = load("", &[], &[]).unwrap();
    assert_eq!(s.name, "x");
    assert_eq!(s.seed, 42);
    assert_eq!(s.freeze_name(), "fc7");
    assert_eq!(
        s.weights,
        WeightsSource::File("weights/bvlc-alexnet.npy".into())
    );
    assert_eq!(s.device, DeviceSpec::Auto);
    assert_eq!(s.resize.name(), "tf1");
    // the resolved spec writes every default out
    let t = s.resolved_toml().unwrap();
    for key in [
        "freeze = \"fc7\"",
        "resize = \"tf1\"",
        "device = \"auto\"",
        "extract_batch = \"auto\"",
    ] {
        assert!(t.contains(key), "{key} missing from {t}");
    }
}

#[test]
fn layering_file_then_env_then_set() {
    let s = load(BASE, &[], &[]).unwrap();
    assert_eq!((s.seed, s.freeze_name()), (7, "fc6"));
    let s = load(
        BASE,
        &[],
        &[
            ("RUNNER_BACKBONE__FREEZE", "pool5"),
            ("RUNNER_RUN__EXTRACT_BATCH", "8"),
        ],
    )
    .unwrap();
    assert_eq!(
        (s.freeze_name(), s.extract_batch),
        ("pool5", BatchSize::Fixed(8))
    );
    let s = load(
        BASE,
        &["backbone.freeze=fc7"],
        &[("RUNNER_BACKBONE__FREEZE", "pool5")],
    )
    .unwrap();
    assert_eq!(s.freeze_name(), "fc7", "--set wins over the environment");
    let s = load(BASE, &["seed=3", "run.device=cuda:1"], &[]).unwrap();
    assert_eq!((s.seed, s.device), (3, DeviceSpec::Cuda(1)));
}

#[test]
fn unrelated_runner_variables_are_ignored() {
    // CI systems set RUNNER_OS, RUNNER_NAME, RUNNER_TEMP...
    let s = load(
        BASE,
        &[],
        &[("RUNNER_NAME", "ci-box"), ("RUNNER_OS", "Linux")],
    )
    .unwrap();
    assert_eq!(s.name, "x");
}

#[test]
fn misspelt_key_names_line_column_and_suggestion() {
    let e = load(
        "[backbone]\narch = \"alexnet\"\nfreez = \"fc7\"\n",
        &[],
        &[],
    )
    .unwrap_err();
    assert!(e.starts_with("experiments/x.toml:3:1:"), "{e}");
    assert!(
        e.contains("unknown field `freez`") && e.contains("did you mean `freeze`?"),
        "{e}"
    );
}

#[test]
fn malformed_toml_names_line() {
    let e = load("[backbone\narch = 1\n", &[], &[]).unwrap_err();
    assert!(e.starts_with("experiments/x.toml:1:"), "{e}");
}

#[test]
fn wrong_type_names_the_key_line() {
    let e = load("seed = \"many\"\n", &[], &[]).unwrap_err();
    assert!(e.starts_with("experiments/x.toml:1:8:"), "{e}");
    assert!(e.contains("u64") || e.contains("integer"), "{e}");
}

#[test]
fn unknown_layer_and_device_are_explained() {
    let e = load(&BASE.replace("fc6", "fc_7"), &[], &[]).unwrap_err();
    assert!(
        e.contains("experiments/x.toml:5:1: key `backbone.freeze`"),
        "{e}"
    );
    assert!(
        e.contains("no layer \"fc_7\"") && e.contains("did you mean `fc7`?"),
        "{e}"
    );
    let e = load(BASE, &["run.device=gpu"], &[]).unwrap_err();
    assert!(
        e.contains("key `run.device`") && e.contains("cuda:N"),
        "{e}"
    );
    let e = load("[dataset]\nresize = \"tf2\"\n", &[], &[]).unwrap_err();
    assert!(
        e.contains("unknown variant `tf2`") && e.contains("did you mean `tf1`?"),
        "{e}"
    );
}

#[test]
fn bad_overrides_name_the_key() {
    let e = load(BASE, &["backbone.frieze=fc7"], &[]).unwrap_err();
    assert!(
        e.contains("frieze") && e.contains("did you mean `freeze`?"),
        "{e}"
    );
    let e = load(BASE, &["run.extract_batch=lots"], &[]).unwrap_err();
    assert!(
        e.contains("run.extract_batch") && e.contains("\"auto\""),
        "{e}"
    );
    let e = load(BASE, &["run.extract_batch=-3"], &[]).unwrap_err();
    assert!(e.contains("run.extract_batch"), "{e}");
    let e = load(BASE, &["run.extract_batch=0"], &[]).unwrap_err();
    assert!(e.contains("at least 1"), "{e}");
    let e = load(BASE, &["noequals"], &[]).unwrap_err();
    assert!(e.contains("section.key=value"), "{e}");
}

#[test]
fn shipped_experiment_files_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let s = runner::spec::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(s.name, p.file_stem().unwrap().to_string_lossy());
            n += 1;
        }
    }
    assert!(n >= 4);
    let f = runner::spec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/flowers_vgg16.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(
        (f.arch.name(), f.freeze_name(), f.image_size),
        ("vgg16", "fc6", 224)
    );
    let g = runner::spec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/gtsrb_official_alexnet.toml"),
        &[],
    )
    .unwrap();
    assert!(g.track_split);
}

#[test]
fn track_split_needs_gtsrb() {
    let e = load("[dataset]\nsplit = \"track\"\n", &[], &[]).unwrap_err();
    assert!(e.contains("dataset.split") && e.contains("gtsrb"), "{e}");
    let s = load("[dataset]\nkind = \"gtsrb\"\npath = \"g\"\n", &[], &[]).unwrap();
    assert!(s.track_split, "track is the default for gtsrb");
    assert_eq!(s.image_size, 32);
}

#[test]
fn extract_batch_is_a_number_or_auto() {
    let cpu = candle_core::Device::Cpu;
    let s = load(BASE, &["run.extract_batch=\"auto\""], &[]).unwrap();
    assert_eq!(s.extract_batch, BatchSize::Auto);
    assert_eq!(s.extract_batch_for(&cpu), 64, "auto on the CPU");
    let s = load(BASE, &["run.extract_batch=24"], &[]).unwrap();
    assert_eq!(s.extract_batch_for(&cpu), 24);
    let s = load(BASE, &[], &[("RUNNER_RUN__EXTRACT_BATCH", "auto")]).unwrap();
    assert_eq!(s.extract_batch, BatchSize::Auto);
}

#[test]
fn output_alone_is_a_probe_at_that_layer_and_a_sweep_over_outputs_pools_only_maps() {
    // `output` without `freeze`: freeze follows it (written out in the resolved file)
    let s = load("[backbone]\noutput = \"pool5\"\npool = \"avg\"\n", &[], &[]).unwrap();
    assert_eq!((s.freeze_name(), s.output), ("pool5", s.freeze));
    assert!(s.resolved_toml().unwrap().contains("freeze = \"pool5\""));
    // neither: fc7 for AlexNet, as before
    let s = load("[backbone]\n", &[], &[]).unwrap();
    assert_eq!(s.freeze_name(), "fc7");
    // pool on a vector output outside a sweep over outputs is still an error
    assert!(
        load("[backbone]\noutput = \"fc7\"\npool = \"avg\"\n", &[], &[])
            .unwrap_err()
            .contains("backbone.pool")
    );
    // in a sweep over outputs, pool applies to the maps and is dropped for the vectors: the
    // fc7 point is the run of a file without pool
    let text = "name = \"x\"\n[backbone]\npool = \"avg\"\n[sweep]\n\"backbone.output\" = [\"pool2\", \"pool5\", \"fc6\", \"fc7\"]\n";
    let points = runner::spec::sweep::expand_str(Path::new("x.toml"), text, &[], vec![]).unwrap();
    let pools: Vec<&str> = points.iter().map(|p| p.spec.pool.name()).collect();
    assert_eq!(pools, ["avg", "avg", "none", "none"]);
    let freezes: Vec<&str> = points.iter().map(|p| p.spec.freeze_name()).collect();
    assert_eq!(freezes, ["pool2", "pool5", "fc6", "fc7"]);
    let plain = runner::spec::sweep::expand_str(
        Path::new("x.toml"),
        "name = \"x\"\n[backbone]\n[sweep]\n\"backbone.output\" = [\"fc7\"]\n",
        &[],
        vec![],
    )
    .unwrap();
    assert_eq!(
        runner::experiment::run_id(&points[3].spec),
        runner::experiment::run_id(&plain[0].spec)
    );
}

#[test]
fn init_std_is_a_number_or_auto_and_a_number_keeps_the_run_id() {
    use runner::spec::InitStd;
    let s = load(BASE, &[], &[]).unwrap();
    assert_eq!(s.head.init_std, InitStd::Auto, "the default");
    assert!(s.resolved_toml().unwrap().contains("init_std = \"auto\""));
    for (sets, env) in [
        (vec!["head.init_std=0.001"], vec![]),
        (vec![], vec![("RUNNER_HEAD__INIT_STD", "0.001")]),
    ] {
        let s = load(BASE, &sets, &env).unwrap();
        assert_eq!(s.head.init_std, InitStd::Fixed(0.001));
    }
    let s = load(&format!("{BASE}[head]\ninit_std = 1\n"), &[], &[]).unwrap();
    assert_eq!(
        s.head.init_std,
        InitStd::Fixed(1.0),
        "an integer is a number"
    );
    for bad in ["-0.5", "0", "\"big\""] {
        let e = load(&format!("{BASE}[head]\ninit_std = {bad}\n"), &[], &[]).unwrap_err();
        assert!(e.contains("head.init_std") || e.contains("init_std"), "{e}");
        assert!(e.contains("auto"), "{bad}: {e}");
    }
    // a file that states the seed's 0.01 resolves as files did before "auto" existed, so the
    // seed's experiments keep their run ids (and numbers)
    let seed = load(&format!("{BASE}[head]\ninit_std = 0.01\n"), &[], &[]).unwrap();
    assert!(seed.resolved_toml().unwrap().contains("init_std = 0.01\n"));
    assert_ne!(
        runner::experiment::run_id(&seed),
        runner::experiment::run_id(&load(BASE, &[], &[]).unwrap())
    );
}
