#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after another; a summary line per
# target (executions, crash or not) goes to stdout. Needs nightly Rust and cargo-fuzz.
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}; shift || true
targets=${*:-"unpickle npy weights_file spec gtsrb_csv image pth onnx idx cache_entry"}
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t.log"
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -timeout=20 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: exit $rc, $execs executions in ${secs}s, artifacts: $(ls "artifacts/$t" | wc -l)"
done
