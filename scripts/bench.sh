#!/usr/bin/env bash
# Benchmark (NOT a test): memroute in embedded-cache mode vs Debian's
# memcached, same thread count and memory, driven by memcaslap over loopback.
# Prints a markdown table (TPS per round, medians, memroute/memcached ratio,
# average and p99 latency).  See docs/benchmarks.md.
#
#   ./scripts/bench.sh                        # full run (~5-6 minutes)
#   TARGETS=memcached ROUNDS=1 DURATION=3s ./scripts/bench.sh   # parser check
#
# Knobs (environment):
#   TARGETS      space list, in run order (default "memcached memroute").
#                Known: memcached, memroute (embedded), nutcracker (twemproxy in
#                front of a memcached backend), memroute-proxy (memroute in
#                front of a memcached backend; needs MEMROUTE_PROXY_ARGS).
#   WORKLOADS    space list (default "get90_100B get90_4K mix11_100B mix11_4K"):
#                getNN_SIZE = NN% get / rest set; mixNN = 1:1 set:get;
#                mgetD_SIZE = 90% get / 10% set, each get a multi-get of D
#                keys (memcaslap -d D)
#   ROUNDS       rounds per (workload, target), alternating targets (default 3)
#   DURATION     memcaslap -t per run (default 10s)
#   CONCURRENCY  memcaslap -c (default 50)
#   CLIENT_THREADS memcaslap -T (default 1)
#   SERVER_THREADS -t for both servers (default 2)
#   MEMORY_MB    -m for both servers (default 1024)
#   SKIP_BUILD=1 don't run `cargo build --release` (uses MEMROUTE_BIN or
#                target/release/memroute)
#   MEMROUTE_PROXY_ARGS  memroute arguments for the proxy target; "{backend}"
#                is replaced by HOST:PORT of the memcached backend and
#                "{workdir}" by a scratch directory (e.g. for a Lua config).
#   proxy-NAME   more memroute proxy targets, each in front of its own
#                memcached backend, with the arguments in PROXY_ARGS_NAME
#                (NAME with - as _), e.g. TARGETS="memcached proxy-tier"
#                PROXY_ARGS_tier="--config examples/dynamo-write-behind.lua
#                --config-arg {backend}". PROXY_ENV_NAME holds extra
#                environment for that target (VAR=value ...; {backend} as
#                in the arguments).
#   OUT_DIR      where raw outputs go (default target/bench/<timestamp>)
#   LOADGEN=1    after each memcaslap run, run the same workload through
#                memroute-loadgen (tools/loadgen: HDR percentiles, JSON, SVG)
#                on the same target, with -c CONCURRENCY --prefill; prints
#                its table too and plots each workload's round-1 CDFs to
#                OUT_DIR/WORKLOAD.cdf.svg. Off by default.
#   LOADGEN_ARGS extra memroute-loadgen arguments (e.g. "--rate 20000
#                --depth 4" for an open-loop run)
#   LOADGEN_BIN  memroute-loadgen binary (default target/release/...; built
#                unless SKIP_BUILD=1)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

TARGETS="${TARGETS:-memcached memroute}"
WORKLOADS="${WORKLOADS:-get90_100B get90_4K mix11_100B mix11_4K}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-50}"
CLIENT_THREADS="${CLIENT_THREADS:-1}"
SERVER_THREADS="${SERVER_THREADS:-2}"
MEMORY_MB="${MEMORY_MB:-1024}"
OUT_DIR="${OUT_DIR:-$REPO_ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"
LOADGEN="${LOADGEN:-0}"
LOADGEN_ARGS="${LOADGEN_ARGS:-}"
HOST=127.0.0.1

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in memcaslap memcached python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool missing (run scripts/install-test-deps.sh)"
done
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"

needs_memroute=0
case " $TARGETS " in *" memroute "*|*" memroute-proxy "*|*" proxy-"*) needs_memroute=1 ;; esac
if [ "$needs_memroute" = 1 ]; then
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --bin memroute"
    cargo build --release --bin memroute >&2
  fi
  MEMROUTE_BIN="${MEMROUTE_BIN:-$REPO_ROOT/target/release/memroute}"
  [ -x "$MEMROUTE_BIN" ] || die "no memroute binary at $MEMROUTE_BIN"
fi

if [ "$LOADGEN" = 1 ]; then
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p memroute-loadgen"
    cargo build --release -p memroute-loadgen >&2
  fi
  LOADGEN_BIN="${LOADGEN_BIN:-$REPO_ROOT/target/release/memroute-loadgen}"
  [ -x "$LOADGEN_BIN" ] || die "no memroute-loadgen binary at $LOADGEN_BIN"
