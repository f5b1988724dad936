#!/usr/bin/env bash
# GPU check for a CUDA build of runner (scripts/build-cuda.sh), on a machine with an NVIDIA GPU,
# its driver, the CUDA 13 libraries (cuBLAS, cuRAND, cudart: e.g. inside a PyTorch install) and
# python3 with numpy. Needs no Rust and no downloads; about 5 minutes on an H200 (the
# default and the opt-in passes and PyTorch); rows are appended to the CSV as they finish, so a
# run cut short keeps what it measured.
#
#   scripts/gpu-check.sh [RUNNER_BINARY] [OUT_DIR]     (RUNNER_BINARY may be gpu-pack.sh's runner.gz)
#
# 1. fidelity: features of the same images on the GPU (f32, TF32, bf16) against the CPU
#    (AlexNet to fc7, VGG16 to fc6/relu6, ResNet-50, EfficientNet-B0, ConvNeXt-Tiny, ViT-B/16 to pre_logits; random weights): the relative L2 error
#    |gpu - cpu| / |cpu| must be <= 1e-5 for f32, <= 2e-3 for TF32, <= 2e-2 for bf16 (issue 20's
#    bounds; the largest element error relative to the largest feature is printed too);
# 2. timing: AlexNet extraction of 39,216 32x32 images resized to 227 (f32, TF32, bf16),
#    VGG16, ResNet-50, EfficientNet-B0, ConvNeXt-Tiny and ViT-B/16 extraction of 3,698 images at 224, and 10 head epochs on the AlexNet fc7
#    features.
# 3. both again with RUNNER_GPU_FUSED=1 (configs `f32+fused` ...): the opt-in GPU paths that no
#    GPU has run yet (pinned uploads, preprocessing, runner's own cuDNN convolutions in a `cudnn`
#    build, LRN + pooling, the head's cross-entropy gradient and optimizer step), checked and
#    timed beside the default ones in the same run, and the fused head's 10th-epoch loss against
#    the default head's. GPU_CHECK_FUSED=0 skips them; GPU_CHECK_FUSED=conv,lrn (names as
#    RUNNER_GPU_FUSED takes them) runs those paths only (configs `f32+conv+lrn` ...).
# 4. when a row of 3 failed (a bound, or an error: a failing command is an ERROR row with its
#    stderr in OUT_DIR/details.tgz, never the end of the check), each path alone on the fidelity workloads
#    (rows `f32+conv` ...), and the head paths alone on the AlexNet head, to tell which is wrong.
# Prints one table and writes OUT_DIR/gpu-check.csv (+ gpu-check-ratios.txt, details.tgz with
# per-layer profiles and failed commands' stderr). Exit status 1 when a bound fails or a
# command errs.
set -uo pipefail
dev="${GPU_CHECK_DEVICE:-cuda}"          # cpu: a dry run of this script with a CPU build
scale="${GPU_CHECK_SCALE:-1}"           # divides the timed workloads (for dry runs)
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-target-cuda/release/runner}")"
out="$(mkdir -p "${2:-gpu-check-out}" && realpath "${2:-gpu-check-out}")"
work="$(mktemp -d)"
# Errors' stderr and the profiles go to OUT_DIR/details/, packed at the end as details.tgz, so
# that OUT_DIR holds a few plainly named files (gpu-check.csv, gpu-check-ratios.txt,
# gpu-name.txt, details.tgz): some machines hand back only a few files with such names.
det="$out/details"
mkdir -p "$det"
pack() { [ -d "$det" ] && tar -czf "$out/details.tgz" -C "$out" details && rm -rf "$det"; }
trap 'pack; rm -rf "$work"' EXIT
if [[ "$bin" == *.gz ]]; then   # packed by scripts/gpu-pack.sh
  gunzip -c "$bin" >"$work/runner" && chmod +x "$work/runner" || { echo "gpu-check: cannot unpack $bin" >&2; exit 2; }
  bin="$work/runner"
fi
cd "$work"

