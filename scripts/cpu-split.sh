#!/usr/bin/env bash
# Benchmark helper (NOT a test): where the CPU goes during one memcaslap run.
# Starts a memcached backend and the server under test in front of it, runs
# memcaslap once, and prints the throughput and the CPU seconds (user+system)
# used by each process: server, backend, client, and optionally one more
# process (e.g. DynamoDB Local), plus the server's CPU microseconds per
# operation. On a 2-core machine shared by all of them this says who takes
# the cores; see docs/benchmarks.md.
#
#   scripts/cpu-split.sh memroute --config examples/single-pool.lua --config-arg {backend}
#   scripts/cpu-split.sh nutcracker
#   scripts/cpu-split.sh direct                  # memcaslap straight to memcached
#   WATCH_PID=$(cat tests/.tmp/ddb-local.PORT.pid) scripts/cpu-split.sh memroute ...
#
# With DDB_TABLE set (a DynamoDB example), it also prints what the
# write-behind queue held when the load stopped and how long it took to
# drain.
#
# Environment: WORKLOAD (get90_100B, mix11_100B, mget10_100B for 10-key
# multi-gets; default get90_100B),
# DURATION (default 10s), SERVER_THREADS (-t for memroute and memcached,
# default 1), CONCURRENCY (default 50), PROTOCOL (text, or binary for
# memcaslap -B), MEMROUTE_BIN (default
# target/release/memroute, build it first), WATCH_PID. Extra environment for
# memroute is passed through as usual (DDB_* for the dynamo examples).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench-lib.sh
. "$REPO_ROOT/scripts/bench-lib.sh"
target="${1:?usage: cpu-split.sh memroute ARGS... | nutcracker | direct}"
shift
WORKLOAD="${WORKLOAD:-get90_100B}"
DURATION="${DURATION:-10s}"
SERVER_THREADS="${SERVER_THREADS:-1}"
CONCURRENCY="${CONCURRENCY:-50}"
MEMROUTE_BIN="${MEMROUTE_BIN:-$REPO_ROOT/target/release/memroute}"
HOST=127.0.0.1
bench_workdir

cpu_ticks() { [ -n "${1:-}" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }

division=$(workload_division "$WORKLOAD")
write_workload_cfg "$WORKLOAD" "$work/load.cfg" || exit 2

start_memcached_backend "$SERVER_THREADS" 1024

port=$(free_port)
case "$target" in
  direct) server=$backend; port=$bport ;;
  nutcracker)
    printf 'p:\n  listen: %s:%s\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n   - %s:%s:1\n' \
      "$HOST" "$port" "$HOST" "$bport" > "$work/nutcracker.yml"
    nutcracker -c "$work/nutcracker.yml" -s "$(free_port)" -o "$work/nutcracker.log" &
    server=$!; pids+=("$server") ;;
  memroute)
    args=("${@//\{backend\}/$HOST:$bport}")
    "$MEMROUTE_BIN" -l "$HOST" -p "$port" -t "$SERVER_THREADS" "${args[@]}" 2>"$work/memroute.log" &
    server=$!; pids+=("$server") ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
wait_port "$port" "$server"
sleep 1

binary=(); [ "${PROTOCOL:-text}" = binary ] && binary=(-B)
s0=$(cpu_ticks "$server"); b0=$(cpu_ticks "$backend"); w0=$(cpu_ticks "${WATCH_PID:-}")
/usr/bin/time -f 'client_cpu %U %S' -o "$work/time.txt" \
  memcaslap -s "$HOST:$port" -T 1 -c "$CONCURRENCY" -t "$DURATION" -S "$DURATION" "${binary[@]}" \
  -F "$work/load.cfg" -d "$division" > "$work/memcaslap.txt" 2>&1
s1=$(cpu_ticks "$server"); b1=$(cpu_ticks "$backend"); w1=$(cpu_ticks "${WATCH_PID:-}")

tps=$(grep -o 'TPS: [0-9]*' "$work/memcaslap.txt" | tail -1 | awk '{print $2}')
[ -n "$tps" ] || { cat "$work/memcaslap.txt" >&2; exit 1; }
read -r _ cu cs < "$work/time.txt"
secs=$(echo "$DURATION" | tr -dc '0-9')
python3 - "$target" "$WORKLOAD" "$tps" "$secs" "$((s1 - s0))" "$((b1 - b0))" "$cu" "$cs" \
  "$((w1 - w0))" "${WATCH_PID:-}" "$target" <<'EOF'
import sys
target, workload, tps, secs, server, backend, cu, cs, watched, watch_pid, _ = sys.argv[1:]
tps, secs = int(tps), int(secs)
ops = tps * secs
row = [target, workload, f"{tps:,}", f"{int(server) / 100:.1f}", f"{int(backend) / 100:.1f}",
       f"{float(cu) + float(cs):.1f}"]
row.append(f"{int(watched) / 100:.1f}" if watch_pid else "-")
row.append(f"{int(server) * 10_000 / ops:.2f}" if target != "direct" else "-")
print("| target | workload | TPS | server CPU s | backend CPU s | client CPU s | watched CPU s | server us/op |")
print("| " + " | ".join(row) + " |")
EOF

# A DynamoDB write-behind pool (DDB_TABLE set): what its queue held when the
# load stopped, and how long the queue took to reach DynamoDB after that.
if [ "$target" = memroute ] && [ -n "${DDB_TABLE:-}" ]; then
  python3 - "$REPO_ROOT/scripts" "$port" "$DDB_TABLE" <<'PYEOF'
import sys, time
sys.path.insert(0, sys.argv[1])
from bench_report import server_stats
port, table = sys.argv[2], sys.argv[3]
def stats():
    prefix = "dynamo_%s_" % table
    return {p[1][len(prefix):]: int(p[2]) for p in (l.split() for l in server_stats(port).splitlines())
            if len(p) == 3 and p[1].startswith(prefix)}
fields = ("queued", "written", "batches", "rejected", "failed", "queue_depth")
show = lambda st: " ".join("%s=%s" % (f, st.get(f)) for f in fields)
start = time.monotonic()
st = stats()
print("when the load stopped: " + show(st))
while st.get("queue_depth", 0) > 0 and time.monotonic() - start < 600:
    time.sleep(0.5)
    st = stats()
print("drained %.1f s after the load: %s" % (time.monotonic() - start, show(st)))
PYEOF
fi
