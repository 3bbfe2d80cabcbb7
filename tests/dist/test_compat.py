"""dlrm_dist/compat.py's import shim, in fresh interpreters: fbgemm-gpu 1.6's import noise is
dropped and the root logger left alone; the installed stack imports silently."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.common import ROOT


def _run(code: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )


def test_fbgemm_import_noise_is_dropped_and_the_root_logger_left_alone(tmp_path):
    # a stand-in fbgemm_gpu that logs as fbgemm-gpu 1.6.0's import does, plus one real warning
    (tmp_path / "fbgemm_gpu").mkdir()
    (tmp_path / "fbgemm_gpu" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import logging
            logging.warning("_fbgemm_torch_compat_table has no entry for 1.6.0 of FBGEMM")
            logging.warning("FBGEMM_GPU version is 1.6.0, which is not guaranteed to be ok")
            logging.warning("a warning that matters")
            """
        )
    )
    code = """
        import logging
        import dlrm_dist, fbgemm_gpu
        assert fbgemm_gpu.__file__.startswith(%r)
        print("handlers", len(logging.getLogger().handlers))
    """
    proc = _run(code % str(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "handlers 0"
    assert proc.stderr.strip() == "a warning that matters"
    # without dlrm_dist first, the noise and a root handler (what the shim prevents)
    bare = _run(code.replace("import dlrm_dist, ", "import ") % str(tmp_path), tmp_path)
    assert "has no entry" in bare.stderr and bare.stdout.strip() == "handlers 1"


def test_the_installed_stack_imports_silently():
    proc = _run(
        """
        import logging
        import dlrm_dist.train, torchrec, fbgemm_gpu
        print("handlers", len(logging.getLogger().handlers))
        """,
        ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "handlers 0" and proc.stderr == ""
