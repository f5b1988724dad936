#!/usr/bin/env bash
# Build runner with CUDA on a machine that has neither a CUDA toolkit nor a GPU.
#
# NVIDIA's CUDA 13 wheels from PyPI hold a complete toolkit tree (nvcc, headers, cccl, libraries);
# they are installed into a venv, the variables candle's build scripts read are set, and
# `cargo build --release --features cuda` runs into target-cuda/. The binary lands at
# target-cuda/release/runner and needs, where it runs, an NVIDIA driver (libcuda.so.1) and the
# CUDA 13 libraries libcublas, libcublasLt, libcurand, libcudart (see scripts/gpu-check.sh).
#
# Settings (environment): CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/4090),
# CUDA_WHEELS_VERSION (default 13.0.3.0: its PTX runs on drivers >= 580 / CUDA 13.0),
# CUDA_VENV (default .venv-cuda), FEATURES (default cuda; "cuda cudnn" adds cuDNN's convolutions,
# installing its wheel too; the binary then also needs libcudnn.so.9 where it runs), CLIPPY
# (1: also run clippy with those features, warnings as errors).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${CUDA_WHEELS_VERSION:-13.0.3.0}"
venv="${CUDA_VENV:-.venv-cuda}"
features="${FEATURES:-cuda}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# The meta-package pins every component to one release (the nvcc wheel's own deps drift).
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "cuda-toolkit[nvcc,cccl,cudart,cublas,curand,nvrtc]==$version"

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export CUDA_HOME="$site/nvidia/cu13"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build-cuda: no nvcc under $CUDA_HOME" >&2; exit 1; }
export NVCC="$CUDA_HOME/bin/nvcc" CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

# The wheels ship only versioned libraries; the linker wants the unversioned names.
lib="$CUDA_HOME/lib"
for name in cudart cublas cublasLt nvrtc curand; do
  real="$(ls "$lib"/lib$name.so.* 2>/dev/null | sort | head -n1 || true)"
  [ -n "$real" ] || { echo "build-cuda: $lib/lib$name.so.* missing" >&2; exit 1; }
  ln -sf "$(basename "$real")" "$lib/lib$name.so"
done

# cuDNN (FEATURES="cuda cudnn"): its wheel, pinned to a release cudarc knows (9.21); any cuDNN 9
# where the binary runs will do.
if [[ " $features " == *" cudnn "* ]]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "nvidia-cudnn-cu13==${CUDNN_WHEEL_VERSION:-9.21.1.3}"
  export CUDNN_PATH="$site/nvidia/cudnn" CUDNN_LIB="$site/nvidia/cudnn"
  ln -sf libcudnn.so.9 "$CUDNN_PATH/lib/libcudnn.so"
fi

# No wheel carries the driver's libcuda.so. For linking only, make a stub exporting the driver
# functions cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34). It lives in lib/stubs,
# which the linker searches but the loader never does: the real driver is used at run time.
stubs="$CUDA_HOME/lib/stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
  mkdir -p "$stubs"
  cudarc="$(cargo metadata --format-version 1 --features "$features" 2>/dev/null |
    "$venv/bin/python" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" | awk '{print $4}' |
    sort -u | sed 's/.*/int &(void) { return 34; }/' >"$stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
fi

# cudarc checks `nvcc --version` against the CUDA versions it knows; candle-kernels caches PTX
# without noticing an nvcc change, so a different wheel version needs `cargo clean -p candle-kernels`.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
cargo build --release --features "$features" --bin runner
# CLIPPY=1: the lints CI holds the CPU build to, for the GPU-only code as well
if [ "${CLIPPY:-0}" = 1 ]; then
  cargo clippy --release --features "$features" --all-targets -- -D warnings
fi

# runner's own CUDA kernels (src/gpu/kernels/*.cu) are compiled by nvrtc when first used (on a
# GPU), each after prelude.cu; compile each here with the wheel's nvcc too, so a kernel that does
# not compile fails the build, not a GPU run.
kernels=src/gpu/kernels
for src in "$kernels"/*.cu; do
  [ "$(basename "$src")" = prelude.cu ] && continue
  cu="$CARGO_TARGET_DIR/kernel-$(basename "$src")"
  cat "$kernels/prelude.cu" "$src" >"$cu"
  "$NVCC" --ptx -arch=compute_75 -o "${cu%.cu}.ptx" "$cu" || { echo "build-cuda: $src does not compile" >&2; exit 1; }
  # and the PTX (inline asm included) assembles for the target GPU, as the driver will do
  "$CUDA_HOME/bin/ptxas" -arch="sm_$CUDA_COMPUTE_CAP" -o "${cu%.cu}.cubin" "${cu%.cu}.ptx" ||
    { echo "build-cuda: $src: its PTX does not assemble for sm_$CUDA_COMPUTE_CAP" >&2; exit 1; }
  echo "build-cuda: $src compiles (nvcc --ptx compute_75; ptxas sm_$CUDA_COMPUTE_CAP)"
done
echo "build-cuda: built $CARGO_TARGET_DIR/release/runner (features: $features, sm_$CUDA_COMPUTE_CAP, CUDA wheels $version)"
