//! Preprocessing in one pass: u8 NHWC images to f32 NCHW at the backbone's input size
//! (bilinear, TF1 or half-pixel), as one op. `to_input` otherwise takes a type conversion, two
//! transposes with copies and two matrix products.
//!
//! On CUDA this is one nvrtc kernel, with one thread per output value. It is off by default:
//! set `RUNNER_GPU_FUSED=1` to use it. No GPU has run it yet; it becomes the default once
//! `scripts/gpu-check.sh` has passed with it on one (issue 20).
//!
//! The CPU does the same arithmetic in a loop (`cpu_fwd`). That loop is the reference the
//! kernel follows line for line, and a test holds it to `to_input`.
//!
//! The arithmetic is the same as `to_input`'s:
//! - Each output row `oy` reads source rows `lo`/`hi` with weights `1 - f`/`f`, where
//!   `src = oy * in / out` for TF1 or `(oy + 0.5) * in / out - 0.5` for half-pixel.
//!   These are computed in f64, floored, and clamped to the image.
//! - Rows are interpolated first, then columns, in f32.

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use super::bilinear::bilinear_taps;
use crate::error::Result;
use crate::spec::ResizeMethod;

/// u8 (N, H, W, 3) -> f32 (N, 3, size, size).
pub struct FusedResize {
    pub size: usize,
    pub method: ResizeMethod,
}

impl FusedResize {
    /// The op on a u8 (N, H, W, 3) tensor.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.apply_op1_no_bwd(self)?)
    }

    #[cfg(feature = "cuda")]
    fn method_code(&self) -> u32 {
        match self.method {
            ResizeMethod::Tf1 => 0,
            ResizeMethod::HalfPixel => 1,
        }
    }
}

impl candle_core::CustomOp1 for FusedResize {
    fn name(&self) -> &'static str {
        "fused-resize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::U8(px) = s else {
            candle_core::bail!("fused-resize: u8 pixels expected")
        };
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("fused-resize: contiguous pixels expected")
        };
        let (n, h, w, c) = l.shape().dims4()?;
        if c != 3 {
            candle_core::bail!("fused-resize: {c} channels, expected 3")
        }
        let (px, s) = (&px[o0..o1], self.size);
        let ty: Vec<_> = (0..s)
            .map(|o| bilinear_taps(o, h, s, self.method))
            .collect();
        let tx: Vec<_> = (0..s)
            .map(|o| bilinear_taps(o, w, s, self.method))
            .collect();
        let mut out = vec![0f32; n * 3 * s * s];
        for (i, v) in out.iter_mut().enumerate() {
            // the kernel's index arithmetic: i = ((b * 3 + c) * s + oy) * s + ox
            let (ox, oy, ch, b) = (i % s, (i / s) % s, (i / (s * s)) % 3, i / (3 * s * s));
            let img = &px[b * h * w * 3..(b + 1) * h * w * 3];
            let p = |y: usize, x: usize| img[(y * w + x) * 3 + ch] as f32;
            let ((ylo, yhi, fy), (xlo, xhi, fx)) = (ty[oy], tx[ox]);
            let a0 = (1.0 - fy) * p(ylo, xlo) + fy * p(yhi, xlo);
            let a1 = (1.0 - fy) * p(ylo, xhi) + fy * p(yhi, xhi);
            *v = (1.0 - fx) * a0 + fx * a1;
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 3, s, s))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        st: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("fused-resize: contiguous pixels expected")
        };
        let (n, h, w, c) = l.shape().dims4()?;
        if c != 3 {
            candle_core::bail!("fused-resize: {c} channels, expected 3")
        }
        let s = self.size;
        let total = n * 3 * s * s;
        if total > u32::MAX as usize {
            candle_core::bail!("fused-resize: {total} outputs in one batch is too many")
        }
        let dev = &st.device;
        let x = st.as_cuda_slice::<u8>()?.slice(o0..o1);
        // SAFETY: every one of the `total` values is written by the kernel below
        let y = unsafe { dev.alloc::<f32>(total)? };
        let f = crate::gpu::function(dev, &crate::gpu::kernels::RESIZE, "fused_resize")?;
        let mut b = f.builder();
        let (n32, h32, w32, s32, m32) =
            (n as u32, h as u32, w as u32, s as u32, self.method_code());
        b.arg(&x)
            .arg(&y)
            .arg(&n32)
            .arg(&h32)
            .arg(&w32)
            .arg(&s32)
            .arg(&m32);
        // SAFETY: the argument list matches the kernel's signature in KERNEL
        unsafe { crate::gpu::launch(b, total as u32) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from((n, 3, s, s)),
        ))
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's source, as the device compiles it after the prelude.
    const KERNEL: &str = crate::gpu::kernels::RESIZE.code;
    use super::*;

    #[test]
    fn the_kernel_run_on_the_host_equals_the_cpu_reference() {
        use crate::kernel_host::{bytes_f32, run};
        let (n, h, w) = (2usize, 5usize, 7usize);
        let px: Vec<u8> = (0..n * h * w * 3).map(|i| (i * 37 % 256) as u8).collect();
        for (method, code) in [(ResizeMethod::Tf1, 0), (ResizeMethod::HalfPixel, 1)] {
            for s in [11usize, 3] {
                let op = FusedResize { size: s, method };
                let want = crate::kernel_host::cpu_op1(px.clone(), (n, h, w, 3), &op);
                let total = n * 3 * s * s;
                let d = format!(
                    "  auto px = input(0);\n  std::vector<float> o({total});\n  \
                     launch({}, 32, [&] {{ fused_resize(px.data(), o.data(), {n}u, {h}u, {w}u, \
                     {s}u, {code}u); }});\n  output(0, o.data(), o.size() * 4);",
                    total.div_ceil(32)
                );
                let got = bytes_f32(&run(KERNEL, &d, &[&px])[0]);
                assert_eq!(got, want, "{method:?} to {s}");
            }
        }
    }
}
