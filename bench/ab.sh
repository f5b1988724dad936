#!/usr/bin/env bash
# Two runner binaries against each other on this CPU, interleaved (A, B, A, B, ...) in one run:
# AlexNet -> fc7 (batch 64) and VGG16 -> relu6 (batch 16) extraction, images/s, medians.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [pairs=4]
#
# e.g. before/after a build change: cp target/release/runner /tmp/runner-old; (change, build);
# bench/ab.sh /tmp/runner-old target/release/runner
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); PAIRS=${3:-4}
export THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS CANDLE_NUM_THREADS=$THREADS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for a in "alex alexnet fc7 6 64" "vgg vgg16 fc6 2 16"; do
  set -- $a
  printf 'name = "%s"\nseed = 1\n[backbone]\narch = "%s"\nweights = "random"\nfreeze = "%s"\n[dataset]\nkind = "synthetic"\nper_class = %s\nval_fraction = 0.2\n[run]\ndevice = "cpu"\nextract_batch = %s\ncache_dir = "%s/cache"\nresults_dir = "%s/res"\n' \
    "$1" "$2" "$3" "$4" "$5" "$work" "$work" >"$work/$1.toml"
done
log="$work/log"
for p in $(seq "$PAIRS"); do
  for who in A B; do
    bin=$A; [ $who = B ] && bin=$B
    for s in alex vgg; do
      "$bin" bench "$work/$s.toml" --batches 4 --epochs 1 2>/dev/null |
        sed -n "s/.*extraction \([0-9.]*\) images.*/$who $s \1/p" >>"$log"
    done
  done
done
python3 - "$log" "$A" "$B" <<'PY'
import statistics, sys, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, what, x = line.split()
    v[(who, what)].append(float(x))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
for what, label in [("alex", "AlexNet -> fc7, batch 64"), ("vgg", "VGG16 -> relu6, batch 16")]:
    a, b = statistics.median(v[("A", what)]), statistics.median(v[("B", what)])
    print(f"{label + ' (img/s)':<36}A {a:8.2f}  B {b:8.2f}  B/A {b / a:5.2f}x  (A: {v[('A', what)]}, B: {v[('B', what)]})")
PY
