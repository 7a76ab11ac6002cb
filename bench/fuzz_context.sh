#!/usr/bin/env bash
# The long fuzzing runs: the `slow` tests of tests/test_fuzz_context.py (the context parser)
# and tests/test_hostile.py (hostile contexts through config and planning, each bounded to 5 s
# and 100 MB), at least 100,000 generated inputs per generator (FL_FUZZ_EXAMPLES to change it).
# The later -m overrides the "not slow" of pyproject's addopts.
set -euo pipefail
cd "$(dirname "$0")/.."
export FL_FUZZ_EXAMPLES="${FL_FUZZ_EXAMPLES:-100000}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider -m slow --hypothesis-show-statistics \
  tests/test_fuzz_context.py tests/test_hostile.py "$@"
