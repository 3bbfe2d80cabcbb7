"""The config module in a fresh interpreter: it imports no other module of the project."""

from __future__ import annotations

import subprocess
import sys


def test_config_imports_no_other_project_module():
    code = "import sys, dlrm_dist.config; print(*sorted(m for m in sys.modules if 'dlrm_' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ours = [m for m in out.stdout.split() if m.startswith("dlrm_dist.")]
    # compat and threads: the package's __init__ (import hooks, OpenMP before torch loads)
    assert ours == ["dlrm_dist.compat", "dlrm_dist.config", "dlrm_dist.errors", "dlrm_dist.threads"]
