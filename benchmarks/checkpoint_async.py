"""What checkpoints cost the training step: a step's time with and without a save in flight.

    python benchmarks/checkpoint_async.py [--steps N] [--every K] [--repeats R] [--smoke]

Two test jobs, one rank (the trainer in this process, its one-rank gloo group): `tiny`
(tests/common.py's job: 4 tables of 20-50 rows, batch 16) and `default` (configs/default.toml:
15 tables, bags of 3, batch 128, planted labels). Each trains N steps three ways, in turn
within every repeat so that a change in the machine's load hits all three: no checkpoints,
a checkpoint every K steps written in the background (`--async-checkpoint`, the default),
and every K steps with the step waiting for the whole save (`--async-checkpoint=false`).

Reported per job and way: the median step time of steps that ran while a save was being
written (`in flight`) and of those that did not, the median time the trainer spent in
`save()` at a due step (the host copy when in the background; the whole save otherwise),
saves per second of training, and the throughput cost two ways: the loop's time (steps
plus saves) over the same loop without checkpoints, minus 1 (open to anything else the
machine does between the two runs), and the saves' own cost: the time in save() plus what
the steps with a save in flight took over the median step without one, over the rest of
the loop (what the saves added, within one run). Median (min-max) over the repeats. The
target of issue 17: at most 5 % with a save every few seconds.

`--smoke` runs it tiny (40 steps, a save every 10, 1 repeat) to check that it works.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from dlrm_dist import checkpoint, train  # noqa: E402
from dlrm_dist.cli import parse_args  # noqa: E402
from tests.common import tiny_job  # noqa: E402

WAYS = ("none", "async", "sync")


def jobs(steps: int) -> dict[str, list[str]]:
    """The two test jobs' flags, trained for `steps` steps (one epoch), no evaluation."""
    tiny = tiny_job(data_generation="random-fast", sharding_type="table_wise", threads=1)
    tiny += [f"--num-batches={steps}", "--nepochs=1", "--print-freq=1000000"]
    default = ["--config", str(ROOT / "configs/default.toml"), f"--num-batches={steps}"]
    default += ["--test-freq=0", "--print-freq=1000000", "--progress-bar=false", "--run-dir="]
    default += ["--numbered-run-dir=false", "--plots=false"]  # no metrics files or plots
    return {"tiny": tiny, "default": default}


class Timings:
    """Every step's time, whether a save was in flight when it started, and save() calls."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, bool]] = []
        self.saves: list[float] = []
        self.step, self.save = train.Trainer.step, checkpoint.CheckpointManager.save

    def __enter__(self) -> Timings:
        timings = self

        def step(trainer, step: int, j: int) -> None:
            pending = trainer.r.ckpt._in_flight
            busy = pending is not None and pending.thread.is_alive()
            start = time.perf_counter()
            timings.step(trainer, step, j)
            timings.steps.append((time.perf_counter() - start, busy))

        def save(manager, state, last=False):
            start = time.perf_counter()
            path = timings.save(manager, state, last)
            if path is not None and not last:
                timings.saves.append(time.perf_counter() - start)
            return path

        train.Trainer.step, checkpoint.CheckpointManager.save = step, save
        return self

    def __exit__(self, *exc: object) -> None:
        train.Trainer.step, checkpoint.CheckpointManager.save = self.step, self.save


def one_run(argv: list[str], way: str, every: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, Timings() as t:
        flags = [] if way == "none" else [f"--checkpoint-dir={d}", f"--checkpoint-every={every}"]
        flags += ["--async-checkpoint=false"] if way == "sync" else []
        train.run(parse_args([*argv, *flags]))
    busy = [s for s, b in t.steps if b]
    idle = [s for s, b in t.steps[5:] if not b]  # the first steps warm up
    loop = sum(s for s, _ in t.steps[5:]) + sum(t.saves)
    idle_s = statistics.median(idle)
    extra = sum(s - idle_s for s in busy) + sum(t.saves)  # what the saves added to the loop
    return {
        "loop_s": loop,
        "own_cost": extra / (loop - extra),
        "step_ms_in_flight": 1e3 * statistics.median(busy) if busy else float("nan"),
        "step_ms_idle": 1e3 * statistics.median(idle),
        "save_call_ms": 1e3 * statistics.median(t.saves) if t.saves else 0.0,
        "saves_per_s": len(t.saves) / loop,
        "steps_in_flight": len(busy),
    }


def measure(steps: int, every: dict[str, int], repeats: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, argv in jobs(steps).items():
        runs: dict[str, list[dict]] = {w: [] for w in WAYS}
        for _ in range(repeats):
            for way in WAYS:
                runs[way].append(one_run(argv, way, every[name]))
        out[name] = {"every": every[name], "runs": runs}
    return out


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(results: dict[str, dict]) -> str:
    lines = [
        "| job | way | save every | saves/s | step ms, save in flight | step ms, none "
        "in flight | ms in save() at a due step | throughput cost | the saves' own cost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        base = [run["loop_s"] for run in r["runs"]["none"]]
        for way in WAYS:
            runs = r["runs"][way]
            cost = [100 * (run["loop_s"] / b - 1) for run, b in zip(runs, base)]
            pick = [run["step_ms_in_flight"] for run in runs]
            own = [100 * run["own_cost"] for run in runs]
            lines.append(
                f"| {name} | {way} | {r['every'] if way != 'none' else '-'} | "
                f"{statistics.median(run['saves_per_s'] for run in runs):.2f} | "
                f"{_med(pick) if way == 'async' else '-'} | "
                f"{_med([run['step_ms_idle'] for run in runs])} | "
                f"{_med([run['save_call_ms'] for run in runs]) if way != 'none' else '-'} | "
                f"{_med(cost) + ' %' if way != 'none' else '-'} | "
                f"{_med(own) + ' %' if way != 'none' else '-'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every-tiny", type=int, default=500, help="steps between saves")
    parser.add_argument("--every-default", type=int, default=150, help="steps between saves")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.every_tiny, args.every_default, args.repeats = 40, 10, 10, 1
    every = {"tiny": args.every_tiny, "default": args.every_default}
    results = measure(args.steps, every, args.repeats)
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {args.steps} steps, "
        f"{args.repeats} repeat(s)"
    )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
