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

use super::act::Act;

/// Bytes of the column buffer a band aims at (it is at least `MIN_BAND` columns wide).
const BAND_BYTES: usize = 1 << 20;
/// Narrower bands make `gemm` repack the weights too often for the work they do.
const MIN_BAND: usize = 256;

/// `y = act(conv(x, w) + b)` for contiguous f32 NCHW `x`, OIHW `w`, `b` of O: `pads` =
/// [top, bottom, left, right] (TensorFlow's SAME may be uneven), `groups` equal splits of
/// the input channels and the kernels.
pub(super) struct FrozenConv {
    pub stride: usize,
    pub pads: [usize; 4],
    pub groups: usize,
    pub act: Act,
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
pub(super) struct OutPtr(*mut f32);
// SAFETY: every job writes only its own block of the buffer (here: image, group rows, band
// columns; `cpu_norm`: image, pixel band of every channel), and the buffer outlives the
// parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn new(p: *mut f32) -> OutPtr {
        OutPtr(p)
    }

    // (a method, so closures capture the whole Sync value rather than its raw-pointer field)
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

pub(super) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
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
        // a 1x1, stride-1, unpadded convolution is a plain matrix product over the input's own
        // rows: `gemm` reads them where they are, with no column matrix
        let direct = (g.kh, g.kw, self.stride, self.pads) == (1, 1, 1, [0; 4]);
        let buf_len = if direct { 0 } else { k * rows * g.ow };
        (0..jobs).into_par_iter().for_each_init(
            || vec![0f32; buf_len],
            |buf, job| {
                let (img, rest) = (job / (self.groups * bands), job % (self.groups * bands));
                let (grp, band) = (rest / bands, rest % bands);
                let oy0 = band * rows;
                let r = rows.min(g.oh - oy0);
                let cols = r * g.ow;
                let image = &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w];
                // the right-hand matrix (k x cols) and its row stride
                let (rhs, rhs_rs) = if direct {
                    (&image[grp * g.cg * p + oy0 * g.ow..], p)
                } else {
                    let buf = &mut buf[..k * cols];
                    self.columns(&g, image, grp * g.cg, oy0, r, buf);
                    (&buf[..], cols)
                };
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
                        rhs.as_ptr(),
                        1,
                        rhs_rs as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    if self.act != Act::None {
                        for oi in 0..og {
                            self.act
                                .apply_fast(std::slice::from_raw_parts_mut(d.add(oi * p), cols));
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, g.o, g.oh, g.ow))))
    }
}

/// Columns of the per-thread buffers of one Winograd band aim at this many bytes.
const WINO_BYTES: usize = 2 << 20;

/// A frozen 3x3, stride-1 convolution (+ bias, + ReLU) by Winograd's minimal filtering
/// F(2x2, 3x3) (Lavin & Gray, 2016): each 2x2 block of outputs costs 16 products per input
/// channel instead of 36, 2.25x fewer. The transforms' coefficients are 0, +-1 and +-1/2, so
/// the result differs from the direct sum only by a few roundings (the golden tests hold it to
/// TensorFlow's numbers).
///
/// Per job (a group and a band of 2x2 output tiles, across images): the input tiles are
/// transformed into 16 matrices V (channels x tiles), 16 single-threaded `gemm` calls give
/// M = U V with the transformed kernels U (kernels x channels), and the inverse transform
/// writes the outputs, bias and ReLU applied.
pub(super) struct WinogradConv {
    pub pads: [usize; 4],
    pub groups: usize,
    pub act: Act,
}

impl WinogradConv {
    /// U = G g G^T for every (kernel, channel): 16 matrices of o x cg, `[xi][o][c]`.
    fn kernels(w: &[f32], o: usize, cg: usize) -> Vec<f32> {
        let mut u = vec![0f32; 16 * o * cg];
        for oc in 0..o * cg {
            let g = &w[oc * 9..oc * 9 + 9];
            // G g: 4 rows of 3
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            // (G g) G^T: 4 x 4
            for (i, r) in t.iter().enumerate() {
                let v = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (j, v) in v.into_iter().enumerate() {
                    u[(i * 4 + j) * o * cg + oc] = v;
                }
            }
        }
        u
    }
}

