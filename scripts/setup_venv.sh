#!/usr/bin/env bash
# Create or reuse .venv in the repo root and install dlrm_dist with its pinned stack.
# Idempotent: a second run with unchanged pyproject.toml only checks the stamp.
# DLRM_DIST_VARIANT=cuda installs the CUDA fbgemm-gpu wheel instead of fbgemm-gpu-cpu
# (never both: they provide the same fbgemm_gpu module).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
variant="${DLRM_DIST_VARIANT:-cpu}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
stamp=".venv/.dlrm_dist-$variant-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && .venv/bin/python -c "import dlrm_dist, torchrec, fbgemm_gpu" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
other=$([ "$variant" = cpu ] && echo fbgemm-gpu || echo fbgemm-gpu-cpu)
.venv/bin/python -m pip uninstall -y -q "$other" 2>/dev/null || true
"${pip[@]}" -e ".[$variant,test]"
torchrec=$(.venv/bin/python -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['tool']['dlrm_dist']['torchrec'])")
"${pip[@]}" --no-deps "$torchrec"
.venv/bin/python -c "import dlrm_dist.train, torchrec, fbgemm_gpu"
rm -f .venv/.dlrm_dist-*
touch "$stamp"
