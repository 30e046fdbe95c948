#!/usr/bin/env bash
# Benchmark helper (NOT a test): the instructions per get of every native
# route handler (a route file, see docs/routes.md) beside the same pool
# attached with no handler, one memcached backend, callgrind. Each handler
# runs in front of one or two pools whose backend is that same memcached.
#
#   scripts/bench/handler-costs.sh                  # every handler
#   scripts/bench/handler-costs.sh direct failover  # some of them
#
# Environment: as scripts/instructions-per-op.sh (MEMROUTE_BIN, WORKLOAD,
# OPS_SMALL, OPS_LARGE). About a minute per handler.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pools='pools{
    main = { backends = { "{backend}" } },
    other = { backends = { "{backend}" } },
    set_zones = { near = { backends = { "{backend}" } }, far = { backends = { "{backend}" } } },
}
local_zone("near")'

declare -A routes=(
  [direct]='default = route_direct{ child = "main" }'
  [prefix-failover]='map = { users = route_failover{ children = { "main", "other" } } }, default = route_failover{ children = { "main", "other" } }'
  [failover]='default = route_failover{ children = { "main", "other" } }'
  [allsync]='default = route_allsync{ children = { "main", "other" } }'
  [allfastest]='default = route_allfastest{ children = { "main", "other" } }'
  [allasync]='default = route_allasync{ children = { "main", "other" } }'
  [allmajority]='default = route_allmajority{ children = { "main", "other", "main" } }'
  [split]='default = route_split{ child_a = "main", child_b = "other" }'
  [zfailover]='default = route_zfailover{ children = "set_zones" }'
  [random]='default = route_random{ children = { "main", "other" } }'
  [null]='default = route_null{}'
  [shadow]='default = route_shadow{ child = "main", child_shadow = "other" }'
  [warmup]='default = route_warmup{ child_cold = "main", child_warm = "other" }'
  [l1l2]='default = route_l1l2{ child_l1 = "internal", child_l2 = "main" }'
  [migrate]='default = route_migrate{ child_from = "main", child_to = "other", start = 0, stop = 4000000000 }'
  [keysplit]='default = route_keysplit{ child = "main", copies = 3 }'
  [bigvalue]='default = route_bigvalue{ child = "main", threshold = 4096 }'
  [ratelim]='default = route_ratelim{ child = "main", limit = 1000000000, fillrate = 1000000000, tickrate = 1 }'
)
order=(direct prefix-failover failover allsync allfastest allasync allmajority split zfailover
       random null shadow warmup l1l2 migrate keysplit bigvalue ratelim)
[ "$#" -gt 0 ] && order=("$@")

count() { # label, instructions-per-op.sh arguments...
  local label=$1
  shift
  local line
  line=$("$REPO_ROOT/scripts/instructions-per-op.sh" "$@" | tail -n 1)
  echo "| $label | $(echo "$line" | cut -d'|' -f3 | tr -d ' ') |"
}

echo "| route | instructions per op |"
echo "| --- | ---: |"
count "pool attached (no handler)" --config "$REPO_ROOT/examples/single-pool.lua" --config-arg {backend}
for name in "${order[@]}"; do
  [ -n "${routes[$name]:-}" ] || { echo "unknown handler $name" >&2; exit 2; }
  printf '%s\nroutes{ %s }\n' "$pools" "${routes[$name]}" > "$tmp/$name.lua"
  CONFIG_TEMPLATE="$tmp/$name.lua" count "route_$name" --routes {config}
done
