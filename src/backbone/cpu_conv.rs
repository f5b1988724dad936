//! Frozen convolutions on the CPU: bias + convolution (+ ReLU) as one op over tiles.
//!
//! Each job is one image, one group and a band of output rows: it writes that band's column
//! matrix (K = cg*kh*kw rows, band-width columns) into a buffer of its thread, small enough to
//! stay in the core's cache, fills the output band with the bias, and lets one single-threaded
//! `gemm` call add weights x columns in place, then applies the ReLU while the band is still in
//! cache. Jobs run in parallel on rayon. Compared with one column matrix per image (115 MB for
//! VGG16's conv1_2) this reads no column twice from memory, and it scales across cores by jobs
//! rather than inside one matrix product.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// Bytes of the column buffer a band aims at (it is at least `MIN_BAND` columns wide).
const BAND_BYTES: usize = 1 << 20;
/// Narrower bands make `gemm` repack the weights too often for the work they do.
const MIN_BAND: usize = 256;

/// `y = relu?(conv(x, w) + b)` for contiguous f32 NCHW `x`, OIHW `w`, `b` of O: `pads` =
/// [top, bottom, left, right] (TensorFlow's SAME may be uneven), `groups` equal splits of
/// the input channels and the kernels.
pub(super) struct FrozenConv {
    pub stride: usize,
    pub pads: [usize; 4],
    pub groups: usize,
    pub relu: bool,
}

/// The geometry of one call.
#[derive(Clone, Copy)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl FrozenConv {
    fn geom(&self, x: &Shape, w: &Shape, b: &Shape) -> candle_core::Result<(usize, Geom)> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, cg, kh, kw) = w.dims4()?;
        let bo = b.dims1()?;
        let [pt, pb, pl, pr] = self.pads;
        let (hp, wp) = (h + pt + pb, wd + pl + pr);
        if self.groups == 0
            || c != cg * self.groups
            || o % self.groups != 0
            || bo != o
            || self.stride == 0
            || hp < kh
            || wp < kw
        {
            candle_core::bail!(
                "conv2d: input {n}x{c}x{h}x{wd}, kernel {o}x{cg}x{kh}x{kw}, bias {bo}, \
                 {} groups, stride {}, pads {:?}",
                self.groups,
                self.stride,
                self.pads
            )
        }
        let (oh, ow) = ((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1);
        Ok((
            n,
            Geom {
                c,
                h,
                w: wd,
                o,
                cg,
                kh,
                kw,
                oh,
                ow,
            },
        ))
    }

    /// The column matrix (K x (rows*ow), row-major) of output rows `oy0..oy0+rows` of image
    /// `x` (its c*h*w values), channels `c0..c0+cg`; zeros where windows reach the padding.
    fn columns(&self, g: &Geom, x: &[f32], c0: usize, oy0: usize, rows: usize, buf: &mut [f32]) {
        let s = self.stride;
        let (pt, pl) = (self.pads[0], self.pads[2]);
        let band = rows * g.ow;
        for (r, dst) in buf.chunks_exact_mut(band).enumerate() {
            let (ch, ki, kj) = (c0 + r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
            let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
            // output columns whose input column kj + ox*s - pl lies inside 0..w
            let lo = pl.saturating_sub(kj).div_ceil(s).min(g.ow);
            let hi = if g.w + pl > kj {
                (g.w + pl - kj).div_ceil(s).min(g.ow)
            } else {
                0
            }
            .max(lo);
            for (i, d) in dst.chunks_exact_mut(g.ow).enumerate() {
                let iy = ((oy0 + i) * s + ki) as isize - pt as isize;
                if iy < 0 || iy >= g.h as isize {
                    d.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                d[..lo].fill(0.0);
                d[hi..].fill(0.0);
                if hi == lo {
                    continue;
                }
                let x0 = lo * s + kj - pl;
                if s == 1 {
                    d[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                } else {
                    for (j, v) in d[lo..hi].iter_mut().enumerate() {
                        *v = src[x0 + j * s];
                    }
                }
            }
        }
    }
}

/// The output buffer, written by many jobs at disjoint places.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every job writes only its own (image, group rows, band columns) block of the buffer,
// and the buffer outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // (a method, so closures capture the whole Sync value rather than its raw-pointer field)
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("conv2d: f32 {what} expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("conv2d: contiguous {what} expected")
    };
    Ok(&v[a..b])
}

impl CustomOp3 for FrozenConv {
    fn name(&self) -> &'static str {
        "frozen-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, g) = self.geom(xl.shape(), wl.shape(), bl.shape())?;
        let (x, w, b) = (
            f32_slice(xs, xl, "input")?,
            f32_slice(ws, wl, "kernel")?,
            f32_slice(bs, bl, "bias")?,
        );
        let p = g.oh * g.ow;
        let k = g.cg * g.kh * g.kw;
        let og = g.o / self.groups;
        // a band: whole output rows, about BAND_BYTES of columns, at least MIN_BAND wide
        let want = (BAND_BYTES / (4 * k.max(1))).max(MIN_BAND);
        let rows = want.div_ceil(g.ow.max(1)).clamp(1, g.oh.max(1));
        let bands = g.oh.div_ceil(rows);
        let mut out = vec![0f32; n * g.o * p];
        let dst = OutPtr(out.as_mut_ptr());
        let jobs = n * self.groups * bands;
        (0..jobs).into_par_iter().for_each_init(
            || vec![0f32; k * rows * g.ow],
            |buf, job| {
                let (img, rest) = (job / (self.groups * bands), job % (self.groups * bands));
                let (grp, band) = (rest / bands, rest % bands);
                let oy0 = band * rows;
                let r = rows.min(g.oh - oy0);
                let cols = r * g.ow;
                let buf = &mut buf[..k * cols];
                let image = &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w];
                self.columns(&g, image, grp * g.cg, oy0, r, buf);
                let o0 = grp * og;
                // SAFETY: rows o0..o0+og, columns oy0*ow..+cols of image `img` belong to
                // this job alone (see OutPtr); all offsets stay inside the n*o*p buffer.
                unsafe {
                    let d = dst.get().add((img * g.o + o0) * p + oy0 * g.ow);
                    for oi in 0..og {
                        std::slice::from_raw_parts_mut(d.add(oi * p), cols).fill(b[o0 + oi]);
                    }
                    gemm::gemm(
                        og,
                        cols,
                        k,
                        d,
                        1,
                        p as isize,
                        true,
                        w.as_ptr().add(o0 * k),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        1,
                        cols as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    if self.relu {
                        for oi in 0..og {
                            for v in std::slice::from_raw_parts_mut(d.add(oi * p), cols) {
                                *v = v.max(0.0);
                            }
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, g.o, g.oh, g.ow))))
    }
}
