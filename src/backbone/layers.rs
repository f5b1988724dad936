//! Layer operations with TensorFlow's semantics, shared by the backbones.

use candle_core::{DType, Tensor, D};

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
        Ok(Param {
            w: weights.tensor(&format!("{name}.weight"), device)?,
            b: weights.tensor(&format!("{name}.bias"), device)?,
            trainable: false,
        })
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
) -> Result<Tensor> {
    let x = &x.to_dtype(w.dtype())?;
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let (pt, pb, pl, pr) = if same {
        let (pt, pb) = same_padding(h, kh, stride);
        let (pl, pr) = same_padding(wd, kw, stride);
        (pt, pb, pl, pr)
    } else {
        (0, 0, 0, 0)
    };
    // Frozen layers on the CPU: our im2col (parallel, reading groups and padding in place) and
    // one matrix product per image and group. Trainable layers keep candle's op (it has a
    // backward pass).
    // (RUNNER_CANDLE_CONV=1 forces candle's op, for A/B benchmarks.)
    if x.device().is_cpu()
        && x.dtype() == DType::F32
        && !x.track_op()
        && !w.track_op()
        && std::env::var_os("RUNNER_CANDLE_CONV").is_none()
    {
        let y = conv2d_im2col(x, w, stride, [pt, pb, pl, pr], groups)?;
        let c = b.dim(0)?;
        return Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?);
    }
    let y = if same {
        let (pt, pb) = same_padding(h, kh, stride);
        let (pl, pr) = same_padding(wd, kw, stride);
        if pt == pb && pl == pr && pt == pl {
            x.conv2d(w, pt, stride, 1, groups)?
        } else {
            let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
            xp.conv2d(w, 0, stride, 1, groups)?
        }
    } else {
        x.conv2d(w, 0, stride, 1, groups)?
    };
    let c = b.dim(0)?;
    Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
}

/// Convolution as im2col + matrix products, for f32 NCHW on the CPU: `pads` = [top, bottom,
/// left, right] (TF's SAME may be uneven), `groups` equal splits of input channels and kernels.
/// Images go through in chunks whose column matrix stays near 32 MB.
fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pads: [usize; 4],
    groups: usize,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (n, c, h, wd) = x.dims4()?;
    let (o, cg, kh, kw) = w.dims4()?;
    if groups == 0 || c != cg * groups || o % groups != 0 || stride == 0 {
        return Err(crate::Error::Other(format!(
            "conv2d: input of {c} channels, kernel {o}x{cg}x{kh}x{kw}, {groups} groups"
        )));
    }
    let [pt, pb, pl, pr] = pads;
    let (hp, wp) = (h + pt + pb, wd + pl + pr);
    if hp < kh || wp < kw {
        return Err(crate::Error::Other(format!(
            "conv2d: kernel {kh}x{kw} larger than the padded input {hp}x{wp}"
        )));
    }
    let (oh, ow) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let og = o / groups;
    let k = cg * kh * kw;
    let per_image = k * oh * ow * 4;
    let chunk = (32 << 20) / per_image.max(1);
    let chunk = chunk.clamp(1, n.max(1));
    let wg: Vec<Tensor> = (0..groups)
        .map(|g| w.narrow(0, g * og, og)?.reshape((og, k)))
        .collect::<candle_core::Result<_>>()?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        let mut per_group = Vec::with_capacity(groups);
        for (g, wg) in wg.iter().enumerate() {
            let op = Im2Col {
                n0: start,
                n: m,
                c0: g * cg,
                cg,
                kh,
                kw,
                stride,
                pt,
                pl,
                oh,
                ow,
            };
            let cols = x.apply_op1_no_bwd(&op)?; // (m, k, oh*ow)
            per_group.push(wg.broadcast_left(m)?.matmul(&cols)?); // (m, og, oh*ow)
        }
        // (cat of one tensor is that tensor)
        outs.push(Tensor::cat(&per_group, 1)?.reshape((m, o, oh, ow))?);
        start += m;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// The column matrices of images `n0..n0+n`, channels `c0..c0+cg` of a contiguous f32 NCHW
