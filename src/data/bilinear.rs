//! Bilinear interpolation taps, shared by the resize on the device (`preprocess`, as matrices)
//! and the one-pass resize kernel's CPU reference (`fused_input`): one definition of which
//! source pixels an output pixel reads, and with what weight.

use crate::spec::ResizeMethod;

/// The two source indices of output `o` (of `out`, from `inp`) and the weight of the second:
/// `src = o * inp / out` (TF1) or `(o + 0.5) * inp / out - 0.5` (half-pixel), in f64,
/// floored and clamped to the image.
pub fn bilinear_taps(
    o: usize,
    inp: usize,
    out: usize,
    method: ResizeMethod,
) -> (usize, usize, f32) {
    let scale = inp as f64 / out as f64;
    let src = match method {
        ResizeMethod::Tf1 => o as f64 * scale,
        ResizeMethod::HalfPixel => (o as f64 + 0.5) * scale - 0.5,
    };
    let f = src.floor();
    let lo = (f.max(0.0) as usize).min(inp - 1);
    let hi = ((f + 1.0).max(0.0) as usize).min(inp - 1);
    (lo, hi, (src - f) as f32)
}
