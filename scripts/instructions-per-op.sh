#!/usr/bin/env bash
# Benchmark helper (NOT a test): user-space instructions memroute executes
# per operation, counted by valgrind's callgrind. Unlike throughput on a
# shared 2-core machine, the count barely moves between runs (within about
# 1%), so it shows small changes to the request path that wall-clock runs
# drown in noise. It says nothing about the kernel (syscalls, loopback TCP),
# which is most of a proxy's cost; use bench.sh and cpu-split.sh for that.
#
#   scripts/instructions-per-op.sh --config examples/single-pool.lua --config-arg {backend}
#   WORKLOAD=mget100_100B scripts/instructions-per-op.sh --config ...
#
# memroute runs under callgrind with one worker in front of a memcached
# backend ({backend} in the arguments becomes its HOST:PORT). memcaslap
# (50 connections) runs two loads, OPS_SMALL and OPS_LARGE operations, each
# against a fresh memroute; the difference of the two instruction totals
# divided by the difference of the operation counts is the cost per
# operation, with start-up and warm-up cancelled out.
#
# Environment: WORKLOAD (get90_100B, mix11_100B, get90_4K, mget10_100B...,
# as in bench.sh; default get90_100B), OPS_SMALL / OPS_LARGE (default 5000 /
# 25000; memcaslap counts each key of a multi-get), MEMROUTE_BIN (default
# target/release/memroute, build it first), CONFIG_TEMPLATE=FILE (see
# below; scripts/bench/handler-costs.sh uses it), KEEP=DIR (copy the callgrind
# outputs, callgrind.OPS_SMALL and callgrind.OPS_LARGE, into DIR for
# callgrind_annotate). Needs valgrind (apt-get install valgrind).
#
# The second column is the backend connections' tasks' share of the
# count (see backend_share below): memcached's proxy runs that work on a
# separate backend IO thread.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench-lib.sh
. "$REPO_ROOT/scripts/bench-lib.sh"
WORKLOAD="${WORKLOAD:-get90_100B}"
OPS_SMALL="${OPS_SMALL:-5000}"
OPS_LARGE="${OPS_LARGE:-25000}"
MEMROUTE_BIN="${MEMROUTE_BIN:-$REPO_ROOT/target/release/memroute}"
HOST=127.0.0.1
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 2; }
[ -x "$MEMROUTE_BIN" ] || { echo "no $MEMROUTE_BIN: cargo build --release first" >&2; exit 2; }

bench_workdir

division=$(workload_division "$WORKLOAD")
write_workload_cfg "$WORKLOAD" "$work/load.cfg" || exit 2

start_memcached_backend 1 256 || exit 1
args=("${@//\{backend\}/$HOST:$bport}")
# CONFIG_TEMPLATE=FILE: a configuration naming its backend {backend} (a
# route file, say), written out with the address; {config} in the
# arguments is that copy.
if [ -n "${CONFIG_TEMPLATE:-}" ]; then
  sed "s/{backend}/$HOST:$bport/g" "$CONFIG_TEMPLATE" > "$work/config.lua"
  args=("${args[@]//\{config\}/$work/config.lua}")
fi

# Instructions for one memroute life: start, warm up, OPS operations, stop.
instructions() { # ops
  local port out pid
  port=$(free_port)
  out="$work/callgrind.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$MEMROUTE_BIN" -l "$HOST" -p "$port" -t 1 "${args[@]}" 2>"$work/valgrind.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$port" "$pid" 300 || exit 1
  memcaslap -s "$HOST:$port" -T 1 -c 50 -x 2000 -F "$work/load.cfg" -d "$division" >/dev/null 2>&1
  memcaslap -s "$HOST:$port" -T 1 -c 50 -x "$1" -F "$work/load.cfg" -d "$division" \
    > "$work/memcaslap.$1" 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  grep -q 'Ops: ' "$work/memcaslap.$1" || { cat "$work/memcaslap.$1" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$out"
}

small=$(instructions "$OPS_SMALL")
large=$(instructions "$OPS_LARGE")
per_op=$(( (large - small) / (OPS_LARGE - OPS_SMALL) ))
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  cp "$work/callgrind.$OPS_SMALL" "$work/callgrind.$OPS_LARGE" "$KEEP/"
fi
# The backend connections' share: what their tasks (connect, write,
# read, parse each reply, hand it over) execute, inclusive of what they
# call; not the scheduler's turns that run them. (The task's future is
# listed once per source file its inlined code comes from, each entry
# inclusive of what it calls: the largest is the whole task.) memcached's proxy does
# this work on its backend IO thread, so a count of its worker thread
# alone compares with memroute's total less this column.
backend_share() { # callgrind output file
  callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$1" |
    awk '/memroute_runtime::backend::conn::supervise::\{\{closure\}\}/ {
           gsub(",", "", $1); if ($1 + 0 > max) max = $1 + 0 } END { print max + 0 }'
}
backend_small=$(backend_share "$work/callgrind.$OPS_SMALL")
backend_large=$(backend_share "$work/callgrind.$OPS_LARGE")
backend_per_op=$(( (backend_large - backend_small) / (OPS_LARGE - OPS_SMALL) ))
echo "| workload | instructions per op | of which backend connection tasks | ops (small / large run) |"
echo "| $WORKLOAD | $per_op | $backend_per_op | $OPS_SMALL / $OPS_LARGE |"
