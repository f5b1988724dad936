//! The activations a frozen layer applies to its output while it is still in cache (ReLU for
//! AlexNet, VGG and ResNet; ReLU6 for EfficientNet-Lite; SiLU for EfficientNet), on host
//! slices for runner's CPU kernels and as candle ops elsewhere (those have a backward pass).
//!
//! SiLU needs `exp`, which the standard library computes one value at a time by a call; the
//! CPU kernels use `exp_f32` instead, a branch-free Cephes-style polynomial that the compiler
//! vectorises (relative error below 2e-7 over the range SiLU and the sigmoid use). runner is
//! built for the x86-64 baseline (SSE2); `apply_fast` runs the same loop compiled for AVX2 +
//! FMA or AVX-512 when the CPU has them (`simd_level`), which the kernels also use for their
//! own loops.

use candle_core::Tensor;

use crate::error::Result;

/// The activation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    #[default]
    None,
    /// `max(x, 0)`
    Relu,
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `x * sigmoid(x)` (swish)
    Silu,
    /// `x * (1 + erf(x / sqrt(2))) / 2`, the exact GELU (not the tanh approximation)
    Gelu,
}

impl Act {
    /// `Relu` or `None`.
    pub fn relu(on: bool) -> Act {
        if on {
            Act::Relu
        } else {
            Act::None
        }
    }

    /// The activation of one value.
    #[inline(always)]
    pub fn f(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::Relu6 => v.clamp(0.0, 6.0),
            Act::Silu => v / (1.0 + exp_f32(-v)),
            Act::Gelu => 0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// The activation of every value of `v`, in place.
    #[inline(always)]
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Act::None => {}
            Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Act::Relu6 => v.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
            Act::Silu => v.iter_mut().for_each(|x| *x /= 1.0 + exp_f32(-*x)),
            Act::Gelu => v.iter_mut().for_each(|x| *x = Act::Gelu.f(*x)),
        }
    }

    /// `apply`, compiled for the widest vectors this CPU has.
    pub fn apply_fast(self, v: &mut [f32]) {
        match (self, simd_level()) {
            (Act::None, _) => {}
            // SAFETY: simd_level() says the CPU has these features
            #[cfg(target_arch = "x86_64")]
            (_, Simd::Avx512) => unsafe { apply_avx512(self, v) },
            #[cfg(target_arch = "x86_64")]
            (_, Simd::Avx2) => unsafe { apply_avx2(self, v) },
            _ => self.apply(v),
        }
    }

    /// The activation as candle ops (differentiable; any device and format).
    pub fn tensor(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Act::None => x.clone(),
            Act::Relu => x.relu()?,
            Act::Relu6 => x.relu()?.minimum(6.0)?,
            Act::Silu => x.silu()?,
            Act::Gelu => x.gelu_erf()?,
        })
    }
}

/// The widest vector instructions this CPU has that runner's kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// the x86-64 baseline (SSE2), or another architecture
    Base,
    /// AVX2 + FMA
    Avx2,
    /// AVX-512 (F) + AVX2 + FMA
    Avx512,
}

/// This CPU's `Simd`, detected once.
pub fn simd_level() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if avx2 {
                return Simd::Avx2;
            }
        }
        Simd::Base
    })
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(act: Act, v: &mut [f32]) {
    act.apply(v)
}

/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn apply_avx512(act: Act, v: &mut [f32]) {
    act.apply(v)
}

/// `erf(x)` without a branch or a call: Abramowitz and Stegun's 7.1.26 (absolute error below
/// 1.5e-7; below 5e-7 in f32 arithmetic), odd in x.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = 1.061_405_4;
    let p = p * t - 1.453_152;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_73;
    let p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp_f32(-a * a);
    y.copysign(x)
}

/// `exp(x)` without a branch or a call: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, Cephes' degree-6
/// polynomial for `exp(r)`, and `2^n` put into the exponent bits. Inputs are clamped to
/// [-87.3, 88]: below, the result is about 1e-38 instead of smaller; above, about 1.6e38.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // rounds to the nearest integer with adds alone (valid for |x * log2e| < 2^22)
    const ROUND: f32 = 12_582_912.0;
    // (max/min rather than clamp, whose NaN check costs a blend per vector)
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // t's low mantissa bits hold n (offset by ROUND's): 2^n's exponent field without a
    // float-to-integer conversion
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e * f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_to_a_few_ulps() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(1000.0) > 1e38);
    }

    /// erf in f64 by its Maclaurin series (|x| <= 4 needs about 60 terms; checked against
    /// erf(1) = 0.8427007929497149, erf(2) = 0.9953222650189527).
    fn erf64(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn activations_of_values_and_slices_agree_with_candles() {
        assert!((erf64(1.0) - 0.842_700_792_949_714_9).abs() < 1e-13);
        assert!((erf64(2.0) - 0.995_322_265_018_952_7).abs() < 1e-13);
        let xs: Vec<f32> = (-80..80).map(|i| i as f32 * 0.173).collect();
        let t = Tensor::from_slice(&xs, xs.len(), &candle_core::Device::Cpu).unwrap();
        for act in [Act::None, Act::Relu, Act::Relu6, Act::Silu, Act::Gelu] {
            let mut v = xs.clone();
            act.apply(&mut v);
            let want: Vec<f32> = act.tensor(&t).unwrap().to_vec1().unwrap();
            let mut fast = xs.clone();
            act.apply_fast(&mut fast);
            for (f, a) in fast.iter().zip(&v) {
                assert!(
                    (f - a).abs() <= 1e-6 * a.abs().max(1.0),
                    "{act:?}: {f} vs {a}"
                );
            }
            for ((a, w), x) in v.iter().zip(&want).zip(&xs) {
                assert!(
                    (a - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{act:?}({x}): {a} vs {w}"
                );
                assert_eq!(*a, act.f(*x));
            }
        }
        assert_eq!(Act::Relu6.f(7.5), 6.0);
        let mut worst = 0f64;
        for i in -4000..4000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf_f32(x as f32) as f64 - erf64(x)).abs());
        }
        assert!(worst < 5e-7, "erf: worst absolute error {worst}");
    }
}
