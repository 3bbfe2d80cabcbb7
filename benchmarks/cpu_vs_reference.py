"""dlrm_dist vs the reference on CPU: end-to-end training and data generation, same run.

    python benchmarks/cpu_vs_reference.py [--configs A,B,C] [--batches N] [--repeats R]
                                          [--threads T] [--smoke]
    python benchmarks/cpu_vs_reference.py --reference-dir DLRM_CHECKOUT
                                          [--reference-pythonpath DIR] [--sizes N1,N2] ...
    python benchmarks/cpu_vs_reference.py --beside-busy [--configs C] [--sizes N1,N2] ...

With `--reference-dir` (a checkout of facebookresearch/dlrm; nothing of it is copied here)
both programs run as a user runs them, whole processes with the same reference flags,
alternating (after one warm-up run each), at two data sizes (`--sizes`): marginal
samples/s (median, min, max), the ratio, each run's fixed cost (start-up and exit), the
seconds to the end of the first step, and the share of the dense-only floor ours reaches
(`reference_run.py` says how the unmodified reference is run on today's torch).
`--beside-busy` runs ours alone and beside one busy process, alternating, and prints both.

Without them, in this process:

The baseline is `tests/oracle.py`, a plain-PyTorch re-implementation of the reference
`dlrm_s_pytorch.py` whose data come from the reference's per-sample loop generator
(`seed_style_batch`). Both sides are measured in this process, alternating, R times;
we report min / median / max samples/s and the ratio of the medians (ours / oracle).

What each timing covers:
  ours     `RunResult.seconds`: the training loop from the first batch drawn to the last
           step done (data generation included); excludes the process group, planning,
           sharding, the initial weights and the final weight gather.
  oracle   the whole `oracle_train` call: model construction and its initial weights
           (measured on its own too, and printed), data generation, training, copying
           the parameters out.
  data     our `ReferenceRandomData` iterated to TorchRec batches, and its raw numpy
           batches (`.raw(i)`), vs the seed loop (`seed_style_batches`, which calls
           `seed_style_batch` per batch); each starts from a fresh stream.

`--smoke` runs the same code at a tiny size (2 batches, 1 repeat) to check it works.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_run beside it

import reference_run  # noqa: E402

from dlrm_dist.arch import Arch, derive_arch  # noqa: E402
from dlrm_dist.cli import parse_args  # noqa: E402
from dlrm_dist.config import Config  # noqa: E402
from dlrm_dist.data.reference_random import ReferenceRandomData  # noqa: E402
from dlrm_dist.data.sources import make_data  # noqa: E402
from dlrm_dist.train import run  # noqa: E402
from tests.oracle import (  # noqa: E402
    OracleDLRM,
    oracle_kwargs,
    oracle_train,
    seed_data_kwargs,
    seed_style_batches,
)

# The seed's CPU configs, as reference flags (top MLP 4-2-1, mse, lr 0.01, seed 123:
# the reference defaults, spelled out so both sides read them from one Config).
COMMON = [
    "--arch-mlp-top=4-2-1",
    "--loss-function=mse",
    "--learning-rate=0.01",
    "--numpy-rand-seed=123",
]
CONFIGS: dict[str, list[str]] = {
    "A": [
        "--arch-sparse-feature-size=2",
        "--arch-mlp-bot=4-3-2",
        "--arch-embedding-size=4-3-2",
        "--mini-batch-size=1000",
    ],
    "B": [
        "--arch-sparse-feature-size=2",
        "--arch-mlp-bot=4-3-2",
        "--arch-embedding-size=4-3-2",
        "--mini-batch-size=100",
    ],
    "C": [
        "--arch-sparse-feature-size=16",
        "--arch-mlp-bot=13-512-256-64-16",
        "--arch-embedding-size=" + "-".join(["100"] * 12 + ["1000"] * 3),
        "--mini-batch-size=128",
    ],
}

TARGETS = {"A": 20, "B": 20, "C": 10}  # the foundation issue's ratios, ours / oracle
REFERENCE_TARGETS = {"A": 15, "B": 5, "C": 6}  # ours / the real reference, whole process
FLOOR_TARGET = 0.65  # C: the share of the dense-only step's throughput to reach
FLOOR_STEPS = 200  # steps of each floor measurement beside the whole processes


@dataclass
class Stats:
    """samples/s over the repeats."""

    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def cell(self) -> str:
        """`median (min-max)` for a table cell."""
        return f"{self.median:,.0f} ({min(self.rates):,.0f}-{max(self.rates):,.0f})"


@dataclass
class TrainResult:
    ours: Stats
    oracle: Stats
    oracle_build_s: float  # median oracle model construction, seconds
    oracle_call_s: float  # median whole oracle_train call, seconds
    max_loss_diff: float  # ours vs oracle loss curves, first repeat
    ours_data_ms: float  # median per batch: waiting for data (generation)
    ours_step_ms: float  # median per batch: the rest of the loop (step, logging)
    oracle_step_ms: float  # median per batch: the oracle's training step alone
    dense_only_ms: float  # median plain-PyTorch step without embeddings or data


@dataclass
class DataResult:
    batches: Stats  # ours, TorchRec batches
    raw: Stats  # ours, raw numpy
    seed: Stats  # the seed loop
    mismatches: list[str]  # fields of batch 0 that differ from the seed loop's


def config_for(name: str, batches: int, threads: int) -> Config:
    return parse_args(
        CONFIGS[name]
        + COMMON
        + [
            f"--num-batches={batches}",
            f"--threads={threads}",
            "--print-freq=1000000",
            "--progress-bar=false",
        ]
    )


def run_ours(cfg: Config) -> tuple[float, list[float], float]:
    """samples/s of our trainer, its losses and its seconds waiting for data. Its log
    lines and torchrec's setup warnings are swallowed; errors still surface."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            result = run(cfg)
        finally:
            logging.disable(logging.NOTSET)
    return result.samples / result.seconds, result.losses, result.data_seconds


