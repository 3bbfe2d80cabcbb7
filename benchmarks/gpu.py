"""One prepared GPU benchmark: MLPerf DLRM-DCNv2 on one GPU, UVM caching, and config C
on the GPU against the host's CPUs.

    python benchmarks/gpu.py [--steps N] [--warmup W] [--batch B] [--cache-ratios 0.01,0.1]
                             [--precision fp32|fp16] [--smoke] [--out DIR]

Every run is the trainer itself (`dlrm_dist.train.run`, one rank), with `--run-dir` and
`--enable-profiling`: samples/s per step come from its metrics.jsonl (print-freq 1), the
step-time breakdown from its profiler trace, HBM from the CUDA allocator's peak.

1. MLPerf DLRM-DCNv2 (configs/mlperf_dcnv2.toml: 26 tables, dim 128, 204M rows, DCN v2),
   random-fast multi-hot data, global batch 65536, fused row-wise Adagrad. If the tables
   (+ row-wise state) do not fit in 85 % of the GPU's memory the tables go fp16, then the
   rows shrink, with a printed note. Reports: samples/s (median over the timed steps after
   the warm-up, min-max), the breakdown (embedding forward, embedding backward + update,
   all-to-all, MLP + interaction, data: sums of op/kernel time in the profiled steps, so
   overlapped work counts in each), peak HBM, and the embedding bytes moved per second as
   a share of the H200's 4.8 TB/s (bytes per step = lookups x row bytes x 3 (forward
   read, update read + write) + lookups x 8 (row-wise state read + write)).
2. The same with the tables in host memory behind an HBM cache (`fused_uvm_caching`)
   holding --cache-ratios of their rows: the price of a 100x smaller GPU footprint.
3. The seed's config C at batch 16384 on the GPU and on this host's CPUs (all cores).

--smoke runs the same code tiny on CPU (small tables and model, a few steps); the GPU-only
parts print why they are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from dlrm_dist.cli import parse_args  # noqa: E402
from dlrm_dist.metrics import read_metrics  # noqa: E402
from dlrm_dist.train import run  # noqa: E402

H200_BYTES_PER_S = 4.8e12
MLPERF = ["--config", str(ROOT / "configs/mlperf_dcnv2.toml"), "--optimizer=rwsadagrad"]
SMOKE_MODEL = [  # the MLPerf model's shape, tiny
    "--arch-embedding-size=" + "-".join(["1000"] * 26),
    "--arch-sparse-feature-size=16",
    "--arch-mlp-bot=13-64-16",
    "--arch-mlp-top=64-1",
    "--dcn-low-rank-dim=16",
]
CONFIG_C = [
    "--arch-sparse-feature-size=16",
    "--arch-mlp-bot=13-512-256-64-16",
    "--arch-mlp-top=512-256-1",
    "--arch-embedding-size=" + "-".join(["100"] * 12 + ["1000"] * 3),
    "--data-generation=random-fast",
    "--loss-function=bce",
    "--round-targets=true",
]
CATEGORIES = {  # breakdown bucket -> substrings of op / kernel names (lowercase)
    "embedding forward": ("embedding_codegen_forward", "lookup_function", "bounds_check"),
    "embedding backward + update": ("embedding_codegen_backward", "embedding_backward"),
    "all-to-all": ("alltoall", "all_to_all", "nccl"),
    "MLP + interaction": ("addmm", "aten::mm", "aten::bmm", "gemm"),
}


@dataclass
class Result:
    name: str
    batch: int
    rates: list[float]  # samples/s of the timed steps
    step_ms: float  # median
    peak_gb: float
    breakdown: dict[str, float]  # ms per step
    data_ms: float  # waiting for batches, ms per step (median)
    lookups: int  # per step
    row_bytes: int


def quiet_run(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            run(parse_args(argv))
        finally:
            logging.disable(logging.NOTSET)


def breakdown(trace_dir: Path, steps: int) -> dict[str, float]:
    """ms per step in each bucket: summed durations of matching events of the trace; GPU
    kernels when the trace has them (their CPU launches would count twice), else ops."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for trace in trace_dir.glob("*.json"):
        events = [
            e
            for e in json.loads(trace.read_text()).get("traceEvents", [])
            if e.get("ph") == "X" and e.get("dur")
        ]
        kind = "kernel" if any(e.get("cat") == "kernel" for e in events) else "cpu_op"
        ends: dict[tuple[str, object], float] = {}  # an op inside a counted op of its bucket
        for event in sorted(events, key=lambda e: (str(e.get("tid")), e["ts"])):
            name, dur = str(event.get("name", "")).lower(), event["dur"]
            if event.get("cat") != kind:
                continue
            for bucket, keys in CATEGORIES.items():
                if any(k in name for k in keys):
                    key = (bucket, event.get("tid"))
                    if event["ts"] >= ends.get(key, float("-inf")):
                        totals[bucket] += dur / 1000.0 / steps
                        ends[key] = event["ts"] + dur
                    break
    return totals


def measure(name: str, argv: list[str], warmup: int, steps: int, out: Path) -> Result:
    run_dir = out / name.replace(" ", "_").replace("/", "_")
    profiled = min(steps, 5)
    argv = [
        *argv,
        f"--num-batches={warmup + steps}",
        "--print-freq=1",
        "--test-freq=-1",
        "--progress-bar=false",
        f"--run-dir={run_dir}",
        "--enable-profiling",
        f"--profile-start={warmup + 1}",
        f"--profile-steps={profiled}",
    ]
    cfg = parse_args(argv)
    quiet_run(argv)
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"][warmup:]
    d = cfg.data
    bags = d.multi_hot_sizes or [d.num_indices_per_lookup] * len(cfg.model.embedding_sizes)
    elem = 2 if cfg.model.embedding_precision == "fp16" else 4
    return Result(
        name=name,
        batch=d.mini_batch_size,
        rates=[r["samples_per_s"] for r in train],
        step_ms=statistics.median(r["ms_per_step"] for r in train),
        peak_gb=max(r["peak_mem_gb"] for r in train),
        breakdown=breakdown(run_dir / "profile", profiled),
        data_ms=statistics.median(r["ms_per_step"] * r["data_wait_pct"] / 100 for r in train),
        lookups=d.mini_batch_size * sum(bags),
        row_bytes=cfg.model.sparse_feature_size * elem,
    )


