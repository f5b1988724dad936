//! ViT-B/16 as torchvision runs it in evaluation mode (`crate::arch::vit` describes it). Cut
//! points pass the whole token sequence (N, 197, 768) from block to block; the head's pooling
//! (`layers::global_pool`) takes the class token or the mean of the patch tokens. Attention is
//! batched matrix products over (image, head) with the softmax in between; LayerNorms are
//! candle's fused op when frozen; the MLP's bias and exact GELU are one pass after its product.

use candle_core::{DType, Device, Tensor, Var};

use super::layers::{conv2d_act, linear_act, token_norm, Act, Normalize, Pad, Param};
use super::{Backbone, Dropout};
pub use crate::arch::vit::*;
use crate::arch::Preprocess;
use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// One encoder block (`encoder.layers.encoder_layer_{i}`).
struct EncoderBlock {
    name: String,
    ln1: Param,
    /// The packed q/k/v projection: `in_proj_weight` [3*768, 768], `in_proj_bias` [3*768].
    qkv: Param,
    out: Param,
    ln2: Param,
    fc1: Param,
    fc2: Param,
}

impl EncoderBlock {
    fn load(ws: &WeightSet, i: usize, device: &Device) -> Result<EncoderBlock> {
        let name = block(i);
        let p = |s: &str| Param::load(ws, &format!("{name}.{s}"), device);
        let attn = format!("{name}.self_attention");
        let qkv = Param {
            w: ws.tensor(&format!("{attn}.in_proj_weight"), device)?,
            b: ws.tensor(&format!("{attn}.in_proj_bias"), device)?,
            trainable: false,
        };
        Ok(EncoderBlock {
            ln1: p("ln_1")?,
            qkv,
            out: p("self_attention.out_proj")?,
            ln2: p("ln_2")?,
            fc1: p("mlp.0")?,
            fc2: p("mlp.3")?,
            name,
        })
    }