fi

# shellcheck source=bench-lib.sh
. "$REPO_ROOT/scripts/bench-lib.sh"

wait_ready() { # port pid
  local port=$1 pid=$2 i
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    if python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"version\r\n")
sys.exit(0 if s.recv(100).startswith(b"VERSION") else 1)
EOF
    then return 0; fi
    sleep 0.1
  done
  return 1
}

flush() { # port
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"flush_all\r\n")
assert s.recv(100) == b"OK\r\n"
EOF
}

PIDS=()
declare -A PORT_OF=()
cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

start_bg() { # name port cmd...   -> starts, waits, records pid
  local name=$1 port=$2; shift 2
  log "start $name on $HOST:$port: $*"
  "$@" </dev/null >"$OUT_DIR/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready "$port" "$pid" || { cat "$OUT_DIR/$name.log" >&2; die "$name did not start"; }
  PORT_OF[$name]=$port
}

memcached_cmd() { # port
  local extra=()
  [ "$(id -u)" = 0 ] && extra=(-u root)
  echo memcached "${extra[@]}" -U 0 -l "$HOST" -p "$1" -t "$SERVER_THREADS" -m "$MEMORY_MB" -c 4096
}

start_target() { # target
  local t=$1 port
  port=$(free_port)
  case "$t" in
    memcached)
      # shellcheck disable=SC2046
      start_bg memcached "$port" $(memcached_cmd "$port") ;;
    memroute)
      start_bg memroute "$port" "$MEMROUTE_BIN" -l "$HOST" -p "$port" \
        -t "$SERVER_THREADS" -m "$MEMORY_MB" -c 4096 ;;
    nutcracker|memroute-proxy|proxy-*)
      # Proxy modes: a dedicated memcached backend behind the proxy.
      local bport
      bport=$(free_port)
      # shellcheck disable=SC2046
      start_bg "$t-backend" "$bport" $(memcached_cmd "$bport")
      if [ "$t" = nutcracker ]; then
        command -v nutcracker >/dev/null || die "nutcracker missing"
        cat > "$OUT_DIR/nutcracker.yml" <<EOF
bench:
  listen: $HOST:$port
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  server_retry_timeout: 2000
  server_failure_limit: 3
  auto_eject_hosts: false
  servers:
   - $HOST:$bport:1
