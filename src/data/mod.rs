//! Datasets as decoded u8 images + labels, and preprocessing onto the device.

pub mod folder;
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
    pub images: Vec<u8>,
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

    /// The u8 pixels of images `start..start + count`.
    pub fn batch_pixels(&self, start: usize, count: usize) -> &[u8] {
        let l = self.image_len();
        &self.images[start * l..(start + count) * l]
    }
}

impl Dataset {
    /// A new dataset holding the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let l = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * l);
        for &i in indices {
            images.extend_from_slice(&self.images[i * l..(i + 1) * l]);
        }
        Dataset {
            images,
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

    /// SHA-256 of the decoded content (shape, pixels, labels): the dataset's identity in the
    /// feature cache, whatever file format it came from.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for d in [self.n, self.height, self.width] {
            h.update((d as u64).to_le_bytes());
        }
        h.update(&self.images);
        for l in &self.labels {
            h.update(l.to_le_bytes());
        }
        format!("{:x}", h.finalize())
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
        let px = d.batch_pixels(i, 1);
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

/// Load a dataset of `kind` from `path`; `test` selects GTSRB's test layout.
pub fn load(
    kind: crate::spec::DatasetKind,
    path: &std::path::Path,
    o: &LoadOptions,
    test: bool,
) -> crate::Result<Dataset> {
    use crate::spec::DatasetKind as K;
    let d = match kind {
        K::Pickle | K::Synthetic => pickle::load(path, o.num_classes)?,
        K::Folder => folder::load(path, o.image_size, o.resize, o.on_bad)?,
        K::Gtsrb if test => gtsrb::load_test(path, o.crop, o.image_size, o.resize, o.on_bad)?,
        K::Gtsrb => gtsrb::load_train(path, o.crop, o.image_size, o.resize, o.on_bad)?,
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
