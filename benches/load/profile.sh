#!/usr/bin/env bash
# Where a gateway's CPU time goes under load (issue 16, "Profile first"):
# one gateway (run.sh's configuration) under wrk, `perf record` with DWARF
# call graphs on its process, then inferno: a flame graph (SVG), the folded
# stacks, and two top-N text summaries: self time per function (perf
# report) and inclusive time per function (from the folded stacks), both
# in percent of the gateway's samples. Record percentages, not absolute
# figures: on a shared machine only the shares are stable.
#
#   benches/load/profile.sh [--backend local|redis] [--logs on|off] [--bare]
#                           [--seconds 15] [--frequency 299] [--connections 64]
#                           [--top 40] [--no-pin] [--port-base 18500]
#
# --bare profiles the baseline (examples/bare_pingora.rs) instead, so the
# two profiles can be compared frame by frame. Before recording, `perf
# stat` counts the proxy's CPU time and syscalls over a 5 s wrk run: CPU
# µs per request is the figure that sets the throughput ratio to bare.
#
# Defaults: local backend, request logs on (sample_rate 1.0), the budget
# case of DESIGN §4. Pinned as run.sh pins (the gateway on CPU 1, wrk and
# the upstream on CPU 0). Installs perf (linux-perf) and inferno (into
# .data/tools) when missing; writes into .data/profile-<backend>-logs-<on|off>/.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

BACKEND=local LOGS=on BARE=0 SECONDS_=15 FREQ=299 CONNECTIONS=64 TOP=40 PIN=1 BASE=18500
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --logs) LOGS=$2; shift 2 ;;
    --bare) BARE=1; shift ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --frequency) FREQ=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --port-base) BASE=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
for n in "$SECONDS_" "$FREQ" "$CONNECTIONS" "$TOP" "$BASE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done
case "$BACKEND" in local|redis) ;; *) die "--backend: local or redis, got '$BACKEND'" ;; esac
case "$LOGS" in on|off) ;; *) die "--logs: on or off, got '$LOGS'" ;; esac

UPSTREAM_PORT=$BASE PORT=$((BASE + 1))
NAME="gateway, $BACKEND backend, request logs $LOGS"
if [ "$BARE" = 1 ]; then NAME="bare Pingora"; bench_run_dir profile-bare
else bench_run_dir "profile-$BACKEND-logs-$LOGS"; fi
CPU_PROXY=() CPU_LOAD=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then CPU_PROXY=(taskset -c 1) CPU_LOAD=(taskset -c 0); fi

ensure_packages
ensure_bench_packages
ensure_profile_tools
ensure_postgres
[ "$BACKEND" = redis ] && start_redis
# The same targets as run.sh: one build (and one feature set) serves both.
# The release profile keeps line tables (debug = 1), which perf needs.
build_release --bin gateway --example bare_pingora
GW="$BIN_DIR/gateway"
start_upstream "$UPSTREAM_PORT" "${CPU_LOAD[@]}"

URL="http://127.0.0.1:$PORT/"
if [ "$BARE" = 1 ]; then
  AUTH="X-Bench: bare"
  "${CPU_PROXY[@]}" "$BIN_DIR/examples/bare_pingora" "127.0.0.1:$PORT" \
    "127.0.0.1:$UPSTREAM_PORT" 1 >"$RUN/gateway.log" 2>&1 & PIDS+=($!)
else
  fresh_bench_db gateway_profile
  EXTRA=$'\n[request_logs]\nenabled = false'
  [ "$LOGS" = on ] && EXTRA=$'\n[request_logs]\nenabled = true\nsample_rate = 1.0'
  bench_gateway_conf "$RUN/gateway.toml" "$PORT" "$BACKEND" 1 read:bench "$EXTRA"
  "$GW" migrate -c "$RUN/gateway.toml" >/dev/null
  KEY=$(create_key "$RUN/gateway.toml" profile read:bench)
  AUTH="Authorization: Bearer $KEY"
  "${CPU_PROXY[@]}" "$GW" serve -c "$RUN/gateway.toml" >"$RUN/gateway.log" 2>&1 & PIDS+=($!)
fi
GW_PID=$!
wait_ok proxy -H "$AUTH" "$URL"

