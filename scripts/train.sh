#!/usr/bin/env bash
# Set up .venv if needed, then train: the default CPU job unless other flags are given.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
if [ $# -eq 0 ]; then set -- --config configs/default.toml; fi
exec .venv/bin/python -m dlrm_dist.train "$@"