/// tensor: (n, cg*kh*kw, oh*ow), zeros where the window reaches into the padding.
struct Im2Col {
    n0: usize,
    n: usize,
    c0: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(v) = s else {
            candle_core::bail!("im2col: f32 input expected")
        };
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("im2col: contiguous input expected")
        };
        let (_, c, h, w) = l.shape().dims4()?;
        let x = &v[o0..o1];
        let p = self.oh * self.ow;
        let k = self.cg * self.kh * self.kw;
        let mut out = vec![0f32; self.n * k * p];
        out.par_chunks_mut(p.max(1))
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, r) = (self.n0 + row / k, row % k);
                let (ch, ki, kj) = (
                    self.c0 + r / (self.kh * self.kw),
                    (r / self.kw) % self.kh,
                    r % self.kw,
                );
                let plane = &x[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
                for oy in 0..self.oh {
                    let iy = (oy * self.stride + ki) as isize - self.pt as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    let d = &mut dst[oy * self.ow..(oy + 1) * self.ow];
                    for (ox, dv) in d.iter_mut().enumerate() {
                        let ix = (ox * self.stride + kj) as isize - self.pl as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *dv = src[ix as usize];
                        }
                    }
                }
            });
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((self.n, k, p)),
        ))
    }
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
        let three_quarters = self.beta == 0.75;
        out.par_chunks_mut(img.max(1))
            .zip(x.par_chunks(img.max(1)))
            .for_each(|(o, xi)| {
                let sq: Vec<f32> = xi.iter().map(|v| v * v).collect();
                let mut sum = vec![0f32; plane];
                for ch in 0..c {
                    sum.iter_mut().for_each(|s| *s = 0.0);
                    let lo = ch.saturating_sub(self.radius);
                    let hi = (ch + self.radius).min(c - 1);
                    for k in lo..=hi {
                        for (s, q) in sum.iter_mut().zip(&sq[k * plane..(k + 1) * plane]) {
                            *s += q;
                        }
                    }
                    let xs = &xi[ch * plane..(ch + 1) * plane];
                    let os = &mut o[ch * plane..(ch + 1) * plane];
                    for ((o, &xv), &s) in os.iter_mut().zip(xs).zip(&sum) {
                        let d = self.bias + self.alpha * s;
                        *o = if three_quarters {
                            xv / (d.sqrt() * d.sqrt().sqrt())
                        } else {
                            xv / d.powf(self.beta)
                        };
                    }
                }
            });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Max pooling with a square window, TF "VALID" padding.
pub fn max_pool_valid(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(k, stride)?)
}

/// Fully connected layer: `x @ w^T + b` with `w` as `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let x = &x.to_dtype(w.dtype())?;
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// Flatten all but the batch dimension.
pub fn flatten(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?)
}

/// Softmax over the last dimension (for predictions).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let y = conv2d(&xs, w.as_tensor(), &b, 1, true, 2).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some(), "no gradient through conv2d");
    }

    #[test]
    fn im2col_conv_matches_candle() {
        let dev = candle_core::Device::Cpu;
        let xv: Vec<f32> = (0..2 * 4 * 9 * 8)
            .map(|i| ((i * 31 % 17) as f32) - 8.0)
            .collect();
        let wv: Vec<f32> = (0..6 * 2 * 3 * 5)
            .map(|i| ((i * 7 % 11) as f32) * 0.1 - 0.5)
            .collect();
        let x = Tensor::from_vec(xv, (2, 4, 9, 8), &dev).unwrap();
        let w = Tensor::from_vec(wv, (6, 2, 3, 5), &dev).unwrap();
        for (stride, pads) in [(1, [1, 1, 2, 2]), (2, [0, 1, 1, 2]), (3, [0, 0, 0, 0])] {
            let got = conv2d_im2col(&x, &w, stride, pads, 2).unwrap();
            let [pt, pb, pl, pr] = pads;
            let xp = x
                .pad_with_zeros(2, pt, pb)
                .unwrap()
                .pad_with_zeros(3, pl, pr)
                .unwrap();
            let want = xp.conv2d(&w, 0, stride, 1, 2).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "stride {stride} pads {pads:?}: max diff {d}");
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
