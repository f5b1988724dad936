//! Udacity's traffic-sign pickles (`train.p`, `valid.p`, `test.p`): a dict with `features`
//! (uint8, N x H x W x 3) and `labels` (N, any integer dtype); `sizes`/`coords` are ignored.

use std::path::Path;

use super::Dataset;
use crate::error::{Error, Result};
use crate::weights::pickle::{unpickle, Limits};

/// Read a traffic-sign pickle. `num_classes`, when given, bounds the labels.
pub fn load(path: &Path, num_classes: Option<usize>) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::io_hint(
                path,
                e,
                "the seed's train.p comes from Udacity's traffic-signs-data.zip (CarND Traffic Sign Classifier); put it in data/, or run `runner data synth --out data/synth.p` for a synthetic stand-in",
            )
        } else {
            Error::io(path, e)
        }
    })?;
    let (value, _) = unpickle(&bytes, &Limits::default()).map_err(|m| Error::format(path, m))?;
    drop(bytes);
    let dict = value.as_str_dict().ok_or_else(|| {
        Error::data(
            path,
            format!(
                "holds a {}, expected a dict with 'features' and 'labels'",
                value.type_name()
            ),
        )
    })?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                let keys: Vec<&str> = dict.iter().map(|(k, _)| k.as_str()).collect();
                Error::data(
                    path,
                    format!("has no '{key}' entry (keys: {})", keys.join(", ")),
                )
            })
    };
    let feats = get("features")?;
    let feats = feats.as_array().ok_or_else(|| {
        Error::data(
            path,
            format!(
                "'features' is a {}, expected a uint8 array",
                feats.type_name()
            ),
        )
    })?;
    let labels = get("labels")?;
    let labels = labels.as_array().ok_or_else(|| {
        Error::data(
            path,
            format!(
                "'labels' is a {}, expected an integer array",
                labels.type_name()
            ),
        )
    })?;
    let shape = feats.shape.clone();
    if shape.len() != 4 || shape[3] != 3 {
        return Err(Error::data(
            path,
            format!("'features' has shape {shape:?}, expected N x H x W x 3 (RGB)"),
        ));
    }
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let labels = labels
        .to_i64_c()
        .map_err(|m| Error::data(path, format!("'labels': {m}")))?;
    if labels.len() != n {
        return Err(Error::data(
            path,
            format!("{} labels for {n} images", labels.len()),
        ));
    }
    let images = feats.into_u8_c().map_err(|m| {
        Error::data(
            path,
            format!("'features': {m} (runner reads 0..255 uint8 images)"),
        )
    })?;
    from_parts(path, images, n, h, w, labels, num_classes)
}

/// Check and assemble a dataset.
pub fn from_parts(
    path: &Path,
    images: Vec<u8>,
    n: usize,
    h: usize,
    w: usize,
    labels: Vec<i64>,
    num_classes: Option<usize>,
) -> Result<Dataset> {
    if n == 0 {
        return Err(Error::data(path, "the dataset is empty (0 images)"));
    }
    if h == 0 || w == 0 {
        return Err(Error::data(path, format!("images are {h}x{w} pixels")));
    }
    let max = *labels.iter().max().unwrap_or(&0);
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
        return Err(Error::data(
            path,
            format!("label {l} of image {i} is negative; labels must be 0..classes-1"),
        ));
    }
    let classes = match num_classes {
        Some(c) => {
            if let Some((i, l)) = labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as u64 >= c as u64)
            {
                return Err(Error::data(
                    path,
                    format!("label {l} of image {i} is out of range: dataset.num_classes = {c} allows 0..{}", c - 1),
                ));
            }
            c
        }
        None => {
            const MAX_CLASSES: i64 = 10_000;
            if max >= MAX_CLASSES {
                return Err(Error::data(
                    path,
                    format!("label {max} implies more than {MAX_CLASSES} classes; set dataset.num_classes if that is intended"),
                ));
            }
            max as usize + 1
        }
    };
    Ok(Dataset {
        files: None,
        images,
        n,
        height: h,
        width: w,
        labels,
        num_classes: classes,
        class_names: None,
        groups: None,
    })
}
