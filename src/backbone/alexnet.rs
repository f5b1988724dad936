//! AlexNet exactly as the seed's `alexnet.py` (udacity/CarND-Alexnet-Feature-Extraction):
//! 227x227 raw RGB 0..255 input (no mean subtraction), conv1 11x11/4 SAME, ReLU, LRN, max-pool
//! 3/2 VALID, conv2 5x5 groups 2, ReLU, LRN, pool, conv3, conv4 (groups 2), conv5 (groups 2),
//! pool, fc6, fc7 (each with ReLU), fc8 logits.
//!
//! A conv/fc layer's output includes its ReLU; `pool1`/`pool2` include LRN + pooling.

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::layers::{conv2d_relu, flatten, linear, lrn, max_pool_valid, Param};
pub use crate::arch::alexnet::*;
use crate::error::Result;
use crate::weights::WeightSet;

pub struct AlexNet {
    conv1: Param,
    conv2: Param,
    conv3: Param,
    conv4: Param,
    conv5: Param,
    fc6: Param,
    fc7: Param,
    fc8: Param,
}

impl AlexNet {
    pub fn new(weights: &WeightSet, device: &Device) -> Result<Self> {
        let p = |name: &str| Param::load(weights, name, device);
        Ok(AlexNet {
            conv1: p("conv1")?,
            conv2: p("conv2")?,
            conv3: p("conv3")?,
            conv4: p("conv4")?,
            conv5: p("conv5")?,
            fc6: p("fc6")?,
            fc7: p("fc7")?,
            fc8: p("fc8")?,
        })
    }

    /// Store the frozen layers `1..=until` in `dtype`.
    pub fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        for i in 1..=until {
            if let Some((_, p)) = self.param_mut(i) {
                p.cast(dtype)?;
            }
        }
        Ok(())
    }

    fn param_mut(&mut self, layer: usize) -> Option<(&'static str, &mut Param)> {
        Some(match LAYERS.get(layer).copied()? {
            "conv1" => ("conv1", &mut self.conv1),
            "conv2" => ("conv2", &mut self.conv2),
            "conv3" => ("conv3", &mut self.conv3),
            "conv4" => ("conv4", &mut self.conv4),
            "conv5" => ("conv5", &mut self.conv5),
            "fc6" => ("fc6", &mut self.fc6),
            "fc7" => ("fc7", &mut self.fc7),
            "fc8" => ("fc8", &mut self.fc8),
            _ => return None,
        })
    }

    /// The current (weight, bias) of a parameterised layer.
    pub fn param(&self, layer: &str) -> Option<(Tensor, Tensor)> {
        let p = match layer {
            "conv1" => &self.conv1,
            "conv2" => &self.conv2,
            "conv3" => &self.conv3,
            "conv4" => &self.conv4,
            "conv5" => &self.conv5,
            "fc6" => &self.fc6,
            "fc7" => &self.fc7,
            "fc8" => &self.fc8,
            _ => return None,
        };
        Some((p.w.clone(), p.b.clone()))
    }

    /// Make the parameters of layers `after+1 ..= until` trainable; returns them by name.
    pub fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for i in after + 1..=until {
            if let Some((name, p)) = self.param_mut(i) {
                out.extend(p.make_trainable(name)?);
            }
        }
        Ok(out)
    }

    /// Apply layer `i` (index into `LAYERS`, >= 1) to the output of layer `i - 1`. With
    /// `dropout`, a trainable fc6/fc7 drops units of its output (as AlexNet was trained).
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> Result<Tensor> {
        let lrn_pool = |x: &Tensor| -> Result<Tensor> {
            let n = lrn(x, LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS)?;
            max_pool_valid(&n, 3, 2)
        };
        let y = match i {
            1 => conv2d_relu(x, &self.conv1.w, &self.conv1.b, 4, true, 1)?,
            2 => lrn_pool(x)?,
            3 => conv2d_relu(x, &self.conv2.w, &self.conv2.b, 1, true, 2)?,
            4 => lrn_pool(x)?,
            5 => conv2d_relu(x, &self.conv3.w, &self.conv3.b, 1, true, 1)?,
            6 => conv2d_relu(x, &self.conv4.w, &self.conv4.b, 1, true, 2)?,
            7 => conv2d_relu(x, &self.conv5.w, &self.conv5.b, 1, true, 2)?,
            8 => max_pool_valid(x, 3, 2)?,
            9 => linear(&flatten(x)?, &self.fc6.w, &self.fc6.b)?.relu()?,
            10 => linear(x, &self.fc7.w, &self.fc7.b)?.relu()?,
            _ => linear(x, &self.fc8.w, &self.fc8.b)?,
        };
        let trains = (i == 9 && self.fc6.trainable) || (i == 10 && self.fc7.trainable);
        match dropout {
            Some((rng, p)) if trains => super::layers::dropout(&y, p, rng),
            _ => Ok(y),
        }
    }

    /// Layers `from+1 ..= until`; `dropout` (generator, p) only while training.
    pub fn forward_range(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        mut dropout: Option<(&mut ChaCha8Rng, f64)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for i in from + 1..=until {
            let d = dropout.as_mut().map(|(r, p)| (&mut **r, *p));
            x = {
                let name = LAYERS.get(i).copied().unwrap_or("layer");
                crate::profile::time(name, x.device(), || self.layer(i, &x, d))?
            };
        }
        Ok(x)
    }
}