    /// Multi-head self-attention of the normalised tokens `h` (N, T, D).
    fn attention(&self, h: &Tensor) -> Result<Tensor> {
        let (n, t, d) = h.dims3()?;
        let hd = d / HEADS;
        let qkv = linear_act(h, &self.qkv.w, &self.qkv.b, Act::None)?;
        // (N, T, 3, heads, hd) -> (3, N, heads, T, hd)
        let qkv = qkv
            .reshape((n, t, 3, HEADS, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let att = if scores.track_op() {
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((n, t, d))?;
        linear_act(&o, &self.out.w, &self.out.b, Act::None)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = token_norm(x, (&self.ln1.w, &self.ln1.b), LN_EPS)?;
        let x = x.add(&self.attention(&h)?.to_dtype(x.dtype())?)?;
        let h = token_norm(&x, (&self.ln2.w, &self.ln2.b), LN_EPS)?;
        let h = linear_act(&h, &self.fc1.w, &self.fc1.b, Act::Gelu)?;
        let h = linear_act(&h, &self.fc2.w, &self.fc2.b, Act::None)?;
        Ok(x.add(&h.to_dtype(x.dtype())?)?)
    }

    /// (name, parameter, tensor names as (weight, bias)).
    fn parts(&self) -> Vec<(&Param, String, String)> {
        let n = |s: &str| {
            (
                format!("{}.{s}.weight", self.name),
                format!("{}.{s}.bias", self.name),
            )
        };
        let attn = format!("{}.self_attention", self.name);
        let mut out = Vec::new();
        for (p, s) in [
            (&self.ln1, "ln_1"),
            (&self.ln2, "ln_2"),
            (&self.fc1, "mlp.0"),
            (&self.fc2, "mlp.3"),
        ] {
            let (w, b) = n(s);
            out.push((p, w, b));
        }
        let (w, b) = n("self_attention.out_proj");
        out.push((&self.out, w, b));
        out.push((
            &self.qkv,
            format!("{attn}.in_proj_weight"),
            format!("{attn}.in_proj_bias"),
        ));
        out
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        for (p, w, b) in self.parts() {
            if w == layer || b == layer || w.strip_suffix(".weight") == Some(layer) {
                return match w.ends_with("in_proj_weight") {
                    // the packed projection's two tensors are layers of their own
                    true if w == layer => vec![(w, p.w.clone())],
                    true => vec![(b, p.b.clone())],
                    false => vec![(w, p.w.clone()), (b, p.b.clone())],
                };
            }
        }
        Vec::new()
    }

    fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        let name = self.name.clone();
        for (p, s) in [
            (&mut self.ln1, "ln_1"),
            (&mut self.ln2, "ln_2"),
            (&mut self.fc1, "mlp.0"),
            (&mut self.fc2, "mlp.3"),
            (&mut self.out, "self_attention.out_proj"),
        ] {
            out.extend(p.make_trainable(&format!("{name}.{s}"))?);
        }
        let (w, b) = (
            Var::from_tensor(&self.qkv.w)?,
            Var::from_tensor(&self.qkv.b)?,
        );
        (self.qkv.w, self.qkv.b, self.qkv.trainable) =
            (w.as_tensor().clone(), b.as_tensor().clone(), true);
        out.push((format!("{name}.self_attention.in_proj_weight"), w));
        out.push((format!("{name}.self_attention.in_proj_bias"), b));
        Ok(out)
    }

    fn cast(&mut self, dtype: DType) -> Result<()> {
        // (LayerNorms stay f32: `token_norm` computes in f32)
        for p in [&mut self.qkv, &mut self.out, &mut self.fc1, &mut self.fc2] {
            p.cast(dtype)?;
        }
        Ok(())
    }
}

/// The patch embedding, class token and position embeddings.
struct Embedding {
    proj: Param,
    class_token: Tensor,
    pos: Tensor,
}

/// ViT-B/16 with the weights of cut points `1..=last`.
pub struct Vit {
    normalize: Normalize,
    backends: Backends,
    embed: Option<Embedding>,
    blocks: Vec<EncoderBlock>,
    ln: Option<Param>,
    head: Option<Param>,
}

impl Vit {
    pub fn new_until(
        ws: &WeightSet,
        device: &Device,
        last: usize,
        (pre, backends): (&Preprocess, Backends),
    ) -> Result<Self> {
        let embed = match last >= 1 {
            true => Some(Embedding {
                proj: Param::load(ws, "conv_proj", device)?,
                class_token: ws.tensor("class_token", device)?,
                pos: ws.tensor("encoder.pos_embedding", device)?,
            }),
            false => None,
        };
        let blocks = (0..DEPTH.min(last))
            .map(|i| EncoderBlock::load(ws, i, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Vit {
            normalize: Normalize::new(pre, device)?,
            backends,
            embed,
            blocks,
            ln: Param::load_if(ws, "encoder.ln", device, last >= PRE_LOGITS)?,
            head: Param::load_if(ws, "heads.head", device, last > PRE_LOGITS)?,
        })
    }

    fn missing(what: &str) -> Error {
        Error::Other(format!(
            "ViT {what} was not loaded (it is above backbone.output)"
        ))
    }

    /// The token sequence (N, 197, 768) of a normalised image batch.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let e = self
            .embed
            .as_ref()
            .ok_or_else(|| Self::missing("conv_proj"))?;
        let p = conv2d_act(
            x,
            (&e.proj.w, &e.proj.b),
            (PATCH, Pad::Valid, 1),
            Act::None,
            &self.backends,
        )?;
        let (n, d, _, _) = p.dims4()?;
        let patches = p.flatten_from(2)?.transpose(1, 2)?;
        let cls = e.class_token.to_dtype(p.dtype())?.broadcast_as((n, 1, d))?;
        let tokens = Tensor::cat(&[&cls, &patches], 1)?;
        let pos = e.pos.to_dtype(p.dtype())?;
        if tokens.dim(1)? != pos.dim(1)? {
            return Err(Error::Other(format!(
                "ViT-B/16 takes {INPUT_SIZE}x{INPUT_SIZE} images ({} tokens), got {} tokens",
                pos.dim(1)?,
                tokens.dim(1)?
            )));
        }
        Ok(tokens.broadcast_add(&pos)?)
    }

    /// Cut point `i` applied to the output of cut point `i - 1`.
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        match i {
            PRE_LOGITS => {
                let ln = self
                    .ln
                    .as_ref()
                    .ok_or_else(|| Self::missing("encoder.ln"))?;
                let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
                token_norm(&cls, (&ln.w, &ln.b), LN_EPS)
            }
            i if i < PRE_LOGITS => {
                let blk = self
                    .blocks
                    .get(i - 1)
                    .ok_or_else(|| Self::missing(LAYERS[i]))?;
                let x = if i == 1 { self.embed(x)? } else { x.clone() };
                blk.forward(&x)
            }
            _ => {
                let head = self
                    .head
                    .as_ref()
                    .ok_or_else(|| Self::missing("heads.head"))?;
                linear_act(x, &head.w, &head.b, Act::None)
            }
        }
    }
}

impl Backbone for Vit {
    fn forward_range(&self, x: &Tensor, from: usize, until: usize, _: Dropout) -> Result<Tensor> {
        self.normalize
            .run_cut_points(x, (from, until), LAYERS, |i, x| self.layer(i, x))
    }

    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        let named =
            |n: &str, p: &Option<Param>| p.as_ref().filter(|_| n == layer).map(|p| p.named(n));
        if let Some(e) = &self.embed {
            match layer {
                "class_token" => return vec![(layer.into(), e.class_token.clone())],
                "encoder.pos_embedding" => return vec![(layer.into(), e.pos.clone())],
                "conv_proj" => return e.proj.named(layer),
                _ => {}
            }
        }
        named("encoder.ln", &self.ln)
            .or_else(|| named("heads.head", &self.head))
            .or_else(|| {
                let mut found = self.blocks.iter().map(|b| b.tensors(layer));
                found.find(|t| !t.is_empty())
            })
            .unwrap_or_default()
    }

    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        if after == 0 && until >= 1 {
            if let Some(e) = &mut self.embed {
                out.extend(e.proj.make_trainable("conv_proj")?);
                for (name, t) in [
                    ("class_token", &mut e.class_token),
                    ("encoder.pos_embedding", &mut e.pos),
                ] {
                    let v = Var::from_tensor(t)?;
                    *t = v.as_tensor().clone();
                    out.push((name.to_string(), v));
                }
            }
        }
        for (i, b) in self.blocks.iter_mut().enumerate() {
            if i + 1 > after && i < until {
                out.extend(b.make_trainable()?);
            }
        }
        if let (Some(ln), true) = (self.ln.as_mut(), after < PRE_LOGITS && until >= PRE_LOGITS) {
            out.extend(ln.make_trainable("encoder.ln")?);
        }
        if let (Some(h), true) = (
            self.head.as_mut(),
            after <= PRE_LOGITS && until > PRE_LOGITS,
        ) {
            out.extend(h.make_trainable("heads.head")?);
        }
        Ok(out)
    }

    fn cast_frozen(&mut self, until: usize, dtype: DType) -> Result<()> {
        if let Some(e) = &mut self.embed {
            e.proj.cast(dtype)?;
        }
        for (i, b) in self.blocks.iter_mut().enumerate() {
            if i < until && !b.qkv.trainable {
                b.cast(dtype)?;
            }
        }
        if let (Some(h), true) = (self.head.as_mut(), until > PRE_LOGITS) {
            h.cast(dtype)?;
        }
        Ok(())
    }
}
