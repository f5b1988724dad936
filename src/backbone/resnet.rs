//! ResNet-18/34/50/101/152 as torchvision runs them in evaluation mode (`crate::arch::resnet`
//! describes them). Frozen layers run with each batch norm folded into the convolution before
//! it at load (`w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`): one
//! convolution + bias (+ ReLU) pass on runner's convolution paths. Layers made trainable above
//! the freeze point keep convolution and batch norm apart: the batch norm uses the stored
//! running statistics (the usual frozen-statistics transfer setting) while its scale and shift
//! train with the convolution's weights.

use candle_core::{DType, Device, Tensor, Var};

use super::layers::{
    add_relu, conv2d_padded, global_pool, linear, max_pool_after_relu, Normalize, Pad, Param,
};
use super::{Backbone, Dropout};
pub use crate::arch::resnet::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// A convolution (no bias) and the batch norm after it.
struct ConvBn {
    conv: String,
    bn: String,
    stride: usize,
    pad: usize,
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
    fn load(
        ws: &WeightSet,
        (conv, bn): (&str, &str),
        (stride, pad): (usize, usize),
        device: &Device,
    ) -> Result<ConvBn> {
        let (c, b) = (ws.pp(conv), ws.pp(bn));
        let w = c.get("weight", device)?;
        let gamma = b.get("weight", device)?;
        let beta = b.get("bias", device)?;
        let mean = b.get("running_mean", device)?;
        let var = b.get("running_var", device)?;
        // scale = gamma / sqrt(var + eps); w' = w * scale (per output channel);
        // b' = beta - mean * scale
        let scale = gamma.div(&var.affine(1.0, BN_EPS)?.sqrt()?)?;
        let cout = scale.dim(0)?;
        let wf = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bf = beta.sub(&mean.mul(&scale)?)?;
        Ok(ConvBn {
            conv: conv.to_string(),
            bn: bn.to_string(),
            stride,
            pad,
            w,
            gamma,
            beta,
            mean,
            var,
            folded: (wf, bf),
            train: None,
        })
    }

    /// conv + batch norm (+ ReLU).
    fn forward(&self, x: &Tensor, relu: bool, b: &Backends) -> Result<Tensor> {
        let Some((w, gamma, beta)) = &self.train else {
            let (w, bias) = &self.folded;
            return conv2d_padded(x, (w, bias), self.stride, Pad::Sym(self.pad), relu, b);
        };
        // trainable: candle's convolution (it has a backward pass), then batch norm with the
        // running statistics, as torchvision's eval mode computes it
        let x = x.to_dtype(DType::F32)?;
        let y = x.conv2d(w.as_tensor(), self.pad, self.stride, 1, 1)?;
        let c = self.mean.dim(0)?;
        let shape = (1, c, 1, 1);
        let denom = self.var.affine(1.0, BN_EPS)?.sqrt()?.reshape(shape)?;
        let y = y
            .broadcast_sub(&self.mean.reshape(shape)?)?
            .broadcast_div(&denom)?
            .broadcast_mul(&gamma.as_tensor().reshape(shape)?)?
            .broadcast_add(&beta.as_tensor().reshape(shape)?)?;
        Ok(if relu { y.relu()? } else { y })
    }

    fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
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

    fn cast(&mut self, dtype: DType) -> Result<()> {
        if self.train.is_none() && self.folded.0.dtype() != dtype {
            self.folded = (
                self.folded.0.to_dtype(dtype)?,
                self.folded.1.to_dtype(dtype)?,
            );
        }
        Ok(())
    }

    /// The current tensors of the convolution (`layer` = its name) or the batch norm.
    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
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

/// One residual block: its convolutions in order (2 or 3) and the projection of its input.
struct Unit {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Unit {
    fn forward(&self, x: &Tensor, b: &Backends) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut y = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            y = c.forward(&y, i != last, b)?;
        }
        let identity = match &self.downsample {
            Some(d) => d.forward(x, false, b)?,
            None => x.clone(),
        };
        add_relu(&y, &identity)
    }

    fn all(&self) -> impl Iterator<Item = &ConvBn> {
        self.convs.iter().chain(self.downsample.as_ref())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.convs.iter_mut().chain(self.downsample.as_mut())
    }
}

/// ResNet with the weights of cut points `1..=last`.
pub struct ResNet {
    normalize: Normalize,
    backends: Backends,
    stem: Option<ConvBn>,
    /// Blocks per stage (empty for stages above the last loaded cut point).
    stages: Vec<Vec<Unit>>,
    fc: Option<Param>,
}

