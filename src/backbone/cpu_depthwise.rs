//! Frozen depthwise convolutions on the CPU (one k x k filter per channel: MobileNet's and
//! EfficientNet's), bias and activation included, as one op.
//!
//! A grouped convolution with one channel per group is a matrix product of one output row per
//! group: `gemm` does almost nothing per call there, and candle's grouped convolution runs one
//! convolution per channel. Here each job is a run of channel planes; a plane is copied once
//! into a zero-padded buffer of its thread (stride 2: even and odd columns apart), so that each
//! of the k x k taps is a plain multiply-add of one output row by one contiguous buffer row,
//! which the compiler vectorises; the activation is applied while the row is in cache. On CPUs
//! with AVX2 and FMA the same code is compiled for them and chosen at run time.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::act::Act;
use super::cpu_conv::f32_slice;

/// `y = act(depthwise_conv(x, w) + b)` for contiguous f32 NCHW `x`, `w` of shape
/// `[c, 1, kh, kw]`, `b` of c: `pads` = [top, bottom, left, right] (TensorFlow's SAME may be
/// uneven), stride 1 or 2 (or any other, by the general path).
pub(super) struct DepthwiseConv {
    pub stride: usize,
    pub pads: [usize; 4],
    pub act: Act,
}

/// The geometry of one call.
#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    /// padded input rows and columns
    hp: usize,
    wp: usize,
    s: usize,
    pt: usize,
    pl: usize,
}

impl Geom {
    /// Offset in a padded buffer row of the input under output column 0 for tap `kj`.
    #[inline(always)]
    fn col(&self, kj: usize) -> usize {
        if self.s == 2 {
            // even columns first (wp.div_ceil(2) of them), then the odd ones
            (kj / 2) + (kj % 2) * self.wp.div_ceil(2)
        } else {
            kj
        }
    }
}

/// One plane: `o` (oh*ow) = act(bias + sum of taps) over `x` (h*w), `buf` the thread's padded
/// copy (hp*wp).
#[inline(always)]
fn plane<const FMA: bool>(g: &Geom, x: &[f32], k: &[f32], bias: f32, act: Act, buf: &mut [f32], o: &mut [f32]) {
    // the zero-padded (and, for stride 2, column-deinterleaved) copy
    let half = g.wp.div_ceil(2);
    for py in 0..g.hp {
        let row = &mut buf[py * g.wp..(py + 1) * g.wp];
        let iy = py as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            row.fill(0.0);
            continue;
        }
        let src = &x[iy as usize * g.w..(iy as usize + 1) * g.w];
        if g.s == 2 {
            for px in 0..g.wp {
                let ix = px as isize - g.pl as isize;
                let v = if ix >= 0 && (ix as usize) < g.w { src[ix as usize] } else { 0.0 };
                row[(px / 2) + (px % 2) * half] = v;
            }
        } else {
            row[..g.pl].fill(0.0);
            row[g.pl..g.pl + g.w].copy_from_slice(src);
            row[g.pl + g.w..].fill(0.0);
        }
    }
    let step = if g.s == 2 { 1 } else { g.s };
    for (oy, out) in o.chunks_exact_mut(g.ow).enumerate() {
        out.fill(bias);
        for ki in 0..g.kh {
            let prow = &buf[(oy * g.s + ki) * g.wp..(oy * g.s + ki + 1) * g.wp];
            for kj in 0..g.kw {
                let wv = k[ki * g.kw + kj];
                let c0 = g.col(kj);
                if step == 1 {
                    let src = &prow[c0..c0 + g.ow];
                    for (a, &b) in out.iter_mut().zip(src) {
                        *a = if FMA { b.mul_add(wv, *a) } else { *a + wv * b };
                    }
                } else {
                    for (j, a) in out.iter_mut().enumerate() {
                        *a += wv * prow[c0 + j * step];
                    }
                }
            }
        }
        act.apply(out);
    }
}

