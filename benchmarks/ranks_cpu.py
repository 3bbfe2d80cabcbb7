"""Training throughput on CPU with 1 and 2 ranks under torchrun (gloo), same global batch.

    python benchmarks/ranks_cpu.py [--configs C,L] [--batches N] [--repeats R] [--smoke]

Each run is a real `torchrun --nproc_per_node=W -m dlrm_dist.train ...` with random-fast
data; we read the trainer's own summary line (`Done: N samples in S s, X samples/s`,
global samples over the training loop, data generation included, start-up excluded).
1 and 2 ranks alternate, R times; reported: median (min-max) samples/s and the ratio.
Threads per rank = cores / ranks (the trainer's default).

Configs:
  C  the seed's config C (batch 128, tables 12 x 100 + 3 x 1000, dim 16,
     bottom 13-512-256-64-16), table-wise.
  L  larger tables: 8 tables of 200k rows, dim 64, bottom 13-256-64, top 512-256-1,
     batch 2048, multi-hot bags of 10, table-wise, adagrad.

On a 2-core machine two ranks share the cores the one rank had: this measures what
sharding costs (all-to-alls, DDP all-reduce, a second process), not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from benchmarks.cpu_vs_reference import Stats, machine_lines  # noqa: E402

CONFIGS: dict[str, list[str]] = {
    "C": [
        "--arch-sparse-feature-size=16",
        "--arch-mlp-bot=13-512-256-64-16",
        "--arch-mlp-top=512-256-1",
        "--arch-embedding-size=" + "-".join(["100"] * 12 + ["1000"] * 3),
        "--mini-batch-size=128",
    ],
    "L": [
        "--arch-sparse-feature-size=64",
        "--arch-mlp-bot=13-256-64",
        "--arch-mlp-top=512-256-1",
        "--arch-embedding-size=" + "-".join(["200000"] * 8),
        "--multi-hot-sizes=" + ",".join(["10"] * 8),
        "--mini-batch-size=2048",
        "--optimizer=adagrad",
    ],
}
COMMON = [
    "--data-generation=random-fast",
    "--sharding-type=table_wise",
    "--loss-function=bce",
    "--round-targets=true",
    "--learning-rate=0.01",
    "--progress-bar=false",
]
DONE = re.compile(r"Done: (\d+) samples in ([\d.]+) s, (\d+) samples/s")


def run_once(config: str, ranks: int, batches: int) -> float:
    """samples/s of one torchrun job, from the trainer's summary line."""
    argv = [*CONFIGS[config], *COMMON, f"--num-batches={batches}", f"--print-freq={batches}"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "dlrm_dist.train",
        *argv,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    match = DONE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{config} x{ranks} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return float(match.group(1)) / float(match.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="C,L", help="comma-separated, of C,L")
    parser.add_argument("--batches", type=int, default=300, help="batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny: 4 batches, 1 repeat")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    batches, repeats = (4, 1) if args.smoke else (args.batches, args.repeats)
    results: dict[str, dict[int, Stats]] = {}
    for name in names:
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for ranks in (1, 2):
                rates[ranks].append(run_once(name, ranks, batches))
                print(f"config {name}, {ranks} rank(s): {rates[ranks][-1]:,.0f} samples/s")
        results[name] = {r: Stats(v) for r, v in rates.items()}
    print()
    print(f"### CPU: 1 vs 2 ranks (torchrun, gloo), {batches} batches, {repeats} repeats")
    print()
    print(*machine_lines(0)[:-1], "- torch threads per rank: cores / ranks", sep="\n")
    print()
    print("| config | 1 rank | 2 ranks | 2 / 1 |")
    print("|---|---:|---:|---:|")
    for name in names:
        one, two = results[name][1], results[name][2]
        print(f"| {name} | {one.cell()} | {two.cell()} | {two.median / one.median:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
