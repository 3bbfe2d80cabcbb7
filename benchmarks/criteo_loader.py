"""Criteo ingestion and loading speed on a generated Kaggle-layout file, one thread.

    python benchmarks/criteo_loader.py [--lines N] [--batch B] [--train-batches K]
                                       [--preprocess-only]

Measured (samples/s, median of 3 passes over the first 100 batches, `torch.set_num_threads(1)`):
  preprocess   `python -m dlrm_dist.data.criteo preprocess`, lines/s: vocab ids in the
               reference's first-appearance order (now) and in the sorted order of before
               (`Preprocessor(id_order="sorted")`, the old code path kept for this), side by
               side, best of --repeats runs each, interleaved; and hash ids;
  shuffle      drawing the reference's `total` permutation of the training rows (both
               splits' builds) and the `--memory-map` reordering, s;
  raw          `CriteoData.raw(i)` (memory maps -> numpy), rank 0 of 1 and of 4;
  batches      iterating `CriteoData` to TorchRec batches (KJT built), rank 0 of 1; also
               multi-hot, MLPerf DLRM-DCNv2's bag sizes (214 ids per sample), uniform
               and pareto;
  training     the trainer on that data (config: the reference's Kaggle MLPs,
               13-512-256-64-16 / 512-256-1, dim 16, sgd), samples/s and its data wait;
               one-hot and multi-hot (uniform).
The file: `--lines` lines drawn from 50,000 distinct generated ones (13 small integers, 26
categories out of ~1000 each). The machine is shared: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from dlrm_dist.data.criteo import Preprocessor  # noqa: E402
from dlrm_dist.data.criteo_data import CriteoData  # noqa: E402
from dlrm_dist.data.criteo_files import Settings  # noqa: E402
from dlrm_dist.data.criteo_shuffle import in_memory_order, reordered_order  # noqa: E402


def generate(path: Path, lines: int) -> None:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(50_000):
        ints = rng.geometric(0.02, size=13) - 1
        cats = rng.integers(0, 1000, size=26) * 2654435761 % (1 << 32)
        label = int(rng.random() < 0.25)
        pool.append("\t".join([str(label), *map(str, ints), *(f"{c:08x}" for c in cats)]) + "\n")
    with open(path, "w") as fh:
        for start in range(0, lines, len(pool)):
            fh.writelines(pool[: min(len(pool), lines - start)])


def rate(fn, samples: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return samples / statistics.median(times)


MLPERF_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def preprocess_speeds(tmp: Path, raw: Path, args: argparse.Namespace) -> None:
    """Vocab preprocessing before (sorted ids) and after (first-appearance ids), runs
    interleaved so that a shared machine's load falls on both alike; then hash; then the
    reference's shuffles over the training rows."""
    best = {"sorted": math.inf, "first-appearance": math.inf}
    for _ in range(args.repeats):
        for order in best:
            out = tmp / ("vocab" if order != "sorted" else "sorted")
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            Preprocessor(Settings("kaggle"), str(raw), out, id_order=order).run()
            best[order] = min(best[order], time.perf_counter() - start)
    before, after = (args.lines / best[k] for k in ("sorted", "first-appearance"))
    print(
        f"preprocess vocab: {after:,.0f} lines/s with first-appearance ids (after), "
        f"{before:,.0f} lines/s with sorted ids (before): {after / before:.2f}x, best of "
        f"{args.repeats}"
    )
    start = time.perf_counter()
    Preprocessor(Settings("kaggle", "hash", 1_000_000), str(raw), tmp / "hash").run()
    print(f"preprocess hash: {args.lines / (time.perf_counter() - start):,.0f} lines/s")
    rows = [d["rows"] for d in json.loads((tmp / "vocab" / "meta.json").read_text())["days"]]
    for name, draw in (
        ("total (both splits' builds)", lambda rs: [in_memory_order(rs, rows[:-1], "total")
                                                    for _ in range(2)]),
        ("--memory-map total", lambda rs: reordered_order(rs, rows, "total")),
    ):  # fmt: skip
        start = time.perf_counter()
        draw(np.random.RandomState(0))
        seconds = time.perf_counter() - start
        print(f"shuffle {name}: {seconds:.2f} s for {sum(rows[:-1]):,} training rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--train-batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="preprocessing runs per order")
    parser.add_argument("--preprocess-only", action="store_true", help="stop after preprocessing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="criteo_bench_"))
    try:
        measure(tmp, args)
    finally:
        shutil.rmtree(tmp)


def measure(tmp: Path, args: argparse.Namespace) -> None:
    raw = tmp / "train.txt"
    generate(raw, args.lines)
    print(f"file: {args.lines:,} lines, {raw.stat().st_size / 2**20:.0f} MiB")
    preprocess_speeds(tmp, raw, args)
    if args.preprocess_only:
        return
    out = tmp / "vocab"
    b = args.batch
    for randomize in ("none", "total", "total-bijection"):
        for world in (1, 4):
            data = CriteoData(out, "train", b, 0, world, randomize, seed=1)
            n = min(100, len(data) - 1)
            per = rate(lambda: [data.raw(i) for i in range(n)], n * b // world)  # noqa: B023
            print(f"raw, randomize={randomize}, rank 0 of {world}: {per:,.0f} samples/s")
        data = CriteoData(out, "train", b, randomize=randomize, seed=1)
        n = min(100, len(data) - 1)

        def batches(data: CriteoData = data, n: int = n) -> None:
            for i, _ in enumerate(data):
                if i + 1 == n:
                    break

        print(f"batches, randomize={randomize}, 1 rank: {rate(batches, n * b):,.0f} samples/s")
    for dist in ("uniform", "pareto"):
        data = CriteoData(
            out, "train", b, seed=1, multi_hot_sizes=MLPERF_SIZES, multi_hot_distribution=dist
        )
        n = min(100, len(data) - 1)

        def multi(data: CriteoData = data, n: int = n) -> None:
            for i, _ in enumerate(data):
                if i + 1 == n:
                    break

        print(f"batches, multi-hot {dist}, 1 rank: {rate(multi, n * b):,.0f} samples/s")

    from dlrm_dist.cli import parse_args
    from dlrm_dist.console import quiet_libraries
    from dlrm_dist.train import run

    quiet_libraries()
    common = [
        "--data-generation=dataset",
        f"--processed-data-file={out}",
        f"--raw-data-file={raw}",
        "--arch-sparse-feature-size=16",
        "--arch-mlp-bot=13-512-256-64-16",
        "--arch-mlp-top=512-256-1",
        "--loss-function=bce",
        f"--mini-batch-size={b}",
        f"--num-batches={args.train_batches}",
        "--print-freq=1000000",
        "--progress-bar=false",
        "--threads=1",
    ]
    hot = "--multi-hot-sizes=" + ",".join(map(str, MLPERF_SIZES))
    for name, extra in (("one-hot", []), ("multi-hot", [hot])):
        result = run(parse_args([*common, *extra]))
        print(
            f"training {name}, 1 rank, 1 thread: {result.samples / result.seconds:,.0f} "
            f"samples/s, data wait {100 * result.data_seconds / result.seconds:.1f} %"
        )


if __name__ == "__main__":
    main()
