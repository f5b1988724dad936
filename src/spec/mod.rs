//! The experiment file.
//!
//! `RawSpec` is the file as written (serde, unknown keys rejected, every key defaulted);
//! `Spec` is the validated form everything downstream takes. Layering, lowest first:
//! built-in defaults < the TOML file < environment `RUNNER_<SECTION>__<KEY>` < `--set key=value`.

pub mod budget;
mod diagnose;
mod raw;
pub mod sweep;

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

pub use raw::*;

use crate::arch::Arch;
pub use crate::device::{parse_device, DeviceSpec};
use crate::error::{Error, Result};

/// Where the backbone's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    File(PathBuf),
    /// Seeded stand-in weights of the right shapes (`weights = "random"`).
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Pickle,
    Synthetic,
    Folder,
    Gtsrb,
    Idx,
}

impl DatasetKind {
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Pickle => "pickle",
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Folder => "folder",
            DatasetKind::Gtsrb => "gtsrb",
            DatasetKind::Idx => "idx",
        }
    }
}

/// A validated experiment.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Where it came from (for messages).
    pub file: PathBuf,
    pub name: String,
    pub seed: u64,
    pub arch: Arch,
    pub weights: WeightsSource,
    /// Index into `arch.layers()` of the stop-gradient boundary.
    pub freeze: usize,
    /// Index of the layer whose output the head reads (>= `freeze`); layers above are neither
    /// loaded nor run.
    pub output: usize,
    /// Global pooling of `output`'s feature map.
    pub pool: Pool,
    /// Input side in pixels.
    pub input_size: usize,
    pub dataset_kind: DatasetKind,
    pub dataset_path: PathBuf,
    /// `idx`: the labels file of `dataset_path` (None: found beside it).
    pub labels_path: Option<PathBuf>,
    pub resize: ResizeMethod,
    pub num_classes: Option<usize>,
    pub val_fraction: f64,
    pub val_path: Option<PathBuf>,
    pub test_path: Option<PathBuf>,
    /// Samples per class kept from `dataset_path` (0 = all).
    pub limit: usize,
    pub per_class: usize,
    pub test_fraction: f64,
    /// Keep GTSRB tracks whole when splitting.
    pub track_split: bool,
    /// `folder`/`gtsrb`: stored image side.
    pub image_size: usize,
    pub head: HeadSection,
    pub train: TrainSection,
    pub device: DeviceSpec,
    /// Use `extract_batch_for(device)`.
    pub extract_batch: raw::BatchSize,
    /// Number format of the frozen part.
    pub precision: Precision,
    /// TF32 for f32 matrix work on CUDA.
    pub tf32: bool,
    pub cache_dir: Option<PathBuf>,
    pub results_dir: PathBuf,
    /// `dataset.on_bad_image`: what to do with an image that does not decode.
    pub on_bad_image: OnBad,
    /// `dataset.crop`: GTSRB's region of interest or the whole image.
    pub crop: Crop,
    /// `backbone.dropout` of the trainable fc layers.
    pub backbone_dropout: f64,
    /// The input transform of raw 0..255 RGB pixels: the architecture's, or `backbone.mean` /
    /// `backbone.std`'s.
    pub preprocess: crate::arch::Preprocess,
    /// Which implementations run (CPU convolution path, opt-in GPU paths): chosen once, from
    /// `RUNNER_CONV` / `RUNNER_GPU_FUSED` (`Backends::from_env`), and carried to every stage.
    pub backends: crate::backend::Backends,
    /// The fully resolved file, every default written out (`resolved_toml`).
    raw: RawSpec,
    /// For a sweep point: a readable summary of its overrides (part of its run id).
    pub point_label: String,
}

impl Spec {
    /// The fully resolved file as TOML, every default written out (`config.toml`).
    pub fn resolved_toml(&self) -> Result<String> {
        toml::to_string(&self.raw).map_err(|e| Error::Other(format!("config.toml: {e}")))
    }

