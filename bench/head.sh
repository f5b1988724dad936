#!/usr/bin/env bash
# Head-training epoch on cached features: runner vs PyTorch, interleaved in pairs, same machine,
# same threads, same batch size. Prints the median epoch time of each and the ratio.
#   PYTHON=/path/to/venv/bin/python bench/head.sh [pairs] [epochs]
# Needs torch in $PYTHON (pip install torch). Epoch 1 of each process is warm-up and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PAIRS=${1:-3}
EPOCHS=${2:-4}
export THREADS=${THREADS:-2}
cargo bench --bench head_epoch --no-run >/dev/null 2>&1
BIN=$(ls -t target/release/deps/head_epoch-* | grep -v '\.d$' | head -1)
log=$(mktemp)
for p in $(seq "$PAIRS"); do
  "$BIN" "$EPOCHS" | tail -n +2 >>"$log"
  "$PYTHON" bench/head_torch.py "$EPOCHS" | tail -n +2 >>"$log"
done
"$PYTHON" - "$log" <<'PY'
import re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
t = {"runner": [], "torch": []}
for r in rows:
    m = re.match(r"(runner|torch) head epoch \d+: train ([0-9.]+) s", r)
    if m:
        t[m.group(1)].append(float(m.group(2)))
mr, mt = statistics.median(t["runner"]), statistics.median(t["torch"])
print(f"head epoch (34,799 x 4096 -> 43, batch 128, Adam): runner {mr:.3f} s, torch {mt:.3f} s "
      f"over {len(t['runner'])}/{len(t['torch'])} epochs; runner speed = {mt / mr:.2f}x torch")
PY
rm -f "$log"
