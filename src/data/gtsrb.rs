//! `dataset.kind = "gtsrb"`: the official German Traffic Sign Recognition Benchmark layout.
//!
//! Training: `Final_Training/Images/000NN/*.ppm` with `GT-000NN.csv` in each class folder;
//! test: `Final_Test/Images/*.ppm` with `GT-final_test.csv` (the annotated one, with ClassId).
//! The CSVs are semicolon-separated: `Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`.
//! With `crop = "roi"` each image is cut to its region of interest (`Roi.X1 <= x < Roi.X2`,
//! `Roi.Y1 <= y < Roi.Y2`), then resized to `size x size` — how Udacity's 32x32 `train.p` was made.
//! Training file names are `TTTTT_NNNNN.ppm`: images of one physical sign form a track, which
//! `split = "track"` keeps on one side of the train/validation split.

use std::path::{Path, PathBuf};

use super::files::{Cut, FileItem, ImageFiles};
use super::images::OnBad;
use super::preprocess::ResizeMethod;
use super::Dataset;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    Roi,
    None,
}

const COLUMNS: [&str; 8] = [
    "Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId",
];

struct Row {
    file: PathBuf,
    roi: [usize; 4],
    class: i64,
    track: Option<u64>,
    /// "GT-00001.csv row 7" for messages
    origin: String,
}

/// Parse an annotation CSV without decoding images: the number of rows (for checks and fuzzing).
pub fn parse_annotations(csv_path: &Path, image_dir: &Path) -> Result<usize> {
    Ok(read_csv(csv_path, image_dir)?.len())
}

/// Read an annotation CSV; every problem names the file and the row.
fn read_csv(csv_path: &Path, image_dir: &Path) -> Result<Vec<Row>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| Error::data(csv_path, format!("cannot read: {e}")))?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::data(csv_path, format!("bad header: {e}")))?
        .clone();
    let mut idx = [0usize; 8];
    for (k, col) in COLUMNS.iter().enumerate() {
        idx[k] = headers
            .iter()
            .position(|h| h.trim() == *col)
            .ok_or_else(|| {
                Error::data(
                    csv_path,
                    format!(
                        "has no column {col:?} (header: {}; expected {})",
                        headers.iter().collect::<Vec<_>>().join(";"),
                        COLUMNS.join(";")
                    ),
                )
            })?;
    }
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::data(csv_path, format!("row {line}: {e}")))?;
        let field = |k: usize| -> Result<&str> {
            rec.get(idx[k])
                .map(str::trim)
                .ok_or_else(|| Error::data(csv_path, format!("row {line}: missing {}", COLUMNS[k])))
        };
        let num = |k: usize| -> Result<usize> {
            let f = field(k)?;
            f.parse().map_err(|_| {
                Error::data(
                    csv_path,
                    format!(
                        "row {line}: {} = {f:?} is not a non-negative integer",
                        COLUMNS[k]
                    ),
                )
            })
        };
        let name = field(0)?.to_string();
        let (w, h) = (num(1)?, num(2)?);
        let roi = [num(3)?, num(4)?, num(5)?, num(6)?];
        if roi[0] >= roi[2] || roi[1] >= roi[3] || roi[2] > w || roi[3] > h {
            return Err(Error::data(
                csv_path,
                format!(
                    "row {line} ({name}): ROI x {}..{} y {}..{} is empty or outside the {w}x{h} image",
                    roi[0], roi[2], roi[1], roi[3]
                ),
            ));
        }
        let class = num(7)? as i64;
        let track = name.split_once('_').and_then(|(t, _)| t.parse().ok());
        rows.push(Row {
            file: image_dir.join(&name),
            roi,
            class,
            track,
            origin: format!("{} row {line}", csv_path.display()),
        });
    }
    Ok(rows)
}

fn first_existing(cands: &[PathBuf]) -> Option<PathBuf> {
    cands.iter().find(|p| p.is_dir()).cloned()
}