    /// What identifies a run's numbers: the resolved file without the `[run]` keys that only
    /// say where files go and how features are cached (the number format stays).
    pub fn identity_toml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.run = RunSection {
            dtype: raw.run.dtype,
            tf32: raw.run.tf32,
            ..Default::default()
        };
        toml::to_string(&raw).unwrap_or_default()
    }

    pub fn freeze_name(&self) -> &'static str {
        self.arch.layers()[self.freeze]
    }

    /// The last layer of the trainable tail: `backbone.output`.
    pub fn tail_end(&self) -> usize {
        self.output
    }

    /// Output shape of layer `l` for one image at this spec's input size.
    pub fn layer_shape(&self, l: usize) -> Vec<usize> {
        self.arch.output_shape_at(l, self.input_size)
    }

    /// Whether `backbone.pool` applies to the frozen features themselves (the head reads the
    /// freeze layer): then the cache holds the pooled values.
    pub fn pool_before_cache(&self) -> bool {
        !self.pool.is_none() && self.freeze == self.output
    }

    /// Shape of one sample's cached features: the freeze layer's output, pooled when
    /// `pool_before_cache`.
    pub fn feature_shape(&self) -> Vec<usize> {
        let s = self.layer_shape(self.freeze);
        if self.pool_before_cache() {
            vec![self.arch.pooled_len(&s)]
        } else {
            s
        }
    }

    /// How many values the head reads per sample (the output layer's channels when pooled).
    pub fn head_input_dim(&self) -> usize {
        let s = self.layer_shape(self.output);
        if self.pool.is_none() {
            s.iter().product()
        } else {
            self.arch.pooled_len(&s)
        }
    }

    /// Images per extraction batch on `device`: the file's number, or for `auto` what
    /// `device::auto_extract_batch` picks for this backbone's activations and number format.
    pub fn extract_batch_for(&self, device: &candle_core::Device) -> usize {
        match self.extract_batch {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => {
                let largest = (0..=self.freeze.max(self.output))
                    .map(|l| self.layer_shape(l).iter().product::<usize>())
                    .max()
                    .unwrap_or(1);
                let bytes = self.precision.dtype().size_in_bytes();
                crate::device::auto_extract_batch(device, largest * bytes)
            }
        }
    }
}

/// Load, layer and validate an experiment file.
pub fn load(path: &Path, sets: &[String]) -> Result<Spec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    load_str(path, &text, sets, std::env::vars())
}

/// As `load`, with the file's text and the environment given (for tests).
pub fn load_str(
    path: &Path,
    text: &str,
    sets: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Spec> {
    load_point(path, text, sets, env, None)
}

/// As `load_str`, with a sweep point's overrides applied last; the point's spec has no sweep.
pub fn load_point(
    path: &Path,
    text: &str,
    sets: &[String],
    env: impl IntoIterator<Item = (String, String)>,
    point: Option<&[(String, toml::Value)]>,
) -> Result<Spec> {
    // The file alone first: toml's errors carry spans, so they can name line and column.
    if let Err(e) = toml::from_str::<RawSpec>(text) {
        return Err(Error::Spec(diagnose::toml_error(path, text, &e)));
    }
    let mut fig = Figment::new().merge(Toml::string(text));
    // Only RUNNER_<SECTION>__<KEY>: CI systems set unrelated RUNNER_* variables.
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("RUNNER_") && k.contains("__"))
        .collect();
    for (k, v) in &env {
        let key = k["RUNNER_".len()..].to_ascii_lowercase().replace("__", ".");
        fig = fig.merge(Serialized::default(&key, parse_value(v)).key(&key));
    }
    for s in sets {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            Error::Spec(format!(
                "--set {s:?}: expected section.key=value, e.g. --set train.lr=0.01"
            ))
        })?;
        let key = key.trim();
        fig = fig.merge(Serialized::default(key, parse_value(value.trim())).key(key));
    }
    for (key, value) in point.unwrap_or(&[]) {
        fig = fig.merge(Serialized::default(key, value.clone()).key(key));
    }
    let mut raw: RawSpec = fig.extract().map_err(|e| {
        Error::Spec(diagnose::figment_error(
            path,
            &e,
            !env.is_empty() || !sets.is_empty(),
        ))
    })?;
    // `pool` in a sweep over outputs applies to the map outputs; for a vector output (the
    // point's, or the base spec's of such a sweep) it is dropped, with no error and no trace in
    // the run id
    let swept = |s: &SweepSection| {
        s.params.contains_key("backbone.output")
            || s.params
                .get("backbone")
                .and_then(|b| b.as_table())
                .is_some_and(|b| b.contains_key("output"))
    };
    let output_swept = raw.sweep.as_ref().is_some_and(swept)
        || point
            .unwrap_or(&[])
            .iter()
            .any(|(k, _)| k == "backbone.output");
    if point.is_some() {
        raw.sweep = None;
    }
    if let (true, Some(a)) = (output_swept, Arch::parse(&raw.backbone.arch)) {
        let output = match raw.backbone.output.is_empty() {
            true => Some(a.feature_end()),
            false => a.layer_index(&raw.backbone.output),
        };
        let vector = output.is_some_and(|o| !a.is_map(o));
        if vector {
            raw.backbone.pool = Pool::None;
        }
    }
    if raw.name.is_empty() {
        raw.name = path
            .file_stem()
            .map(|s| name_from_stem(&s.to_string_lossy()))
            .unwrap_or_else(|| "experiment".into());
    }
    validate(path, text, raw)
}

