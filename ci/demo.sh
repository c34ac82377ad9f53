#!/usr/bin/env bash
# Sets up ./.venv (ci/setup.sh) and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/python examples/demo.py "$@"
