//! `dataset.kind = "folder"`: `path/<class>/<image>`, classes sorted by name, files sorted by
//! name within a class (extensions jpg, jpeg, png, ppm, bmp, gif, any case). Each image is
//! centre-cropped to its short side and resized to `size x size` (tensorflow-vgg's
//! `utils.load_image`), decoded in parallel a batch at a time (`index`) or all at once (`load`).

use std::path::{Path, PathBuf};

use super::files::{Cut, FileItem, ImageFiles};
use super::images::{self, OnBad};
use super::preprocess::ResizeMethod;
use super::Dataset;
use crate::error::{Error, Result};

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Index the folder dataset under `root`: its classes and files, read a batch at a time later.
pub fn index(root: &Path, size: usize, method: ResizeMethod, on_bad: OnBad) -> Result<Dataset> {
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(Error::data(
            root,
            "has no class folders (expected path/<class>/<image>)",
        ));
    }
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (c, dir) in classes.iter().enumerate() {
        let imgs: Vec<PathBuf> = sorted_entries(dir)?
            .into_iter()
            .filter(|p| p.is_file() && images::is_image(p))
            .collect();
        if imgs.is_empty() {
            let msg = "class folder holds no images (jpg, jpeg, png, ppm, bmp, gif)";
            if on_bad == OnBad::Skip {
                tracing::warn!("{}: {msg}; class {c} will have no samples", dir.display());
            } else {
                return Err(Error::data(dir, msg));
            }
        }
        names.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        );
        files.extend(imgs.into_iter().map(|p| (p, c as i64)));
    }
    if files.is_empty() {
        return Err(Error::data(root, "no usable images"));
    }
    let items = files
        .iter()
        .map(|(p, _)| FileItem {
            path: p.clone(),
            cut: Cut::Center,
            origin: None,
        })
        .collect();
    let labels = files.iter().map(|f| f.1).collect();
    let files = ImageFiles {
        items,
        size,
        method,
        on_bad,
    };
    Ok(files.into_dataset(labels, classes.len(), Some(names), None))
}

/// The folder dataset under `root`, decoded whole into memory.
pub fn load(root: &Path, size: usize, method: ResizeMethod, on_bad: OnBad) -> Result<Dataset> {
    index(root, size, method, on_bad)?.into_memory(root)
}