/// A `--set`/environment value: TOML syntax when it parses (numbers, booleans, arrays,
/// quoted strings), else the plain string.
fn parse_value(v: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

/// An error for `section.key` of the file, with its line and column.
type KeyError<'a> = dyn Fn(&str, &str, String) -> Error + 'a;

fn validate(path: &Path, text: &str, mut raw: RawSpec) -> Result<Spec> {
    let err = |section: &str, key: &str, msg: String| {
        Error::Spec(diagnose::key_error(path, text, section, key, &msg))
    };
    // `freeze` unset: `output` when that is set (a linear probe at that layer), else the
    // architecture's last feature layer (fc7, pre_logits); written out either way
    if let (true, Some(a)) = (
        raw.backbone.freeze.is_empty(),
        Arch::parse(&raw.backbone.arch),
    ) {
        // (an `output` that names no layer keeps the default, so its error names `output`)
        raw.backbone.freeze = match a.layer_index(&raw.backbone.output) {
            Some(_) => raw.backbone.output.clone(),
            None => a.layers()[a.feature_end()].to_string(),
        };
    }
    let (arch, freeze, weights) = check_backbone(&raw.backbone, &err)?;
    let (output, input_size) = check_output(&raw.backbone, arch, freeze, &err)?;
    let preprocess = check_normalisation(&raw.backbone, arch, &err)?;
    let (dataset_kind, track_split, image_size) = check_dataset(&raw.dataset, arch, &err)?;
    let device = parse_device(&raw.run.device).map_err(|m| err("run", "device", m))?;
    match raw.run.extract_batch {
        raw::BatchSize::Fixed(0) => {
            return Err(err("run", "extract_batch", "must be at least 1".into()))
        }
        raw::BatchSize::Fixed(b) => {
            at_most(&err, "run", "extract_batch", b, budget::MAX_EXTRACT_BATCH)?
        }
        raw::BatchSize::Auto => {}
    }
    check_name(&raw.name).map_err(|m| err("", "name", m))?;
    check_head(&raw.head, &err)?;
    check_train(&raw.train, &err)?;
    let opt_path = |p: &str| {
        if p.is_empty() {
            None
        } else {
            Some(PathBuf::from(p))
        }
    };
    Ok(Spec {
        file: path.to_path_buf(),
        name: raw.name.clone(),
        seed: raw.seed,
        arch,
        weights,
        freeze,
        output,
        pool: resolve_pool(arch, output, raw.backbone.pool),
        input_size,
        dataset_kind,
        dataset_path: PathBuf::from(&raw.dataset.path),
        labels_path: opt_path(&raw.dataset.labels_path),
        resize: raw.dataset.resize,
        num_classes: raw.dataset.num_classes,
        val_fraction: raw.dataset.val_fraction,
        val_path: opt_path(&raw.dataset.val_path),
        test_path: opt_path(&raw.dataset.test_path),
        limit: raw.dataset.limit,
        per_class: raw.dataset.per_class,
        test_fraction: raw.dataset.test_fraction,
        track_split,
        image_size,
        head: raw.head.clone(),
        train: raw.train.clone(),
        device,
        extract_batch: raw.run.extract_batch,
        precision: raw.run.dtype,
        tf32: raw.run.tf32,
        cache_dir: if raw.run.cache {
            Some(PathBuf::from(&raw.run.cache_dir))
        } else {
            None
        },
        results_dir: PathBuf::from(&raw.run.results_dir),
        on_bad_image: raw.dataset.on_bad_image,
        crop: raw.dataset.crop,
        backbone_dropout: raw.backbone.dropout,
        backends: crate::backend::Backends::from_env(),
        preprocess,
        raw,
        point_label: String::new(),
    })
}

/// `section.key` must be at most `limit` (a documented limit: sizes reach allocations).
fn at_most(err: &KeyError, section: &str, key: &str, v: usize, limit: usize) -> Result<()> {
    if v <= limit {
        return Ok(());
    }
    Err(err(
        section,
        key,
        format!("is {v}, above runner's limit of {limit} (sizes are checked before memory is taken; see the README's limits)"),
    ))
}

/// The most characters of an experiment's `name`.
pub const MAX_NAME_LEN: usize = 100;

/// `name` is one plain folder name under `run.results_dir`: letters, digits, `-`, `_`, `.`, not
/// `.` or `..`, at most 100 characters.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain && !name.is_empty() && name != "." && name != ".." && name.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    Err(format!(
        "is {name:?}; a name is one plain folder name under run.results_dir: letters, digits, '-', '_' and '.', not \".\" or \"..\", 1 to {MAX_NAME_LEN} characters"
    ))
}

