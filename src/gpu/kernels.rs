//! runner's CUDA kernels, as `.cu` files beside this one. Each is compiled after `PRELUDE`
//! (by nvrtc at first use, `gpu::compile`; by nvcc in `scripts/build-cuda.sh`; by the host C++
//! compiler in the tests, `kernel_host`), and loaded as its own module.

/// One kernel source and the module name it is loaded under.
#[derive(Debug)]
pub struct Source {
    pub module: &'static str,
    pub code: &'static str,
}

/// Loads and stores of f32, bf16 and f16 storage computing in f32, compiled ahead of every
/// kernel.
pub const PRELUDE: &str = include_str!("kernels/prelude.cu");

/// TensorFlow LRN + max pooling, one thread per pooled output (`gpu::fused`).
pub const LRN_POOL: Source = Source {
    module: "runner_lrn_max_pool",
    code: include_str!("kernels/lrn_pool.cu"),
};

/// Bias + ReLU in place over a convolution's output (`gpu::conv`).
pub const BIAS_RELU: Source = Source {
    module: "runner_gpu_conv",
    code: include_str!("kernels/bias_relu.cu"),
};

/// Bilinear resize of u8 images to f32 NCHW, one thread per output value (`data::fused_input`).
pub const RESIZE: Source = Source {
    module: "runner_fused_resize",
    code: include_str!("kernels/resize.cu"),
};

/// Adam/AdamW/SGD step, one thread per parameter value (`train::optim`).
pub const OPTIM: Source = Source {
    module: "runner_optimizer_step",
    code: include_str!("kernels/optim.cu"),
};

/// Softmax cross-entropy gradient per row, and column sums (`train::step`).
pub const XENT: Source = Source {
    module: "runner_softmax_xent_grad",
    code: include_str!("kernels/xent.cu"),
};
