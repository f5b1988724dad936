//! Frozen convolutions on the GPU through runner's own cuDNN calls: bias + convolution (+ ReLU)
//! as one op, the way PyTorch drives cuDNN with `torch.backends.cudnn.benchmark = True`.
//!
//! What candle's cuDNN path does and this one does not (issue 20):
//! - candle splits a grouped convolution into one call per group plus a concatenation; here
//!   the group count is set on the descriptor, so AlexNet's conv2/4/5 are one call each;
//! - candle takes cuDNN's first heuristic algorithm, asked again on every call; here the
//!   algorithm is chosen once per shape by running the candidates on the real tensors
//!   (`cudnnFindConvolutionForwardAlgorithmEx`, fastest first) with a bounded workspace, and the
//!   choice and its descriptors are kept for the process;
//! - candle never sets a math type; here it follows PyTorch: f32 without `run.tf32` is limited
//!   to FMA kernels (true f32), f32 with it may use TF32 tensor cores, bf16 and f16 ask for
//!   tensor cores; every format accumulates in f32;
//! - candle allocates and zeroes a workspace on every call; here one workspace per device and
//!   thread grows to the largest chosen algorithm's need and is reused;
//! - bias and ReLU are one in-place pass over the output (an nvrtc kernel, `KERNEL`) instead of
//!   a broadcast add and a ReLU.
//!
//! Activations stay NCHW, the layout of the rest of runner's GPU path and of PyTorch's default
//! (its figures in `bench/README.md` are NCHW); cuDNN transforms internally where its
//! tensor-core kernels want NHWC. Used only for frozen layers, and only with
//! `RUNNER_GPU_FUSED=1` in a `cudnn` build until `scripts/gpu-check.sh` has passed with it on a
//! GPU. Without a GPU nothing here runs: `cpu_fwd` refuses.

use candle_core::{CpuStorage, Layout, Shape};

/// `y = relu?(conv(x, w) + b)` for contiguous NCHW `x`, OIHW `w`, `b` of O, all of one float
/// format (f32, bf16 or f16): zero padding `pad` = (rows, columns) on both sides (uneven
/// TensorFlow SAME padding is applied to `x` beforehand), `groups` equal splits.
pub struct CudnnConv {
    pub stride: usize,
    pub pad: (usize, usize),
    pub groups: usize,
    pub relu: bool,
    /// f32 data may use TF32 tensor cores (`run.tf32`).
    pub tf32: bool,
}

/// The largest workspace an algorithm may use, and the most the measuring pass allocates
/// (further bounded by a quarter of the device's free memory).
pub const WORKSPACE_CAP: usize = 1 << 30;

/// The output's (height, width), or an error naming the mismatch.
pub fn out_dims(
    op: &CudnnConv,
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    bias: usize,
) -> candle_core::Result<(usize, usize)> {
    let ((n, c, h, wd), (o, cg, kh, kw)) = (x, w);
    let (hp, wp) = (h + 2 * op.pad.0, wd + 2 * op.pad.1);
    if op.groups == 0
        || c != cg * op.groups
        || o % op.groups != 0
        || bias != o
        || op.stride == 0
        || hp < kh
        || wp < kw
    {
        candle_core::bail!(
            "cudnn-conv: input {n}x{c}x{h}x{wd}, kernel {o}x{cg}x{kh}x{kw}, bias {bias}, \
             {} groups, stride {}, pad {:?}",
            op.groups,
            op.stride,
            op.pad
        )
    }
    Ok(((hp - kh) / op.stride + 1, (wp - kw) / op.stride + 1))
}

impl candle_core::CustomOp3 for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn-conv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cudnn-conv runs on CUDA only (the CPU has its own frozen convolution)")
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        imp::forward(self, (xs, xl), (ws, wl), (bs, bl))
    }
}