/// A file stem as a valid `name`: other characters become `_`.
fn name_from_stem(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    match s.as_str() {
        "" | "." | ".." => "experiment".into(),
        _ => s,
    }
}

/// `section.key` must lie in [0, 1) (or [0, 1] with `hi_inclusive`).
fn in_unit(err: &KeyError, section: &str, key: &str, v: f64, hi_inclusive: bool) -> Result<()> {
    let ok = v >= 0.0 && (v < 1.0 || (hi_inclusive && v <= 1.0)) && v.is_finite();
    if ok {
        Ok(())
    } else {
        Err(err(
            section,
            key,
            format!(
                "is {v}; expected a number in [0, 1{}",
                if hi_inclusive { "]" } else { ")" }
            ),
        ))
    }
}

/// `[backbone]`: the architecture, the freeze point (an index into its layers), the weights.
fn check_backbone(b: &BackboneSection, err: &KeyError) -> Result<(Arch, usize, WeightsSource)> {
    let arch = Arch::parse(&b.arch).ok_or_else(|| {
        let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        err(
            "backbone",
            "arch",
            format!(
                "unknown architecture {:?}; expected one of {}{}",
                b.arch,
                names.join(", "),
                diagnose::did_you_mean(&b.arch, &names)
            ),
        )
    })?;
    let freeze = arch.layer_index(&b.freeze).ok_or_else(|| {
        let layers = arch.layers();
        err(
            "backbone",
            "freeze",
            format!(
                "{} has no layer {:?}; layers are {}{}",
                arch.name(),
                b.freeze,
                layers.join(", "),
                diagnose::did_you_mean(&b.freeze, layers)
            ),
        )
    })?;
    let weights = match b.weights.as_str() {
        "random" => WeightsSource::Random,
        "" => {
            return Err(err(
                "backbone",
                "weights",
                "is empty; give a weights file or \"random\"".into(),
            ))
        }
        p => WeightsSource::File(PathBuf::from(p)),
    };
    in_unit(err, "backbone", "dropout", b.dropout, false)?;
    Ok((arch, freeze, weights))
}