def run_oracle(kwargs: dict[str, Any], samples: int) -> tuple[float, float, list[float], float]:
    """samples/s of the whole oracle_train call, its seconds, its losses and the
    seconds of its training steps alone."""
    start = time.perf_counter()
    out = oracle_train(**kwargs)
    seconds = time.perf_counter() - start
    return samples / seconds, seconds, out["losses"], out["step_seconds"]


def dense_only_step_ms(cfg: Config, steps: int) -> float:
    """Median ms of a plain-PyTorch training step of the config's MLPs and interaction
    alone: embeddings replaced by a constant input, no data generation. No trainer of
    this model can step faster than this on the same machine."""
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    n, f = cfg.data.mini_batch_size, len(arch.ln_emb)

    def mlp(widths: tuple[int, ...]) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1], torch.nn.Sigmoid())

    bot, top = mlp(arch.ln_bot), mlp(arch.ln_top)
    opt = torch.optim.SGD([*bot.parameters(), *top.parameters()], lr=0.01)
    x, emb, y = torch.rand(n, arch.m_den), torch.rand(n, f, arch.m_spa), torch.rand(n)
    li, lj = torch.tril_indices(f + 1, f + 1, -1)

    def step() -> None:
        opt.zero_grad()
        d = bot(x)
        t = torch.cat([d.unsqueeze(1), emb], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))[:, li, lj]
        loss = torch.nn.functional.mse_loss(top(torch.cat([d, z], dim=1)).squeeze(1), y)
        loss.backward()
        opt.step()
        loss.item()

    times = []
    for i in range(steps + 10):
        start = time.perf_counter()
        step()
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def time_oracle_build(kwargs: dict[str, Any], arch: Arch) -> float:
    """Seconds to build the oracle model and copy its initial weights (in oracle_train)."""
    start = time.perf_counter()
    model = OracleDLRM(
        np.random.RandomState(kwargs["seed"]),
        arch.m_spa,
        arch.ln_emb,
        arch.ln_bot,
        arch.ln_top,
        kwargs["interaction"],
        kwargs["interaction_itself"],
        kwargs["loss_threshold"],
    )
    _ = [p.detach().numpy().copy() for p in model.parameters()]
    return time.perf_counter() - start


