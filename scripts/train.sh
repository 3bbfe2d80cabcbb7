#!/usr/bin/env bash
# Set up the venv if needed, then train: the default CPU job unless other flags are given.
# DLRM_DIST_STACK=oldest: on the oldest supported stack, in .venv-oldest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
source scripts/stack.sh
if [ $# -eq 0 ]; then set -- --config configs/default.toml; fi
exec "$venv/bin/python" -m dlrm_dist.train "$@"