def fit_mlperf(cuda: bool, precision: str) -> tuple[list[str], str]:
    """Flags that make the MLPerf tables fit the GPU, and a note if anything changed."""
    if not cuda:
        return SMOKE_MODEL + [f"--embedding-precision={precision}"], ""
    cfg = parse_args(MLPERF)
    rows = sum(cfg.model.embedding_sizes)
    free = 0.85 * torch.cuda.get_device_properties(0).total_memory
    for prec, elem in ((precision, 4 if precision == "fp32" else 2), ("fp16", 2)):
        need = rows * (cfg.model.sparse_feature_size * elem + 4)
        if need <= free:
            note = "" if prec == precision else f"note: {precision} tables do not fit; fp16"
            return [f"--embedding-precision={prec}"], note
    scale = free / (rows * (cfg.model.sparse_feature_size * 2 + 4))
    sizes = [max(1, int(n * scale)) for n in cfg.model.embedding_sizes]
    note = f"note: the tables do not fit even in fp16; rows scaled by {scale:.3f}"
    return [
        "--embedding-precision=fp16",
        "--arch-embedding-size=" + "-".join(map(str, sizes)),
    ], note


def cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def machine() -> list[str]:
    import fbgemm_gpu
    import torchrec

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)"
    return [
        f"- GPU: {gpu}; host: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores",
        f"- torch {torch.__version__}, torchrec {torchrec.__version__}, "
        f"fbgemm_gpu {getattr(fbgemm_gpu, '__version__', '?')}, python "
        f"{platform.python_version()}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=65536, help="MLPerf global batch")
    parser.add_argument("--cache-ratios", default="0.01,0.1", help="UVM cache shares")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--smoke", action="store_true", help="tiny, on CPU")
    parser.add_argument("--out", default="", help="run directories (default: a temp dir)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    warmup, steps = (2, 3) if args.smoke else (args.warmup, args.steps)
    batch = 128 if args.smoke else args.batch
    gpu = ["--use-gpu"] if cuda else []
    out = Path(args.out or tempfile.mkdtemp(prefix="dlrm_gpu_bench_"))
    notes: list[str] = []

    fit, note = fit_mlperf(cuda, args.precision)
    notes += [note] if note else []
    base = [*MLPERF, *fit, f"--mini-batch-size={batch}", *gpu]
    results = [measure("MLPerf DCNv2", base, warmup, steps, out)]
    uvm: list[tuple[float, Result]] = []
    if cuda:
        for ratio in (float(r) for r in args.cache_ratios.split(",") if r):
            flags = ["--compute-kernel=fused_uvm_caching", f"--embedding-cache-ratio={ratio}"]
            uvm.append((ratio, measure(f"MLPerf uvm {ratio}", [*base, *flags], warmup, steps, out)))
    else:
        notes.append("UVM caching: skipped, fused_uvm_caching needs CUDA")
    c_batch = 512 if args.smoke else 16384
    c_args = [*CONFIG_C, f"--mini-batch-size={c_batch}"]
    c_cpu = measure("config C cpu", c_args, warmup, steps, out)
    c_gpu = measure("config C gpu", [*c_args, "--use-gpu"], warmup, steps, out) if cuda else None
    if c_gpu is None:
        notes.append("config C on the GPU: skipped, no CUDA")

    mlperf = results[0]
    print()
    print(f"### GPU benchmark ({'smoke, CPU' if args.smoke else 'full'}): {steps} timed steps")
    print()
    print(*machine(), sep="\n")
    print(f"- run directories: {out}")
    print(*notes, sep="\n")
    print()
    print("| run | batch | samples/s, median (min-max) | ms/step | peak memory GB |")
    print("|---|---:|---:|---:|---:|")
    rows = [mlperf, *(r for _, r in uvm), c_cpu, *([c_gpu] if c_gpu else [])]
    for r in rows:
        print(f"| {r.name} | {r.batch} | {cell(r.rates)} | {r.step_ms:.2f} | {r.peak_gb:.2f} |")
    print()
    print("MLPerf step breakdown, ms per step (profiled steps; overlapped work counts twice):")
    print()
    print("| part | ms/step |")
    print("|---|---:|")
    for bucket, ms in mlperf.breakdown.items():
        print(f"| {bucket} | {ms:.2f} |")
    print(f"| data (waiting for batches) | {mlperf.data_ms:.2f} |")
    print(f"| whole step | {mlperf.step_ms:.2f} |")
    moved = mlperf.lookups * (3 * mlperf.row_bytes + 8)
    rate = moved / (mlperf.step_ms / 1000.0)
    print()
    print(
        f"Embedding traffic: {moved / 1e9:.3f} GB per step, {rate / 1e12:.3f} TB/s = "
        f"{100 * rate / H200_BYTES_PER_S:.2f} % of the H200's 4.8 TB/s"
    )
    if c_gpu is not None:
        ratio = statistics.median(c_gpu.rates) / statistics.median(c_cpu.rates)
        print(f"Config C at batch {c_batch}: GPU / CPU = {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
