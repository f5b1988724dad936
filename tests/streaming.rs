//! Images read a batch at a time, features read from the cache entry on disk, and extraction
//! split into shards: each gives the numbers of the in-memory, one-process path.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use runner::data::images::OnBad;
use runner::data::preprocess::ResizeMethod;

/// `root/<class>/<i>.jpg`: `classes` classes of `per` 24x18 images, each its own colours.
fn photo_folder(root: &Path, classes: usize, per: usize) {
    for c in 0..classes {
        let d = root.join(format!("c{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per {
            let img = image::RgbImage::from_fn(24, 18, |x, y| {
                let v = (x * 9 + y * 5 + i as u32 * 31 + c as u32 * 80) % 256;
                image::Rgb([v as u8, (c * 100) as u8, (255 - v) as u8])
            });
            img.save(d.join(format!("{i}.jpg"))).unwrap();
        }
    }
}

fn spec(dir: &Path, name: &str, extra: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\nseed = 5\n[backbone]\nweights = \"random\"\nfreeze = \"fc7\"\n\
             [dataset]\nkind = \"folder\"\npath = \"photos\"\nimage_size = 20\nval_fraction = 0.25\n\
             on_bad_image = \"skip\"\n[train]\nepochs = 3\nbatch_size = 4\n[run]\ndevice = \"cpu\"\n\
             extract_batch = 4\n{extra}\n"
        ),
    )
    .unwrap();
}

