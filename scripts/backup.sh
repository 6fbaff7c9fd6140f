#!/usr/bin/env bash
# Backs up the gateway's database: `pg_dump --format=custom` to
# <dir>/gateway-<UTC timestamp>.dump, keeping the newest N dumps.
#
#   scripts/backup.sh [--dir DIR] [--keep N] [-c CONFIG]
#
# The database is $DATABASE_URL, else $GATEWAY_DATABASE_URL, else the
# [database] url of the config file (-c, default $GATEWAY_CONFIG or
# conf/gateway.toml). The dump is written to a .partial file and renamed
# only once pg_dump succeeded, so a dump that exists is complete. Prints
# the dump's path on stdout; messages go to stderr and never show the
# URL's password (it reaches pg_dump through PGPASSWORD, not argv).
#
# pg_dump must be the server's major version or newer: the one of the
# server's major version under /usr/lib/postgresql is used when present
# (else the newest there, else the one on PATH); PG_BIN overrides.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg-tools.sh
. "$(dirname "${BASH_SOURCE[0]}")/pg-tools.sh"

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dir=${GATEWAY_BACKUP_DIR:-backups}
keep=7
config=${GATEWAY_CONFIG:-conf/gateway.toml}
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
    --keep) keep=${2:?--keep needs a number}; shift 2 ;;
    -c|--config) config=${2:?-c needs a file}; shift 2 ;;
    -h|--help) usage ;;
    *) printf 'error: unknown argument %s\n' "$1" >&2; usage ;;
  esac
done
case "$keep" in
  ''|*[!0-9]*|0) die "--keep must be a whole number of at least 1 (got '$keep')" ;;
esac

url=$(database_url "$config") || die "no database URL: set DATABASE_URL or [database] url in $config"
use_url "$url"
bin=$(pg_tools_for_server) || die "cannot reach the database at $(redact_url "$url") (see the psql error above)"

mkdir -p "$dir" || die "cannot create the backup directory $dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
final="$dir/gateway-$stamp.dump"
partial="$final.partial"
[ -e "$final" ] && die "$final exists already (two backups in the same second?)"

say "backing up $(redact_url "$url") to $final with $bin/pg_dump"
trap 'rm -f "$partial"' EXIT
if ! "$bin/pg_dump" --format=custom --no-password --file="$partial" "$PG_URL_NO_PASSWORD"; then
  die "pg_dump failed; no backup was written (the previous ones are kept)"
fi
# A dump pg_restore cannot list is not a backup.
"$bin/pg_restore" --list "$partial" >/dev/null || die "pg_dump wrote an unreadable dump; removed"
mv "$partial" "$final"
trap - EXIT

# Retention: the names sort by time; keep the newest $keep.
mapfile -t old < <(find "$dir" -maxdepth 1 -name 'gateway-*.dump' -printf '%f\n' | sort -r | tail -n +"$((keep + 1))")
for f in "${old[@]}"; do
  rm -f "$dir/$f" && say "removed old backup $dir/$f"
done
say "backup complete: $final ($(du -h "$final" | cut -f1))"
echo "$final"
