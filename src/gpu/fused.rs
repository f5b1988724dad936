//! AlexNet's LRN and 3x3/2 max pooling in one pass (`pool1`, `pool2`). The default path takes
//! four kernels for the LRN (square, banded matrix product, power, divide) and one for the
//! pooling. Here each thread computes one pooled output: the LRN value at each of its window's
//! positions, from the squares of the 2r+1 neighbouring channels, and their maximum. The
//! normalised map is never written.
//!
//! On CUDA this is an nvrtc kernel, used only for frozen f32 maps and only with
//! the `lrn` path (`backend::GpuPath::LrnPool`) until `scripts/gpu-check.sh` has passed with it
//! on a GPU (issue 20). `cpu_fwd` does the same arithmetic in a loop, as the reference the
//! kernel follows line for line. A test holds it to `lrn` followed by `max_pool_valid`.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};

use crate::error::Result;

/// `max_pool_valid(lrn(x, radius, alpha, beta, bias), k, stride)` of f32 NCHW, in one op.
pub struct LrnMaxPool {
    pub radius: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
    pub k: usize,
    pub stride: usize,
}

impl LrnMaxPool {
    /// The op on `x` (any float format; computed in f32, returned in `x`'s format). On a GPU,
    /// f32, bf16 and f16 maps are read and written in their own format by the kernel.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        if !x.device().is_cpu() && matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Ok(x.contiguous()?.apply_op1_no_bwd(self)?);
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(self)?.to_dtype(dtype)?)
    }

    fn out_dims(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        if self.k == 0 || self.stride == 0 || h < self.k || w < self.k {
            candle_core::bail!(
                "lrn-max-pool: a {h}x{w} map is smaller than the {}x{} window",
                self.k,
                self.k
            )
        }
        Ok((
            (h - self.k) / self.stride + 1,
            (w - self.k) / self.stride + 1,
        ))
    }
}

impl candle_core::CustomOp1 for LrnMaxPool {
    fn name(&self) -> &'static str {
        "lrn-max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("lrn-max-pool: f32 input expected")
        };
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("lrn-max-pool: contiguous input expected")
        };
        let (n, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_dims(h, w)?;
        let (x, plane) = (&v[o0..o1], h * w);
        let mut out = vec![0f32; n * c * ho * wo];
        for (i, o) in out.iter_mut().enumerate() {
            // the kernel's index arithmetic: i = ((b * c + ch) * ho + oy) * wo + ox
            let (ox, oy, ch, b) = (
                i % wo,
                (i / wo) % ho,
                (i / (wo * ho)) % c,
                i / (wo * ho * c),
            );
            let img = &x[b * c * plane..(b + 1) * c * plane];
            let (lo, hi) = (
                ch.saturating_sub(self.radius),
                (ch + self.radius).min(c - 1),
            );
            let mut best = f32::NEG_INFINITY;
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let p = (oy * self.stride + ky) * w + ox * self.stride + kx;
                    let mut sum = 0f32;
                    for q in lo..=hi {
                        let v = img[q * plane + p];
                        sum += v * v;
                    }
                    let d = self.bias + self.alpha * sum;
                    let v = img[ch * plane + p];
                    let y = if self.beta == 0.75 {
                        v / (d.sqrt() * d.sqrt().sqrt())
                    } else {
                        v / d.powf(self.beta)
                    };
                    best = best.max(y);
                }
            }
            *o = best;
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        st: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("lrn-max-pool: contiguous input expected")
        };
        let (n, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_dims(h, w)?;
        let total = n * c * ho * wo;
        if total > u32::MAX as usize || o1 - o0 > u32::MAX as usize {
            candle_core::bail!("lrn-max-pool: {total} outputs in one batch is too many")
        }
        match st.dtype() {
            DType::F32 => self.launch::<f32>(st, (o0, o1), "lrn_max_pool_f32", l),
            DType::BF16 => self.launch::<half::bf16>(st, (o0, o1), "lrn_max_pool_bf16", l),
            DType::F16 => self.launch::<half::f16>(st, (o0, o1), "lrn_max_pool_f16", l),
            d => candle_core::bail!("lrn-max-pool: {d:?} maps are not supported"),
        }
    }
}