def bench_training(cfg: Config, repeats: int) -> TrainResult:
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    kwargs = oracle_kwargs(cfg)
    samples = cfg.data.num_batches * cfg.data.mini_batch_size
    nb = cfg.data.num_batches
    ours, oracle, builds, calls, data_ms, step_ms, oracle_ms = [], [], [], [], [], [], []
    loss_diff = float("nan")
    for r in range(repeats):
        rate, our_losses, data_s = run_ours(cfg)
        ours.append(rate)
        data_ms.append(1000.0 * data_s / nb)
        step_ms.append(1000.0 * (samples / rate - data_s) / nb)
        rate, seconds, oracle_losses, oracle_step_s = run_oracle(kwargs, samples)
        oracle.append(rate)
        calls.append(seconds)
        oracle_ms.append(1000.0 * oracle_step_s / nb)
        builds.append(time_oracle_build(kwargs, arch))
        if r == 0:
            loss_diff = float(np.max(np.abs(np.subtract(our_losses, oracle_losses))))
    return TrainResult(
        Stats(ours),
        Stats(oracle),
        statistics.median(builds),
        statistics.median(calls),
        loss_diff,
        statistics.median(data_ms),
        statistics.median(step_ms),
        statistics.median(oracle_ms),
        dense_only_step_ms(cfg, max(nb, 20)),
    )


def fresh_data(cfg: Config) -> ReferenceRandomData:
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    return make_data(cfg, arch, np.random.RandomState(cfg.train.numpy_rand_seed))


def fresh_seed_loop(cfg: Config):
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    seed = cfg.train.numpy_rand_seed
    return seed_style_batches(
        np.random.RandomState(seed), seed, arch.m_den, arch.ln_emb, **seed_data_kwargs(cfg)
    )


def samples_per_s(consume: Callable[[], int]) -> float:
    start = time.perf_counter()
    samples = consume()
    return samples / (time.perf_counter() - start)


def bag_lengths(offsets: list[torch.Tensor], indices: list[torch.Tensor]) -> torch.Tensor:
    """The seed loop's per-table offsets -> bag sizes, table-major (a KJT's lengths)."""
    ends = [
        torch.cat([o[1:], torch.tensor([len(i)])]) for o, i in zip(offsets, indices, strict=True)
    ]
    return torch.cat([e - o for e, o in zip(ends, offsets, strict=True)])


def first_batch_mismatches(cfg: Config) -> list[str]:
    """Fields where batch 0 of ours (raw numpy and TorchRec) differs from the seed loop's."""
    raw = fresh_data(cfg).raw(0)
    batch = next(iter(fresh_data(cfg)))
    x, offsets, indices, t = next(fresh_seed_loop(cfg))
    kjt = batch.sparse_features

    def all_equal(ours: list[np.ndarray], seed: list[torch.Tensor]) -> bool:
        return len(ours) == len(seed) and all(
            np.array_equal(a, b.numpy()) for a, b in zip(ours, seed, strict=True)
        )

    checks = {
        "raw dense": np.array_equal(raw.dense, x.numpy()),
        "raw offsets": all_equal(raw.offsets(), offsets),
        "raw indices": all_equal(raw.indices(), indices),
        "raw targets": np.array_equal(raw.targets, t.numpy()),
        "batch dense": torch.equal(batch.dense_features, x),
        "batch lengths": torch.equal(kjt.lengths(), bag_lengths(offsets, indices)),
        "batch values": torch.equal(kjt.values(), torch.cat(indices)),
        "batch labels": torch.equal(batch.labels, t.reshape(-1)),
    }
    return [name for name, ok in checks.items() if not ok]


def bench_data(cfg: Config, repeats: int) -> DataResult:
    def ours_batches() -> int:
        return sum(int(b.labels.numel()) for b in fresh_data(cfg))

    def ours_raw() -> int:
        data = fresh_data(cfg)
        return sum(data.raw(i).targets.shape[0] for i in range(len(data)))

    def seed_loop() -> int:
        return sum(int(t.shape[0]) for _, _, _, t in fresh_seed_loop(cfg))

    batches, raw, seed = [], [], []
    for _ in range(repeats):
        batches.append(samples_per_s(ours_batches))
        raw.append(samples_per_s(ours_raw))
        seed.append(samples_per_s(seed_loop))
    return DataResult(Stats(batches), Stats(raw), Stats(seed), first_batch_mismatches(cfg))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_lines(threads: int) -> list[str]:
    import torchrec

    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}; nproc {len(os.sched_getaffinity(0))} "
        f"(os.cpu_count {os.cpu_count()})",
        f"- torch {torch.__version__}, torchrec {torchrec.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        f"- torch threads: {threads} (torch.get_num_threads() = {torch.get_num_threads()})",
    ]


