//! Datasets: labels with u8 images, decoded in memory (pickles, IDX, the synthetic set) or read
//! from image files a batch at a time (`folder`, `gtsrb`: see `files`), and preprocessing onto
//! the device.

use std::borrow::Cow;
use std::sync::Arc;

mod bilinear;
pub mod files;
pub mod folder;
pub mod fused_input;
pub mod gtsrb;
pub mod idx;
pub mod images;
pub mod pickle;
pub mod preprocess;
pub mod split;
pub mod synthetic;

/// Images (NHWC u8, all the same size) with integer labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The decoded images, for datasets held in memory (empty when `files` is set).
    pub images: Vec<u8>,
    /// The image files, for datasets decoded a batch at a time.
    pub files: Option<Arc<files::ImageFiles>>,
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub labels: Vec<i64>,
    /// Number of classes (labels are `0..num_classes`).
    pub num_classes: usize,
    pub class_names: Option<Vec<String>>,
    /// Group of each sample (GTSRB: its track); splits can keep groups whole.
    pub groups: Option<Vec<u64>>,
}

impl Dataset {
    pub fn image_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// The u8 pixels of images `start..start + count` of a dataset held in memory (empty for
    /// one read from files: use [`Dataset::pixels`]).
    pub fn batch_pixels(&self, start: usize, count: usize) -> &[u8] {
        let l = self.image_len();
        self.images
            .get(start * l..(start + count) * l)
            .unwrap_or(&[])
    }

    /// The pixels of images `start..start + count` and the positions they belong to: all of
    /// them, or for files under `dataset.on_bad_image = "skip"` those that decoded.
    pub fn pixels(&self, start: usize, count: usize) -> crate::Result<(Cow<'_, [u8]>, Vec<usize>)> {
        let positions: Vec<usize> = (start..start + count).collect();
        match &self.files {
            Some(f) => {
                let (px, kept) = f.decode_many(&positions)?;
                Ok((Cow::Owned(px), kept))
            }
            None => Ok((Cow::Borrowed(self.batch_pixels(start, count)), positions)),
        }
    }

    /// Whether images are read from files a batch at a time.
    pub fn streamed(&self) -> bool {
        self.files.is_some()
    }

    /// A dataset read from files, decoded whole into memory (samples that cannot be decoded
    /// are an error, or dropped under `OnBad::Skip`); others as they are.
    pub fn into_memory(self, root: &std::path::Path) -> crate::Result<Dataset> {
        let Some(files) = self.files.clone() else {
            return Ok(self);
        };
        let size = files.size;
        // the decoded images, then the assembled buffer
        let bytes = (self.n as u64).saturating_mul((size * size * 3 * 2) as u64);
        crate::memory::ensure_fits(
            || {
                format!(
                    "{} images at dataset.image_size = {size} ({size}x{size}x3 bytes each, held twice while assembled)",
                    self.n
                )
            },
            bytes,
        )
        .map_err(|m| crate::Error::data(root, m))?;
        let all: Vec<usize> = (0..self.n).collect();
        let (px, kept) = files.decode_many(&all)?;
        if kept.is_empty() {
            return Err(crate::Error::data(root, "no usable images"));
        }
        let mut d = self.subset(&kept);
        d.files = None;
        d.images = px;
        Ok(d)
    }
}

impl Dataset {
    /// A new dataset holding the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let l = self.image_len();
        let mut images = Vec::new();
        if self.files.is_none() {
            images.reserve(indices.len() * l);
            for &i in indices {
                images.extend_from_slice(&self.images[i * l..(i + 1) * l]);
            }
        }
        Dataset {
            images,
            files: self.files.as_ref().map(|f| Arc::new(f.subset(indices))),
            n: indices.len(),
            height: self.height,
            width: self.width,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            groups: self
                .groups
                .as_ref()
                .map(|g| indices.iter().map(|&i| g[i]).collect()),
        }
    }

    /// An error naming `path` when a label lies outside `0..classes` (the training set's classes).
    pub fn check_labels(&self, classes: usize, path: &std::path::Path) -> crate::Result<()> {
        match self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as u64 >= classes as u64)
        {
            Some((i, l)) => Err(crate::Error::data(
                path,
                format!(
                    "label {l} of sample {i} is out of range for the training set's {classes} classes"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The dataset's identity in the feature cache: for images in memory the SHA-256 of the
    /// decoded content (shape, pixels, labels), whatever file format it came from; for images
    /// read from files, of the files' bytes with their labels and decoding settings.
    pub fn content_hash(&self) -> crate::Result<String> {
        use sha2::{Digest, Sha256};
        if let Some(f) = &self.files {
            return f.content_hash(&self.labels);
        }
        let mut h = Sha256::new();
        for d in [self.n, self.height, self.width] {
            h.update((d as u64).to_le_bytes());
        }
        h.update(&self.images);
        for l in &self.labels {
            h.update(l.to_le_bytes());
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

/// Save up to `cols * rows` images of a dataset as one PNG grid (for looking at data).
pub fn save_grid(
    d: &Dataset,
    indices: &[usize],
    cols: usize,
    path: &std::path::Path,
) -> crate::Result<()> {
    let rows = indices.len().div_ceil(cols.max(1));
    let (h, w) = (d.height, d.width);
    let mut img = image::RgbImage::new((cols * (w + 2)) as u32, (rows * (h + 2)) as u32);
    for (k, &i) in indices.iter().enumerate() {
        let (gx, gy) = ((k % cols) * (w + 2), (k / cols) * (h + 2));
        let (px, _) = d.pixels(i, 1)?;
        if px.len() < h * w * 3 {
            continue;
        }
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                img.put_pixel(
                    (gx + x) as u32,
                    (gy + y) as u32,
                    image::Rgb([px[o], px[o + 1], px[o + 2]]),
                );
            }
        }
    }
    img.save(path)
        .map_err(|e| crate::Error::Other(format!("{}: {e}", path.display())))
}

/// How to load a dataset file or folder.
pub struct LoadOptions {
    pub num_classes: Option<usize>,
    pub image_size: usize,
    pub resize: preprocess::ResizeMethod,
    pub on_bad: images::OnBad,
    pub crop: gtsrb::Crop,
    /// `idx`: the labels file (None: found beside the images file).
    pub labels: Option<std::path::PathBuf>,
}

/// Load a dataset of `kind` from `path`; `test` selects GTSRB's test layout. Folders of image
/// files are indexed, not decoded: their images are read a batch at a time.
pub fn load(
    kind: crate::spec::DatasetKind,
    path: &std::path::Path,
    o: &LoadOptions,
    test: bool,
) -> crate::Result<Dataset> {
    use crate::spec::DatasetKind as K;
    let d = match kind {
        K::Pickle | K::Synthetic => pickle::load(path, o.num_classes)?,
        K::Folder => folder::index(path, o.image_size, o.resize, o.on_bad)?,
        K::Gtsrb if test => gtsrb::index_test(path, o.crop, o.image_size, o.resize, o.on_bad)?,
        K::Gtsrb => gtsrb::index_train(path, o.crop, o.image_size, o.resize, o.on_bad)?,
        K::Idx => idx::load(path, o.labels.as_deref(), o.num_classes)?,
    };
    if let Some(c) = o.num_classes {
        if let Some((i, l)) = d
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as u64 >= c as u64)
        {
            return Err(crate::Error::data(
                path,
                format!("label {l} of sample {i} is out of range: dataset.num_classes = {c}"),
            ));
        }
    }
    Ok(d)
}
