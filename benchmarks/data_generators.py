"""Synthetic data generators, one process, one thread: random-fast vs the seed loop.

    python benchmarks/data_generators.py [--configs C,L] [--batches N] [--seed-batches N]
                                         [--repeats R] [--smoke]

Measured, alternating, R times each, with `torch.set_num_threads(1)` (samples/s per core):
  batches   `RandomFastData` built and iterated to TorchRec batches (KJT included);
  raw       `RandomFastData` built and `.raw(i)` drawn for every batch (numpy only);
  seed      the seed's per-sample loop generator (`tests/oracle.py: seed_style_batches`),
            from a fresh stream, as in `benchmarks/cpu_vs_reference.py`.
Reported: median (min-max) samples/s and the ratios of the medians to the seed loop.

Configs:
  C  the seed's config C: batch 128, 13 dense, tables 12 x 100 + 3 x 1000, up to 10
     indices per bag (random bag sizes), uniform indices. Both sides draw the same shapes.
  L  large tables: batch 2048, 13 dense, 26 tables of 1M rows, MLPerf DLRM-DCNv2 multi-hot
     bag sizes (214 indices per sample), uniform indices. The seed loop has no multi-hot
     mode: it draws fixed bags of 8 indices (208 per sample), the nearest it can do.

`--smoke` runs both configs tiny (2 batches, 1 seed-loop batch, 1 repeat, L at batch 128).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from benchmarks.cpu_vs_reference import Stats, machine_lines  # noqa: E402
from dlrm_dist.data.random_fast import FastDataSpec, RandomFastData  # noqa: E402
from tests.oracle import seed_style_batches  # noqa: E402

SEED = 123
MLPERF_MULTI_HOT = (
    3,
    2,
    1,
    2,
    6,
    1,
    1,
    1,
    1,
    7,
    3,
    8,
    1,
    6,
    9,
    5,
    1,
    1,
    1,
    12,
    100,
    27,
    10,
    3,
    1,
    1,
)


@dataclass(frozen=True)
class Bench:
    """One config: random-fast's spec, the global batch, and the seed loop's bag settings."""

    spec: FastDataSpec
    batch: int
    batches: int  # random-fast batches per run
    seed_batches: int  # seed-loop batches per run (it is ~100x slower)
    seed_nipl: int
    seed_fixed: bool

    def indices_per_sample(self) -> tuple[str, str]:
        """Mean indices per sample: random-fast, the seed loop (before its dedup)."""
        s = self.spec
        if s.multi_hot_sizes:
            fast = float(sum(s.multi_hot_sizes))
        else:
            caps = np.minimum(s.table_sizes, s.num_indices_per_lookup)
            fast = float(sum(_mean_bag(int(c)) for c in caps))
        seed = (
            self.seed_nipl * len(s.table_sizes)
            if self.seed_fixed
            else sum(_mean_bag(min(r, self.seed_nipl)) for r in s.table_sizes)
        )
        return f"{fast:.0f}", f"{seed:.0f}"


def _mean_bag(cap: int) -> float:
    """Mean of rint(max(1, u * cap)), u ~ U[0, 1): 1 w.p. 1.5/cap, cap w.p. 0.5/cap."""
    if cap == 1:
        return 1.0
    return (1.5 + sum(range(2, cap)) + 0.5 * cap) / cap


CONFIGS: dict[str, Bench] = {
    "C": Bench(
        FastDataSpec(dense_features=13, table_sizes=(100,) * 12 + (1000,) * 3),
        batch=128,
        batches=200,
        seed_batches=20,
        seed_nipl=10,
        seed_fixed=False,
    ),
    "L": Bench(
        FastDataSpec(
            dense_features=13, table_sizes=(1_000_000,) * 26, multi_hot_sizes=MLPERF_MULTI_HOT
        ),
        batch=2048,
        batches=20,
        seed_batches=2,
        seed_nipl=8,
        seed_fixed=True,
    ),
}


@dataclass
class Result:
    batches: Stats
    raw: Stats
    seed: Stats


def samples_per_s(consume: Callable[[], int]) -> float:
    start = time.perf_counter()
    samples = consume()
    return samples / (time.perf_counter() - start)


def bench(b: Bench, repeats: int) -> Result:
    def fast_batches() -> int:
        data = RandomFastData(b.spec, SEED, b.batches, b.batch)
        return sum(int(batch.labels.numel()) for batch in data)

    def fast_raw() -> int:
        data = RandomFastData(b.spec, SEED, b.batches, b.batch)
        return sum(data.raw(i).targets.shape[0] for i in range(len(data)))

    def seed_loop() -> int:
        s = b.spec
        loop = seed_style_batches(
            np.random.RandomState(SEED),
            SEED,
            s.dense_features,
            s.table_sizes,
            data_size=0,
            num_batches=b.seed_batches,
            mini_batch_size=b.batch,
            num_indices_per_lookup=b.seed_nipl,
            fixed=b.seed_fixed,
        )
        return sum(int(t.shape[0]) for _, _, _, t in loop)

    rates: tuple[list[float], list[float], list[float]] = ([], [], [])
    for _ in range(repeats):
        for out, run in zip(rates, (fast_batches, fast_raw, seed_loop)):
            out.append(samples_per_s(run))
    return Result(*(Stats(r) for r in rates))


def ratio(a: Stats, b: Stats) -> str:
    return f"{a.median / b.median:.0f}x"


def report(names: list[str], benches: dict[str, Bench], results: dict[str, Result]) -> None:
    print()
    print("### Synthetic data: random-fast vs the seed loop (1 process, 1 thread)")
    print()
    print(*machine_lines(1), sep="\n")
    print()
    print("samples/s, median (min-max); indices/sample: random-fast / seed loop.")
    print()
    print(
        "| config | batch | tables | indices/sample | random-fast, TorchRec batches | "
        "random-fast, raw numpy | seed loop | batches / seed | raw / seed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        b, r = benches[n], results[n]
        fast, seed = b.indices_per_sample()
        print(
            f"| {n} | {b.batch} | {len(b.spec.table_sizes)} | {fast} / {seed} | "
            f"{r.batches.cell()} | {r.raw.cell()} | {r.seed.cell()} | "
            f"{ratio(r.batches, r.seed)} | {ratio(r.raw, r.seed)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="C,L", help="comma-separated, of C,L")
    parser.add_argument("--batches", type=int, default=0, help="random-fast batches; 0 = config's")
    parser.add_argument(
        "--seed-batches", type=int, default=0, help="seed-loop batches; 0 = config's"
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 2 batches, 1 repeat")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    torch.set_num_threads(1)
    benches = {}
    for n in names:
        b = CONFIGS[n]
        if args.smoke:
            b = replace(b, batch=min(b.batch, 128), batches=2, seed_batches=1)
        b = replace(
            b,
            batches=args.batches or b.batches,
            seed_batches=args.seed_batches or b.seed_batches,
        )
        benches[n] = b
    repeats = 1 if args.smoke else args.repeats
    results: dict[str, Result] = {}
    for n in names:
        b = benches[n]
        print(f"config {n}: warm-up ...", flush=True)
        bench(replace(b, batches=1, seed_batches=1), 1)
        print(
            f"config {n}: {b.batches} random-fast / {b.seed_batches} seed-loop batches "
            f"x {repeats} ...",
            flush=True,
        )
        r = results[n] = bench(b, repeats)
        print(
            f"  batches {r.batches.cell()}  raw {r.raw.cell()}  seed {r.seed.cell()}  "
            f"batches/seed {ratio(r.batches, r.seed)}  raw/seed {ratio(r.raw, r.seed)}",
            flush=True,
        )
    report(names, benches, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
