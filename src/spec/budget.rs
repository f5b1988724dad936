//! Sizes a spec asks for, checked before any memory is taken: each against a documented limit
//! (in `validate`, as spec errors with line and column), and what they would take together
//! against the memory this process can get (`check_memory`, at the start of a run and in
//! `runner check`). Sizes that come from data files (images in a folder, samples in a pickle)
//! are checked where the file is read, before its buffers are made.

use super::{DatasetKind, Spec};
use crate::error::{Error, Result};

/// The most classes a spec may name (`dataset.num_classes`): ImageNet-21k has 21,841.
pub const MAX_CLASSES: usize = 1_000_000;
/// The most units of one hidden layer (`head.hidden`).
pub const MAX_HIDDEN: usize = 1 << 20;
/// The most synthetic images per class (`dataset.per_class`).
pub const MAX_PER_CLASS: usize = 1_000_000;
/// The largest stored image side (`dataset.image_size`): the backbones take 224 or 227.
pub const MAX_IMAGE_SIZE: usize = 4096;
/// The most images per extraction batch (`run.extract_batch`).
pub const MAX_EXTRACT_BATCH: usize = 4096;
/// The most samples per training batch (`train.batch_size`).
pub const MAX_BATCH_SIZE: usize = 1 << 20;

/// Batches of decoded images that `folder` and `gtsrb` datasets decode ahead of the backbone.
pub const PREFETCH_BATCHES: usize = 3;

/// The synthetic set's classes and image side (`data::synthetic::CLASSES`, `SIZE`; a test
/// there keeps them equal).
pub const SYNTHETIC_CLASSES: usize = 43;
pub const SYNTHETIC_SIDE: usize = 32;

/// One thing a spec makes runner hold in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// The key (or keys) that decide it, with their values.
    pub what: String,
    pub bytes: u64,
}

fn mul(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |a, &x| a.saturating_mul(x))
}

/// What a spec makes runner hold at once, as far as the spec alone tells: the synthetic set and
/// its features, the head with its gradients, optimizer state and best-epoch copies, one
/// extraction batch's activations. Sizes that depend on data files are not included.
pub fn memory_needs(spec: &Spec) -> Vec<Need> {
    let mut out = Vec::new();
    let per_feature: u64 = spec
        .arch
        .output_shape(spec.freeze)
        .iter()
        .product::<usize>() as u64;
    if spec.dataset_kind == DatasetKind::Synthetic {
        let n = mul(&[spec.per_class as u64, SYNTHETIC_CLASSES as u64]);
        let side = SYNTHETIC_SIDE as u64;
        out.push(Need {
            what: format!(
                "dataset.per_class = {} ({n} synthetic images, their {} features each of {per_feature} values)",
                spec.per_class,
                spec.freeze_name()
            ),
            // the images, and without the cache the features on the host and on the device
            // (with it, features are read from the cache entry a batch at a time)
            bytes: mul(&[n, side * side * 3]).saturating_add(if spec.cache_dir.is_some() {
                0
            } else {
                mul(&[n, per_feature, 4, 2])
            }),
        });
    }
    if matches!(spec.dataset_kind, DatasetKind::Folder | DatasetKind::Gtsrb) {
        // images are decoded a batch at a time: the batches decoded ahead, the one being
        // decoded and the one in the backbone, and that one's f32 copies for preprocessing
        let b = match spec.extract_batch {
            super::BatchSize::Fixed(b) => b as u64,
            _ => 64,
        };
        let side = spec.image_size as u64;
        let batch = mul(&[b, side, side, 3]);
        out.push(Need {
            what: format!(
                "dataset.image_size = {} with run.extract_batch = {b} ({b} decoded images of {side}x{side}x3 bytes a batch, {PREFETCH_BATCHES} batches decoded ahead, f32 copies for preprocessing)",
                spec.image_size
            ),
            bytes: mul(&[batch, PREFETCH_BATCHES as u64 + 2]).saturating_add(mul(&[batch, 4, 2])),
        });
    }
    let classes = spec.num_classes.unwrap_or(1) as u64;
    let mut input = spec.head_input_dim() as u64;
    let mut params = 0u64;
    for &w in spec
        .head
        .hidden
        .iter()
        .chain(std::iter::once(&(classes as usize)))
    {
        let w = w as u64;
        params = params.saturating_add(mul(&[input, w]).saturating_add(w));
        input = w;
    }
    out.push(Need {
        what: format!(
            "head.hidden = {:?} with {} classes ({params} parameters, with gradients, optimizer state and best-epoch copies)",
            spec.head.hidden,
            spec.num_classes.map(|c| c.to_string()).unwrap_or_else(|| "the data's".into())
        ),
        bytes: mul(&[params, 4, 6]),
    });
    let largest = (0..=spec.freeze)
        .map(|l| spec.layer_shape(l).iter().product::<usize>())
        .max()
        .unwrap_or(1) as u64;
    if let super::BatchSize::Fixed(b) = spec.extract_batch {
        out.push(Need {
            what: format!(
                "run.extract_batch = {b} (activations of {largest} values per image, 3 alive at once)"
            ),
            bytes: mul(&[b as u64, largest, 4, 3]),
        });
    }
    out
}

/// An error naming the key when what the spec asks for would not fit in the memory this
/// process can still take (exit status 2, before anything is loaded).
pub fn check_memory(spec: &Spec) -> Result<()> {
    let needs = memory_needs(spec);
    let total = needs.iter().fold(0u64, |a, n| a.saturating_add(n.bytes));
    let Some(big) = needs.iter().max_by_key(|n| n.bytes) else {
        return Ok(());
    };
    crate::memory::ensure_fits(
        || {
            let rest = if needs.len() > 1 {
                ", with the rest of the spec,"
            } else {
                ""
            };
            format!("{}: {}{rest}", spec.file.display(), big.what)
        },
        total,
    )
    .map_err(Error::Spec)
}
