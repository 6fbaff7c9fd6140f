# Helpers of scripts/backup.sh and scripts/restore.sh: the database URL,
# its password kept out of argv and output, and the Postgres client tools
# matching the server's major version. Source after lib.sh.
# shellcheck shell=bash

# The database URL: $DATABASE_URL, $GATEWAY_DATABASE_URL, or the
# [database] url of the TOML file $1 (a plain `url = "..."` line).
database_url() {
  local file=$1
  if [ -n "${DATABASE_URL:-}" ]; then echo "$DATABASE_URL"; return; fi
  if [ -n "${GATEWAY_DATABASE_URL:-}" ]; then echo "$GATEWAY_DATABASE_URL"; return; fi
  [ -r "$file" ] || return 1
  awk '
    /^[[:space:]]*\[/ { section = $0; gsub(/[[:space:]\[\]]/, "", section); next }
    section == "database" && /^[[:space:]]*url[[:space:]]*=/ {
      sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; found = 1; exit
    }
    END { exit found ? 0 : 1 }
  ' "$file"
}

# The URL with its password replaced by "***", for messages.
redact_url() {
  printf '%s' "$1" | sed -E 's#^([a-z]+://[^:/@]+):[^@]*@#\1:***@#'
}

# Percent-decodes $1 (libpq decodes the password of a URL; PGPASSWORD is raw).
urldecode() {
  local s=${1//+/%2B}
  printf '%b' "${s//%/\\x}"
}

# Sets PG_URL_NO_PASSWORD and exports PGPASSWORD from the URL $1, so the
# password is in no command line (visible in ps) and no message.
use_url() {
  local url=$1 userinfo pass
  PG_URL_NO_PASSWORD=$url
  if [[ "$url" =~ ^([a-z]+://)([^/@]*)@(.*)$ ]]; then
    userinfo=${BASH_REMATCH[2]}
    if [[ "$userinfo" == *:* ]]; then
      pass=${userinfo#*:}
      PGPASSWORD=$(urldecode "$pass")
      export PGPASSWORD
      PG_URL_NO_PASSWORD="${BASH_REMATCH[1]}${userinfo%%:*}@${BASH_REMATCH[3]}"
    fi
  fi
}

# The bin directory of the client tools to use against the server at
# $PG_URL_NO_PASSWORD: $PG_BIN, else /usr/lib/postgresql/<server major>/bin,
# else the newest installed (pg_dump refuses a newer server itself, with a
# clear message), else the directory of pg_dump on PATH.
pg_tools_for_server() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local any psql_bin version major
  any=$(pg_bin_dir || true)
  if [ -z "$any" ]; then
    any=$(dirname "$(command -v pg_dump || echo /nonexistent/pg_dump)")
  fi
  psql_bin="$any/psql"
  [ -x "$psql_bin" ] || { printf 'error: no psql/pg_dump found; install postgresql-client\n' >&2; return 1; }
  version=$("$psql_bin" --no-password -X -At -c 'SHOW server_version_num' "$PG_URL_NO_PASSWORD") || return 1
  major=$((version / 10000))
  if [ -x "/usr/lib/postgresql/$major/bin/pg_dump" ]; then
    echo "/usr/lib/postgresql/$major/bin"
  else
    echo "$any"
  fi
}