# The libraries the binary needs (driver's libcuda.so.1; cuBLAS, cuRAND, cudart 13): for each one
# the loader does not find, look where NVIDIA's wheels and drivers usually are, then everywhere.
for lib in $(ldd "$bin" | awk '/not found/ {print $1}'); do
  d=$(find /usr/local/nvidia /usr/local/cuda* /usr/lib/x86_64-linux-gnu /opt /usr/local/lib /usr/lib/python3* \
        -name "$lib" 2>/dev/null | head -n1)
  [ -n "$d" ] || d=$(find / -xdev -name "$lib" -not -path '/proc/*' 2>/dev/null | head -n1)
  [ -n "$d" ] && LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
if ldd "$bin" | grep "not found"; then echo "gpu-check: libraries missing (above)" >&2; exit 2; fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$bin" devices || exit 2
if [ "$dev" = cuda ] && ! "$bin" devices | grep -q "^cuda:0"; then echo "gpu-check: no usable GPU" >&2; exit 2; fi

spec() { # name arch freeze per_class
  cat >"$1.toml" <<TOML
name = "$1"
seed = 7
[backbone]
arch = "$2"
weights = "random"
freeze = "$3"
[dataset]
kind = "synthetic"
per_class = $4
[head]
hidden = []
[train]
epochs = 10
batch_size = 128
[run]
cache = false
results_dir = "$work/results"
TOML
}
spec fid_alexnet alexnet fc7 3   # 129 images
spec fid_vgg16 vgg16 fc6 1       # 43 images
spec fid_resnet50 resnet50 pre_logits 1   # 43 images
spec fid_efficientnet_b0 efficientnet_b0 pre_logits 1   # 43 images (depthwise convolutions, SiLU, excitation)
spec fid_convnext_tiny convnext_tiny pre_logits 1   # 43 images (7x7 depthwise, channel LayerNorm, GELU)
spec fid_vit_b_16 vit_b_16 pre_logits 1   # 43 images (attention, token LayerNorm, GELU)
spec alexnet alexnet fc7 $((912 / scale))     # 39,216 images (the GTSRB training set has 39,209)
spec vgg16 vgg16 fc6 $(( (86 + scale - 1) / scale ))          # 3,698 images (flower_photos has 3,670)
spec resnet50 resnet50 pre_logits $(( (86 + scale - 1) / scale ))   # 3,698 images at 224
spec efficientnet_b0 efficientnet_b0 pre_logits $(( (86 + scale - 1) / scale ))   # likewise
spec convnext_tiny convnext_tiny pre_logits $(( (86 + scale - 1) / scale ))   # likewise
spec vit_b_16 vit_b_16 pre_logits $(( (86 + scale - 1) / scale ))   # likewise

echo "config,workload,images,seconds,images_per_s,epoch_s,rel_l2_err,max_err_rel,bound,ok" >"$out/gpu-check.csv"
fail=0
# GPU_CHECK_FUSED: 1 (default) every opt-in path on at once; a list (e.g. conv,lrn) those only; 0 none
fused_set="${GPU_CHECK_FUSED:-1}"
fused_modes="0"
{ [ "$dev" = cuda ] || [ -n "${GPU_CHECK_FUSED:-}" ]; } && [ "$fused_set" != 0 ] && fused_modes="0 $fused_set"
for net in alexnet vgg16 resnet50 efficientnet_b0 convnext_tiny vit_b_16; do
  RUNNER_GPU_FUSED=0 "$bin" extract "fid_$net.toml" --out "cpu_$net.npz" --set run.device=cpu >/dev/null || exit 1
done

# A failed command is a row (ok = ERROR, its stderr kept in OUT_DIR), not the end of the check:
# the other rows and the PyTorch peer still run.
error_row() { # cfg workload log
  echo "$1,$2,,,,,,,,ERROR" >>"$out/gpu-check.csv"
  cp "$3" "$det/error-$1-${2// /_}.txt" 2>/dev/null
  echo "gpu-check: $1 $2 failed (its stderr: details/error-$1-${2// /_}.txt):" >&2
  tail -n 5 "$3" >&2
  fail=1
}

