#!/usr/bin/env bash
# Fuzzes a RUNNING admin API with schemathesis against its own OpenAPI spec.
#
#   scripts/fuzz-admin.sh BASE_URL ADMIN_KEY
#   scripts/fuzz-admin.sh http://127.0.0.1:9090 gw_live_...   # a key with scope `admin`
#
# Environment (all optional):
#   FUZZ_SCHEMA        spec to test against; default BASE_URL/openapi.json (the
#                      spec the server serves). A file works too, e.g.
#                      FUZZ_SCHEMA=admin/openapi.yaml; requests still go to BASE_URL.
#   FUZZ_MAX_EXAMPLES  test cases per operation (default 25)
#   FUZZ_SEED          random seed (default fixed, so runs are reproducible;
#                      tests/fuzz.rs passes GATEWAY_TEST_SEED here when set)
#   FUZZ_DIR           working directory: JUnit report (junit.xml) and
#                      schemathesis' .schemathesis/ store, so `st replay <id>`
#                      works from there (default .data/fuzz)
#
# It writes: it creates keys (POST /api/v1/keys) and updates, rotates and
# revokes the keys it created. Run it against a development database only.
# Keys that exist before the run (the ADMIN_KEY's among them) are protected:
# schemathesis 4 reuses ids it sees in responses (GET /api/v1/keys lists
# every key) and infers create -> get/update/rotate/revoke links from the
# schemas, so without protection it would revoke or rotate the admin key
# mid-run. A before_call hook therefore swaps any pre-existing key id in a
# PUT/PATCH/DELETE/rotate request for a UUID drawn from FUZZ_SEED (which
# answers 404).
# That is why the DELETE and rotate operations can stay in the run.
#
# Exits non-zero when schemathesis finds a failure (or cannot run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCHEMATHESIS_VERSION=4.32.5
VENV=$ROOT/.data/venv-fuzz

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

if [ $# -ne 2 ]; then
  printf 'usage: %s BASE_URL ADMIN_KEY\n' "$0" >&2
  exit 2
fi
BASE_URL=${1%/}
ADMIN_KEY=$2
case "$BASE_URL" in http://* | https://*) ;; *) die "BASE_URL must start with http:// or https://" ;; esac
[ -n "$ADMIN_KEY" ] || die "ADMIN_KEY is empty"

SCHEMA=${FUZZ_SCHEMA:-$BASE_URL/openapi.json}
case "$SCHEMA" in
  http://* | https://*) ;;
  *) [ -f "$SCHEMA" ] || die "FUZZ_SCHEMA: no such file: $SCHEMA"
     SCHEMA=$(cd "$(dirname "$SCHEMA")" && pwd)/$(basename "$SCHEMA") ;;
esac
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-25}
SEED=${FUZZ_SEED:-20261122}
FUZZ_DIR=${FUZZ_DIR:-$ROOT/.data/fuzz}

# --- schemathesis, pinned, in its own venv ---------------------------------
command -v python3 >/dev/null || die "python3 is needed"
# A venv left without pip (ensurepip was missing) is made again.
if [ ! -x "$VENV/bin/pip" ]; then
  say "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv --clear "$VENV"
