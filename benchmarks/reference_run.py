"""Whole processes, timed as a user runs them: the reference `dlrm_s_pytorch.py` and ours.

    python benchmarks/reference_run.py REFERENCE_DIR FLAG...   (what `reference_argv` runs)

The reference comes from a checkout of facebookresearch/dlrm the user provides; nothing of
it is in this repository. It runs unmodified: this file, as a script, is a launcher that
makes the one change torch made under it since it was written (`torch.autograd.profiler.
profile` lost its `use_cuda` keyword in torch 2.x; it is passed on as `use_device`), puts
the checkout on `sys.path` and runs its `dlrm_s_pytorch.py` as `__main__`. The reference
also needs scikit-learn (it imports `sklearn.metrics`): `reference_env` checks for it.

Each side is timed from process start to exit (`wall`), at two data sizes, so that
`marginal` rate = extra samples / extra seconds leaves out the fixed cost of a run (imports,
planning, exit), which `fixed_cost` gives: the line's intercept.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_STEP = "Finished training it 1/"  # both sides print it after step 1 (--print-freq=1)
OUR_SPINCOUNT = "30000"  # dlrm_dist.threads.SPINCOUNT (not imported: this file runs alone)


def reference_argv(python: str, reference_dir: Path, flags: list[str]) -> list[str]:
    """The command line running the unmodified reference with `flags` through this file."""
    return [python, str(Path(__file__).resolve()), str(reference_dir), *flags]


def ours_argv(python: str, flags: list[str]) -> list[str]:
    """Our trainer with the same (reference) flags, as a user starts it."""
    return [python, "-m", "dlrm_dist.train", *flags]


def reference_env(python: str, reference_dir: Path, pythonpath: str = "") -> dict[str, str]:
    """The reference's environment (`pythonpath` prepended: a folder holding scikit-learn,
    say); raises ValueError with what to do when the checkout or its imports are missing."""
    script = reference_dir / "dlrm_s_pytorch.py"
    if not script.is_file():
        raise ValueError(
            f"{script} does not exist: --reference-dir must be a checkout of "
            "facebookresearch/dlrm (git clone https://github.com/facebookresearch/dlrm)"
        )
    env = dict(os.environ)
    if env.get("GOMP_SPINCOUNT") == OUR_SPINCOUNT:  # set by our import, not the user's
        del env["GOMP_SPINCOUNT"]
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    probe = subprocess.run([python, "-c", "import sklearn.metrics"], env=env, capture_output=True)
    if probe.returncode:
        raise ValueError(
            f"the reference imports scikit-learn, which {python} cannot: install it "
            "(pip install scikit-learn) or name a folder holding it with --reference-pythonpath"
        )
    return env


@dataclass
class Timed:
    """One process: its wall seconds, start to exit, and to the end of its first step."""

    wall: float
    first_step: float


def time_process(argv: list[str], env: dict[str, str] | None = None) -> Timed:
    """Run argv in a fresh temporary directory (the reference writes its TensorBoard files
    to the current one), reading its output as it comes: seconds to exit and to the first
    FIRST_STEP line (nan when it printed none). Raises RuntimeError when it fails."""
    with tempfile.TemporaryDirectory() as cwd:
        env = dict(env or os.environ)
        # as on a user's machine: .pyc files written once (the warm-up run) and read after,
        # not every module compiled again at each start
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        start = time.perf_counter()
        first, tail = float("nan"), []
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if first != first and line.startswith(FIRST_STEP):
                first = time.perf_counter() - start
            tail = [*tail[-20:], line]
        code = proc.wait()
        wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{argv[:3]} exited {code}:\n" + "".join(tail))
    return Timed(wall, first)


def marginal_rate(samples: tuple[int, int], walls: tuple[float, float]) -> float:
    """Samples/s of the extra samples of the larger run over its extra seconds."""
    return (samples[1] - samples[0]) / (walls[1] - walls[0])


def fixed_cost(samples: int, wall: float, rate: float) -> float:
    """Seconds of a run that are not its samples (start-up and exit): the intercept."""
    return wall - samples / rate


def _launch_reference() -> None:
    """As a script: run the unmodified reference in this process, torch's one change
    bridged (module docstring)."""
    import torch.autograd.profiler as profiler

    class Profile(profiler.profile):
        def __init__(self, enabled: bool = True, *, use_cuda: bool = False, **kwargs) -> None:
            super().__init__(enabled, use_device="cuda" if use_cuda else None, **kwargs)

    profiler.profile = Profile
    reference_dir, *flags = sys.argv[1:]
    script = str(Path(reference_dir).resolve() / "dlrm_s_pytorch.py")
    sys.path.insert(0, str(Path(script).parent))
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    _launch_reference()