/// `plane` compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA (`is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(g: &Geom, x: &[f32], k: &[f32], bias: f32, act: Act, buf: &mut [f32], o: &mut [f32]) {
    plane::<true>(g, x, k, bias, act, buf, o)
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "frozen-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, wd) = xl.shape().dims4()?;
        let (o, one, kh, kw) = wl.shape().dims4()?;
        let bo = bl.shape().dims1()?;
        let [pt, pb, pl, pr] = self.pads;
        let (hp, wp) = (h + pt + pb, wd + pl + pr);
        if o != c || one != 1 || bo != c || self.stride == 0 || hp < kh || wp < kw {
            candle_core::bail!(
                "depthwise conv2d: input {n}x{c}x{h}x{wd}, kernel {o}x{one}x{kh}x{kw}, bias {bo}, \
                 stride {}, pads {:?}",
                self.stride,
                self.pads
            )
        }
        let s = self.stride;
        let g = Geom {
            h,
            w: wd,
            kh,
            kw,
            oh: (hp - kh) / s + 1,
            ow: (wp - kw) / s + 1,
            hp,
            wp,
            s,
            pt,
            pl,
        };
        let (x, w, b) = (
            f32_slice(xs, xl, "input")?,
            f32_slice(ws, wl, "kernel")?,
            f32_slice(bs, bl, "bias")?,
        );
        let p = g.oh * g.ow;
        let mut out = vec![0f32; n * c * p];
        if p == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, c, g.oh, g.ow))));
        }
        let fast = has_avx2_fma();
        let act = self.act;
        // enough planes per job for its work to outweigh scheduling it
        let min_len = (8192 / (p * kh * kw)).max(1);
        out.par_chunks_mut(p)
            .with_min_len(min_len)
            .enumerate()
            .for_each_init(
                || vec![0f32; hp * wp],
                |buf, (i, o)| {
                    let ch = i % c;
                    let xin = &x[i * h * wd..(i + 1) * h * wd];
                    let k = &w[ch * kh * kw..(ch + 1) * kh * kw];
                    if fast {
                        // SAFETY: the CPU has AVX2 and FMA (checked above)
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            plane_avx2(&g, xin, k, b[ch], act, buf, o)
                        }
                    } else {
                        plane::<false>(&g, xin, k, b[ch], act, buf, o)
                    }
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((n, c, g.oh, g.ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn vals(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 211) as f32 - 105.0) / 50.0)
            .collect()
    }

    /// candle's grouped convolution on the padded input, + bias, then the activation.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, s: usize, pads: [usize; 4], act: Act) -> Tensor {
        let c = x.dim(1).unwrap();
        let xp = x
            .pad_with_zeros(2, pads[0], pads[1])
            .unwrap()
            .pad_with_zeros(3, pads[2], pads[3])
            .unwrap();
        let y = xp.conv2d(w, 0, s, 1, c).unwrap();
        let y = y.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap()).unwrap();
        act.tensor(&y).unwrap()
    }

    #[test]
    fn depthwise_equals_candles_grouped_convolution() {
        let dev = Device::Cpu;
        let cases = [
            // (n, c, h, w, k, stride, pads, act)
            (2, 3, 9, 11, 3, 1, [1, 1, 1, 1], Act::Silu),
            (1, 4, 8, 8, 3, 2, [0, 1, 0, 1], Act::Relu6),
            (2, 2, 7, 6, 5, 2, [2, 2, 1, 2], Act::None),
            (1, 5, 3, 3, 5, 2, [2, 2, 2, 2], Act::Relu),
            (1, 2, 10, 9, 7, 1, [3, 3, 3, 3], Act::None),
            (1, 3, 9, 9, 3, 3, [0, 0, 0, 0], Act::Silu),
            (3, 1, 1, 1, 3, 1, [1, 1, 1, 1], Act::None),
        ];
        for (n, c, h, w, k, s, pads, act) in cases {
            let x = Tensor::from_vec(vals(n * c * h * w, 1), (n, c, h, w), &dev).unwrap();
            let wt = Tensor::from_vec(vals(c * k * k, 2), (c, 1, k, k), &dev).unwrap();
            let b = Tensor::from_vec(vals(c, 3), c, &dev).unwrap();
            let op = DepthwiseConv { stride: s, pads, act };
            let got = x.apply_op3_no_bwd(&wt, &b, &op).unwrap();
            let want = reference(&x, &wt, &b, s, pads, act);
            assert_eq!(got.dims(), want.dims(), "{n}x{c}x{h}x{w} k{k} s{s}");
            let (a, e): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (i, (a, e)) in a.iter().zip(&e).enumerate() {
                assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{n}x{c}x{h}x{w} k{k} s{s} [{i}]: {a} vs {e}");
            }
        }
    }

    #[test]
    fn a_kernel_that_does_not_fit_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let op = DepthwiseConv { stride: 1, pads: [1; 4], act: Act::None };
        let e = x.apply_op3_no_bwd(&w, &b, &op).unwrap_err().to_string();
        assert!(e.contains("depthwise conv2d: input 1x2x4x4, kernel 3x1x3x3"), "{e}");
    }
}
