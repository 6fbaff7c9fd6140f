#!/usr/bin/env bash
# Runs the gateway for development: installs what is missing, starts a
# private Postgres and Redis, migrates, creates a dev admin key, starts the
# demo upstream and the gateway, and prints a curl to try. Ctrl-C stops the
# gateway and the demo upstream; scripts/services.sh stop stops the rest.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages
if [ -z "${DATABASE_URL:-}" ]; then
  start_postgres
  export DATABASE_URL="$PG_URL_BASE/gateway"
fi
start_redis
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"

say "building (release; the first build takes several minutes)"
cargo build --release --locked --bin gateway
GW="$ROOT/target/release/gateway"
CONF="$ROOT/conf/gateway.dev.toml"

# A pepper generated once and kept: changing it invalidates every key.
if [ -z "${GATEWAY_KEYS_PEPPER:-}" ]; then
  if [ ! -s "$DATA/pepper" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DATA/pepper")
  fi
  GATEWAY_KEYS_PEPPER=$(cat "$DATA/pepper")
  export GATEWAY_KEYS_PEPPER
fi

"$GW" migrate -c "$CONF"

# The dev admin key is created once and reused while it is still in the database.
KEY_FILE="$DATA/dev-admin.key"
KEY=""
if [ -s "$KEY_FILE" ]; then
  read -r KEY_ID KEY < "$KEY_FILE"
  "$GW" keys list -c "$CONF" --limit 10000 | grep -Eq "^$KEY_ID .* active " || KEY=""
fi
if [ -z "$KEY" ]; then
  out=$("$GW" keys create -c "$CONF" --name dev-admin --scopes 'admin,*' --description "created by scripts/run.sh" --json)
  KEY_ID=$(printf '%s' "$out" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  KEY=$(printf '%s' "$out" | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
  (umask 077; echo "$KEY_ID $KEY" > "$KEY_FILE")
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$GW" demo-upstream --listen 127.0.0.1:3001 & pids+=($!)
"$GW" serve -c "$CONF" & pids+=($!)
GW_PID=$!

for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:9090/health/ready >/dev/null 2>&1 && break
  kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited; see its log above"
  sleep 0.2
done

cat <<MSG

  Gateway is up.   proxy http://127.0.0.1:8080   admin http://127.0.0.1:9090
  Dev admin key (id $KEY_ID):
    $KEY

  Try it:
    curl -i -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/demo/hello
    curl -i http://127.0.0.1:8080/demo/hello              # 401 missing_api_key
    curl -s http://127.0.0.1:9090/health

  Ctrl-C stops the gateway; scripts/services.sh stop stops Postgres and Redis.

MSG
wait "$GW_PID"
