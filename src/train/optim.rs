//! Optimizers, written out so their semantics are exactly the documented ones:
//!
//! - `adam`: TensorFlow's `AdamOptimizer` — `lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)`,
//!   `w -= lr_t * m / (sqrt(v) + eps)` (eps outside the bias correction). `weight_decay`, if set,
//!   is added to the gradient (L2).
//! - `adamw`: decoupled weight decay as in PyTorch's AdamW — `w -= lr * wd * w`, then
//!   `w -= lr * m_hat / (sqrt(v_hat) + eps)`.
//! - `sgd`: heavy-ball momentum as in PyTorch — `buf = momentum * buf + g (+ wd * w)`,
//!   `w -= lr * buf`. (candle's own SGD has no momentum.)
//!
//! Parameters come in groups with a learning-rate multiplier (pretrained layers can train slower).

use std::sync::Mutex;

use candle_core::{backprop::GradStore, CpuStorage, Layout, Tensor, Var};

use crate::error::Result;
use crate::spec::Optimizer as Kind;

pub struct Settings {
    pub kind: Kind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// The update as one kernel per parameter on CUDA (the `optim` opt-in GPU path).
    pub gpu_fused: bool,
}

struct Slot {
    var: Var,
    lr_mult: f64,
    m: Option<Tensor>,
    v: Option<Tensor>,
    /// Fast path: moments kept by the fused step, updated with the weights in one pass (on the
    /// CPU always; on CUDA with `Settings::gpu_fused`).
    fused: Option<Mutex<Moments>>,
}

/// The two moment buffers of one parameter, where the fused step keeps them.
#[derive(Default)]
struct Moments {
    host: (Vec<f32>, Vec<f32>),
    #[cfg(feature = "cuda")]
    device: Option<(
        candle_core::cuda::cudarc::driver::CudaSlice<f32>,
        candle_core::cuda::cudarc::driver::CudaSlice<f32>,
    )>,
}

pub struct Optimizer {
    s: Settings,
    slots: Vec<Slot>,
    step: u64,
    /// Use the fused single-pass update on CPU (the tensor-op path is the reference and the
    /// path on other devices).
    fused: bool,
}

/// One optimizer update of one parameter, fused into a single pass over (w, g, m, v).
struct FusedStep<'a> {
    kind: Kind,
    lr: f32,
    /// Adam: lr * sqrt(1 - b2^t) / (1 - b1^t)
    lr_t: f32,
    bc1: f32,
    bc2: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    momentum: f32,
    first: bool,
    state: &'a Mutex<Moments>,
}

impl FusedStep<'_> {
    /// `optimizer_step`'s `kind` and its float arguments after `n`, in order: lr, lr_t, 1/bc1,
    /// 1/bc2, 1 - lr*wd, b1, b2, eps, wd, and the momentum (0 on the first SGD step).
    #[cfg_attr(not(any(test, feature = "cuda")), allow(dead_code))]
    fn kernel_args(&self) -> (u32, [f32; 10]) {
        let kind = match self.kind {
            Kind::Adam => 0,
            Kind::Adamw => 1,
            Kind::Sgd => 2,
        };
        let mom = if self.first { 0.0 } else { self.momentum };
        (
            kind,
            [
                self.lr,
                self.lr_t,
                1.0 / self.bc1,
                1.0 / self.bc2,
                1.0 - self.lr * self.wd,
                self.b1,
                self.b2,
                self.eps,
                self.wd,
                mom,
            ],
        )
    }
}

