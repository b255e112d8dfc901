#!/usr/bin/env bash
# Set up everything the tests need, then run them.
#   scripts/test.sh            the default suite
#   scripts/test.sh --soak     the long fault-injection and soak runs only
#   scripts/test.sh --field    the field checks only, as root: the agent under a real systemd
#                              (scripts/check-systemd.sh) and the install on emulated arm64
#                              (scripts/check-arm64.sh); about 25 minutes, not part of CI
#   scripts/test.sh -- ARGS    extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

marker="not soak"
field=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --soak) marker="soak"; shift ;;
    --field) field=1; shift ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1"); shift ;;
  esac
done

scripts/setup.sh --dev
if .venv/bin/edge-agent models --help >/dev/null 2>&1; then
  .venv/bin/edge-agent models fetch --quiet
fi

if [ "$field" = 1 ]; then
  rc=0
  summaries=()
  for check in scripts/check-systemd.sh scripts/check-arm64.sh; do
    echo "test.sh: $check"
    out=$(mktemp)
    "$check" | tee "$out" || rc=1
    summaries+=("$check: $(tail -n 1 "$out")")
    rm -f "$out"
  done
  printf '%s\n' "${summaries[@]}"
  exit "$rc"
fi

# The architecture contract in pyproject.toml: layers in the flow's order, no import cycles.
.venv/bin/lint-imports --no-logo

set +e
.venv/bin/python -m pytest -m "$marker" "${args[@]}"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
