#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API: schemathesis (pinned, from PyPI) reads the spec that
# eu-west serves at /openapi.json and sends generated requests — valid and invalid — to it,
# while the three-region demo runs (so ids that name other regions reach live peers). It fails
# on any 5xx other than 503 with Retry-After, and on any answer that contradicts the spec
# (status, content type, headers, body schema). The SSE routes are left out: a stream never ends.
#
# Usage: scripts/api-fuzz.sh [MAX_EXAMPLES]   (default 25 per operation)
# Needs: python3 with venv and pip, curl; builds `allot` if $ALLOT_BIN is not set.
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-25}"
venv="${ALLOT_VENV:-$HOME/.cache/allot-venv}"
st_version="4.32.5"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$st_version"; then
  echo "== installing schemathesis $st_version into $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "schemathesis==$st_version"
fi
if ! "$venv/bin/pip" show openapi-spec-validator 2>/dev/null | grep -q "Version: 0.9.0"; then
  "$venv/bin/pip" install -q "openapi-spec-validator==0.9.0"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/allot-target}"
bin="${ALLOT_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --locked --release -p allot
  bin="$CARGO_TARGET_DIR/release/allot"
fi

work="$(mktemp -d)"
token="fuzz-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
demo_pid=""
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

ALLOT_ADMIN_TOKEN="$token" RUST_LOG=error "$bin" demo --rate 0 --seconds 3600 >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!
for _ in $(seq 1 200); do
  grep -q "operator token" "$work/demo.out" 2>/dev/null && break
  sleep 0.1
done
base="$(grep -m1 -oE 'eu-west +dashboard http://[0-9.:]+' "$work/demo.out" | grep -oE 'http://[0-9.:]+' || true)"
if [ -z "$base" ]; then
  echo "FAIL: the demo did not start"; cat "$work/demo.out" "$work/demo.err"; exit 1
fi
echo "== the spec validates as OpenAPI 3.1"
curl -sf "$base/openapi.json" > "$work/openapi.json"
"$venv/bin/openapi-spec-validator" --schema 3.1.0 "$work/openapi.json"

echo "== fuzzing $base (three-region demo), $examples examples per operation"

SCHEMATHESIS_HOOKS=api_fuzz_hooks PYTHONPATH=scripts "$venv/bin/st" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-checks not_a_server_error,positive_data_acceptance,ignored_auth,use_after_free,ensure_resource_availability \
  --exclude-path-regex '/stream$' \
  --max-examples "$examples" \
  --seed 1 \
  --workers 2 \
  --request-timeout 20 \
  --no-color \
  --report junit --report-dir "${ALLOT_FUZZ_REPORT:-$work/report}"
echo "api fuzz: no failure"
