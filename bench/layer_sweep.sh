#!/usr/bin/env bash
# Which layer transfers best, from a cold cache: a 4-point sweep over AlexNet's output (pool2,
# pool5, fc6, fc7) against a single fc7 run on the same data, and against the four points run
# as separate single runs (what the sweep cost before its points shared one extraction pass).
# Interleaved (single, sweep, separate, single, ...), each with an empty cache; prints medians
# and the ratios sweep/single and separate/single.
#
#   bench/layer_sweep.sh [reps=3] [per_class=20]
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
PER=${2:-20}
cargo build --release -q
BIN=$PWD/target/release/runner
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base() { # name, extra lines
  printf 'name = "%s"\nseed = 1\n[backbone]\nweights = "random"\n%s\n[dataset]\nkind = "synthetic"\nper_class = %s\nval_fraction = 0.2\n[train]\nepochs = 10\n[run]\ndevice = "cpu"\nextract_batch = 64\ncache_dir = "%s/cache"\nresults_dir = "%s/res"\n' \
    "$1" "$2" "$PER" "$work" "$work"
}
base single 'output = "fc7"' >"$work/single.toml"
{
  base sweep ''
  printf '[sweep]\n"backbone.output" = ["pool2", "pool5", "fc6", "fc7"]\n'
} >"$work/sweep.toml"
for o in pool2 pool5 fc6 fc7; do base "sep_$o" "output = \"$o\"" >"$work/sep_$o.toml"; done

secs() { # command...: wall seconds, from an empty cache and results folder
  rm -rf "$work/cache" "$work/res"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
single=() sweep=() sep=()
for r in $(seq "$REPS"); do
  single+=("$(secs "$BIN" -q "$work/single.toml")")
  sweep+=("$(secs "$BIN" -q "$work/sweep.toml")")
  sep+=("$(secs sh -c "for o in pool2 pool5 fc6 fc7; do $BIN -q $work/sep_\$o.toml; done")")
  echo "rep $r: single fc7 ${single[-1]} s, 4-point sweep ${sweep[-1]} s, 4 separate runs ${sep[-1]} s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms=$(median "${single[@]}") mw=$(median "${sweep[@]}") mp=$(median "${sep[@]}")
echo "images: $((43 * PER)); CPU: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
printf 'single fc7 run   %7.2f s\n4-point sweep    %7.2f s  (%.2fx the single run)\n4 separate runs  %7.2f s  (%.2fx)\n' \
  "$ms" "$mw" "$(echo "$mw / $ms" | bc -l)" "$mp" "$(echo "$mp / $ms" | bc -l)"
