#!/usr/bin/env bash
# Repeats the kill -9 cycle of tests/spool_crash.py against one persistent
# DynamoDB Local, one table and one spool directory:
#
#   scripts/spool-crash-soak.sh [CYCLES] [--fsync always|never|<ms>] [--no-spool]
#
# Each cycle: memroute (target/debug/memroute, default flags) with a
# spooled write-behind pool; 4 pipelined writers send sets (and, during the
# outage, deletes) as fast as they can; DynamoDB Local is killed (the queue
# gets deep); memroute is killed with SIGKILL while the writers still send;
# both restart; once the replayed queue has drained the table is scanned.
# Every key must hold its last acknowledged state (or that of a command
# whose reply the kill cut off), including the keys earlier cycles left.
# Prints one line per cycle and a total; exits 1 if any cycle lost a write
# (with --no-spool, losses are expected and reported, exit 0).
# Needs scripts/install-test-deps.sh (Java 17, DynamoDB Local) and a build.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cycles="${1:-10}"
[ $# -gt 0 ] && shift
if [ ! -x "$REPO_ROOT/target/debug/memroute" ] && [ -z "${MEMROUTE_BIN:-}" ]; then
  (cd "$REPO_ROOT" && cargo build --bin memroute)
fi
exec python3 "$REPO_ROOT/tests/spool_crash.py" --cycles "$cycles" "$@"
