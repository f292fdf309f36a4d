#!/usr/bin/env bash
# The demo: installs what is needed, then `kubeha demo`: builds a lab (3 masters, 3 spares,
# 3 workers), checks it, moves every master to a spare and the API to a new VIP with the
# availability probe running, writes a report for each, removes the lab (--keep keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/kubeha demo --state-dir "${KUBEHA_DEMO_DIR:-$(pwd)/kubeha-demo}" "$@"
