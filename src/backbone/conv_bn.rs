//! A convolution without bias, the batch norm after it and an activation: the unit of
//! torchvision's ResNets and EfficientNets (`Conv2dNormActivation`) and of lukemelas'
//! EfficientNet-Lite. Frozen, the batch norm is folded into the convolution at load
//! (`w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`): one convolution +
//! bias + activation pass on runner's convolution paths. Made trainable above the freeze point,
//! convolution and batch norm stay apart: the batch norm uses the stored running statistics
//! (the usual frozen-statistics transfer setting) while its scale and shift train with the
//! convolution's weights.

use candle_core::{DType, Device, Tensor, Var};

use super::layers::{conv2d_act, depthwise_taps, Act, Pad};
use crate::backend::Backends;
use crate::error::Result;
use crate::weights::WeightSet;

/// How a `ConvBn` computes: stride, padding, groups, batch-norm epsilon, activation.
#[derive(Debug, Clone, Copy)]
pub struct How {
    pub stride: usize,
    pub pad: Pad,
    pub groups: usize,
    pub eps: f64,
    pub act: Act,
}

/// A convolution (no bias), its batch norm and activation.
pub struct ConvBn {
    conv: String,
    bn: String,
    how: How,
    /// The stored tensors: convolution weight, bn weight (scale), bias (shift), running mean,
    /// running variance, f32.
    w: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    /// Batch norm folded into the convolution, for frozen use (in the frozen number format).
    folded: (Tensor, Tensor),
    /// Set once trainable: the optimizer's variables for w, gamma and beta.
    train: Option<(Var, Var, Var)>,
}

impl ConvBn {
    pub fn load(
        ws: &WeightSet,
        (conv, bn): (&str, &str),
        how: How,
        device: &Device,
    ) -> Result<ConvBn> {
        let (c, b) = (ws.pp(conv), ws.pp(bn));
        let w = c.get("weight", device)?;
        let gamma = b.get("weight", device)?;
        let beta = b.get("bias", device)?;
        let mean = b.get("running_mean", device)?;
        let var = b.get("running_var", device)?;
        let scale = gamma.div(&var.affine(1.0, how.eps)?.sqrt()?)?;
        let cout = scale.dim(0)?;
        let wf = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bf = beta.sub(&mean.mul(&scale)?)?;
        Ok(ConvBn {
            conv: conv.to_string(),
            bn: bn.to_string(),
            how,
            w,
            gamma,
            beta,
            mean,
            var,
            folded: (wf, bf),
            train: None,
        })
    }

    /// act(batch_norm(conv(x))).
    pub fn forward(&self, x: &Tensor, b: &Backends) -> Result<Tensor> {
        let h = self.how;
        let Some((w, gamma, beta)) = &self.train else {
            let (w, bias) = &self.folded;
            return conv2d_act(x, (w, bias), (h.stride, h.pad, h.groups), h.act, b);
        };
        // trainable: candle ops (they have a backward pass), then batch norm with the running
        // statistics, as eval mode computes it
        let x = x.to_dtype(DType::F32)?;
        let w = w.as_tensor();
        let (_, cin, ih, iw) = x.dims4()?;
        let (cout, _, kh, kw) = w.dims4()?;
        let pads = h.pad.sides((ih, iw), (kh, kw), h.stride);
        let y = if h.groups > 1 && h.groups == cin && h.groups == cout {
            depthwise_taps(&x, w, h.stride, pads)?
        } else {
            let [pt, pb, pl, pr] = pads;
            let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
            xp.conv2d(w, 0, h.stride, 1, h.groups)?
        };
        let shape = (1, cout, 1, 1);
        let denom = self.var.affine(1.0, h.eps)?.sqrt()?.reshape(shape)?;
        let y = y
            .broadcast_sub(&self.mean.reshape(shape)?)?
            .broadcast_div(&denom)?
            .broadcast_mul(&gamma.as_tensor().reshape(shape)?)?
            .broadcast_add(&beta.as_tensor().reshape(shape)?)?;
        h.act.tensor(&y)
    }

    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let w = Var::from_tensor(&self.w)?;
        let gamma = Var::from_tensor(&self.gamma)?;
        let beta = Var::from_tensor(&self.beta)?;
        let out = vec![
            (format!("{}.weight", self.conv), w.clone()),
            (format!("{}.weight", self.bn), gamma.clone()),
            (format!("{}.bias", self.bn), beta.clone()),
        ];
        self.train = Some((w, gamma, beta));
        Ok(out)
    }

    pub fn cast(&mut self, dtype: DType) -> Result<()> {
        if self.train.is_none() && self.folded.0.dtype() != dtype {
            self.folded = (
                self.folded.0.to_dtype(dtype)?,
                self.folded.1.to_dtype(dtype)?,
            );
        }
        Ok(())
    }

    /// The current tensors of the convolution (`layer` = its name) or the batch norm.
    pub fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        let (w, gamma, beta) = match &self.train {
            Some((w, g, b)) => (
                w.as_tensor().clone(),
                g.as_tensor().clone(),
                b.as_tensor().clone(),
            ),
            None => (self.w.clone(), self.gamma.clone(), self.beta.clone()),
        };
        if layer == self.conv {
            return vec![(format!("{layer}.weight"), w)];
        }
        if layer != self.bn {
            return Vec::new();
        }
        vec![
            (format!("{layer}.weight"), gamma),
            (format!("{layer}.bias"), beta),
            (format!("{layer}.running_mean"), self.mean.clone()),
            (format!("{layer}.running_var"), self.var.clone()),
        ]
    }
}
