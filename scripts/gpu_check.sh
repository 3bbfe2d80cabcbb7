#!/usr/bin/env bash
# The one check for a GPU machine: environment, every gpu-marked test, the GPU benchmark,
# each under its own time budget; logs, summary.json and the benchmark's table in OUT_DIR.
# Uses the machine's own python and torch ($PYTHON, default python3); installs nothing.
#   bash scripts/gpu_check.sh OUT_DIR [--smoke] [--budgets env=30,tests=200,benchmark=190]
# With the offline bundle (../shared/gpu-stack copied to an ignored .gpu/):
#   bash .gpu/install.sh .gpu/gpu-stack-sm90.tar.xz /tmp/gpu-site && \
#     export PYTHONPATH=/tmp/gpu-site:$PWD && python3 .gpu/smoke.py cuda && \
#     bash scripts/gpu_check.sh OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR [--smoke] [--budgets NAME=SECONDS,...]" >&2
  exit 2
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$root"
exec "${PYTHON:-python3}" "$root/scripts/gpu_check.py" "$@"
