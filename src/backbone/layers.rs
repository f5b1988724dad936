//! Layer operations with TensorFlow's semantics, shared by the backbones.

use candle_core::{DType, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub use super::act::Act;
use crate::arch::{ParamSpec, Preprocess};
use crate::backend::{Backends, ConvPath, GpuPath};
use crate::error::Result;

/// The weight and bias of one conv or fc layer: frozen tensors, or (after `make_trainable`)
/// the tensors of optimizer variables.
pub struct Param {
    pub w: Tensor,
    pub b: Tensor,
    pub trainable: bool,
}

impl Param {
    /// `<name>.weight` and `<name>.bias` from a loaded set.
    pub fn load(
        weights: &crate::weights::WeightSet,
        name: &str,
        device: &candle_core::Device,
    ) -> Result<Param> {
        let w = weights.pp(name);
        Ok(Param {
            w: w.get("weight", device)?,
            b: w.get("bias", device)?,
            trainable: false,
        })
    }

    /// `<name>.weight` and `<name>.bias` when `wanted` (the layer's cut point is loaded), else
    /// `None`.
    pub fn load_if(
        weights: &crate::weights::WeightSet,
        name: &str,
        device: &candle_core::Device,
        wanted: bool,
    ) -> Result<Option<Param>> {
        Ok(match wanted {
            true => Some(Param::load(weights, name, device)?),
            false => None,
        })
    }

    /// The weight + bias layers among `specs` whose cut point is at most `last`, by cut point
    /// index (`n_layers` slots; `None` for the others: input, pooling, layers above `last`).
    pub fn load_until(
        weights: &crate::weights::WeightSet,
        specs: &[ParamSpec],
        n_layers: usize,
        device: &candle_core::Device,
        last: usize,
    ) -> Result<Vec<Option<Param>>> {
        let mut out: Vec<Option<Param>> = (0..n_layers).map(|_| None).collect();
        for s in specs.iter().filter(|s| s.at <= last && s.at < n_layers) {
            out[s.at] = Some(Param::load(weights, &s.layer, device)?);
        }
        Ok(out)
    }

    /// The tensors by full name, as `Backbone::tensors` gives them.
    pub fn named(&self, layer: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{layer}.weight"), self.w.clone()),
            (format!("{layer}.bias"), self.b.clone()),
        ]
    }

    /// Make the layers of cut points `after+1 ..= until` of `params` (by cut point index, named
    /// by `names`) trainable; returns their variables by name.
    pub fn make_range_trainable(
        params: &mut [Option<Param>],
        names: &[&str],
        after: usize,
        until: usize,
    ) -> Result<Vec<(String, candle_core::Var)>> {
        let mut out = Vec::new();
        let range = params
            .iter_mut()
            .zip(names)
            .skip(after + 1)
            .take(until.saturating_sub(after));
        for (slot, name) in range {
            if let Some(p) = slot {
                out.extend(p.make_trainable(name)?);
            }
        }
        Ok(out)
    }

    /// Store a frozen layer's weights in another number format (trainable layers stay f32).
    pub fn cast(&mut self, dtype: candle_core::DType) -> Result<()> {
        if !self.trainable && self.w.dtype() != dtype {
            self.w = self.w.to_dtype(dtype)?;
            self.b = self.b.to_dtype(dtype)?;
        }
        Ok(())
    }

    /// Turn the weights into optimizer variables (the tensors then share their storage).
    pub fn make_trainable(&mut self, name: &str) -> Result<Vec<(String, candle_core::Var)>> {
        let w = candle_core::Var::from_tensor(&self.w)?;
        let b = candle_core::Var::from_tensor(&self.b)?;
        self.w = w.as_tensor().clone();
        self.b = b.as_tensor().clone();
        self.trainable = true;
        Ok(vec![
            (format!("{name}.weight"), w),
            (format!("{name}.bias"), b),
        ])
    }
}

/// An architecture's input transform (`arch::Preprocess`) as tensors on a device: raw 0..255
/// pixels to f32, channels reordered, `(x * scale - mean) / std`; steps that are the identity
/// are not run.
pub struct Normalize {
    pre: Preprocess,
    bgr: Tensor,
    mean: Tensor,
    std: Tensor,
}