impl candle_core::InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (dst, g) else {
            candle_core::bail!("fused optimizer step: f32 parameters expected")
        };
        let (Some((w0, w1)), Some((g0, g1))) =
            (dst_l.contiguous_offsets(), g_l.contiguous_offsets())
        else {
            candle_core::bail!("fused optimizer step: contiguous tensors expected")
        };
        let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
        if w.len() != g.len() {
            candle_core::bail!("fused optimizer step: size mismatch")
        }
        let mut st = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("optimizer state poisoned".into()))?;
        let (m, v) = &mut st.host;
        if m.len() != w.len() {
            *m = vec![0.0; w.len()];
            *v = vec![0.0; w.len()];
        }
        let (b1, b2, eps, wd, lr) = (self.b1, self.b2, self.eps, self.wd, self.lr);
        // zipped iterators (no bounds checks) with the branches hoisted: the loops vectorize
        let l2 = |w: f32, g: f32| if wd > 0.0 { g + wd * w } else { g };
        match self.kind {
            Kind::Adam => {
                let lr_t = self.lr_t;
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = l2(*w, g);
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w -= lr_t * *m / (v.sqrt() + eps);
                }
            }
            Kind::Adamw => {
                let (ibc1, ibc2, decay) = (1.0 / self.bc1, 1.0 / self.bc2, 1.0 - lr * wd);
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w = *w * decay - lr * (*m * ibc1) / ((*v * ibc2).sqrt() + eps);
                }
            }
            Kind::Sgd => {
                let mom = if self.first { 0.0 } else { self.momentum };
                for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                    let g = l2(*w, g);
                    *m = mom * *m + g;
                    *w -= lr * *m;
                }
            }
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        g: &candle_core::CudaStorage,
        g_l: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let (Some((w0, w1)), Some((g0, g1))) =
            (dst_l.contiguous_offsets(), g_l.contiguous_offsets())
        else {
            candle_core::bail!("fused optimizer step: contiguous tensors expected")
        };
        let n = w1 - w0;
        if g1 - g0 != n || n > u32::MAX as usize {
            candle_core::bail!("fused optimizer step: size mismatch ({n} and {})", g1 - g0)
        }
        let dev = g.device.clone();
        let mut st = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("optimizer state poisoned".into()))?;
        if st.device.as_ref().is_none_or(|(m, _)| m.len() != n) {
            st.device = Some((dev.alloc_zeros::<f32>(n)?, dev.alloc_zeros::<f32>(n)?));
        }
        let Some((m, v)) = st.device.as_mut() else {
            candle_core::bail!("fused optimizer step: no moment buffers")
        };
        let gv = g.as_cuda_slice::<f32>()?.slice(g0..g1);
        let mut wv = dst.as_cuda_slice_mut::<f32>()?.slice_mut(w0..w1);
        let f = crate::gpu::function(&dev, &crate::gpu::kernels::OPTIM, "optimizer_step")?;
        let (kind, scalars) = self.kernel_args();
        let n32 = n as u32;
        let mut b = f.builder();
        b.arg(&mut wv).arg(&gv).arg(m).arg(v).arg(&n32).arg(&kind);
        for x in &scalars {
            b.arg(x);
        }
        // SAFETY: the arguments match `optimizer_step`'s signature; w, g, m and v hold n values
        unsafe { crate::gpu::launch(b, n32) }?;
        Ok(())
    }
}

impl Optimizer {
    /// `groups`: (variables, learning-rate multiplier).
    pub fn new(s: Settings, groups: Vec<(Vec<Var>, f64)>) -> Self {
        let gpu_fused = s.gpu_fused;
        let slots = groups
            .into_iter()
            .flat_map(|(vars, lr_mult)| {
                vars.into_iter().map(move |var| {
                    let gpu = cfg!(feature = "cuda")
                        && var.device().is_cuda()
                        && var.dtype() == candle_core::DType::F32
                        && gpu_fused;
                    let fused = (var.device().is_cpu() || gpu).then(Mutex::default);
                    Slot {
                        var,
                        lr_mult,
                        m: None,
                        v: None,
                        fused,
                    }
                })
            })
            .collect();
        Optimizer {
            s,
            slots,
            step: 0,
            fused: true,
        }
    }