EOF
        start_bg nutcracker "$port" nutcracker -c "$OUT_DIR/nutcracker.yml" \
          -o "$OUT_DIR/nutcracker.out" -s "$(free_port)"
      else
        local spec="MEMROUTE_PROXY_ARGS" envspec="" envs=()
        if [ "$t" != memroute-proxy ]; then
          spec="PROXY_ARGS_${t#proxy-}"
          spec=${spec//-/_}
          envspec="PROXY_ENV_${t#proxy-}"
          envspec=${envspec//-/_}
          if [ -n "${!envspec:-}" ]; then
            local envtext=${!envspec}
            envtext=${envtext//\{backend\}/$HOST:$bport}
            read -ra envs <<< "$envtext"
          fi
        fi
        [ -n "${!spec:-}" ] || die "$t needs its memroute arguments in $spec"
        local args=${!spec}
        args=${args//\{backend\}/$HOST:$bport}
        args=${args//\{workdir\}/$OUT_DIR}
        # shellcheck disable=SC2086
        start_bg "$t" "$port" env "${envs[@]}" "$MEMROUTE_BIN" -l "$HOST" -p "$port" \
          -t "$SERVER_THREADS" -c 4096 $args
      fi ;;
    *) die "unknown target $t" ;;
  esac
}

workload_cfg() { # workload -> path of a memcaslap -F file
  local f="$OUT_DIR/$1.cfg"
  write_workload_cfg "$1" "$f" || die "unknown workload $1"
  echo "$f"
}

for t in $TARGETS; do start_target "$t"; done

secs=${DURATION%s}
log "targets: $TARGETS; workloads: $WORKLOADS; rounds: $ROUNDS x $DURATION;" \
  "memcaslap -T $CLIENT_THREADS -c $CONCURRENCY; servers -t $SERVER_THREADS -m $MEMORY_MB"
read -r -a target_list <<<"$TARGETS"
for w in $WORKLOADS; do
  cfg=$(workload_cfg "$w")
  div=$(workload_division "$w")
  for r in $(seq 1 "$ROUNDS"); do
    # alternate the order every round so neither server always runs first
    order=("${target_list[@]}")
    if [ $(( r % 2 )) = 0 ]; then
      order=(); for (( i=${#target_list[@]}-1; i>=0; i-- )); do order+=("${target_list[$i]}"); done
    fi
    for t in "${order[@]}"; do
      port=${PORT_OF[$t]}
      # proxies (nutcracker) may not forward flush_all: empty the backend
      flush "${PORT_OF[$t-backend]:-$port}"
      out="$OUT_DIR/$w.$t.r$r.txt"
      log "$w round $r: $t"
      timeout $(( secs + 60 )) memcaslap -s "$HOST:$port" -T "$CLIENT_THREADS" -c "$CONCURRENCY" \
        -t "$DURATION" -S "$DURATION" -F "$cfg" -d "$div" </dev/null >"$out" 2>&1 \
        || { tail -20 "$out" >&2; die "memcaslap failed against $t"; }
      # Error replies are cheap: a server refusing requests would look fast.
      if grep -q "_ERROR\|^<[0-9]* ERROR" "$out"; then
        grep -m3 "ERROR" "$out" >&2
        die "$t answered memcaslap with errors ($out): the numbers would be meaningless"
      fi
      python3 "$REPO_ROOT/scripts/bench_report.py" parse "$out" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d.update(workload=sys.argv[1], target=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(d))' \
          "$w" "$t" "$r" >> "$RESULTS"
      if [ "$LOADGEN" = 1 ]; then
        flush "${PORT_OF[$t-backend]:-$port}"
        lout="$OUT_DIR/$w.$t.r$r.loadgen"
        log "$w round $r: $t (memroute-loadgen)"
        rc=0
        # shellcheck disable=SC2046,SC2086
        timeout $(( secs + 120 )) "$LOADGEN_BIN" -s "$HOST:$port" -c "$CONCURRENCY" \
          -d "$DURATION" --prefill $(workload_loadgen_args "$w") $LOADGEN_ARGS \
          --label "$t" --json "$lout.json" </dev/null >"$lout.txt" 2>&1 || rc=$?
        if [ "$rc" != 0 ]; then
          tail -20 "$lout.txt" >&2
          die "memroute-loadgen failed or counted errors against $t (exit $rc, $lout.txt)"
        fi
      fi
    done
  done
done

# Keep each server's own counters (for proxies with DynamoDB pools these
# include the write-behind queue: queued, coalesced, written, rejected...).
for t in $TARGETS; do
  python3 "$REPO_ROOT/scripts/bench_report.py" stats "${PORT_OF[$t]}" > "$OUT_DIR/$t.stats" || true
done

{
  echo
  echo "## memroute benchmark $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- machine: $(nproc) cores, $(uname -sr); $(memcached -V)"
  echo "- memcaslap -T $CLIENT_THREADS -c $CONCURRENCY -t $DURATION; servers -t $SERVER_THREADS -m $MEMORY_MB; $ROUNDS rounds, alternating"
  echo "- latency: memcaslap's Total (get+set) statistics in us; p99 is a log2-bucket upper bound"
  echo
  baseline=memcached
  case " $TARGETS " in *" memcached "*) ;; *) baseline=${target_list[0]} ;; esac
  python3 "$REPO_ROOT/scripts/bench_report.py" report "$RESULTS" --baseline "$baseline"
  echo
  if [ "$LOADGEN" = 1 ]; then
    echo "memroute-loadgen (-c $CONCURRENCY --prefill $LOADGEN_ARGS; latency in us, HDR percentiles):"
    echo
    # shellcheck disable=SC2086
    python3 - "$OUT_DIR" $WORKLOADS <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| workload | server | round | ops/s | p50 | p90 | p99 | p99.9 | max | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in sys.argv[2:]:
    for f in sorted(out.glob(w + ".*.loadgen.json")):
        r = json.loads(f.read_text())
        lat = r["latency_us"]["all"]
        rnd = f.name.split(".")[-3]
        print("| %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %d |" % (
            w, r["label"], rnd[1:], r["ops_per_sec"], lat["p50"], lat["p90"], lat["p99"],
            lat["p99_9"], lat["max"], r["errors"]["total"]))
EOF
    echo
    for w in $WORKLOADS; do
      files=()
      for t in $TARGETS; do files+=("$OUT_DIR/$w.$t.r1.loadgen.json"); done
      "$LOADGEN_BIN" plot "${files[@]}" --svg "$OUT_DIR/$w.cdf.svg" --title "$w: latency by percentile" \
        && echo "latency CDF of $w (round 1): $OUT_DIR/$w.cdf.svg"
    done
    echo
  fi
  echo "raw outputs: $OUT_DIR"
} | tee "$OUT_DIR/report.md"
