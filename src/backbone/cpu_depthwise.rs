//! Frozen depthwise convolutions on the CPU (one k x k filter per channel: MobileNet's and
//! EfficientNet's), bias and activation included, as one op.
//!
//! A grouped convolution with one channel per group is a matrix product of one output row per
//! group: `gemm` does almost nothing per call there, and candle's grouped convolution runs one
//! convolution per channel. Here each job is a run of channel planes. A plane is copied once
//! into zero-padded buffers of its thread, split by stride phase (stride 2: four buffers, of the
//! even/odd rows x even/odd columns), so that every tap (ki, kj) reads one phase at one fixed
//! offset: for a band of output rows computed `W2` columns wide (the phase's width; the extra
//! columns are dropped at the end), each of the k x k taps is one long contiguous multiply-add
//! `acc[i] += w * phase[i + offset]`, which the compiler vectorises. Bias first, activation
//! while the band is in cache, then the valid columns go to the output. On CPUs with AVX2 and
//! FMA the same code is compiled for them and chosen at run time.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::act::{simd_level, Act, Simd};
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
    s: usize,
    pt: usize,
    pl: usize,
    /// rows and columns of one phase buffer (`ceil(padded side / s)`)
    h2: usize,
    w2: usize,
    /// output rows per band
    band: usize,
}

impl Geom {
    /// Values per phase buffer: its rows, plus a row of slack that the dropped columns of the
    /// last band may read.
    fn phase_len(&self) -> usize {
        (self.h2 + 1) * self.w2 + self.kw
    }
}

/// One plane: `o` (oh*ow) = act(bias + sum of taps) over `x` (h*w). `phases`: the thread's
/// s*s phase buffers (`phase_len` each), `acc` its band accumulator (band*w2).
#[inline(always)]
fn plane<const FMA: bool>(
    g: &Geom,
    x: &[f32],
    k: &[f32],
    bias: f32,
    act: Act,
    (phases, acc): (&mut [f32], &mut [f32]),
    o: &mut [f32],
) {
    let (s, len) = (g.s, g.phase_len());
    phases.fill(0.0);
    // padded pixel (py, px) goes to phase (py % s, px % s) at (py / s, px / s)
    for iy in 0..g.h {
        let py = iy + g.pt;
        let src = &x[iy * g.w..(iy + 1) * g.w];
        let base = (py % s) * s * len + (py / s) * g.w2;
        if s == 1 {
            phases[base + g.pl..base + g.pl + g.w].copy_from_slice(src);
            continue;
        }
        if s == 2 {
            // even input columns go to one column phase, odd ones to the other
            let (a, b) = phases[base..].split_at_mut(len);
            let (first, second) = if g.pl.is_multiple_of(2) {
                (a, b)
            } else {
                (b, a)
            };
            let (o0, o1) = (g.pl / 2, g.pl.div_ceil(2));
            for (m, pair) in src.chunks_exact(2).enumerate() {
                first[o0 + m] = pair[0];
                second[o1 + m] = pair[1];
            }
            if g.w % 2 == 1 {
                let px = g.w - 1 + g.pl;
                phases[base + (px % 2) * len + px / 2] = src[g.w - 1];
            }
            continue;
        }
        for (ix, &v) in src.iter().enumerate() {
            let px = ix + g.pl;
            phases[base + (px % s) * len + px / s] = v;
        }
    }
    let mut oy0 = 0;
    while oy0 < g.oh {
        let rows = g.band.min(g.oh - oy0);
        let acc = &mut acc[..rows * g.w2];
        acc.fill(bias);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let wv = k[ki * g.kw + kj];
                let phase = &phases[((ki % s) * s + kj % s) * len..][..len];
                let off = (oy0 + ki / s) * g.w2 + kj / s;
                let src = &phase[off..off + acc.len()];
                for (a, &b) in acc.iter_mut().zip(src) {
                    *a = if FMA { b.mul_add(wv, *a) } else { *a + wv * b };
                }
            }
        }
        act.apply(acc);
        for (r, row) in acc.chunks_exact(g.w2).enumerate() {
            let oy = oy0 + r;
            o[oy * g.ow..(oy + 1) * g.ow].copy_from_slice(&row[..g.ow]);
        }
        oy0 += rows;
    }
}

/// The plane's inputs: geometry, input plane, kernel, bias, activation.
type PlaneArgs<'a> = (&'a Geom, &'a [f32], &'a [f32], f32, Act);

/// `plane` compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA (`simd_level`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(
    (g, x, k, bias, act): PlaneArgs,
    bufs: (&mut [f32], &mut [f32]),
    o: &mut [f32],
) {
    plane::<true>(g, x, k, bias, act, bufs, o)
}

/// `plane` compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA (`simd_level`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512(
    (g, x, k, bias, act): PlaneArgs,
    bufs: (&mut [f32], &mut [f32]),
    o: &mut [f32],
) {
    plane::<true>(g, x, k, bias, act, bufs, o)
}

/// `plane` on the widest vectors the CPU has.
fn plane_fast(level: Simd, args: PlaneArgs, bufs: (&mut [f32], &mut [f32]), o: &mut [f32]) {
    match level {
        // SAFETY: simd_level() says the CPU has these features
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { plane_avx512(args, bufs, o) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { plane_avx2(args, bufs, o) },
        _ => {
            let (g, x, k, bias, act) = args;
            plane::<false>(g, x, k, bias, act, bufs, o)
        }
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
        let w2 = wp.div_ceil(s);
        let g = Geom {
            h,
            w: wd,
            kh,
            kw,
            oh: (hp - kh) / s + 1,
            ow: (wp - kw) / s + 1,
            s,
            pt,
            pl,
            h2: hp.div_ceil(s),
            w2,
            // about 8 KB of accumulator: it stays in L1 through the k*k taps
            band: (2048 / w2).max(1),
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
        let level = simd_level();
        let act = self.act;
        // enough planes per job for its work to outweigh scheduling it
        let min_len = (8192 / (p * kh * kw).max(1)).max(1);
        out.par_chunks_mut(p)
            .with_min_len(min_len)
            .enumerate()
            .for_each_init(
                || (vec![0f32; s * s * g.phase_len()], vec![0f32; g.band * w2]),
                |(phases, acc), (i, o)| {
                    let ch = i % c;
                    let xin = &x[i * h * wd..(i + 1) * h * wd];
                    let k = &w[ch * kh * kw..(ch + 1) * kh * kw];
                    plane_fast(level, (&g, xin, k, b[ch], act), (phases, acc), o)
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
    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        s: usize,
        pads: [usize; 4],
        act: Act,
    ) -> Tensor {
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
            let op = DepthwiseConv {
                stride: s,
                pads,
                act,
            };
            let got = x.apply_op3_no_bwd(&wt, &b, &op).unwrap();
            let want = reference(&x, &wt, &b, s, pads, act);
            assert_eq!(got.dims(), want.dims(), "{n}x{c}x{h}x{w} k{k} s{s}");
            let (a, e): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (i, (a, e)) in a.iter().zip(&e).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{n}x{c}x{h}x{w} k{k} s{s} [{i}]: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn a_kernel_that_does_not_fit_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let op = DepthwiseConv {
            stride: 1,
            pads: [1; 4],
            act: Act::None,
        };
        let e = x.apply_op3_no_bwd(&w, &b, &op).unwrap_err().to_string();
        assert!(
            e.contains("depthwise conv2d: input 1x2x4x4, kernel 3x1x3x3"),
            "{e}"
        );
    }
}
