#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against
# a private Postgres and Redis (started here, reused if already running).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages
ensure_rust_components
start_postgres
start_redis

# Databases left behind by an interrupted earlier run.
"$(pg_bin_dir)/psql" "$PG_URL_BASE/postgres" -Atqc \
  "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'gw_test_%'" \
  | "$(pg_bin_dir)/psql" "$PG_URL_BASE/postgres" -q >/dev/null

export GATEWAY_TEST_DATABASE_URL="$PG_URL_BASE/postgres"
export GATEWAY_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
say "cargo test"
cargo test --all-targets --locked
say "deploy kit (hadolint, compose, kubernetes-validate, actionlint)"
scripts/check-deploy.sh
