//! The experiment file as written. Every key has a default; unknown keys are errors.

use serde::{Deserialize, Serialize};

use crate::data::preprocess::ResizeMethod;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpec {
    /// Experiment name; results go to `results/<name>/`. Default: the file's stem.
    pub name: String,
    /// Seed for everything random (splits, shuffling, initialisation, random weights).
    pub seed: u64,
    pub backbone: BackboneSection,
    pub dataset: DatasetSection,
    pub run: RunSection,
}

impl Default for RawSpec {
    fn default() -> Self {
        RawSpec {
            name: String::new(),
            seed: 42,
            backbone: BackboneSection::default(),
            dataset: DatasetSection::default(),
            run: RunSection::default(),
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
}

impl Default for BackboneSection {
    fn default() -> Self {
        BackboneSection {
            arch: "alexnet".into(),
            weights: "weights/bvlc-alexnet.npy".into(),
            freeze: "fc7".into(),
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
}

impl Default for DatasetSection {
    fn default() -> Self {
        DatasetSection {
            kind: "pickle".into(),
            path: "data/train.p".into(),
            resize: ResizeMethod::Tf1,
            num_classes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// `auto` | `cpu` | `cuda` | `cuda:N`
    pub device: String,
    /// Images per batch through the frozen backbone.
    pub extract_batch: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            device: "auto".into(),
            extract_batch: 64,
        }
    }
}
