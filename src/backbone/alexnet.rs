//! AlexNet exactly as the seed's `alexnet.py` (udacity/CarND-Alexnet-Feature-Extraction):
//! 227x227 raw RGB 0..255 input (no mean subtraction), conv1 11x11/4 SAME, ReLU, LRN, max-pool
//! 3/2 VALID, conv2 5x5 groups 2, ReLU, LRN, pool, conv3, conv4 (groups 2), conv5 (groups 2),
//! pool, fc6, fc7 (each with ReLU), fc8 logits.
//!
//! A conv/fc layer's output includes its ReLU; `pool1`/`pool2` include LRN + pooling.

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::layers::{conv2d_relu, flatten, linear, lrn, max_pool_valid, Normalize, Param};
use super::{Backbone, Dropout};
pub use crate::arch::alexnet::*;
use crate::arch::Preprocess;
use crate::backend::{Backends, GpuPath};
use crate::error::Result;
use crate::weights::WeightSet;

/// AlexNet's parameters by layer index (`None` for input and pools, and for layers above the
/// last one loaded).
pub struct AlexNet {
    params: Vec<Option<Param>>,
    /// The input transform (none for Caffe's weights: raw 0..255 RGB).
    normalize: Normalize,
    backends: Backends,
}

impl AlexNet {
    /// The weights of layers `1..=last` (those above are neither loaded nor run); `backends`
    /// says which implementations run.
    pub fn new_until(
        weights: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        Ok(AlexNet {
            params: Param::load_until(weights, &params(), LAYERS.len(), device, last)?,
            normalize: Normalize::new(pre, device)?,
            backends,
        })
    }

    /// The loaded parameters of layer `i`.
    fn p(&self, i: usize) -> Result<&Param> {
        self.params.get(i).and_then(|p| p.as_ref()).ok_or_else(|| {
            crate::Error::Other(format!(
                "AlexNet layer {} was not loaded (it is above backbone.output)",
                LAYERS.get(i).unwrap_or(&"?")
            ))
        })
    }

    /// Apply layer `i` (index into `LAYERS`, >= 1) to the output of layer `i - 1`. With
    /// `dropout`, a trainable fc6/fc7 drops units of its output (as AlexNet was trained).
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> Result<Tensor> {
        let b = &self.backends;
        let lrn_pool = |x: &Tensor| -> Result<Tensor> {
            if !x.device().is_cpu() && !x.track_op() && b.fused(GpuPath::LrnPool) {
                // opt-in: one kernel on a GPU (frozen layers only: it has no backward pass)
                let op = crate::gpu::fused::LrnMaxPool {
                    radius: LRN_RADIUS,
                    alpha: LRN_ALPHA as f32,
                    beta: LRN_BETA as f32,
                    bias: LRN_BIAS as f32,
                    k: 3,
                    stride: 2,
                };
                return op.apply(x);
            }
            let n = lrn(x, LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS)?;
            max_pool_valid(&n, 3, 2)
        };
        let conv = |stride, groups| -> Result<Tensor> {
            let p = self.p(i)?;
            conv2d_relu(x, &p.w, &p.b, stride, true, groups, b)
        };
        let y = match i {
            1 => conv(4, 1)?,
            2 | 4 => lrn_pool(x)?,
            3 => conv(1, 2)?,
            5 => conv(1, 1)?,
            6 | 7 => conv(1, 2)?,
            8 => max_pool_valid(x, 3, 2)?,
            9 => linear(&flatten(x)?, &self.p(i)?.w, &self.p(i)?.b)?.relu()?,
            10 => linear(x, &self.p(i)?.w, &self.p(i)?.b)?.relu()?,
            _ => linear(x, &self.p(i)?.w, &self.p(i)?.b)?,
        };
        let trains = matches!(i, 9 | 10) && self.p(i).is_ok_and(|p| p.trainable);
        match dropout {
            Some((rng, p)) if trains => super::layers::dropout(&y, p, rng),
            _ => Ok(y),
        }
    }
}

impl Backbone for AlexNet {
    /// Layers `from+1 ..= until`; `dropout` (generator, p) only while training.
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
                let name = LAYERS.get(i).copied().unwrap_or("layer");
                crate::profile::time(name, x.device(), || self.layer(i, &x, d))?
            };
        }
        Ok(x)
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        let slot = LAYERS.iter().position(|l| *l == layer);
        match slot.and_then(|i| self.params.get(i)?.as_ref()) {
            Some(p) => p.named(layer),
            None => Vec::new(),
        }
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        Param::make_range_trainable(&mut self.params, LAYERS, after, until)
    }

    fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        for p in self.params.iter_mut().take(until + 1).flatten() {
            p.cast(dtype)?;
        }
        Ok(())
    }
}
