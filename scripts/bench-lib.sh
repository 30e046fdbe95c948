# Shared by the benchmark helpers (bench.sh, cpu-split.sh,
# instructions-per-op.sh): loopback ports and memcaslap workloads. Source it;
# it defines functions only.
#
# Workload names: get90_SIZE (1:9 set:get), mix11_SIZE (1:1), set100_SIZE
# (sets only), mgetD_SIZE (1:9 with gets of D keys, memcaslap -d D); SIZE is
# 100B, 1K or 4K. Keys are 64 bytes.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts on 127.0.0.1:PORT; fails if PID dies first
# or after TRIES tenths of a second (default 100).
wait_port() { # port pid [tries]
  local i
  for i in $(seq 1 "${3:-100}"); do
    kill -0 "$2" 2>/dev/null || { echo "process for port $1 died" >&2; return 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

# Keys per get of a workload (memcaslap -d).
workload_division() { # workload
  case "$1" in
    mget*_*) local d=${1#mget}; echo "${d%%_*}" ;;
    *) echo 1 ;;
  esac
}

# Writes the memcaslap -F file of a workload; fails on an unknown name.
write_workload_cfg() { # workload file
  local get set size
  case "$1" in
    get90_*|mget*_*) get=0.9; set=0.1 ;;
    mix11_*) get=0.5; set=0.5 ;;
    set100_*) get=0; set=1 ;;
    *) echo "unknown workload $1 (get90_SIZE / mix11_SIZE / set100_SIZE / mgetD_SIZE)" >&2; return 1 ;;
  esac
  case "$1" in
    *_100B) size=100 ;;
    *_1K) size=1024 ;;
    *_4K) size=4096 ;;
    *) echo "unknown value size in $1 (100B, 1K or 4K)" >&2; return 1 ;;
  esac
  # key: min max proportion / value: min max proportion / cmd: type(0=set,1=get) proportion
  if [ "$get" = 0 ]; then
    printf 'key\n64 64 1\nvalue\n%s %s 1\ncmd\n0 1\n' "$size" "$size" > "$2"
  else
    printf 'key\n64 64 1\nvalue\n%s %s 1\ncmd\n0 %s\n1 %s\n' "$size" "$size" "$set" "$get" > "$2"
  fi
}

# memroute-loadgen arguments of a workload (same mix, sizes and keys per get
# as its memcaslap config); fails on an unknown name.
workload_loadgen_args() { # workload
  local set size
  case "$1" in
    get90_*|mget*_*) set=0.1 ;;
    mix11_*) set=0.5 ;;
    set100_*) set=1 ;;
    *) echo "unknown workload $1" >&2; return 1 ;;
  esac
  case "$1" in
    *_100B) size=100 ;;
    *_1K) size=1024 ;;
    *_4K) size=4096 ;;
    *) echo "unknown value size in $1" >&2; return 1 ;;
  esac
  echo "--set-ratio $set --mget $(workload_division "$1") --key-size 64 --value-size $size"
}

# A scratch directory in $work, and a cleanup on exit that stops every pid
# added to the pids array and removes the directory.
bench_workdir() {
  work="$(mktemp -d)"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# Starts a memcached backend on a free loopback port (as nobody when root)
# and waits for it: sets bport and backend (its pid), adds it to pids.
start_memcached_backend() { # threads memory_mb
  local user=()
  [ "$(id -u)" = 0 ] && user=(-u nobody)
  bport=$(free_port)
  memcached -l 127.0.0.1 -p "$bport" -t "$1" -m "$2" -U 0 "${user[@]}" &
  backend=$!
  pids+=("$backend")
  wait_port "$bport" "$backend"
}
