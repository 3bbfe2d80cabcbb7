"""The start-up choice of threads and OpenMP spin count, in fresh interpreters as a user
starts them: the spin count set before torch loads (or the user's own kept), and a run
beside a busy process takes the free cores only and says so in its first line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dlrm_dist import threads
from tests.common import ROOT, tiny_job

SHOW = "import dlrm_dist, os; from dlrm_dist import threads; "
SHOW += "print(os.environ.get('GOMP_SPINCOUNT')); print(threads.configure_openmp())"


def fresh(code: str, **env: str) -> list[str]:
    """stdout lines of `python -c code` with no OpenMP setting inherited but `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.splitlines()


@pytest.mark.timeout(200)
def test_the_spin_count_is_set_before_torch_loads_and_a_users_own_is_kept():
    assert fresh(SHOW) == [threads.SPINCOUNT, f"OpenMP spin count {threads.SPINCOUNT}"]
    assert fresh(SHOW, OMP_WAIT_POLICY="PASSIVE") == [
        "None",
        "OpenMP OMP_WAIT_POLICY=PASSIVE (yours)",
    ]
    assert fresh("import torch; " + SHOW) == [
        "None",
        "OpenMP spin count: libgomp's default (torch was imported first)",
    ]


@pytest.mark.timeout(300)
def test_beside_a_busy_process_a_run_takes_the_free_cores_and_says_so_first():
    cores = len(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "dlrm_dist.train", *tiny_job(num_batches=2)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        busy.kill()
        busy.wait()
    assert out.returncode == 0, out.stderr[-2000:]
    first = out.stdout.splitlines()[0]
    most = max(1, cores - 1)  # one core taken by the spinning process (more by any other)
    chosen = int(first.split()[1])
    assert 1 <= chosen <= most, first
    assert first.startswith(f"dlrm_dist: {chosen} thread(s) per rank ({cores} core(s), "), first
    assert "busy elsewhere at start-up" in first and "OpenMP spin count" in first, first