impl CustomOp3 for WinogradConv {
    fn name(&self) -> &'static str {
        "frozen-conv2d-winograd"
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
        let conv = FrozenConv {
            stride: 1,
            pads: self.pads,
            groups: self.groups,
            act: self.act,
        };
        let (n, g) = conv.geom(xl.shape(), wl.shape(), bl.shape())?;
        if (g.kh, g.kw) != (3, 3) {
            candle_core::bail!(
                "winograd conv2d: 3x3 kernels expected, got {}x{}",
                g.kh,
                g.kw
            )
        }
        let (x, w, b) = (
            f32_slice(xs, xl, "input")?,
            f32_slice(ws, wl, "kernel")?,
            f32_slice(bs, bl, "bias")?,
        );
        let (cg, og) = (g.cg, g.o / self.groups);
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        let u = Self::kernels(w, g.o, cg);
        // a band: whole rows of tiles (of one or more images), about WINO_BYTES of V or M
        let tile_rows = n * th;
        let want = (WINO_BYTES / (64 * cg.max(og).max(1))).clamp(32, 512);
        let rb = want.div_ceil(tw.max(1)).clamp(1, tile_rows.max(1));
        let bands = tile_rows.div_ceil(rb);
        let p = g.oh * g.ow;
        let mut out = vec![0f32; n * g.o * p];
        let dst = OutPtr(out.as_mut_ptr());
        let job = WinoJob {
            g,
            x,
            u: &u,
            b,
            cg,
            og,
            th,
            tw,
            pt: self.pads[0] as isize,
            pl: self.pads[2] as isize,
            act: self.act,
            p,
            dst,
        };
        let span = 2 * tw + 2; // input columns under a row of tiles
        (0..self.groups * bands).into_par_iter().for_each_init(
            || {
                let nt = rb * tw;
                let row = vec![0f32; span];
                (
                    vec![0f32; 16 * cg * nt],
                    vec![0f32; 16 * og * nt],
                    [row.clone(), row.clone(), row.clone(), row],
                    vec![0f32; 8 * (tw + 1)],
                )
            },
            |(vbuf, mbuf, rows, scratch), i| {
                let (grp, band) = (i / bands, i % bands);
                let r0 = band * rb;
                let nr = rb.min(tile_rows - r0);
                job.input_transform(grp, r0, nr, vbuf, rows, scratch);
                job.products(grp, nr * tw, vbuf, mbuf);
                job.output_transform(grp, r0, nr, mbuf, scratch);
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, g.o, g.oh, g.ow))))
    }
}

/// What every job of one Winograd call shares: the geometry, the inputs, the transformed
/// kernels `u` (16 x o x cg) and where the output goes. A job is one group and one band of
/// rows of 2x2 output tiles; its three steps are the methods below.
struct WinoJob<'a> {
    g: Geom,
    x: &'a [f32],
    u: &'a [f32],
    b: &'a [f32],
    cg: usize,
    og: usize,
    /// tile rows and columns per image
    th: usize,
    tw: usize,
    /// top and left padding
    pt: isize,
    pl: isize,
    act: Act,
    /// output pixels per plane
    p: usize,
    dst: OutPtr,
}

