//! The trainable classifier head: an MLP over frozen features (`hidden = []` is one linear
//! layer, the seed's AlexNet head). Weights start from a normal truncated at two standard
//! deviations (`head.init_std`: the seed's 0.01, or `"auto"`, scaled to the features), biases
//! at zero, drawn from the spec's seed.
//! Dropout masks come from a seeded generator too, so runs are reproducible.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::spec::{Activation, HeadSection};

pub struct Head {
    /// (weight `[out, in]`, bias `[out]`) per linear layer, input to output.
    pub layers: Vec<(Var, Var)>,
    pub activation: Activation,
    pub dropout: f64,
}

/// A sample of N(0, sd^2) truncated at 2 sd (TensorFlow's truncated_normal).
pub fn truncated_normal(rng: &mut ChaCha8Rng, n: usize, sd: f64) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen_range(0.0..1.0);
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            if z.abs() <= 2.0 {
                break (z * sd) as f32;
            }
        })
        .collect()
}

pub use crate::backbone::layers::dropout;

pub fn activate(x: &Tensor, a: Activation) -> Result<Tensor> {
    Ok(match a {
        Activation::Relu => x.relu()?,
        Activation::Tanh => x.tanh()?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::Gelu => x.gelu_erf()?,
    })
}

impl Head {
    /// A new head from `input` features to `classes` logits, shaped by `cfg`; `norm` is the RMS
    /// L2 norm of its input rows where known (for `init_std = "auto"`: `InitStd::resolve`).
    pub fn new(
        input: usize,
        classes: usize,
        cfg: &HeadSection,
        norm: Option<f64>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<Head> {
        let (activation, dropout) = (cfg.activation, cfg.dropout);
        let (first_sd, rest_sd) = cfg.init_std.resolve(norm);
        let mut dims = vec![input];
        dims.extend_from_slice(&cfg.hidden);
        dims.push(classes);
        let mut layers = Vec::new();
        for (k, w) in dims.windows(2).enumerate() {
            let (i, o) = (w[0], w[1]);
            let sd = if k == 0 { first_sd } else { rest_sd };
            let wt = Tensor::from_vec(truncated_normal(rng, i * o, sd), (o, i), device)?;
            let b = Tensor::zeros(o, DType::F32, device)?;
            layers.push((Var::from_tensor(&wt)?, Var::from_tensor(&b)?));
        }
        Ok(Head {
            layers,
            activation,
            dropout,
        })
    }

    /// Logits for a batch of flattened features; dropout only when `train` carries a generator.
    pub fn forward(&self, x: &Tensor, mut train: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let mut x = x.clone();
        let last = self.layers.len() - 1;
        for (k, (w, b)) in self.layers.iter().enumerate() {
            if let Some(rng) = train.as_deref_mut() {
                x = dropout(&x, self.dropout, rng)?;
            }
            x = x
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if k != last {
                x = activate(&x, self.activation)?;
            }
        }
        Ok(x)
    }

    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// Names for saving: `head.0.weight`, `head.0.bias`, ...
    pub fn named(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(k, (w, b))| {
                [
                    (format!("head.{k}.weight"), w.clone()),
                    (format!("head.{k}.bias"), b.clone()),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn truncated_normal_stays_within_two_sd_with_the_right_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v = truncated_normal(&mut rng, 20000, 0.01);
        assert!(v.iter().all(|x| x.abs() <= 0.02));
        let sd = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        // the sd of a normal truncated at 2 sd is 0.88 sd
        assert!((sd - 0.0088).abs() < 0.0003, "sd {sd}");
    }

    #[test]
    fn auto_init_scales_the_first_layer_to_the_features() {
        let sd = |h: &Head, k: usize| {
            let v: Vec<f32> = h.layers[k]
                .0
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let cfg = HeadSection {
            hidden: vec![64],
            ..Default::default()
        };
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // rows of norm 1000: the first layer at 1/1000 (0.88 of it after truncation), the
        // second at the seed's 0.01
        let h = Head::new(500, 10, &cfg, Some(1000.0), &mut rng, &dev).unwrap();
        assert!((sd(&h, 0) - 0.00088).abs() < 0.00005, "{}", sd(&h, 0));
        assert!((sd(&h, 1) - 0.0088).abs() < 0.0008, "{}", sd(&h, 1));
        // small rows (norm 20) and an unknown norm keep the seed's 0.01
        for norm in [Some(20.0), None] {
            let h = Head::new(500, 10, &cfg, norm, &mut rng, &dev).unwrap();
            assert!(
                (sd(&h, 0) - 0.0088).abs() < 0.0003,
                "{norm:?}: {}",
                sd(&h, 0)
            );
        }
        // a number is used as it is, whatever the features
        let fixed = HeadSection {
            init_std: crate::spec::InitStd::Fixed(0.05),
            ..cfg
        };
        let h = Head::new(500, 10, &fixed, Some(1000.0), &mut rng, &dev).unwrap();
        assert!((sd(&h, 0) - 0.044).abs() < 0.002, "{}", sd(&h, 0));
    }

    #[test]
    fn dropout_keeps_the_expectation() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = Tensor::ones(10000, DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = dropout(&x, 0.5, &mut rng).unwrap().to_vec1().unwrap();
        let mean = y.iter().sum::<f32>() / y.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    }
}
