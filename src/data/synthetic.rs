//! A synthetic German-traffic-sign-like dataset, generated from a seed: 43 classes, each a
//! distinct combination of sign shape (circle, triangle, inverted triangle, octagon, diamond),
//! colour scheme (border / fill / glyph colours) and inner glyph, drawn at 32x32 with random
//! scale, rotation, offset, blur, lighting, noise and background clutter — learnable, not trivial.
//!
//! Class definitions are fixed (they do not depend on the seed); the images do.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::Dataset;

pub const CLASSES: usize = 43;
pub const SIZE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Circle,
    Triangle,
    InvTriangle,
    Octagon,
    Diamond,
}

const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Triangle,
    Shape::InvTriangle,
    Shape::Octagon,
    Shape::Diamond,
];

/// (name, border, fill, glyph) colours.
type Scheme = (&'static str, [f32; 3], [f32; 3], [f32; 3]);
const SCHEMES: [Scheme; 3] = [
    (
        "red-white",
        [200.0, 25.0, 30.0],
        [235.0, 235.0, 230.0],
        [20.0, 20.0, 25.0],
    ),
    (
        "blue",
        [235.0, 235.0, 240.0],
        [30.0, 70.0, 190.0],
        [240.0, 240.0, 240.0],
    ),
    (
        "yellow",
        [25.0, 25.0, 25.0],
        [245.0, 200.0, 30.0],
        [20.0, 20.0, 20.0],
    ),
];

const GLYPHS: [&str; 12] = [
    "none",
    "hbar",
    "vbar",
    "plus",
    "cross",
    "dot",
    "ring",
    "arrow_up",
    "arrow_left",
    "arrow_right",
    "two_bars",
    "slash",
];

#[derive(Debug, Clone, Copy)]
struct ClassDef {
    shape: Shape,
    scheme: usize,
    glyph: usize,
}

/// The 43 class definitions: distinct (shape, scheme, glyph) triples, spread over all shapes.
fn class_defs() -> Vec<ClassDef> {
    let mut all = Vec::new();
    for g in 0..GLYPHS.len() {
        for (s, _) in SCHEMES.iter().enumerate() {
            for &shape in &SHAPES {
                all.push(ClassDef {
                    shape,
                    scheme: s,
                    glyph: g,
                });
            }
        }
    }
    // A fixed permutation (independent of any user seed), then the first 43.
    let mut rng = ChaCha8Rng::seed_from_u64(0x5167_4e00);
    for i in (1..all.len()).rev() {
        let j = rng.gen_range(0..=i);
        all.swap(i, j);
    }
    all.truncate(CLASSES);
    all
}

pub fn class_names() -> Vec<String> {
    class_defs()
        .iter()
        .map(|c| {
            let shape = format!("{:?}", c.shape).to_lowercase();
            format!("{shape}/{}/{}", SCHEMES[c.scheme].0, GLYPHS[c.glyph])
        })
        .collect()
}

/// Gauge of a convex shape centred at 0 with "radius" 1: <= 1 inside, > 1 outside.
fn gauge(shape: Shape, u: f32, v: f32) -> f32 {
    match shape {
        Shape::Circle => (u * u + v * v).sqrt(),
        Shape::Diamond => (u.abs() + v.abs()) * 0.95,
        Shape::Octagon => {
            let c = (std::f32::consts::PI / 8.0).cos();
            u.abs()
                .max(v.abs())
                .max((u.abs() + v.abs()) / std::f32::consts::SQRT_2)
                / c
        }
        Shape::Triangle | Shape::InvTriangle => {
            // equilateral triangle, apex up (image v grows downwards) or down
            let v = if shape == Shape::Triangle { v } else { -v };
            let n = [(0.0f32, 1.0f32), (0.866, -0.5), (-0.866, -0.5)];
            n.iter()
                .map(|(a, b)| (a * u + b * v) / 0.5)
                .fold(f32::MIN, f32::max)
        }
    }
}

/// Whether (u, v) — in units of the inner area — is on the glyph.
fn glyph(g: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    let hbar = v.abs() < 0.13 && u.abs() < 0.55;
    let vbar = u.abs() < 0.13 && v.abs() < 0.55;
    match GLYPHS[g] {
        "hbar" => hbar,
        "vbar" => vbar,
        "plus" => hbar || vbar,
        "cross" => ((u - v).abs() < 0.18 || (u + v).abs() < 0.18) && r < 0.6,
        "dot" => r < 0.25,
        "ring" => r > 0.3 && r < 0.5,
        "arrow_up" => {
            (u.abs() < 0.12 && v > -0.2 && v < 0.55)
                || ((-0.6..=-0.1).contains(&v) && u.abs() < (v + 0.6) * 0.8)
        }
        "arrow_left" => {
            (v.abs() < 0.12 && u > -0.2 && u < 0.55)
                || ((-0.6..=-0.1).contains(&u) && v.abs() < (u + 0.6) * 0.8)
        }
        "arrow_right" => {
            (v.abs() < 0.12 && u < 0.2 && u > -0.55)
                || ((0.1..=0.6).contains(&u) && v.abs() < (0.6 - u) * 0.8)
        }
        "two_bars" => ((u - 0.22).abs() < 0.1 || (u + 0.22).abs() < 0.1) && v.abs() < 0.5,
        "slash" => (u + v).abs() < 0.16 && r < 0.65,
        _ => false,
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller
    let u1: f32 = rng.gen_range(1e-7..1.0);
    let u2: f32 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Draw one image of class `def` (32x32x3, u8, HWC): background, clutter, the sign, a blur
/// for half of the images, then lighting and noise (the generator is read in that order).
fn draw(def: &ClassDef, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = SIZE;
    let mut img = vec![0f32; n * n * 3];
    background(&mut img, rng);
    clutter(&mut img, rng);
    sign(&mut img, def, rng);
    // blur (half of the images)
    if rng.gen_bool(0.5) {
        blur(&mut img);
    }
    light_and_noise(&mut img, rng);
    img.into_iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A vertical gradient between two muted colours.
fn background(img: &mut [f32], rng: &mut ChaCha8Rng) {
    let n = SIZE;
    let c0: [f32; 3] = std::array::from_fn(|_| rng.gen_range(30.0..200.0));
    let c1: [f32; 3] = std::array::from_fn(|_| rng.gen_range(30.0..200.0));
    for y in 0..n {
        let t = y as f32 / (n - 1) as f32;
        for x in 0..n {
            for ch in 0..3 {
                img[(y * n + x) * 3 + ch] = c0[ch] * (1.0 - t) + c1[ch] * t;
            }
        }
    }
}

/// A few random rectangles and lines.
fn clutter(img: &mut [f32], rng: &mut ChaCha8Rng) {
    let n = SIZE;
    for _ in 0..rng.gen_range(2..6) {
        let col: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.0..255.0));
        let alpha = rng.gen_range(0.3..0.8);
        if rng.gen_bool(0.5) {
            let (x0, y0) = (rng.gen_range(0..n), rng.gen_range(0..n));
            let (w, h) = (rng.gen_range(2..12), rng.gen_range(2..12));
            for y in y0..(y0 + h).min(n) {
                for x in x0..(x0 + w).min(n) {
                    for ch in 0..3 {
                        let p = &mut img[(y * n + x) * 3 + ch];
                        *p = *p * (1.0 - alpha) + col[ch] * alpha;
                    }
                }
            }
        } else {
            let (x0, y0) = (rng.gen_range(0.0..n as f32), rng.gen_range(0.0..n as f32));
            let ang: f32 = rng.gen_range(0.0..std::f32::consts::PI);
            let (dx, dy) = (ang.cos(), ang.sin());
            for y in 0..n {
                for x in 0..n {
                    let d = ((x as f32 - x0) * dy - (y as f32 - y0) * dx).abs();
                    if d < 0.8 {
                        for ch in 0..3 {
                            let p = &mut img[(y * n + x) * 3 + ch];
                            *p = *p * (1.0 - alpha) + col[ch] * alpha;
                        }
                    }
                }
            }
        }
    }
}

/// The sign of class `def`: shape, border, fill and glyph, anti-aliased by 2x2 sub-samples.
fn sign(img: &mut [f32], def: &ClassDef, rng: &mut ChaCha8Rng) {
    let n = SIZE;
    let (_, border, fill, gcol) = SCHEMES[def.scheme];
    let radius = rng.gen_range(9.0..14.5f32);
    let cx = n as f32 / 2.0 + rng.gen_range(-3.0..3.0f32);
    let cy = n as f32 / 2.0 + rng.gen_range(-3.0..3.0f32);
    let theta = rng.gen_range(-0.25..0.25f32);
    let (st, ct) = theta.sin_cos();
    let inner = 0.72;
    // triangles' inscribed area sits lower (apex up) or higher
    let glyph_dv = match def.shape {
        Shape::Triangle => 0.18,
        Shape::InvTriangle => -0.18,
        _ => 0.0,
    };
    let glyph_scale = if matches!(def.shape, Shape::Triangle | Shape::InvTriangle) {
        0.42
    } else {
        inner
    };
    const SUB: [f32; 2] = [0.25, 0.75];
    for y in 0..n {
        for x in 0..n {
            let mut acc = [0f32; 3];
            let mut cover = 0f32;
            for sy in SUB {
                for sx in SUB {
                    let (px, py) = (x as f32 + sx - cx, y as f32 + sy - cy);
                    let u = (ct * px + st * py) / radius;
                    let v = (-st * px + ct * py) / radius;
                    let g = gauge(def.shape, u, v);
                    if g > 1.0 {
                        continue;
                    }
                    let col = if g > inner {
                        border
                    } else if glyph(def.glyph, u / glyph_scale, (v - glyph_dv) / glyph_scale) {
                        gcol
                    } else {
                        fill
                    };
                    for ch in 0..3 {
                        acc[ch] += col[ch];
                    }
                    cover += 1.0;
                }
            }
            if cover > 0.0 {
                let a = cover / 4.0;
                for ch in 0..3 {
                    let p = &mut img[(y * n + x) * 3 + ch];
                    *p = *p * (1.0 - a) + acc[ch] / cover * a;
                }
            }
        }
    }
}

/// A 3x3 binomial blur.
fn blur(img: &mut [f32]) {
    let n = SIZE;
    let k = [1.0f32, 2.0, 1.0];
    let src = img.to_vec();
    for y in 0..n {
        for x in 0..n {
            for ch in 0..3 {
                let mut s = 0.0;
                let mut w = 0.0;
                for (dy, ky) in k.iter().enumerate() {
                    for (dx, kx) in k.iter().enumerate() {
                        let yy = (y + dy).wrapping_sub(1);
                        let xx = (x + dx).wrapping_sub(1);
                        if yy < n && xx < n {
                            s += src[(yy * n + xx) * 3 + ch] * ky * kx;
                            w += ky * kx;
                        }
                    }
                }
                img[(y * n + x) * 3 + ch] = s / w;
            }
        }
    }
}

/// Lighting (gain and bias), a colour tint and Gaussian sensor noise.
fn light_and_noise(img: &mut [f32], rng: &mut ChaCha8Rng) {
    let gain = rng.gen_range(0.45..1.3f32);
    let bias = rng.gen_range(-20.0..20.0f32);
    let tint: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.9..1.1f32));
    let sigma = rng.gen_range(2.0..8.0f32);
    for (i, p) in img.iter_mut().enumerate() {
        *p = *p * gain * tint[i % 3] + bias + sigma * normal(rng);
    }
}

