//! Datasets as decoded u8 images + labels, and preprocessing onto the device.

pub mod pickle;
pub mod preprocess;

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
