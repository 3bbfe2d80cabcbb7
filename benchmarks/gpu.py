"""One prepared GPU benchmark: MLPerf DLRM-DCNv2 on one GPU, fp16 tables, UVM caching, and
config C on the GPU against the host's CPUs.

    python benchmarks/gpu.py [--steps N] [--warmup W] [--batch B] [--cache-ratios 0.01,0.1]
                             [--precision fp32|fp16] [--smoke] [--out DIR] [--json F] [--table F]

Every run is the trainer itself (`dlrm_dist.train.run`, one rank), with `--run-dir` and
`--enable-profiling`: samples/s per step come from its metrics.jsonl (print-freq 1), the
step-time breakdown from its profiler trace, HBM from the CUDA allocator's peak. Runs go
most important first, and --json / --table are rewritten after each, so a run stopped at a
time budget (scripts/gpu_check.sh) keeps the finished ones:

1. MLPerf DLRM-DCNv2 (configs/mlperf_dcnv2.toml: 26 tables, dim 128, 204M rows, DCN v2,
   tables initialized on the GPU), random-fast multi-hot data, global batch 65536, fused
   row-wise Adagrad. If the planner cannot place the tables on the GPU (torchrec keeps a
   15 % margin) they go fp16, then the rows shrink, with a printed note. Reports: samples/s
   (median over the timed steps after the warm-up, min-max), the breakdown (embedding
   forward, embedding backward + update, all-to-all, MLP + interaction, data: sums of
   op/kernel time in the profiled steps, so overlapped work counts in each), peak HBM, and
   the embedding bytes moved per second as a share of the H200's 4.8 TB/s (bytes per step =
   lookups x row bytes x 3 (forward read, update read + write) + lookups x 8 (row-wise state
   read + write)).
2. One change at a time against 1: the data drawn on the host by numpy instead of on the
   GPU (`--random-fast-draw-on=host`), fp16 tables (when 1 ran fp32), TF32 matmuls
   (`--tf32`), bf16 MLPs and interaction (`--dense-precision=bf16`), no pipeline.
3. The seed's config C at batch 16384 on this host's CPUs (all cores) and on the GPU.
4. fp16 tables in host memory behind an HBM cache (`fused_uvm_caching`) holding
   --cache-ratios of their rows: the price of a 100x smaller GPU footprint.

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
from dataclasses import dataclass, field
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
    # data_parallel tables (one CPU rank's small ones): their lookup's backward; their
    # update is in the dense optimizer's step, counted in no bucket
    "embedding backward + update": (
        "embedding_codegen_backward",
        "embedding_backward",
        "lookupfunction_dense_op",
    ),
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


def measure(
    name: str, argv: list[str], warmup: int, steps: int, out: Path, profile: bool = False
) -> Result:
    """One run of the trainer; with `profile`, a trace of 3 steps after the warm-up gives
    the breakdown (a trace of a 65536-sample MLPerf step is large: only where it is read)."""
    run_dir = out / name.replace(" ", "_").replace("/", "_")
    profiled = min(steps, 3) if profile else 0
    argv = [
        *argv,
        f"--num-batches={warmup + steps}",
        "--print-freq=1",
        "--test-freq=-1",
        "--progress-bar=false",
        f"--run-dir={run_dir}",
    ]
    if profile:
        argv += ["--enable-profiling", f"--profile-start={warmup + 1}"]
        argv.append(f"--profile-steps={profiled}")
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
        breakdown=breakdown(run_dir / "profile", profiled) if profile else {},
        data_ms=statistics.median(r["ms_per_step"] * r["data_wait_pct"] / 100 for r in train),
        lookups=d.mini_batch_size * sum(bags),
        row_bytes=cfg.model.sparse_feature_size * elem,
    )


def fits(argv: list[str]) -> bool:
    """Whether the planner places the tables on this one GPU (its real memory)."""
    from dlrm_dist import planning
    from dlrm_dist.arch import derive_arch
    from dlrm_dist.errors import ConfigError
    from dlrm_dist.model import DLRM

    cfg = parse_args(argv)
    model = DLRM(derive_arch(cfg.model, cfg.data.dense_features), cfg.model, device="meta")
    try:
        planning.plan_for_config(model, cfg, 1, "cuda", 1, device=torch.device("cuda", 0))
    except ConfigError:
        return False
    return True


def fit_mlperf(cuda: bool, precision: str, base: list[str]) -> tuple[list[str], str]:
    """Flags that make the MLPerf tables fit the GPU (asked of the planner, which keeps
    torchrec's 15 % margin), and a note if anything changed."""
    if not cuda:
        return SMOKE_MODEL + [f"--embedding-precision={precision}"], ""
    for prec in dict.fromkeys((precision, "fp16")):
        if fits([*base, f"--embedding-precision={prec}"]):
            note = "" if prec == precision else f"note: {precision} tables do not fit; fp16"
            return [f"--embedding-precision={prec}"], note
    cfg = parse_args(base)
    free = 0.7 * torch.cuda.get_device_properties(0).total_memory
    scale = free / (sum(cfg.model.embedding_sizes) * (cfg.model.sparse_feature_size * 2 + 4))
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


@dataclass
class Report:
    """The runs so far; the table and the JSON are rewritten after each run, so a run
    stopped at its time budget (scripts/gpu_check.sh) leaves the finished ones."""

    title: str
    out: Path
    json_path: Path | None
    table_path: Path | None
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.results.append(result)
        self.save()

    def save(self) -> None:
        if self.json_path:
            runs = [run_summary(r) for r in self.results]
            data = {"title": self.title, "notes": self.notes, "runs": runs}
            self.json_path.write_text(json.dumps(data, indent=1))
        if self.table_path:
            self.table_path.write_text(self.render() + "\n")

    def render(self) -> str:
        lines = [f"### {self.title}", "", *machine(), f"- run directories: {self.out}"]
        lines += [*self.notes, "", "| run | batch | samples/s, median (min-max) | ms/step | "]
        lines[-1] += "peak memory GB |"
        lines.append("|---|---:|---:|---:|---:|")
        for r in self.results:
            lines.append(
                f"| {r.name} | {r.batch} | {cell(r.rates)} | {r.step_ms:.2f} | {r.peak_gb:.2f} |"
            )
        if self.results:
            lines += ["", *breakdown_lines(self.results[0])]
        by_name = {r.name: r for r in self.results}
        c_cpu, c_gpu = by_name.get("config C cpu"), by_name.get("config C gpu")
        if c_cpu and c_gpu:
            ratio = statistics.median(c_gpu.rates) / statistics.median(c_cpu.rates)
            lines.append(f"Config C at batch {c_gpu.batch}: GPU / CPU = {ratio:.1f}x")
        return "\n".join(lines)


def run_summary(r: Result) -> dict:
    return {
        "name": r.name,
        "batch": r.batch,
        "samples_per_s_median": statistics.median(r.rates),
        "samples_per_s_min": min(r.rates),
        "samples_per_s_max": max(r.rates),
        "step_ms": r.step_ms,
        "peak_gb": r.peak_gb,
        "breakdown_ms": r.breakdown,
        "data_ms": r.data_ms,
        "embedding_tb_per_s": embedding_rate(r) / 1e12,
    }


def embedding_rate(r: Result) -> float:
    """Embedding bytes moved per second (see the module docstring)."""
    return r.lookups * (3 * r.row_bytes + 8) / (r.step_ms / 1000.0)


def breakdown_lines(r: Result) -> list[str]:
    lines = [
        f"{r.name} step breakdown, ms per step (profiled steps; overlapped work counts twice):",
        "",
        "| part | ms/step |",
        "|---|---:|",
    ]
    lines += [f"| {bucket} | {ms:.2f} |" for bucket, ms in r.breakdown.items()]
    lines.append(f"| data (waiting for batches) | {r.data_ms:.2f} |")
    lines.append(f"| whole step | {r.step_ms:.2f} |")
    rate = embedding_rate(r)
    moved = r.lookups * (3 * r.row_bytes + 8)
    lines += [
        "",
        f"Embedding traffic: {moved / 1e9:.3f} GB per step, {rate / 1e12:.3f} TB/s = "
        f"{100 * rate / H200_BYTES_PER_S:.2f} % of the H200's 4.8 TB/s",
    ]
    return lines


def planned_runs(args: argparse.Namespace, cuda: bool, report: Report) -> list[tuple[str, list]]:
    """(name, flags) of every run, most important first: a budget stops the tail."""
    batch = 128 if args.smoke else args.batch
    gpu = ["--use-gpu"] if cuda else []
    base = [*MLPERF, f"--mini-batch-size={batch}", *gpu]
    fit, note = fit_mlperf(cuda, args.precision, base)
    report.notes += [note] if note else []
    runs = [("MLPerf DCNv2", [*base, *fit])]
    if cuda:  # each optimization against run 1, one change at a time
        runs.append(("MLPerf host data", [*base, *fit, "--random-fast-draw-on=host"]))
        if "--embedding-precision=fp32" in fit:
            runs.append(("MLPerf fp16 tables", [*base, *fit, "--embedding-precision=fp16"]))
        runs.append(("MLPerf tf32", [*base, *fit, "--tf32"]))
        runs.append(("MLPerf bf16 dense", [*base, *fit, "--dense-precision=bf16"]))
        runs.append(("MLPerf plain loop", [*base, *fit, "--pipeline=false"]))
    c_batch = 512 if args.smoke else 16384
    c_args = [*CONFIG_C, f"--mini-batch-size={c_batch}"]
    runs.append(("config C cpu", c_args))
    if cuda:
        runs.append(("config C gpu", [*c_args, "--use-gpu"]))
    else:
        report.notes.append("config C on the GPU: skipped, no CUDA")
    if not cuda:
        report.notes.append("UVM caching: skipped, fused_uvm_caching needs CUDA")
        return runs
    # fp16 tables in host memory: fp32's 104 GB would crowd the host's 128 GiB
    for ratio in (float(r) for r in args.cache_ratios.split(",") if r):
        flags = ["--compute-kernel=fused_uvm_caching", f"--embedding-cache-ratio={ratio}"]
        uvm = [*base, *fit, "--embedding-precision=fp16", *flags]
        runs.append((f"MLPerf fp16 uvm {ratio}", uvm))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=65536, help="MLPerf global batch")
    parser.add_argument("--cache-ratios", default="0.01,0.1", help="UVM cache shares")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--smoke", action="store_true", help="tiny, on CPU")
    parser.add_argument("--out", default="", help="run directories (default: a temp dir)")
    parser.add_argument("--json", default="", help="write the results here, after each run")
    parser.add_argument("--table", default="", help="write the markdown here, after each run")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    warmup, steps = (2, 3) if args.smoke else (args.warmup, args.steps)
    out = Path(args.out or tempfile.mkdtemp(prefix="dlrm_gpu_bench_"))
    title = f"GPU benchmark ({'smoke, CPU' if args.smoke else 'full'}): {steps} timed steps"
    report = Report(
        title, out, Path(args.json) if args.json else None, Path(args.table) if args.table else None
    )
    for i, (name, flags) in enumerate(planned_runs(args, cuda, report)):
        report.add(measure(name, flags, warmup, steps, out, profile=i == 0))
    print()
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
