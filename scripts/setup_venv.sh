#!/usr/bin/env bash
# Create or reuse a venv in the repo root and install dlrm_dist with one of its tested stacks.
# Idempotent: a second run with unchanged pyproject.toml only checks the stamp.
#   DLRM_DIST_STACK=newest (default): .venv, the pins of [tool.dlrm_dist.stacks.newest]
#   DLRM_DIST_STACK=oldest: .venv-oldest, the oldest versions we support (the GPU machine's)
#   DLRM_DIST_VARIANT=cuda: the CUDA fbgemm-gpu wheel instead of fbgemm-gpu-cpu (never both:
#     they provide the same fbgemm_gpu module)
#   PYTHON=...: the interpreter for a new venv (default: the stack's `python` entry)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/stack.sh
variant="${DLRM_DIST_VARIANT:-cpu}"
case "$variant" in
  cpu) fbgemm=fbgemm-gpu-cpu other=fbgemm-gpu ;;
  cuda) fbgemm=fbgemm-gpu other=fbgemm-gpu-cpu ;;
  *) echo "ERROR: DLRM_DIST_VARIANT=$variant: use cpu or cuda" >&2; exit 2 ;;
esac
# the stack's pins: "KEY=VALUE" lines from pyproject.toml (python, torch, fbgemm, torchrec, ...)
pins=$(python3 - "$stack" <<'PY'
import sys, tomllib
stacks = tomllib.load(open("pyproject.toml", "rb"))["tool"]["dlrm_dist"]["stacks"]
if sys.argv[1] not in stacks:
    sys.exit(f"ERROR: DLRM_DIST_STACK={sys.argv[1]}: use one of {', '.join(stacks)}")
for key, value in stacks[sys.argv[1]].items():
    print(f"{key}={value}")
PY
)
pin() { sed -n "s/^$1=//p" <<<"$pins"; }
stamp="$venv/.dlrm_dist-$stack-$variant-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && "$venv/bin/python" -c "import dlrm_dist, torchrec, fbgemm_gpu" 2>/dev/null; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  python="${PYTHON:-python$(pin python)}"
  # pyenv's shim exists for every version but fails for one that is not selected
  "$python" --version >/dev/null 2>&1 || python="$(ls -d /root/.pyenv/versions/"$(pin python)"*/bin/python 2>/dev/null | tail -1)"
  "${python:-false}" --version >/dev/null 2>&1 || python=python3
  echo "dlrm_dist: creating $venv with $("$python" --version) (stack $stack)" >&2
  "$python" -m venv "$venv"
fi
constraints="$venv/constraints.txt"
{
  echo "torch==$(pin torch)"
  echo "$fbgemm==$(pin fbgemm)"
  for extra in tensordict; do [ -z "$(pin $extra)" ] || echo "$extra==$(pin $extra)"; done
} >"$constraints"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q -c "$constraints")
"$venv/bin/python" -m pip uninstall -y -q "$other" 2>/dev/null || true
"${pip[@]}" -e ".[$variant,test]"
# torchrec with --no-deps: its metadata requires the CUDA fbgemm-gpu wheel, which fails to load
# without a GPU driver and clashes with fbgemm-gpu-cpu (both provide the fbgemm_gpu module)
"${pip[@]}" --no-deps "torchrec==$(pin torchrec)"
"$venv/bin/python" -c "import dlrm_dist.train, torchrec, fbgemm_gpu"
rm -f "$venv"/.dlrm_dist-*
touch "$stamp"
