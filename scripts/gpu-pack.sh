#!/usr/bin/env bash
# Pack a CUDA build for a GPU machine that receives the working tree with a size limit (such as a
# lent device that takes at most 64 MiB): the release binary, with its debug information
# stripped (the PTX and code stay) and gzipped, at gpu-bundle/runner.gz (~18 MB, against ~190 MB
# unstripped). scripts/gpu-check.sh takes that file as it is:
#
#   FEATURES="cuda cudnn" scripts/build-cuda.sh && scripts/gpu-pack.sh
#   # there, with gpu-bundle/ carried:  scripts/gpu-check.sh gpu-bundle/runner.gz OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target-cuda/release/runner}"
[ -x "$bin" ] || { echo "gpu-pack: no $bin (build it with scripts/build-cuda.sh)" >&2; exit 1; }
mkdir -p gpu-bundle
objcopy --strip-debug "$bin" gpu-bundle/runner.tmp
gzip -9 -c gpu-bundle/runner.tmp >gpu-bundle/runner.gz.tmp
rm gpu-bundle/runner.tmp
mv gpu-bundle/runner.gz.tmp gpu-bundle/runner.gz
echo "gpu-pack: gpu-bundle/runner.gz ($(du -h gpu-bundle/runner.gz | cut -f1)) from $bin"
