#!/usr/bin/env bash
# Set up everything the tests need, then run them.
#   scripts/test.sh            the default suite
#   scripts/test.sh --soak     the long fault-injection and soak runs only
#   scripts/test.sh -- ARGS    extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

marker="not soak"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --soak) marker="soak"; shift ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1"); shift ;;
  esac
done

scripts/setup.sh --dev
if .venv/bin/edge-agent models --help >/dev/null 2>&1; then
  .venv/bin/edge-agent models fetch --quiet
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
