#!/usr/bin/env bash
# Set up the venv if needed, then lint and run the test suite (arguments go to pytest).
# DLRM_DIST_STACK=oldest: on the oldest supported stack, in .venv-oldest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
source scripts/stack.sh
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
exec "$venv/bin/python" -m pytest -q "$@"
