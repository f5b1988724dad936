#!/usr/bin/env bash
# Streaming benchmarks (issue 17), AlexNet -> fc7 with random weights on the CPU, on folders of
# generated 96x128 JPEGs (bench/make_jpegs.py; needs python3 with Pillow, set PYTHON):
#
#   bench/stream.sh memory BIN [N...]       peak memory of `runner run` (2 epochs) per folder size
#                                           (default 2000 8000 32000)
#   bench/stream.sh ab OLD NEW [pairs=3]    interleaved A/B: images/s of decode + extraction of
#                                           2,000 JPEGs (cold cache, whole `runner run`), and
#                                           head epoch seconds on cached features (6,450
#                                           synthetic images, 4096 -> 43, 10 epochs); with
#                                           HEAD_ONLY=1 the head part only
#   bench/stream.sh limit BIN [cap_mb=256]  a head trained from a cache entry larger than a
#                                           cgroup memory limit, against the uncapped in-memory
#                                           path (needs root and cgroup v1 or v2)
#
# Data and results go to $WORK (default /tmp/runner-stream); JPEG folders are kept for reuse.
set -euo pipefail
mode=$1; shift
WORK=${WORK:-/tmp/runner-stream}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK"
export RAYON_NUM_THREADS=${THREADS:-$(nproc)} CANDLE_NUM_THREADS=${THREADS:-$(nproc)}

jpegs() { # N -> folder
  local d="$WORK/jpeg-$1"
  if [ ! -f "$d/.done" ]; then
    rm -rf "$d"; "$PYTHON" "$here/make_jpegs.py" "$d" "$1" && touch "$d/.done"
  fi
  echo "$d"
}

spec() { # name data cache_dir epochs [extra lines]
  printf 'name = "%s"\nseed = 1\n[backbone]\narch = "alexnet"\nweights = "random"\nfreeze = "fc7"\n[dataset]\nkind = "folder"\npath = "%s"\nimage_size = 227\nval_fraction = 0.2\n[train]\nepochs = %s\nbatch_size = 128\n[run]\ndevice = "cpu"\nextract_batch = 64\ncache_dir = "%s"\nresults_dir = "%s/res"\n%s\n' \
    "$1" "$2" "$4" "$3" "$WORK" "${5:-}"
}

case $mode in
memory)
  bin=$(realpath "$1"); shift
  sizes=${*:-2000 8000 32000}
  for n in $sizes; do
    d=$(jpegs "$n")
    rm -rf "$WORK/cache-mem"
    spec "mem$n" "$d" "$WORK/cache-mem" 2 >"$WORK/mem.toml"
    echo "images=$n $(python3 "$here/peak_rss.py" "$bin" run "$WORK/mem.toml" -q)"
  done
  ;;
ab)
  A=$(realpath "$1"); B=$(realpath "$2"); pairs=${3:-3}
  d=$(jpegs 2000)
  log="$WORK/ab.log"; : >"$log"
  # head epochs read features of 6,450 synthetic images (43 x 150, fc7) from each binary's own
  # cache (the formats differ), filled once before the pairs
  for who in A B; do
    printf 'name = "abh"\nseed = 1\n[backbone]\narch = "alexnet"\nweights = "random"\nfreeze = "fc7"\n[dataset]\nkind = "synthetic"\nper_class = 150\nval_fraction = 0.2\n[train]\nepochs = 10\nbatch_size = 128\n[run]\ndevice = "cpu"\ncache_dir = "%s/cache-head-%s"\nresults_dir = "%s/res"\n' \
      "$WORK" "$who" "$WORK" >"$WORK/abh-$who.toml"
    bin=$A; [ $who = B ] && bin=$B
    "$bin" run "$WORK/abh-$who.toml" -q --set train.epochs=1; rm -rf "$WORK/res/abh"
  done
  for p in $(seq "$pairs"); do
    for who in A B; do
      bin=$A; [ $who = B ] && bin=$B
      if [ -z "${HEAD_ONLY:-}" ]; then
        rm -rf "$WORK/cache-ab" "$WORK/res/ab"
        spec ab "$d" "$WORK/cache-ab" 1 >"$WORK/ab.toml"
        t0=$(date +%s.%N); "$bin" run "$WORK/ab.toml" -q; t1=$(date +%s.%N)
        echo "$who extract $(python3 -c "print(2000 / ($t1 - $t0))")" >>"$log"
      fi
      "$bin" run "$WORK/abh-$who.toml" -q
      python3 - "$WORK/res/abh" "$who" >>"$log" <<'PY'
