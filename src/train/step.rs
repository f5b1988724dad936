//! The training step of a head on frozen features, with its gradients written out by hand
//! instead of taken from candle's autograd: a handful of large ops per step (two matmuls per
//! layer, one fused softmax-cross-entropy pass, one fused optimizer pass per tensor) rather than
//! dozens of small ones. It computes exactly what the autograd path computes (a test holds the
//! two to each other); the autograd path remains for trainable backbone tails and GELU heads.
//!
//! For linear layers `z_k = u_k W_k^T + b_k` with `u_k = dropout(a_k)`:
//! `dW_k = dZ_k^T u_k`, `db_k = sum_rows dZ_k`, `dU_k = dZ_k W_k`, `dA_k = dU_k * mask_k`,
//! `dZ_{k-1} = dA_k * act'(z_{k-1})`; and at the top `dZ = (softmax(z) - q) / B` with the
//! label-smoothed targets `q = (1 - eps) onehot + eps / K`.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::head::{activate, Head};
use crate::error::Result;
use crate::spec::Activation;

/// Whether a head can use the hand-written step.
pub fn supported(head: &Head) -> bool {
    head.activation != Activation::Gelu
}

/// Softmax cross-entropy over logits (B, K) with u32 labels (B,): returns a (B, K + 3) tensor:
/// columns 0..K hold dLoss/dlogits for the mean loss, column K the per-sample loss (smoothed),
/// column K+1 whether the label is the top class, column K+2 whether it is among the top 5
/// (fewer than 5 classes score strictly higher).
struct SoftmaxXent {
    eps: f32,
}

impl candle_core::CustomOp2 for SoftmaxXent {
    fn name(&self) -> &'static str {
        "softmax-xent-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(z), CpuStorage::U32(y)) = (s1, s2) else {
            candle_core::bail!("softmax-xent-grad: f32 logits and u32 labels expected")
        };
        let (Some((z0, z1)), Some((y0, y1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("softmax-xent-grad: contiguous inputs expected")
        };
        let (b, k) = l1.shape().dims2()?;
        let (z, y) = (&z[z0..z1], &y[y0..y1]);
        if y.len() != b {
            candle_core::bail!("softmax-xent-grad: {} labels for {b} rows", y.len())
        }
        let w = k + 3;
        let mut out = vec![0f32; b * w];
        let (eps, inv_b) = (self.eps, 1.0 / b as f32);
        for r in 0..b {
            let zr = &z[r * k..(r + 1) * k];
            let o = &mut out[r * w..(r + 1) * w];
            let label = y[r] as usize;
            if label >= k {
                candle_core::bail!("softmax-xent-grad: label {label} >= {k} classes")
            }
            let max = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for j in 0..k {
                let e = (zr[j] - max).exp();
                o[j] = e;
                sum += e;
            }
            let lse = max + sum.ln();
            let mut loss = (1.0 - eps) * (lse - zr[label]);
            if eps > 0.0 {
                let mean_logp: f32 = zr.iter().map(|v| v - lse).sum::<f32>() / k as f32;
                loss -= eps * mean_logp;
            }
            for (j, oj) in o.iter_mut().take(k).enumerate() {
                let q = eps / k as f32 + if j == label { 1.0 - eps } else { 0.0 };
                *oj = (*oj / sum - q) * inv_b;
            }
            let above = zr.iter().filter(|&&v| v > zr[label]).count();
            o[k] = loss;
            o[k + 1] = if above == 0 { 1.0 } else { 0.0 };
            o[k + 2] = if above < 5 { 1.0 } else { 0.0 };
        }
        Ok((CpuStorage::F32(out), Shape::from((b, w))))
    }

    /// `cpu_fwd` as one kernel, a thread per row (opt-in: `GpuPath::Xent`; see
    /// `xent_grad`). A label out of range gives a row of NaN (labels are checked before
    /// training; a kernel cannot stop with an error).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let (Some((z0, z1)), Some((y0, y1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("softmax-xent-grad: contiguous inputs expected")
        };
        let (b, k) = l1.shape().dims2()?;
        if y1 - y0 != b {
            candle_core::bail!("softmax-xent-grad: {} labels for {b} rows", y1 - y0)
        }
        let dev = &s1.device;
        let z = s1.as_cuda_slice::<f32>()?.slice(z0..z1);
        let y = s2.as_cuda_slice::<u32>()?.slice(y0..y1);
        // SAFETY: the kernel writes all k + 3 values of every row
        let out = unsafe { dev.alloc::<f32>(b * (k + 3))? };
        let f = crate::gpu::function(dev, &crate::gpu::kernels::XENT, "softmax_xent_grad")?;
        let (b32, k32) = (b as u32, k as u32);
        let mut l = f.builder();
        l.arg(&z)
            .arg(&y)
            .arg(&out)
            .arg(&b32)
            .arg(&k32)
            .arg(&self.eps);
        // SAFETY: the argument list matches the kernel's signature in KERNEL
        unsafe { crate::gpu::launch(l, b32) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, k + 3)),
        ))
    }
}

