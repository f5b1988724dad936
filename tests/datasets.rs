//! Dataset layouts: GTSRB's official tree (ROI crop, labels, tracks, test set), image folders, and
//! what bad files do.

mod common;

use std::path::Path;

use common::*;
use runner::data::gtsrb::{self, Crop};
use runner::data::images::OnBad;
use runner::data::preprocess::ResizeMethod;

/// A w x h image, blue outside the ROI (x1..x2, y1..y2) and a class-specific red inside.
fn sign(w: u32, h: u32, roi: [u32; 4], red: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        if x >= roi[0] && x < roi[2] && y >= roi[1] && y < roi[3] {
            image::Rgb([red, 10, 20])
        } else {
            image::Rgb([0, 0, 250])
        }
    })
}

const HEADER: &str = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n";

/// Final_Training/Images/0000C/ with 3 tracks x 2 images per class, and Final_Test.
fn gtsrb_tree(root: &Path, classes: usize) {
    for c in 0..classes {
        let d = root.join(format!("Final_Training/Images/{c:05}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut csv = String::from(HEADER);
        for t in 0..3 {
            for k in 0..2 {
                let name = format!("{t:05}_{k:05}.ppm");
                let (w, h) = (12 + k as u32, 10 + t as u32);
                let roi = [2, 1, 10, 9];
                sign(w, h, roi, 100 + c as u8).save(d.join(&name)).unwrap();
                csv += &format!(
                    "{name};{w};{h};{};{};{};{};{c}\n",
                    roi[0], roi[1], roi[2], roi[3]
                );
            }
        }
        std::fs::write(d.join(format!("GT-{c:05}.csv")), csv).unwrap();
    }
    let d = root.join("Final_Test/Images");
    std::fs::create_dir_all(&d).unwrap();
    let mut csv = String::from(HEADER);
    for i in 0..4 {
        let name = format!("{i:05}.ppm");
        sign(11, 11, [1, 1, 9, 9], 100 + (i % classes) as u8)
            .save(d.join(&name))
            .unwrap();
        csv += &format!("{name};11;11;1;1;9;9;{}\n", i % classes);
    }
    std::fs::write(d.join("GT-final_test.csv"), csv).unwrap();
}

#[test]
fn gtsrb_official_layout_roi_labels_tracks_and_test_set() {
    let d = tempfile::tempdir().unwrap();
    gtsrb_tree(d.path(), 3);
    // ROI 8x8 stored at 8x8: only the sign's own pixels remain
    let ds = gtsrb::load_train(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Error).unwrap();
    assert_eq!((ds.n, ds.num_classes, ds.height), (18, 3, 8));
    assert_eq!(ds.labels, (0..18).map(|i| i / 6).collect::<Vec<i64>>());
    for i in 0..ds.n {
        let px = ds.batch_pixels(i, 1);
        assert!(
            px.chunks(3)
                .all(|p| p == [100 + ds.labels[i] as u8, 10, 20]),
            "image {i} is not its ROI"
        );
    }
    // without the crop, the blue surround is kept
    let whole =
        gtsrb::load_train(d.path(), Crop::None, 8, ResizeMethod::Tf1, OnBad::Error).unwrap();
    assert!(whole.batch_pixels(0, 1).chunks(3).any(|p| p == [0, 0, 250]));
    // tracks: 3 per class, kept whole on one side of the split
    let groups = ds.groups.clone().unwrap();
    let all: Vec<usize> = (0..ds.n).collect();
    for seed in 0..20 {
        let (tr, va) = runner::data::split::by_group(&ds.labels, &groups, &all, 3, 0.34, seed);
        assert_eq!(tr.len() + va.len(), 18);
        assert_eq!(va.len(), 6, "one track of 2 images from each class");
        for &v in &va {
            assert!(
                tr.iter().all(|&t| groups[t] != groups[v]),
                "a track on both sides"
            );
        }
    }
    // the test set with its labels
    let test = gtsrb::load_test(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Error).unwrap();
    assert_eq!(test.labels, vec![0, 1, 2, 0]);
    assert!(test
        .batch_pixels(1, 1)
        .chunks(3)
        .all(|p| p == [101, 10, 20]));
}

#[test]
fn gtsrb_runs_end_to_end_with_a_track_split_and_test_set() {
    let d = tempfile::tempdir().unwrap();
    gtsrb_tree(&d.path().join("GTSRB"), 3);
    std::fs::write(
        d.path().join("g.toml"),
        "name = \"g\"\n[backbone]\nweights = \"random\"\n[dataset]\nkind = \"gtsrb\"\npath = \"GTSRB\"\n\
         test_path = \"GTSRB\"\nval_fraction = 0.34\n[train]\nepochs = 2\n[run]\ndevice = \"cpu\"\ncache = false\nresults_dir = \"res\"\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["-q", "g.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_dir(d.path().join("res/g"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (
            s["n_train"].as_u64(),
            s["n_val"].as_u64(),
            s["n_test"].as_u64()
        ),
        (Some(12), Some(6), Some(4))
    );
    let per_class = std::fs::read_to_string(run.join("per_class.csv")).unwrap();
    assert!(per_class.starts_with("split,class,name,support,correct,accuracy"));
    assert_eq!(
        per_class.lines().filter(|l| l.starts_with("test,")).count(),
        3
    );
    let confusion = std::fs::read_to_string(run.join("confusion.csv")).unwrap();
    let total: u64 = confusion
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("val,"))
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 6, "every val sample counted once");
}

#[test]
fn gtsrb_bad_annotations_name_file_and_row() {
    let d = tempfile::tempdir().unwrap();
    gtsrb_tree(d.path(), 1);
    let csv = d.path().join("Final_Training/Images/00000/GT-00000.csv");
    let good = std::fs::read_to_string(&csv).unwrap();
    // a missing column
    std::fs::write(&csv, good.replace("Roi.X2;", "").replace(";10;9;", ";10;")).unwrap();
    let e = gtsrb::load_train(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Error)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("GT-00000.csv") && e.contains("\"Roi.X2\""),
        "{e}"
    );
    // a ROI outside the image, on the third data row
    let bad: String = good
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 3 { l.replace(";2;1;10;9;", ";2;1;40;9;") } else { l.to_string() } + "\n")
        .collect();
    std::fs::write(&csv, bad).unwrap();
    let e = gtsrb::load_train(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Error)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("GT-00000.csv") && e.contains("row 4") && e.contains("outside"),
        "{e}"
    );
    // a corrupt image: an error naming it, or skipped
    std::fs::write(&csv, &good).unwrap();
    std::fs::write(
        d.path().join("Final_Training/Images/00000/00001_00000.ppm"),
        b"P6\n12 11\n255\nshort",
    )
    .unwrap();
    let e = gtsrb::load_train(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Error)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("00001_00000.ppm") && e.contains("GT-00000.csv row 4"),
        "{e}"
    );
    let ds = gtsrb::load_train(d.path(), Crop::Roi, 8, ResizeMethod::Tf1, OnBad::Skip).unwrap();
    assert_eq!(ds.n, 5);
}