wrk_run() { # <seconds>
  "${CPU_LOAD[@]}" wrk -t 1 -c "$CONNECTIONS" -d "${1}s" --latency \
    -s "$ROOT/benches/load/report.lua" -H "$AUTH" "$URL" | grep '^RESULT'
}
say "warm-up 3 s, then perf stat for 5 s under wrk -c$CONNECTIONS"
wrk_run 3 >/dev/null
wrk_run 6 > "$RUN/wrk-stat.out" & WRK=$!
sleep 0.5
perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$GW_PID" \
  -o "$RUN/perf-stat.csv" -- sleep 5 2> "$RUN/perf-stat.log" || die "perf stat failed: $(tail -n 3 "$RUN/perf-stat.log")"
wait "$WRK" || die "wrk failed"
# wrk ran 6 s, perf counted 5 of them: requests in the counted window.
read -r _ STAT_RPS _ < "$RUN/wrk-stat.out"
stat_of() { awk -F, -v e="$1" '$3 == e || index($3, e) { print $1; exit }' "$RUN/perf-stat.csv"; }
PER_REQ=$(awk -v ms="$(stat_of task-clock)" -v sc="$(stat_of sys_enter)" -v cs="$(stat_of context-switches)" -v rps="$STAT_RPS" \
  'BEGIN { n = rps * 5; printf "%.1f CPU µs, %.2f syscalls, %.3f context switches per request (%.0f req/s)", ms * 1000 / n, sc / n, cs / n, rps }')
say "warm-up 3 s, then perf record -F $FREQ --call-graph dwarf for ${SECONDS_}s under wrk -c$CONNECTIONS"
wrk_run 3 >/dev/null
wrk_run $((SECONDS_ + 3)) > "$RUN/wrk.out" & WRK=$!
sleep 1
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$GW_PID" -o "$RUN/perf.data" \
  -- sleep "$SECONDS_" 2> "$RUN/perf-record.log" || die "perf record failed: $(tail -n 3 "$RUN/perf-record.log")"
wait "$WRK" || die "wrk failed"

say "folding stacks and drawing the flame graph"
# --no-inline: resolving inlined frames runs addr2line per address, which
# takes many minutes; inlined functions are then counted in their callers.
perf script --no-inline -i "$RUN/perf.data" 2>/dev/null | "$INFERNO_COLLAPSE" > "$RUN/stacks.folded"
[ -s "$RUN/stacks.folded" ] || die "no stacks were sampled (perf: $RUN/perf-record.log)"
"$INFERNO_FLAMEGRAPH" --title "$NAME" \
  < "$RUN/stacks.folded" > "$RUN/flamegraph.svg"
perf report -i "$RUN/perf.data" --no-children --no-inline -g none --sort symbol --stdio --percent-limit 0.3 2>/dev/null \
  | awk -v n="$TOP" '/^ +[0-9.]+%/ && ++k <= n' > "$RUN/top-self.txt"
# Inclusive share per function: a sample counts once for every distinct
# frame on its stack.
awk -v top="$TOP" '
  {
    n = match($0, / [0-9]+$/); if (!n) next
    count = substr($0, n + 1) + 0; total += count
    k = split(substr($0, 1, n - 1), frames, ";")
    delete seen
    for (i = 1; i <= k; i++) if (!(frames[i] in seen)) { seen[frames[i]] = 1; incl[frames[i]] += count }
  }
  END { for (f in incl) printf "%6.2f%%  %s\n", incl[f] * 100 / total, f }' "$RUN/stacks.folded" \
  | sort -rn | awk -v n="$TOP" 'NR <= n' > "$RUN/top-inclusive.txt"

read -r _ rps p50 p99 non2xx errs _ < "$RUN/wrk.out"
echo
echo "Profile: $NAME: $PER_REQ"
echo "Under perf record: $(printf '%.0f' "$rps") req/s (p99 $p99 ms, non-2xx $non2xx, errors $errs)"
echo "flame graph: $RUN/flamegraph.svg   folded stacks: $RUN/stacks.folded"
echo
echo "Self time, top $TOP (perf report --no-children):"
cat "$RUN/top-self.txt"
echo
echo "Inclusive time, top $TOP (share of samples with the function on the stack):"
cat "$RUN/top-inclusive.txt"
