//! EfficientNet-B0 and EfficientNet-Lite0 as their references run them in evaluation mode
//! (`crate::arch::efficientnet` describes both). Every convolution + batch norm + activation is
//! one `ConvBn` (folded when frozen); depthwise convolutions take runner's depthwise kernel on the
//! CPU; squeeze-and-excitation (B0) is a mean over each channel, two small matrix products and
//! a per-channel scale, in f32.

use candle_core::{DType, Device, Tensor, Var};

use super::conv_bn::{ConvBn, How};
use super::layers::{dropout, global_pool, linear, Act, Normalize, Pad, Param};
use super::{Backbone, Dropout};
pub use crate::arch::efficientnet::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// Squeeze and excitation: `x * sigmoid(expand(silu(reduce(mean(x)))))`, the two 1x1
/// convolutions (with bias) applied to the pooled vector as fc layers.
struct Se {
    names: (String, String),
    reduce: Param,
    expand: Param,
}

impl Se {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let pooled = x.to_dtype(DType::F32)?.flatten_from(2)?.mean(2)?;
        let fc = |p: &Param, v: &Tensor| -> Result<Tensor> {
            let (o, i) = (p.w.dim(0)?, p.w.dim(1)?);
            linear(v, &p.w.reshape((o, i))?, &p.b)
        };
        let s = Act::Silu.tensor(&fc(&self.reduce, &pooled)?)?;
        let s = candle_nn::ops::sigmoid(&fc(&self.expand, &s)?)?;
        let s = s.to_dtype(x.dtype())?.reshape((n, c, 1, 1))?;
        Ok(x.broadcast_mul(&s)?)
    }
}

/// One MBConv block.
struct MbConv {
    at: usize,
    residual: bool,
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se: Option<Se>,
    project: ConvBn,
}

impl MbConv {
    fn forward(&self, x: &Tensor, b: &Backends) -> Result<Tensor> {
        // (RUNNER_PROFILE=1 times each step, inside its cut point's time)
        let t =
            |name: &str, f: &dyn Fn() -> Result<Tensor>| crate::profile::time(name, x.device(), f);
        let mut y = match &self.expand {
            Some(e) => t("mbconv expand", &|| e.forward(x, b))?,
            None => x.clone(),
        };
        y = t("mbconv depthwise", &|| self.depthwise.forward(&y, b))?;
        if let Some(se) = &self.se {
            y = t("mbconv excitation", &|| se.forward(&y))?;
        }
        y = t("mbconv project", &|| self.project.forward(&y, b))?;
        if self.residual {
            y = t("mbconv residual", &|| Ok(y.add(&x.to_dtype(y.dtype())?)?))?;
        }
        Ok(y)
    }

    fn conv_bns(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.expand
            .iter_mut()
            .chain([&mut self.depthwise, &mut self.project])
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        if let Some(se) = &self.se {
            if layer == se.names.0 {
                return se.reduce.named(layer);
            }
            if layer == se.names.1 {
                return se.expand.named(layer);
            }
        }
        let convs = self.expand.iter().chain([&self.depthwise, &self.project]);
        convs
            .map(|c| c.tensors(layer))
            .find(|t| !t.is_empty())
            .unwrap_or_default()
    }
}

/// EfficientNet-B0 or -Lite0 with the weights of cut points `1..=last`.
pub struct EfficientNet {
    normalize: Normalize,
    backends: Backends,
    stem: Option<ConvBn>,
    blocks: Vec<MbConv>,
    head: Option<ConvBn>,
    fc: Option<(String, Param)>,
}

impl EfficientNet {
    pub fn new_until(
        v: Variant,
        ws: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        let act = if v.se() { Act::Silu } else { Act::Relu6 };
        let how = |k: usize, stride: usize, groups: usize, act: Act| How {
            stride,
            pad: if v.tf_same() {
                Pad::Same
            } else {
                Pad::Sym((k - 1) / 2)
            },
            groups,
            eps: v.bn_eps(),
            act,
        };
        let load = |names: &(String, String), how: How| {
            ConvBn::load(ws, (&names.0, &names.1), how, device)
        };
        let stem = match last >= 1 {
            true => Some(load(&v.stem(), how(3, 2, 1, act))?),
            false => None,
        };
        let mut blocks = Vec::new();
        for b in crate::arch::efficientnet::blocks(v)
            .into_iter()
            .filter(|b| b.at <= last)
        {
            let n = &b.names;
            let expand = match &n.expand {
                Some(e) => Some(load(e, how(1, 1, 1, act))?),
                None => None,
            };
            let dw = how(b.kernel, b.stride, b.expanded, act);
            let se = match &n.se {
                Some((r, e)) => Some(Se {
                    names: (r.clone(), e.clone()),
                    reduce: Param::load(ws, r, device)?,
                    expand: Param::load(ws, e, device)?,
                }),
                None => None,
            };
            blocks.push(MbConv {
                at: b.at,
                residual: b.residual(),
                expand,
                depthwise: load(&n.depthwise, dw)?,
                se,
                project: load(&n.project, how(1, 1, 1, Act::None))?,
            });
        }
        let head = match last >= HEAD {
            true => Some(load(&v.head(), how(1, 1, 1, act))?),
            false => None,
        };
        let fc = Param::load_if(ws, v.fc(), device, last > PRE_LOGITS)?;
        let fc = fc.map(|p| (v.fc().to_string(), p));
        Ok(EfficientNet {
            normalize: Normalize::new(pre, device)?,
            backends,
            stem,
            blocks,
            head,
            fc,
        })
    }

