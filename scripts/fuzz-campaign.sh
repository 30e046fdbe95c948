#!/usr/bin/env bash
# A long fuzz campaign over every parser target (not part of CI; CI runs a
# 30 s smoke per target in scripts/test.sh). Each target runs for SECONDS
# (default 1800), PARALLEL at a time (default 2), without a sanitizer (the
# codec crate forbids unsafe code; no sanitizer runs about 4x faster), at
# `nice` 10 so it can share the machine. For each target it prints one
# line: seconds, runs, corpus size, and the crash inputs libFuzzer saved
# (0 is the only good answer). Record the lines in docs/reliability.md.
#
#   scripts/fuzz-campaign.sh [SECONDS] [PARALLEL]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-1800}"
parallel="${2:-2}"
logdir="target/fuzz-campaign"
mkdir -p "$logdir"

mapfile -t targets < <(cargo fuzz list)
cargo fuzz build --sanitizer none

run_one() {
  local t="$1"
  local extra=()
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if [ -d "fuzz/seeds/$t" ]; then extra=("fuzz/seeds/$t"); fi
  local before
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  local status=0
  nice -n 10 cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "${extra[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$logdir/$t.log" 2>&1 || status=$?
  local runs corpus after
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logdir/$t.log" | grep -o '[0-9]*$' || echo "?")
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%s: %ss, %s runs, corpus %s inputs, new crash inputs %s, exit %s\n' \
    "$t" "$seconds" "$runs" "$corpus" "$((after - before))" "$status"
}

pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$parallel" ]; then
    wait "${pids[0]}"
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