/// (dZ, per-sample loss, top-1, top-5) of the mean smoothed cross-entropy; fused on the CPU
/// (and on a GPU with the `xent` path), tensor ops elsewhere.
/// Sums of columns `from..from + count` of a (rows, width) f32 matrix, each over its rows in
/// order: a (count,) vector. On a GPU one kernel (a thread per column) instead of a reduction
/// per column; the head step sums its loss, top-1 and top-5 columns with it.
struct ColumnSums {
    from: usize,
    count: usize,
}

impl ColumnSums {
    fn check(&self, l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("column-sums: contiguous input expected")
        };
        let (rows, width) = l.shape().dims2()?;
        if self.from + self.count > width || o1 - o0 > u32::MAX as usize {
            candle_core::bail!(
                "column-sums: columns {}..{} of a {rows}x{width} matrix",
                self.from,
                self.from + self.count
            )
        }
        Ok((o0, o1, rows, width))
    }
}

impl candle_core::CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("column-sums: f32 input expected")
        };
        let (o0, o1, rows, width) = self.check(l)?;
        let x = &v[o0..o1];
        let out: Vec<f32> = (0..self.count)
            .map(|j| (0..rows).fold(0f32, |acc, r| acc + x[r * width + self.from + j]))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(self.count)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let (o0, o1, rows, width) = self.check(l)?;
        let dev = &s.device;
        let x = s.as_cuda_slice::<f32>()?.slice(o0..o1);
        // SAFETY: the kernel writes all `count` sums
        let out = unsafe { dev.alloc::<f32>(self.count)? };
        let f = crate::gpu::function(dev, &crate::gpu::kernels::XENT, "column_sums")?;
        let dims = [
            rows as u32,
            width as u32,
            self.from as u32,
            self.count as u32,
        ];
        let mut b = f.builder();
        b.arg(&x).arg(&out);
        for d in &dims {
            b.arg(d);
        }
        // SAFETY: the argument list matches `column_sums` in KERNEL
        unsafe { crate::gpu::launch(b, self.count as u32) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(self.count),
        ))
    }
}

/// dLoss/dlogits of the mean loss, and the batch's (summed loss, top-1 count, top-5 count).
fn xent_grad(z: &Tensor, y: &Tensor, eps: f64, gpu_fused: bool) -> Result<(Tensor, Tensor)> {
    let (b, k) = z.dims2()?;
    // on a GPU one kernel instead of a dozen small ones, when asked (not yet run on a GPU)
    let fused = cfg!(feature = "cuda") && gpu_fused;
    if z.device().is_cpu() || fused {
        let o = z
            .contiguous()?
            .apply_op2_no_bwd(&y.contiguous()?, &SoftmaxXent { eps: eps as f32 })?;
        let sums = if z.device().is_cpu() {
            sums3(
                &o.narrow(1, k, 1)?,
                &o.narrow(1, k + 1, 1)?,
                &o.narrow(1, k + 2, 1)?,
            )?
        } else {
            // one kernel for the three column sums (GPU, opt-in with the fused step)
            o.apply_op1_no_bwd(&ColumnSums { from: k, count: 3 })?
        };
        return Ok((o.narrow(1, 0, k)?.contiguous()?, sums));
    }
    let logp = candle_nn::ops::log_softmax(z, D::Minus1)?;
    let onehot = candle_nn::encoding::one_hot(y.clone(), k, 1f32, 0f32)?;
    let q = ((onehot * (1.0 - eps))? + eps / k as f64)?;
    let dz = ((logp.exp()? - &q)? / b as f64)?;
    let loss = (q * &logp)?.sum_keepdim(1)?.neg()?;
    let true_logit = z.gather(&y.unsqueeze(1)?, 1)?;
    let above = z
        .broadcast_gt(&true_logit)?
        .to_dtype(DType::F32)?
        .sum_keepdim(1)?;
    let top1 = above.eq(0f64)?.to_dtype(DType::F32)?;
    let top5 = above.lt(5f64)?.to_dtype(DType::F32)?;
    Ok((dz, sums3(&loss, &top1, &top5)?))
}