/// `backbone.mean` / `backbone.std`: three values each (std above 0), replacing the
/// architecture's normalisation by `(RGB / 255 - mean) / std`; both unset: the architecture's.
fn check_normalisation(
    b: &BackboneSection,
    arch: Arch,
    err: &KeyError,
) -> Result<crate::arch::Preprocess> {
    if b.mean.is_empty() && b.std.is_empty() {
        return Ok(arch.preprocess());
    }
    let three = |key: &str, v: &[f64], positive: bool| -> Result<[f32; 3]> {
        let ok = v.len() == 3 && v.iter().all(|x| x.is_finite() && (!positive || *x > 0.0));
        if !ok {
            return Err(err(
                "backbone",
                key,
                format!(
                    "is {v:?}; expected three {}numbers, one per RGB channel, for (RGB / 255 - mean) / std (both mean and std, e.g. mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5])",
                    if positive { "positive " } else { "" }
                ),
            ));
        }
        Ok([v[0] as f32, v[1] as f32, v[2] as f32])
    };
    Ok(crate::arch::Preprocess {
        bgr: false,
        scale: 1.0 / 255.0,
        mean: three("mean", &b.mean, false)?,
        std: three("std", &b.std, true)?,
    })
}

/// `backbone.pool` for `output`: only on a feature map or a transformer block; `max` not on a
/// block, `class` only there.
fn check_pool(b: &BackboneSection, arch: Arch, output: usize, err: &KeyError) -> Result<()> {
    let layers = arch.layers();
    if !b.pool.is_none() && !arch.is_map(output) {
        return Err(err(
            "backbone",
            "pool",
            format!(
                "is {:?} but backbone.output = {} is a vector: pooling needs a convolution or pooling layer's feature map (e.g. output = \"pool5\")",
                b.pool.name(),
                layers[output]
            ),
        ));
    }
    let token_map = arch.tokens() && arch.is_map(output);
    if b.pool == Pool::Max && token_map {
        return Err(err(
            "backbone",
            "pool",
            format!(
                "is \"max\" but backbone.output = {} is a sequence of tokens: use \"none\" (the class token, the default) or \"avg\" (the mean of the patch tokens)",
                layers[output]
            ),
        ));
    }
    if b.pool == Pool::Class && !token_map {
        return Err(err(
            "backbone",
            "pool",
            format!(
                "is \"class\" but backbone.output = {} is not a vision transformer's token sequence: \"class\" takes a transformer block's class token (use \"avg\" or \"max\" on a feature map)",
                layers[output]
            ),
        ));
    }
    Ok(())
}

/// `backbone.pool` as runs use it: at a vision transformer's block, `none` is the class token.
fn resolve_pool(arch: Arch, output: usize, pool: Pool) -> Pool {
    match pool {
        Pool::None if arch.tokens() && arch.is_map(output) => Pool::Class,
        p => p,
    }
}

/// The largest `backbone.input_size`.
pub const MAX_INPUT_SIZE: usize = 1024;

/// `backbone.output` (an index at or above the freeze point), `backbone.pool` (on a feature map
/// only) and the input size (another than the architecture's only when no fc layer runs).
fn check_output(
    b: &BackboneSection,
    arch: Arch,
    freeze: usize,
    err: &KeyError,
) -> Result<(usize, usize)> {
    let layers = arch.layers();
    let output = if b.output.is_empty() {
        arch.feature_end().max(freeze)
    } else {
        arch.layer_index(&b.output).ok_or_else(|| {
            err(
                "backbone",
                "output",
                format!(
                    "{} has no layer {:?}; layers are {}{}",
                    arch.name(),
                    b.output,
                    layers.join(", "),
                    diagnose::did_you_mean(&b.output, layers)
                ),
            )
        })?
    };
    if output < freeze {
        return Err(err(
            "backbone",
            "output",
            format!(
                "is {} but backbone.freeze is {}: the head reads a layer at or above the freeze point",
                layers[output], layers[freeze]
            ),
        ));
    }
    let conv_output = output < arch.first_fc();
    check_pool(b, arch, output, err)?;
    let input_size = match b.input_size {
        0 => arch.input_size(),
        s if s == arch.input_size() => s,
        s if arch.first_fc() <= 1 => {
            return Err(err(
                "backbone",
                "input_size",
                format!(
                    "is {s} but {} takes {n}x{n} images only (its position embeddings are learned for that size, and runner does not interpolate them); leave input_size unset",
                    arch.name(),
                    n = arch.input_size()
                ),
            ))
        }
        s if !conv_output => {
            return Err(err(
                "backbone",
                "input_size",
                format!(
                    "is {s} but backbone.output = {} runs fc layers, which need the {} input of {}; another size needs a convolution or pooling output (e.g. output = \"pool5\")",
                    layers[output],
                    arch.input_size(),
                    arch.name()
                ),
            ))
        }
        s => {
            let min = arch.min_input_for(output).unwrap_or(arch.input_size());
            if s < min || s > MAX_INPUT_SIZE {
                return Err(err(
                    "backbone",
                    "input_size",
                    format!(
                        "is {s}; with output = {} it must lie in {min}..={MAX_INPUT_SIZE} (smaller leaves no pixel at {})",
                        layers[output], layers[output]
                    ),
                ));
            }
            s
        }
    };
    Ok((output, input_size))
}

