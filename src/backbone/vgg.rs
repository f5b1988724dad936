//! VGG16 and VGG19 exactly as tensorflow-vgg's `vgg16.py` / `vgg19.py` (machrisaa), the seed's
//! flowers backbone: 224x224 input; the network takes RGB in [0, 1], multiplies by 255, swaps to
//! BGR and subtracts the BGR mean [103.939, 116.779, 123.68] — runner feeds raw 0..255 pixels,
//! so only the swap and the mean remain; then blocks of 3x3 SAME convolutions with ReLU (2, 2, 3,
//! 3, 3 for VGG16; 2, 2, 4, 4, 4 for VGG19), each block followed by 2x2/2 max pooling; fc6
//! 25088 -> 4096 with ReLU (the seed's `relu6`), fc7 with ReLU (`relu7`), fc8 logits.
//!
//! Batched (candle-transformers' VGG handles one image at a time and puts a ReLU on the logits).

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::layers::{conv2d_relu, flatten, linear, max_pool_valid, Param};
use super::{ParamKind, ParamSpec};
use crate::error::Result;
use crate::weights::WeightSet;

pub const INPUT_SIZE: usize = 224;
pub const BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

/// Convolutions per block.
fn blocks(depth: usize) -> [usize; 5] {
    if depth == 19 {
        [2, 2, 4, 4, 4]
    } else {
        [2, 2, 3, 3, 3]
    }
}

const WIDTHS: [usize; 5] = [64, 128, 256, 512, 512];

pub const LAYERS16: &[&str] = &[
    "input", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2",
    "conv3_3", "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3",
    "pool5", "fc6", "fc7", "fc8",
];

pub const LAYERS19: &[&str] = &[
    "input", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2",
    "conv3_3", "conv3_4", "pool3", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "pool4", "conv5_1",
    "conv5_2", "conv5_3", "conv5_4", "pool5", "fc6", "fc7", "fc8",
];

pub fn layers(depth: usize) -> &'static [&'static str] {
    if depth == 19 {
        LAYERS19
    } else {
        LAYERS16
    }
}

pub fn params(depth: usize) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    let names = layers(depth);
    let mut cin = 3;
    let mut k = 0;
    for (b, &n) in blocks(depth).iter().enumerate() {
        for _ in 0..n {
            k += 1;
            let layer = names
                .iter()
                .filter(|l| l.starts_with("conv"))
                .nth(k - 1)
                .copied()
                .unwrap_or("conv");
            out.push(ParamSpec {
                layer,
                kind: ParamKind::Conv {
                    kh: 3,
                    kw: 3,
                    cin,
                    cout: WIDTHS[b],
                    groups: 1,
                },
            });
            cin = WIDTHS[b];
        }
    }
    out.push(ParamSpec {
        layer: "fc6",
        kind: ParamKind::Fc {
            cin: 25088,
            cout: 4096,
            flatten_chw: Some((512, 7, 7)),
        },
    });
    out.push(ParamSpec {
        layer: "fc7",
        kind: ParamKind::Fc {
            cin: 4096,
            cout: 4096,
            flatten_chw: None,
        },
    });
    out.push(ParamSpec {
        layer: "fc8",
        kind: ParamKind::Fc {
            cin: 4096,
            cout: 1000,
            flatten_chw: None,
        },
    });
    out
}

pub fn output_shape(depth: usize, layer: usize) -> Vec<usize> {
    let names = layers(depth);
    let name = names.get(layer).copied().unwrap_or("fc8");
    match name {
        "input" => vec![3, 224, 224],
        "fc6" | "fc7" => vec![4096],
        "fc8" => vec![1000],
        n => {
            let block: usize = n[4..5].parse().unwrap_or(1);
            let side = 224 >> (block - if n.starts_with("pool") { 0 } else { 1 });
            vec![WIDTHS[block - 1], side, side]
        }
    }
}

pub struct Vgg {
    depth: usize,
    /// Parameters by layer index (None for input and pools).
    params: Vec<Option<Param>>,
    mean: Tensor,
    bgr: Tensor,
}