impl ResNet {
    /// The weights of cut points `1..=last` of ResNet-`depth`.
    pub fn new_until(
        depth: usize,
        ws: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        let (block, counts) = config(depth);
        let e = block.expansion();
        let stem = match last >= 1 {
            true => Some(ConvBn::load(ws, ("conv1", "bn1"), (2, 3), device)?),
            false => None,
        };
        let mut stages = Vec::new();
        let mut cin = 64;
        for (s, (&n, &w)) in counts.iter().zip(&WIDTHS).enumerate() {
            let mut units = Vec::new();
            for i in 0..n {
                if last < s + 2 {
                    break;
                }
                let p = format!("layer{}.{i}", s + 1);
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let names = |k: usize| (format!("{p}.conv{k}"), format!("{p}.bn{k}"));
                let load = |k: usize, st: usize, pad: usize| {
                    let (c, b) = names(k);
                    ConvBn::load(ws, (&c, &b), (st, pad), device)
                };
                let convs = match block {
                    Block::Basic => vec![load(1, stride, 1)?, load(2, 1, 1)?],
                    Block::Bottleneck => vec![load(1, 1, 0)?, load(2, stride, 1)?, load(3, 1, 0)?],
                };
                let downsample = if stride != 1 || cin != w * e {
                    let (c, b) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    Some(ConvBn::load(ws, (&c, &b), (stride, 0), device)?)
                } else {
                    None
                };
                units.push(Unit { convs, downsample });
                cin = w * e;
            }
            stages.push(units);
        }
        let fc = match last > PRE_LOGITS {
            true => Some(Param::load(ws, "fc", device)?),
            false => None,
        };
        Ok(ResNet {
            normalize: Normalize::new(pre, device)?,
            backends,
            stem,
            stages,
            fc,
        })
    }

    fn missing(what: &str) -> Error {
        Error::Other(format!(
            "ResNet {what} was not loaded (it is above backbone.output)"
        ))
    }

    /// Cut point `i` applied to the output of cut point `i - 1`.
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let b = &self.backends;
        match i {
            1 => {
                let stem = self.stem.as_ref().ok_or_else(|| Self::missing("stem"))?;
                let y = stem.forward(x, true, b)?;
                // 3x3/2 max pooling with 1 pixel of padding, after the ReLU
                max_pool_after_relu(&y, 3, 2, 1)
            }
            2..=5 => {
                let units = &self.stages[i - 2];
                if units.is_empty() {
                    return Err(Self::missing(LAYERS[i]));
                }
                let mut y = x.clone();
                for u in units {
                    y = u.forward(&y, b)?;
                }
                Ok(y)
            }
            PRE_LOGITS => global_pool(x, crate::spec::Pool::Avg),
            _ => {
                let fc = self.fc.as_ref().ok_or_else(|| Self::missing("fc"))?;
                linear(x, &fc.w, &fc.b)
            }
        }
    }

    /// Every convolution + batch norm, with the cut point it belongs to.
    fn conv_bns(&mut self) -> impl Iterator<Item = (usize, &mut ConvBn)> {
        let stem = self.stem.iter_mut().map(|c| (1, c));
        let stages = self.stages.iter_mut().enumerate().flat_map(|(s, units)| {
            units
                .iter_mut()
                .flat_map(move |u| u.all_mut().map(move |c| (s + 2, c)))
        });
        stem.chain(stages)
    }
}

impl Backbone for ResNet {
    fn forward_range(&self, x: &Tensor, from: usize, until: usize, _: Dropout) -> Result<Tensor> {
        let mut x = if from == 0 {
            self.normalize.apply(x)?
        } else {
            x.clone()
        };
        for i in from + 1..=until {
            let name = LAYERS.get(i).copied().unwrap_or("layer");
            x = crate::profile::time(name, x.device(), || self.layer(i, &x))?;
        }
        Ok(x)
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        if layer == "fc" {
            return self.fc.as_ref().map(|p| p.named("fc")).unwrap_or_default();
        }
        let stem = self.stem.iter();
        let rest = self.stages.iter().flatten().flat_map(|u| u.all());
        stem.chain(rest)
            .map(|c| c.tensors(layer))
            .find(|t| !t.is_empty())
            .unwrap_or_default()
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for (at, c) in self.conv_bns() {
            if at > after && at <= until {
                out.extend(c.make_trainable()?);
            }
        }
        if let (Some(fc), true) = (self.fc.as_mut(), after <= PRE_LOGITS && until > PRE_LOGITS) {
            out.extend(fc.make_trainable("fc")?);
        }
        Ok(out)
    }

    fn cast_frozen(&mut self, until: usize, dtype: DType) -> Result<()> {
        for (at, c) in self.conv_bns() {
            if at <= until {
                c.cast(dtype)?;
            }
        }
        if let (Some(fc), true) = (self.fc.as_mut(), until > PRE_LOGITS) {
            fc.cast(dtype)?;
        }
        Ok(())
    }
}