#[cfg(feature = "cudnn")]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::cudnn::{result as r, sys as s};
    use candle_core::cuda::cudarc::driver::{
        CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda::{CudaDType, DeviceId};
    use candle_core::{CudaStorage, DType, Layout, Shape};

    use super::{CudnnConv, WORKSPACE_CAP};

    type Operand<'a> = (&'a CudaStorage, &'a Layout);

    /// What one convolution shape was planned for.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    struct Key {
        dtype: DType,
        x: [usize; 4],
        w: [usize; 4],
        stride: usize,
        pad: (usize, usize),
        groups: usize,
        tf32: bool,
    }

    /// Descriptors and the measured algorithm of one shape.
    struct Plan {
        x: s::cudnnTensorDescriptor_t,
        y: s::cudnnTensorDescriptor_t,
        w: s::cudnnFilterDescriptor_t,
        conv: s::cudnnConvolutionDescriptor_t,
        algo: s::cudnnConvolutionFwdAlgo_t,
        workspace: usize,
    }

    impl Drop for Plan {
        fn drop(&mut self) {
            // SAFETY: each descriptor was created once for this plan and is destroyed once
            unsafe {
                let _ = r::destroy_tensor_descriptor(self.x);
                let _ = r::destroy_tensor_descriptor(self.y);
                let _ = r::destroy_filter_descriptor(self.w);
                let _ = r::destroy_convolution_descriptor(self.conv);
            }
        }
    }

    /// A cuDNN handle bound to candle's stream of one device, its plans and its workspace.
    /// cuDNN handles are neither Send nor Sync: one per thread, as candle keeps its own.
    struct State {
        handle: s::cudnnHandle_t,
        plans: HashMap<Key, Plan>,
        workspace: Option<CudaSlice<u8>>,
    }

    impl Drop for State {
        fn drop(&mut self) {
            self.plans.clear();
            // SAFETY: the handle was created for this state and is destroyed once
            unsafe {
                let _ = r::destroy_handle(self.handle);
            }
        }
    }

    thread_local! {
        static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
    }

    fn contiguous(l: &Layout, what: &str) -> candle_core::Result<(usize, usize)> {
        l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("cudnn-conv: contiguous {what} expected"))
        })
    }

    fn i32s(v: [usize; 4]) -> candle_core::Result<[i32; 4]> {
        let mut o = [0i32; 4];
        for (d, s) in o.iter_mut().zip(v) {
            *d = i32::try_from(s).map_err(|_| {
                candle_core::Error::Msg(format!("cudnn-conv: dimension {s} exceeds cuDNN's"))
            })?;
        }
        Ok(o)
    }

    pub(super) fn forward(
        op: &CudnnConv,
        x: Operand,
        w: Operand,
        b: Operand,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dtype = x.0.dtype();
        if w.0.dtype() != dtype || b.0.dtype() != dtype {
            candle_core::bail!(
                "cudnn-conv: input {dtype:?}, kernel {:?}, bias {:?}: one format expected",
                w.0.dtype(),
                b.0.dtype()
            )
        }
        match dtype {
            DType::F32 => run::<f32>(op, x, w, b, "bias_act_f32"),
            DType::BF16 => run::<half::bf16>(op, x, w, b, "bias_act_bf16"),
            DType::F16 => run::<half::f16>(op, x, w, b, "bias_act_f16"),
            d => candle_core::bail!("cudnn-conv: {d:?} is not a float format cuDNN convolves"),
        }
    }

    fn data_type(dtype: DType) -> s::cudnnDataType_t {
        match dtype {
            DType::BF16 => s::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            DType::F16 => s::cudnnDataType_t::CUDNN_DATA_HALF,
            _ => s::cudnnDataType_t::CUDNN_DATA_FLOAT,
        }
    }

    fn run<T: CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr>(
        op: &CudnnConv,
        (xs, xl): Operand,
        (ws, wl): Operand,
        (bs, bl): Operand,
        bias_fn: &'static str,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (xo, wo, bo) = (
            contiguous(xl, "input")?,
            contiguous(wl, "kernel")?,
            contiguous(bl, "bias")?,
        );
        let xd = xl.shape().dims4()?;
        let wd = wl.shape().dims4()?;
        let (oh, ow) = super::out_dims(op, xd, wd, bl.shape().dims1()?)?;
        let (n, o) = (xd.0, wd.0);
        let total = n * o * oh * ow;
        let key = Key {
            dtype: xs.dtype(),
            x: [xd.0, xd.1, xd.2, xd.3],
            w: [wd.0, wd.1, wd.2, wd.3],
            stride: op.stride,
            pad: op.pad,
            groups: op.groups,
            tf32: op.tf32,
        };
        let dev = &xs.device;
        let stream = dev.cuda_stream();
        let xv = xs.as_cuda_slice::<T>()?.slice(xo.0..xo.1);
        let wv = ws.as_cuda_slice::<T>()?.slice(wo.0..wo.1);
        let bv = bs.as_cuda_slice::<T>()?.slice(bo.0..bo.1);
        // SAFETY: cuDNN writes every output value (beta = 0) before the bias pass reads it
        let mut y = unsafe { dev.alloc::<T>(total)? };

        STATES.with(|states| -> candle_core::Result<()> {
            let mut states = states.borrow_mut();
            let state = state_of(&mut states, dev)?;
            let handle = state.handle;
            let plan = match state.plans.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let (xp, _gx) = xv.device_ptr(&stream);
                    let (wp, _gw) = wv.device_ptr(&stream);
                    let (yp, _gy) = y.device_ptr_mut(&stream);
                    e.insert(plan(op, &key, [n, o, oh, ow], handle, dev, (xp, wp, yp))?)
                }
            };
            let need = plan.workspace;
            if state.workspace.as_ref().map_or(0, |w| w.len()) < need {
                // the smaller one is freed (stream-ordered) before the larger one is taken
                state.workspace = None;
                // SAFETY: a workspace is scratch memory; cuDNN needs no initial contents
                state.workspace = Some(unsafe { dev.alloc::<u8>(need)? });
            }
            let (alpha, beta) = (1f32, 0f32);
            let (xp, _gx) = xv.device_ptr(&stream);
            let (wp, _gw) = wv.device_ptr(&stream);
            let (yp, _gy) = y.device_ptr_mut(&stream);
            let (wsp, _gws) = match state.workspace.as_mut() {
                Some(w) if need > 0 => {
                    let (p, g) = w.device_ptr_mut(&stream);
                    (p, Some(g))
                }
                _ => (0, None),
            };
            // SAFETY: the descriptors describe exactly these contiguous buffers (checked
            // shapes), the workspace holds at least `need` bytes, and all of it is ordered on
            // candle's stream, the handle's stream.
            unsafe {
                r::convolution_forward(
                    handle,
                    &alpha as *const f32 as *const _,
                    plan.x,
                    xp as *const _,
                    plan.w,
                    wp as *const _,
                    plan.conv,
                    plan.algo,
                    wsp as *mut _,
                    need,
                    &beta as *const f32 as *const _,
                    plan.y,
                    yp as *mut _,
                )?;
            }
            Ok(())
        })?;

        bias_act(dev, bias_fn, &mut y, &bv, (o, oh * ow, total), op.relu)?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from((n, o, oh, ow)),
        ))
    }

    /// This thread's cuDNN state for `dev`, its handle made and bound to candle's stream on
    /// first use.
    fn state_of<'a>(
        states: &'a mut HashMap<DeviceId, State>,
        dev: &candle_core::cuda::CudaDevice,
    ) -> candle_core::Result<&'a mut State> {
        Ok(match states.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = dev.cuda_stream();
                stream
                    .context()
                    .bind_to_thread()
                    .map_err(candle_core::Error::wrap)?;
                let handle = r::create_handle()?;
                // SAFETY: a fresh handle and candle's live stream for this device
                if let Err(err) = unsafe { r::set_stream(handle, stream.cu_stream() as _) } {
                    // SAFETY: created above, not stored anywhere
                    let _ = unsafe { r::destroy_handle(handle) };
                    return Err(err.into());
                }
                e.insert(State {
                    handle,
                    plans: HashMap::new(),
                    workspace: None,
                })
            }
        })
    }

    /// Bias (+ ReLU) in place over the convolution's output `y` of `(channels, plane, total)`
    /// values, with the kernel entry `bias_fn` of the output's format.
    fn bias_act<T: CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr>(
        dev: &candle_core::cuda::CudaDevice,
        bias_fn: &'static str,
        y: &mut CudaSlice<T>,
        bv: &candle_core::cuda::cudarc::driver::CudaView<'_, T>,
        (channels, plane, total): (usize, usize, usize),
        relu: bool,
    ) -> candle_core::Result<()> {
        let f = crate::gpu::function(dev, &crate::gpu::kernels::BIAS_RELU, bias_fn)?;
        let (c, hw, n64, relu) = (channels as u32, plane as u32, total as u64, relu as u32);
        let blocks = total.div_ceil(256).clamp(1, 65_535 * 16) as u32;
        let mut lb = f.builder();
        lb.arg(y).arg(bv).arg(&c).arg(&hw).arg(&n64).arg(&relu);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `BIAS_ACT`'s signature; the grid-stride loop bounds reads
        // and writes by `total`, the output's length
        unsafe { crate::gpu::launch_with(lb, cfg) }
    }

    /// Descriptors for `key`, and the fastest algorithm measured on these very buffers
    /// (`ptrs`: input, kernel, output) within the workspace bound.
    fn plan(
        op: &CudnnConv,
        key: &Key,
        out: [usize; 4],
        handle: s::cudnnHandle_t,
        dev: &candle_core::cuda::CudaDevice,
        (xp, wp, yp): (u64, u64, u64),
    ) -> candle_core::Result<Plan> {
        use s::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        use s::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
        use s::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let dt = data_type(key.dtype);
        let mut plan = Plan {
            x: r::create_tensor_descriptor()?,
            y: r::create_tensor_descriptor()?,
            w: r::create_filter_descriptor()?,
            conv: r::create_convolution_descriptor()?,
            algo: s::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            workspace: 0,
        };
        let math = match key.dtype {
            DType::F32 if op.tf32 => CUDNN_DEFAULT_MATH,
            DType::F32 => CUDNN_FMA_MATH,
            _ => CUDNN_TENSOR_OP_MATH,
        };
        let groups = i32::try_from(op.groups).unwrap_or(i32::MAX);
        let [ph, pw, st] = [op.pad.0, op.pad.1, op.stride].map(|v| v as i32);
        // SAFETY: descriptors created above; dims checked to fit i32
        unsafe {
            r::set_tensor4d_descriptor(plan.x, CUDNN_TENSOR_NCHW, dt, i32s(key.x)?)?;
            r::set_filter4d_descriptor(plan.w, dt, CUDNN_TENSOR_NCHW, i32s(key.w)?)?;
            r::set_tensor4d_descriptor(plan.y, CUDNN_TENSOR_NCHW, dt, i32s(out)?)?;
            r::set_convolution2d_descriptor(
                plan.conv,
                ph,
                pw,
                st,
                st,
                1,
                1,
                CUDNN_CROSS_CORRELATION,
                s::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )?;
            r::set_convolution_group_count(plan.conv, groups)?;
            r::set_convolution_math_type(plan.conv, math)?;
        }
        // measure: every algorithm that fits the workspace, on the real buffers
        let free = dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .map(|(free, _)| free)
            .unwrap_or(0);
        let cap = WORKSPACE_CAP.min(free / 4);
        // SAFETY: scratch memory for the measurement only
        let mut scratch = unsafe { dev.alloc::<u8>(cap.max(1))? };
        let stream = dev.cuda_stream();
        const WANT: usize = 8;
        // SAFETY: the perf struct is plain old data; zero is a valid bit pattern for its enums
        let mut perf: [s::cudnnConvolutionFwdAlgoPerf_t; WANT] = unsafe { std::mem::zeroed() };
        let mut got = 0i32;
        {
            let (sp, _gs) = scratch.device_ptr_mut(&stream);
            // SAFETY: descriptors set above describe the buffers behind xp/wp/yp; the scratch
            // buffer holds `cap` bytes; `perf` has room for WANT results
            unsafe {
                s::cudnnFindConvolutionForwardAlgorithmEx(
                    handle,
                    plan.x,
                    xp as *const _,
                    plan.w,
                    wp as *const _,
                    plan.conv,
                    plan.y,
                    yp as *mut _,
                    WANT as i32,
                    &mut got,
                    perf.as_mut_ptr(),
                    sp as *mut _,
                    cap,
                )
                .result()?;
            }
        }
        drop(scratch);
        let best = perf[..(got.max(0) as usize).min(WANT)]
            .iter()
            .find(|p| p.status == s::cudnnStatus_t::CUDNN_STATUS_SUCCESS && p.memory <= cap)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "cudnn-conv: no algorithm ran for input {:?}, kernel {:?}, {} groups \
                     within a {cap}-byte workspace",
                    key.x, key.w, op.groups
                ))
            })?;
        // SAFETY: descriptor created above
        unsafe { r::set_convolution_math_type(plan.conv, best.mathType)? };
        plan.algo = best.algo;
        // SAFETY: handle and descriptors are live
        plan.workspace = unsafe {
            r::get_convolution_forward_workspace_size(
                handle, plan.x, plan.w, plan.conv, plan.y, plan.algo,
            )?
        };
        tracing::debug!(
            "cudnn-conv: input {:?} kernel {:?} groups {}: {:?} ({:?}, {:.3} ms, {} bytes)",
            key.x,
            key.w,
            op.groups,
            best.algo,
            best.mathType,
            best.time,
            plan.workspace
        );
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    /// The kernel's source, as the device compiles it after the prelude.
    const KERNEL: &str = crate::gpu::kernels::BIAS_RELU.code;
    use super::*;
    use candle_core::{Device, Tensor};

    fn op(stride: usize, pad: (usize, usize), groups: usize) -> CudnnConv {
        CudnnConv {
            stride,
            pad,
            groups,
            relu: true,
            tf32: false,
        }
    }

    #[test]
    fn output_sizes_are_alexnets_and_vggs() {
        // conv1: 227 -> 57 with SAME's 4 rows/columns each side at stride 4
        assert_eq!(
            out_dims(&op(4, (4, 4), 1), (2, 3, 227, 227), (96, 3, 11, 11), 96).unwrap(),
            (57, 57)
        );
        // conv2: 96 channels in 2 groups of 48, 5x5 SAME
        assert_eq!(
            out_dims(&op(1, (2, 2), 2), (2, 96, 27, 27), (256, 48, 5, 5), 256).unwrap(),
            (27, 27)
        );
        // VGG 3x3 SAME keeps the size
        assert_eq!(
            out_dims(&op(1, (1, 1), 1), (1, 64, 224, 224), (64, 64, 3, 3), 64).unwrap(),
            (224, 224)
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        // 96 channels are not 2 groups of 96
        assert!(out_dims(&op(1, (2, 2), 2), (2, 96, 27, 27), (256, 96, 5, 5), 256).is_err());
        // bias of the wrong length, zero stride, zero groups, window larger than the input
        assert!(out_dims(&op(1, (0, 0), 1), (1, 3, 8, 8), (4, 3, 3, 3), 5).is_err());
        assert!(out_dims(&op(0, (0, 0), 1), (1, 3, 8, 8), (4, 3, 3, 3), 4).is_err());
        assert!(out_dims(&op(1, (0, 0), 0), (1, 3, 8, 8), (4, 3, 3, 3), 4).is_err());
        assert!(out_dims(&op(1, (0, 0), 1), (1, 3, 2, 2), (4, 3, 3, 3), 4).is_err());
    }

    /// The bias + ReLU kernel run on the host (`kernel_host`) over one NCHW map of `c`
    /// channels of `hw` values, in storage format `fmt` (f32, bf16, f16): the output's raw words.
    fn bias_act_on_host(fmt: &str, y: &[u8], b: &[u8], c: usize, hw: usize, relu: bool) -> Vec<u8> {
        let (ty, size) = if fmt == "f32" {
            ("float", 4)
        } else {
            ("unsigned short", 2)
        };
        let n = y.len() / size;
        let driver = format!(
            "  auto y = input(0); auto b = input(1);\n  \
             launch(3, 64, [&] {{ bias_act_{fmt}(({ty}*)y.data(), (const {ty}*)b.data(), {c}u, \
             {hw}u, {n}ull, {}u); }});\n  output(0, y.data(), y.size());",
            relu as u32
        );
        crate::kernel_host::run(KERNEL, &driver, &[y, b]).swap_remove(0)
    }

    #[test]
    fn the_bias_relu_kernel_adds_the_channels_bias_and_rounds_as_half_does() {
        use crate::kernel_host::{bytes_f32, bytes_u16, f32_bytes, u16_bytes, values};
        let (c, hw) = (5, 37); // 2 images: 370 values, more than the 192 threads launched
        let mut y = values(2 * c * hw, 1, 4.0);
        // specials and rounding ties: NaN, infinities, a bf16 tie, f16 overflow and subnormals
        y[..8].copy_from_slice(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0 + 1.0 / 256.0,
            65519.0,
            65520.0,
            3e-6,
            -7e-8,
        ]);
        let b = values(c, 2, 1.0);
        let b: Vec<f32> = b.iter().map(|v| if *v == 0.0 { 0.5 } else { *v }).collect();
        for relu in [false, true] {
            let act = |v: f32| {
                if relu && (v.is_nan() || v <= 0.0) {
                    0.0
                } else {
                    v
                }
            };
            // f32: exact
            let got = bytes_f32(&bias_act_on_host(
                "f32",
                &f32_bytes(&y),
                &f32_bytes(&b),
                c,
                hw,
                relu,
            ));
            for (i, g) in got.iter().enumerate() {
                let want = act(y[i] + b[(i / hw) % c]);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "f32 {i}: {g} vs {want}"
                );
            }
            // bf16 and f16: the sum in f32 of the widened values, rounded to nearest even
            for (fmt, narrow, widen) in crate::kernel_host::HALF_FORMATS {
                let yh: Vec<u16> = y.iter().map(|v| narrow(*v)).collect();
                let bh: Vec<u16> = b.iter().map(|v| narrow(*v)).collect();
                let got = bytes_u16(&bias_act_on_host(
                    fmt,
                    &u16_bytes(&yh),
                    &u16_bytes(&bh),
                    c,
                    hw,
                    relu,
                ));
                for (i, g) in got.iter().enumerate() {
                    let want = narrow(act(widen(yh[i]) + widen(bh[(i / hw) % c])));
                    assert!(
                        *g == want || (widen(*g).is_nan() && widen(want).is_nan()),
                        "{fmt} {i}: {} vs {}",
                        widen(*g),
                        widen(want)
                    );
                }
            }
        }
    }

    #[test]
    fn the_f16_conversions_round_every_tie_and_edge_as_half_does() {
        use crate::kernel_host::{bytes_f32, bytes_u16, f32_bytes, u16_bytes};
        // the kernel's own ld_f16/st_f16 (their host versions), called directly
        let k = format!(
            "{KERNEL}\nextern \"C\" void widen(const unsigned short* h, float* x, unsigned long \
             long n) {{ for (unsigned long long i = 0; i < n; i++) x[i] = ld_f16(h, i); }}\n\
             extern \"C\" void narrow(const float* x, unsigned short* h, unsigned long long n) \
             {{ for (unsigned long long i = 0; i < n; i++) st_f16(h, i, x[i]); }}"
        );
        let d = "  auto h = input(0);\n  std::vector<float> x(h.size() / 2);\n  \
                 widen((const unsigned short*)h.data(), x.data(), x.size());\n  \
                 output(0, x.data(), x.size() * 4);\n  auto y = input(1);\n  \
                 std::vector<unsigned short> g(y.size() / 4);\n  \
                 narrow((const float*)y.data(), g.data(), g.size());\n  \
                 output(1, g.data(), g.size() * 2);";
        // every f16 value widens exactly; halfway points and quarter points between neighbours
        // (subnormals, the overflow edge and negatives included) narrow to nearest even
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut xs: Vec<f32> = (0..0x7bffu16)
            .flat_map(|h| {
                let (a, b) = (
                    half::f16::from_bits(h).to_f32(),
                    half::f16::from_bits(h + 1).to_f32(),
                );
                let m = a + (b - a) * 0.5;
                [a, m, a + (b - a) * 0.25, a + (b - a) * 0.75, -m]
            })
            .collect();
        xs.extend([
            65504.0,
            65519.9,
            65520.0,
            1e6,
            f32::INFINITY,
            1e-9,
            -1e-9,
            f32::NAN,
        ]);
        let out = crate::kernel_host::run(&k, d, &[&u16_bytes(&all), &f32_bytes(&xs)]);
        let (wide, narrow) = (bytes_f32(&out[0]), bytes_u16(&out[1]));
        let bad = all.iter().zip(&wide).find(|(h, x)| {
            let want = half::f16::from_bits(**h).to_f32();
            !(x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan()))
        });
        assert!(bad.is_none(), "widening {bad:?}");
        let bad = xs.iter().zip(&narrow).find(|(x, h)| {
            let (g, want) = (half::f16::from_bits(**h), half::f16::from_f32(**x));
            !(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()))
        });
        assert!(bad.is_none(), "narrowing {bad:?}");
    }

    #[test]
    fn the_cpu_refuses_rather_than_computing_something_else() {
        let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = x.apply_op3_no_bwd(&w, &b, &op(1, (1, 1), 1)).unwrap_err();
        assert!(err.to_string().contains("CUDA only"), "{err}");
    }
}