    /// Always use the tensor-op update (the reference implementation).
    pub fn unfused(mut self) -> Self {
        self.fused = false;
        self
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let g: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| grads.get(s.var.as_tensor()).cloned())
            .collect();
        self.apply(&g, lr)
    }

    /// One update from gradients given in the order the variables were passed to `new`.
    pub fn step_with(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let g: Vec<Option<Tensor>> = grads.iter().cloned().map(Some).collect();
        if g.len() != self.slots.len() {
            return Err(crate::Error::Other(format!(
                "{} gradients for {} variables",
                g.len(),
                self.slots.len()
            )));
        }
        self.apply(&g, lr)
    }

    fn apply(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let s = &self.s;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let w = slot.var.as_tensor();
            let lr = lr * slot.lr_mult;
            if let (true, Some(state)) = (self.fused, &slot.fused) {
                let bc1 = 1.0 - s.beta1.powi(t);
                let bc2 = 1.0 - s.beta2.powi(t);
                let op = FusedStep {
                    kind: s.kind,
                    lr: lr as f32,
                    lr_t: (lr * bc2.sqrt() / bc1) as f32,
                    bc1: bc1 as f32,
                    bc2: bc2 as f32,
                    b1: s.beta1 as f32,
                    b2: s.beta2 as f32,
                    eps: s.eps as f32,
                    wd: s.weight_decay as f32,
                    momentum: s.momentum as f32,
                    first: t == 1,
                    state,
                };
                w.inplace_op2(&g.contiguous()?, &op)?;
                continue;
            }
            let new_w = match s.kind {
                Kind::Adam | Kind::Adamw => {
                    let g = if s.kind == Kind::Adam && s.weight_decay > 0.0 {
                        (g + w.affine(s.weight_decay, 0.0)?)?
                    } else {
                        g.clone()
                    };
                    let m = match &slot.m {
                        Some(m) => ((m * s.beta1)? + (&g * (1.0 - s.beta1))?)?,
                        None => (&g * (1.0 - s.beta1))?,
                    };
                    let v = match &slot.v {
                        Some(v) => ((v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?,
                        None => (g.sqr()? * (1.0 - s.beta2))?,
                    };
                    let bc1 = 1.0 - s.beta1.powi(t);
                    let bc2 = 1.0 - s.beta2.powi(t);
                    let upd = if s.kind == Kind::Adam {
                        let lr_t = lr * bc2.sqrt() / bc1;
                        (m.clone() / (v.sqrt()? + s.eps)?)?.affine(lr_t, 0.0)?
                    } else {
                        let denom = ((v.clone() / bc2)?.sqrt()? + s.eps)?;
                        ((m.clone() / bc1)? / denom)?.affine(lr, 0.0)?
                    };
                    slot.m = Some(m);
                    slot.v = Some(v);
                    let w = if s.kind == Kind::Adamw && s.weight_decay > 0.0 {
                        w.affine(1.0 - lr * s.weight_decay, 0.0)?
                    } else {
                        w.clone()
                    };
                    (w - upd)?
                }
                Kind::Sgd => {
                    let g = if s.weight_decay > 0.0 {
                        (g + w.affine(s.weight_decay, 0.0)?)?
                    } else {
                        g.clone()
                    };
                    let buf = match &slot.m {
                        Some(b) if s.momentum > 0.0 => ((b * s.momentum)? + &g)?,
                        _ => g,
                    };
                    let new_w = (w - buf.affine(lr, 0.0)?)?;
                    slot.m = Some(buf);
                    new_w
                }
            };
            slot.var.set(&new_w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's source, as the device compiles it after the prelude.
    const KERNEL: &str = crate::gpu::kernels::OPTIM.code;
    use super::*;
    use candle_core::Device;

    fn one_param(kind: Kind, wd: f64) -> (Var, Optimizer) {
        let v = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let s = Settings {
            kind,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            momentum: 0.9,
            gpu_fused: false,
        };
        let o = Optimizer::new(s, vec![(vec![v.clone()], 1.0)]);
        (v, o)
    }

    fn grads_of(v: &Var) -> GradStore {
        // loss = sum(3 * w) -> grad 3
        (v.as_tensor() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn fused_cpu_updates_match_the_tensor_op_reference() {
        for kind in [Kind::Adam, Kind::Adamw, Kind::Sgd] {
            for wd in [0.0, 0.1] {
                let init: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
                let a = Var::new(init.as_slice(), &Device::Cpu).unwrap();
                let b = Var::new(init.as_slice(), &Device::Cpu).unwrap();
                let s = || Settings {
                    kind,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: wd,
                    momentum: 0.9,
                    gpu_fused: false,
                };
                let mut oa = Optimizer::new(s(), vec![(vec![a.clone()], 0.5)]);
                let mut ob = Optimizer::new(s(), vec![(vec![b.clone()], 0.5)]).unfused();
                for step in 0..5 {
                    // loss = sum(w^3) -> grad 3 w^2, different each step
                    let ga = a
                        .as_tensor()
                        .powf(3.0)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    let gb = b
                        .as_tensor()
                        .powf(3.0)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    oa.step(&ga, 0.01).unwrap();
                    ob.step(&gb, 0.01).unwrap();
                    let va: Vec<f32> = a.as_tensor().to_vec1().unwrap();
                    let vb: Vec<f32> = b.as_tensor().to_vec1().unwrap();
                    for (x, y) in va.iter().zip(&vb) {
                        assert!(
                            (x - y).abs() < 1e-6,
                            "{kind:?} wd {wd} step {step}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_optimizer_kernel_run_on_the_host_equals_the_cpu_fused_step() {
        use crate::kernel_host::{bytes_f32, f32_bytes, run, values};
        let n = 300usize;
        for kind in [Kind::Adam, Kind::Adamw, Kind::Sgd] {
            for wd in [0.0f32, 0.1] {
                let w0 = values(n, 7, 1.0);
                let w = Tensor::from_vec(w0.clone(), n, &Device::Cpu).unwrap();
                let state = Mutex::new(Moments::default());
                // three steps on the CPU, recording each step's kernel arguments and gradient
                let (mut args, mut grads) = (Vec::new(), Vec::new());
                for t in 1..=3i32 {
                    let g = values(n, 10 + t as u64, 2.0);
                    let (b1, b2, lr) = (0.9f64, 0.999f64, 0.01f64);
                    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                    let op = FusedStep {
                        kind,
                        lr: lr as f32,
                        lr_t: (lr * bc2.sqrt() / bc1) as f32,
                        bc1: bc1 as f32,
                        bc2: bc2 as f32,
                        b1: b1 as f32,
                        b2: b2 as f32,
                        eps: 1e-8,
                        wd,
                        momentum: 0.9,
                        first: t == 1,
                        state: &state,
                    };
                    let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
                    w.inplace_op2(&gt, &op).unwrap();
                    args.push(op.kernel_args());
                    grads.extend(g);
                }
                let steps: String = args
                    .iter()
                    .enumerate()
                    .map(|(i, (k, a))| {
                        let a: Vec<String> = a.iter().map(|v| format!("{v:?}f")).collect();
                        format!(
                            "  launch(2, 256, [&] {{ optimizer_step(w, g + {}, m.data(), \
                             v.data(), {n}u, {k}u, {}); }});\n",
                            i * n,
                            a.join(", ")
                        )
                    })
                    .collect();
                let d = format!(
                    "  auto wb = input(0); auto gb = input(1);\n  float* w = (float*)wb.data();\n  \
                     const float* g = (const float*)gb.data();\n  \
                     std::vector<float> m({n}, 0.f), v({n}, 0.f);\n{steps}  \
                     output(0, w, {n} * 4);\n  output(1, m.data(), {n} * 4);\n  \
                     output(2, v.data(), {n} * 4);"
                );
                let out = run(KERNEL, &d, &[&f32_bytes(&w0), &f32_bytes(&grads), &[]]);
                let want_w: Vec<f32> = w.to_vec1().unwrap();
                let st = state.lock().unwrap();
                let want = [&want_w, &st.host.0, &st.host.1];
                for (what, (o, r)) in ["w", "m", "v"].iter().zip(out.iter().zip(want)) {
                    if kind == Kind::Sgd && *what == "v" {
                        continue; // SGD keeps no second moment
                    }
                    assert_eq!(&bytes_f32(o), r, "{kind:?} wd {wd}: {what}");
                }
            }
        }
    }

    #[test]
    fn adam_first_steps_match_tensorflow_by_hand() {
        let (v, mut o) = one_param(Kind::Adam, 0.0);
        o.step(&grads_of(&v), 0.1).unwrap();
        // t=1: m = 0.3, v = 0.009*... ; lr_t = 0.1*sqrt(0.001)/0.1 ; step = lr_t * m/(sqrt(v)+eps)
        let lr_t = 0.1 * (1.0f64 - 0.999).sqrt() / (1.0 - 0.9);
        let m: f64 = 0.1 * 3.0;
        let vv: f64 = 0.001 * 9.0;
        let want = 1.0 - lr_t * m / (vv.sqrt() + 1e-8);
        let got: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        assert!((got[0] as f64 - want).abs() < 1e-6, "{} vs {want}", got[0]);
        assert!((got[0] as f64 - 0.9).abs() < 1e-5, "first Adam step is ~lr");
    }

    #[test]
    fn sgd_momentum_accumulates() {
        let (v, mut o) = one_param(Kind::Sgd, 0.0);
        o.step(&grads_of(&v), 0.1).unwrap();
        o.step(&grads_of(&v), 0.1).unwrap();
        // buf1 = 3, w = 1 - 0.3 = 0.7; buf2 = 0.9*3 + 3 = 5.7, w = 0.7 - 0.57 = 0.13
        let got: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        assert!((got[0] - 0.13).abs() < 1e-5, "{}", got[0]);
    }

    #[test]
    fn adamw_decays_weights_decoupled() {
        let (v, mut o) = one_param(Kind::Adamw, 0.5);
        o.step(&grads_of(&v), 0.1).unwrap();
        // w = 1*(1 - 0.1*0.5) - 0.1 * m_hat/(sqrt(v_hat)+eps) = 0.95 - 0.1
        let got: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        assert!((got[0] - 0.85).abs() < 1e-5, "{}", got[0]);
    }
}