impl WinoJob<'_> {
    /// The input transform of tile rows `r0..r0 + nr` of group `grp` into `vbuf`.
    fn input_transform(
        &self,
        grp: usize,
        r0: usize,
        nr: usize,
        vbuf: &mut [f32],
        rows: &mut [Vec<f32>; 4],
        scratch: &mut [f32],
    ) {
        let (g, x, cg, th, tw, pt, pl) =
            (self.g, self.x, self.cg, self.th, self.tw, self.pt, self.pl);
        let (h, wd) = (g.h as isize, g.w as isize);
        let span = 2 * tw + 2;
        let nt = nr * tw;
        // input transform, one channel and one row of tiles at a time, vectorised
        // along the row: V[xi][c][t] = (B^T d B)[xi] of the tile's 4x4 inputs d
        for c in 0..cg {
            for rr in 0..nr {
                let (img, ty) = ((r0 + rr) / th, (r0 + rr) % th);
                let plane = &x[(img * g.c + grp * cg + c) * g.h * g.w..][..g.h * g.w];
                for (i, row) in rows.iter_mut().enumerate() {
                    let iy = 2 * ty as isize + i as isize - pt;
                    row.fill(0.0);
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..][..g.w];
                    // row[j] = input column j - pl
                    let lo = pl.clamp(0, span as isize) as usize;
                    let hi = (wd + pl).clamp(0, span as isize) as usize;
                    if hi > lo {
                        row[lo..hi].copy_from_slice(&src[..hi - lo]);
                    }
                }
                // B^T d, whole rows: t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1,
                // t3 = d1 - d3; then d B along the row, split in even/odd columns
                let (e, o) = scratch.split_at_mut(4 * (tw + 1));
                let (e0, e) = e.split_at_mut(tw + 1);
                let (e1, e) = e.split_at_mut(tw + 1);
                let (e2, e3) = e.split_at_mut(tw + 1);
                let (o0, o) = o.split_at_mut(tw + 1);
                let (o1, o) = o.split_at_mut(tw + 1);
                let (o2, o3) = o.split_at_mut(tw + 1);
                let [d0, d1, d2, d3] = &*rows;
                for k in 0..=tw {
                    let (a, z) = (2 * k, 2 * k + 1);
                    e0[k] = d0[a] - d2[a];
                    o0[k] = d0[z] - d2[z];
                    e1[k] = d1[a] + d2[a];
                    o1[k] = d1[z] + d2[z];
                    e2[k] = d2[a] - d1[a];
                    o2[k] = d2[z] - d1[z];
                    e3[k] = d1[a] - d3[a];
                    o3[k] = d1[z] - d3[z];
                }
                let (e, o) = scratch.split_at(4 * (tw + 1));
                let base = c * nt + rr * tw;
                for q in 0..4 {
                    let ev = &e[q * (tw + 1)..(q + 1) * (tw + 1)];
                    let od = &o[q * (tw + 1)..(q + 1) * (tw + 1)];
                    let plane = |j: usize| (q * 4 + j) * cg * nt + base;
                    let v0 = &mut vbuf[plane(0)..plane(0) + tw];
                    for (k, v) in v0.iter_mut().enumerate() {
                        *v = ev[k] - ev[k + 1];
                    }
                    let v1 = &mut vbuf[plane(1)..plane(1) + tw];
                    for (k, v) in v1.iter_mut().enumerate() {
                        *v = od[k] + ev[k + 1];
                    }
                    let v2 = &mut vbuf[plane(2)..plane(2) + tw];
                    for (k, v) in v2.iter_mut().enumerate() {
                        *v = ev[k + 1] - od[k];
                    }
                    let v3 = &mut vbuf[plane(3)..plane(3) + tw];
                    for (k, v) in v3.iter_mut().enumerate() {
                        *v = od[k] - od[k + 1];
                    }
                }
            }
        }
    }

    /// The 16 products of group `grp` for `nt` tiles: `vbuf` -> `mbuf`.
    fn products(&self, grp: usize, nt: usize, vbuf: &[f32], mbuf: &mut [f32]) {
        let (g, u, cg, og) = (self.g, self.u, self.cg, self.og);
        // 16 products: M[xi] (og x nt) = U[xi] (group rows, og x cg) x V[xi] (cg x nt)
        for xi in 0..16 {
            // SAFETY: the buffers hold 16*og*nt, 16*o*cg and 16*cg*nt values.
            unsafe {
                gemm::gemm(
                    og,
                    nt,
                    cg,
                    mbuf.as_mut_ptr().add(xi * og * nt),
                    1,
                    nt as isize,
                    false,
                    u.as_ptr().add((xi * g.o + grp * og) * cg),
                    1,
                    cg as isize,
                    vbuf.as_ptr().add(xi * cg * nt),
                    1,
                    nt as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    }

    /// The output transform of tile rows `r0..r0 + nr` of group `grp`, with bias and ReLU,
    /// written into the output.
    fn output_transform(
        &self,
        grp: usize,
        r0: usize,
        nr: usize,
        mbuf: &[f32],
        scratch: &mut [f32],
    ) {
        let (g, b, og, th, tw, p, dst) =
            (self.g, self.b, self.og, self.th, self.tw, self.p, self.dst);
        let nt = nr * tw;
        // output transform, one kernel and one row of tiles at a time:
        // Y = A^T M A (2x2 per tile), + bias, ReLU
        for oi in 0..og {
            let o = grp * og + oi;
            let bias = b[o];
            for rr in 0..nr {
                let (img, ty) = ((r0 + rr) / th, (r0 + rr) % th);
                let m = |xi: usize| {
                    let s = (xi * og + oi) * nt + rr * tw;
                    &mbuf[s..s + tw]
                };
                // A^T M: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of 4 columns)
                let (s0, s1) = scratch.split_at_mut(4 * (tw + 1));
                for j in 0..4 {
                    let (a, bb, cc, dd) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                    let z0 = &mut s0[j * (tw + 1)..j * (tw + 1) + tw];
                    for (k, z) in z0.iter_mut().enumerate() {
                        *z = a[k] + bb[k] + cc[k];
                    }
                    let z1 = &mut s1[j * (tw + 1)..j * (tw + 1) + tw];
                    for (k, z) in z1.iter_mut().enumerate() {
                        *z = bb[k] - cc[k] - dd[k];
                    }
                }
                for (dy, sv) in [&*s0, &*s1].into_iter().enumerate() {
                    let oy = 2 * ty + dy;
                    if oy >= g.oh {
                        continue;
                    }
                    let col = |j: usize| &sv[j * (tw + 1)..j * (tw + 1) + tw];
                    let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
                    // SAFETY: row oy of (img, o) lies in the buffer and belongs to this
                    // job's group and tiles alone (see OutPtr).
                    let orow = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.get().add((img * g.o + o) * p + oy * g.ow),
                            g.ow,
                        )
                    };
                    let act = |v: f32| self.act.f(v + bias);
                    for (k, pair) in orow.chunks_mut(2).enumerate() {
                        pair[0] = act(c0[k] + c1[k] + c2[k]);
                        if let Some(second) = pair.get_mut(1) {
                            *second = act(c1[k] - c2[k] - c3[k]);
                        }
                    }
                }
            }
        }
    }
}

