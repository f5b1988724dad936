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

use super::layers::{conv2d_relu, flatten, linear, max_pool_valid, Normalize, Param};
use super::{Backbone, Dropout};
pub use crate::arch::vgg::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::Result;
use crate::weights::WeightSet;

pub struct Vgg {
    depth: usize,
    /// Parameters by layer index (None for input and pools).
    params: Vec<Option<Param>>,
    /// The input transform (tensorflow-vgg's BGR mean subtraction).
    normalize: Normalize,
    backends: Backends,
}

impl Vgg {
    /// The weights of layers `1..=last` (those above are neither loaded nor run); `backends`
    /// says which implementations run.
    pub fn new_until(
        depth: usize,
        weights: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        let names = layers(depth);
        let params = Param::load_until(weights, &params(depth), names.len(), device, last)?;
        Ok(Vgg {
            depth,
            params,
            normalize: Normalize::new(pre, device)?,
            backends,
        })
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
            (Some(p), _) => conv2d_relu(x, &p.w, &p.b, 1, true, 1, &self.backends)?,
        };
        let trains =
            matches!(name, "fc6" | "fc7") && self.params[i].as_ref().is_some_and(|p| p.trainable);
        match dropout {
            Some((rng, p)) if trains => super::layers::dropout(&y, p, rng),
            _ => Ok(y),
        }
    }
}

impl Backbone for Vgg {
    fn forward_range(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        mut dropout: Dropout,
    ) -> Result<Tensor> {
        let mut x = if from == 0 {
            self.normalize.apply(x)?
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

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        let slot = layers(self.depth).iter().position(|l| *l == layer);
        match slot.and_then(|i| self.params.get(i)?.as_ref()) {
            Some(p) => p.named(layer),
            None => Vec::new(),
        }
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        Param::make_range_trainable(&mut self.params, layers(self.depth), after, until)
    }

    fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        for p in self.params.iter_mut().take(until + 1).flatten() {
            p.cast(dtype)?;
        }
        Ok(())
    }
}