    fn missing(what: &str) -> Error {
        Error::Other(format!(
            "EfficientNet {what} was not loaded (it is above backbone.output)"
        ))
    }

    /// Cut point `i` applied to the output of cut point `i - 1`.
    fn layer(&self, i: usize, x: &Tensor, drop: &mut Dropout) -> Result<Tensor> {
        let b = &self.backends;
        match i {
            1 => self
                .stem
                .as_ref()
                .ok_or_else(|| Self::missing("stem"))?
                .forward(x, b),
            HEAD => self
                .head
                .as_ref()
                .ok_or_else(|| Self::missing("head"))?
                .forward(x, b),
            PRE_LOGITS => global_pool(x, crate::spec::Pool::Avg),
            i if i < HEAD => {
                let mut y = x.clone();
                let mut any = false;
                for blk in self.blocks.iter().filter(|blk| blk.at == i) {
                    y = blk.forward(&y, b)?;
                    any = true;
                }
                match any {
                    true => Ok(y),
                    false => Err(Self::missing(LAYERS[i])),
                }
            }
            _ => {
                let (_, fc) = self
                    .fc
                    .as_ref()
                    .ok_or_else(|| Self::missing("classifier"))?;
                // the reference trains its classifier behind dropout
                let x = match (fc.trainable, drop.as_mut()) {
                    (true, Some((rng, p))) => dropout(x, *p, rng)?,
                    _ => x.clone(),
                };
                linear(&x, &fc.w, &fc.b)
            }
        }
    }

    /// Every convolution + batch norm, with the cut point it belongs to.
    fn conv_bns(&mut self) -> impl Iterator<Item = (usize, &mut ConvBn)> {
        let stem = self.stem.iter_mut().map(|c| (1, c));
        let blocks = self.blocks.iter_mut().flat_map(|b| {
            let at = b.at;
            b.conv_bns().map(move |c| (at, c))
        });
        let head = self.head.iter_mut().map(|c| (HEAD, c));
        stem.chain(blocks).chain(head)
    }
}

impl Backbone for EfficientNet {
    fn forward_range(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        mut drop: Dropout,
    ) -> Result<Tensor> {
        self.normalize
            .run_cut_points(x, (from, until), LAYERS, |i, x| self.layer(i, x, &mut drop))
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        if let Some((name, fc)) = &self.fc {
            if layer == name {
                return fc.named(layer);
            }
        }
        let stem_head = self.stem.iter().chain(self.head.iter());
        let found = stem_head.map(|c| c.tensors(layer)).find(|t| !t.is_empty());
        found
            .or_else(|| {
                self.blocks
                    .iter()
                    .map(|b| b.tensors(layer))
                    .find(|t| !t.is_empty())
            })
            .unwrap_or_default()
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for (at, c) in self.conv_bns() {
            if at > after && at <= until {
                out.extend(c.make_trainable()?);
            }
        }
        for b in self
            .blocks
            .iter_mut()
            .filter(|b| b.at > after && b.at <= until)
        {
            if let Some(se) = &mut b.se {
                out.extend(se.reduce.make_trainable(&se.names.0)?);
                out.extend(se.expand.make_trainable(&se.names.1)?);
            }
        }
        if let (Some((name, fc)), true) =
            (self.fc.as_mut(), after <= PRE_LOGITS && until > PRE_LOGITS)
        {
            out.extend(fc.make_trainable(name)?);
        }
        Ok(out)
    }

    fn cast_frozen(&mut self, until: usize, dtype: DType) -> Result<()> {
        for (at, c) in self.conv_bns() {
            if at <= until {
                c.cast(dtype)?;
            }
        }
        if let (Some((_, fc)), true) = (self.fc.as_mut(), until > PRE_LOGITS) {
            fc.cast(dtype)?;
        }
        Ok(())
    }
}