/// (sum of `loss`, of `top1`, of `top5`) as one (3,) vector.
pub fn sums3(loss: &Tensor, top1: &Tensor, top5: &Tensor) -> Result<Tensor> {
    let one = |t: &Tensor| -> Result<Tensor> { Ok(t.sum_all()?.reshape(1)?) };
    Ok(Tensor::cat(&[one(loss)?, one(top1)?, one(top5)?], 0)?)
}

/// Derivative of the activation, from its input `z` and output `a`.
fn activation_grad(a: &Tensor, z: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Relu => z.gt(0f64)?.to_dtype(DType::F32)?,
        Activation::Tanh => (1.0 - a.sqr()?)?,
        Activation::Sigmoid => (a * (1.0 - a)?)?,
        Activation::Gelu => {
            return Err(crate::Error::Other(
                "no hand-written gradient for gelu".into(),
            ));
        }
    })
}

/// A dropout mask drawn exactly as `head::dropout` draws it (same generator consumption).
fn mask(
    shape: &[usize],
    p: f64,
    rng: &mut ChaCha8Rng,
    dev: &candle_core::Device,
) -> Result<Option<Tensor>> {
    if p <= 0.0 {
        return Ok(None);
    }
    let n: usize = shape.iter().product();
    let scale = (1.0 / (1.0 - p)) as f32;
    let m: Vec<f32> = (0..n)
        .map(|_| if rng.gen_bool(1.0 - p) { scale } else { 0.0 })
        .collect();
    Ok(Some(Tensor::from_vec(m, shape, dev)?))
}

/// Gradients of one batch, in `head.vars()` order (w0, b0, w1, b1, ...), plus the batch's
/// (summed loss, top-1 count, top-5 count) as a (3,) vector on the device.
pub struct StepOut {
    pub grads: Vec<Tensor>,
    pub sums: Tensor,
}

pub fn head_step(
    head: &Head,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    rng: &mut ChaCha8Rng,
    backends: &crate::backend::Backends,
) -> Result<StepOut> {
    let x = x.flatten_from(1)?;
    let dev = x.device().clone();
    let last = head.layers.len() - 1;
    // forward, keeping what the backward pass needs
    let mut us = Vec::new(); // layer inputs after dropout
    let mut masks = Vec::new();
    let mut zs = Vec::new(); // pre-activations of hidden layers
    let mut acts = Vec::new(); // activations of hidden layers
    let mut a = x;
    for (k, (w, b)) in head.layers.iter().enumerate() {
        let m = mask(a.dims(), head.dropout, rng, &dev)?;
        let u = match &m {
            Some(m) => a.mul(m)?,
            None => a.clone(),
        };
        let z = u
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        us.push(u);
        masks.push(m);
        if k != last {
            let act = activate(&z, head.activation)?;
            zs.push(z);
            acts.push(act.clone());
            a = act;
        } else {
            a = z;
        }
    }
    let (mut dz, sums) = xent_grad(&a, y, eps, backends.fused(crate::backend::GpuPath::Xent))?;
    let mut grads = vec![None; 2 * head.layers.len()];
    for k in (0..=last).rev() {
        let (w, _) = &head.layers[k];
        grads[2 * k] = Some(dz.t()?.matmul(&us[k])?);
        grads[2 * k + 1] = Some(dz.sum(0)?);
        if k > 0 {
            let mut da = dz.matmul(w.as_tensor())?;
            if let Some(m) = &masks[k] {
                da = da.mul(m)?;
            }
            dz = da.mul(&activation_grad(&acts[k - 1], &zs[k - 1], head.activation)?)?;
        }
    }
    Ok(StepOut {
        grads: grads
            .into_iter()
            .map(|g| g.ok_or_else(|| crate::Error::Other("missing gradient".into())))
            .collect::<Result<_>>()?,
        sums,
    })
}

