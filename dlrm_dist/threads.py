"""Threads per rank and OpenMP's wait policy: chosen once, at start-up, for every rank.

torch's CPU kernels run on an OpenMP team whose threads, between parallel regions, spin
for a while before they sleep (libgomp's default: 300,000 spins, about a millisecond).
Alone on its cores that is free; beside one other busy process on 2 cores a spinning
thread holds the core the descheduled one needs, and config C's step went 9x slower
(16.8k to 1.7k samples/s) where a fair share would be 1.5x. Two choices, both measured
(BENCHMARKS.md, "CPU on a shared machine"):

- **threads**: cores / local ranks, less the cores other processes keep busy at start-up
  (sampled from /proc/stat while this job's ranks wait, so they do not count each other):
  with one busy process on 2 cores a rank takes 1 thread, which never waits for a
  descheduled partner (C: 15.1k alone, 15.0k beside it). `--threads N` overrides.
  With the reference's random data a rank of 2 or more cores gives one of them to the
  worker that draws the next batch (`dlrm_dist.data.draw_ahead`), torch the rest.
- **spin count** (`GOMP_SPINCOUNT`, read by libgomp when torch loads, so set from
  `dlrm_dist/__init__.py` before anything imports torch): 30,000, a tenth of the default:
  as fast alone (C within 3 %), and bounds the loss when load arrives after start-up. An
  `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` of the user's own is kept as it is.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

SPINCOUNT = "30000"  # libgomp's spins before a waiting thread sleeps (default 300,000)
SAMPLE_S = 0.1  # how long the start-up sample of the other processes' load lasts
_policy = ""  # what configure_openmp did, for the start-up line


def configure_openmp() -> str:
    """Set the OpenMP spin count for this process (and the workers it starts) unless the
    user set a wait policy or torch is already loaded (then too late): what was done."""
    global _policy
    if not _policy:
        mine = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
        if mine and mine != {"GOMP_SPINCOUNT": SPINCOUNT}:  # ours, inherited, is not theirs
            _policy = "OpenMP " + ", ".join(f"{k}={v}" for k, v in mine.items()) + " (yours)"
        elif "torch" in sys.modules and not mine:
            _policy = "OpenMP spin count: libgomp's default (torch was imported first)"
        else:
            os.environ["GOMP_SPINCOUNT"] = SPINCOUNT  # workers this process starts inherit it
            _policy = f"OpenMP spin count {SPINCOUNT}"
    return _policy


def cpu_times(cpus: set[int], stat: str = "/proc/stat") -> tuple[float, float]:
    """(busy, total) jiffies summed over the CPUs `cpus`, from /proc/stat's cpuN lines
    (idle and iowait count as idle)."""
    busy = total = 0.0
    with open(stat) as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            if int(name[3:]) not in cpus:
                continue
            ticks = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cores(cpus: set[int], seconds: float = SAMPLE_S) -> float:
    """How many of the cores `cpus` other processes keep busy: sampled over `seconds`
    while this process sleeps (so it does not count itself). 0.0 where /proc/stat cannot
    be read (not Linux)."""
    try:
        busy0, total0 = cpu_times(cpus)
        time.sleep(seconds)
        busy1, total1 = cpu_times(cpus)
    except (OSError, ValueError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return len(cpus) * (busy1 - busy0) / (total1 - total0)


@dataclass(frozen=True)
class Choice:
    """Threads per rank and why (the start-up line says it); `helper`: whether each rank
    also runs a helper process on a core of its own (the draw-ahead data worker)."""

    threads: int
    reason: str
    helper: bool = False

    def summary(self) -> str:
        worker = " and a data worker" if self.helper else ""
        return f"{self.threads} thread(s){worker} per rank ({self.reason}; {configure_openmp()})"

    def line(self) -> str:
        return f"dlrm_dist: {self.summary()}"


def choose(
    requested: int, local_ranks: int, busy: float | None = None, helper: bool = False
) -> Choice:
    """Threads per rank: `requested` when > 0 (--threads), else this machine's cores /
    local ranks, less the cores found busy (measured now, or `busy` given), at least 1.
    `helper`: the rank would run a helper process (the draw-ahead data worker) if it had
    a core to spare: it gets one of the rank's cores when they are 2 or more (then torch
    takes one thread less), or, with --threads, when the rank's share of the cores
    exceeds them."""
    cpus = os.sched_getaffinity(0)
    if requested > 0:
        spare = len(cpus) // max(1, local_ranks) - requested
        return Choice(requested, "--threads", helper and spare >= 1)
    if busy is None:
        busy = busy_cores(cpus)
    taken = int(busy + 0.5)  # a core counts as taken when other processes keep it half busy
    free = max(1, len(cpus) - taken)
    threads = max(1, free // max(1, local_ranks))
    reason = f"{len(cpus)} core(s), {local_ranks} local rank(s)"
    if taken:
        reason += f", {busy:.1f} core(s) busy elsewhere at start-up"
    helps = helper and threads >= 2
    return Choice(threads - 1 if helps else threads, reason, helps)