/// `per_class` images of each of the 43 classes, class-major order, from `seed`.
pub fn generate(seed: u64, per_class: usize) -> Dataset {
    let defs = class_defs();
    let per_img = SIZE * SIZE * 3;
    let images: Vec<Vec<u8>> = (0..CLASSES * per_class)
        .into_par_iter()
        .map(|i| {
            let c = i / per_class;
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            draw(&defs[c], &mut rng)
        })
        .collect();
    let mut flat = Vec::with_capacity(images.len() * per_img);
    for im in images {
        flat.extend(im);
    }
    let labels = (0..CLASSES * per_class)
        .map(|i| (i / per_class) as i64)
        .collect();
    Dataset {
        files: None,
        images: flat,
        n: CLASSES * per_class,
        height: SIZE,
        width: SIZE,
        labels,
        num_classes: CLASSES,
        class_names: Some(class_names()),
        groups: None,
    }
}

/// `runner data synth`: write the set as a Udacity-style `train.p` (Python 3 pickle with
/// `features`, `labels`), atomically. Returns the number of images.
pub fn write_pickle(path: &std::path::Path, seed: u64, per_class: usize) -> crate::Result<usize> {
    use crate::weights::pickle_write::{write_pickle, Flavor, PyObj};
    let d = generate(seed, per_class);
    let n = d.n;
    let obj = PyObj::Dict(vec![
        (
            "features".into(),
            PyObj::u8_array(vec![n, SIZE, SIZE, 3], d.images),
        ),
        ("labels".into(), PyObj::i64_array(vec![n], &d.labels)),
    ]);
    let mut f = crate::fsio::AtomicFile::create(path)?;
    let tmp = f.path().to_path_buf();
    write_pickle(f.writer(), &obj, Flavor::Python3).map_err(|e| crate::Error::io(&tmp, e))?;
    f.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_budget_sizes_this_set() {
        assert_eq!(crate::spec::budget::SYNTHETIC_CLASSES, CLASSES);
        assert_eq!(crate::spec::budget::SYNTHETIC_SIDE, SIZE);
    }

    #[test]
    fn classes_are_distinct_and_cover_every_shape() {
        let defs = class_defs();
        assert_eq!(defs.len(), 43);
        let names = class_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 43, "class definitions must be distinct");
        for s in SHAPES {
            assert!(defs.iter().any(|d| d.shape == s), "{s:?} unused");
        }
    }

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        let a = generate(1, 2);
        let b = generate(1, 2);
        let c = generate(2, 2);
        assert_eq!(a.images, b.images);
        assert_ne!(a.images, c.images);
        assert_eq!(a.n, 86);
        assert_eq!(a.labels[2], 1);
        // images are not flat: the sign, clutter and noise give spread
        let im = &a.images[..SIZE * SIZE * 3];
        let mean = im.iter().map(|&v| v as f64).sum::<f64>() / im.len() as f64;
        let var = im.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / im.len() as f64;
        assert!(var.sqrt() > 15.0, "image too flat: sd {}", var.sqrt());
    }
}
