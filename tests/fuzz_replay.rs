//! Every committed fuzz input (seeds and the inputs that once crashed a target) through the
//! fuzzed entry points, on stable Rust: a panic here is a regression. `fuzz/harness.rs` is the
//! code the cargo-fuzz targets run.

include!("../fuzz/harness.rs");

fn replay(target: &str, f: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        // the committed inputs: seeds (`seed-*`) and every regression; a local fuzzing run's
        // growing corpus is left to the fuzzer
        let mut paths: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                dir.ends_with(target)
                    && (dir.parent().is_some_and(|d| d.ends_with("regressions"))
                        || p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
            })
            .collect();
        paths.sort();
        for p in paths {
            let data = std::fs::read(&p).unwrap();
            eprintln!("{target}: {}", p.display());
            f(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn unpickle() {
    replay("unpickle", harness::unpickle_bytes);
}

#[test]
fn npy() {
    replay("npy", harness::npy_bytes);
}

#[test]
fn weights_file() {
    replay("weights_file", harness::weights_file);
}

#[test]
fn spec() {
    replay("spec", harness::spec_text);
}

#[test]
fn gtsrb_csv() {
    replay("gtsrb_csv", harness::gtsrb_csv);
}

#[test]
fn image() {
    replay("image", harness::image_bytes);
}

#[test]
fn pth() {
    replay("pth", harness::pth_bytes);
}

#[test]
fn onnx() {
    replay("onnx", harness::onnx_bytes);
}

#[test]
fn idx() {
    replay("idx", harness::idx_bytes);
}

#[test]
fn cache_entry() {
    replay("cache_entry", harness::cache_entry);
}
