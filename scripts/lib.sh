# Shared helpers for scripts/run.sh, scripts/test.sh and scripts/services.sh.
# Installs what is missing (via apt when possible) and runs a private
# Postgres and Redis whose data lives in .data/ inside the project, on
# non-default ports, leaving any system instance alone.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${GATEWAY_DATA_DIR:-$ROOT/.data}
PG_PORT=${GATEWAY_PG_PORT:-55432}
REDIS_PORT=${GATEWAY_REDIS_PORT:-56379}
PG_USER=gateway

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# Installs cmake (Pingora's build), a C toolchain, PostgreSQL, Redis, curl
# and Python with venv (for the schemathesis fuzz run) when they are missing.
ensure_packages() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  # Debian's python3 has the venv module but cannot create a venv with pip
  # until python3-venv brings ensurepip.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v cc >/dev/null || missing+=(build-essential)
  command -v cmake >/dev/null || missing+=(cmake)
  command -v curl >/dev/null || missing+=(curl)
  pg_bin_dir >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  # tests/redis_cluster.rs builds a cluster with redis-cli --cluster create.
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  # Tests skew gateway clocks with libfaketime (tests/exact_windows.rs,
  # tests/authority.rs).
  command -v faketime >/dev/null || missing+=(faketime)
  # tests/jwt_proxy.rs and benches/load/mint-jwt.sh make RSA keys and sign
  # tokens with the openssl CLI.
  command -v openssl >/dev/null || missing+=(openssl)
  apt_install "${missing[@]}"
  # prometheus and promtool for tests/prometheus.rs (the alert rules and the
  # dashboard's queries against a real Prometheus).
  if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    apt_install prometheus
    stop_system_prometheus
  fi
}

# The Debian package starts a system-wide Prometheus on :9090 where systemd
# runs; the tests start their own on free ports, so the package's service
# would only take memory and a port (the gateway's default admin port).
stop_system_prometheus() {
  command -v systemctl >/dev/null && [ -d /run/systemd/system ] || return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
}

# Installs Debian packages (with sudo when not root); nothing when given none.
apt_install() {
  [ $# -eq 0 ] && return 0
  say "installing: $*"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      die "missing $*; install them with: apt-get install -y $*"
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    die "missing $* and no apt-get here; install them with your package manager"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # The Debian packages may start system-wide services; ours use other ports.
}

ensure_rust_components() {
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
}

# Runs a command as the postgres user when we are root (Postgres refuses to
# run as root), as ourselves otherwise.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

pg_data_dir() {
  local dir="$DATA/postgres"
  if [ "$(id -u)" -eq 0 ] && ! su postgres -s /bin/sh -c "test -x '$DATA' -o ! -e '$DATA'" 2>/dev/null; then
    # The project lives where the postgres user cannot reach (e.g. /root).
    dir="/var/lib/gateway-dev/$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)/postgres"
  fi
  echo "$dir"
}

PG_URL_BASE="postgres://$PG_USER@127.0.0.1:$PG_PORT"

start_postgres() {
  local bin dir run
  bin=$(pg_bin_dir) || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  mkdir -p "$DATA"
  dir=$(pg_data_dir)
  run="$DATA/run"
  mkdir -p "$dir" "$run"
  if [ "$(id -u)" -eq 0 ]; then
    chmod 755 "$DATA" "$run"
    chown postgres "$dir" "$run"
    chmod 700 "$dir"
  fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    say "initialising private Postgres in $dir"
    as_pg "$bin/initdb" -D "$dir" -U "$PG_USER" --auth=trust --encoding=UTF8 --no-locale >/dev/null
  fi
  if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    say "starting private Postgres on 127.0.0.1:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$dir" -l "$run/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $run -c listen_addresses=127.0.0.1 -c max_connections=500" start >/dev/null \
      || { tail -n 20 "$run/postgres.log" >&2; die "Postgres did not start (log: $run/postgres.log)"; }
  fi
  if ! "$bin/psql" "$PG_URL_BASE/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'gateway'" | grep -q 1; then
    "$bin/psql" "$PG_URL_BASE/postgres" -qc "CREATE DATABASE gateway" >/dev/null
  fi
}

stop_postgres() {
  local bin dir
  bin=$(pg_bin_dir) || return 0
  dir=$(pg_data_dir)
  [ -f "$dir/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true
}

start_redis() {
  mkdir -p "$DATA/redis"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return 0; fi
  say "starting private Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$DATA/redis" --pidfile "$DATA/redis/redis.pid" --logfile "$DATA/redis/redis.log" \
    --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "Redis did not start (log: $DATA/redis/redis.log)"
}

stop_redis() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
