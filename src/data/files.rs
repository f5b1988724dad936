//! Image datasets read from files a batch at a time. `folder` and `gtsrb` datasets are indexed
//! up front (paths, crops, labels, groups: a few hundred bytes per image) and their images are
//! decoded, cut and resized only when a batch needs them (`Dataset::pixels`), so memory does
//! not grow with the number of images. Their identity in the feature cache is a hash of the
//! files' bytes (`content_hash`), never of decoded pixels.

use std::path::PathBuf;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::images::{self, OnBad};
use super::preprocess::{center_crop, resize_u8, ResizeMethod};
use crate::error::{Error, Result};

/// How an image is cut before it is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The whole image.
    Whole,
    /// The centred square of its short side (tensorflow-vgg's `utils.load_image`).
    Center,
    /// `x1..x2, y1..y2` (GTSRB's region of interest).
    Roi([usize; 4]),
}

/// One image file of a dataset.
#[derive(Debug, Clone)]
pub struct FileItem {
    pub path: PathBuf,
    pub cut: Cut,
    /// Where the file was listed ("GT-00001.csv row 7"), for messages.
    pub origin: Option<String>,
}

/// The image files of a dataset, each decoded to `size x size` RGB on demand.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    pub items: Vec<FileItem>,
    pub size: usize,
    pub method: ResizeMethod,
    pub on_bad: OnBad,
}

impl ImageFiles {
    /// A dataset of these files (decoded a batch at a time) with a label per file.
    pub fn into_dataset(
        self,
        labels: Vec<i64>,
        num_classes: usize,
        class_names: Option<Vec<String>>,
        groups: Option<Vec<u64>>,
    ) -> super::Dataset {
        super::Dataset {
            images: Vec::new(),
            n: self.items.len(),
            height: self.size,
            width: self.size,
            files: Some(std::sync::Arc::new(self)),
            labels,
            num_classes,
            class_names,
            groups,
        }
    }

    /// The file `i` named for messages.
    pub fn what(&self, i: usize) -> String {
        let it = &self.items[i];
        match &it.origin {
            Some(o) => format!("{} ({o})", it.path.display()),
            None => it.path.display().to_string(),
        }
    }

    /// Image `i`, decoded, cut and resized (`size * size * 3` bytes).
    pub fn decode(&self, i: usize) -> std::result::Result<Vec<u8>, String> {
        let it = &self.items[i];
        let img = images::decode(&it.path)?;
        let (px, h, w) = match it.cut {
            Cut::Whole => (img.px, img.h, img.w),
            Cut::Center => {
                let (sq, s) = center_crop(&img.px, img.h, img.w);
                (sq, s, s)
            }
            Cut::Roi([x1, y1, x2, y2]) => {
                if x2 > img.w || y2 > img.h {
                    return Err(format!(
                        "ROI x {x1}..{x2} y {y1}..{y2} is outside the {}x{} image",
                        img.w, img.h
                    ));
                }
                let mut c = Vec::with_capacity((x2 - x1) * (y2 - y1) * 3);
                for y in y1..y2 {
                    c.extend_from_slice(&img.px[(y * img.w + x1) * 3..(y * img.w + x2) * 3]);
                }
                (c, y2 - y1, x2 - x1)
            }
        };
        Ok(resize_u8(&px, h, w, self.size, self.size, self.method))
    }

    /// Images `positions`, decoded in parallel: their pixels one after another, and the
    /// positions kept (all, or under `OnBad::Skip` those that decoded; the others are logged).
    pub fn decode_many(&self, positions: &[usize]) -> Result<(Vec<u8>, Vec<usize>)> {
        let got = images::par_map(
            positions,
            self.on_bad,
            |&i| self.what(i),
            |&i| self.decode(i),
        )?;
        let mut px = Vec::with_capacity(got.len() * self.size * self.size * 3);
        let mut kept = Vec::with_capacity(got.len());
        for (k, im) in got {
            px.extend(im);
            kept.push(positions[k]);
        }
        Ok((px, kept))
    }

    pub fn subset(&self, indices: &[usize]) -> ImageFiles {
        ImageFiles {
            items: indices.iter().map(|&i| self.items[i].clone()).collect(),
            ..self.clone()
        }
    }

    /// SHA-256 over every file's bytes (read in parallel, one file at a time per thread), with
    /// each image's cut and label and the decoding settings: what the decoded images depend on.
    /// A file that cannot be read is an error, or under `OnBad::Skip` hashed as unreadable.
    pub fn content_hash(&self, labels: &[i64]) -> Result<String> {
        let digests: Vec<std::result::Result<[u8; 32], String>> = self
            .items
            .par_iter()
            .map(|it| match std::fs::read(&it.path) {
                Ok(b) => Ok(Sha256::digest(&b).into()),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        let mut h = Sha256::new();
        h.update(
            format!(
                "files v1|n={}|size={}|resize={}|on_bad={:?}\n",
                self.items.len(),
                self.size,
                self.method.name(),
                self.on_bad
            )
            .as_bytes(),
        );
        for (i, (d, l)) in digests.iter().zip(labels).enumerate() {
            match d {
                Ok(d) => h.update(d),
                Err(e) if self.on_bad == OnBad::Skip => {
                    tracing::warn!("{}: cannot read ({e}); it will be skipped", self.what(i));
                    h.update(b"unreadable")
                }
                Err(e) => {
                    return Err(Error::data(
                        &self.items[i].path,
                        format!("cannot read: {e} (set dataset.on_bad_image = \"skip\" to leave such images out)"),
                    ))
                }
            }
            h.update(format!("|{:?}|{l}\n", self.items[i].cut).as_bytes());
        }
        Ok(format!("{:x}", h.finalize()))
    }
}
