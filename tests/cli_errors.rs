//! Every kind of bad input exits non-zero with a one-paragraph error naming the file and the
//! cause, never a panic.

mod common;

use std::path::Path;

use common::*;
use runner::weights::pickle_write::{write_npy_object, Flavor, PyObj};

fn spec(dir: &Path, body: &str) -> String {
    let p = dir.join("s.toml");
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().to_string()
}

const RANDOM: &str =
    "[backbone]\nweights = \"random\"\n[run]\ndevice = \"cpu\"\n[dataset]\npath = \"d.p\"\n";

#[test]
fn malformed_toml() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), "[backbone]\narch = \n");
    assert_clean_failure(&run_in(d.path(), &["check", &s]), &["s.toml:2:"]);
}

#[test]
fn misspelt_key_in_check() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), "[dataset]\npaht = \"x\"\n");
    let out = run_in(d.path(), &["check", &s]);
    assert_clean_failure(
        &out,
        &["s.toml:2:1", "unknown field `paht`", "did you mean `path`?"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_reports_missing_files_with_their_origin() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path(), "");
    assert_clean_failure(
        &run_in(d.path(), &["check", &s]),
        &["bvlc-alexnet.npy", "train.p"],
    );
}

#[test]
fn missing_weights_file() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(
        &d.path().join("d.p"),
        vec![0; 2 * 4 * 4 * 3],
        2,
        4,
        4,
        &[0, 1],
    );
    let s = spec(
        d.path(),
        "[backbone]\nweights = \"nope.npy\"\n[run]\ndevice = \"cpu\"\n[dataset]\npath = \"d.p\"\n",
    );
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["nope.npy", "bvlc-alexnet.npy"],
    );
    assert!(!d.path().join("o.npz").exists(), "no partial output");
}

#[test]
fn truncated_and_garbage_weights() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(
        &d.path().join("d.p"),
        vec![0; 2 * 4 * 4 * 3],
        2,
        4,
        4,
        &[0, 1],
    );
    let full = std::fs::read(fixture("pickles/py2_np1.npy")).unwrap();
    std::fs::write(d.path().join("t.npy"), &full[..full.len() - 40]).unwrap();
    let s = spec(
        d.path(),
        "[backbone]\nweights = \"t.npy\"\n[run]\ndevice = \"cpu\"\n[dataset]\npath = \"d.p\"\n",
    );
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["t.npy", "truncated"],
    );
    std::fs::write(d.path().join("t.npy"), b"hello, not weights").unwrap();
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["t.npy", "not a weights file"],
    );
    assert_clean_failure(
        &run_in(d.path(), &["weights", "inspect", "t.npy"]),
        &["t.npy"],
    );
}

#[test]
fn wrong_tensor_shape_names_tensor_expected_and_found() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(
        &d.path().join("d.p"),
        vec![0; 2 * 4 * 4 * 3],
        2,
        4,
        4,
        &[0, 1],
    );
    let obj = PyObj::Dict(vec![(
        "conv1".into(),
        PyObj::List(vec![
            PyObj::f32_array(vec![96, 3, 11, 11], &vec![0.0; 96 * 363]),
            PyObj::f32_array(vec![96], &[0.0; 96]),
        ]),
    )]);
    let mut f = std::fs::File::create(d.path().join("w.npy")).unwrap();
    write_npy_object(&mut f, &obj, Flavor::Python2).unwrap();
    let s = spec(
        d.path(),
        "[backbone]\nweights = \"w.npy\"\n[run]\ndevice = \"cpu\"\n[dataset]\npath = \"d.p\"\n",
    );
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["w.npy", "conv1.W", "[96, 3, 11, 11]", "[11, 11, 3, 96]"],
    );
}