impl Normalize {
    pub fn new(pre: &Preprocess, device: &candle_core::Device) -> Result<Normalize> {
        Ok(Normalize {
            pre: *pre,
            bgr: Tensor::from_slice(&[2u32, 1, 0], 3, device)?,
            mean: Tensor::from_slice(&pre.mean, (1, 3, 1, 1), device)?,
            std: Tensor::from_slice(&pre.std, (1, 3, 1, 1), device)?,
        })
    }

    /// The transform of an NCHW batch of raw pixels (the batch itself for an identity).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.pre.is_identity() {
            return Ok(x.clone());
        }
        let mut x = x.to_dtype(DType::F32)?;
        if self.pre.bgr {
            x = x.index_select(&self.bgr, 1)?;
        }
        if self.pre.scale != 1.0 {
            x = x.affine(self.pre.scale as f64, 0.0)?;
        }
        if self.pre.mean != [0.0; 3] {
            x = x.broadcast_sub(&self.mean)?;
        }
        if self.pre.std != [1.0; 3] {
            x = x.broadcast_div(&self.std)?;
        }
        Ok(x)
    }
}

impl Normalize {
    /// Cut points `from+1 ..= until` applied in turn by `layer` (cut point `i` to the output of
    /// `i - 1`), starting from the raw input normalised here when `from` is 0; each timed under
    /// its name in `names` when profiling (`RUNNER_PROFILE`).
    pub fn run_cut_points(
        &self,
        x: &Tensor,
        (from, until): (usize, usize),
        names: &[&str],
        mut layer: impl FnMut(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut x = if from == 0 { self.apply(x)? } else { x.clone() };
        for i in from + 1..=until {
            let name = names.get(i).copied().unwrap_or("layer");
            x = crate::profile::time(name, x.device(), || layer(i, &x))?;
        }
        Ok(x)
    }
}

/// TensorFlow "SAME" padding for one spatial axis: (before, after).
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// 2-D convolution (NCHW input, OIHW kernel) with bias, TF "SAME" or "VALID" padding, and
/// `groups` as in the seed's `conv()` (input channels and output kernels split in equal halves).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    same: bool,
    groups: usize,
    backends: &Backends,
) -> Result<Tensor> {
    conv2d_act(
        x,
        (w, b),
        (stride, Pad::tf(same), groups),
        Act::None,
        backends,
    )
}

/// `relu(conv2d(..))`, the seed's conv layers: on the CPU, frozen layers do both in one op.
pub fn conv2d_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    same: bool,
    groups: usize,
    backends: &Backends,
) -> Result<Tensor> {
    conv2d_act(
        x,
        (w, b),
        (stride, Pad::tf(same), groups),
        Act::Relu,
        backends,
    )
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// TensorFlow's "SAME": `ceil(side / stride)` outputs, any odd row or column at the
    /// bottom/right.
    Same,
    /// TensorFlow's "VALID": no padding.
    Valid,
    /// PyTorch's `padding = p`: `p` zeros on every side.
    Sym(usize),
}

impl Pad {
    /// The zeros added [top, bottom, left, right] for an `h x w` input and a `kh x kw` kernel.
    pub fn sides(
        self,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
    ) -> [usize; 4] {
        match self {
            Pad::Same => {
                let (pt, pb) = same_padding(h, kh, stride);
                let (pl, pr) = same_padding(w, kw, stride);
                [pt, pb, pl, pr]
            }
            Pad::Valid => [0; 4],
            Pad::Sym(p) => [p; 4],
        }
    }

    /// `Same` or `Valid`, as the seed's graphs say.
    pub fn tf(same: bool) -> Pad {
        if same {
            Pad::Same
        } else {
            Pad::Valid
        }
    }
}

