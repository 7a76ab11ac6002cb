#!/usr/bin/env bash
# Every benchmark, one command: ratios printed, results under bench/results/ (see
# bench/run_all.py; `--only cli boot herd watch fuzz` for some of them). Needs root and the
# machine's Docker engine (bash scripts/setup.sh), as the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench.run_all "$@"
