//! `dataset.kind = "idx"`: the MNIST family's IDX files (MNIST, Fashion-MNIST, KMNIST...):
//! `*-images-idx3-ubyte` (N x H x W, uint8) with `*-labels-idx1-ubyte` (N, uint8) beside it, each
//! optionally gzipped. Grayscale is repeated to RGB; images keep their size (the backbone's
//! resize makes them its input size on the device, as for pickles).
//!
//! The format: two zero bytes, a type byte (0x08 = uint8; the only one images use), a byte with
//! the number of dimensions, one big-endian u32 per dimension, then the values in C order.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};

/// A file's header: its dimensions.
fn header(r: &mut impl Read, path: &Path, want_dims: usize) -> Result<Vec<usize>> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).map_err(|e| {
        Error::format(
            path,
            format!("not an IDX file: the 4-byte header is missing ({e})"),
        )
    })?;
    if h[0] != 0 || h[1] != 0 {
        return Err(Error::format(
            path,
            format!(
                "not an IDX file: it starts with bytes {:02x} {:02x}, not 00 00",
                h[0], h[1]
            ),
        ));
    }
    if h[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX type 0x{:02x} is not supported: images and labels are uint8 (0x08)",
                h[2]
            ),
        ));
    }
    if h[3] as usize != want_dims {
        return Err(Error::format(
            path,
            format!(
                "has {} dimensions; expected {want_dims} ({})",
                h[3],
                if want_dims == 3 {
                    "an images file: N x height x width"
                } else {
                    "a labels file: N"
                }
            ),
        ));
    }
    let mut dims = Vec::with_capacity(want_dims);
    for i in 0..want_dims {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).map_err(|e| {
            Error::format(path, format!("the header ends before dimension {i} ({e})"))
        })?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok(dims)
}

/// An IDX file of uint8 values with dimensions `dims` (to write test data and converted sets).
pub fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// Open `path`, gunzipping when it starts with the gzip magic.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let f = std::io::BufReader::new(f);
    let start = std::io::Cursor::new(magic[..n].to_vec());
    let whole = start.chain(f);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(whole)))
    } else {
        Ok(Box::new(whole))
    }
}

