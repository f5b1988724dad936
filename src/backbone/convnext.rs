//! ConvNeXt-Tiny as torchvision runs it in evaluation mode (`crate::arch::convnext` describes
//! it), on NCHW maps throughout: a block's channels-last `Linear` layers are 1x1 convolutions
//! (runner's matrix-product path on the CPU, the exact GELU applied while the band is in cache),
//! its LayerNorm is a norm over the channels at each pixel (`layers::channel_norm`), its 7x7
//! depthwise convolution takes runner's depthwise kernel. Frozen, a block's layer scale is
//! folded into its second fc at load; made trainable, it trains as its own tensor.

use candle_core::{DType, Device, Tensor, Var};

use super::layers::{channel_norm, conv2d_act, global_pool, linear, Act, Normalize, Pad, Param};
use super::{Backbone, Dropout};
pub use crate::arch::convnext::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// An fc weight `[out, in]` as a 1x1 convolution's `[out, in, 1, 1]`.
fn as_conv(w: &Tensor) -> Result<Tensor> {
    let (o, i) = w.dims2()?;
    Ok(w.reshape((o, i, 1, 1))?)
}

/// One CNBlock (`features.{at}.{b}`).
struct CnBlock {
    name: String,
    at: usize,
    dw: Param,
    norm: Param,
    fc1: Param,
    fc2: Param,
    /// The layer scale `[d, 1, 1]`.
    scale: Tensor,
    /// Frozen: fc2 as a 1x1 convolution with the layer scale folded in (weight, bias).
    folded: Option<(Tensor, Tensor)>,
    /// Trainable: the layer scale's variable.
    scale_var: Option<Var>,
}

impl CnBlock {
    fn load(ws: &WeightSet, name: String, at: usize, device: &Device) -> Result<CnBlock> {
        let part = |j: usize| Param::load(ws, &format!("{name}.block.{j}"), device);
        let (dw, norm, fc1, fc2) = (part(0)?, part(2)?, part(3)?, part(5)?);
        let scale = ws.tensor(&format!("{name}.layer_scale"), device)?;
        let d = fc2.w.dim(0)?;
        let w = as_conv(&fc2.w.broadcast_mul(&scale.reshape((d, 1))?)?)?;
        let b = fc2.b.mul(&scale.reshape(d)?)?;
        Ok(CnBlock {
            name,
            at,
            dw,
            norm,
            fc1,
            fc2,
            scale,
            folded: Some((w, b)),
            scale_var: None,
        })
    }

    fn forward(&self, x: &Tensor, b: &Backends) -> Result<Tensor> {
        let d = x.dim(1)?;
        let y = conv2d_act(
            x,
            (&self.dw.w, &self.dw.b),
            (1, Pad::Sym(3), d),
            Act::None,
            b,
        )?;
        let y = channel_norm(&y, (&self.norm.w, &self.norm.b), LN_EPS)?;
        let fc1 = as_conv(&self.fc1.w)?;
        let y = conv2d_act(&y, (&fc1, &self.fc1.b), (1, Pad::Valid, 1), Act::Gelu, b)?;
        let y = match &self.folded {
            Some((w, bias)) => conv2d_act(&y, (w, bias), (1, Pad::Valid, 1), Act::None, b)?,
            None => {
                let fc2 = as_conv(&self.fc2.w)?;
                let y = conv2d_act(&y, (&fc2, &self.fc2.b), (1, Pad::Valid, 1), Act::None, b)?;
                let scale = self
                    .scale_var
                    .as_ref()
                    .map_or(&self.scale, |v| v.as_tensor());
                y.broadcast_mul(&scale.reshape((1, d, 1, 1))?)?
            }
        };
        Ok(y.add(&x.to_dtype(y.dtype())?)?)
    }

