//! The experiment file as written. Every key has a default; unknown keys are errors.

pub use crate::data::gtsrb::Crop;
pub use crate::data::images::OnBad;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpec {
    /// Experiment name; results go to `results/<name>/`. Default: the file's stem.
    pub name: String,
    /// Seed for everything random (splits, shuffling, initialisation, random weights).
    pub seed: u64,
    pub backbone: BackboneSection,
    pub dataset: DatasetSection,
    pub head: HeadSection,
    pub train: TrainSection,
    pub run: RunSection,
    /// Hyperparameter sweep: dotted spec keys -> lists (grid) or distributions (random).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSection>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSection {
    /// `grid` (cartesian product of the lists) | `random` (`samples` seeded draws)
    #[serde(default = "default_sweep_mode")]
    pub mode: SweepMode,
    /// `random` mode: how many points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// `"train.lr" = [1e-2, 1e-3]`, or in random mode `{ log_uniform = [a, b] }`,
    /// `{ uniform = [a, b] }`, `{ choice = [...] }`.
    #[serde(flatten)]
    pub params: toml::Table,
}

fn default_sweep_mode() -> SweepMode {
    SweepMode::Grid
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    Grid,
    Random,
}

impl Default for RawSpec {
    fn default() -> Self {
        RawSpec {
            name: String::new(),
            seed: 42,
            backbone: BackboneSection::default(),
            dataset: DatasetSection::default(),
            head: HeadSection::default(),
            train: TrainSection::default(),
            run: RunSection::default(),
            sweep: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    /// Hidden layer widths; `[]` is one linear layer (the seed's AlexNet head).
    pub hidden: Vec<usize>,
    /// `relu` | `tanh` | `sigmoid` | `gelu`, after each hidden layer.
    pub activation: Activation,
    /// Dropout probability before each linear layer of the head, while training.
    pub dropout: f64,
    /// Weights start from a normal truncated at 2 sd with this sd (the seed: 0.01), or `"auto"`
    /// (scaled to the features: `InitStd::resolve`); biases at 0.
    pub init_std: InitStd,
}

impl Default for HeadSection {
    fn default() -> Self {
        HeadSection {
            hidden: vec![],
            activation: Activation::Relu,
            dropout: 0.0,
            init_std: InitStd::Auto,
        }
    }
}

/// `head.init_std`: a standard deviation for every layer's initial weights, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitStd {
    Auto,
    Fixed(f64),
}

/// The seed's head init, and `auto`'s upper bound.
pub const SEED_INIT_STD: f64 = 0.01;

impl InitStd {
    /// The sd of the first layer's and of the other layers' weights, given the RMS L2 norm of
    /// the head's input rows where it is known (frozen features, read before training).
    /// `auto` starts the first layer's logits (or units) with an sd of at most about 1 whatever
    /// the width and scale of the features: `min(0.01, 1 / norm)`, the seed's 0.01 where rows
    /// are small (norm up to 100) and less for wide raw maps (ImageNet VGG16's pool5: 25,088
    /// values, norms near 900, where 0.01 saturates the softmax from the first step); 0.01 for
    /// later layers, and for all when the norm is unknown (a trainable tail).
    pub fn resolve(self, norm: Option<f64>) -> (f64, f64) {
        match (self, norm) {
            (InitStd::Fixed(s), _) => (s, s),
            (InitStd::Auto, Some(n)) if n > 0.0 && n.is_finite() => {
                (SEED_INIT_STD.min(1.0 / n), SEED_INIT_STD)
            }
            (InitStd::Auto, _) => (SEED_INIT_STD, SEED_INIT_STD),
        }
    }
}

impl Serialize for InitStd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InitStd::Auto => s.serialize_str("auto"),
            InitStd::Fixed(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for InitStd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = InitStd;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a standard deviation (e.g. 0.01) or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<InitStd, E> {
                Ok(InitStd::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<InitStd, E> {
                Ok(InitStd::Fixed(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<InitStd, E> {
                Ok(InitStd::Fixed(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<InitStd, E> {
                match v.trim() {
                    "auto" => Ok(InitStd::Auto),
                    t => t
                        .parse::<f64>()
                        .map(InitStd::Fixed)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// TensorFlow's Adam (epsilon outside the bias correction), no weight decay.
    Adam,
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    Adamw,
    /// SGD with (heavy-ball) momentum and L2 weight decay.
    Sgd,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// lr * gamma^(floor(epoch / step_size))
    Step,
    /// cosine decay from lr to 0 over the epochs
    Cosine,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ValAcc,
    ValLoss,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopping {
    /// Stop after this many epochs without improvement; 0 disables.
    pub patience: usize,
    pub metric: Metric,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            patience: 0,
            metric: Metric::ValAcc,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: Schedule,
    /// `step` schedule: epochs between decays.
    pub step_size: usize,
    /// `step` schedule: decay factor.
    pub gamma: f64,
    pub label_smoothing: f64,
    pub early_stopping: EarlyStopping,
    /// Learning-rate multiplier for pretrained layers trained above the freeze point.
    pub backbone_lr_mult: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            epochs: 10,
            batch_size: 128,
            optimizer: Optimizer::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: Schedule::Constant,
            step_size: 10,
            gamma: 0.1,
            label_smoothing: 0.0,
            early_stopping: EarlyStopping::default(),
            backbone_lr_mult: 1.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneSection {
    /// `alexnet`
    pub arch: String,
    /// `.npy` (pickled dict) | `.npz` | `.safetensors` | `"random"`
    pub weights: String,
    /// Layer whose output is the stop-gradient boundary.
    pub freeze: String,
    /// Dropout on the outputs of pretrained fc layers trained above the freeze point.
    pub dropout: f64,
    /// The layer whose output the head reads (at or above `freeze`); empty: fc7, or `freeze`
    /// when it is above fc7. Left out of the resolved file when empty, so run ids made before
    /// the key existed stay the same.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// Global pooling of a convolution or pooling `output` over its height and width.
    #[serde(skip_serializing_if = "Pool::is_none")]
    pub pool: Pool,
    /// Input side in pixels (0: the architecture's); another size only with a convolution or
    /// pooling `output`.
    #[serde(skip_serializing_if = "is_zero")]
    pub input_size: usize,
    /// The input transform's per-channel mean and std (three values each, for
    /// `(RGB / 255 - mean) / std`), for weights trained with another normalisation; empty:
    /// the architecture's own. Left out of the resolved file when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f64>,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Global pooling of a feature map (`backbone.pool`). `Class` takes a vision transformer's class
/// token; it is what `none` resolves to at a transformer block.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    #[default]
    None,
    Avg,
    Max,
    Class,
}

impl Pool {
    pub fn is_none(&self) -> bool {
        *self == Pool::None
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pool::None => "none",
            Pool::Avg => "avg",
            Pool::Max => "max",
            Pool::Class => "class",
        }
    }
}

impl Default for BackboneSection {
    fn default() -> Self {
        BackboneSection {
            arch: "alexnet".into(),
            weights: "weights/bvlc-alexnet.npy".into(),
            freeze: String::new(),
            dropout: 0.5,
            output: String::new(),
            pool: Pool::None,
            input_size: 0,
            mean: Vec::new(),
            std: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    /// `pickle` | `synthetic`
    pub kind: String,
    pub path: String,
    /// `tf1` | `half_pixel`
    pub resize: ResizeMethod,
    /// Number of classes; default: largest label + 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Fraction of `path` held out (stratified, seeded) for validation when `val_path` is empty.
    pub val_fraction: f64,
    /// A separate validation file (e.g. Udacity's valid.p); empty = split `path`.
    pub val_path: String,
    /// A separate test file (e.g. test.p); empty = no test set.
    pub test_path: String,
    /// At most this many samples per class from `path` (0 = all), chosen with the seed.
    pub limit: usize,
    /// `synthetic`: images per class.
    pub per_class: usize,
    /// Fraction of `path` held out for a test set when `test_path` is empty (0 = none).
    pub test_fraction: f64,
    /// `folder`/`gtsrb`: decoded images are stored at this square size (0 = the backbone's
    /// input size for `folder`, 32 for `gtsrb`).
    pub image_size: usize,
    /// `folder`/`gtsrb`: `error` stops at an unreadable image; `skip` leaves it out with a warning.
    pub on_bad_image: crate::data::images::OnBad,
    /// `gtsrb`: `roi` cuts each image to its annotated region; `none` keeps it whole.
    pub crop: crate::data::gtsrb::Crop,
    /// `auto` (track for gtsrb, else stratified) | `stratified` | `track`.
    pub split: SplitKind,
    /// `idx`: the labels file of `path` (empty: found beside it by MNIST's naming).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub labels_path: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    Auto,
    Stratified,
    Track,
}

impl Default for DatasetSection {
    fn default() -> Self {
        DatasetSection {
            kind: "pickle".into(),
            path: "data/train.p".into(),
            resize: ResizeMethod::Tf1,
            num_classes: None,
            val_fraction: 0.2,
            val_path: String::new(),
            test_path: String::new(),
            limit: 0,
            per_class: 40,
            test_fraction: 0.0,
            image_size: 0,
            on_bad_image: crate::data::images::OnBad::Error,
            crop: crate::data::gtsrb::Crop::Roi,
            split: SplitKind::Auto,
            labels_path: String::new(),
        }
    }
}

/// `run.extract_batch`: images per batch through the frozen backbone, or `"auto"` (chosen
/// for the device when the run starts: see `device::auto_extract_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Auto,
    Fixed(usize),
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Auto => s.serialize_str("auto"),
            BatchSize::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BatchSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of images (e.g. 64) or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BatchSize, E> {
                usize::try_from(v)
                    .map(BatchSize::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BatchSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BatchSize, E> {
                match v.trim() {
                    "auto" => Ok(BatchSize::Auto),
                    t => t
                        .parse::<usize>()
                        .map(BatchSize::Fixed)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Number format of the frozen backbone's arithmetic.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    pub fn dtype(&self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }

    /// The label of the arithmetic actually used (TF32 only matters for f32).
    pub fn label(&self, tf32: bool) -> String {
        match (self, tf32) {
            (Precision::F32, true) => "tf32".to_string(),
            (p, _) => p.name().to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// `auto` | `cpu` | `cuda` | `cuda:N`
    pub device: String,
    /// Images per batch through the frozen backbone, or `auto` (for the device).
    pub extract_batch: BatchSize,
    /// Number format of the frozen part: `f32` | `bf16` | `f16` (the head always trains in f32).
    pub dtype: Precision,
    /// On CUDA, let f32 matrix products and convolutions use TF32 tensor cores.
    pub tf32: bool,
    /// Reuse frozen features across runs.
    pub cache: bool,
    pub cache_dir: String,
    /// Run folders go to `<results_dir>/<name>/<run_id>/`.
    pub results_dir: String,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            device: "auto".into(),
            extract_batch: BatchSize::Auto,
            dtype: Precision::F32,
            tf32: false,
            cache: true,
            cache_dir: "results/.cache".into(),
            results_dir: "results".into(),
        }
    }
}

/// How source coordinates are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    /// TF 1.x `tf.image.resize_images` (the seed): `src = dst * in / out`, no half-pixel offset.
    Tf1,
    /// The modern convention (TF2, PyTorch align_corners=False): `src = (dst + 0.5) * in / out - 0.5`.
    HalfPixel,
}

impl ResizeMethod {
    pub fn name(&self) -> &'static str {
        match self {
            ResizeMethod::Tf1 => "tf1",
            ResizeMethod::HalfPixel => "half_pixel",
        }
    }
}
