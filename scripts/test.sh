#!/usr/bin/env bash
# THE install-and-test command (the README's `./scripts/test.sh`; CI runs it
# through .ci/run).  Installs the test dependencies, then runs, stopping at
# the first failure:
#
#   1. scripts/install-test-deps.sh        (apt + pip, idempotent)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo build --workspace --all-targets
#   5. cargo test --workspace
#   6. python3 -m pytest tests -q          (end-to-end, against target/debug/memroute
#                                          and real memcached)
#   7. fuzz smoke: every cargo-fuzz target for FUZZ_SECONDS (default 30) s,
#      skipped when there is no fuzz/ directory
#
# Environment knobs (all optional):
#   SKIP_INSTALL=1     don't run install-test-deps.sh
#   SKIP_FUZZ=1        skip step 7
#   FUZZ_SECONDS=N     per-target fuzz time (default 30)
#   FUZZ_SANITIZER=X   cargo fuzz --sanitizer (default none; address works too)
#   PYTEST_ARGS="..."  extra arguments for pytest (e.g. -m "not slow")
#
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
START=$(date +%s)
DONE_STEPS=()
CURRENT_STEP=""

step() {
  CURRENT_STEP="$1"
  printf '\n==== [%s] %s (t+%ss)\n' "$(date +%H:%M:%S)" "$1" "$(( $(date +%s) - START ))"
}
ok() { DONE_STEPS+=("$CURRENT_STEP"); }
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    printf '\n==== FAILED at step "%s" (exit %s) after %ss; steps ok before it: %s\n' \
      "$CURRENT_STEP" "$rc" "$(( $(date +%s) - START ))" "${DONE_STEPS[*]:-none}" >&2
  fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------
step "install test dependencies"
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  echo "SKIP_INSTALL=1: not installing"
else
  ./scripts/install-test-deps.sh
fi
ok

# cargo may live in ~/.cargo/bin on a fresh shell
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found" >&2; exit 1; }

# ---------------------------------------------------------------------------
step "cargo fmt --all --check"
cargo fmt --all --check
ok

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
ok

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
ok

step "cargo test --workspace"
cargo test --workspace
ok

# ---------------------------------------------------------------------------
step "python end-to-end suite (pytest tests)"
export MEMROUTE_BIN="$REPO_ROOT/target/debug/memroute"
export MEMROUTE_REQUIRE=1   # a missing binary is a failure here, not a skip
[ -x "$MEMROUTE_BIN" ] || { echo "missing $MEMROUTE_BIN after cargo build" >&2; exit 1; }
# shellcheck disable=SC2086
python3 -m pytest tests -q ${PYTEST_ARGS:-}
ok

# ---------------------------------------------------------------------------
step "fuzz smoke (${FUZZ_SECONDS}s per target)"
if [ "${SKIP_FUZZ:-0}" = 1 ]; then
  echo "SKIP_FUZZ=1: skipping the fuzz smoke"
elif [ ! -d fuzz ]; then
  echo "no fuzz/ directory: skipping the fuzz smoke"
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
  fi
  # cargo-fuzz asks rustc for nightly-only options (-Zsanitizer=address by
  # default).  With --sanitizer none (our default) the stable toolchain works
  # as is; RUSTC_BOOTSTRAP=1 makes stable accept the -Z flags too, which is
  # what FUZZ_SANITIZER=address needs.  See docs/testing.md ("Fuzzing").
  export RUSTC_BOOTSTRAP=1
  sanitizer="${FUZZ_SANITIZER:-none}"
  mapfile -t targets < <(cargo fuzz list)
  if [ "${#targets[@]}" = 0 ]; then
    echo "fuzz/ has no targets: nothing to run"
  else
    echo "fuzz targets: ${targets[*]} (sanitizer: $sanitizer)"
    cargo fuzz build --sanitizer "$sanitizer"
    for t in "${targets[@]}"; do
      echo "--- fuzzing $t for ${FUZZ_SECONDS}s"
      mkdir -p "fuzz/corpus/$t"
      extra=()
      if [ -d "fuzz/seeds/$t" ]; then extra=("fuzz/seeds/$t"); fi
      timeout --kill-after=30 $(( FUZZ_SECONDS + 300 )) \
        cargo fuzz run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" "${extra[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
        </dev/null
    done
  fi
fi
ok

trap - EXIT
printf '\n==== test.sh: all %d steps OK (%s) in %ss\n' \
  "${#DONE_STEPS[@]}" "$(IFS=,; echo "${DONE_STEPS[*]}")" "$(( $(date +%s) - START ))"
