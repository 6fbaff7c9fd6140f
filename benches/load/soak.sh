#!/usr/bin/env bash
# Soak (issue 16, "Long runs"): one gateway under a steady load at a
# fraction (default 70 %) of its measured maximum for --duration seconds
# (default 600), its resident memory sampled every 10 s, the load cut into
# segments (default 60 s) that each report their rate, p50, p99, non-2xx
# responses and socket errors. Prints a per-segment table and a summary,
# and exits 1 when, after the warm-up:
#   - the gateway achieved less than 90 % of the offered rate;
#   - RSS grew by more than --rss-tolerance percent (default 10) from the
#     first sample after warm-up to the last;
#   - any response was not 2xx, or any socket error happened;
#   - the last segment's p99 is above --p99-drift times (default 2.0) the
#     first post-warm-up segment's.
#
#   benches/load/soak.sh [--duration 600] [--rate R | --fraction 0.70]
#                        [--segment 60] [--warmup 60] [--connections 64]
#                        [--backend local|redis] [--logs]
#                        [--rss-tolerance 10] [--p99-drift 2.0]
#                        [--no-pin] [--port-base 18300]
#
# --rate fixes the offered load (req/s); otherwise a 10 s unpaced wrk run
# measures the maximum first. --logs turns request logs on (sample_rate
# 1.0). The load is wrk with benches/load/pace.lua (a paced request per
# connection, corrected every segment): wrk2 is not packaged in Debian, and
# k6 needs more CPU than the proxy it drives on a 2-core machine. Pinned as
# run.sh pins: the gateway on CPU 1, wrk and the upstream on CPU 0.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

DURATION=600 RATE="" FRACTION=0.70 SEGMENT=60 WARMUP=60 CONNECTIONS=64 BACKEND=local LOGS=0
RSS_TOLERANCE=10 P99_DRIFT=2.0 PIN=1 BASE=18300
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --fraction) FRACTION=$2; shift 2 ;;
    --segment) SEGMENT=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --logs) LOGS=1; shift ;;
    --rss-tolerance) RSS_TOLERANCE=$2; shift 2 ;;
    --p99-drift) P99_DRIFT=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --port-base) BASE=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
for n in "$DURATION" "$SEGMENT" "$CONNECTIONS" "$BASE" ${RATE:+"$RATE"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup: expected seconds, got '$WARMUP'"
for x in "$FRACTION" "$RSS_TOLERANCE" "$P99_DRIFT"; do
  [[ "$x" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "expected a number, got '$x'"
done
case "$BACKEND" in local|redis) ;; *) die "--backend: local or redis, got '$BACKEND'" ;; esac
[ "$WARMUP" -lt "$DURATION" ] || die "--warmup must be shorter than --duration"

UPSTREAM_PORT=$BASE PORT=$((BASE + 1))
bench_run_dir bench-soak
CPU_PROXY=() CPU_LOAD=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then CPU_PROXY=(taskset -c 1) CPU_LOAD=(taskset -c 0); fi

ensure_packages
ensure_bench_packages
ensure_postgres
[ "$BACKEND" = redis ] && start_redis
# The same targets as run.sh: one build (and one feature set) serves both.
build_release --bin gateway --example bare_pingora
GW="$BIN_DIR/gateway"
start_upstream "$UPSTREAM_PORT" "${CPU_LOAD[@]}"

fresh_bench_db gateway_soak
EXTRA=$'\n[request_logs]\nenabled = false'
[ "$LOGS" = 1 ] && EXTRA=$'\n[request_logs]\nenabled = true\nsample_rate = 1.0'
bench_gateway_conf "$RUN/gateway.toml" "$PORT" "$BACKEND" 1 read:bench "$EXTRA"
"$GW" migrate -c "$RUN/gateway.toml" >/dev/null
KEY=$(create_key "$RUN/gateway.toml" soak read:bench)
AUTH="Authorization: Bearer $KEY"
URL="http://127.0.0.1:$PORT/"

"${CPU_PROXY[@]}" "$GW" serve -c "$RUN/gateway.toml" >"$RUN/gateway.log" 2>&1 & PIDS+=($!)
GW_PID=$!
wait_ok gateway -H "$AUTH" "$URL"

# Resident memory every 10 s: <seconds since start> <kB>.
START=$(date +%s)
(
  while kill -0 "$GW_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$GW_PID/status" 2>/dev/null || true)
    [ -n "$rss" ] && printf '%d\t%s\n' $(( $(date +%s) - START )) "$rss" >> "$RUN/rss.tsv"
    sleep 10
  done
) & PIDS+=($!)

wrk_run() { # <seconds> [pace µs]: one wrk run, prints its RESULT line
  local script=report.lua
  [ -n "${2:-}" ] && script=pace.lua
  PACE_US=${2:-0} "${CPU_LOAD[@]}" wrk -t 1 -c "$CONNECTIONS" -d "${1}s" --latency \
    -s "$ROOT/benches/load/$script" -H "$AUTH" "$URL" | grep '^RESULT' || die "wrk printed no result"
}

