//! LayerNorm over the channels of an NCHW map at each pixel (ConvNeXt's `LayerNorm2d` and its
//! channels-last `LayerNorm` inside a block), frozen, on the CPU, as one op: per image, a band of
//! pixels at a time, the mean over the channels, then the variance of the deviations, then
//! `(x - mean) / sqrt(var + eps) * gamma + beta`, each pass a run over contiguous pixels of one
//! channel that the compiler vectorises.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::cpu_conv::f32_slice;

/// Pixels per band: the band's rows of every channel stay in cache through the three passes.
const BAND: usize = 256;

/// `y[c, p] = (x[c, p] - mean_p) / sqrt(var_p + eps) * gamma[c] + beta[c]` over contiguous f32
/// NCHW `x`; `gamma` and `beta` of C.
pub(super) struct ChannelNorm {
    pub eps: f32,
}

impl CustomOp3 for ChannelNorm {
    fn name(&self) -> &'static str {
        "frozen-channel-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (gc, bc) = (gl.shape().dims1()?, bl.shape().dims1()?);
        if gc != c || bc != c || c == 0 {
            candle_core::bail!("channel norm: input {n}x{c}x{h}x{w}, scale {gc}, shift {bc}")
        }
        let (x, g, b) = (
            f32_slice(xs, xl, "input")?,
            f32_slice(gs, gl, "scale")?,
            f32_slice(bs, bl, "shift")?,
        );
        let p = h * w;
        let mut out = vec![0f32; n * c * p];
        if p == 0 {
            return Ok((CpuStorage::F32(out), xl.shape().clone()));
        }
        let bands = p.div_ceil(BAND);
        let inv_c = 1.0 / c as f32;
        let eps = self.eps;
        // jobs: (image, band of pixels); each writes its pixels of every channel
        let jobs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..bands).map(move |k| (i, k)))
            .collect();
        let dst = super::cpu_conv::OutPtr::new(out.as_mut_ptr());
        jobs.into_par_iter().for_each_init(
            || (vec![0f32; BAND], vec![0f32; BAND]),
            |(mean, rstd), (img, band)| {
                let p0 = band * BAND;
                let len = BAND.min(p - p0);
                let (mean, rstd) = (&mut mean[..len], &mut rstd[..len]);
                let xi = &x[img * c * p..(img + 1) * c * p];
                let row = |ch: usize| &xi[ch * p + p0..ch * p + p0 + len];
                mean.fill(0.0);
                for ch in 0..c {
                    for (m, &v) in mean.iter_mut().zip(row(ch)) {
                        *m += v;
                    }
                }
                mean.iter_mut().for_each(|m| *m *= inv_c);
                rstd.fill(0.0);
                for ch in 0..c {
                    for ((s, &m), &v) in rstd.iter_mut().zip(mean.iter()).zip(row(ch)) {
                        *s += (v - m) * (v - m);
                    }
                }
                rstd.iter_mut()
                    .for_each(|s| *s = 1.0 / (*s * inv_c + eps).sqrt());
                for ch in 0..c {
                    // SAFETY: pixels p0..p0+len of channel ch of image img belong to this job
                    // alone, and lie inside the n*c*p buffer (see OutPtr)
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add((img * c + ch) * p + p0), len)
                    };
                    let (gc, bc) = (g[ch], b[ch]);
                    for (((o, &v), &m), &r) in
                        o.iter_mut().zip(row(ch)).zip(mean.iter()).zip(rstd.iter())
                    {
                        *o = (v - m) * r * gc + bc;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn channel_norm_equals_candles_layer_norm_over_channels() {
        let dev = Device::Cpu;
        for (n, c, h, w) in [(2, 5, 3, 4), (1, 96, 17, 19), (3, 7, 1, 1)] {
            let vals: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 30.0 + 3.0)
                .collect();
            let x = Tensor::from_vec(vals, (n, c, h, w), &dev).unwrap();
            let g = Tensor::from_vec(
                (0..c)
                    .map(|i| 0.5 + i as f32 / c as f32)
                    .collect::<Vec<_>>(),
                c,
                &dev,
            )
            .unwrap();
            let b = Tensor::from_vec(
                (0..c).map(|i| i as f32 * 0.1 - 0.2).collect::<Vec<_>>(),
                c,
                &dev,
            )
            .unwrap();
            let got = x
                .apply_op3_no_bwd(&g, &b, &ChannelNorm { eps: 1e-6 })
                .unwrap();
            // candle's layer norm over the last axis of the channels-last map
            let xt = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let want = candle_nn::ops::layer_norm(&xt, &g, &b, 1e-6)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let (a, e): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for (a, e) in a.iter().zip(&e) {
                assert!(
                    (a - e).abs() <= 2e-5 * e.abs().max(1.0),
                    "{n}x{c}x{h}x{w}: {a} vs {e}"
                );
            }
        }
    }
}