/// VALID max pooling (k x k windows, stride) of a contiguous f32 NCHW tensor, one plane per
/// rayon task; the window's maximum by the same comparisons as candle's pool (a NaN in the
/// window is skipped unless it is the first value).
pub(super) struct MaxPool {
    pub k: usize,
    pub stride: usize,
    /// Padding on every side, which no window takes its maximum from (PyTorch's -inf padding).
    pub pad: usize,
}

impl candle_core::CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "input")?;
        let (n, c, h, w) = l.shape().dims4()?;
        let (k, st, p) = (self.k, self.stride, self.pad);
        if k == 0 || st == 0 || h + 2 * p < k || w + 2 * p < k || p >= k {
            candle_core::bail!("max pool: {k}x{k} windows, stride {st}, pad {p}, over {h}x{w}")
        }
        let (oh, ow) = ((h + 2 * p - k) / st + 1, (w + 2 * p - k) / st + 1);
        // the in-bounds part [lo, hi) of the window starting at padded index i * st
        let span = |i: usize, side: usize| {
            let lo = (i * st).saturating_sub(p);
            (lo, (i * st + k - p).min(side))
        };
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut((oh * ow).max(1))
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
                    let (y0, y1) = span(oy, h);
                    for (ox, d) in drow.iter_mut().enumerate() {
                        let (x0, x1) = span(ox, w);
                        let mut m = plane[y0 * w + x0];
                        for row in plane[y0 * w..].chunks(w).take(y1 - y0) {
                            for &v in &row[x0..x1] {
                                if m < v {
                                    m = v;
                                }
                            }
                        }
                        *d = m;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// `relu(a + b)` of two contiguous f32 tensors of one shape in one parallel pass (a residual
/// block's end: one read of each and one write, where `add` then `relu` make two passes and
/// an intermediate tensor).
pub(super) struct AddRelu;

/// Values per rayon task of `AddRelu`.
const ADD_CHUNK: usize = 1 << 16;

impl candle_core::CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, "a")?, f32_slice(s2, l2, "b")?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-relu: shapes {:?} and {:?}", l1.shape(), l2.shape())
        }
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(ADD_CHUNK)
            .zip(a.par_chunks(ADD_CHUNK).zip(b.par_chunks(ADD_CHUNK)))
            .for_each(|(d, (a, b))| {
                for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
                    *d = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `act(x + b)` for a contiguous f32 matrix `x` (rows x O) and `b` of O, in one parallel pass:
/// an fc layer's bias and activation after its matrix product (a transformer's MLP).
pub(super) struct BiasAct {
    pub act: Act,
}

impl candle_core::CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, b) = (f32_slice(s1, l1, "x")?, f32_slice(s2, l2, "bias")?);
        let o = l2.shape().dims1()?;
        let (_, cols) = l1.shape().dims2()?;
        if cols != o || o == 0 {
            candle_core::bail!(
                "bias-act: matrix {:?} and bias {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        let mut out = vec![0f32; x.len()];
        let rows_per = (ADD_CHUNK / o).max(1);
        out.par_chunks_mut(rows_per * o)
            .zip(x.par_chunks(rows_per * o))
            .for_each(|(d, x)| {
                for (d, x) in d.chunks_exact_mut(o).zip(x.chunks_exact(o)) {
                    for ((d, x), b) in d.iter_mut().zip(x).zip(b) {
                        *d = x + b;
                    }
                    self.act.apply_fast(d);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
