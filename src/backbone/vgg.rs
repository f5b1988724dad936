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
pub use crate::arch::vgg::*;
use crate::error::Result;
use crate::weights::WeightSet;

pub struct Vgg {
    depth: usize,
    /// Parameters by layer index (None for input and pools).
    params: Vec<Option<Param>>,
    mean: Tensor,
    bgr: Tensor,
}

impl Vgg {
    pub fn new(depth: usize, weights: &WeightSet, device: &Device) -> Result<Self> {
        Self::new_until(depth, weights, device, layers(depth).len() - 1)
    }

    /// The weights of layers `1..=last` (those above are neither loaded nor run).
    pub fn new_until(
        depth: usize,
        weights: &WeightSet,
        device: &Device,
        last: usize,
    ) -> Result<Self> {
        let params = Param::load_until(weights, layers(depth), device, last)?;
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
            (None, n) if n.starts_with("pool") => max_pool_valid(x, 2, 2)?,
            (None, n) => {
                return Err(crate::Error::Other(format!(
                    "VGG layer {n} was not loaded (it is above backbone.output)"
                )))
            }
            (Some(p), "fc6") => linear(&flatten(x)?, &p.w, &p.b)?.relu()?,
            (Some(p), "fc7") => linear(x, &p.w, &p.b)?.relu()?,
            (Some(p), "fc8") => linear(x, &p.w, &p.b)?,
            (Some(p), _) => conv2d_relu(x, &p.w, &p.b, 1, true, 1)?,
        };
        let trains =
            matches!(name, "fc6" | "fc7") && self.params[i].as_ref().is_some_and(|p| p.trainable);
        match dropout {
            Some((rng, p)) if trains => super::layers::dropout(&y, p, rng),
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