#[test]
fn labels_out_of_range_and_negative() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(
        &d.path().join("d.p"),
        vec![0; 2 * 4 * 4 * 3],
        2,
        4,
        4,
        &[0, 5],
    );
    let s = spec(d.path(), &format!("{RANDOM}num_classes = 3\n"));
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "label 5", "out of range"],
    );
    write_train_p(
        &d.path().join("d.p"),
        vec![0; 2 * 4 * 4 * 3],
        2,
        4,
        4,
        &[0, -1],
    );
    let s = spec(d.path(), RANDOM);
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "negative"],
    );
}

#[test]
fn empty_dataset_and_missing_dataset() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(&d.path().join("d.p"), vec![], 0, 4, 4, &[]);
    let s = spec(d.path(), RANDOM);
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "empty"],
    );
    std::fs::remove_file(d.path().join("d.p")).unwrap();
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "Udacity"],
    );
}

#[test]
fn dataset_without_features_or_with_wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    let obj = PyObj::Dict(vec![("labels".into(), PyObj::i64_array(vec![1], &[0]))]);
    let mut f = std::fs::File::create(d.path().join("d.p")).unwrap();
    runner::weights::pickle_write::write_pickle(&mut f, &obj, Flavor::Python3).unwrap();
    let s = spec(d.path(), RANDOM);
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "'features'"],
    );
    let obj = PyObj::Dict(vec![
        (
            "features".into(),
            PyObj::u8_array(vec![1, 4, 4], vec![0; 16]),
        ),
        ("labels".into(), PyObj::i64_array(vec![1], &[0])),
    ]);
    let mut f = std::fs::File::create(d.path().join("d.p")).unwrap();
    runner::weights::pickle_write::write_pickle(&mut f, &obj, Flavor::Python3).unwrap();
    assert_clean_failure(
        &run_in(d.path(), &["extract", &s, "--out", "o.npz"]),
        &["d.p", "N x H x W x 3"],
    );
}

#[test]
fn cuda_without_cuda_is_a_one_line_exit_2() {
    let d = tempfile::tempdir().unwrap();
    write_train_p(&d.path().join("d.p"), vec![0; 4 * 4 * 3], 1, 4, 4, &[0]);
    let s = spec(d.path(), &RANDOM.replace("\"cpu\"", "\"cuda\""));
    let out = run_in(d.path(), &["extract", &s, "--out", "o.npz"]);
    if cfg!(feature = "cuda") {
        return;
    }
    assert_clean_failure(&out, &["cuda", "without CUDA support"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn devices_lists_the_cpu_and_says_why_there_is_no_gpu() {
    let d = tempfile::tempdir().unwrap();
    let out = run_in(d.path(), &["devices"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("cpu ") && first.contains("threads"),
        "{text}"
    );
    if !cfg!(feature = "cuda") {
        assert!(text.contains("cuda     not compiled in"), "{text}");
    }
}

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("s.toml"),
        "[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    // -v: info lines ("extracted ... images"), which a terminal would get coloured
    let out = run_in(d.path(), &["-v", "extract", "s.toml", "--out", "f.npz"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("INFO") || err.contains("DEBUG"),
        "log lines expected: {err}"
    );
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// `runner ARGS` in `dir`, killed (and the test failed) if it runs past 20 s.
fn run_bounded(dir: &Path, args: &[&str]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = runner()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 20 {
            child.kill().unwrap();
            panic!("runner {args:?} blocked");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_weights_path_that_is_not_a_regular_file_is_named_as_what_it_is_and_never_read() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("adir")).unwrap();
    let fifo = d.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let mut cases = vec![("adir", "a directory"), ("/dev/zero", "a character device")];
    if made.is_ok_and(|s| s.success()) {
        cases.push(("pipe", "a FIFO"));
    }
    for (path, what) in cases {
        std::fs::write(
            d.path().join("s.toml"),
            format!("[backbone]\nweights = \"{path}\"\n[dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n"),
        )
        .unwrap();
        for args in [
            vec!["check", "s.toml"],
            vec!["extract", "s.toml", "--out", "f.npz"],
            vec!["weights", "inspect", path],
        ] {
            let out = run_bounded(d.path(), &args);
            assert_clean_failure(&out, &[path, what, "not a regular file"]);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
        }
    }
}
