"""Where a run's start-up goes: process start to the end of step 1, split by phase.

    python benchmarks/startup.py [--configs B,C] [--repeats R] [--against-tree DIR]

Each repeat starts a fresh process per tree (this checkout, and with `--against-tree` an
older one, e.g. `git archive <commit> | tar -x -C DIR`), alternating, that times its own:
  interpreter  process start (the parent's clock) to the probe's first line, after
               `import dlrm_dist` (which sets OpenMP up before torch loads)
  torch        `import torch`
  stack        then the trainer and torchrec's distributed stack it imports before any
               work (`dlrm_dist.train`, `torchrec.distributed.model_parallel`, the planner)
  setup        `train.run` up to the training loop: the process group, planning,
               sharding, the initial weights, the data and its worker
  first step   the loop's first step, logged
Reported per phase: median (min-max) seconds, and the share of the whole. The seed's
configs with the reference's random data, as `cpu_vs_reference.py` runs them; 3 batches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from benchmarks.cpu_vs_reference import COMMON, CONFIGS, machine_lines, spread_cell  # noqa: E402

PHASES = ("interpreter", "torch", "stack", "setup", "first step")

# Run in the child with the tree under test first on sys.path; prints one JSON line.
PROBE = r"""
import json, sys, time
import dlrm_dist  # first, as `python -m dlrm_dist.train`: it sets OpenMP up before torch loads
t0 = time.time()
import torch
t1 = time.time()
import torchrec.distributed.model_parallel, torchrec.distributed.planner
from dlrm_dist import train
from dlrm_dist.cli import parse_args
t2 = time.time()
marks = {}
run_loop, run_step = train.Trainer.train, train.Trainer.step
def loop(self):
    marks["setup"] = time.time()
    return run_loop(self)
def step(self, *args):
    run_step(self, *args)
    marks.setdefault("first step", time.time())
train.Trainer.train, train.Trainer.step = loop, step
train.run(parse_args(sys.argv[1:]))
print("STARTUP " + json.dumps([t0, t1, t2, marks["setup"], marks["first step"]]), flush=True)
"""


def time_startup(tree: Path, flags: list[str]) -> dict[str, float]:
    """One fresh process of `tree`'s trainer: seconds per phase (PHASES)."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run: .pyc files from the warm-up on
    with tempfile.TemporaryDirectory() as cwd:  # what a run writes stays out of the trees
        start = time.time()  # wall clock on both sides: the child's marks are time.time()
        out = subprocess.run(
            [sys.executable, "-c", PROBE, *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=cwd,
        )
    lines = [x for x in out.stdout.splitlines() if x.startswith("STARTUP ")]
    if out.returncode or not lines:
        tail = (out.stdout + out.stderr)[-3000:]
        raise RuntimeError(f"{tree}: exited {out.returncode}:\n{tail}")
    marks = [start, *json.loads(lines[-1].removeprefix("STARTUP "))]
    return {p: b - a for p, a, b in zip(PHASES, marks[:-1], marks[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="C")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against-tree", type=Path, help="an older checkout to time alongside")
    args = ap.parse_args()
    trees = {"this tree": ROOT}
    if args.against_tree is not None:
        trees = {str(args.against_tree): args.against_tree.resolve(), **trees}
    print("\n".join(machine_lines(1)[:3]))
    for name in args.configs.split(","):
        flags = [*CONFIGS[name], *COMMON, "--num-batches=3", "--print-freq=1"]
        flags.append("--progress-bar=false")
        for tree in trees.values():  # warm-up: a first run compiles the tree's .pyc files
            time_startup(tree, flags)
        runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
        for _ in range(args.repeats):
            for label, tree in trees.items():
                runs[label].append(time_startup(tree, flags))
        print(f"\nconfig {name}, {args.repeats} repeats alternating; seconds, median (min-max)\n")
        print("| tree | " + " | ".join(PHASES) + " | to the first step | imports' share |")
        print("|---|" + "---:|" * (len(PHASES) + 2))
        for label, results in runs.items():
            totals = [sum(r.values()) for r in results]
            imports = [r["torch"] + r["stack"] for r in results]
            cells = [spread_cell([r[p] for r in results]) for p in PHASES]
            share = statistics.median(i / t for i, t in zip(imports, totals))
            print(f"| {label} | " + " | ".join(cells) + f" | {spread_cell(totals)} | {share:.0%} |")


if __name__ == "__main__":
    main()