fidelity() { # cfg tag net
  local cfg=$1 tag=$2 net=$3 sets bound
  case $cfg in f32) sets=(--set run.dtype=f32 --set run.tf32=false); bound=1e-5 ;;
               tf32) sets=(--set run.dtype=f32 --set run.tf32=true); bound=2e-3 ;;
               bf16) sets=(--set run.dtype=bf16); bound=2e-2 ;; esac
  rm -f "gpu_$net.npz"
  if ! "$bin" extract "fid_$net.toml" --out "gpu_$net.npz" --set run.device=$dev "${sets[@]}" >/dev/null 2>err.txt; then
    error_row "$cfg$tag" "fidelity $net" err.txt; return
  fi
  line=$(python3 - "cpu_$net.npz" "gpu_$net.npz" "$bound" <<'PY'
import sys, numpy as np
a = np.load(sys.argv[1])["features"].astype(np.float64)
b = np.load(sys.argv[2])["features"].astype(np.float64)
# judged like the golden tests: relative L2 error; the max error relative to the largest
# feature is printed beside it
err = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
mx = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
print(f"{a.shape[0]},{err:.3e},{mx:.3e},{sys.argv[3]},{'yes' if err <= float(sys.argv[3]) else 'NO'}")
PY
)
  IFS=, read -r n err mx b ok <<<"$line"
  [ "$ok" = yes ] || fail=1
  echo "$cfg$tag,fidelity $net,$n,,,,$err,$mx,$b,$ok" >>"$out/gpu-check.csv"
}

bench() { # cfg spec epochs sets...
  local cfg=$1 s=$2 ep=$3 dir; shift 3
  if ! dir=$("$bin" bench "$s.toml" --batches 100000 --epochs "$ep" --set run.device=$dev \
        --set run.extract_batch=256 "$@" 2>err.txt | sed -n 's/.*written to //p') || [ -z "$dir" ]; then
    error_row "$cfg" "extract $s" err.txt; return
  fi
  python3 - "$dir/summary.json" "$dir/epochs.csv" "$cfg" "$s" "$ep" <<'PY' >>"$out/gpu-check.csv"
import sys, json, csv, statistics
s = json.load(open(sys.argv[1]))
rows = list(csv.DictReader(open(sys.argv[2])))
ep = [float(r["train_seconds"]) for r in rows][1:]  # training pass; the first is warm-up
open(f"loss-{sys.argv[3]}-{sys.argv[4]}", "w").write(rows[-1]["train_loss"] if rows else "nan")
epoch = f"{statistics.median(ep):.4f}" if int(sys.argv[5]) > 1 and ep else ""
print(f"{sys.argv[3]},extract {sys.argv[4]},{s['n_train']},{s['extract_seconds']:.3f},"
      f"{s['extract_images_per_second']:.0f},{epoch},,,,")
PY
}

# The 10th-epoch training loss of the same seeded run, with opt-in paths against without (GPU
# sums differ in order, so a loose bound).
head_loss() { # cfg (a loss-<cfg>-alexnet file) against loss-f32-alexnet
  [ -f "loss-f32-alexnet" ] && [ -f "loss-$1-alexnet" ] || return
  python3 - "$(cat loss-f32-alexnet)" "$(cat "loss-$1-alexnet")" "$1" <<'PY' >>"$out/gpu-check.csv"
import sys
a, b = float(sys.argv[1]), float(sys.argv[2])
err = abs(a - b) / max(abs(a), 1e-30)
print(f"{sys.argv[3]},fidelity head loss (10 epochs),,,,,{err:.3e},,1e-2,{'yes' if err <= 1e-2 else 'NO'}")
PY
  tail -n1 "$out/gpu-check.csv" | grep -q ',yes$' || fail=1
}

for fused in $fused_modes; do
export RUNNER_GPU_FUSED=$fused
tag=""; [ "$fused" = 1 ] && tag="+fused"; [ "$fused" != 0 ] && [ "$fused" != 1 ] && tag="+${fused//,/+}"
for net in alexnet vgg16 resnet50 efficientnet_b0 convnext_tiny vit_b_16; do
  for cfg in f32 tf32 bf16; do
    [ "$dev" = cpu ] && [ "$cfg" = bf16 ] && continue   # the CPU refuses bf16
    fidelity $cfg "$tag" $net
  done