def identical(d: DataResult) -> str:
    return "yes" if not d.mismatches else "NO, differ in " + ", ".join(d.mismatches)


def ratio(a: Stats, b: Stats) -> str:
    return f"{a.median / b.median:.2f}x"


def report(
    names: Sequence[str],
    cfgs: dict[str, Config],
    train: dict[str, TrainResult],
    data: dict[str, DataResult],
    batches: int,
    repeats: int,
    threads: int,
) -> None:
    print()
    print(f"### CPU: dlrm_dist vs reference oracle ({batches} batches, {repeats} repeats)")
    print()
    print(*machine_lines(threads), sep="\n")
    print()
    print("End-to-end training, samples/s, median (min-max); data generation included.")
    print()
    print("| config | batch | tables | ours | oracle (seed loop) | ours / oracle |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        c, t = cfgs[n], train[n]
        print(
            f"| {n} | {c.data.mini_batch_size} | {len(c.model.embedding_sizes)} | "
            f"{t.ours.cell()} | {t.oracle.cell()} | {ratio(t.ours, t.oracle)} |"
        )
    print()
    print(
        "Where the time goes, ms per batch (medians). Budget = the oracle's ms per batch / "
        "the target ratio: what ours must take, data included, to meet it. Dense-only = a "
        "plain-PyTorch step of the MLPs and interaction with no embeddings and no data."
    )
    print()
    print(
        "| config | ours: data | ours: step | oracle: data | oracle: step | target | budget "
        "| dense-only step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        c, t = cfgs[n], train[n]
        oracle_ms = 1000.0 * c.data.mini_batch_size / t.oracle.median
        print(
            f"| {n} | {t.ours_data_ms:.2f} | {t.ours_step_ms:.2f} | "
            f"{oracle_ms - t.oracle_step_ms:.2f} | {t.oracle_step_ms:.2f} | {TARGETS[n]}x | "
            f"{oracle_ms / TARGETS[n]:.2f} | {t.dense_only_ms:.2f} |"
        )
    print()
    print("Data generation alone, samples/s, median (min-max).")
    print()
    print(
        "| config | ours, TorchRec batches | ours, raw numpy | seed loop | "
        "batches / seed | raw / seed | batch 0 identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for n in names:
        d = data[n]
        print(
            f"| {n} | {d.batches.cell()} | {d.raw.cell()} | {d.seed.cell()} | "
            f"{ratio(d.batches, d.seed)} | {ratio(d.raw, d.seed)} | "
            f"{identical(d)} |"
        )
    print()
    print(
        "Timings: ours = RunResult.seconds (first batch drawn to last step; excludes "
        "process group, planning, sharding, initial weights, final gather); oracle = "
        "the whole oracle_train call, model construction included:"
    )
    for n in names:
        t = train[n]
        share = 100.0 * t.oracle_build_s / t.oracle_call_s
        print(
            f"- {n}: oracle construction {1000 * t.oracle_build_s:.1f} ms of "
            f"{1000 * t.oracle_call_s:.1f} ms per call ({share:.1f} %); "
            f"max |loss ours - loss oracle| over the run {t.max_loss_diff:.2e}"
        )


# --- whole processes against the real reference (--reference-dir) -----------------------


@dataclass
class ProcessResult:
    """One config, whole processes, both sides; rates are marginal samples/s per repeat."""

    ours: Stats
    reference: Stats
    ours_fixed: list[float]  # seconds a run costs beyond its samples (start-up, exit)
    reference_fixed: list[float]
    ours_first: list[float]  # seconds from process start to the end of step 1
    reference_first: list[float]
    dense_only_ms: list[float]  # the floor per repeat: a plain-PyTorch step, no tables/data


def process_flags(name: str, batches: int, print_freq: int) -> list[str]:
    """The reference flags of a config, as both programs take them."""
    return CONFIGS[name] + COMMON + [f"--num-batches={batches}", f"--print-freq={print_freq}"]


def bench_processes(
    name: str, sizes: tuple[int, int], repeats: int, python: str, ref: tuple[Path, dict]
) -> ProcessResult:
    """Each repeat: the two sizes and a short run timed to its first step, the reference
    and ours alternating (so a change of the machine's load hits both)."""
    reference_dir, ref_env = ref
    argv = {
        "ours": lambda flags: (reference_run.ours_argv(python, flags), None),
        "reference": lambda flags: (
            reference_run.reference_argv(python, reference_dir, flags),
            ref_env,
        ),
    }
    batch = parse_args(CONFIGS[name] + COMMON).data.mini_batch_size
    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    fixed: dict[str, list[float]] = {"ours": [], "reference": []}
    first: dict[str, list[float]] = {"ours": [], "reference": []}
    for make in argv.values():  # warm-up: the first run of a checkout compiles its .pyc files
        reference_run.time_process(*make(process_flags(name, 1, 1)))
    floors: list[float] = []
    floor_cfg = config_for(name, 1, torch.get_num_threads())
    for _ in range(repeats):
        # the floor each repeat just before and just after ours' two runs, the mean of the
        # two: on a VM whose speed drifts, 50 steps once before each repeat put C's share
        # of it at 40-108 % within one run
        around: list[float] = []
        for side, make in argv.items():
            if side == "ours":
                around.append(dense_only_step_ms(floor_cfg, FLOOR_STEPS))
            walls = [
                reference_run.time_process(*make(process_flags(name, n, n))).wall for n in sizes
            ]
            if side == "ours":
                around.append(dense_only_step_ms(floor_cfg, FLOOR_STEPS))
            rate = reference_run.marginal_rate((sizes[0] * batch, sizes[1] * batch), walls)
            rates[side].append(rate)
            fixed[side].append(reference_run.fixed_cost(sizes[0] * batch, walls[0], rate))
            first[side].append(
                reference_run.time_process(*make(process_flags(name, 3, 1))).first_step
            )
        floors.append(statistics.mean(around))
        print(
            f"  {name}: ours {rates['ours'][-1]:,.0f}, reference {rates['reference'][-1]:,.0f} "
            f"samples/s (marginal); the floor {floors[-1]:.2f} ms",
            flush=True,
        )
    return ProcessResult(
        Stats(rates["ours"]),
        Stats(rates["reference"]),
        fixed["ours"],
        fixed["reference"],
        first["ours"],
        first["reference"],
        floors,
    )


def spread_cell(values: list[float], spec: str = ".2f", unit: str = "") -> str:
    """`median (min-max)` for a table cell: seconds by default, ratios with unit "x",
    shares with spec ".0%"."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{spec}}{unit} ({low:{spec}}-{high:{spec}})"


def report_processes(
    results: dict[str, ProcessResult], sizes: tuple[int, int], repeats: int, threads: int
) -> None:
    print()
    print(
        f"### CPU: dlrm_dist vs the reference dlrm_s_pytorch.py, whole processes "
        f"({sizes[0]} and {sizes[1]} batches, {repeats} repeats)"
    )
    print()
    print(*machine_lines(threads), sep="\n")
    print()
    print(
        "Marginal samples/s (the extra samples of the larger run over its extra seconds: "
        "start-up and exit left out), median (min-max); fixed = the seconds a run costs "
        "beyond its samples; first step = process start to the end of step 1."
    )
    print()
    print(
        "| config | batch | ours | reference | ours / reference | target | ours: fixed s "
        "| reference: fixed s | ours: first step s | reference: first step s "
        "| ours / reference per repeat |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        batch = parse_args(CONFIGS[name] + COMMON).data.mini_batch_size
        print(
            f"| {name} | {batch} | {r.ours.cell()} | {r.reference.cell()} | "
            f"{ratio(r.ours, r.reference)} | {REFERENCE_TARGETS[name]}x | "
            f"{spread_cell(r.ours_fixed)} | {spread_cell(r.reference_fixed)} | "
            f"{spread_cell(r.ours_first)} | {spread_cell(r.reference_first)} | "
            f"{spread_cell([o / f for o, f in zip(r.ours.rates, r.reference.rates)], unit='x')} |"
        )
    print()
    print(
        "The floor: a plain-PyTorch step of the same MLPs and interaction, constant "
        f"embeddings, no data (in this process: the median of {FLOOR_STEPS} steps just "
        "before and just after ours' two runs, averaged, per repeat; median (min-max)); the "
        "share = its median ms / ours' median ms per batch; per repeat = each repeat's floor "
        "/ that repeat's ms per batch of ours, measured next to each other (the VM's speed "
        "drifts between repeats: this pairing cancels most of it)."
    )
    print()
    print(
        "| config | dense-only step ms | ours ms per batch | share of the floor | target "
        "| share per repeat |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        batch = parse_args(CONFIGS[name] + COMMON).data.mini_batch_size
        ours_ms = 1000.0 * batch / r.ours.median
        floor = statistics.median(r.dense_only_ms)
        target = f"{FLOOR_TARGET:.0%}" if name == "C" else ""
        # a repeat's floor ms over ours' ms per batch in it (batch / rate)
        shares = [f * rate / (1000.0 * batch) for f, rate in zip(r.dense_only_ms, r.ours.rates)]
        print(
            f"| {name} | {floor:.2f} ({min(r.dense_only_ms):.2f}-{max(r.dense_only_ms):.2f}) "
            f"| {ours_ms:.2f} | {floor / ours_ms:.0%} | {target} | "
            f"{spread_cell(shares, '.0%')} |"
        )


def busy_loop() -> subprocess.Popen:
    """Another busy process on the cores: one Python loop spinning."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def ours_marginal_rate(python: str, name: str, sizes: tuple[int, int], extra: list[str]) -> float:
    """Ours' marginal samples/s on config `name` between whole runs of the two sizes
    (`extra` flags added)."""
    batch = parse_args(CONFIGS[name] + COMMON).data.mini_batch_size
    walls = [
        reference_run.time_process(
            reference_run.ours_argv(python, process_flags(name, n, n) + extra)
        ).wall
        for n in sizes
    ]
    return reference_run.marginal_rate((sizes[0] * batch, sizes[1] * batch), walls)


def bench_beside_busy(
    names: Sequence[str], sizes: tuple[int, int], repeats: int, python: str, extra: list[str]
):
    """Ours, whole processes (`extra` flags added), alone and beside a busy process
    (started first), alternating: marginal samples/s of each, {name: (alone, busy)}."""
    out: dict[str, tuple[Stats, Stats]] = {}
    for name in names:
        alone, busy = [], []
        reference_run.time_process(reference_run.ours_argv(python, process_flags(name, 1, 1)))
        for _ in range(repeats):
            for rates, beside in ((alone, False), (busy, True)):
                other = busy_loop() if beside else None
                try:
                    rates.append(ours_marginal_rate(python, name, sizes, extra))
                finally:
                    if other is not None:
                        other.kill()
                        other.wait()
            print(f"  {name}: alone {alone[-1]:,.0f}, beside a busy process {busy[-1]:,.0f}")
        out[name] = (Stats(alone), Stats(busy))
    print()
    print("### CPU: ours alone and beside one busy process (whole processes, marginal samples/s)")
    print()
    print(*machine_lines(torch.get_num_threads()), sep="\n")
    print()
    print("| config | alone | beside a busy process | alone / beside | target |")
    print("|---|---:|---:|---:|---:|")
    for name, (a, b) in out.items():
        print(f"| {name} | {a.cell()} | {b.cell()} | {a.median / b.median:.2f}x | 2.5x at most |")
    return out


def bench_against_flags(
    names: Sequence[str], sizes: tuple[int, int], repeats: int, python: str, flags: list[str]
):
    """Ours as it is against ours with `flags` (a switch's before), whole processes,
    alternating: marginal samples/s of each, {name: (ours, with flags)}."""
    out: dict[str, tuple[Stats, Stats]] = {}
    for name in names:
        default, switched = [], []
        reference_run.time_process(reference_run.ours_argv(python, process_flags(name, 1, 1)))
        for _ in range(repeats):
            for rates, extra in ((default, []), (switched, flags)):
                rates.append(ours_marginal_rate(python, name, sizes, extra))
            print(f"  {name}: ours {default[-1]:,.0f}, with {' '.join(flags)} {switched[-1]:,.0f}")
        out[name] = (Stats(default), Stats(switched))
    print()
    shown = " ".join(flags)
    print(f"### CPU: ours against ours with {shown} (whole processes, marginal samples/s)")
    print()
    print(*machine_lines(torch.get_num_threads()), sep="\n")
    print()
    print(f"| config | ours | with {' '.join(flags)} | ratio |")
    print("|---|---:|---:|---:|")
    for name, (a, b) in out.items():
        print(f"| {name} | {a.cell()} | {b.cell()} | {a.median / b.median:.2f}x |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="A,B,C", help="comma-separated, of A,B,C")
    parser.add_argument("--batches", type=int, default=100, help="batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 2 batches, 1 repeat")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        help="a checkout of facebookresearch/dlrm: time whole processes of its unmodified "
        "dlrm_s_pytorch.py against ours, same flags (instead of the in-process oracle)",
    )
    parser.add_argument(
        "--reference-pythonpath",
        default="",
        help="a folder on the reference's PYTHONPATH (one holding scikit-learn, which it imports)",
    )
    parser.add_argument("--sizes", default="100,400", help="whole processes: the two runs' batches")
    parser.add_argument(
        "--beside-busy",
        action="store_true",
        help="whole processes: ours alone and beside one busy process, alternating",
    )
    parser.add_argument(
        "--ours-flags", default="", help="--beside-busy: flags added to ours (e.g. --threads=2)"
    )
    parser.add_argument(
        "--against-flags",
        default="",
        help="whole processes: ours against ours with these flags (a switch's before, e.g. "
        "--draw-ahead=false), alternating",
    )
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    batches, repeats = (2, 1) if args.smoke else (args.batches, args.repeats)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # run() sets the same; the oracle shares it
    sizes = (2, 4) if args.smoke else tuple(int(x) for x in args.sizes.split(","))
    if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
        parser.error(f"--sizes takes two batch counts, the first smaller: got {args.sizes}")
    if args.against_flags:
        bench_against_flags(names, sizes, repeats, sys.executable, args.against_flags.split())
        return 0
    if args.beside_busy:
        bench_beside_busy(names, sizes, repeats, sys.executable, args.ours_flags.split())
        return 0
    if args.reference_dir is not None:
        try:
            env = reference_run.reference_env(
                sys.executable, args.reference_dir, args.reference_pythonpath
            )
        except ValueError as exc:
            parser.error(str(exc))
        ref = (args.reference_dir, env)
        results = {}
        for n in names:
            print(f"config {n}: whole processes, sizes {sizes} x {repeats} ...", flush=True)
            results[n] = bench_processes(n, sizes, repeats, sys.executable, ref)
        report_processes(results, sizes, repeats, threads)
        return 0

    cfgs = {n: config_for(n, batches, threads) for n in names}
    train: dict[str, TrainResult] = {}
    data: dict[str, DataResult] = {}
    for n in names:
        print(f"config {n}: warm-up ...", flush=True)
        warm = config_for(n, 1, threads)
        bench_training(warm, 1)
        print(f"config {n}: training, {batches} batches x {repeats} ...", flush=True)
        train[n] = bench_training(cfgs[n], repeats)
        print(
            f"  ours {train[n].ours.cell()}  oracle {train[n].oracle.cell()}  "
            f"ratio {ratio(train[n].ours, train[n].oracle)}",
            flush=True,
        )
        print(f"config {n}: data generation ...", flush=True)
        data[n] = bench_data(cfgs[n], repeats)
        d = data[n]
        print(
            f"  batch 0 identical to the seed loop's (dense, offsets/lengths, indices, "
            f"targets; raw and TorchRec): {identical(d)}; batches/seed {ratio(d.batches, d.seed)}, "
            f"raw/seed {ratio(d.raw, d.seed)}",
            flush=True,
        )
    report(names, cfgs, train, data, batches, repeats, threads)
    return 1 if any(d.mismatches for d in data.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