#[cfg(test)]
mod tests {
    /// The kernel's source, as the device compiles it after the prelude.
    const KERNEL: &str = crate::gpu::kernels::XENT.code;
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    #[test]
    fn column_sums_on_the_host_and_on_the_cpu_sum_the_rows_in_order() {
        use crate::kernel_host::{bytes_f32, f32_bytes, run, values};
        let (rows, width) = (130usize, 15usize);
        let x = values(rows * width, 9, 3.0);
        let op = ColumnSums { from: 12, count: 3 };
        let want: Vec<f32> = (12..15)
            .map(|j| (0..rows).fold(0f32, |a, r| a + x[r * width + j]))
            .collect();
        let cpu: Vec<f32> = Tensor::from_vec(x.clone(), (rows, width), &Device::Cpu)
            .unwrap()
            .apply_op1_no_bwd(&op)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(cpu, want);
        let d = format!(
            "  auto x = input(0);\n  std::vector<float> o(3);\n  launch(1, 32, [&] {{ \
             column_sums((const float*)x.data(), o.data(), {rows}u, {width}u, 12u, 3u); }});\n  \
             output(0, o.data(), 12);"
        );
        assert_eq!(bytes_f32(&run(KERNEL, &d, &[&f32_bytes(&x)])[0]), want);
        // columns past the matrix are an error, not a read out of bounds
        let bad = ColumnSums { from: 13, count: 3 };
        assert!(Tensor::from_vec(x, (rows, width), &Device::Cpu)
            .unwrap()
            .apply_op1_no_bwd(&bad)
            .is_err());
    }

    #[test]
    fn the_xent_kernel_run_on_the_host_equals_the_cpu_op() {
        use crate::kernel_host::{bytes_f32, f32_bytes, run, values};
        let (b, k) = (9usize, 12usize);
        let z = values(b * k, 5, 6.0);
        let y: Vec<u32> = (0..b as u32).map(|i| (i * 5) % k as u32).collect();
        let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        for eps in [0.0f32, 0.1] {
            let want: Vec<f32> = Tensor::from_vec(z.clone(), (b, k), &Device::Cpu)
                .unwrap()
                .apply_op2_no_bwd(
                    &Tensor::from_vec(y.clone(), b, &Device::Cpu).unwrap(),
                    &SoftmaxXent { eps },
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let d = format!(
                "  auto z = input(0); auto y = input(1);\n  std::vector<float> o({});\n  \
                 launch(3, 4, [&] {{ softmax_xent_grad((const float*)z.data(), \
                 (const unsigned int*)y.data(), o.data(), {b}u, {k}u, {eps:?}f); }});\n  \
                 output(0, o.data(), o.size() * 4);",
                b * (k + 3)
            );
            let got = bytes_f32(&run(KERNEL, &d, &[&f32_bytes(&z), &yb])[0]);
            assert_eq!(got.len(), want.len());
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-6 * r.abs().max(1.0),
                    "eps {eps} {i}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn hand_written_gradients_equal_autograd() {
        let dev = Device::Cpu;
        for act in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
            for (hidden, dropout, eps) in [(vec![], 0.0, 0.0), (vec![16, 8], 0.3, 0.1)] {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let head = Head::new(
                    12,
                    5,
                    &crate::spec::HeadSection {
                        hidden: hidden.clone(),
                        activation: act,
                        dropout,
                        init_std: crate::spec::InitStd::Fixed(0.5),
                    },
                    None,
                    &mut rng,
                    &dev,
                )
                .unwrap();
                let x = Tensor::randn(0f32, 1.0, (7, 12), &dev).unwrap();
                let y = Tensor::new(&[0u32, 4, 2, 2, 1, 3, 0], &dev).unwrap();
                let mut r1 = ChaCha8Rng::seed_from_u64(9);
                let out = head_step(&head, &x, &y, eps, &mut r1, &Default::default()).unwrap();
                let mut r2 = ChaCha8Rng::seed_from_u64(9);
                let logits = head.forward(&x, Some(&mut r2)).unwrap();
                let loss = super::super::metrics::cross_entropy(&logits, &y, eps).unwrap();
                let gs = loss.backward().unwrap();
                for (v, g) in head.vars().iter().zip(&out.grads) {
                    let want: Vec<f32> = gs
                        .get(v.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let got: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{act:?} {hidden:?}: {a} vs {b}");
                    }
                }
                let l: f32 = loss.to_scalar().unwrap();
                let ls: f32 = out.sums.to_vec1::<f32>().unwrap()[0];
                assert!((ls / 7.0 - l).abs() < 1e-5, "loss {ls} / 7 vs {l}");
            }
        }
    }
}