/// `[dataset]`: its kind, whether splits keep tracks whole, and the stored image side.
fn check_dataset(
    d: &DatasetSection,
    arch: Arch,
    err: &KeyError,
) -> Result<(DatasetKind, bool, usize)> {
    let kind = match d.kind.as_str() {
        "pickle" => DatasetKind::Pickle,
        "synthetic" => DatasetKind::Synthetic,
        "folder" => DatasetKind::Folder,
        "gtsrb" => DatasetKind::Gtsrb,
        "idx" => DatasetKind::Idx,
        other => {
            let kinds = ["pickle", "synthetic", "folder", "gtsrb", "idx"];
            return Err(err(
                "dataset",
                "kind",
                format!(
                    "unknown dataset kind {other:?}; expected one of {}{}",
                    kinds.join(", "),
                    diagnose::did_you_mean(other, &kinds)
                ),
            ));
        }
    };
    check_dataset_paths(d, kind, err)?;
    if d.num_classes == Some(0) {
        return Err(err("dataset", "num_classes", "must be at least 1".into()));
    }
    at_most(
        err,
        "dataset",
        "num_classes",
        d.num_classes.unwrap_or(0),
        budget::MAX_CLASSES,
    )?;
    at_most(
        err,
        "dataset",
        "per_class",
        d.per_class,
        budget::MAX_PER_CLASS,
    )?;
    at_most(
        err,
        "dataset",
        "image_size",
        d.image_size,
        budget::MAX_IMAGE_SIZE,
    )?;
    in_unit(err, "dataset", "val_fraction", d.val_fraction, false)?;
    in_unit(err, "dataset", "test_fraction", d.test_fraction, false)?;
    if d.val_fraction + d.test_fraction >= 1.0 {
        return Err(err(
            "dataset",
            "test_fraction",
            "val_fraction + test_fraction must stay below 1".into(),
        ));
    }
    let track_split = match d.split {
        SplitKind::Auto => kind == DatasetKind::Gtsrb,
        SplitKind::Stratified => false,
        SplitKind::Track => {
            if kind != DatasetKind::Gtsrb {
                return Err(err(
                    "dataset",
                    "split",
                    "\"track\" needs tracks: only dataset.kind = \"gtsrb\" has them".into(),
                ));
            }
            true
        }
    };
    let image_size = match (d.image_size, kind) {
        (0, DatasetKind::Gtsrb) => 32,
        (0, _) => arch.input_size(),
        (s, _) => s,
    };
    if d.val_fraction == 0.0 && d.val_path.is_empty() {
        return Err(err(
            "dataset",
            "val_fraction",
            "is 0 and dataset.val_path is empty: training needs a validation set".into(),
        ));
    }
    if kind == DatasetKind::Synthetic && d.per_class == 0 {
        return Err(err("dataset", "per_class", "must be at least 1".into()));
    }
    Ok((kind, track_split, image_size))
}