done
bench f32$tag alexnet 10 --set run.dtype=f32 --set run.tf32=false
bench tf32$tag alexnet 1 --set run.dtype=f32 --set run.tf32=true
[ "$dev" = cpu ] || bench bf16$tag alexnet 1 --set run.dtype=bf16
bench f32$tag vgg16 1 --set run.dtype=f32 --set run.tf32=false
bench tf32$tag vgg16 1 --set run.dtype=f32 --set run.tf32=true
[ "$dev" = cpu ] || bench bf16$tag vgg16 1 --set run.dtype=bf16
bench f32$tag resnet50 1 --set run.dtype=f32 --set run.tf32=false
bench tf32$tag resnet50 1 --set run.dtype=f32 --set run.tf32=true
[ "$dev" = cpu ] || bench bf16$tag resnet50 1 --set run.dtype=bf16
bench f32$tag efficientnet_b0 1 --set run.dtype=f32 --set run.tf32=false
bench tf32$tag efficientnet_b0 1 --set run.dtype=f32 --set run.tf32=true
[ "$dev" = cpu ] || bench bf16$tag efficientnet_b0 1 --set run.dtype=bf16
for net in convnext_tiny vit_b_16; do
  bench f32$tag $net 1 --set run.dtype=f32 --set run.tf32=false
  [ "$dev" = cpu ] || bench bf16$tag $net 1 --set run.dtype=bf16
done
[ "$fused" != 0 ] && head_loss "f32$tag"
done

# When the opt-in run had a failure, each path alone on the small fidelity workloads (seconds),
# so that one GPU session tells which path is at fault.
if [ "$fused_modes" != 0 ] &&
   awk -F, 'NR > 1 && $1 ~ /\+/ && ($10 == "NO" || $10 == "ERROR") { bad = 1 } END { exit !bad }' "$out/gpu-check.csv"; then
  for path in upload resize conv lrn download; do
    export RUNNER_GPU_FUSED=$path
    for net in alexnet vgg16 resnet50 efficientnet_b0 convnext_tiny vit_b_16; do
      for cfg in f32 bf16; do
        [ "$dev" = cpu ] && [ "$cfg" = bf16 ] && continue   # the CPU refuses bf16
        fidelity $cfg "+$path" $net
      done
    done
  done
  for path in xent optim; do
    export RUNNER_GPU_FUSED=$path
    rm -f "loss-f32+$path-alexnet"
    bench "f32+$path" alexnet 10 --set run.dtype=f32 --set run.tf32=false
    head_loss "f32+$path"
  done
fi
unset RUNNER_GPU_FUSED

# Where the time goes: the per-layer profile (RUNNER_PROFILE=1, each layer between two device
# synchronisations) of 40 extraction batches, with the opt-in paths off and on, and the
# convolution algorithm cuDNN's measurement chose for each shape (the `conv` path's debug log):
# details/profile-<net>-<cfg><tag>.txt. GPU_CHECK_PROFILE=0 skips it.
if [ "${GPU_CHECK_PROFILE:-1}" = 1 ]; then
  for fused in $fused_modes; do
    tag=""; [ "$fused" = 1 ] && tag="+fused"; [ "$fused" != 0 ] && [ "$fused" != 1 ] && tag="+${fused//,/+}"
    for net in alexnet vgg16 resnet50 efficientnet_b0 convnext_tiny vit_b_16; do
      for cfg in bf16 f32; do
        [ "$dev" = cpu ] && [ "$cfg" = bf16 ] && continue
        RUNNER_PROFILE=1 RUST_LOG="warn,runner::gpu::conv=debug" RUNNER_GPU_FUSED=$fused \
          "$bin" bench "$net.toml" --batches 40 --epochs 1 --set run.device=$dev \
          --set run.extract_batch=256 --set run.dtype=$cfg --set run.tf32=false \
          >/dev/null 2>"$det/profile-$net-$cfg$tag.txt" ||
          echo "gpu-check: the $net $cfg$tag profile failed (see details/profile-$net-$cfg$tag.txt)" >&2
      done
    done
  done
