#!/usr/bin/env bash
# The tests: installs what is needed, then runs every test (unit tests and real-lab tests; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
exec .venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"
