//! The deterministic "formula" weights and images of `tests/reference/formula.py`: integer-only
//! arithmetic (murmur3's fmix32), so numpy and Rust produce bit-identical numbers. They serve the
//! golden tests (no weights are stored) and `weights = "random"` (seeded with the spec's seed).
//!
//! `unit(i, salt) = fmix32(i + salt * 0x9E3779B9) / 2^32 - 0.5`;
//! tensor k of an architecture: `W[i] = unit(i, 2k+1+64*seed) * sqrt(24 / fan_in)`,
//! `b[i] = unit(i, 2k+2+64*seed) * 0.2`, in the seed's layout (HWIO, `[in, out]`);
//! image n: `pixel[i] = fmix32(i + (n + 1000) * 0x9E3779B9) >> 24`.

use crate::arch::Arch;

pub fn fmix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^ (x >> 16)
}

fn unit(i: usize, salt: u64) -> f64 {
    let s = (salt.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF) as u32;
    let h = fmix32((i as u32).wrapping_add(s));
    h as f64 / 4_294_967_296.0 - 0.5
}

/// (W, b) per parameterised layer, in the seed's layout and `arch.params()` order.
pub fn tf_layout(arch: Arch, seed: u64) -> Vec<(Vec<f32>, Vec<f32>)> {
    let base = seed.wrapping_mul(64);
    arch.params()
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            let shape = spec.seed_weight_shape();
            let n: usize = shape.iter().product();
            let fan_in: usize = shape[..shape.len() - 1].iter().product();
            let scale = (24.0 / fan_in as f64).sqrt();
            let k = k as u64;
            let w = (0..n)
                .map(|i| (unit(i, 2 * k + 1 + base) * scale) as f32)
                .collect();
            let b = (0..spec.bias_len())
                .map(|i| (unit(i, 2 * k + 2 + base) * 0.2) as f32)
                .collect();
            (w, b)
        })
        .collect()
}

/// `count` images of `h x w x 3` u8, NHWC, as `formula.images`.
pub fn images(count: usize, h: usize, w: usize) -> Vec<u8> {
    let per = h * w * 3;
    let mut out = Vec::with_capacity(count * per);
    for n in 0..count {
        let s = (((n as u64 + 1000).wrapping_mul(0x9E37_79B9)) & 0xFFFF_FFFF) as u32;
        out.extend((0..per).map(|i| (fmix32((i as u32).wrapping_add(s)) >> 24) as u8));
    }
    out
}

/// The named tensors of `arch` in runner's (= PyTorch's) layout, as `formula.torch_tensors`
/// computes them for the fidelity fixtures of PyTorch-defined networks: tensor k (in
/// `arch.params()` order, each layer's tensors in `ParamSpec::tensors` order), flat index i,
/// `u = unit(i, 2k + 1)`:
/// - a conv/fc weight (rank >= 2): `u * sqrt(24 / fan_in)`, fan_in = the product of its shape
///   without the first axis;
/// - a batch norm's weight and running variance: `1 + u / 2` (in [0.75, 1.25));
/// - any bias, running mean, or other rank-1 weight: `u * 0.2`;
/// - other tensors (embeddings, tokens): `u * 0.2`.
pub fn torch_layout(arch: Arch) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let tensors = arch.params().into_iter().flat_map(|p| p.tensors());
    tensors
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let salt = 2 * k as u64 + 1;
            let role = name.rsplit('.').next().unwrap_or("").to_string();
            let value = |i: usize| -> f32 {
                let u = unit(i, salt);
                (match (role.as_str(), shape.len()) {
                    ("weight", r) if r >= 2 => {
                        let fan_in: usize = shape[1..].iter().product();
                        u * (24.0 / fan_in as f64).sqrt()
                    }
                    ("weight", _) | ("running_var", _) => 1.0 + u / 2.0,
                    _ => u * 0.2,
                }) as f32
            };
            let data = (0..n).map(value).collect();
            (name, shape, data)
        })
        .collect()
}
