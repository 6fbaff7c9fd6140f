#!/usr/bin/env bash
# Revocation lag across instances (DESIGN §4: p99 < 100 ms): two gateways,
# A and B, on one database; N keys revoked through A's admin API, each
# polled on B's proxy port until it answers 401 revoked_api_key
# (examples/revocation_lag.rs). Prints p50, p99 and max, and for each
# instance its resident memory and how long it took to load its key snapshot.
#
#   benches/load/revocation-lag.sh [--count 100] [--filler 0] [--port-base 18200]
#
# --filler N adds N more keys straight into Postgres before the gateways
# start (e.g. 1000000 for the 1M-key budgets), so the lag and the snapshot
# load are measured on a snapshot of that size.
#
# Installs what is missing, starts the private Postgres, builds the release
# binaries, and stops everything it started when it ends.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

COUNT=100 FILLER=0 BASE=18200
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --filler) FILLER=$2; shift 2 ;;
    --port-base) BASE=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "--count: expected a positive integer, got '$COUNT'"
[[ "$FILLER" =~ ^[0-9]+$ ]] || die "--filler: expected a number of keys, got '$FILLER'"
[[ "$BASE" =~ ^[1-9][0-9]*$ ]] || die "--port-base: expected a port, got '$BASE'"

UPSTREAM_PORT=$BASE PORT_A=$((BASE + 1)) PORT_B=$((BASE + 2))
bench_run_dir bench-revocation

ensure_packages
ensure_bench_packages
start_postgres
build_release --bin gateway --example revocation_lag
start_upstream "$UPSTREAM_PORT"

fresh_bench_db gateway_revocation
# The poller's 401s would trip B's brute-force guard (429s) without this.
EXEMPT='exempt_ips = ["127.0.0.1/32"]'
bench_gateway_conf "$RUN/a.toml" "$PORT_A" local 1 read:bench "$EXEMPT"
bench_gateway_conf "$RUN/b.toml" "$PORT_B" local 1 read:bench "$EXEMPT"
"$ROOT/target/release/gateway" migrate -c "$RUN/a.toml" >/dev/null
if [ "$FILLER" -gt 0 ]; then
  say "adding $FILLER filler keys to Postgres"
  # Without the per-row NOTIFY: nobody listens yet, and it would only slow
  # the insert down.
  "$(pg_bin_dir)/psql" "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<SQL >/dev/null
BEGIN;
ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify;
INSERT INTO api_keys (id, name, prefix, key_hash, scopes)
SELECT gen_random_uuid(), 'filler', 'gw_live_fill', sha256(('filler-' || i)::bytea), '{read:bench}'
FROM generate_series(1, $FILLER) AS i;
ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify;
COMMIT;
SQL
fi
# A key can only grant scopes it holds.
ADMIN_KEY=$(create_key "$RUN/a.toml" revocation-admin write:keys,read:bench)

# info level for the "key snapshot loaded" line with its timing.
declare -A PID
for i in a b; do
  GATEWAY_LOG_LEVEL=info "$ROOT/target/release/gateway" serve -c "$RUN/$i.toml" \
    >"$RUN/$i.log" 2>&1 & PIDS+=($!)
  PID[$i]=$!
done
wait_ok "instance A" "http://127.0.0.1:$((PORT_A + 100))/health/ready"
wait_ok "instance B" "http://127.0.0.1:$((PORT_B + 100))/health/ready"
for i in a b; do
  printf 'instance %s: resident %s MiB; %s\n' "$i" "$(( $(ps -o rss= -p "${PID[$i]}") / 1024 ))" \
    "$(grep -m1 'key snapshot loaded' "$RUN/$i.log" || echo 'no snapshot line in the log')"
done

"$ROOT/target/release/examples/revocation_lag" "http://127.0.0.1:$((PORT_A + 100))" \
  "http://127.0.0.1:$PORT_B" "$ADMIN_KEY" read:bench "$COUNT"
