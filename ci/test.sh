#!/usr/bin/env bash
# Sets up ./.venv (ci/setup.sh) and runs the test suite: tests/ plus the conformance suite shipped in kbit.testing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/python -m kbit
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
.venv/bin/python -m pytest tests --pyargs kbit.testing -q -p no:cacheprovider "$@"