impl Vgg {
    pub fn new(depth: usize, weights: &WeightSet, device: &Device) -> Result<Self> {
        let names = layers(depth);
        let params = names
            .iter()
            .map(|&n| {
                if n.starts_with("conv") || n.starts_with("fc") {
                    Ok(Some(Param::load(weights, n, device)?))
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Vgg {
            depth,
            params,
            mean: Tensor::from_slice(&BGR_MEAN, (1, 3, 1, 1), device)?,
            bgr: Tensor::from_slice(&[2u32, 1, 0], 3, device)?,
        })
    }

    pub fn param(&self, layer: &str) -> Option<(Tensor, Tensor)> {
        let i = layers(self.depth).iter().position(|l| *l == layer)?;
        self.params
            .get(i)?
            .as_ref()
            .map(|p| (p.w.clone(), p.b.clone()))
    }

    /// Store the frozen layers `1..=until` in `dtype`.
    pub fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        for p in self.params.iter_mut().take(until + 1).flatten() {
            p.cast(dtype)?;
        }
        Ok(())
    }

    pub fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let names = layers(self.depth);
        let mut out = Vec::new();
        let range = self
            .params
            .iter_mut()
            .zip(names)
            .enumerate()
            .skip(after + 1)
            .take(until.saturating_sub(after));
        for (_, (slot, name)) in range {
            if let Some(p) = slot {
                out.extend(p.make_trainable(name)?);
            }
        }
        Ok(out)
    }

    /// The seed's input transform for raw 0..255 RGB: to BGR, minus the BGR mean.
    fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(candle_core::DType::F32)?;
        Ok(x.index_select(&self.bgr, 1)?.broadcast_sub(&self.mean)?)
    }

    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> Result<Tensor> {
        let name = layers(self.depth)[i];
        let y = match (&self.params[i], name) {
            (None, _) => max_pool_valid(x, 2, 2)?,
            (Some(p), "fc6") => linear(&flatten(x)?, &p.w, &p.b)?.relu()?,
            (Some(p), "fc7") => linear(x, &p.w, &p.b)?.relu()?,
            (Some(p), "fc8") => linear(x, &p.w, &p.b)?,
            (Some(p), _) => conv2d_relu(x, &p.w, &p.b, 1, true, 1)?,
        };
        let trains =
            matches!(name, "fc6" | "fc7") && self.params[i].as_ref().is_some_and(|p| p.trainable);
        match dropout {
            Some((rng, p)) if trains => crate::train::head::dropout(&y, p, rng),
            _ => Ok(y),
        }
    }

    pub fn forward_range(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        mut dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> Result<Tensor> {
        let mut x = if from == 0 {
            self.normalize(x)?
        } else {
            x.clone()
        };
        for i in from + 1..=until {
            let d = dropout.as_mut().map(|(r, p)| (&mut **r, *p));
            x = {
                let name = layers(self.depth).get(i).copied().unwrap_or("layer");
                crate::profile::time(name, x.device(), || self.layer(i, &x, d))?
            };
        }
        Ok(x)
    }
}

/// torchvision's VGG names -> runner's (`features.N` / `classifier.N`).
pub fn torchvision_name(depth: usize, runner: &str) -> Option<String> {
    let names = layers(depth);
    let (layer, suffix) = runner.rsplit_once('.')?;
    let idx = match layer {
        "fc6" => return Some(format!("classifier.0.{suffix}")),
        "fc7" => return Some(format!("classifier.3.{suffix}")),
        "fc8" => return Some(format!("classifier.6.{suffix}")),
        l => names.iter().position(|n| *n == l)?,
    };
    // features.N counts conv (+ReLU) and pool modules: each conv is 2 modules, each pool 1
    let mut n = 0;
    for &name in &names[1..idx] {
        n += if name.starts_with("pool") { 1 } else { 2 };
    }
    Some(format!("features.{n}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names() {
        let p = params(16);
        assert_eq!(p.len(), 16);
        assert_eq!(p[0].weight_shape(), vec![64, 3, 3, 3]);
        assert_eq!(p[12].layer, "conv5_3");
        assert_eq!(params(19).len(), 19);
        assert_eq!(output_shape(16, 18), vec![512, 7, 7]);
        assert_eq!(output_shape(16, 17), vec![512, 14, 14]);
        assert_eq!(output_shape(16, 1), vec![64, 224, 224]);
        assert_eq!(
            torchvision_name(16, "conv1_1.weight").as_deref(),
            Some("features.0.weight")
        );
        assert_eq!(
            torchvision_name(16, "conv2_1.bias").as_deref(),
            Some("features.5.bias")
        );
        assert_eq!(
            torchvision_name(16, "conv5_3.weight").as_deref(),
            Some("features.28.weight")
        );
        assert_eq!(
            torchvision_name(19, "conv5_4.weight").as_deref(),
            Some("features.34.weight")
        );
        assert_eq!(
            torchvision_name(16, "fc7.weight").as_deref(),
            Some("classifier.3.weight")
        );
    }
}
