#!/usr/bin/env bash
# `/requests/stats` and `/keys/{id}/usage` latency over 24 h of rollups
# (DESIGN §4: < 100 ms). Fills `request_rollups` with SQL — every minute of
# the last HOURS hours, each of KEYS keys calls one of ROUTES routes (the
# route rotates by minute, so every key × route pair recurs all day), 5
# requests a row over 5 latency buckets around 10 ms, plus a 404 row for
# every 10th key and a 502 row for every 50th — then starts a release
# gateway and times each query shape with curl, ROUNDS times (after one
# warm-up call), printing the median and the slowest.
#
#   benches/load/stats-latency.sh [--keys 1000] [--routes 20] [--hours 24]
#                                 [--rounds 10] [--port-base 18300] [--bin PATH]
#
# --bin runs that gateway binary instead of building the release one.
#
# The default fill is ~1.6 million rows (~1 GiB; ~3 min to insert). Installs
# what is missing, starts the private Postgres, builds the release binary,
# and stops everything it started when it ends.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

KEYS=1000 ROUTES=20 HOURS=24 ROUNDS=10 BASE=18300 BIN=
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --routes) ROUTES=$2; shift 2 ;;
    --hours) HOURS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --port-base) BASE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
for v in KEYS ROUTES HOURS ROUNDS BASE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,}: expected a positive integer, got '${!v}'"
done
UPSTREAM_PORT=$BASE PORT=$((BASE + 1))
bench_run_dir bench-stats

ensure_packages
# A Postgres already answering on the port (another checkout's) is used as is.
"$(pg_bin_dir)/psql" "$PG_URL_BASE/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1 || start_postgres
if [ -z "$BIN" ]; then
  build_release --bin gateway
  BIN="$ROOT/target/release/gateway"
fi
[ -x "$BIN" ] || die "--bin: not an executable: $BIN"

fresh_bench_db gateway_stats
bench_gateway_conf "$RUN/gateway.toml" "$PORT" local 1 read:bench
"$BIN" migrate -c "$RUN/gateway.toml" >/dev/null
say "filling request_rollups: $HOURS h × $KEYS keys × $ROUTES routes"
"$(pg_bin_dir)/psql" "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO request_rollups
SELECT m, 'route_' || lpad(((k + (extract(epoch FROM m)::bigint / 60)) % $ROUTES)::text, 2, '0'),
       ('00000000-0000-4000-8000-' || lpad(to_hex(k), 12, '0'))::uuid,
       'GET', s.status, s.code, s.n,
       CASE WHEN s.status BETWEEN 400 AND 499 THEN s.n ELSE 0 END,
       CASE WHEN s.status >= 500 THEN s.n ELSE 0 END,
       s.n * 100, s.n * 2000, s.n * 12.0,
       array_fill(0::bigint, ARRAY[s.off]) || '{1,1,1,1,1}'::bigint[]
FROM generate_series(date_trunc('minute', now()) - interval '$HOURS hours',
                     date_trunc('minute', now()) - interval '1 minute', interval '1 minute') AS m,
     generate_series(1, $KEYS) AS k,
     LATERAL (VALUES (200::smallint, ''::text, 5::bigint, 38),
                     (404, '', 1, 36),
                     (502, 'upstream_unavailable', 1, 50)) AS s(status, code, n, off)
WHERE s.status = 200 OR (s.status = 404 AND k % 10 = 0) OR (s.status = 502 AND k % 50 = 0);
ANALYZE request_rollups;
SQL
ROWS=$("$(pg_bin_dir)/psql" "$DATABASE_URL" -Atc "SELECT count(*) || ' rows, ' || pg_size_pretty(pg_total_relation_size('request_rollups')) FROM request_rollups")
say "request_rollups: $ROWS"

# The admin key gets its id from the CLI; usage is asked of key 7 of the fill,
# which exists only in the rollups, so its api_keys row is added by hand.
ADMIN=$("$BIN" keys create -c "$RUN/gateway.toml" --name stats-admin --scopes admin --json \
  | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
[ -n "$ADMIN" ] || die "could not create the admin key"
"$(pg_bin_dir)/psql" "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c \
  "INSERT INTO api_keys (id, name, prefix, key_hash, scopes)
   VALUES ('00000000-0000-4000-8000-000000000007', 'filler', 'gw_live_fill', sha256('filler-7'::bytea), '{read:bench}')" >/dev/null

"$BIN" serve -c "$RUN/gateway.toml" >"$RUN/gateway.log" 2>&1 & PIDS+=($!)
ADMIN_URL="http://127.0.0.1:$((PORT + 100))"
wait_ok gateway "$ADMIN_URL/health/ready"

FROM=$(date -u -d "-$HOURS hours" +%Y-%m-%dT%H:%M:%SZ)
TO=$(date -u +%Y-%m-%dT%H:%M:%SZ)
KEY7=00000000-0000-4000-8000-000000000007
time_query() { # <label> <path and query>
  local url="$ADMIN_URL$2" times=() t code
  code=$(curl -s -o "$RUN/last.json" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" "$url")
  # Past the pool's 10 s statement timeout the API answers 503.
  if [ "$code" != 200 ]; then
    printf '| %s | HTTP %s | %s |\n' "$1" "$code" "$(head -c 120 "$RUN/last.json")"
    return
  fi
  for _ in $(seq "$ROUNDS"); do
    t=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $ADMIN" "$url")
    times+=("$(awk -v t="$t" 'BEGIN { printf "%.1f", t * 1000 }')")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v label="$1" '
    { v[NR] = $1 } END { printf "| %s | %.1f ms | %.1f ms |\n", label, v[int((NR + 1) / 2)], v[NR] }'
}

echo
echo "$HOURS h of rollups, $KEYS keys × $ROUTES routes: $ROWS"
echo
echo "| Query (over $HOURS h) | Median | Slowest of $ROUNDS |"
echo "|---|---:|---:|"
time_query "usage of one key, by hour" "/api/v1/keys/$KEY7/usage?from=$FROM&to=$TO&group_by=hour"
time_query "stats of one key (key_id=), by route" "/api/v1/requests/stats?from=$FROM&to=$TO&key_id=$KEY7&group_by=route"
time_query "stats of one route (route=)" "/api/v1/requests/stats?from=$FROM&to=$TO&route=route_07"
time_query "stats of everything" "/api/v1/requests/stats?from=$FROM&to=$TO"
time_query "stats of everything, by hour" "/api/v1/requests/stats?from=$FROM&to=$TO&group_by=hour"
time_query "stats of everything, by key" "/api/v1/requests/stats?from=$FROM&to=$TO&group_by=key"
time_query "stats of the last hour (default range)" "/api/v1/requests/stats"
