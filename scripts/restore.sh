#!/usr/bin/env bash
# Restores a scripts/backup.sh dump into a fresh, empty database.
#
#   scripts/restore.sh [--force] [--gateway BIN] [-c CONFIG] DUMP TARGET_URL
#
# TARGET_URL must name an existing, empty database (createdb it first);
# one that holds any table, view, sequence or type is refused unless
# --force, which drops the dump's objects there before restoring them.
# The restore is one transaction that stops at the first error
# (--single-transaction --exit-on-error), so a failed restore leaves the
# target as it was. Objects are owned by the restoring role (--no-owner).
# Then `gateway migrate status` shows the schema version of the restored
# database (BIN: --gateway, else $GATEWAY_BIN, else `gateway` on PATH, else
# target/release or target/debug); -c is the config file it reads (its
# database URL is replaced by TARGET_URL). Messages never show the URL's
# password.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg-tools.sh
. "$(dirname "${BASH_SOURCE[0]}")/pg-tools.sh"

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

force=0
gateway=${GATEWAY_BIN:-}
config=${GATEWAY_CONFIG:-conf/gateway.toml}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1; shift ;;
    --gateway) gateway=${2:?--gateway needs a path}; shift 2 ;;
    -c|--config) config=${2:?-c needs a file}; shift 2 ;;
    -h|--help) usage ;;
    -*) printf 'error: unknown option %s\n' "$1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -eq 2 ] || usage
dump=${args[0]}
url=${args[1]}
[ -r "$dump" ] || die "cannot read the dump $dump"

use_url "$url"
shown=$(redact_url "$url")
bin=$(pg_tools_for_server) || die "cannot reach the target database $shown (see the psql error above)"
"$bin/pg_restore" --list "$dump" >/dev/null || die "$dump is not a pg_dump custom-format archive"

# Anything in a user schema makes the target not fresh.
objects=$("$bin/psql" --no-password -X -At -v ON_ERROR_STOP=1 "$PG_URL_NO_PASSWORD" -c "
  SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'") \
  || die "cannot inspect the target database $shown"
clean=()
if [ "$objects" -gt 0 ]; then
  if [ "$force" -eq 0 ]; then
    die "the target database $shown is not empty ($objects relations); restore into a fresh database (createdb), or pass --force to replace what the dump holds"
  fi
  say "target holds $objects relations; --force: dropping the dump's objects first"
  clean=(--clean --if-exists)
fi

say "restoring $dump into $shown with $bin/pg_restore"
"$bin/pg_restore" --no-password --single-transaction --exit-on-error --no-owner \
  "${clean[@]}" --dbname="$PG_URL_NO_PASSWORD" "$dump" \
  || die "pg_restore failed; the transaction was rolled back and the target is unchanged"
say "restore complete"

if [ -z "$gateway" ]; then
  if command -v gateway >/dev/null; then gateway=gateway
  elif [ -x "$ROOT/target/release/gateway" ]; then gateway="$ROOT/target/release/gateway"
  elif [ -x "$ROOT/target/debug/gateway" ]; then gateway="$ROOT/target/debug/gateway"
  fi
fi
if [ -z "$gateway" ]; then
  say "no gateway binary found (--gateway); skipping 'gateway migrate status'"
  exit 0
fi
say "schema version of the restored database:"
DATABASE_URL=$url "$gateway" -c "$config" migrate status \
  || die "'gateway migrate status' failed against the restored database"