import csv, glob, statistics, sys
rows = list(csv.DictReader(open(glob.glob(sys.argv[1] + "/*/epochs.csv")[0])))
print(sys.argv[2], "head", statistics.median(float(r["train_seconds"]) for r in rows[1:]))
PY
      rm -rf "$WORK/res/abh"
    done
  done
  python3 - "$log" "$A" "$B" <<'PY'
import collections, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, what, x = line.split()
    v[(who, what)].append(float(x))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
if v["A", "extract"]:
    a, b = statistics.median(v["A", "extract"]), statistics.median(v["B", "extract"])
    print(f"decode + extract, 2000 JPEGs (img/s)  A {a:7.2f}  B {b:7.2f}  B/A {b / a:5.3f}x")
a, b = statistics.median(v["A", "head"]), statistics.median(v["B", "head"])
print(f"head epoch, 5160 x 4096 -> 43 (s)     A {a:7.4f}  B {b:7.4f}  A/B {a / b:5.3f}x (speed)")
for k in sorted(v):
    print(*k, " ".join(f"{x:.4g}" for x in v[k]))
PY
  ;;
limit)
  bin=$(realpath "$1"); cap=${2:-256}
  # pool2 features: 13x13x256 floats = 173 KB per image; 43 x 50 synthetic images = 372 MB
  for c in on off; do
    cache="$WORK/cache-limit"; [ $c = off ] && cache=""
    printf 'name = "limit-%s"\nseed = 3\n[backbone]\narch = "alexnet"\nweights = "random"\nfreeze = "pool2"\noutput = "pool2"\n[dataset]\nkind = "synthetic"\nper_class = 50\nval_fraction = 0.2\n[train]\nepochs = 3\nbatch_size = 64\n[run]\ndevice = "cpu"\ncache = %s\ncache_dir = "%s"\nresults_dir = "%s/res"\n' \
      "$c" "$([ $c = on ] && echo true || echo false)" "${cache:-$WORK/unused}" "$WORK" >"$WORK/limit-$c.toml"
  done
  rm -rf "$WORK/res/limit-"*
  "$bin" run "$WORK/limit-on.toml" -q    # extraction, uncapped, fills the cache
  entry=$(ls -S "$WORK/cache-limit"/*.safetensors | head -1)
  echo "cache entry: $(du -m "$entry" | cut -f1) MB; cap: $cap MB"
  cg=/sys/fs/cgroup/memory/runner-limit
  if [ -d /sys/fs/cgroup/memory ]; then
    mkdir -p $cg; echo $((cap * 1024 * 1024)) >$cg/memory.limit_in_bytes; echo 0 >$cg/memory.swappiness || true
    capped() { bash -c "echo \$\$ >$cg/cgroup.procs; exec \"\$@\"" -- "$@"; }
  else
    cg=/sys/fs/cgroup/runner-limit; mkdir -p $cg; echo $((cap * 1024 * 1024)) >$cg/memory.max
    capped() { bash -c "echo \$\$ >$cg/cgroup.procs; exec \"\$@\"" -- "$@"; }
  fi
  rm -rf "$WORK/res/limit-on"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  echo "capped, from the cache entry: $(capped python3 "$here/peak_rss.py" "$bin" run "$WORK/limit-on.toml" -q)"
  echo "capped, run.cache = false:     $(capped python3 "$here/peak_rss.py" "$bin" run "$WORK/limit-off.toml" -q)"
  echo "uncapped, run.cache = false:   $(python3 "$here/peak_rss.py" "$bin" run "$WORK/limit-off.toml" -q)"
  for c in on off; do
    echo "$c: $(cut -d, -f1-6 "$WORK"/res/limit-$c/*/epochs.csv | tail -1)"
  done
  rmdir $cg 2>/dev/null || true
  ;;
*) echo "usage: $0 memory|ab|limit ..." >&2; exit 2 ;;
esac
