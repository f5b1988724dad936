//! runner's CUDA kernels run on the host, for tests on machines without a GPU.
//!
//! Every kernel runner compiles with nvrtc (`pub const KERNEL`) is plain per-thread CUDA C++: no
//! shared memory, no barriers, no warp operations. So the very same source text, behind a small
//! shim (`SHIM`: `__global__`/`__device__` as nothing, `blockIdx`/`threadIdx` as globals, the
//! bit-cast intrinsics), compiles with the host's C++ compiler, and a driver calls the kernel once
//! per (block, thread) of the launch grid. Each kernel's tests hold its output to the CPU
//! reference it follows. What this cannot check is the device's own arithmetic (`expf`, `powf`
//! to within their documented ulps, FMA contraction: the host build uses
//! `-ffp-contract=off`) and anything about timing; `scripts/gpu-check.sh` does that on a GPU.
//! Inline PTX has a host fallback under `#ifndef __CUDA_ARCH__` in the kernel itself.

use std::path::Path;
use std::process::Command;

/// Declarations that let CUDA C++ kernels compile as host C++.
const SHIM: &str = r#"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
struct Dim3 { unsigned int x, y, z; };
static Dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned int i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int i; memcpy(&i, &f, 4); return i; }
"#;

/// Helpers for drivers: `input(i)` is the i-th input's bytes, `output(i, p, bytes)` writes the
/// i-th output, `launch(grid, block, f)` calls `f` for every block and thread in order.
const DRIVER_HELPERS: &str = r#"
static char** g_argv;
static std::vector<unsigned char> input(int i) {
  FILE* f = fopen(g_argv[1 + 2 * i], "rb");
  if (!f) { perror("input"); exit(2); }
  std::vector<unsigned char> v;
  unsigned char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + n);
  fclose(f);
  return v;
}
static void output(int i, const void* p, size_t bytes) {
  FILE* f = fopen(g_argv[2 + 2 * i], "wb");
  if (!f || fwrite(p, 1, bytes, f) != bytes) { perror("output"); exit(2); }
  fclose(f);
}
template <class F> static void launch(unsigned int grid, unsigned int block, F f) {
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned int b = 0; b < grid; b++) {
    blockIdx = {b, 0, 0};
    for (unsigned int t = 0; t < block; t++) {
      threadIdx = {t, 0, 0};
      f();
    }
  }
}
"#;

/// Compile `kernel` (a `KERNEL` source, after `gpu::kernels::PRELUDE` as on the device) with `driver` (a C++ body for `main`, using the helpers
/// above) on the host, run it on `inputs`, and return its outputs. `main`'s body reads input `i`
/// with `input(i)` and writes output `i` with `output(i, pointer, bytes)`; there are as many
/// outputs as inputs (an unused one may be left unwritten: it comes back empty).
pub fn run(kernel: &str, driver: &str, inputs: &[&[u8]]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("temporary folder");
    let src = dir.path().join("kernel.cpp");
    let exe = dir.path().join("kernel");
    std::fs::write(
        &src,
        format!(
            "{SHIM}\n{}\n{kernel}\n{DRIVER_HELPERS}\nint main(int argc, char** argv) {{\n  \
             (void)argc;\n  g_argv = argv;\n{driver}\n  return 0;\n}}\n",
            crate::gpu::kernels::PRELUDE
        ),
    )
    .expect("write the host kernel source");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-O1", "-std=c++17", "-ffp-contract=off", "-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("the host C++ compiler `{cxx}` (needed to run CUDA kernels on the host): {e}")
        });
    assert!(
        out.status.success(),
        "the kernel does not compile as host C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(&exe);
    for (i, bytes) in inputs.iter().enumerate() {
        let (inp, outp) = (io(dir.path(), "in", i), io(dir.path(), "out", i));
        std::fs::write(&inp, bytes).expect("write a kernel input");
        cmd.arg(inp).arg(outp);
    }
    let out = cmd.output().expect("run the host kernel");
    assert!(
        out.status.success(),
        "the host kernel failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (0..inputs.len())
        .map(|i| std::fs::read(io(dir.path(), "out", i)).unwrap_or_default())
        .collect()
}

fn io(dir: &Path, what: &str, i: usize) -> std::path::PathBuf {
    dir.join(format!("{what}{i}.bin"))
}

/// Little-endian bytes of f32 values, and back.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_u16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A 16-bit float format as the tests use it: name (as in the kernels' `ld_*`/`st_*`), f32 to
/// its bits rounded to nearest even, and its bits back to f32, as the `half` crate does them.
pub type HalfFormat = (&'static str, fn(f32) -> u16, fn(u16) -> f32);

pub const HALF_FORMATS: [HalfFormat; 2] = [
    ("bf16", bf16_narrow, bf16_widen),
    ("f16", f16_narrow, f16_widen),
];

fn bf16_narrow(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

fn bf16_widen(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

fn f16_narrow(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

fn f16_widen(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// A one-input op's output on the CPU, as f32 values: the reference a kernel is held to.
pub fn cpu_op1<T: candle_core::WithDType>(
    data: Vec<T>,
    shape: impl Into<candle_core::Shape>,
    op: &impl candle_core::CustomOp1,
) -> Vec<f32> {
    candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
        .and_then(|t| t.apply_op1_no_bwd(op))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("the CPU reference op")
}

/// Pseudo-random values in [-scale, scale) (a fixed sequence).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_runs_every_thread_once() {
        let k = r#"extern "C" __global__ void ids(unsigned int* out, unsigned int n) {
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) out[i] += i + 1; }"#;
        let d = r#"  std::vector<unsigned int> o(1000, 0);
  launch(8, 128, [&] { ids(o.data(), 1000); });
  output(0, o.data(), o.size() * 4);"#;
        let out = run(k, d, &[&[]]);
        let got: Vec<u32> = out[0]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, (1..=1000).collect::<Vec<u32>>());
    }
}