fn run_ok(dir: &Path, args: &[&str]) {
    let out = run_in(dir, args);
    assert!(
        out.status.success(),
        "runner {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The run folder under `results/name`, its summary and its epochs' metric columns.
fn finished(results: &Path, name: &str) -> (serde_json::Value, Vec<String>) {
    let run: PathBuf = std::fs::read_dir(results.join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && p.join("summary.json").exists())
        .unwrap();
    let s =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    // epoch, train loss/acc, val loss/acc, top-5: everything but the timings
    let rows = std::fs::read_to_string(run.join("epochs.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(6).collect::<Vec<_>>().join(","))
        .collect();
    (s, rows)
}

#[test]
fn streamed_images_decode_as_the_whole_folder_does() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("photos");
    photo_folder(&root, 2, 3);
    std::fs::write(root.join("c1/9.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let idx = runner::data::folder::index(&root, 20, ResizeMethod::Tf1, OnBad::Skip).unwrap();
    assert!(
        idx.streamed() && idx.images.is_empty(),
        "indexing decodes nothing"
    );
    assert_eq!(
        idx.n, 7,
        "every listed file is a sample until it fails to decode"
    );
    let whole = runner::data::folder::load(&root, 20, ResizeMethod::Tf1, OnBad::Skip).unwrap();
    assert_eq!(whole.n, 6);
    let (px, kept) = idx.pixels(0, idx.n).unwrap();
    assert_eq!(
        kept,
        vec![0, 1, 2, 3, 4, 5],
        "the bad image (position 6) is skipped"
    );
    assert_eq!(
        &px[..],
        &whole.images[..],
        "the same pixels, batch by batch or whole"
    );
    let hash = idx.content_hash().unwrap();
    assert_eq!(hash, idx.content_hash().unwrap());
    // a changed file changes the dataset's identity
    image::RgbImage::from_pixel(24, 18, image::Rgb([1, 2, 3]))
        .save(root.join("c0/0.jpg"))
        .unwrap();
    let again = runner::data::folder::index(&root, 20, ResizeMethod::Tf1, OnBad::Skip).unwrap();
    assert_ne!(again.content_hash().unwrap(), hash);
    // an unreadable file is an error naming it, unless skipped
    let strict = runner::data::folder::index(&root, 20, ResizeMethod::Tf1, OnBad::Error).unwrap();
    let e = strict.pixels(4, 3).err().unwrap().to_string();
    assert!(e.contains("9.jpg") && e.contains("on_bad_image"), "{e}");
}

#[test]
fn features_from_the_cache_entry_train_as_in_memory_ones() {
    let d = tempfile::tempdir().unwrap();
    photo_folder(&d.path().join("photos"), 3, 6);
    std::fs::write(d.path().join("photos/c2/bad.jpg"), b"truncated").unwrap();
    spec(
        d.path(),
        "mapped",
        "cache_dir = \"cache\"\nresults_dir = \"r1\"",
    );
    spec(d.path(), "memory", "cache = false\nresults_dir = \"r2\"");
    run_ok(d.path(), &["-q", "mapped.toml"]);
    run_ok(d.path(), &["-q", "memory.toml"]);
    let (s1, e1) = finished(&d.path().join("r1"), "mapped");
    let (s2, e2) = finished(&d.path().join("r2"), "memory");
    assert_eq!(s1["cache_hit"], false);
    assert_eq!(
        s1["n_train"].as_u64().unwrap() + s1["n_val"].as_u64().unwrap(),
        18,
        "the undecodable image is left out"
    );
    assert_eq!(e1.len(), 3);
    assert_eq!(
        (&s2["n_train"], &s2["n_val"]),
        (&s1["n_train"], &s1["n_val"])
    );
    assert_eq!(
        e1, e2,
        "rows read from the mapped entry give the in-memory numbers"
    );
    // a second run reads the stored entry
    spec(
        d.path(),
        "mapped",
        "cache_dir = \"cache\"\nresults_dir = \"r3\"",
    );
    run_ok(d.path(), &["-q", "mapped.toml"]);
    let (s3, e3) = finished(&d.path().join("r3"), "mapped");
    assert_eq!(s3["cache_hit"], true);
    assert_eq!(e3, e1);
    // a changed image is another dataset: the cache misses
    image::RgbImage::from_pixel(24, 18, image::Rgb([9, 9, 9]))
        .save(d.path().join("photos/c0/0.jpg"))
        .unwrap();
    spec(
        d.path(),
        "mapped",
        "cache_dir = \"cache\"\nresults_dir = \"r4\"",
    );
    run_ok(d.path(), &["-q", "mapped.toml"]);
    assert_eq!(
        finished(&d.path().join("r4"), "mapped").0["cache_hit"],
        false
    );
}

#[test]
fn sharded_extraction_stores_the_same_features_bitwise() {
    let d = tempfile::tempdir().unwrap();
    photo_folder(&d.path().join("photos"), 3, 7);
    spec(
        d.path(),
        "one",
        "cache_dir = \"cache1\"\nresults_dir = \"r1\"",
    );
    spec(
        d.path(),
        "sharded",
        "cache_dir = \"cache3\"\nresults_dir = \"r3\"",
    );
    run_ok(d.path(), &["-q", "one.toml"]);
    let bad = run_in(
        d.path(),
        &["extract-shard", "sharded.toml", "--shard", "3/3"],
    );
    assert_clean_failure(&bad, &["3/3"]);
    for i in 0..3 {
        let s = format!("{i}/3");
        run_ok(
            d.path(),
            &["-q", "extract-shard", "sharded.toml", "--shard", &s],
        );
    }
    let shards = cache_files(&d.path().join("cache3"), ".shard-");
    assert_eq!(shards.len(), 3, "{shards:?}");
    assert!(
        cache_files(&d.path().join("cache3"), "").len() == 3,
        "no merged copy is made"
    );
    let whole = cache_files(&d.path().join("cache1"), "");
    assert_eq!(whole.len(), 1);
    let one = feature_bytes(&whole);
    assert_eq!(one.len(), 21 * 4096 * 4);
    assert!(
        one == feature_bytes(&shards),
        "shards hold the one-process features, bit for bit"
    );
    // the run reads the shards as its entry
    run_ok(d.path(), &["-q", "sharded.toml"]);
    let (s3, e3) = finished(&d.path().join("r3"), "sharded");
    let (_, e1) = finished(&d.path().join("r1"), "one");
    assert_eq!(s3["cache_hit"], true);
    assert_eq!(e3, e1);
    // again: every shard is stored, nothing is computed
    let out = run_in(
        d.path(),
        &["extract-shard", "sharded.toml", "--shard", "1/3"],
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 feature set(s) computed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_parallel_sweep_extracts_in_shards_first() {
    let d = tempfile::tempdir().unwrap();
    photo_folder(&d.path().join("photos"), 2, 5);
    spec(
        d.path(),
        "sw",
        "cache_dir = \"cache\"\nresults_dir = \"res\"\n[sweep]\n\"train.lr\" = [0.01, 0.001]",
    );
    run_ok(
        d.path(),
        &["-q", "sweep", "sw.toml", "--jobs", "2", "--extract-shards"],
    );
    let shards = cache_files(&d.path().join("cache"), ".shard-");
    assert_eq!(shards.len(), 2, "one shard per worker: {shards:?}");
    assert_eq!(cache_files(&d.path().join("cache"), "").len(), 2);
    let runs: Vec<serde_json::Value> = std::fs::read_dir(d.path().join("res/sw"))
        .unwrap()
        .map(|e| e.unwrap().path().join("summary.json"))
        .filter(|p| p.is_file())
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|s| s["cache_hit"] == true), "{runs:?}");
}

#[test]
fn features_handed_on_a_batch_late_are_the_direct_paths_bitwise() {
    // RUNNER_GPU_FUSED=download: each batch's features reach the cache one batch later (after
    // the next batch is launched) and the last is flushed at the end; on the CPU only that order
    // changes, so the entry must be the direct path's, bit for bit, labels and positions included
    let d = tempfile::tempdir().unwrap();
    photo_folder(&d.path().join("photos"), 3, 7); // 21 images: 5 batches of 4 and one of 1
    spec(
        d.path(),
        "direct",
        "cache_dir = \"c1\"\nresults_dir = \"r1\"",
    );
    spec(d.path(), "late", "cache_dir = \"c2\"\nresults_dir = \"r2\"");
    run_ok(d.path(), &["-q", "direct.toml"]);
    let out = runner()
        .current_dir(d.path())
        .args(["-q", "late.toml"])
        .env("RUNNER_GPU_FUSED", "download")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (
        cache_files(&d.path().join("c1"), ""),
        cache_files(&d.path().join("c2"), ""),
    );
    assert_eq!((a.len(), b.len()), (1, 1));
    let (fa, fb) = (feature_bytes(&a), feature_bytes(&b));
    assert_eq!(fa.len(), 21 * 4096 * 4);
    assert!(fa == fb, "the late hand-over changed the features");
    // the whole entries (labels and dataset positions too) differ only in the run's metadata
    let (ea, eb) = (
        safetensors_tensors(&std::fs::read(&a[0]).unwrap()),
        safetensors_tensors(&std::fs::read(&b[0]).unwrap()),
    );
    assert_eq!(ea, eb);
    let (sb, eb) = finished(&d.path().join("r2"), "late");
    let (_, ea) = finished(&d.path().join("r1"), "direct");
    assert_eq!(eb, ea, "training on them gives the same epochs");
    assert_eq!(sb["gpu_fused"], serde_json::json!(["download"]));
}

/// Every tensor of a safetensors file: name -> (shape, bytes).
fn safetensors_tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort();
    v
}