/// The convolution on the path `backends` chooses: (stride, padding, groups), bias, then `act`.
/// A depthwise convolution (one input and one output channel per group) runs runner's direct
/// kernel on the CPU (`cpu_depthwise`) and a sum of shifted products elsewhere (`depthwise_taps`),
/// never candle's grouped convolution, which runs one convolution per channel.
pub fn conv2d_act(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    (stride, pad, groups): (usize, Pad, usize),
    act: Act,
    backends: &Backends,
) -> Result<Tensor> {
    let x = &x.to_dtype(w.dtype())?;
    let (_, cin, h, wd) = x.dims4()?;
    let (cout, _, kh, kw) = w.dims4()?;
    let depthwise = groups > 1 && groups == cin && groups == cout;
    let [pt, pb, pl, pr] = pad.sides((h, wd), (kh, kw), stride);
    // Frozen layers on the CPU: bias, convolution and ReLU as one tiled op (`cpu_conv`).
    // Trainable layers keep candle's op (it has a backward pass).
    // (`ConvPath::Candle`, RUNNER_CONV=candle, forces candle's op, for A/B benchmarks.)
    if x.device().is_cpu()
        && x.dtype() == DType::F32
        && !x.track_op()
        && !w.track_op()
        && !b.track_op()
        && backends.conv != ConvPath::Candle
    {
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        let pads = [pt, pb, pl, pr];
        if depthwise {
            let op = super::cpu_depthwise::DepthwiseConv { stride, pads, act };
            return Ok(x.apply_op3_no_bwd(&w, &b, &op)?);
        }
        // 3x3 stride 1 by Winograd F(2x2, 3x3), unless the input has too few channels for
        // its transforms to pay (VGG's conv1_1 has 3). `ConvPath::Direct` for A/B benchmarks.
        let winograd =
            (kh, kw, stride) == (3, 3, 1) && w.dim(1)? >= 16 && backends.conv != ConvPath::Direct;
        return Ok(if winograd {
            let op = super::cpu_conv::WinogradConv { pads, groups, act };
            x.apply_op3_no_bwd(&w, &b, &op)?
        } else {
            let op = super::cpu_conv::FrozenConv {
                stride,
                pads,
                groups,
                act,
            };
            x.apply_op3_no_bwd(&w, &b, &op)?
        });
    }
    // Frozen layers on a GPU, opt-in (`GpuPath::Conv`, `cudnn` build): one cuDNN call per
    // layer with a measured algorithm, groups in one call, bias and ReLU in one pass
    // (`gpu::conv`). TensorFlow's SAME puts any odd padding row/column at the bottom/right.
    if cfg!(feature = "cudnn")
        && !x.device().is_cpu()
        && backends.fused(GpuPath::Conv)
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && !x.track_op()
        && !w.track_op()
        && !b.track_op()
    {
        let x = if pb > pt || pr > pl {
            x.pad_with_zeros(2, 0, pb.saturating_sub(pt))?
                .pad_with_zeros(3, 0, pr.saturating_sub(pl))?
        } else {
            x.clone()
        };
        // the kernel's epilogue does bias and ReLU; other activations follow as candle ops
        let op = crate::gpu::conv::CudnnConv {
            stride,
            pad: (pt, pl),
            groups,
            relu: act == Act::Relu,
            tf32: candle_core::cuda::gemm_reduced_precision_f32(),
        };
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        let y = x.apply_op3_no_bwd(&w, &b, &op)?;
        return match act {
            Act::None | Act::Relu => Ok(y),
            _ => act.tensor(&y),
        };
    }
    let y = if depthwise {
        depthwise_taps(x, w, stride, [pt, pb, pl, pr])?
    } else if pt == pb && pl == pr && pt == pl {
        x.conv2d(w, pt, stride, 1, groups)?
    } else {
        let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        xp.conv2d(w, 0, stride, 1, groups)?
    };
    let c = b.dim(0)?;
    act.tensor(&y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
}

/// A depthwise convolution (no bias) as the sum over its k x k taps of the input, shifted and
/// subsampled by the stride, times that tap's weight per channel: candle ops with a backward
/// pass on any device, k*k elementwise products instead of one convolution per channel.
pub fn depthwise_taps(x: &Tensor, w: &Tensor, stride: usize, pads: [usize; 4]) -> Result<Tensor> {
    let [pt, pb, pl, pr] = pads;
    let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
    let (n, c, hp, wp) = xp.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if hp < kh || wp < kw || kh == 0 || kw == 0 {
        return Err(crate::error::Error::Other(format!(
            "depthwise convolution: a {kh}x{kw} kernel on a padded {hp}x{wp} map"
        )));
    }
    let s = stride.max(1);
    let (oh, ow) = ((hp - kh) / s + 1, (wp - kw) / s + 1);
    let mut y: Option<Tensor> = None;
    for ki in 0..kh {
        for kj in 0..kw {
            let tap = xp
                .narrow(2, ki, (oh - 1) * s + 1)?
                .narrow(3, kj, (ow - 1) * s + 1)?;
            let tap = if s == 1 {
                tap
            } else {
                // every s-th row and column: pad to a multiple of s, split, keep the first
                let t = tap
                    .pad_with_zeros(2, 0, s - 1)?
                    .pad_with_zeros(3, 0, s - 1)?;
                let t = t.reshape((n, c, oh, s, ow * s))?.narrow(3, 0, 1)?;
                t.reshape((n, c, oh, ow, s))?
                    .narrow(4, 0, 1)?
                    .reshape((n, c, oh, ow))?
            };
            let k = w
                .narrow(2, ki, 1)?
                .narrow(3, kj, 1)?
                .reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&k)?;
            y = Some(match y {
                Some(acc) => acc.add(&term)?,
                None => term,
            });
        }
    }
    y.ok_or_else(|| crate::error::Error::Other("a depthwise kernel without taps".into()))
}

