#!/usr/bin/env bash
# Verifies one webhook delivery with the official `standardwebhooks` Python
# library (pinned, installed into .data/venv-webhooks on first use), the way
# a receiver would.
#
#   scripts/verify-webhook.sh SECRET < delivery.json
#
# delivery.json: {"headers": {"webhook-id": …, "webhook-timestamp": …,
# "webhook-signature": …}, "body": "<the raw body>"}. Prints the verified
# payload and exits 0, or prints the library's error and exits 1 (2 when it
# cannot run). The tests (tests/webhooks_delivery.rs) call it per delivery.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STANDARDWEBHOOKS_VERSION=1.1.0
VENV=${WEBHOOK_VERIFY_VENV:-$ROOT/.data/venv-webhooks}

die() { printf 'error: %s\n' "$*" >&2; exit 2; }

[ $# -eq 1 ] || { printf 'usage: %s SECRET < delivery.json\n' "$0" >&2; exit 2; }
command -v python3 >/dev/null || die "python3 is needed"

# Tests run in parallel: one installs, the others wait for it.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ ! -x "$VENV/bin/pip" ]; then
  python3 -m venv --clear "$VENV" >&2 || die "cannot create $VENV"
fi
installed=$("$VENV/bin/python" -c \
  'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null || true)
if [ "$installed" != "$STANDARDWEBHOOKS_VERSION" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >&2 || die "cannot install standardwebhooks"
fi
flock -u 9

SECRET=$1 exec "$VENV/bin/python" -c '
import json, os, sys
from standardwebhooks.webhooks import Webhook

delivery = json.load(sys.stdin)
try:
    payload = Webhook(os.environ["SECRET"]).verify(delivery["body"], delivery["headers"])
except Exception as e:  # the library raises more than its own error on bad input
    print(f"not verified: {e}")
    sys.exit(1)
print(json.dumps(payload))
'