/// The dataset of `rows`, indexed: images are read a batch at a time.
fn index_rows(
    rows: &[Row],
    crop: Crop,
    size: usize,
    method: ResizeMethod,
    on_bad: OnBad,
    classes: usize,
    root: &Path,
) -> Result<Dataset> {
    if rows.is_empty() {
        return Err(Error::data(root, "no usable images"));
    }
    let items = rows
        .iter()
        .map(|r| FileItem {
            path: r.file.clone(),
            cut: match crop {
                Crop::Roi => Cut::Roi(r.roi),
                Crop::None => Cut::Whole,
            },
            origin: Some(r.origin.clone()),
        })
        .collect();
    let groups = rows
        .iter()
        .enumerate()
        .map(|(i, r)| r.class as u64 * 1_000_000 + r.track.unwrap_or(i as u64))
        .collect();
    let files = ImageFiles {
        items,
        size,
        method,
        on_bad,
    };
    let labels = rows.iter().map(|r| r.class).collect();
    Ok(files.into_dataset(labels, classes, None, Some(groups)))
}

/// The training set under `root` decoded whole into memory (see [`index_train`]).
pub fn load_train(
    root: &Path,
    crop: Crop,
    size: usize,
    method: ResizeMethod,
    on_bad: OnBad,
) -> Result<Dataset> {
    index_train(root, crop, size, method, on_bad)?.into_memory(root)
}

/// The test set under `root` decoded whole into memory (see [`index_test`]).
pub fn load_test(
    root: &Path,
    crop: Crop,
    size: usize,
    method: ResizeMethod,
    on_bad: OnBad,
) -> Result<Dataset> {
    index_test(root, crop, size, method, on_bad)?.into_memory(root)
}

/// The training set under `root` (the folder holding `Final_Training`, or `Final_Training`, or
/// its `Images`), indexed from its CSVs: images are read a batch at a time.
pub fn index_train(
    root: &Path,
    crop: Crop,
    size: usize,
    method: ResizeMethod,
    on_bad: OnBad,
) -> Result<Dataset> {
    let images = first_existing(&[
        root.join("Final_Training/Images"),
        root.join("Images"),
        root.to_path_buf(),
    ])
    .ok_or_else(|| Error::data(root, "not found (expected GTSRB's Final_Training/Images)"))?;
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| Error::io(&images, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(Error::data(
            &images,
            "has no class folders 000NN (GTSRB's Final_Training/Images layout)",
        ));
    }
    let mut rows = Vec::new();
    for dir in &class_dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let csv_path = dir.join(format!("GT-{name}.csv"));
        if !csv_path.is_file() {
            return Err(Error::data(
                &csv_path,
                "annotation file missing (each class folder 000NN holds GT-000NN.csv)",
            ));
        }
        let r = read_csv(&csv_path, dir)?;
        if r.is_empty() {
            let msg = "lists no images (empty class)";
            if on_bad == OnBad::Skip {
                tracing::warn!("{}: {msg}", csv_path.display());
            } else {
                return Err(Error::data(&csv_path, msg));
            }
        }
        rows.extend(r);
    }
    let classes = rows.iter().map(|r| r.class + 1).max().unwrap_or(0) as usize;
    index_rows(&rows, crop, size, method, on_bad, classes, root)
}

/// The test set under `root` (the folder holding `Final_Test`, or `Final_Test`, or its
/// `Images`), labelled by `GT-final_test.csv`, indexed.
pub fn index_test(
    root: &Path,
    crop: Crop,
    size: usize,
    method: ResizeMethod,
    on_bad: OnBad,
) -> Result<Dataset> {
    let images = first_existing(&[
        root.join("Final_Test/Images"),
        root.join("Images"),
        root.to_path_buf(),
    ])
    .ok_or_else(|| Error::data(root, "not found (expected GTSRB's Final_Test/Images)"))?;
    let csv_path = [images.join("GT-final_test.csv"), root.join("GT-final_test.csv")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::data(
                &images,
                "has no GT-final_test.csv (the annotated test CSV with ClassId, published separately from the test images)",
            )
        })?;
    let rows = read_csv(&csv_path, &images)?;
    let classes = rows.iter().map(|r| r.class + 1).max().unwrap_or(0) as usize;
    let mut d = index_rows(&rows, crop, size, method, on_bad, classes, root)?;
    d.groups = None;
    Ok(d)
}