#[test]
fn folder_errors_and_skips() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("photos");
    for (c, n) in [("daisy", 2), ("roses", 2)] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..n {
            sign(20, 14, [2, 2, 8, 8], 50 + i)
                .save(root.join(c).join(format!("{i}.jpg")))
                .unwrap();
        }
    }
    std::fs::create_dir_all(root.join("tulips")).unwrap();
    let load = |on_bad| runner::data::folder::load(&root, 16, ResizeMethod::Tf1, on_bad);
    let e = load(OnBad::Error).err().unwrap().to_string();
    assert!(e.contains("tulips") && e.contains("no images"), "{e}");
    std::fs::write(
        root.join("tulips/0.JPG"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    let e = load(OnBad::Error).err().unwrap().to_string();
    assert!(e.contains("0.JPG") && e.contains("on_bad_image"), "{e}");
    let ds = load(OnBad::Skip).unwrap();
    assert_eq!((ds.n, ds.num_classes), (4, 3));
    assert_eq!(ds.class_names.unwrap(), vec!["daisy", "roses", "tulips"]);
    assert_eq!(ds.labels, vec![0, 0, 1, 1]);
    // centre crop: the 20x14 image keeps columns 3..17
    assert_eq!((ds.height, ds.width), (16, 16));
    let out = run_in(d.path(), &["weights", "inspect", "photos/tulips/0.JPG"]);
    assert_clean_failure(&out, &["0.JPG"]);
}
