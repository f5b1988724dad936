//! Decoding image files (JPEG, PNG, PPM, BMP, GIF) into u8 RGB, in parallel, with failures
//! reported by path or skipped with a logged warning.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// What to do with an image that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBad {
    Error,
    Skip,
}

pub const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "ppm", "bmp", "gif"];

pub fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A decoded RGB image.
pub struct Rgb {
    pub h: usize,
    pub w: usize,
    pub px: Vec<u8>,
}

use crate::memory::max_image_pixels as max_pixels;
pub use crate::memory::MAX_IMAGE_PIXELS;

pub fn decode(path: &Path) -> std::result::Result<Rgb, String> {
    let reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    decode_reader(reader)
}

/// As `decode`, from the file's bytes.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<Rgb, String> {
    decode_reader(image::ImageReader::new(std::io::Cursor::new(bytes)))
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> std::result::Result<Rgb, String> {
    use image::ImageDecoder;
    let mut decoder = reader
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_decoder()
        .map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    let (pixels, limit) = (w as u64 * h as u64, max_pixels());
    if pixels > limit {
        return Err(format!(
            "image is {w}x{h} ({pixels} pixels), above the limit of {limit} (set RUNNER_MAX_IMAGE_PIXELS to allow more)"
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(limit.saturating_mul(8));
    decoder.set_limits(limits).map_err(|e| e.to_string())?;
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    Ok(Rgb {
        h,
        w,
        px: img.into_raw(),
    })
}

/// Apply `f` to each item in parallel; items whose `f` fails are an error (the first, in input
/// order) or, under `OnBad::Skip`, dropped with a warning. Keeps input order.
pub fn par_map<T: Sync, U: Send>(
    items: &[T],
    on_bad: OnBad,
    what: impl Fn(&T) -> String + Sync,
    f: impl Fn(&T) -> std::result::Result<U, String> + Sync,
) -> Result<Vec<(usize, U)>> {
    let results: Vec<std::result::Result<U, String>> = items.par_iter().map(&f).collect();
    let mut out = Vec::with_capacity(items.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(u) => out.push((i, u)),
            Err(e) if on_bad == OnBad::Skip => tracing::warn!("skipping {}: {e}", what(&items[i])),
            Err(e) => {
                return Err(Error::Data {
                    path: PathBuf::from(what(&items[i])),
                    msg: format!(
                        "{e} (set dataset.on_bad_image = \"skip\" to leave such images out)"
                    ),
                })
            }
        }
    }
    Ok(out)
}
