#!/usr/bin/env bash
# The test command: set up what the tests need, lint, run the whole suite.
# pytest's exit 5 (no test ran) is a failure here, never hidden.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check agent emulators tests bench
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest ran no test: failing" >&2
  exit 1
fi
exit "$rc"