fi

# The PyTorch peer on the same GPU, same workloads (when python3 has torch with CUDA).
peer="$(dirname "$bin")/torch_peer.py"
[ -f "$peer" ] || peer="$repo/bench/torch_peer.py"
if [ "$dev" = cuda ] && [ -f "$peer" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  for cfg in f32 tf32 bf16; do
    python3 "$peer" alexnet --device cuda --dtype $cfg --batch 256 --images $((43 * 912 / scale)) --runs 3 |
      sed -n 's/.*: \([0-9.]*\) images\/s (\([0-9]*\) images in \([0-9.]*\) s)/'"torch-$cfg,extract alexnet,\2,\3,\1,,,,,/p" >>"$out/gpu-check.csv"
    python3 "$peer" vgg16 --device cuda --dtype $cfg --batch 256 --images $((43 * 86 / scale)) --runs 3 |
      sed -n 's/.*: \([0-9.]*\) images\/s (\([0-9]*\) images in \([0-9.]*\) s)/'"torch-$cfg,extract vgg16,\2,\3,\1,,,,,/p" >>"$out/gpu-check.csv"
    python3 "$peer" resnet50 --device cuda --dtype $cfg --batch 256 --images $((43 * 86 / scale)) --runs 3 |
      sed -n 's/.*: \([0-9.]*\) images\/s (\([0-9]*\) images in \([0-9.]*\) s)/'"torch-$cfg,extract resnet50,\2,\3,\1,,,,,/p" >>"$out/gpu-check.csv"
    for net in efficientnet_b0 convnext_tiny vit_b_16; do
      python3 "$peer" $net --device cuda --dtype $cfg --batch 256 --images $((43 * 86 / scale)) --runs 3 |
        sed -n 's/.*: \([0-9.]*\) images\/s (\([0-9]*\) images in \([0-9.]*\) s)/'"torch-$cfg,extract $net,\2,\3,\1,,,,,/p" >>"$out/gpu-check.csv"
    done
  done
  python3 "$peer" head --device cuda --epochs 5 --n $((43 * 912 / scale)) |
    sed -n 's/.*: \([0-9.]*\) s\/epoch/'"torch-f32,head epoch,$((43 * 912 / scale)),,,\1,,,,/p" >>"$out/gpu-check.csv"
fi

if command -v column >/dev/null; then column -s, -t <"$out/gpu-check.csv"; else cat "$out/gpu-check.csv"; fi
# runner / PyTorch speed per row (> 1: runner is faster), when the peer ran
python3 - "$out/gpu-check.csv" <<'PY' | tee "$out/gpu-check-ratios.txt"
import sys, csv
rows = list(csv.DictReader(open(sys.argv[1])))
peer = {}
for r in rows:
    if r["config"].startswith("torch-"):
        key = r["workload"].replace("extract ", "")
        peer[(r["config"][6:], key)] = float(r["epoch_s"] or r["seconds"])
if peer:
    print("runner/PyTorch speed (PyTorch seconds / runner seconds):")
for r in rows:
    cfg = r["config"]
    if cfg.startswith("torch-") or not r["workload"].startswith("extract"):
        continue
    net = r["workload"].replace("extract ", "")
    base = cfg.split("+")[0]
    if (base, net) in peer and r["seconds"]:
        print(f"  {cfg:12} {net:8} extraction {peer[(base, net)] / float(r['seconds']):.2f}x")
    if r["epoch_s"] and ("f32", "head epoch") in peer:
        print(f"  {cfg:12} {net:8} head epoch {peer[('f32', 'head epoch')] / float(r['epoch_s']):.2f}x")
PY
nvidia-smi --query-gpu=name --format=csv,noheader >"$out/gpu-name.txt" 2>/dev/null || true
exit $fail