/// TensorFlow's local response normalization over channels (dim 1 of NCHW):
/// `x / (bias + alpha * sum_{c-r..c+r} x^2) ^ beta` — alpha is not divided by the window size.
///
/// Computed in f32 whatever the input's format (a sum of 5 squares and a power lose most of a
/// bf16's 8 bits), and returned in the input's format. On the CPU it is one fused pass
/// (`FusedLrn`); elsewhere the window sum is one banded matrix product over the channels, so a
/// GPU does four contiguous kernels instead of a pad, five strided slices and their sums.
pub fn lrn(x: &Tensor, radius: usize, alpha: f64, beta: f64, bias: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = &x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    x.dims4()?;
    // the fused op has no backward pass: only where no gradient flows (frozen layers)
    if x.device().is_cpu() && !x.track_op() {
        let op = FusedLrn {
            radius,
            alpha: alpha as f32,
            beta: beta as f32,
            bias: bias as f32,
        };
        return Ok(x.apply_op1_no_bwd(&op)?.to_dtype(dtype)?);
    }
    lrn_banded(x, radius, alpha, beta, bias)?
        .to_dtype(dtype)
        .map_err(Into::into)
}

/// LRN with the window sum as a banded (C x C) matrix product (the device path of `lrn`).
fn lrn_banded(x: &Tensor, radius: usize, alpha: f64, beta: f64, bias: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let band: Vec<f32> = (0..c * c)
        .map(|k| {
            let (i, j) = (k / c, k % c);
            if i.abs_diff(j) <= radius {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let band = Tensor::from_vec(band, (c, c), x.device())?;
    let sq = x.sqr()?.reshape((n, c, h * w))?;
    let sum = band.broadcast_left(n)?.matmul(&sq)?.reshape((n, c, h, w))?;
    let denom = sum.affine(alpha, bias)?.powf(beta)?;
    Ok(x.div(&denom)?)
}

/// LRN on contiguous f32 NCHW in one pass per image: squares once, then for each channel the
/// window sum (at most 2r+1 adds per element) and `x * (bias + alpha * sum)^-beta`, parallel
/// over images. For beta = 0.75 the power is `1 / (sqrt(d) * sqrt(sqrt(d)))`, exact to a few
/// ulps and several times faster than `powf`.
struct FusedLrn {
    radius: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
}

impl candle_core::CustomOp1 for FusedLrn {
    fn name(&self) -> &'static str {
        "lrn"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(v) = s else {
            candle_core::bail!("lrn: f32 input expected")
        };
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("lrn: contiguous input expected")
        };
        let (_, c, h, w) = l.shape().dims4()?;
        let x = &v[o0..o1];
        let plane = h * w;
        let img = c * plane;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(img.max(1))
            .zip(x.par_chunks(img.max(1)))
            .for_each(|(o, xi)| lrn_image(o, xi, c, plane, self));
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }
}

/// One image of `FusedLrn`: `c` planes of `plane` values from `xi` into `o`.
fn lrn_image(o: &mut [f32], xi: &[f32], c: usize, plane: usize, p: &FusedLrn) {
    let sq: Vec<f32> = xi.iter().map(|v| v * v).collect();
    let mut sum = vec![0f32; plane];
    let (bias, alpha) = (p.bias, p.alpha);
    for ch in 0..c {
        sum.iter_mut().for_each(|s| *s = 0.0);
        let lo = ch.saturating_sub(p.radius);
        let hi = (ch + p.radius).min(c - 1);
        for k in lo..=hi {
            for (s, q) in sum.iter_mut().zip(&sq[k * plane..(k + 1) * plane]) {
                *s += q;
            }
        }
        let xs = &xi[ch * plane..(ch + 1) * plane];
        let os = &mut o[ch * plane..(ch + 1) * plane];
        // two loops, not a branch per element: the first one vectorises
        if p.beta == 0.75 {
            for ((o, &xv), &s) in os.iter_mut().zip(xs).zip(&sum) {
                let d = bias + alpha * s;
                *o = xv / (d.sqrt() * d.sqrt().sqrt());
            }
        } else {
            for ((o, &xv), &s) in os.iter_mut().zip(xs).zip(&sum) {
                *o = xv / (bias + alpha * s).powf(p.beta);
            }
        }
    }
}

/// PyTorch's `MaxPool2d(k, stride, padding = pad)` of a map whose values are all >= 0 (after
/// a ReLU, as ResNet's stem): on the CPU where no gradient flows, windows skip the padding;
/// elsewhere zero padding, which gives the same maxima for such a map.
pub fn max_pool_after_relu(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() && pad < k {
        let op = super::cpu_conv::MaxPool { k, stride, pad };
        return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    let x = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    max_pool_valid(&x, k, stride)
}

/// Max pooling with a square window, TF "VALID" padding.
pub fn max_pool_valid(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    // frozen f32 on the CPU: the same comparisons as candle's op, one plane per rayon task
    // (candle's CPU pool runs on one thread)
    if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() {
        let (_, _, h, w) = x.dims4()?;
        if k >= 1 && stride >= 1 && h >= k && w >= k {
            let op = super::cpu_conv::MaxPool { k, stride, pad: 0 };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
    }
    if x.track_op() && (k, stride) == (3, 2) {
        // candle has no backward pass for overlapping windows: a trainable tail through
        // AlexNet's 3/2 pooling takes the same maximum by differentiable ops
        return max_pool_3s2_differentiable(x);
    }
    Ok(x.max_pool2d_with_stride(k, stride)?)
}

/// VALID 3x3 max pooling with stride 2 from ops that have gradients: separable (the maximum
/// over the width's windows, then over the height's), each window `max(x[2j], x[2j+1],
/// x[2j+2])` as the maximum of a pair's maximum and the next pair's first element.
fn max_pool_3s2_differentiable(x: &Tensor) -> Result<Tensor> {
    fn along_last(x: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        let wo = (w - 3) / 2 + 1;
        let need = 2 * wo + 2;
        let xs = if w >= need {
            x.narrow(D::Minus1, 0, need)?
        } else {
            // x[2 wo + 1] is only ever the unused second half of the last pair
            x.pad_with_same(D::Minus1, 0, need - w)?
        };
        let mut dims = xs.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = wo + 1;
        dims.push(2);
        let pairs = xs.reshape(dims)?;
        let pair_max = pairs.max(D::Minus1)?;
        let firsts = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        Ok(pair_max
            .narrow(D::Minus1, 0, wo)?
            .maximum(&firsts.narrow(D::Minus1, 1, wo)?)?)
    }
    let (_, _, h, w) = x.dims4()?;
    if h < 3 || w < 3 {
        return Ok(x.max_pool2d_with_stride(3, 2)?);
    }
    let across = along_last(&x.contiguous()?)?;
    let down = along_last(&across.transpose(2, 3)?.contiguous()?)?;
    Ok(down.transpose(2, 3)?.contiguous()?)
}

/// LayerNorm over the channels (dim 1) of an NCHW map at each pixel, with a per-channel scale
/// and shift: one pass on the CPU where no gradient flows (`cpu_norm`), candle ops in f32
/// elsewhere; returned in the input's format.
pub fn channel_norm(x: &Tensor, (gamma, beta): (&Tensor, &Tensor), eps: f64) -> Result<Tensor> {
    let frozen = !x.track_op() && !gamma.track_op() && !beta.track_op();
    if x.device().is_cpu() && x.dtype() == DType::F32 && frozen {
        let (x, g, b) = (x.contiguous()?, gamma.contiguous()?, beta.contiguous()?);
        let op = super::cpu_norm::ChannelNorm { eps: eps as f32 };
        return Ok(x.apply_op3_no_bwd(&g, &b, &op)?);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let y = xc.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
    let shape = (1, c, 1, 1);
    let y = y
        .broadcast_mul(&gamma.to_dtype(DType::F32)?.reshape(shape)?)?
        .broadcast_add(&beta.to_dtype(DType::F32)?.reshape(shape)?)?;
    Ok(y.to_dtype(dtype)?)
}

/// LayerNorm over the last axis (a transformer's tokens), in f32, returned in the input's
/// format: candle's fused op where no gradient flows, its differentiable version otherwise.
pub fn token_norm(x: &Tensor, (gamma, beta): (&Tensor, &Tensor), eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let y = if x.track_op() || gamma.track_op() || beta.track_op() {
        candle_nn::ops::layer_norm_slow(&x, gamma, beta, eps as f32)?
    } else {
        candle_nn::ops::layer_norm(&x, gamma, beta, eps as f32)?
    };
    Ok(y.to_dtype(dtype)?)
}

/// An fc layer on the last axis of `x` (any leading axes), then `act`: `act(x @ w^T + b)`; on the
/// CPU where no gradient flows the bias and activation are one pass after the product.
pub fn linear_act(x: &Tensor, w: &Tensor, b: &Tensor, act: Act) -> Result<Tensor> {
    let x = &x.to_dtype(w.dtype())?;
    let mut dims = x.dims().to_vec();
    let (Some(&d), o) = (dims.last(), w.dim(0)?) else {
        return Err(crate::error::Error::Other("an fc layer on a scalar".into()));
    };
    let x2 = x.reshape((x.elem_count() / d.max(1), d))?;
    let y = x2.matmul(&w.t()?)?;
    let frozen = !y.track_op() && !b.track_op();
    let y = if y.device().is_cpu() && y.dtype() == DType::F32 && frozen {
        y.apply_op2_no_bwd(&b.contiguous()?, &super::cpu_conv::BiasAct { act })?
    } else {
        act.tensor(&y.broadcast_add(b)?)?
    };
    if let Some(last) = dims.last_mut() {
        *last = o;
    }
    Ok(y.reshape(dims)?)
}

/// Fully connected layer: `x @ w^T + b` with `w` as `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let x = &x.to_dtype(w.dtype())?;
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// `relu(a + b)`, a residual block's end: one parallel pass on the CPU where no gradient flows
/// (frozen layers), `add` then `relu` elsewhere.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let b = &b.to_dtype(a.dtype())?;
    if a.device().is_cpu() && a.dtype() == DType::F32 && !a.track_op() && !b.track_op() {
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        return Ok(a.apply_op2_no_bwd(&b, &super::cpu_conv::AddRelu)?);
    }
    Ok(a.add(b)?.relu()?)
}

/// Flatten all but the batch dimension.
pub fn flatten(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?)
}

/// Softmax over the last dimension (for predictions).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// Inverted dropout on `x` with a host-drawn mask (kept units scaled by 1/(1-p)).
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.gen_bool(1.0 - p) { scale } else { 0.0 })
        .collect();
    let m = Tensor::from_vec(mask, x.shape(), x.device())?;
    Ok(x.mul(&m)?)
}

