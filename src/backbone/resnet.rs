//! ResNet-18/34/50/101/152 as torchvision runs them in evaluation mode (`crate::arch::resnet`
//! describes them). Frozen layers run with each batch norm folded into the convolution before
//! it at load (`w * gamma / sqrt(var + eps)`, `beta - mean * gamma / sqrt(var + eps)`): one
//! convolution + bias (+ ReLU) pass on runner's convolution paths. Layers made trainable above
//! the freeze point keep convolution and batch norm apart: the batch norm uses the stored
//! running statistics (the usual frozen-statistics transfer setting) while its scale and shift
//! train with the convolution's weights.

use candle_core::{DType, Device, Tensor, Var};

use super::conv_bn::{ConvBn, How};
use super::layers::{
    add_relu, global_pool, linear, max_pool_after_relu, Act, Normalize, Pad, Param,
};
use super::{Backbone, Dropout};
pub use crate::arch::resnet::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// A convolution + batch norm of ResNet: stride, symmetric padding, activation.
fn conv_bn(
    ws: &WeightSet,
    names: (&str, &str),
    (stride, pad, act): (usize, usize, Act),
    device: &Device,
) -> Result<ConvBn> {
    let how = How {
        stride,
        pad: Pad::Sym(pad),
        groups: 1,
        eps: BN_EPS,
        act,
    };
    ConvBn::load(ws, names, how, device)
}

/// One residual block: its convolutions in order (2 or 3) and the projection of its input.
struct Unit {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Unit {
    fn forward(&self, x: &Tensor, b: &Backends) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y, b)?;
        }
        let identity = match &self.downsample {
            Some(d) => d.forward(x, b)?,
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
            true => Some(conv_bn(ws, ("conv1", "bn1"), (2, 3, Act::Relu), device)?),
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
                // the last convolution's ReLU comes after the residual sum
                let load = |k: usize, st: usize, pad: usize, act: Act| {
                    let (c, b) = names(k);
                    conv_bn(ws, (&c, &b), (st, pad, act), device)
                };
                let convs = match block {
                    Block::Basic => vec![load(1, stride, 1, Act::Relu)?, load(2, 1, 1, Act::None)?],
                    Block::Bottleneck => vec![
                        load(1, 1, 0, Act::Relu)?,
                        load(2, stride, 1, Act::Relu)?,
                        load(3, 1, 0, Act::None)?,
                    ],
                };
                let downsample = if stride != 1 || cin != w * e {
                    let (c, b) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    Some(conv_bn(ws, (&c, &b), (stride, 0, Act::None), device)?)
                } else {
                    None
                };
                units.push(Unit { convs, downsample });
                cin = w * e;
            }
            stages.push(units);
        }
        let fc = Param::load_if(ws, "fc", device, last > PRE_LOGITS)?;
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
                let y = stem.forward(x, b)?;
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
        self.normalize
            .run_cut_points(x, (from, until), LAYERS, |i, x| self.layer(i, x))
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
