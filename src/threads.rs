//! The CPU's worker threads: a rayon pool whose workers flush denormals to zero.

/// Make the CPU flush denormal floats to zero (FTZ and DAZ), on this thread and on every rayon
/// worker. Training drives optimizer moments and small activations into the denormal range,
/// where x86 arithmetic is tens of times slower: measured here, a 4096-512-43 head's third
/// epoch took 11.2 s instead of 3.6 s. TensorFlow's executor runs with the same flags, so
/// results do not move beyond values below 1e-38. Idempotent; a no-op off x86-64.
pub fn flush_denormals() {
    flush_denormals_this_thread();
    rayon::broadcast(|_| flush_denormals_this_thread());
}

#[allow(deprecated)]
fn flush_denormals_this_thread() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR; every
    // other control bit (rounding mode, exception masks) is kept as it was.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Run `f` on a worker of a fresh rayon pool (as many threads as candle uses, each flushing
/// denormals). candle's CPU kernels and gemm parallelise with rayon; called from a thread that
/// is not a rayon worker, every parallel op is injected into the pool and waited for, which
/// costs more than the op itself for the small matmuls of head training (measured: a linear
/// 4096 -> 43 head epoch took 0.55 s from the main thread, 0.42-0.48 s from inside the pool).
pub fn in_worker_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("runner-worker-{i}"))
        .start_handler(|_| flush_denormals_this_thread())
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::debug!("no worker pool ({e}); running on the calling thread");
            f()
        }
    }
}