    /// The block's weight + bias layers by name.
    fn parts(&self) -> [(String, &Param); 4] {
        let n = |j: usize| format!("{}.block.{j}", self.name);
        [
            (n(0), &self.dw),
            (n(2), &self.norm),
            (n(3), &self.fc1),
            (n(5), &self.fc2),
        ]
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        if layer == format!("{}.layer_scale", self.name) {
            let t = self
                .scale_var
                .as_ref()
                .map_or(&self.scale, |v| v.as_tensor());
            return vec![(layer.to_string(), t.clone())];
        }
        let found = self.parts().into_iter().find(|(n, _)| n == layer);
        found.map(|(n, p)| p.named(&n)).unwrap_or_default()
    }

    fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let n = |j: usize| format!("{}.block.{j}", self.name);
        let mut out = self.dw.make_trainable(&n(0))?;
        out.extend(self.norm.make_trainable(&n(2))?);
        out.extend(self.fc1.make_trainable(&n(3))?);
        out.extend(self.fc2.make_trainable(&n(5))?);
        let v = Var::from_tensor(&self.scale)?;
        out.push((format!("{}.layer_scale", self.name), v.clone()));
        self.scale_var = Some(v);
        self.folded = None;
        Ok(out)
    }

    fn cast(&mut self, dtype: DType) -> Result<()> {
        self.dw.cast(dtype)?;
        self.fc1.cast(dtype)?;
        self.fc2.cast(dtype)?;
        if let Some((w, b)) = &mut self.folded {
            (*w, *b) = (w.to_dtype(dtype)?, b.to_dtype(dtype)?);
        }
        Ok(())
    }
}

/// A LayerNorm over the channels and a convolution (with bias), by name: the stem is conv then
/// norm, a downsampling layer norm then conv.
struct NormConv {
    norm: (String, Param),
    conv: (String, Param),
    at: usize,
}

/// ConvNeXt-Tiny with the weights of cut points `1..=last`.
pub struct ConvNext {
    normalize: Normalize,
    backends: Backends,
    stem: Option<NormConv>,
    /// Downsampling layers before stages 1, 2, 3 (features.2, .4, .6), as far as loaded.
    downs: Vec<NormConv>,
    /// Blocks per stage (empty above the last loaded cut point).
    stages: Vec<Vec<CnBlock>>,
    head_norm: Option<Param>,
    fc: Option<Param>,
}

impl ConvNext {
    pub fn new_until(
        ws: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        let norm_conv = |at: usize, (norm, conv): (String, String)| -> Result<NormConv> {
            Ok(NormConv {
                norm: (norm.clone(), Param::load(ws, &norm, device)?),
                conv: (conv.clone(), Param::load(ws, &conv, device)?),
                at,
            })
        };
        let stem = match last >= 1 {
            true => Some(norm_conv(
                1,
                ("features.0.1".into(), "features.0.0".into()),
            )?),
            false => None,
        };
        let mut downs = Vec::new();
        let mut stages = Vec::new();
        for (s, &n) in DEPTHS.iter().enumerate() {
            let at = stage_at(s);
            if s > 0 && last >= at - 1 {
                // cut point i is features.{i - 1}
                let names = (
                    format!("features.{}.0", at - 2),
                    format!("features.{}.1", at - 2),
                );
                downs.push(norm_conv(at - 1, names)?);
            }
            let mut blocks = Vec::new();
            for b in 0..n {
                if last < at {
                    break;
                }
                blocks.push(CnBlock::load(
                    ws,
                    format!("features.{}.{b}", at - 1),
                    at,
                    device,
                )?);
            }
            stages.push(blocks);
        }
        Ok(ConvNext {
            normalize: Normalize::new(pre, device)?,
            backends,
            stem,
            downs,
            stages,
            head_norm: Param::load_if(ws, "classifier.0", device, last >= PRE_LOGITS)?,
            fc: Param::load_if(ws, "classifier.2", device, last > PRE_LOGITS)?,
        })
    }

    fn missing(what: &str) -> Error {
        Error::Other(format!(
            "ConvNeXt {what} was not loaded (it is above backbone.output)"
        ))
    }