fi
installed=$("$VENV/bin/python" -c \
  'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [ "$installed" != "$SCHEMATHESIS_VERSION" ]; then
  say "installing schemathesis $SCHEMATHESIS_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- protect the keys that already exist ------------------------------------
# Pages through GET /api/v1/keys; this also checks that the key works and can
# read keys before spending time on the run.
say "listing existing keys (they will not be modified)"
BASE_URL=$BASE_URL ADMIN_KEY=$ADMIN_KEY "$VENV/bin/python" - >"$WORK/protected-ids" <<'PY'
import json, os, sys, urllib.error, urllib.parse, urllib.request

base, key = os.environ["BASE_URL"], os.environ["ADMIN_KEY"]
cursor, pages = None, 0
while True:
    query = {"limit": "100"} | ({"cursor": cursor} if cursor else {})
    req = urllib.request.Request(
        f"{base}/api/v1/keys?{urllib.parse.urlencode(query)}",
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            page = json.load(resp)
    except urllib.error.HTTPError as e:
        sys.exit(f"error: GET /api/v1/keys answered {e.code}: {e.read()[:300].decode(errors='replace')}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        sys.exit(f"error: cannot list keys at {base}: {e}")
    for item in page.get("data") or []:
        print(item["id"])
    cursor, pages = page.get("next_cursor"), pages + 1
    if not cursor or pages >= 10000:
        break
PY
say "$(wc -l <"$WORK/protected-ids" | tr -d ' ') existing keys protected"

cat >"$WORK/fuzz_admin_hooks.py" <<'PY'
"""Keeps schemathesis from changing keys that existed before the run."""
import os
import random
import uuid

import schemathesis

# Seeded like the run, so a replay with the same seed sends the same ids.
RNG = random.Random(os.environ["FUZZ_SEED"])
with open(os.environ["FUZZ_PROTECTED_IDS"]) as f:
    PROTECTED = {uuid.UUID(line.strip()) for line in f if line.strip()}
MUTATING = {"PUT", "PATCH", "DELETE", "POST"}


def _as_uuid(value):
    # uuid.UUID is at least as lenient as the server's parser (braces,
    # urn:uuid:, no hyphens, any case), so every spelling is caught.
    try:
        return uuid.UUID(str(value).strip())
    except (ValueError, TypeError):
        return None


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if case.method.upper() in MUTATING and params and "id" in params:
        if _as_uuid(params["id"]) in PROTECTED:
            params["id"] = str(uuid.UUID(int=RNG.getrandbits(128), version=4))
PY

# --- the run ----------------------------------------------------------------
# Checks: all of them except
#  - positive_data_acceptance: the spec cannot express every rule, so some
#    schema-valid requests are rightly refused with 400: `expires_at` must be
#    in the future, `metadata` at most 4096 bytes serialised, `cursor` must
#    be a `next_cursor` the server handed out.
#  - use_after_free: revoking is a soft delete; GET /api/v1/keys/{id} of a
#    revoked key answers 200 with status `revoked` by contract, which this
#    check reports as a resource still reachable after DELETE.
# negative_data_rejection stays: the server validates strictly (unknown
# fields and query parameters are 400), so accepted invalid data is a bug.
mkdir -p "$FUZZ_DIR"
FUZZ_DIR=$(cd "$FUZZ_DIR" && pwd)
JUNIT=$FUZZ_DIR/junit.xml
rm -f "$JUNIT"
cmd=(
  "$VENV/bin/schemathesis" run "$SCHEMA"
  --url "$BASE_URL"
  --header "Authorization: Bearer $ADMIN_KEY"
  --checks all
  --exclude-checks positive_data_acceptance,use_after_free
  --max-examples "$MAX_EXAMPLES"
  --seed "$SEED"
  --generation-database none
  --request-timeout 10
  --wait-for-schema 30
  --report junit
  --report-junit-path "$JUNIT"
)
say "schemathesis $SCHEMATHESIS_VERSION: $SCHEMA -> $BASE_URL (seed $SEED, $MAX_EXAMPLES examples per operation)"
rc=0
# Output sanitisation (on by default) masks the Authorization header in
# reproduction commands.
(cd "$FUZZ_DIR" && FUZZ_PROTECTED_IDS="$WORK/protected-ids" FUZZ_SEED="$SEED" \
  SCHEMATHESIS_HOOKS=fuzz_admin_hooks PYTHONPATH="$WORK" "${cmd[@]}") || rc=$?

counts=$("$VENV/bin/python" - "$JUNIT" <<'PY' 2>/dev/null || echo "no report"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = list(root.iter("testcase"))
bad = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
ops = [c for c in cases if c.get("name") != "Stateful tests"]
print(f"{len(ops)} operations tested, {len(bad)} of {len(cases)} test suites (operations + stateful) failing")
PY
)
if [ "$rc" -eq 0 ]; then verdict=PASSED; else verdict="FAILED (exit $rc)"; fi
echo "fuzz-admin: $verdict: $counts; schemathesis $SCHEMATHESIS_VERSION, seed $SEED, $MAX_EXAMPLES examples/operation; report $JUNIT"
exit "$rc"
