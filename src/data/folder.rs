//! `dataset.kind = "folder"`: `path/<class>/<image>`, classes sorted by name, files sorted by
//! name within a class (extensions jpg, jpeg, png, ppm, bmp, gif, any case). Each image is
//! centre-cropped to its short side and resized to `size x size` (tensorflow-vgg's
//! `utils.load_image`), decoded in parallel.

use std::path::{Path, PathBuf};

use super::images::{self, OnBad};
use super::preprocess::{center_crop, resize_u8, ResizeMethod};
use super::Dataset;
use crate::error::{Error, Result};

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

pub fn load(root: &Path, size: usize, method: ResizeMethod, on_bad: OnBad) -> Result<Dataset> {
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
    // the decoded images, then the assembled buffer
    let bytes = (files.len() as u64).saturating_mul((size * size * 3 * 2) as u64);
    crate::device::ensure_fits(
        || {
            format!(
                "{} images at dataset.image_size = {size} ({size}x{size}x3 bytes each, held twice while assembled)",
                files.len()
            )
        },
        bytes,
    )
    .map_err(|m| Error::data(root, m))?;
    let decoded = images::par_map(
        &files,
        on_bad,
        |(p, _)| p.display().to_string(),
        |(p, _)| {
            let img = images::decode(p)?;
            let (sq, s) = center_crop(&img.px, img.h, img.w);
            Ok(resize_u8(&sq, s, s, size, size, method))
        },
    )?;
    let n = decoded.len();
    let mut px = Vec::with_capacity(n * size * size * 3);
    let mut labels = Vec::with_capacity(n);
    for (i, im) in decoded {
        px.extend(im);
        labels.push(files[i].1);
    }
    if n == 0 {
        return Err(Error::data(root, "no usable images"));
    }
    Ok(Dataset {
        images: px,
        n,
        height: size,
        width: size,
        labels,
        num_classes: classes.len(),
        class_names: Some(names),
        groups: None,
    })
}
