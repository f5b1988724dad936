#!/usr/bin/env bash
# runner against PyTorch on this CPU: the same workloads, the same threads, in interleaved pairs
# (runner, torch, runner, torch, ...) in one run; prints medians and the ratio runner/PyTorch
# (above 1.0: runner is faster).
#
#   PYTHON=.venv/bin/python bench/cpu.sh [pairs=2]      # torch + torchvision in $PYTHON
#
# Workloads (random weights: speed does not depend on them; 32x32 u8 images resized on the fly):
#   alexnet  AlexNet (the seed's) to fc7, batch 64: images/s
#   vgg16    VGG16 to fc6/relu6, batch 16: images/s
#   resnet50 torchvision's ResNet-50 to pre_logits (the pooled 2048-vector), batch 16: images/s
#            (PyTorch in eval mode with its batch norms; runner folds them into the convolutions)
#   efficientnet_b0  torchvision's EfficientNet-B0 to pre_logits (the pooled 1280-vector),
#            batch 16: images/s (likewise)
#   convnext_tiny  torchvision's ConvNeXt-Tiny to pre_logits (the pooled, normalised
#            768-vector), batch 16: images/s
#   vit_b_16 torchvision's ViT-B/16 to pre_logits (the class token after the final LayerNorm),
#            batch 16: images/s
#   head     one epoch of a linear 4096 -> 43 head, Adam, batch 128, on 34,799 cached features: s
#   sweep    12 head configs (lr x hidden x optimizer), 5 epochs each on 2,150 cached features,
#            validation every epoch: s for the whole sweep (runner: `runner sweep`, cache warm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PAIRS=${1:-2}
export THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS CANDLE_NUM_THREADS=$THREADS
cargo build --release -q
cargo bench --bench head_epoch --no-run -q 2>/dev/null
BIN=$PWD/target/release/runner
HEAD=$(ls -t target/release/deps/head_epoch-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
spec() { # name arch freeze per_class batch [extra]
  printf 'name = "%s"\nseed = 1\n[backbone]\narch = "%s"\nweights = "random"\nfreeze = "%s"\n[dataset]\nkind = "synthetic"\nper_class = %s\nval_fraction = 0.2\n[head]\nhidden = []\n[train]\nepochs = 5\nbatch_size = 128\n[run]\ndevice = "cpu"\nextract_batch = %s\ncache_dir = "%s/cache"\nresults_dir = "%s/res"\n%s' \
    "$1" "$2" "$3" "$4" "$5" "$work" "$work" "${6:-}" >"$work/$1.toml"
}
spec alex alexnet fc7 6 64          # 258 images: 4 batches, the first is warm-up
spec vgg vgg16 fc6 2 16              # 86 images: 4 batches of 16 timed, the first is warm-up
spec resnet resnet50 pre_logits 2 16 # likewise
spec b0 efficientnet_b0 pre_logits 2 16
spec convnext convnext_tiny pre_logits 2 16
spec vit vit_b_16 pre_logits 2 16
spec sweep alexnet fc7 50 64 '[sweep]
mode = "grid"
"train.lr" = [0.001, 0.003, 0.01]
"head.hidden" = [[], [256]]
"train.optimizer" = ["adam", "sgd"]
'
"$BIN" sweep "$work/sweep.toml" --index 0 -q >/dev/null   # extracts once: the cache is warm
log="$work/log"
for p in $(seq "$PAIRS"); do
  "$BIN" bench "$work/alex.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner alexnet \1/p' >>"$log"
  "$PY" bench/torch_peer.py alexnet --batch 64 --images 192 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch alexnet \1/p' >>"$log"
  "$BIN" bench "$work/vgg.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner vgg16 \1/p' >>"$log"
  "$PY" bench/torch_peer.py vgg16 --batch 16 --images 48 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch vgg16 \1/p' >>"$log"
  "$BIN" bench "$work/resnet.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner resnet50 \1/p' >>"$log"
  "$PY" bench/torch_peer.py resnet50 --batch 16 --images 48 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch resnet50 \1/p' >>"$log"
  "$BIN" bench "$work/b0.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner efficientnet_b0 \1/p' >>"$log"
  "$PY" bench/torch_peer.py efficientnet_b0 --batch 16 --images 48 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch efficientnet_b0 \1/p' >>"$log"
  "$BIN" bench "$work/convnext.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner convnext_tiny \1/p' >>"$log"
  "$PY" bench/torch_peer.py convnext_tiny --batch 16 --images 48 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch convnext_tiny \1/p' >>"$log"
  "$BIN" bench "$work/vit.toml" --batches 4 --epochs 1 2>/dev/null | sed -n 's/.*extraction \([0-9.]*\) images.*/runner vit_b_16 \1/p' >>"$log"
  "$PY" bench/torch_peer.py vit_b_16 --batch 16 --images 48 --runs 2 | sed -n 's/.*: \([0-9.]*\) images\/s.*/torch vit_b_16 \1/p' >>"$log"
  "$HEAD" 3 | sed -n 's/runner head epoch [2-9]: train \([0-9.]*\) s.*/runner head \1/p' >>"$log"
  "$PY" bench/torch_peer.py head --epochs 3 | sed -n 's/.*: \([0-9.]*\) s\/epoch/torch head \1/p' >>"$log"
  s=$(date +%s.%N); "$BIN" sweep "$work/sweep.toml" --force -q >/dev/null; e=$(date +%s.%N)
  echo "runner sweep $(echo "$e - $s" | bc)" >>"$log"
  "$PY" bench/torch_peer.py sweep --epochs 5 --n 2150 | sed -n 's/.*: \([0-9.]*\) s/torch sweep \1/p' >>"$log"
done
"$PY" - "$log" "$THREADS" <<'PY'
import statistics, sys, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, what, x = line.split()
    v[(who, what)].append(float(x))
print(f"threads {sys.argv[2]}; medians over {max(len(x) for x in v.values())} measurements each")
print(f"{'workload':<34}{'runner':>10}{'PyTorch':>10}{'runner/PyTorch':>16}")
for what, unit, higher in [("alexnet", "img/s", True), ("vgg16", "img/s", True), ("resnet50", "img/s", True),
                           ("efficientnet_b0", "img/s", True), ("convnext_tiny", "img/s", True),
                           ("vit_b_16", "img/s", True), ("head", "s/epoch", False), ("sweep", "s", False)]:
    r, t = statistics.median(v[("runner", what)]), statistics.median(v[("torch", what)])
    ratio = r / t if higher else t / r
    label = {"alexnet": "AlexNet -> fc7, batch 64", "vgg16": "VGG16 -> relu6, batch 16",
             "resnet50": "ResNet-50 -> pre_logits, batch 16",
             "efficientnet_b0": "EfficientNet-B0 -> pre_logits, b16",
             "convnext_tiny": "ConvNeXt-Tiny -> pre_logits, b16",
             "vit_b_16": "ViT-B/16 -> pre_logits, batch 16",
             "head": "head epoch, 34,799 x 4096", "sweep": "12-point head sweep"}[what]
    print(f"{label + ' (' + unit + ')':<34}{r:>10.3f}{t:>10.3f}{ratio:>15.2f}x")
PY
