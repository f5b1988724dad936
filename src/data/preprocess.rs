//! Preprocessing on the device: u8 NHWC batches -> f32 NCHW at the backbone's input size.
//!
//! Bilinear resizing is separable, so it runs as two small matrix products with interpolation
//! matrices `Ry` (out_h x in_h) and `Rx` (out_w x in_w): `out = Ry . img . Rx^T` per channel.
//! Each row of a matrix holds the two bilinear weights of one output pixel.

use candle_core::{DType, Device, Tensor};

use crate::backend::{Backends, GpuPath};
use crate::error::Result;

pub use crate::spec::ResizeMethod;

use super::bilinear::bilinear_taps;

/// The `out x inp` bilinear interpolation matrix.
pub fn interp_matrix(inp: usize, out: usize, method: ResizeMethod) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    for o in 0..out {
        let (lo, hi, frac) = bilinear_taps(o, inp, out, method);
        m[o * inp + lo] += 1.0 - frac;
        m[o * inp + hi] += frac;
    }
    m
}

/// Turn `count` u8 NHWC images of `h x w` into f32 NCHW at `size x size`, on `device`, on the
/// path `backends` chooses.
pub fn to_input(
    pixels: &[u8],
    (count, h, w): (usize, usize, usize),
    size: usize,
    method: ResizeMethod,
    device: &Device,
    backends: &Backends,
) -> Result<Tensor> {
    if !device.is_cpu() && backends.fused(GpuPath::Resize) {
        // one kernel instead of the conversion, transposes and products below (opt-in)
        let pinned = backends.fused(GpuPath::Upload);
        let x = crate::gpu::upload_u8(pixels, (count, h, w, 3), device, pinned)?;
        return super::fused_input::FusedResize { size, method }.apply(&x);
    }
    // (N,H,W,C) u8 -> (N,C,W,H) f32: one small copy of the source-size images.
    let x = Tensor::from_slice(pixels, (count, h, w, 3), device)?
        .to_dtype(DType::F32)?
        .permute((0, 3, 2, 1))?;
    if h == size && w == size {
        return Ok(x.transpose(2, 3)?.contiguous()?);
    }
    // Resizing is separable: rows first, on the small image, then columns; each pass is one
    // plain 2-D matrix product over every image and channel at once.
    let ry = Tensor::from_vec(interp_matrix(h, size, method), (size, h), device)?;
    let rx = Tensor::from_vec(interp_matrix(w, size, method), (size, w), device)?;
    // (N*C*W, H) x (H, S) -> (N,C,W,S) -> (N,C,S,W)
    let xh = x
        .contiguous()?
        .reshape((count * 3 * w, h))?
        .matmul(&ry.t()?)?
        .reshape((count, 3, w, size))?
        .transpose(2, 3)?
        .contiguous()?;
    // (N*C*S, W) x (W, S) -> (N,C,S,S)
    Ok(xh
        .reshape((count * 3 * size, w))?
        .matmul(&rx.t()?)?
        .reshape((count, 3, size, size))?)
}

/// Resize one u8 HWC RGB image to `out_h x out_w` on the host (bilinear, `method`), rounding to
/// u8. Used where decoded images differ in size (folders, GTSRB) and must be stored uniformly.
pub fn resize_u8(
    src: &[u8],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    method: ResizeMethod,
) -> Vec<u8> {
    if h == out_h && w == out_w {
        return src.to_vec();
    }
    let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32)> {
        let m = interp_matrix(inp, out, method);
        (0..out)
            .map(|o| {
                let row = &m[o * inp..(o + 1) * inp];
                let lo = row.iter().position(|&v| v != 0.0).unwrap_or(0);
                let hi = row.iter().rposition(|&v| v != 0.0).unwrap_or(lo);
                (lo, hi, if hi == lo { 0.0 } else { row[hi] })
            })
            .collect()
    };
    let (ty, tx) = (taps(h, out_h), taps(w, out_w));
    // along x: h x out_w x 3
    let mut tmp = vec![0f32; h * out_w * 3];
    for y in 0..h {
        for (x, &(lo, hi, f)) in tx.iter().enumerate() {
            for c in 0..3 {
                let a = src[(y * w + lo) * 3 + c] as f32;
                let b = src[(y * w + hi) * 3 + c] as f32;
                tmp[(y * out_w + x) * 3 + c] = a + (b - a) * f;
            }
        }
    }
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, &(lo, hi, f)) in ty.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let a = tmp[(lo * out_w + x) * 3 + c];
                let b = tmp[(hi * out_w + x) * 3 + c];
                out[(y * out_w + x) * 3 + c] = (a + (b - a) * f).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// The centred square crop of an HWC image (tensorflow-vgg's `utils.load_image`:
/// `yy = (h - s) / 2`, `xx = (w - s) / 2`, s = the short side).
pub fn center_crop(src: &[u8], h: usize, w: usize) -> (Vec<u8>, usize) {
    let s = h.min(w);
    let (yy, xx) = ((h - s) / 2, (w - s) / 2);
    let mut out = Vec::with_capacity(s * s * 3);
    for y in yy..yy + s {
        out.extend_from_slice(&src[(y * w + xx) * 3..(y * w + xx + s) * 3]);
    }
    (out, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf1_matrix_uses_no_half_pixel_offset() {
        // 2 -> 4: src = 0, 0.5, 1.0, 1.5 ; the last two clamp the upper neighbour to 1
        let m = interp_matrix(2, 4, ResizeMethod::Tf1);
        assert_eq!(m, vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn half_pixel_matrix() {
        // 2 -> 4: src = -0.25, 0.25, 0.75, 1.25
        let m = interp_matrix(2, 4, ResizeMethod::HalfPixel);
        assert_eq!(m, vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
    }

    #[test]
    fn resize_of_a_constant_image_is_constant() {
        let px = vec![77u8; 5 * 7 * 3];
        let t = to_input(
            &px,
            (1, 5, 7),
            11,
            ResizeMethod::Tf1,
            &Device::Cpu,
            &Backends::default(),
        )
        .unwrap();
        assert_eq!(t.dims(), &[1, 3, 11, 11]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&x| (x - 77.0).abs() < 1e-4));
    }

    #[test]
    fn one_pass_resize_matches_the_matrix_products() {
        let dev = Device::Cpu;
        for (h, w, s, method) in [
            (32, 32, 227, ResizeMethod::Tf1),
            (37, 23, 64, ResizeMethod::HalfPixel),
            (300, 260, 224, ResizeMethod::Tf1),
            (16, 16, 16, ResizeMethod::Tf1),
        ] {
            let n = 2;
            let px: Vec<u8> = (0..n * h * w * 3)
                .map(|i| ((i * 37 + i / 7) % 256) as u8)
                .collect();
            let want = to_input(&px, (n, h, w), s, method, &dev, &Backends::default()).unwrap();
            let x = Tensor::from_slice(&px, (n, h, w, 3), &dev).unwrap();
            let got = super::super::fused_input::FusedResize { size: s, method }
                .apply(&x)
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // pixel values are 0..255; float rounding of the two orders of the same sums
            assert!(d < 2e-4, "{h}x{w} -> {s} {method:?}: max difference {d}");
        }
    }
}
