#!/usr/bin/env bash
# Start, stop or show the private Postgres and Redis used by run.sh and test.sh.
#   scripts/services.sh start|stop|status
set -euo pipefail
source "$(dirname "$0")/lib.sh"
case "${1:-status}" in
  start) ensure_packages; start_postgres; start_redis
         echo "DATABASE_URL=$PG_URL_BASE/gateway"; echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT" ;;
  stop) stop_postgres; stop_redis; echo "stopped" ;;
  status)
    if "$(pg_bin_dir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then echo "postgres: up on $PG_PORT"; else echo "postgres: down"; fi
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then echo "redis: up on $REDIS_PORT"; else echo "redis: down"; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