/// Global pooling of (N, C, H, W) feature maps to (N, C): the mean or the maximum over each
/// channel's H x W values (in f32); other shapes, or `Pool::None`, pass unchanged.
///
/// A token sequence (N, T, D) with a class token first (a vision transformer's) pools to (N, D):
/// `Class` takes the class token, `Avg` the mean of the other tokens; `Max` is refused.
pub fn global_pool(f: &Tensor, pool: crate::spec::Pool) -> Result<Tensor> {
    use crate::spec::Pool;
    if f.rank() == 3 && !pool.is_none() {
        let (_, t, _) = f.dims3()?;
        return Ok(match pool {
            Pool::Class => f.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::F32)?,
            Pool::Avg if t > 1 => f.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?.mean(1)?,
            _ => {
                return Err(crate::error::Error::Other(format!(
                    "pool {} does not apply to a sequence of {t} tokens",
                    pool.name()
                )))
            }
        });
    }
    if f.rank() != 4 || pool.is_none() || pool == Pool::Class {
        return Ok(f.clone());
    }
    let flat = f.to_dtype(DType::F32)?.flatten_from(2)?;
    Ok(match pool {
        crate::spec::Pool::Avg => flat.mean(2)?,
        crate::spec::Pool::Max => flat.max(2)?,
        crate::spec::Pool::None | crate::spec::Pool::Class => flat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differentiable_3s2_pooling_equals_candles_and_has_gradients() {
        for (h, w) in [(13, 13), (7, 8), (3, 3), (6, 5)] {
            let n = 2 * 3 * h * w;
            let vals: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
            let x = Tensor::from_vec(vals, (2, 3, h, w), &candle_core::Device::Cpu).unwrap();
            let want = x.max_pool2d_with_stride(3, 2).unwrap();
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let got = max_pool_valid(var.as_tensor(), 3, 2).unwrap();
            assert_eq!(got.dims(), want.dims(), "{h}x{w}");
            let (a, b): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "{h}x{w}");
            let grads = got.sum_all().unwrap().backward().unwrap();
            let g = grads
                .get(var.as_tensor())
                .expect("a gradient reaches the input");
            let total: f32 = g.sum_all().unwrap().to_scalar().unwrap();
            assert!(total > 0.0, "{h}x{w}");
        }
    }

    /// TF's formula written out: pad, five slices, sum.
    fn lrn_reference(x: &Tensor, r: usize, alpha: f64, beta: f64, bias: f64) -> Tensor {
        let c = x.dim(1).unwrap();
        let sq = x.sqr().unwrap().pad_with_zeros(1, r, r).unwrap();
        let mut sum = sq.narrow(1, 0, c).unwrap();
        for k in 1..=2 * r {
            sum = (sum + sq.narrow(1, k, c).unwrap()).unwrap();
        }
        let d = sum.affine(alpha, bias).unwrap().powf(beta).unwrap();
        x.div(&d).unwrap()
    }

    #[test]
    fn trainable_layers_keep_their_gradients() {
        // the fused CPU ops have no backward pass: they must not be used where gradients flow
        let dev = candle_core::Device::Cpu;
        let v: Vec<f32> = (0..2 * 4 * 5 * 5).map(|i| (i % 7) as f32 - 3.0).collect();
        let x = candle_core::Var::from_vec(v, (2, 4, 5, 5), &dev).unwrap();
        let y = lrn(x.as_tensor(), 2, 1e-2, 0.75, 1.0).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some(), "no gradient through LRN");

        let w =
            candle_core::Var::from_vec(vec![0.1f32; 6 * 2 * 3 * 3], (6, 2, 3, 3), &dev).unwrap();
        let b = Tensor::zeros(6, DType::F32, &dev).unwrap();
        let xs = Tensor::ones((1, 4, 5, 5), DType::F32, &dev).unwrap();
        let y = conv2d(&xs, w.as_tensor(), &b, 1, true, 2, &Backends::default()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some(), "no gradient through conv2d");
    }

    #[test]
    fn frozen_cpu_conv_matches_candle() {
        // the tiled CPU op (bias + conv + ReLU) against candle's conv on padded input: groups,
        // strides, uneven SAME padding, kernels wider than tall, images taller than a band;
        // 3x3 stride-1 kernels on 16+ channels per group take the Winograd op
        let dev = candle_core::Device::Cpu;
        for (c, h, wd, stride, same, groups, (kh, kw)) in [
            (4, 9, 8, 1, true, 2, (3, 5)),
            (4, 9, 8, 2, true, 2, (3, 5)),
            (4, 9, 8, 3, false, 1, (3, 5)),
            (1, 200, 100, 1, true, 1, (3, 5)), // 20,000 outputs: two bands, the last shorter
            (2, 70, 9, 1, false, 2, (3, 5)),
            (3, 31, 29, 4, true, 1, (3, 5)),
            (32, 13, 11, 1, true, 2, (3, 3)), // Winograd, odd sizes: partial 2x2 tiles
            (32, 13, 11, 1, false, 2, (3, 3)),
            (16, 50, 49, 1, true, 1, (3, 3)), // Winograd, 2 x 625 tiles: three bands
            (16, 9, 9, 2, true, 1, (3, 3)),   // stride 2: direct
        ] {
            let xv: Vec<f32> = (0..2 * c * h * wd)
                .map(|i| ((i * 31 % 17) as f32) - 8.0)
                .collect();
            let o = 6;
            let wv: Vec<f32> = (0..o * (c / groups) * kh * kw)
                .map(|i| ((i * 7 % 11) as f32) * 0.1 - 0.5)
                .collect();
            let x = Tensor::from_vec(xv, (2, c, h, wd), &dev).unwrap();
            let w = Tensor::from_vec(wv, (o, c / groups, kh, kw), &dev).unwrap();
            let b = Tensor::from_vec(vec![0.5f32, -1.0, 0.0, 2.0, -3.0, 0.25], o, &dev).unwrap();
            let (pt, pb) = if same {
                same_padding(h, kh, stride)
            } else {
                (0, 0)
            };
            let (pl, pr) = if same {
                same_padding(wd, kw, stride)
            } else {
                (0, 0)
            };
            let xp = x
                .pad_with_zeros(2, pt, pb)
                .unwrap()
                .pad_with_zeros(3, pl, pr)
                .unwrap();
            let want = xp
                .conv2d(&w, 0, stride, 1, groups)
                .unwrap()
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            for relu in [false, true] {
                let got = if relu {
                    conv2d_relu(&x, &w, &b, stride, same, groups, &Backends::default()).unwrap()
                } else {
                    conv2d(&x, &w, &b, stride, same, groups, &Backends::default()).unwrap()
                };
                let want = if relu {
                    want.relu().unwrap()
                } else {
                    want.clone()
                };
                assert_eq!(got.dims(), want.dims());
                let d = (got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    d <= 1e-6 * scale.max(1.0),
                    "{c}x{h}x{wd} k{kh}x{kw} stride {stride} relu {relu}: max diff {d}"
                );
            }
        }
    }

    #[test]
    fn parallel_max_pool_matches_candle() {
        let dev = candle_core::Device::Cpu;
        let v: Vec<f32> = (0..3 * 4 * 13 * 11)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
            .collect();
        let x = Tensor::from_vec(v, (3, 4, 13, 11), &dev).unwrap();
        for (k, s) in [(2, 2), (3, 2), (3, 1), (11, 1)] {
            let got: Vec<f32> = max_pool_valid(&x, k, s)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = x
                .max_pool2d_with_stride(k, s)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "k {k} stride {s}");
        }
    }

    #[test]
    fn both_lrn_paths_match_the_formula() {
        let dev = candle_core::Device::Cpu;
        let n = 2 * 7 * 3 * 5;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.9)
            .collect();
        let x = Tensor::from_vec(v, (2, 7, 3, 5), &dev).unwrap();
        for (alpha, beta) in [(2e-5, 0.75), (1e-2, 0.5)] {
            let want = lrn_reference(&x, 2, alpha, beta, 1.0);
            let fused = lrn(&x, 2, alpha, beta, 1.0).unwrap();
            let banded = lrn_banded(&x, 2, alpha, beta, 1.0).unwrap();
            for got in [fused, banded] {
                let d = (got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "alpha {alpha} beta {beta}: max diff {d}");
            }
        }
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(227, 11, 4), (4, 4));
        assert_eq!(same_padding(28, 5, 1), (2, 2));
        assert_eq!(same_padding(13, 3, 1), (1, 1));
        assert_eq!(same_padding(224, 11, 4), (3, 4));
    }

    #[test]
    fn lrn_matches_hand_computation() {
        let dev = candle_core::Device::Cpu;
        // one pixel, 6 channels
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = Tensor::from_slice(&v, (1, 6, 1, 1), &dev).unwrap();
        let y: Vec<f32> = lrn(&x, 2, 0.1, 0.75, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for c in 0..6usize {
            let lo = c.saturating_sub(2);
            let hi = (c + 2).min(5);
            let s: f32 = v[lo..=hi].iter().map(|a| a * a).sum();
            let want = v[c] / (1.0f32 + 0.1 * s).powf(0.75);
            assert!(
                (y[c] - want).abs() < 1e-6,
                "channel {c}: {} vs {want}",
                y[c]
            );
        }
    }
}