    /// Cut point `i` applied to the output of cut point `i - 1`.
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let b = &self.backends;
        let norm = |x: &Tensor, p: &Param| channel_norm(x, (&p.w, &p.b), LN_EPS);
        let conv = |x: &Tensor, p: &Param, k: usize| {
            conv2d_act(x, (&p.w, &p.b), (k, Pad::Valid, 1), Act::None, b)
        };
        match i {
            1 => {
                let s = self.stem.as_ref().ok_or_else(|| Self::missing("stem"))?;
                norm(&conv(x, &s.conv.1, 4)?, &s.norm.1)
            }
            3 | 5 | 7 => {
                let d = self.downs.iter().find(|d| d.at == i);
                let d = d.ok_or_else(|| Self::missing(LAYERS[i]))?;
                conv(&norm(x, &d.norm.1)?, &d.conv.1, 2)
            }
            PRE_LOGITS => {
                let p = self
                    .head_norm
                    .as_ref()
                    .ok_or_else(|| Self::missing("classifier.0"))?;
                let v = global_pool(x, crate::spec::Pool::Avg)?;
                let (n, c) = v.dims2()?;
                Ok(norm(&v.reshape((n, c, 1, 1))?, p)?.reshape((n, c))?)
            }
            i if i < PRE_LOGITS => {
                let blocks = &self.stages[(i - 2) / 2];
                if blocks.is_empty() {
                    return Err(Self::missing(LAYERS[i]));
                }
                let mut y = x.clone();
                for blk in blocks {
                    y = blk.forward(&y, b)?;
                }
                Ok(y)
            }
            _ => {
                let fc = self
                    .fc
                    .as_ref()
                    .ok_or_else(|| Self::missing("classifier.2"))?;
                linear(x, &fc.w, &fc.b)
            }
        }
    }

    /// Every (name, cut point, parameter, is a convolution or fc) outside the blocks.
    fn others_mut(&mut self) -> Vec<(String, usize, &mut Param, bool)> {
        let mut out = Vec::new();
        for nc in self.stem.iter_mut().chain(self.downs.iter_mut()) {
            out.push((nc.norm.0.clone(), nc.at, &mut nc.norm.1, false));
            out.push((nc.conv.0.clone(), nc.at, &mut nc.conv.1, true));
        }
        if let Some(p) = self.head_norm.as_mut() {
            out.push(("classifier.0".into(), PRE_LOGITS, p, false));
        }
        if let Some(p) = self.fc.as_mut() {
            out.push(("classifier.2".into(), PRE_LOGITS + 1, p, true));
        }
        out
    }
}

impl Backbone for ConvNext {
    fn forward_range(&self, x: &Tensor, from: usize, until: usize, _: Dropout) -> Result<Tensor> {
        self.normalize
            .run_cut_points(x, (from, until), LAYERS, |i, x| self.layer(i, x))
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        let named = |n: &str, p: &Param| (n == layer).then(|| p.named(layer));
        let mut found =
            self.stem.iter().chain(self.downs.iter()).find_map(|nc| {
                named(&nc.norm.0, &nc.norm.1).or_else(|| named(&nc.conv.0, &nc.conv.1))
            });
        found = found.or_else(|| {
            self.head_norm
                .as_ref()
                .and_then(|p| named("classifier.0", p))
        });
        found = found.or_else(|| self.fc.as_ref().and_then(|p| named("classifier.2", p)));
        found
            .or_else(|| {
                let blocks = self.stages.iter().flatten();
                blocks.map(|b| b.tensors(layer)).find(|t| !t.is_empty())
            })
            .unwrap_or_default()
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for (name, at, p, _) in self.others_mut() {
            if at > after && at <= until {
                out.extend(p.make_trainable(&name)?);
            }
        }
        for b in self.stages.iter_mut().flatten() {
            if b.at > after && b.at <= until {
                out.extend(b.make_trainable()?);
            }
        }
        Ok(out)
    }

    fn cast_frozen(&mut self, until: usize, dtype: DType) -> Result<()> {
        // (LayerNorms stay f32: `channel_norm` computes in f32 whatever the input)
        for (_, at, p, is_conv) in self.others_mut() {
            if at <= until && is_conv {
                p.cast(dtype)?;
            }
        }
        for b in self.stages.iter_mut().flatten() {
            if b.at <= until && b.scale_var.is_none() {
                b.cast(dtype)?;
            }
        }
        Ok(())
    }
}
