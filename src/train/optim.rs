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

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;
use crate::spec::Optimizer as Kind;

pub struct Settings {
    pub kind: Kind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
}

struct Slot {
    var: Var,
    lr_mult: f64,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

pub struct Optimizer {
    s: Settings,
    slots: Vec<Slot>,
    step: u64,
}

impl Optimizer {
    /// `groups`: (variables, learning-rate multiplier).
    pub fn new(s: Settings, groups: Vec<(Vec<Var>, f64)>) -> Self {
        let slots = groups
            .into_iter()
            .flat_map(|(vars, lr_mult)| vars.into_iter().map(move |var| Slot { var, lr_mult, m: None, v: None }))
            .collect();
        Optimizer { s, slots, step: 0 }
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let s = &self.s;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let w = slot.var.as_tensor();
            let lr = lr * slot.lr_mult;
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
                    let g = if s.weight_decay > 0.0 { (g + w.affine(s.weight_decay, 0.0)?)? } else { g.clone() };
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
    use super::*;
    use candle_core::Device;

    fn one_param(kind: Kind, wd: f64) -> (Var, Optimizer) {
        let v = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let s = Settings { kind, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, momentum: 0.9 };
        let o = Optimizer::new(s, vec![(vec![v.clone()], 1.0)]);
        (v, o)
    }

    fn grads_of(v: &Var) -> GradStore {
        // loss = sum(3 * w) -> grad 3
        (v.as_tensor() * 3.0).unwrap().sum_all().unwrap().backward().unwrap()
    }

    #[test]
    fn adam_first_steps_match_tensorflow_by_hand() {
        let (v, mut o) = one_param(Kind::Adam, 0.0);
        o.step(&grads_of(&v), 0.1).unwrap();
        // t=1: m = 0.3, v = 0.009*... ; lr_t = 0.1*sqrt(0.001)/0.1 ; step = lr_t * m/(sqrt(v)+eps)
        let lr_t = 0.1 * (1.0f64 - 0.999).sqrt() / (1.0 - 0.9);
        let m = 0.1 * 3.0;
        let vv = 0.001 * 9.0;
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