/// Exactly `len` values after the header, checked to fit in memory first; more or fewer
/// bytes in the file are errors.
fn body(r: &mut impl Read, path: &Path, len: usize, what: &str) -> Result<Vec<u8>> {
    crate::memory::ensure_fits(|| format!("{what} of {}", path.display()), len as u64)
        .map_err(|m| Error::data(path, m))?;
    // grown as the data arrives, not reserved from the header's claim: a small (or gzipped)
    // file claiming gigabytes takes only what it holds before the mismatch is reported
    // (found by the `idx` fuzz target: a 35-byte file reserved 3.5 GB)
    let mut v = Vec::with_capacity(len.min(64 << 20));
    r.take(len as u64)
        .read_to_end(&mut v)
        .map_err(|e| Error::format(path, format!("reading the data: {e}")))?;
    if v.len() != len {
        return Err(Error::format(
            path,
            format!(
                "the header promises {len} bytes of data, the file holds {} (truncated?)",
                v.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra).unwrap_or(0) != 0 {
        return Err(Error::format(
            path,
            format!(
                "holds more data than the header's {len} bytes (not an IDX file of this shape?)"
            ),
        ));
    }
    Ok(v)
}

/// The labels file beside an images file: `X-images-idx3-ubyte[.gz]` -> `X-labels-idx1-ubyte[.gz]`
/// (MNIST's naming; also `X-images.idx3-ubyte`), with or without `.gz`.
pub fn labels_beside(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().to_string();
    let swapped = name
        .replace("images-idx3", "labels-idx1")
        .replace("images.idx3", "labels.idx1");
    if swapped == name {
        return None;
    }
    let base = swapped.strip_suffix(".gz").unwrap_or(&swapped).to_string();
    [base.clone(), format!("{base}.gz")]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

/// Load an IDX images file and its labels (`labels`, or the file found beside it).
pub fn load(images: &Path, labels: Option<&Path>, num_classes: Option<usize>) -> Result<Dataset> {
    let labels_path = match labels {
        Some(l) => l.to_path_buf(),
        None => labels_beside(images).ok_or_else(|| {
            Error::data(
                images,
                "no labels file beside it (expected the images file's name with images-idx3 -> labels-idx1, e.g. train-labels-idx1-ubyte.gz); name it with dataset.labels_path",
            )
        })?,
    };
    let mut r = open(images)?;
    let dims = header(&mut r, images, 3)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::data(
            images,
            format!("holds {n} images of {h}x{w}: nothing to train on"),
        ));
    }
    let px_len = n
        .checked_mul(h)
        .and_then(|x| x.checked_mul(w))
        .ok_or_else(|| Error::format(images, format!("{n} x {h} x {w} overflows")))?;
    // the grey values, then the RGB copy
    crate::memory::ensure_fits(
        || format!("{n} images of {h}x{w} as RGB"),
        (px_len as u64).saturating_mul(4),
    )
    .map_err(|m| Error::data(images, m))?;
    let grey = body(&mut r, images, px_len, "the images")?;
    let mut lr = open(&labels_path)?;
    let ld = header(&mut lr, &labels_path, 1)?;
    if ld[0] != n {
        return Err(Error::data(
            &labels_path,
            format!(
                "holds {} labels, but {} holds {n} images",
                ld[0],
                images.display()
            ),
        ));
    }
    let raw = body(&mut lr, &labels_path, n, "the labels")?;
    let labels: Vec<i64> = raw.iter().map(|&l| l as i64).collect();
    let max = raw.iter().copied().max().unwrap_or(0) as usize;
    let classes = num_classes.unwrap_or(max + 1);
    let mut rgb = Vec::with_capacity(px_len * 3);
    for &g in &grey {
        rgb.extend_from_slice(&[g, g, g]);
    }
    Ok(Dataset {
        files: None,
        images: rgb,
        n,
        height: h,
        width: w,
        labels,
        num_classes: classes,
        class_names: None,
        groups: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode as idx;

    fn gz(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_plain_and_gzipped_files_with_labels_found_beside() {
        let d = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..2 * 2 * 3).map(|i| i as u8 * 10).collect();
        std::fs::write(
            d.path().join("train-images-idx3-ubyte.gz"),
            gz(&idx(&[2, 2, 3], &px)),
        )
        .unwrap();
        std::fs::write(d.path().join("train-labels-idx1-ubyte"), idx(&[2], &[7, 3])).unwrap();
        let ds = load(&d.path().join("train-images-idx3-ubyte.gz"), None, None).unwrap();
        assert_eq!((ds.n, ds.height, ds.width, ds.num_classes), (2, 2, 3, 8));
        assert_eq!(ds.labels, vec![7, 3]);
        // grey repeated to RGB, pixel by pixel
        assert_eq!(&ds.images[..6], &[0, 0, 0, 10, 10, 10]);
        assert_eq!(ds.images.len(), 2 * 2 * 3 * 3);
    }

    #[test]
    fn bad_headers_sizes_and_counts_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        let msg = |r: Result<Dataset>| r.expect_err("refused").to_string();
        std::fs::write(p("a-labels-idx1-ubyte"), idx(&[2], &[0, 1])).unwrap();
        std::fs::write(p("a-images-idx3-ubyte"), b"PK\x03\x04 not idx").unwrap();
        assert!(msg(load(&p("a-images-idx3-ubyte"), None, None)).contains("not an IDX file"));
        std::fs::write(p("a-images-idx3-ubyte"), idx(&[2, 2, 2], &[0; 7])).unwrap();
        assert!(msg(load(&p("a-images-idx3-ubyte"), None, None)).contains("promises 8 bytes"));
        std::fs::write(p("a-images-idx3-ubyte"), idx(&[2, 2, 2], &[0; 9])).unwrap();
        assert!(msg(load(&p("a-images-idx3-ubyte"), None, None)).contains("more data"));
        std::fs::write(p("a-images-idx3-ubyte"), idx(&[3, 2, 2], &[0; 12])).unwrap();
        let m = msg(load(&p("a-images-idx3-ubyte"), None, None));
        assert!(
            m.contains("holds 2 labels") && m.contains("3 images"),
            "{m}"
        );
        std::fs::write(p("a-images-idx3-ubyte"), idx(&[2, 2], &[0; 4])).unwrap();
        assert!(msg(load(&p("a-images-idx3-ubyte"), None, None)).contains("2 dimensions"));
        // a header claiming 4e9 x 4e9 images is refused before any memory is taken
        std::fs::write(
            p("a-images-idx3-ubyte"),
            idx(&[u32::MAX, u32::MAX, u32::MAX], &[]),
        )
        .unwrap();
        let m = msg(load(&p("a-images-idx3-ubyte"), None, None));
        assert!(m.contains("overflows") || m.contains("of memory"), "{m}");
        std::fs::write(p("b-images-idx3-ubyte"), idx(&[1, 1, 1], &[0])).unwrap();
        assert!(msg(load(&p("b-images-idx3-ubyte"), None, None)).contains("labels_path"));
    }
}