#[cfg(feature = "cuda")]
impl LrnMaxPool {
    fn launch<T>(
        &self,
        st: &candle_core::CudaStorage,
        (o0, o1): (usize, usize),
        name: &'static str,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)>
    where
        T: candle_core::cuda::CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr,
    {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let (n, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_dims(h, w)?;
        let total = n * c * ho * wo;
        let dev = &st.device;
        let x = st.as_cuda_slice::<T>()?.slice(o0..o1);
        // SAFETY: every one of the `total` values is written by the kernel below
        let y = unsafe { dev.alloc::<T>(total)? };
        let f = crate::gpu::function(dev, &crate::gpu::kernels::LRN_POOL, name)?;
        let dims: [u32; 9] = [
            n as u32,
            c as u32,
            h as u32,
            w as u32,
            ho as u32,
            wo as u32,
            self.k as u32,
            self.stride as u32,
            self.radius as u32,
        ];
        let mut b = f.builder();
        b.arg(&x).arg(&y);
        for d in &dims {
            b.arg(d);
        }
        b.arg(&self.alpha).arg(&self.beta).arg(&self.bias);
        // SAFETY: the argument list matches the kernel's signature in KERNEL
        unsafe { crate::gpu::launch(b, total as u32) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from((n, c, ho, wo)),
        ))
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's source, as the device compiles it after the prelude.
    const KERNEL: &str = crate::gpu::kernels::LRN_POOL.code;
    use super::*;
    use crate::arch::alexnet::{LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_RADIUS};
    use crate::backbone::layers::{lrn, max_pool_valid};
    use candle_core::Device;

    #[test]
    fn in_bf16_and_f16_the_kernel_rounds_the_f32_result_once() {
        // the kernel widens each value, computes in f32 and narrows the result: the CPU
        // reference on the widened map, narrowed to nearest even, to the bit
        use crate::kernel_host::{bytes_u16, run, u16_bytes, values};
        let (n, c, h, w) = (2usize, 9usize, 7usize, 7usize);
        let op = LrnMaxPool {
            radius: 2,
            alpha: 0.05,
            beta: 0.75,
            bias: 1.0,
            k: 3,
            stride: 2,
        };
        let (ho, wo) = op.out_dims(h, w).unwrap();
        let total = n * c * ho * wo;
        for (fmt, narrow, widen) in crate::kernel_host::HALF_FORMATS {
            let x: Vec<u16> = values(n * c * h * w, 4, 5.0)
                .iter()
                .map(|v| narrow(*v))
                .collect();
            let wide: Vec<f32> = x.iter().map(|v| widen(*v)).collect();
            let want: Vec<u16> = crate::kernel_host::cpu_op1(wide, (n, c, h, w), &op)
                .iter()
                .map(|v| narrow(*v))
                .collect();
            let d = format!(
                "  auto x = input(0);\n  std::vector<unsigned short> o({total});\n  \
                 launch({}, 32, [&] {{ lrn_max_pool_{fmt}((const unsigned short*)x.data(), \
                 o.data(), {n}u, {c}u, {h}u, {w}u, {ho}u, {wo}u, 3u, 2u, 2u, 0.05f, 0.75f, \
                 1.0f); }});\n  output(0, o.data(), o.size() * 2);",
                total.div_ceil(32)
            );
            let got = bytes_u16(&run(KERNEL, &d, &[&u16_bytes(&x)])[0]);
            assert_eq!(got, want, "{fmt}");
        }
    }

    #[test]
    fn the_kernel_run_on_the_host_equals_the_cpu_reference() {
        use crate::kernel_host::{bytes_f32, f32_bytes, run, values};
        let (n, c, h, w) = (2usize, 7usize, 9usize, 11usize);
        let x = values(n * c * h * w, 3, 3.0);
        for beta in [0.75f32, 0.6] {
            let op = LrnMaxPool {
                radius: 2,
                alpha: 0.05,
                beta,
                bias: 1.0,
                k: 3,
                stride: 2,
            };
            let want = crate::kernel_host::cpu_op1(x.clone(), (n, c, h, w), &op);
            let (ho, wo) = op.out_dims(h, w).unwrap();
            let total = n * c * ho * wo;
            let d = format!(
                "  auto x = input(0);\n  std::vector<float> o({total});\n  \
                 launch({}, 64, [&] {{ lrn_max_pool_f32((const float*)x.data(), o.data(), {n}u, {c}u, \
                 {h}u, {w}u, {ho}u, {wo}u, 3u, 2u, 2u, 0.05f, {beta:?}f, 1.0f); }});\n  \
                 output(0, o.data(), o.size() * 4);",
                total.div_ceil(64)
            );
            let got = bytes_f32(&run(KERNEL, &d, &[&f32_bytes(&x)])[0]);
            assert_eq!(got.len(), want.len());
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-6 * r.abs().max(1.0),
                    "beta {beta} {i}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn one_pass_equals_lrn_then_pooling() {
        let dev = Device::Cpu;
        // conv1's and conv2's output shapes (fewer images and channels), ReLU'd values
        for (n, c, h, w, beta) in [
            (2, 16, 55, 55, LRN_BETA),
            (1, 7, 27, 27, LRN_BETA),
            (2, 5, 9, 12, 0.6),
        ] {
            let v: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 7919 % 1000) as f32 * 0.37 - 60.0).max(0.0))
                .collect();
            let x = Tensor::from_vec(v, (n, c, h, w), &dev).unwrap();
            let want = max_pool_valid(
                &lrn(&x, LRN_RADIUS, LRN_ALPHA, beta, LRN_BIAS).unwrap(),
                3,
                2,
            )
            .unwrap();
            let op = LrnMaxPool {
                radius: LRN_RADIUS,
                alpha: LRN_ALPHA as f32,
                beta: beta as f32,
                bias: LRN_BIAS as f32,
                k: 3,
                stride: 2,
            };
            let got = op.apply(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let (g, w2) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            // the same sums in the same order: equal to the bit
            assert!(g == w2, "{n}x{c}x{h}x{w}: fused LRN + pool differs");
        }
        let tiny = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let op = LrnMaxPool {
            radius: 2,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
            k: 3,
            stride: 2,
        };
        assert!(
            op.apply(&tiny).is_err(),
            "a map smaller than the window is an error"
        );
    }
}