if [ -z "$RATE" ]; then
  say "measuring the maximum: 3 s warm-up, then 10 s unpaced"
  wrk_run 3 >/dev/null
  read -r _ max _ < <(wrk_run 10)
  RATE=$(awk -v m="$max" -v f="$FRACTION" 'BEGIN { printf "%d", m * f }')
  say "maximum $(printf '%.0f' "$max") req/s; soaking at $RATE req/s ($FRACTION)"
fi
[ "$RATE" -gt 0 ] || die "the offered rate came out as 0 req/s"

# Each connection's cycle is CONNECTIONS / RATE seconds: its pause plus its
# latency. Start with the whole cycle as pause and correct it from what
# each segment achieved.
CYCLE_US=$(( CONNECTIONS * 1000000 / RATE ))
PACE=$CYCLE_US
SEGMENTS=$(( (DURATION + SEGMENT - 1) / SEGMENT ))
say "$SEGMENTS segments of ${SEGMENT}s at $RATE req/s, wrk -c$CONNECTIONS"
: > "$RUN/segments.tsv"
for i in $(seq "$SEGMENTS"); do
  read -r _ rps p50 p99 non2xx errs reqs < <(wrk_run "$SEGMENT" "$PACE")
  end=$(( i * SEGMENT ))
  printf '%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$end" "$rps" "$p50" "$p99" "$non2xx" "$errs" "$reqs" >> "$RUN/segments.tsv"
  printf '  segment %3d (to %5ds)  %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d  errors %d\n' \
    "$i" "$end" "$rps" "$p50" "$p99" "$non2xx" "$errs" >&2
  # Overhead per cycle beyond the pause (latency, wrk's own time).
  PACE=$(awk -v c="$CONNECTIONS" -v got="$rps" -v pace="$PACE" -v cycle="$CYCLE_US" 'BEGIN {
    over = (got > 0 ? c * 1e6 / got : cycle) - pace; p = cycle - over; printf "%d", (p < 0 ? 0 : p) }')
done
# One last sample, so the RSS series ends with the load.
rss_end=$(awk '/^VmRSS:/ { print $2 }' "/proc/$GW_PID/status" 2>/dev/null || echo "")
[ -n "$rss_end" ] && printf '%d\t%s\n' $(( $(date +%s) - START )) "$rss_end" >> "$RUN/rss.tsv"

echo
echo "Soak: $DURATION s at $RATE req/s offered ($BACKEND backend, request logs $([ "$LOGS" = 1 ] && echo on || echo off)); warm-up ${WARMUP}s"
echo "(segments: $RUN/segments.tsv, RSS: $RUN/rss.tsv)"
echo
awk -F'\t' -v warm="$WARMUP" -v tol="$RSS_TOLERANCE" -v drift="$P99_DRIFT" -v rate="$RATE" -v rss_file="$RUN/rss.tsv" '
  BEGIN {
    printf "| %7s | %8s | %8s | %8s | %8s | %8s |\n", "segment", "to s", "req/s", "p50 ms", "p99 ms", "non-2xx+err"
    printf "|%s|%s|%s|%s|%s|%s|\n", "--------:", "---------:", "---------:", "---------:", "---------:", "----------:"
  }
  {
    printf "| %7d | %8d | %8.0f | %8.2f | %8.2f | %11d |\n", $1, $2, $3, $4, $5, $6 + $7
    bad += $6 + $7
    if ($2 - 0 > warm) { if (first_p99 == "") first_p99 = $5; last_p99 = $5; sum += $3; n++ }
  }
  END {
    fail = 0
    while ((getline line < rss_file) > 0) {
      split(line, f, "\t")
      if (f[1] + 0 >= warm && rss0 == "") rss0 = f[2]
      if (rss0 != "") { rss1 = f[2]; if (f[2] + 0 > peak) peak = f[2] + 0 }
    }
    print ""
    if (n == 0) { print "FAIL: no segment after the warm-up"; exit 1 }
    printf "offered %d req/s, achieved %.0f req/s on average after warm-up\n", rate, sum / n
    if (sum / n < 0.9 * rate) { print "FAIL: the gateway did not sustain 90 % of the offered rate"; fail = 1 }
    if (rss0 == "") { print "FAIL: no RSS sample after the warm-up"; fail = 1 }
    else {
      growth = (rss1 - rss0) * 100 / rss0
      printf "RSS after warm-up %.1f MB, at the end %.1f MB (%+.1f %%), peak %.1f MB\n", rss0 / 1024, rss1 / 1024, growth, peak / 1024
      if (growth > tol) { printf "FAIL: RSS grew %.1f %% > %s %%\n", growth, tol; fail = 1 }
    }
    if (bad > 0) { printf "FAIL: %d non-2xx responses or socket errors\n", bad; fail = 1 }
    else print "no non-2xx responses, no socket errors"
    printf "p99 first segment after warm-up %.2f ms, last %.2f ms\n", first_p99, last_p99
    if (first_p99 > 0 && last_p99 > drift * first_p99) { printf "FAIL: p99 drifted more than %sx\n", drift; fail = 1 }
    if (!fail) print "PASS"
    exit fail
  }' "$RUN/segments.tsv"