/// `dataset.path` where a file is needed, and `labels_path` only for IDX files.
fn check_dataset_paths(d: &DatasetSection, kind: DatasetKind, err: &KeyError) -> Result<()> {
    let what = match kind {
        DatasetKind::Pickle => "the train.p file",
        DatasetKind::Idx => "the images file (e.g. train-images-idx3-ubyte.gz)",
        _ => "",
    };
    if !what.is_empty() && d.path.is_empty() {
        return Err(err("dataset", "path", format!("is empty; name {what}")));
    }
    if !d.labels_path.is_empty() && kind != DatasetKind::Idx {
        return Err(err(
            "dataset",
            "labels_path",
            format!(
                "is for dataset.kind = \"idx\"; {} datasets carry their labels",
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// `[head]`: dropout in [0, 1), hidden layers of at least one unit, a positive init_std (or
/// "auto").
fn check_head(h: &HeadSection, err: &KeyError) -> Result<()> {
    in_unit(err, "head", "dropout", h.dropout, false)?;
    for &w in &h.hidden {
        at_most(err, "head", "hidden", w, budget::MAX_HIDDEN)?;
    }
    if let Some(i) = h.hidden.iter().position(|&w| w == 0) {
        return Err(err(
            "head",
            "hidden",
            format!("entry {i} is 0; hidden layers need at least 1 unit"),
        ));
    }
    if let InitStd::Fixed(v) = h.init_std {
        if !(v > 0.0 && v.is_finite()) {
            return Err(err(
                "head",
                "init_std",
                format!("is {v}; expected a positive number, or \"auto\""),
            ));
        }
    }
    Ok(())
}

/// `[train]`: counts of at least 1, positive rates, fractions in [0, 1).
fn check_train(t: &TrainSection, err: &KeyError) -> Result<()> {
    if t.epochs == 0 {
        return Err(err("train", "epochs", "must be at least 1".into()));
    }
    if t.batch_size == 0 {
        return Err(err("train", "batch_size", "must be at least 1".into()));
    }
    at_most(
        err,
        "train",
        "batch_size",
        t.batch_size,
        budget::MAX_BATCH_SIZE,
    )?;
    for (key, v) in [("lr", t.lr), ("eps", t.eps)] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(err(
                "train",
                key,
                format!("is {v}; expected a positive number"),
            ));
        }
    }
    for (key, v) in [
        ("weight_decay", t.weight_decay),
        ("backbone_lr_mult", t.backbone_lr_mult),
        ("gamma", t.gamma),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(err("train", key, format!("is {v}; expected a number >= 0")));
        }
    }
    for (key, v) in [
        ("momentum", t.momentum),
        ("beta1", t.beta1),
        ("beta2", t.beta2),
        ("label_smoothing", t.label_smoothing),
    ] {
        in_unit(err, "train", key, v, false)?;
    }
    if t.step_size == 0 {
        return Err(err("train", "step_size", "must be at least 1".into()));
    }
    Ok(())
}

/// Files the spec names that are missing, each with where to get it.
pub fn check_files(spec: &Spec) -> Vec<String> {
    let mut out = Vec::new();
    if let WeightsSource::File(p) = &spec.weights {
        if let Some(what) = crate::fsio::not_regular(p) {
            out.push(format!(
                "backbone.weights: {} is {what}, not a regular file (expected {})",
                p.display(),
                spec.arch.weights_hint()
            ));
        } else if !p.is_file() {
            out.push(format!(
                "backbone.weights: {} does not exist (expected {})",
                p.display(),
                spec.arch.weights_hint()
            ));
        }
    }
    if spec.dataset_kind != DatasetKind::Synthetic {
        let named = [
            ("dataset.path", Some(&spec.dataset_path)),
            ("dataset.val_path", spec.val_path.as_ref()),
            ("dataset.test_path", spec.test_path.as_ref()),
            ("dataset.labels_path", spec.labels_path.as_ref()),
        ];
        for (key, p) in named {
            if let Some(p) = p.filter(|p| !p.exists()) {
                let origin = match spec.dataset_kind {
                    DatasetKind::Pickle => "the seed's train.p comes from Udacity's traffic-signs-data.zip; put it in data/",
                    DatasetKind::Folder => "expected a folder of class folders, e.g. the seed's flower_photos (TensorFlow's flower_photos.tgz)",
                    DatasetKind::Idx => "expected an IDX images file such as Fashion-MNIST's train-images-idx3-ubyte.gz (scripts/get-real-data.sh fetches it)",
                    _ => "expected GTSRB's official GTSRB_Final_Training_Images / GTSRB_Final_Test_Images layout",
                };
                out.push(format!("{key}: {} does not exist ({origin})", p.display()));
            }
        }
    }
    out
}
